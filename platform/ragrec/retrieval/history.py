"""History retrieval for RALLRec prompts (DESIGN §5 steps 5-6; paper §2.2.4 and §2.4).

For each CTR sample the prompt shows K items of the user's history. :func:`select_history` picks them,
fully vectorised over chunks of samples:

1. the chunk's ``history_item_ids`` lists are padded into an (n, L) matrix ``H`` with a mask built from
   the list lengths (``H[mask] = flat_values``; no per-sample Python);
2. the relevance score of history position j for sample i is the dot product
   ``emb[H[i, j]] · emb[item_id[i]]``. When the catalog has at most :data:`SIM_MATRIX_MAX_ITEMS` items
   the item×item matrix ``emb @ emb.T`` is computed once per call and the scores are a gather from it
   (fastest: one BLAS call plus an (n, L) gather; ML-1M's 3,952 items make a 62 MB matrix); larger
   catalogs compute row-wise dot products of the flat (history, target) pairs in blocks;
3. a top-K by a packed integer key ``(order-preserving bits of the score) << 32 | position`` — a single
   unique key per entry, so ``np.partition`` + ``np.sort`` gives an exact ordering with ties broken by
   recency (the later history position wins).

Strategies (``RetrievalConfig.strategy``), positions counted in the chronological history
(oldest first); "rank" is 1-based:

* ``relevance`` — top-K by similarity, most similar first; equal scores: more recent first.
* ``recent`` — the K most recent items, most recent first.
* ``rerank`` — Eq. 8. The relevance channel (top-K by similarity) gives its rank-r item the score
  ``alpha / r**beta``; the recency channel (K most recent) gives ``(1 - alpha) / r**beta``. A history
  position in both channels keeps its larger score. The top-K positions by score are kept, best first;
  equal scores (after rounding to 12 decimals, so that e.g. (2/3)/2 equals 1 - 2/3) go to the more
  recent item. Channels are per history position, so a repeated item id is two candidates.
* ``hybrid`` — ``ceil(K/2)`` items from the relevance list under embedding A (``emb``) and the top
  ``K - ceil(K/2)`` of the relevance list under embedding B (``emb_b``); items picked by both count once and
  the shortfall is filled with the next items of A's list that are not yet picked. Output order: the items
  taken from A's list in A's order, then the items taken only from B's list in B's order.

Histories with at most K items keep all their items (in the strategy's order).
The output columns are ``context_item_ids`` (list<int64>) and ``context_ratings`` (list<float32>);
:func:`reorder_by_time` rewrites them into chronological order (the "time" augmentation view).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm.auto import tqdm

from ragrec.config import RetrievalConfig

__all__ = [
    "CONTEXT_ITEMS",
    "CONTEXT_RATINGS",
    "SIM_MATRIX_MAX_ITEMS",
    "rerank_position_scores",
    "select_history",
    "reorder_by_time",
]

CONTEXT_ITEMS = "context_item_ids"
CONTEXT_RATINGS = "context_ratings"
SIM_MATRIX_MAX_ITEMS = 8192
"""Catalogs up to this size use a precomputed item×item similarity matrix (float32, <= 268 MB)."""

_SCORE_DECIMALS = 12
_FLAT_BLOCK = 1 << 18  # (history, target) pairs per block of row-wise dot products (large catalogs)


def rerank_position_scores(k: int, alpha: float, beta: float) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 8 scores of ranks 1..k in each channel.

    Returns:
        ``(relevance, recency)``, two (k,) float64 arrays: ``alpha / r**beta`` and
        ``(1 - alpha) / r**beta`` for r = 1..k, rounded to 12 decimals so that mathematically equal
        scores compare equal.
    """
    r = np.arange(1, k + 1, dtype=np.float64) ** beta
    return np.round(alpha / r, _SCORE_DECIMALS), np.round((1.0 - alpha) / r, _SCORE_DECIMALS)


# ----------------------------------------------------------------------------------------------------
# input checks and padding


def _require(samples: pa.Table, names: list[str]) -> None:
    missing = [c for c in names if c not in samples.column_names]
    if missing:
        raise ValueError(
            f"samples table lacks column(s) {missing} (has {samples.column_names}); build it with the "
            f"rallrec samples protocol (ragrec.data) which adds history_item_ids / history_ratings"
        )


def _check_emb(emb: np.ndarray | None, name: str, strategy: str) -> np.ndarray:
    if emb is None:
        raise ValueError(f"retrieval.strategy={strategy!r} needs item embeddings '{name}' (got None)")
    arr = np.asarray(emb)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be an (n_items, d) matrix, got shape {arr.shape}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN/inf (first bad item {int(np.argwhere(~np.isfinite(arr))[0, 0])})")
    return arr


@dataclass
class _Chunk:
    """A padded chunk of samples: H/R (n, L) item ids / ratings, mask (n, L), lengths (n,), targets (n,)."""

    H: np.ndarray
    R: np.ndarray
    mask: np.ndarray
    lengths: np.ndarray
    targets: np.ndarray
    flat_items: np.ndarray


def _list_parts(col: pa.ChunkedArray | pa.Array, field: str) -> tuple[np.ndarray, np.ndarray]:
    """Flat values and per-row lengths of a list column (null lists count as empty)."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if not (pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type)):
        raise ValueError(f"samples column '{field}' must be a list column, got {arr.type}")
    flat = arr.flatten()
    if flat.null_count:
        raise ValueError(f"samples column '{field}' has null elements inside its lists; drop or fill them")
    lengths = pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    return flat.to_numpy(zero_copy_only=False), lengths


def _pad_chunk(t: pa.Table, n_items: int | None) -> _Chunk:
    items, lengths = _list_parts(t.column("history_item_ids"), "history_item_ids")
    ratings, r_len = _list_parts(t.column("history_ratings"), "history_ratings")
    if not np.array_equal(lengths, r_len):
        bad = int(np.flatnonzero(lengths != r_len)[0])
        sid = t.column("sample_id")[bad].as_py() if "sample_id" in t.column_names else bad
        raise ValueError(
            f"sample_id {sid}: history_item_ids has {lengths[bad]} items but history_ratings has {r_len[bad]}; "
            f"both lists must be aligned"
        )
    targets = t.column("item_id").to_numpy().astype(np.int64, copy=False)
    items = items.astype(np.int64, copy=False)
    if n_items is not None:
        for name, ids in (("history_item_ids", items), ("item_id", targets)):
            if ids.size and (ids.min() < 0 or ids.max() >= n_items):
                raise ValueError(
                    f"samples column '{name}' has item ids outside [0, {n_items}) of the embedding matrix "
                    f"(min {ids.min()}, max {ids.max()}); embeddings must cover every dense item id"
                )
    n = len(lengths)
    width = int(lengths.max()) if n else 0
    mask = np.arange(width)[None, :] < lengths[:, None]
    H = np.zeros((n, width), dtype=np.int64)
    R = np.zeros((n, width), dtype=np.float32)
    H[mask] = items
    R[mask] = ratings
    return _Chunk(H, R, mask, lengths, targets, items)


# ----------------------------------------------------------------------------------------------------
# scoring and top-K


class _Scorer:
    """Dot-product similarity of history items to target items (see module docstring for the choice)."""

    def __init__(self, emb: np.ndarray) -> None:
        self.emb = emb
        self.n_items = emb.shape[0]
        self.sim = (emb @ emb.T).ravel() if self.n_items <= SIM_MATRIX_MAX_ITEMS else None

    def __call__(self, c: _Chunk) -> np.ndarray:
        """(n, L) float32 similarities; padding entries hold arbitrary values (the mask excludes them)."""
        if self.sim is not None:
            return np.take(self.sim, c.targets[:, None] * self.n_items + c.H)
        tgt = np.repeat(c.targets, c.lengths)
        flat = np.empty(len(tgt), dtype=np.float32)
        for s in range(0, len(tgt), _FLAT_BLOCK):
            e = slice(s, s + _FLAT_BLOCK)
            flat[e] = np.einsum("ij,ij->i", self.emb[c.flat_items[e]], self.emb[tgt[e]])
        out = np.zeros(c.mask.shape, dtype=np.float32)
        out[c.mask] = flat
        return out


def _sortable_bits(x: np.ndarray) -> np.ndarray:
    """Order-preserving map float32 -> int64 in [-2**31, 2**31) (finite inputs; -0.0 and +0.0 map equal).

    The classic trick: for negative floats flip the 31 magnitude bits, then compare as signed ints.
    """
    bits = (x.astype(np.float32, copy=False) + np.float32(0.0)).view(np.int32)  # + 0.0 turns -0.0 into +0.0
    return (bits ^ ((bits >> 31) & np.int32(0x7FFFFFFF))).astype(np.int64)


_MISSING = np.int64(np.iinfo(np.int64).min)


def _topk(primary: np.ndarray, mask: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k positions per row by (primary desc, position desc).

    Args:
        primary: (n, L) int64 codes in [-2**31, 2**31) (larger is better); overwritten.
        mask: (n, L) which entries are candidates.
        k: how many to keep.

    Returns:
        ``(pos, valid)``, both (n, min(k, L)); valid entries come first in each row, best first.
    """
    n, width = mask.shape
    kk = min(k, width)
    if kk == 0:
        return np.zeros((n, 0), np.int64), np.zeros((n, 0), bool)
    # unique key per entry: primary in the high 32 bits, the position in the low 32 bits (in place)
    keys = np.left_shift(primary, 32, out=primary if primary.dtype == np.int64 else None)
    keys |= np.arange(width, dtype=np.int64)[None, :]
    keys[~mask] = _MISSING
    if kk < width:
        keys = np.partition(keys, width - kk, axis=1)[:, width - kk :]
    keys = np.sort(keys, axis=1)[:, ::-1][:, :kk]
    pos = (keys & np.int64(0xFFFFFFFF)).astype(np.int64)
    return pos, keys != _MISSING


def _relevance(c: _Chunk, sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    return _topk(_sortable_bits(sims), c.mask, k)


def _recent(c: _Chunk, k: int) -> tuple[np.ndarray, np.ndarray]:
    kk = min(k, c.mask.shape[1])
    r = np.arange(kk)[None, :]
    return np.maximum(c.lengths[:, None] - 1 - r, 0), r < c.lengths[:, None]


def _rerank(c: _Chunk, sims: np.ndarray, k: int, alpha: float, beta: float) -> tuple[np.ndarray, np.ndarray]:
    rel_tab, rec_tab = rerank_position_scores(k, alpha, beta)
    n, width = c.mask.shape
    rows = np.broadcast_to(np.arange(n)[:, None], (n, min(k, width)))
    score = np.full((n, width), -1.0)
    rel_pos, rel_ok = _relevance(c, sims, k)
    score[rows[rel_ok], rel_pos[rel_ok]] = np.broadcast_to(rel_tab[: rel_pos.shape[1]], rel_pos.shape)[rel_ok]
    rec_rank = c.lengths[:, None] - np.arange(width)[None, :]  # 1 = most recent
    in_rec = c.mask & (rec_rank <= k)
    rec_score = np.where(in_rec, rec_tab[np.clip(rec_rank, 1, k) - 1], -1.0)
    score = np.maximum(score, rec_score)
    values = np.unique(np.concatenate([rel_tab, rec_tab]))
    code = np.searchsorted(values, score).astype(np.int64)
    return _topk(code, score >= 0.0, k)


def _hybrid(c: _Chunk, sims_a: np.ndarray, sims_b: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    n, width = c.mask.shape
    k_a = (k + 1) // 2
    k_b = k - k_a
    a_pos, a_ok = _relevance(c, sims_a, k)
    b_pos, b_ok = _relevance(c, sims_b, k_b) if k_b else (np.zeros((n, 0), np.int64), np.zeros((n, 0), bool))
    rows = np.arange(n)[:, None]
    a_head = a_ok.copy()
    a_head[:, k_a:] = False
    picked = np.zeros((n, width), bool)
    picked[np.broadcast_to(rows, a_pos.shape)[a_head], a_pos[a_head]] = True
    b_only = b_ok & ~picked[rows, b_pos]
    picked[np.broadcast_to(rows, b_pos.shape)[b_only], b_pos[b_only]] = True
    need = np.minimum(k, c.lengths) - picked.sum(axis=1)
    cand = a_ok & ~a_head & ~picked[rows, a_pos]
    fill = cand & (np.cumsum(cand, axis=1) <= need[:, None])
    pos = np.concatenate([a_pos, b_pos], axis=1)
    ok = np.concatenate([a_head | fill, b_only], axis=1)
    order = np.argsort(~ok, axis=1, kind="stable")  # compact: valid entries first, relative order kept
    return np.take_along_axis(pos, order, 1), np.take_along_axis(ok, order, 1)


# ----------------------------------------------------------------------------------------------------
# public API


def _with_columns(samples: pa.Table, ids: pa.Array, ratings: pa.Array) -> pa.Table:
    out = samples
    for name, arr in ((CONTEXT_ITEMS, ids), (CONTEXT_RATINGS, ratings)):
        field = pa.field(name, arr.type)
        i = out.schema.get_field_index(name)
        out = out.set_column(i, field, arr) if i >= 0 else out.append_column(field, arr)
    return out


def _list_array(values: np.ndarray, counts: np.ndarray, value_type: pa.DataType) -> pa.Array:
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    if offsets[-1] > np.iinfo(np.int32).max:
        raise ValueError("context lists exceed 2**31 values in total; select_history on smaller tables")
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values, type=value_type))


def select_history(
    samples: pa.Table,
    cfg: RetrievalConfig,
    emb: np.ndarray | None,
    emb_b: np.ndarray | None = None,
    chunk: int = 4096,
) -> pa.Table:
    """Pick K history items per sample (see the module docstring for each strategy).

    Args:
        samples: canonical samples table (``item_id``, ``history_item_ids`` list<int64> oldest first,
            ``history_ratings`` list<float32>); n rows.
        cfg: ``strategy``, ``k``, ``alpha``, ``beta``.
        emb: (n_items, d) item embeddings, row = dense item id (ignored by ``recent``). Scores are plain
            dot products: pass L2-normalised / :func:`~ragrec.retrieval.embeddings.mix`-ed rows for cosine.
        emb_b: (n_items, d_b) second embedding for ``hybrid``.
        chunk: samples per vectorised block (memory ~ chunk × longest history in the block).

    Returns:
        ``samples`` with ``context_item_ids`` list<int64> and ``context_ratings`` list<float32> appended
        (replaced if present); row i holds min(K, len(history_i)) items in the strategy's order.
    """
    _require(samples, ["item_id", "history_item_ids", "history_ratings"])
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    strategy, k = cfg.strategy, cfg.k
    scorer_a = scorer_b = None
    n_items = None
    if strategy != "recent":
        ea = _check_emb(emb, "emb", strategy)
        n_items = ea.shape[0]
        scorer_a = _Scorer(ea)
    if strategy == "hybrid":
        eb = _check_emb(emb_b, "emb_b", strategy)
        if eb.shape[0] != n_items:
            raise ValueError(f"hybrid: emb has {n_items} items but emb_b has {eb.shape[0]}; both must cover all items")
        scorer_b = _Scorer(eb)

    ids_out, rat_out, counts_out = [], [], []
    starts = range(0, samples.num_rows, chunk)
    for s in tqdm(starts, desc=f"select_history[{strategy}]", disable=not sys.stderr.isatty(), leave=False):
        c = _pad_chunk(samples.slice(s, chunk), n_items)
        if strategy == "recent":
            pos, ok = _recent(c, k)
        elif strategy == "relevance":
            pos, ok = _relevance(c, scorer_a(c), k)
        elif strategy == "rerank":
            pos, ok = _rerank(c, scorer_a(c), k, cfg.alpha, cfg.beta)
        elif strategy == "hybrid":
            pos, ok = _hybrid(c, scorer_a(c), scorer_b(c), k)
        else:  # pragma: no cover - RetrievalConfig validates the literal
            raise ValueError(f"unknown retrieval.strategy {strategy!r}")
        ids_out.append(np.take_along_axis(c.H, pos, 1)[ok])
        rat_out.append(np.take_along_axis(c.R, pos, 1)[ok])
        counts_out.append(ok.sum(axis=1))
    counts = np.concatenate(counts_out) if counts_out else np.zeros(0, np.int64)
    ids = np.concatenate(ids_out) if ids_out else np.zeros(0, np.int64)
    rats = np.concatenate(rat_out) if rat_out else np.zeros(0, np.float32)
    return _with_columns(
        samples, _list_array(ids, counts, pa.int64()), _list_array(rats.astype(np.float32), counts, pa.float32())
    )


def reorder_by_time(samples: pa.Table) -> pa.Table:
    """Rewrite ``context_item_ids`` / ``context_ratings`` into chronological order (oldest first).

    The time of a context item is its position in the sample's ``history_item_ids``; when an item id
    occurs several times in a history its latest occurrence is used. Fully vectorised (sort + search).

    Args:
        samples: output of :func:`select_history` (n rows).

    Returns:
        the same table with both context columns reordered in place; all other columns unchanged.
    """
    _require(samples, ["history_item_ids", CONTEXT_ITEMS, CONTEXT_RATINGS])
    hv, hl = _list_parts(samples.column("history_item_ids"), "history_item_ids")
    cv, cl = _list_parts(samples.column(CONTEXT_ITEMS), CONTEXT_ITEMS)
    cr_vals, crl = _list_parts(samples.column(CONTEXT_RATINGS), CONTEXT_RATINGS)
    if not np.array_equal(cl, crl):
        raise ValueError(f"{CONTEXT_ITEMS} and {CONTEXT_RATINGS} have different list lengths; rerun select_history")
    n = len(hl)
    if cv.size == 0:
        return samples
    hv, cv = hv.astype(np.int64), cv.astype(np.int64)
    h_rows = np.repeat(np.arange(n), hl)
    h_pos = np.arange(len(hv)) - np.repeat(np.cumsum(hl) - hl, hl)
    c_rows = np.repeat(np.arange(n), cl)
    base = int(max(hv.max(initial=0), cv.max())) + 1
    h_key = h_rows * base + hv
    order = np.lexsort((h_pos, h_key))
    h_key, h_pos = h_key[order], h_pos[order]
    c_key = c_rows * base + cv
    at = np.searchsorted(h_key, c_key, side="right") - 1
    found = (at >= 0) & (h_key[np.maximum(at, 0)] == c_key)
    if not found.all():
        row = int(c_rows[np.argmin(found)])
        raise ValueError(f"row {row}: a context item is not in history_item_ids; context must come from the history")
    perm = np.lexsort((h_pos[at], c_rows))
    return _with_columns(
        samples,
        _list_array(cv[perm], cl, pa.int64()),
        _list_array(cr_vals[perm].astype(np.float32), cl, pa.float32()),
    )
