"""Sample protocols: canonical interactions -> ``samples`` tables (DESIGN §3).

Only ``rallrec`` (ReLLa / RALLRec) exists so far. Everything is numpy-vectorised: one stable sort,
per-user positions from a second stable sort, and histories gathered into one flat values buffer
addressed by list offsets (no Python object per sample).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from ..config import DataConfig
from .errors import DataError
from .schemas import INTERACTIONS, SAMPLES, SPLITS, label_is_given, validate

_MAX_LIST_VALUES = 2**31 - 1  # list<...> offsets are int32


def time_order(user: np.ndarray, item: np.ndarray, timestamp: np.ndarray) -> np.ndarray:
    """Stable order by (timestamp, user_id, item_id): ``(n,) int64`` row indices."""
    return np.lexsort((item, user, timestamp))


def user_positions(user_sorted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Group time-ordered rows by user, keeping time order inside each user.

    Args:
        user_sorted: ``(n,)`` user ids of rows already in time order.

    Returns:
        ``(grouped, pos)``: ``grouped`` ``(n,)`` is a permutation of ``0..n-1`` listing the rows user
        by user (each user's rows in time order); ``pos`` ``(n,)`` is, for every row (in time order),
        the number of earlier rows of the same user.
    """
    grouped = np.argsort(user_sorted, kind="stable")
    u = user_sorted[grouped]
    is_start = np.ones(len(u), dtype=bool)
    is_start[1:] = u[1:] != u[:-1]
    start_idx = np.flatnonzero(is_start)
    group_start = np.repeat(start_idx, np.diff(np.append(start_idx, len(u))))
    pos = np.empty(len(u), dtype=np.int64)
    pos[grouped] = np.arange(len(u)) - group_start
    return grouped, pos


def split_bounds(n: int, split: tuple[float, float, float]) -> tuple[int, int]:
    """End indices of train and valid when ``n`` time-ordered samples are cut by ``split`` fractions."""
    cum = np.cumsum(split)[:2]
    b = np.floor(cum * n + 1e-6).astype(np.int64)
    return int(b[0]), int(b[1])


def _labels(interactions: pa.Table, threshold: float) -> np.ndarray:
    """``(n,) int8``: the given labels when the table came labelled, else ``rating > threshold``."""
    if label_is_given(interactions):
        return interactions.column("label").to_numpy().astype(np.int8)
    rating = interactions.column("rating")
    if rating.null_count:
        row = int(np.flatnonzero(rating.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError(
            f"rating is null in row {row} and the table is not marked as labelled",
            file="interactions table",
            field="rating",
            fix="give every interaction a rating, or load labelled data through data.columns.label",
        )
    return (rating.to_numpy() > threshold).astype(np.int8)


def _take(values: pa.Array, rows: np.ndarray) -> pa.Array:
    """``values[rows]``; numpy gather when there are no nulls (several times faster than Arrow take)."""
    if values.null_count == 0:
        return pa.array(values.to_numpy()[rows], values.type)
    return values.take(pa.array(rows))


def _history_lengths(pos: np.ndarray, max_history: int | None) -> np.ndarray:
    """History length of each sample, truncated to the most recent ``max_history``."""
    return pos if max_history is None else np.minimum(pos, max_history)


def rallrec_samples(interactions: pa.Table, cfg: DataConfig) -> pa.Table:
    """ReLLa / RALLRec CTR samples: every rating with all earlier ratings of its user as history.

    Steps: stable sort by (timestamp, user_id, item_id); history of a rating = that user's earlier
    ratings in this order (oldest first), truncated to the last ``cfg.max_history``; samples with fewer
    than ``cfg.min_history`` earlier ratings are dropped; the kept samples, in time order, are cut
    into train / valid / test by ``cfg.split``; ``label = rating > cfg.label_threshold`` unless the
    interactions came labelled.

    Args:
        interactions: ``(n,)`` table with the :data:`~ragrec.data.schemas.INTERACTIONS` columns.
        cfg: the data config (``min_history``, ``max_history``, ``split``, ``label_threshold``).

    Returns:
        ``(n_samples,)`` table with schema :data:`~ragrec.data.schemas.SAMPLES`, rows in time order,
        ``sample_id = 0..n_samples-1``; the history lists share one flat values buffer.

    Raises:
        DataError: a split with a non-zero fraction is empty, or the histories do not fit list offsets.
    """
    validate(interactions, INTERACTIONS, "interactions")
    if cfg.max_history is not None and cfg.max_history < cfg.min_history:
        raise DataError(
            f"max_history={cfg.max_history} is smaller than min_history={cfg.min_history}",
            field="data.max_history",
            fix="raise data.max_history or lower data.min_history",
        )
    user = interactions.column("user_id").to_numpy()
    item = interactions.column("item_id").to_numpy()
    ts = interactions.column("timestamp").to_numpy()
    label = _labels(interactions, cfg.label_threshold)
    rating = interactions.column("rating").combine_chunks()

    order = time_order(user, item, ts)  # time position -> original row
    grouped, pos = user_positions(user[order])  # grouped: user-by-user list of time positions
    where_grouped = np.empty(len(order), dtype=np.int64)
    where_grouped[grouped] = np.arange(len(order))  # time position -> index in the grouped list

    keep = np.flatnonzero(pos >= cfg.min_history)  # time positions of kept samples, in time order
    n = len(keep)
    lengths = _history_lengths(pos[keep], cfg.max_history)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    total = int(offsets[-1])
    if total > _MAX_LIST_VALUES:
        raise DataError(
            f"the histories hold {total:,} entries, more than a list column can address",
            field="data.max_history",
            fix="set data.max_history (e.g. 100) to keep only the most recent ratings",
        )
    # flat history: for sample k, grouped positions [g_k - len_k, g_k) in the user-by-user list
    end = where_grouped[keep]
    flat_grouped = np.repeat(end - lengths - offsets[:-1], lengths) + np.arange(total)
    row_of_grouped = order[grouped]  # original row of every grouped position, (n,)
    offsets32 = pa.array(offsets.astype(np.int32))
    hist_items = pa.ListArray.from_arrays(offsets32, pa.array(item[row_of_grouped][flat_grouped], pa.int64()))
    hist_ratings = pa.ListArray.from_arrays(offsets32, _take(_take(rating, row_of_grouped), flat_grouped))

    cut_train, cut_valid = split_bounds(n, cfg.split)
    split_codes = np.zeros(n, dtype=np.int8)
    split_codes[cut_train:cut_valid] = 1
    split_codes[cut_valid:] = 2
    for k, name in enumerate(SPLITS):
        if cfg.split[k] > 0 and not np.any(split_codes == k):
            raise DataError(
                f"split '{name}' is empty: {n} of {len(order)} interactions have at least "
                f"min_history={cfg.min_history} earlier ratings, split={tuple(cfg.split)}",
                field="data.split",
                fix="lower data.min_history, change data.split, or use more data",
            )
    split = pa.DictionaryArray.from_arrays(pa.array(split_codes), pa.array(SPLITS)).cast(pa.string())

    rows = order[keep]
    table = pa.Table.from_arrays(
        [
            pa.array(np.arange(n, dtype=np.int64)),
            pa.array(user[rows], pa.int64()),
            pa.array(item[rows], pa.int64()),
            pa.array(label[rows], pa.int8()),
            _take(rating, rows),
            pa.array(ts[rows], pa.int64()),
            hist_items,
            hist_ratings,
            split,
        ],
        schema=SAMPLES,
    )
    return table
