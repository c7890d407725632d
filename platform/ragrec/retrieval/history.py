"""History retrieval for RALLRec prompts (paper §2.2.4 and §2.4).

For each CTR sample the prompt shows K items of the user's history. :func:`select_history` picks them,
fully vectorised, without any per-sample Python and with almost no padding:

1. the history lists stay flat (Arrow's values buffer, zero-copy) with per-sample start offsets and
   lengths; the samples are ordered by history length (one argsort of the lengths) and cut into blocks
   of about :data:`_BLOCK_ENTRIES` entries, so a block's (b, W) matrix — W = its longest history — is
   gathered straight from the flat arrays with hardly any padding (the old fixed chunks were padded to
   their longest history, ≈7× the real entries on MovieLens); results go back to the input order at
   the end;
2. the relevance score of history position j for sample i is the dot product
   ``emb[H[i, j]] · emb[item_id[i]]``. When the catalog has at most :data:`SIM_MATRIX_MAX_ITEMS` items
   the item×item matrix ``emb @ emb.T`` is computed once per call (one BLAS thread) and the scores are
   gathers from it; larger catalogs compute row-wise dot products of the (history, target) pairs;
3. a top-K by a packed integer key ``code << position_bits | position`` — unique per entry, larger is
   better, ties between equal scores broken by recency (the later history position wins) — via
   ``np.partition`` / ``np.sort`` along rows (SIMD sorts). The fast code is the score quantised
   monotonically into the bits an int32 key leaves (half the memory traffic and twice the sort speed
   of int64 keys); it cannot invert two scores but may merge close ones, so every row whose top K + 1
   holds two equal codes is re-ranked with exact int64 keys (the float32 score's order-preserving
   bits) — a few percent of the rows, mostly true ties;
4. ``rerank`` merges the relevance top-K with the K most recent positions in a (b, 2K) key matrix
   (score codes from a (rank, recency rank) table) and sorts its rows once.

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

import functools
import itertools
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from threadpoolctl import ThreadpoolController
from tqdm.auto import tqdm

from ragrec.config import RetrievalConfig

__all__ = [
    "CONTEXT_ITEMS",
    "CONTEXT_RATINGS",
    "SIM_MATRIX_MAX_ITEMS",
    "reorder_by_time",
    "rerank_position_scores",
    "select_history",
]

CONTEXT_ITEMS = "context_item_ids"
CONTEXT_RATINGS = "context_ratings"
SIM_MATRIX_MAX_ITEMS = 8192
"""Catalogs up to this size use a precomputed item×item similarity matrix (float32, <= 268 MB)."""

_SCORE_DECIMALS = 12
_FLAT_BLOCK = 1 << 18  # (history, target) pairs per block of row-wise dot products (large catalogs)
_FLAT_BLOCK_FLOATS = 1 << 24  # ... and at most this many gathered embedding floats (64 MiB) per operand
_BLOCK_ENTRIES = 1 << 16  # padded history entries per vectorised block (int64 arrays of 512 KiB: L2-sized)
_PIECE_ROWS = 1 << 15  # consecutive Arrow record batches are merged until a piece has this many rows
_SORT_MAX_WIDTH = 128  # top-K of rows up to this wide by a full row sort, wider ones partition first
_MIN_QUANTISED_BITS = 16  # int32 keys only when >= this many bits are left for the quantised score
_INT32_BITS = 31  # value bits of an int32 key (code and position)
_SINGLE_THREAD_MATMUL_FLOPS = 8e9  # item x item products up to this size run on one BLAS thread


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
# input checks and flat views


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


@dataclass
class _Flat:
    """One piece of the samples table as flat arrays (E history entries of n samples, zero-copy).

    items (E,) int64 / ratings (E,) float32: all histories concatenated; starts (n,) int64: where sample
    i's history begins in them; lengths (n,) int64; targets (n,) int64: the samples' ``item_id``.
    """

    items: np.ndarray
    ratings: np.ndarray
    starts: np.ndarray
    lengths: np.ndarray
    targets: np.ndarray


def _check_ids(ids: np.ndarray, name: str, n_items: int) -> None:
    if ids.size and int(ids.view(np.uint64).max()) >= n_items:  # one pass: negatives wrap to huge values
        raise ValueError(
            f"samples column '{name}' has item ids outside [0, {n_items}) of the embedding matrix "
            f"(min {ids.min()}, max {ids.max()}); embeddings must cover every dense item id"
        )


def _flat_piece(t: pa.Table | pa.RecordBatch, n_items: int | None) -> _Flat:
    items, lengths = _list_parts(t.column("history_item_ids"), "history_item_ids")
    ratings, r_len = _list_parts(t.column("history_ratings"), "history_ratings")
    if not np.array_equal(lengths, r_len):
        bad = int(np.flatnonzero(lengths != r_len)[0])
        sid = t.column("sample_id")[bad].as_py() if "sample_id" in t.column_names else bad
        raise ValueError(
            f"sample_id {sid}: history_item_ids has {lengths[bad]} items but history_ratings has {r_len[bad]}; "
            f"both lists must be aligned"
        )
    targets = np.asarray(t.column("item_id").to_numpy(zero_copy_only=False)).astype(np.int64, copy=False)
    items = items.astype(np.int64, copy=False)
    if n_items is not None:
        _check_ids(items, "history_item_ids", n_items)
        _check_ids(targets, "item_id", n_items)
    starts = np.zeros(len(lengths), dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    return _Flat(items, ratings, starts, lengths, targets)


def _pieces(samples: pa.Table) -> Iterator[pa.Table | pa.RecordBatch]:
    """The table's record batches (zero-copy); runs of small batches merged to >= _PIECE_ROWS rows."""
    cols = [c for c in ("sample_id", "item_id", "history_item_ids", "history_ratings") if c in samples.column_names]
    group: list[pa.RecordBatch] = []
    rows = 0
    for batch in samples.select(cols).to_batches():
        group.append(batch)
        rows += batch.num_rows
        if rows >= _PIECE_ROWS:
            yield group[0] if len(group) == 1 else pa.Table.from_batches(group).combine_chunks()
            group, rows = [], 0
    if group:
        yield group[0] if len(group) == 1 else pa.Table.from_batches(group).combine_chunks()


# ----------------------------------------------------------------------------------------------------
# blocks of samples of similar history length


@dataclass
class _Block:
    """b samples of one block, ascending history length: rows (b,) their indices in the piece; starts,
    lengths (b,) int64; items (b, W) int64 history item ids, W = lengths[-1] (entries past a sample's
    length belong to other samples: padding, excluded by ``lengths``)."""

    rows: np.ndarray
    starts: np.ndarray
    lengths: np.ndarray
    items: np.ndarray


def _block_bounds(sorted_lengths: np.ndarray, chunk: int) -> np.ndarray:
    """Cut points of blocks over samples sorted by history length: <= ``chunk`` samples and about
    ``_BLOCK_ENTRIES`` entries each (a single longer history is a block of its own); empty histories
    (at the front) are skipped. Returns ascending int64 cut points, first = first non-empty sample."""
    n = len(sorted_lengths)
    first = int(np.searchsorted(sorted_lengths, 0, side="right"))
    cum = np.cumsum(sorted_lengths[first:])
    total = int(cum[-1]) if cum.size else 0
    by_entries = first + np.searchsorted(cum, np.arange(_BLOCK_ENTRIES, total, _BLOCK_ENTRIES), side="right")
    by_rows = np.arange(first, n, chunk)
    return np.unique(np.concatenate([by_rows, by_entries, [first, n]]))


def _gather_rows(flat: np.ndarray, starts: np.ndarray, width: int) -> np.ndarray:
    """(b, width) copy of ``flat[starts[i] : starts[i] + width]`` for each row (clamped at the end of flat).

    A fancy index on a read-only strided window view copies each row with one contiguous memcpy —
    about 3× faster than building and applying an (b, width) index array.
    """
    last = len(flat) - width
    view = np.lib.stride_tricks.as_strided(flat, (last + 1, width), (flat.strides[0],) * 2, writeable=False)
    out = view[np.minimum(starts, last)]
    over = np.flatnonzero(starts > last)  # the few rows within `width` of the end: shifted by the clamp
    if over.size:
        idx = np.minimum(starts[over, None] + np.arange(width), len(flat) - 1)
        out[over] = flat[idx]
    return out


def _blocks(p: _Flat, chunk: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(rows, lengths) of each block: sample indices of the piece, ascending history length."""
    order = np.argsort(p.lengths, kind="stable")
    lengths = p.lengths[order]
    bounds = _block_bounds(lengths, chunk).tolist()
    return [(order[b0:b1], lengths[b0:b1]) for b0, b1 in itertools.pairwise(bounds)]


def _block(p: _Flat, rows: np.ndarray, lengths: np.ndarray) -> _Block:
    starts = p.starts[rows]
    return _Block(rows, starts, lengths, _gather_rows(p.items, starts, int(lengths[-1])))


# ----------------------------------------------------------------------------------------------------
# scoring: packed integer sort keys


def _sortable_bits(x: np.ndarray) -> np.ndarray:
    """Order-preserving map float32 -> int64 in [-2**31, 2**31) (finite inputs; -0.0 and +0.0 map equal).

    The classic trick: for negative floats flip the 31 magnitude bits, then compare as signed ints.
    """
    bits = (x.astype(np.float32, copy=False) + np.float32(0.0)).view(np.int32)  # + 0.0 turns -0.0 into +0.0
    return (bits ^ ((bits >> 31) & np.int32(0x7FFFFFFF))).astype(np.int64)


@functools.lru_cache(maxsize=1)
def _threadpools() -> ThreadpoolController:
    return ThreadpoolController()  # inspects the loaded native libraries once per process


def _similarity_matrix(emb: np.ndarray) -> np.ndarray:
    """(n, n) float32 ``emb @ emb.T``; small products run on one BLAS thread.

    After a multi-threaded product OpenBLAS's idle workers spin for a while, burning a second CPU
    (tens of ms of CPU time here) while the single-threaded gathers and sorts that follow run; for a
    product this small (ML-1M: 4 GFLOP at d = 128) one thread costs little wall time.
    """
    n, d = emb.shape
    if 2.0 * n * n * d > _SINGLE_THREAD_MATMUL_FLOPS:
        return emb @ emb.T
    with _threadpools().limit(limits=1, user_api="blas"):
        return emb @ emb.T


def _key_dtype(code_bits: int, pos_bits: int) -> type:
    return np.int32 if code_bits + pos_bits <= _INT32_BITS else np.int64


class _Keys:
    """Sort keys ``code << pos_bits`` (code >= 1, larger = more similar) of (target, history item) pairs.

    Two codes: ``exact`` — the order-preserving bits of the float32 score (int64 keys, always correct);
    ``quantised`` — ``floor((score - lo) * scale) + 1`` over the similarity matrix's range [lo, hi],
    squeezed into the ``31 - pos_bits`` bits an int32 key leaves (half the memory traffic and twice the
    sort speed of int64 keys). The quantised code is non-decreasing in the score, so it orders entries
    exactly except within a group of equal codes; :func:`_relevance` re-ranks the rows whose top-K
    touches such a group with exact keys.

    Args:
        emb: (n_items, d) float32 embeddings.
        pos_bits: bits of the largest history position (the low bits of a key hold the position).
    """

    def __init__(self, emb: np.ndarray, pos_bits: int) -> None:
        self.emb = emb
        self.n_items = n = emb.shape[0]
        self.pos_bits = pos_bits
        self.sim: np.ndarray | None = None
        self.quantised: np.ndarray | None = None
        if n > SIM_MATRIX_MAX_ITEMS:
            return
        self.sim = _similarity_matrix(emb).ravel()
        lo, hi = float(self.sim.min()), float(self.sim.max())
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise ValueError("emb @ emb.T overflows float32 (inf); scale the embeddings down (e.g. L2-normalise)")
        code_bits = min(_INT32_BITS - pos_bits, 24)  # 24: float32 holds every integer code exactly
        if code_bits >= _MIN_QUANTISED_BITS:
            top = np.float32(2**code_bits - 1)
            scale = np.float32((2**code_bits - 2) / (hi - lo) if hi > lo else 0.0)
            code = np.subtract(self.sim, np.float32(lo))  # every step is monotone in the score
            code *= scale
            code += np.float32(1.0)
            np.minimum(code, top, out=code)  # in [1, 2**code_bits - 1]; int32 conversion truncates = floor
            self.quantised = code.astype(np.int32)
            self.quantised <<= pos_bits

    def __call__(self, targets: np.ndarray, items: np.ndarray) -> np.ndarray:
        """(b, W) int32 quantised keys when available, else exact int64 keys (positions not set)."""
        if self.quantised is not None:
            return np.take(self.quantised, np.add(items, (targets * self.n_items)[:, None]))
        return self.exact(targets, items)

    def exact(self, targets: np.ndarray, items: np.ndarray) -> np.ndarray:
        """(b, W) int64 keys from the float32 scores of targets (b,) and history items (b, W)."""
        if self.sim is not None:
            sims = np.take(self.sim, np.add(items, (targets * self.n_items)[:, None]))
        else:
            tgt = np.broadcast_to(targets[:, None], items.shape).ravel()
            flat_items = items.ravel()
            sims = np.empty(len(tgt), dtype=np.float32)
            step = max(1, min(_FLAT_BLOCK, _FLAT_BLOCK_FLOATS // self.emb.shape[1]))  # bounded (step, d) gathers
            for s in range(0, len(tgt), step):
                e = slice(s, s + step)
                sims[e] = np.einsum("ij,ij->i", self.emb[flat_items[e]], self.emb[tgt[e]])
            sims = sims.reshape(items.shape)
        return (_sortable_bits(sims) + np.int64(2**31 + 1)) << self.pos_bits


# ----------------------------------------------------------------------------------------------------
# top-K per row and the strategies; every function returns (b, kk) positions whose first
# min(length, k) entries per row are the selection, kk = min(k, W)


def _top_keys(keys: np.ndarray, lengths: np.ndarray, k: int) -> np.ndarray:
    """The k largest packed keys per row, in ascending order (contiguous: cheap to compare).

    Args:
        keys: (b, W) ``code << pos_bits`` with code >= 1; overwritten (positions or-ed in, padding zeroed).
        lengths: (b,) ascending valid entries per row; k: how many to keep.

    Returns:
        (b, min(k, W)) keys ascending, best last; rows with fewer than k entries start with zeros.
    """
    width = keys.shape[1]
    cols = np.arange(width, dtype=keys.dtype)
    keys |= cols
    padded = int(np.searchsorted(lengths, width))  # rows [0, padded) are shorter than the block
    if padded:
        keys[:padded] *= cols < lengths[:padded, None]
    kk = min(k, width)
    if kk == width or width <= _SORT_MAX_WIDTH:  # short rows: one SIMD sort costs what the partition does
        keys.sort(axis=1)
        return keys[:, width - kk :]
    keys.partition(width - kk, axis=1)
    return np.sort(keys[:, width - kk :], axis=1)


def _positions(top: np.ndarray, k: int, pos_bits: int) -> np.ndarray:
    """(b, min(k, kk)) int64 positions of the k best of the ascending keys top (b, kk), best first."""
    return (top[:, : -min(k, top.shape[1]) - 1 : -1] & ((1 << pos_bits) - 1)).astype(np.int64)


def _relevance(blk: _Block, keys: _Keys, k: int, targets: np.ndarray) -> np.ndarray:
    """(b, min(k, W)) history positions by similarity (best first; equal scores: later position first)."""
    tgt = targets[blk.rows]
    if keys.quantised is None:
        return _positions(_top_keys(keys.exact(tgt, blk.items), blk.lengths, k), k, keys.pos_bits)
    top = _top_keys(keys(tgt, blk.items), blk.lengths, k + 1)  # one more: the best one left out
    # Equal quantised codes inside the top k + 1 may hide different scores in unknown order: such rows
    # are redone with exact keys. Equal codes => neighbouring keys differ by < 2**pos_bits (a superset test).
    close = (top[:, 1:] - top[:, :-1]) < (1 << keys.pos_bits)
    short = int(np.searchsorted(blk.lengths, k + 1))  # rows [0, short) may hold zero (padding) keys
    if short:
        close[:short] &= top[:short, :-1] > 0
    pos = _positions(top, k, keys.pos_bits)
    redo = np.flatnonzero(close.any(axis=1))
    if redo.size:
        exact = _top_keys(keys.exact(tgt[redo], blk.items[redo]), blk.lengths[redo], k)
        pos[redo] = _positions(exact, k, keys.pos_bits)
    return pos


@dataclass(frozen=True)
class _RerankCodes:
    """Eq. 8 score codes for ranks, shifted by ``pos_bits`` (code >= 1, larger = better score).

    merged: (k, k + 1) code of a relevance-rank-r pick whose recency rank is s (s = k: not recent),
    ``max`` of both channels' scores; recent: (k,) code of recency rank s; dtype: key dtype.
    """

    merged: np.ndarray
    recent: np.ndarray
    dtype: type

    @staticmethod
    def of(k: int, alpha: float, beta: float, pos_bits: int) -> _RerankCodes:
        rel_tab, rec_tab = rerank_position_scores(k, alpha, beta)
        values = np.unique(np.concatenate([rel_tab, rec_tab]))
        dtype = _key_dtype(len(values).bit_length(), pos_bits)
        rel = np.searchsorted(values, rel_tab) + 1
        rec = np.searchsorted(values, rec_tab) + 1
        merged = np.maximum(rel[:, None], np.append(rec, 0)[None, :])
        return _RerankCodes((merged << pos_bits).astype(dtype).ravel(), (rec << pos_bits).astype(dtype), dtype)


def _rerank(blk: _Block, rel_pos: np.ndarray, k: int, codes: _RerankCodes, pos_bits: int) -> np.ndarray:
    """Eq. 8 over the <= 2K candidates: the relevance top-K (rel_pos, (b, kk)) and the K most recent.

    Candidates are packed keys ``score code << pos_bits | position`` in a (b, 2kk) matrix: relevance
    picks first (their code the max of both channels, by a (rank, recency rank) table lookup), then the
    recency channel, whose slots already picked by relevance are zeroed; one row sort ranks them.
    """
    b, kk = rel_pos.shape
    lengths = blk.lengths[:, None]
    ranks = np.arange(kk)
    rec_rank = lengths - 1 - rel_pos  # 0-based rank of each relevance pick in the recency channel, >= 0
    np.minimum(rec_rank, k, out=rec_rank)  # k: not in the recency channel
    short = int(np.searchsorted(blk.lengths, k))  # rows [0, short) hold fewer than k history items
    valid = ranks < lengths[:short]  # (short, kk): their channels hold only `length` positions
    rec_rank[:short][~valid] = k  # entries past a short row's length are no picks
    cand = np.empty(b * 2 * kk + 1, dtype=codes.dtype)  # + 1: a dump slot for the zeroing scatter below
    keys = cand[:-1].reshape(b, 2 * kk)
    keys[:, :kk] = np.take(codes.merged, rec_rank + ranks * (k + 1)) | rel_pos
    keys[:, kk:] = codes.recent[:kk] | (lengths - 1 - ranks)
    slot = rec_rank + (np.arange(b) * (2 * kk) + kk)[:, None]
    slot[rec_rank >= k] = len(cand) - 1
    cand[slot] = 0  # the recency copy of a position that relevance picked too
    if short:
        keys[:short] *= np.concatenate([valid, valid], axis=1)
    keys.sort(axis=1)
    return (keys[:, : -kk - 1 : -1] & ((1 << pos_bits) - 1)).astype(np.int64)


def _hybrid(blk: _Block, a_pos: np.ndarray, b_pos: np.ndarray, k: int) -> np.ndarray:
    """Merge A's relevance list (a_pos, (b, kk)) and B's (b_pos, (b, <= kk)) as the module docstring says."""
    n, width = blk.items.shape
    k_a = (k + 1) // 2
    k_b = k - k_a
    rows = np.arange(n)[:, None]
    a_ok = np.arange(a_pos.shape[1]) < np.minimum(blk.lengths, k)[:, None]
    b_ok = np.arange(b_pos.shape[1]) < np.minimum(blk.lengths, k_b)[:, None]
    a_head = a_ok.copy()
    a_head[:, k_a:] = False
    picked = np.zeros((n, width), bool)
    picked[np.broadcast_to(rows, a_pos.shape)[a_head], a_pos[a_head]] = True
    b_only = b_ok & ~picked[rows, b_pos]
    picked[np.broadcast_to(rows, b_pos.shape)[b_only], b_pos[b_only]] = True
    need = np.minimum(k, blk.lengths) - picked.sum(axis=1)
    cand = a_ok & ~a_head & ~picked[rows, a_pos]
    fill = cand & (np.cumsum(cand, axis=1) <= need[:, None])
    pos = np.concatenate([a_pos, b_pos], axis=1)
    ok = np.concatenate([a_head | fill, b_only], axis=1)
    order = np.argsort(~ok, axis=1, kind="stable")  # compact: valid entries first, relative order kept
    return np.take_along_axis(pos, order, 1)[:, : a_pos.shape[1]]


def _recent_entries(p: _Flat, k: int) -> np.ndarray:
    """Flat entry indices of the K most recent items of every sample (most recent first)."""
    ranks = np.arange(k)
    keep = ranks < np.minimum(p.lengths, k)[:, None]
    return ((p.starts + p.lengths - 1)[:, None] - ranks)[keep]


def _block_positions(
    blk: _Block,
    cfg: RetrievalConfig,
    keys_a: _Keys,
    keys_b: _Keys | None,
    codes: _RerankCodes | None,
    targets: np.ndarray,
) -> np.ndarray:
    """(b, <= k) selected history positions of a block's samples (see the section comment)."""
    k = cfg.k
    pos = _relevance(blk, keys_a, k, targets)
    if cfg.strategy == "rerank":
        return _rerank(blk, pos, k, codes, keys_a.pos_bits)
    if cfg.strategy == "hybrid":
        k_b = k - (k + 1) // 2
        b_pos = _relevance(blk, keys_b, k_b, targets) if k_b else np.zeros((len(pos), 0), np.int64)
        return _hybrid(blk, pos, b_pos, k)
    if cfg.strategy != "relevance":  # pragma: no cover - RetrievalConfig validates the literal
        raise ValueError(f"unknown retrieval.strategy {cfg.strategy!r}")
    return pos


def _selected_entries(
    p: _Flat, cfg: RetrievalConfig, keys_a: _Keys | None, keys_b: _Keys | None, chunk: int
) -> np.ndarray:
    """Flat entry indices (into p.items) of every sample's selection, samples in input order."""
    k = cfg.k
    if cfg.strategy == "recent":
        return _recent_entries(p, k)
    codes = _RerankCodes.of(k, cfg.alpha, cfg.beta, keys_a.pos_bits) if cfg.strategy == "rerank" else None
    chosen = np.zeros((len(p.lengths), k), dtype=np.int64)  # row = sample, first min(length, k) valid
    blocks = _blocks(p, chunk)
    bar = tqdm(blocks, desc=f"select_history[{cfg.strategy}]", disable=not sys.stderr.isatty(), leave=False)
    for rows, lengths in bar:
        blk = _block(p, rows, lengths)
        pos = _block_positions(blk, cfg, keys_a, keys_b, codes, p.targets)
        chosen[rows, : pos.shape[1]] = blk.starts[:, None] + pos
    return chosen[np.arange(k) < np.minimum(p.lengths, k)[:, None]]


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
        chunk: at most this many samples per vectorised block (blocks also hold about ``_BLOCK_ENTRIES``
            history entries at most; working memory ~ a block plus an (n, K) int64 index).

    Returns:
        ``samples`` with ``context_item_ids`` list<int64> and ``context_ratings`` list<float32> appended
        (replaced if present); row i holds min(K, len(history_i)) items in the strategy's order.
    """
    _require(samples, ["item_id", "history_item_ids", "history_ratings"])
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    strategy = cfg.strategy
    keys_a = keys_b = None
    n_items = None
    if strategy != "recent":
        ea = _check_emb(emb, "emb", strategy)
        n_items = ea.shape[0]
        lengths = pc.list_value_length(samples.column("history_item_ids"))
        pos_bits = max(int(pc.max(lengths).as_py() or 1) - 1, 1).bit_length()
        keys_a = _Keys(ea, pos_bits)
        if strategy == "hybrid":
            eb = _check_emb(emb_b, "emb_b", strategy)
            if eb.shape[0] != n_items:
                raise ValueError(
                    f"hybrid: emb has {n_items} items but emb_b has {eb.shape[0]}; both must cover all items"
                )
            keys_b = _Keys(eb, pos_bits)

    ids_out, rat_out, counts_out = [], [], []
    for piece in _pieces(samples):
        p = _flat_piece(piece, n_items)
        entries_idx = _selected_entries(p, cfg, keys_a, keys_b, chunk)
        ids_out.append(np.take(p.items, entries_idx))
        rat_out.append(np.take(p.ratings, entries_idx))
        counts_out.append(np.minimum(p.lengths, cfg.k))
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
