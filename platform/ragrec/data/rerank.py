"""The ``rerank`` sample protocol (UR4Rec / KAR / LibRerank): candidate lists built from positives.

Steps of :func:`rerank_samples`:

1. **Positives.** Only interactions with label 1 (``rating > data.label_threshold`` unless the table came
   labelled) are positives. With ``data.rerank.kcore = k > 0`` users and items with fewer than ``k``
   positives are dropped, repeatedly, until every kept user and item has at least ``k`` (a k-core).
2. **Per-user chronological split.** Each user's positives in stable (timestamp, item_id) order are cut
   by the ``data.split`` fractions with the rounding of :func:`~ragrec.data.protocols.split_bounds`: a
   user with ``n`` positives has train = the first ``floor(s0 n + 1e-6)``, valid up to
   ``floor((s0 + s1) n + 1e-6)``, test the rest. With 8:1:1 a user with 10 positives gets 8 / 1 / 1; a
   user with fewer than 10 gets no valid positive (e.g. ``n = 5``: 4 / 0 / 1), and every user keeps at
   least one test positive.
3. **Samples.** Every positive with at least ``data.min_history`` earlier positives of its user is a
   target; its history is the last ``data.rerank.history_len`` positives before it (of any split), oldest
   first. ``data.max_history`` is not used here.
4. **Candidates.** ``C = data.rerank.num_candidates`` distinct items: the target and ``C - 1`` negatives
   that the user NEVER interacted with (any interaction of the full table, any label). Negatives come
   from the *item pool*: all ids ``0..num_items-1``, or, with a k-core, the items that survive it.

   * ``negatives: uniform``: a uniform sample without replacement per *sample* (seeded), by vectorised
     rejection sampling; the list (target included) is then shuffled per row with the same generator,
     so the target's position is uniform over ``0..C-1`` (position-aware rerankers cannot cheat).
   * ``negatives: ranker``: per *user* the ``C - 1`` unseen pool items the initial ranker scores highest
     (hard negatives), shared by all that user's samples; the list is in ranker-score order (descending,
     ties by item id) with the target inserted at its own ranker-score position, *after* negatives that
     score the same (the reranker's input order is the initial ranking).

Rows are ordered by (split, user_id, target time), ``sample_id = 0..n-1``. Everything is numpy-vectorised:
loops run only over rejection rounds and over blocks of rows / users, never per sample or per user.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from ..config import DataConfig
from .errors import DataError
from .protocols import _MAX_LIST_VALUES, _interaction_ids, _labels, _split_strings, per_user_split
from .schemas import RERANK_SAMPLES, SPLITS

__all__ = ["rerank_samples", "train_positive_counts", "train_positive_interactions"]

RankerScores = Callable[[np.ndarray], np.ndarray]
"""``ranker_scores(user_ids (B,) int64) -> (B, num_items)`` scores of every item for each user."""

_BLOCK_VALUES = 4_000_000  # elements of the (rows, width) work matrices per block (a few tens of MB)
_MAX_ROUNDS = 100_000


@dataclass(frozen=True)
class _Positives:
    """The kept positives grouped by user (user_id ascending), each user's in (timestamp, item_id) order.

    Attributes (``p`` = number of kept positives, ``I`` = number of items):
        user, item, ts: ``(p,) int64``.
        row: ``(p,) int64`` row of each positive in the interactions table.
        pos: ``(p,) int64`` number of earlier kept positives of the same user.
        split: ``(p,) int8`` 0/1/2 = train/valid/test of the per-user chronological cut.
        pool: ``(I,) bool`` items that may be negatives (all, or the k-core's items).
        num_items: ``I``.
    """

    user: np.ndarray
    item: np.ndarray
    ts: np.ndarray
    row: np.ndarray
    pos: np.ndarray
    split: np.ndarray
    pool: np.ndarray
    num_items: int


def _kcore(user: np.ndarray, item: np.ndarray, k: int) -> np.ndarray:
    """``(p,) bool`` positives kept by the k-core: iteratively drop users / items with fewer than ``k``."""
    keep = np.ones(len(user), dtype=bool)
    if k <= 0 or len(user) == 0:
        return keep
    nu, ni = int(user.max()) + 1, int(item.max()) + 1
    while True:
        uc = np.bincount(user[keep], minlength=nu)
        ic = np.bincount(item[keep], minlength=ni)
        new = keep & (uc[user] >= k) & (ic[item] >= k)
        if new.sum() == keep.sum():
            return keep
        keep = new


def _num_items(item: np.ndarray, num_items: int | None) -> int:
    top = int(item.max()) + 1 if len(item) else 0
    if num_items is None:
        return top
    if num_items < top:
        raise DataError(
            f"num_items={num_items} but the interactions hold item id {top - 1}",
            field="item_id",
            fix="pass the size of the items table as num_items (ids are dense 0..num_items-1)",
        )
    return int(num_items)


def _positives(interactions: pa.Table, cfg: DataConfig, num_items: int | None) -> tuple[_Positives, np.ndarray]:
    """Positives, k-core, per-user chronological split; also the sorted interaction keys ``user * I + item``.

    Returns:
        ``(positives, keys)``: ``keys`` ``(K,) int64`` sorted distinct ``user * I + item`` of ALL interactions.
    """
    user_all, item_all = _interaction_ids(interactions)
    n_items = _num_items(item_all, num_items)
    label = _labels(interactions, cfg.label_threshold)

    is_pos = label == 1
    user, item = user_all[is_pos], item_all[is_pos]
    ts = interactions.column("timestamp").to_numpy()[is_pos]
    row = np.flatnonzero(is_pos)
    keep = _kcore(user, item, cfg.rerank.kcore)
    user, item, ts, row = user[keep], item[keep], ts[keep], row[keep]
    if len(user) == 0:
        raise DataError(
            f"no positive interactions are left ({int(is_pos.sum())} positives before the "
            f"k-core with kcore={cfg.rerank.kcore})",
            field="data.rerank.kcore",
            fix="lower data.rerank.kcore or data.label_threshold, or use more data",
        )
    if cfg.rerank.kcore > 0:
        pool = np.zeros(n_items, dtype=bool)
        pool[item] = True
    else:
        pool = np.ones(n_items, dtype=bool)

    order = np.lexsort((item, ts, user))
    user, item, ts, row = user[order], item[order], ts[order], row[order]
    pos, split = per_user_split(user, cfg.split)

    keys = np.unique(user_all.astype(np.int64) * n_items + item_all)
    return _Positives(user, item, ts, row, pos, split, pool, n_items), keys


def train_positive_counts(interactions: pa.Table, cfg: DataConfig, *, num_items: int | None = None) -> np.ndarray:
    """Number of train-split positives of every item: the score of the trivial "popularity" reranker.

    Counts every kept positive (after the k-core) that falls in its user's train part of the per-user
    chronological cut, including the first ``min_history`` positives that are never targets themselves.

    Args:
        interactions: ``(n,)`` :data:`~ragrec.data.schemas.INTERACTIONS` table.
        cfg: the data config (``label_threshold``, ``split``, ``rerank.kcore``).
        num_items: size of the item id space (default: max item_id + 1).

    Returns:
        ``(num_items,) int64`` counts.
    """
    p, _ = _positives(interactions, cfg, num_items)
    return np.bincount(p.item[p.split == 0], minlength=p.num_items).astype(np.int64)


def train_positive_interactions(interactions: pa.Table, cfg: DataConfig, *, num_items: int | None = None) -> pa.Table:
    """The train-split positives as interaction rows: what an initial ranker (``negatives: ranker``) may learn.

    The same positives :func:`train_positive_counts` counts (label 1, after the k-core, in the user's train
    part of the per-user chronological cut, the first ``min_history`` included); no valid / test positive
    and no negative interaction is among them.

    Args:
        interactions: ``(n,)`` :data:`~ragrec.data.schemas.INTERACTIONS` table.
        cfg: the data config (``label_threshold``, ``split``, ``rerank.kcore``).
        num_items: size of the item id space (default: max item_id + 1).

    Returns:
        ``(p,)`` table ``user_id, item_id, rating, timestamp`` (the interactions' rows), ordered by user_id,
        then (timestamp, item_id).
    """
    p, _ = _positives(interactions, cfg, num_items)
    rows = p.row[p.split == 0]
    return interactions.select(["user_id", "item_id", "rating", "timestamp"]).take(pa.array(rows))


def _is_seen(keys: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Elementwise ``query in keys`` for sorted ``keys``."""
    if len(keys) == 0:
        return np.zeros(query.shape, dtype=bool)
    idx = np.minimum(np.searchsorted(keys, query), len(keys) - 1)
    return keys[idx] == query


def _first_valid(x: np.ndarray, valid: np.ndarray, need: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the first ``need`` entries of ``x`` where ``valid`` (in column order), padded with -1.

    Returns:
        ``(taken (m, need), count (m,))`` with ``count`` the number of valid entries (capped at ``need``).
    """
    take = np.argsort(~valid, axis=1, kind="stable")[:, :need]
    count = np.minimum(valid.sum(axis=1), need)
    taken = np.take_along_axis(x, take, axis=1)
    taken[np.arange(need)[None, :] >= count[:, None]] = -1
    return taken, count


def _uniform_negatives(
    users: np.ndarray,
    keys: np.ndarray,
    pool_items: np.ndarray,
    unseen: np.ndarray,
    num_items: int,
    need: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Uniform negatives without replacement for a block of samples, by rejection sampling.

    Each round draws a ``(rows left, W)`` matrix of pool items for the unfinished rows, appends it to the
    negatives accepted so far, rejects items the user interacted with (``np.searchsorted`` in ``keys``)
    and repeats inside the row (a stable per-row sort keeps the earliest draw), and keeps the first
    ``need`` survivors. This is sequential sampling with rejection, i.e. a uniform sample without
    replacement of the user's unseen pool items.

    Args:
        users: ``(m,)`` user of each sample.
        keys: ``(K,)`` sorted ``user * num_items + item`` of all interactions.
        pool_items: ``(P,)`` items negatives are drawn from.
        unseen: ``(m,)`` number of pool items each sample's user never interacted with (``>= need``).
        num_items: ``I`` of the keys.
        need: negatives per sample (``C - 1``).
        rng: the seeded generator.

    Returns:
        ``(m, need) int64`` negatives, in draw order.
    """
    m = len(users)
    buf = np.full((m, need), -1, dtype=np.int64)
    count = np.zeros(m, dtype=np.int64)
    rows = np.arange(m)
    accept = unseen / len(pool_items)
    for _ in range(_MAX_ROUNDS):
        if len(rows) == 0:
            return buf
        want = float(np.max((need - count[rows]) / accept[rows]))
        cap = max(need, _BLOCK_VALUES // len(rows))
        width = int(min(cap, np.ceil(1.2 * want) + 8))
        draws = pool_items[rng.integers(0, len(pool_items), size=(len(rows), width))]
        x = np.concatenate([buf[rows], draws], axis=1)  # accepted first: they win against repeats
        valid = (x >= 0) & ~_is_seen(keys, users[rows, None] * num_items + x)
        order = np.argsort(x, axis=1, kind="stable")
        xs = np.take_along_axis(x, order, axis=1)
        dup = np.zeros(x.shape, dtype=bool)
        np.put_along_axis(dup, order[:, 1:], xs[:, 1:] == xs[:, :-1], axis=1)
        buf[rows], count[rows] = _first_valid(x, valid & ~dup, need)
        rows = rows[count[rows] < need]
    raise RuntimeError(f"uniform negative sampling did not finish in {_MAX_ROUNDS} rounds")  # pragma: no cover


def _uniform_candidates(
    users: np.ndarray, targets: np.ndarray, keys: np.ndarray, p: _Positives, unseen: np.ndarray, C: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(candidates (n, C) int64, target_index (n,) int32)``: uniform negatives, rows shuffled (seeded)."""
    n = len(users)
    rng = np.random.default_rng(seed)
    pool_items = np.flatnonzero(p.pool)
    cands = np.empty((n, C), dtype=np.int64)
    block = max(1, _BLOCK_VALUES // (3 * C))
    for s in range(0, n, block):
        e = min(n, s + block)
        negs = _uniform_negatives(users[s:e], keys, pool_items, unseen[s:e], p.num_items, C - 1, rng)
        mat = np.concatenate([targets[s:e, None], negs], axis=1)
        cands[s:e] = rng.permuted(mat, axis=1)
    target_index = np.argmax(cands == targets[:, None], axis=1).astype(np.int32)
    return cands, target_index


def _top_items(scores: np.ndarray, need: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row the ``need`` highest-scoring columns, ties broken by the lower column (item id).

    ``np.partition`` gives each row's ``need``-th best score ``th``; all columns above ``th`` are taken,
    and of those equal to ``th`` the lowest ids fill the rest (a per-row cumulative count).

    Args:
        scores: ``(B, I)`` scores.
        need: columns per row (``<= I``).

    Returns:
        ``(items (B, need) int64, item_scores (B, need))`` sorted by score descending, then item id.
    """
    th = -np.partition(-scores, need - 1, axis=1)[:, need - 1 : need]  # (B, 1)
    above = scores > th
    tied = scores == th
    take = above | (tied & (np.cumsum(tied, axis=1) <= need - above.sum(axis=1, keepdims=True)))
    items = np.nonzero(take)[1].reshape(len(scores), need)  # row-major: each row's ids ascending
    item_scores = np.take_along_axis(scores, items, axis=1)
    o = np.argsort(-item_scores, axis=1, kind="stable")  # stable: ties stay in item order
    return np.take_along_axis(items, o, axis=1), np.take_along_axis(item_scores, o, axis=1)


def _ranker_candidates(
    users: np.ndarray,
    targets: np.ndarray,
    keys: np.ndarray,
    p: _Positives,
    C: int,
    ranker_scores: RankerScores,
) -> tuple[np.ndarray, np.ndarray]:
    """``(candidates (n, C) int64, target_index (n,) int32)`` from the initial ranker, in ranker order.

    Users are scored in blocks; per user the interacted and non-pool items are masked to ``-inf`` and the
    top ``C - 1`` (:func:`_top_items`: sorted by score descending, ties by item id) are the user's
    negatives. Each sample inserts its target after the negatives scoring at least as high as the target.
    """
    n, I, need = len(users), p.num_items, C - 1
    uniq, inv = np.unique(users, return_inverse=True)
    by_user = np.argsort(inv, kind="stable")
    bounds = np.searchsorted(inv[by_user], np.arange(len(uniq) + 1))
    cands = np.empty((n, C), dtype=np.int64)
    target_index = np.empty(n, dtype=np.int32)
    block = max(1, _BLOCK_VALUES // max(I, 1))
    top = np.finfo(np.float64).max
    for s in range(0, len(uniq), block):
        ub = uniq[s : s + block]
        scores = np.array(ranker_scores(ub), dtype=np.float64)
        if scores.shape != (len(ub), I):
            raise ValueError(f"ranker_scores must return shape {(len(ub), I)} for {len(ub)} users, got {scores.shape}")
        if np.isnan(scores).any():
            raise ValueError("ranker_scores returned NaN scores")
        np.clip(scores, -top, top, out=scores)  # the ranker's own +-inf stay above the mask
        sel = by_user[bounds[s] : bounds[s + len(ub)]]  # samples of these users
        row = inv[sel] - s
        t_score = scores[row, targets[sel]]
        lo = np.searchsorted(keys, ub[0] * I)
        hi = np.searchsorted(keys, (ub[-1] + 1) * I)
        kk = keys[lo:hi]
        r = np.searchsorted(ub, kk // I)
        ok = (r < len(ub)) & (ub[np.minimum(r, len(ub) - 1)] == kk // I)
        scores[r[ok], kk[ok] % I] = -np.inf
        scores[:, ~p.pool] = -np.inf
        negs, neg_scores = _top_items(scores, need)
        at = (neg_scores[row] >= t_score[:, None]).sum(axis=1)  # target after ties
        j = np.arange(C)[None, :]
        src = np.minimum(j - (j > at[:, None]), need - 1)
        c = np.take_along_axis(negs[row], src, axis=1)
        c[j == at[:, None]] = targets[sel]
        cands[sel] = c
        target_index[sel] = at
    return cands, target_index


def _check_unseen(users: np.ndarray, keys: np.ndarray, p: _Positives, need: int) -> np.ndarray:
    """``(n,)`` number of never-interacted pool items of each sample's user; DataError when below ``need``."""
    I = p.num_items
    ku, ki = keys // I, keys % I
    seen = np.bincount(ku[p.pool[ki]], minlength=int(users.max()) + 1)
    unseen = int(p.pool.sum()) - seen[users]
    bad = unseen < need
    if bad.any():
        k = int(np.argmin(unseen))
        raise DataError(
            f"user {int(users[k])} has only {int(unseen[k])} items it never interacted with "
            f"({int(np.unique(users[bad]).size)} users have fewer than the {need} negatives a list needs; "
            f"item pool {int(p.pool.sum())})",
            field="data.rerank.num_candidates",
            fix="lower data.rerank.num_candidates, raise data.rerank.kcore to drop heavy users, or use more items",
        )
    return unseen


def rerank_samples(
    interactions: pa.Table,
    cfg: DataConfig,
    *,
    seed: int,
    ranker_scores: RankerScores | None = None,
    num_items: int | None = None,
) -> pa.Table:
    """Reranking samples: (user, last positives, target + never-interacted negatives), see the module doc.

    Args:
        interactions: ``(n,)`` :data:`~ragrec.data.schemas.INTERACTIONS` table.
        cfg: the data config (``rerank.*``, ``split``, ``min_history``, ``label_threshold``).
        seed: seed of the uniform negatives and of the candidate order.
        ranker_scores: ``negatives: ranker`` only: ``f(user_ids (B,) int64) -> (B, num_items)`` scores of
            the initial ranker (higher = better); called once per block of users.
        num_items: size of the item id space (default: max item_id + 1 over the interactions).

    Returns:
        ``(n_samples,)`` table with schema :data:`~ragrec.data.schemas.RERANK_SAMPLES`, rows ordered by
        (split, user_id, target time), ``sample_id = 0..n_samples-1``; every ``candidates`` list holds
        ``num_candidates`` distinct items with the target at ``target_index``.

    Raises:
        DataError: empty interactions, no positives left, an empty split (with a non-zero fraction), a
            user with fewer never-interacted items than ``num_candidates - 1``, ``negatives: ranker``
            without ``ranker_scores``, or lists too long for list offsets.
    """
    rc = cfg.rerank
    C, L = rc.num_candidates, rc.history_len
    if rc.negatives == "ranker" and ranker_scores is None:
        raise DataError(
            "negatives: ranker needs the scores of the method's initial ranker, and none was given",
            field="data.rerank.negatives",
            fix="build the samples through the method that supplies its initial ranker (ranker_scores=), "
            "or use data.rerank.negatives: uniform",
        )
    p, keys = _positives(interactions, cfg, num_items)

    is_sample = p.pos >= cfg.min_history
    split_all = p.split[is_sample]
    counts = np.bincount(split_all, minlength=3)
    for k, name in enumerate(SPLITS):
        if cfg.split[k] > 0 and counts[k] == 0:
            n_users = int(np.unique(p.user).size)
            raise DataError(
                f"split '{name}' is empty: {n_users} users have {len(p.user)} positives, {int(is_sample.sum())} of "
                f"them with at least min_history={cfg.min_history} earlier positives; counts train/valid/test = "
                f"{counts.tolist()} with split={tuple(cfg.split)} per user",
                field="data.split",
                fix="lower data.min_history or data.rerank.kcore, change data.split, or use more data "
                "(a user needs 10 positives for a valid one at 8:1:1)",
            )
    # output order (split, user, time): a stable sort of the user-grouped positions by split code
    idx = np.flatnonzero(is_sample)
    idx = idx[np.argsort(split_all, kind="stable")]
    n = len(idx)
    if n * C > _MAX_LIST_VALUES or n * L > _MAX_LIST_VALUES:
        raise DataError(
            f"{n:,} samples x {C} candidates do not fit a list column",
            field="data.rerank.num_candidates",
            fix="lower data.rerank.num_candidates / history_len or use a user slice (data.max_users)",
        )

    hist_len = np.minimum(p.pos[idx], L)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(hist_len, out=offsets[1:])
    flat = np.repeat(idx - hist_len - offsets[:-1], hist_len) + np.arange(int(offsets[-1]))
    history = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(p.item[flat], pa.int64()))

    users, targets = p.user[idx], p.item[idx]
    if rc.negatives == "ranker":
        _check_unseen(users, keys, p, C - 1)
        cands, target_index = _ranker_candidates(users, targets, keys, p, C, ranker_scores)
    else:
        unseen = _check_unseen(users, keys, p, C - 1)
        cands, target_index = _uniform_candidates(users, targets, keys, p, unseen, C, seed)
    cand_offsets = pa.array((np.arange(n + 1, dtype=np.int64) * C).astype(np.int32))
    candidates = pa.ListArray.from_arrays(cand_offsets, pa.array(cands.ravel(), pa.int64()))

    return pa.Table.from_arrays(
        [
            pa.array(np.arange(n, dtype=np.int64)),
            pa.array(users, pa.int64()),
            pa.array(targets, pa.int64()),
            pa.array(p.ts[idx], pa.int64()),
            history,
            candidates,
            pa.array(target_index, pa.int32()),
            _split_strings(p.split[idx]),
        ],
        schema=RERANK_SAMPLES,
    )
