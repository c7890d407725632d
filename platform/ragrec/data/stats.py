"""Rating statistics known at a sample's time: the user's past ratings and the target item's ratings so far.

They feed ``prompt.stats`` (a line in the CTR prompt that states them): the numbers that the counting
baselines use, written out so that a small LLM does not have to average a list of stars itself. Both are
causal: an item's statistics count only interactions strictly before the sample's timestamp (never the
sample's own rating), and a user's come from the sample's own history lists. Vectorised: one sort of the
interactions and a ``searchsorted`` per query batch.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["history_stats", "item_stats_before"]

_TS_BITS = 34  # timestamps up to 2**34 s (year 2514) share an int64 key with item ids up to 2**29


def _values(interactions: pa.Table) -> tuple[np.ndarray, str]:
    """Per-interaction value to average: the rating when every row has one, else the 0/1 label."""
    if "rating" in interactions.column_names and interactions.column("rating").null_count == 0:
        return interactions.column("rating").to_numpy().astype(np.float64), "rating"
    if "label" not in interactions.column_names:
        raise ValueError("interactions need a 'rating' or a 'label' column for prompt.stats")
    return interactions.column("label").to_numpy().astype(np.float64), "label"


def item_stats_before(
    interactions: pa.Table, item_ids: np.ndarray, timestamps: np.ndarray
) -> tuple[np.ndarray, np.ndarray, str]:
    """``(mean, count, kind)`` over each queried item's interactions strictly before the queried timestamp.

    ``mean`` is NaN where ``count`` is 0; ``kind`` is ``"rating"`` (mean stars) or ``"label"`` (share liked).
    """
    values, kind = _values(interactions)
    items = interactions.column("item_id").to_numpy().astype(np.int64)
    ts = interactions.column("timestamp").to_numpy().astype(np.int64)
    if len(ts) and (ts.min() < 0 or ts.max() >= 1 << _TS_BITS or items.max() >= 1 << (63 - _TS_BITS)):
        raise ValueError("prompt.stats: timestamps must be seconds in [0, 2**34) and item ids below 2**29")
    keys = (items << _TS_BITS) | ts
    order = np.argsort(keys, kind="stable")
    keys = keys[order]
    csum = np.concatenate([[0.0], np.cumsum(values[order])])
    q_item = np.asarray(item_ids, dtype=np.int64)
    end = np.searchsorted(keys, (q_item << _TS_BITS) | np.asarray(timestamps, dtype=np.int64), side="left")
    start = np.searchsorted(keys, q_item << _TS_BITS, side="left")
    count = end - start
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, (csum[end] - csum[start]) / np.maximum(count, 1), np.nan)
    return mean, count, kind


def history_stats(ratings: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, count)`` of each row's list of past ratings (NaN mean for an empty list)."""
    arr = ratings.combine_chunks() if isinstance(ratings, pa.ChunkedArray) else ratings
    count = pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = pc.fill_null(arr.flatten(), 0).to_numpy(zero_copy_only=False).astype(np.float64)
    sums = np.bincount(np.repeat(np.arange(len(count)), count), weights=flat, minlength=len(count))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, sums / np.maximum(count, 1), np.nan), count
