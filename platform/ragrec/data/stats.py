"""Rating statistics known at a sample's time: the user's past ratings and the target item's ratings so far; and
:func:`dataset_stats`, a dataset's size, sparsity and positive rate under its protocol (``ragrec data stats``).

The first two feed ``prompt.stats`` (a line in the CTR prompt that states them): the numbers that the counting
baselines use, written out so that a small LLM does not have to average a list of stars itself. Both are
causal: an item's statistics count only interactions strictly before the sample's timestamp (never the
sample's own rating), and a user's come from the sample's own history lists. Vectorised: one sort of the
interactions and a ``searchsorted`` per query batch.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["dataset_stats", "format_dataset_stats", "history_stats", "item_stats_before"]

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


# ---- dataset statistics (`ragrec data stats`) -------------------------------------------------------------------
def dataset_stats(ds, cfg, *, seed: int = 0) -> dict:
    """What the papers' dataset tables print, for a loaded dataset under ``cfg.protocol``.

    Users, items and interactions are those present in the interactions (the items table may hold more: its size
    is ``items_table``); ``sparsity = 1 - interactions / (users * items)``; ``positive_rate`` is the share of
    interactions with label 1 under the dataset's rule (``rating > data.label_threshold`` unless the labels came
    with the data). The protocol part counts what the protocol builds, per split:

    * ``rallrec`` / ``temporal``: the CTR samples and their positive rate (built with ``max_history =
      min_history``: the counts and labels do not depend on the history length);
    * ``rerank``: the candidate lists (one per target positive; built with 2 uniform candidates, which leaves the
      targets unchanged), each holding 1 positive of ``data.rerank.num_candidates``;
    * ``full_ranking``: the distinct positive (user, item) pairs of each split.

    Args:
        ds: a :class:`~ragrec.data.Dataset`.
        cfg: its :class:`~ragrec.config.DataConfig`.
        seed: the run's seed (rerank / full_ranking draw with it).

    Returns:
        A dict with ``name``, ``protocol``, ``users``, ``items``, ``items_table``, ``users_table``, ``interactions``,
        ``sparsity``, ``positive_rate``, ``label_rule``, ``samples`` ({split: rows}), ``sample_positive_rate``
        ({split: rate} or None), ``unit`` (what a sample is).
    """
    from .protocols import _labels, build_samples
    from .sources import label_rule

    inter = ds.interactions
    n = inter.num_rows
    n_users = len(pc.unique(inter.column("user_id"))) if n else 0
    n_items = len(pc.unique(inter.column("item_id"))) if n else 0
    labels = _labels(inter, cfg.label_threshold) if n else np.zeros(0, dtype=np.int8)
    out = {
        "name": ds.name,
        "protocol": cfg.protocol,
        "users": n_users,
        "items": n_items,
        "users_table": ds.n_users,
        "items_table": ds.n_items,
        "interactions": n,
        "sparsity": 1.0 - n / (n_users * n_items) if n_users and n_items else float("nan"),
        "positive_rate": float(labels.mean()) if n else float("nan"),
        "label_rule": label_rule(cfg),
    }
    if cfg.protocol in ("rallrec", "temporal"):
        data = cfg.model_copy(update={"max_history": cfg.min_history})
        unit = "CTR samples"
    elif cfg.protocol == "rerank":
        rr = cfg.rerank.model_copy(update={"num_candidates": 2, "negatives": "uniform"})
        data = cfg.model_copy(update={"rerank": rr})
        unit = f"candidate lists of {cfg.rerank.num_candidates} (1 positive each)"
    else:
        data = cfg
        unit = "positive (user, item) pairs"
    samples = build_samples(inter, _Seeded(data, seed))
    split = samples.column("split").to_numpy(zero_copy_only=False)
    out["unit"] = unit
    out["samples"] = {s: int((split == s).sum()) for s in ("train", "valid", "test")}
    if "label" in samples.column_names:
        lab = samples.column("label").to_numpy()
        out["sample_positive_rate"] = {
            s: float(lab[split == s].mean()) if (split == s).any() else float("nan") for s in ("train", "valid", "test")
        }
        out["sample_positive_rate"]["all"] = float(lab.mean()) if len(lab) else float("nan")
    else:
        out["sample_positive_rate"] = None
    return out


class _Seeded:
    """A stand-in RunConfig for :func:`~ragrec.data.protocols.build_samples`: ``data`` and ``seed``."""

    def __init__(self, data, seed: int):
        self.data, self.seed = data, seed


def format_dataset_stats(st: dict) -> str:
    """The lines ``ragrec data stats`` prints for :func:`dataset_stats`'s dict."""

    def pct(x: float, digits: int = 2) -> str:
        return "n/a" if x != x else f"{100 * x:.{digits}f}%"

    items = f"{st['items']:,}"
    if st["items_table"] != st["items"]:
        items += f" ({st['items_table']:,} in the items table)"
    users = f"{st['users']:,}"
    if st["users_table"] != st["users"]:
        users += f" ({st['users_table']:,} in the users table)"
    s = st["samples"]
    lines = [
        f"dataset        {st['name']}",
        f"users          {users}",
        f"items          {items}",
        f"interactions   {st['interactions']:,}",
        f"sparsity       {pct(st['sparsity'], 4)}",
        f"positive rate  {pct(st['positive_rate'])} of interactions; {st['label_rule']}",
        f"protocol       {st['protocol']}: {sum(s.values()):,} {st['unit']}: "
        f"train {s['train']:,} / valid {s['valid']:,} / test {s['test']:,}",
    ]
    r = st["sample_positive_rate"]
    if r is not None:
        lines.append(
            f"sample positive rate  {pct(r['all'])} (train {pct(r['train'])} / valid {pct(r['valid'])} / "
            f"test {pct(r['test'])})"
        )
    return "\n".join(lines)
