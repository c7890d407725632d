"""All-ranking metrics (ER2ALM §4.1, LightGCN / LLMRec): Recall@k, NDCG@k, Precision@k over every item.

For each evaluated user every item is scored (``user_emb @ item_emb.T``, or ``score_fn(user_ids)``), the
user's items in ``exclude`` are set to ``-inf`` and the top ``max(ks)`` items form the ranked list. As in
LightGCN and LLMRec only the TRAIN items are excluded by default (``exclude=[train]``): when the test split
is evaluated the user's validation items stay in the ranking and count as misses. Pass
``exclude=[train, valid]`` to mask both.

Per user ``u`` with ``T_u`` test positives (``|T_u| >= 1``; users without any are skipped) and ``hit_j`` = 1
when the item at rank ``j`` is in ``T_u``:

* ``Recall@k = sum_{j<=k} hit_j / |T_u|`` (every test positive counts in ``|T_u|``, also one that an
  ``exclude`` matrix masks; the protocol's splits are disjoint, so that never happens there);
* ``Precision@k = sum_{j<=k} hit_j / k``;
* ``NDCG@k = DCG@k / IDCG@k`` with ``DCG@k = sum_{j<=k} hit_j / log2(j + 1)`` and ``IDCG@k`` the DCG of
  ``min(|T_u|, k)`` hits at the top.

**Ties are pessimistic** (like :mod:`ragrec.evaluation.ranking`): items are ordered by score descending,
then non-test before test items, then item id; a constant scorer earns nothing. Items scored ``-inf``
(excluded) never count as hits, even when fewer than ``k`` items are left. With ``k > I`` the list holds
all ``I`` items and Precision@k still divides by ``k``.

Users are processed in blocks of ``block`` rows (``(block, I)`` score and mask matrices); inside a block
everything is vectorised: the excluded and test entries are scattered from the CSR rows, the ``max(ks)``-th
best score per row comes from ``np.partition``, ties at that threshold are resolved by per-row cumulative
counts, and the selected items are sorted with ``np.lexsort``. The per-user values feed
:func:`~ragrec.evaluation.ranking.bootstrap_mean_ci`; :func:`multi_seed_summary` gives the
mean +- sample std over seeds (the paper averages five runs).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import scipy.sparse as sp

from .ranking import check_ks

__all__ = [
    "DEFAULT_FULL_KS",
    "full_ranking_metrics",
    "multi_seed_summary",
    "per_user_full_ranking",
    "seed_interval",
    "top_k_items",
]

DEFAULT_FULL_KS = (10, 20, 50)

ScoreFn = Callable[[np.ndarray], np.ndarray]
"""``score_fn(user_ids (B,) int64) -> (B, I)`` scores of every item for each user (higher = ranked first)."""


def _canonical(m, name: str, shape: tuple[int, int] | None) -> sp.csr_matrix:
    """``m`` as a canonical CSR matrix of its nonzero entries (sorted indices, no duplicates, no zeros)."""
    if not sp.issparse(m):
        raise TypeError(f"{name} must be a scipy.sparse matrix (users x items), got {type(m).__name__}")
    c = sp.csr_matrix(m, copy=True)
    c.sum_duplicates()
    c.eliminate_zeros()
    c.sort_indices()
    if shape is not None and c.shape != shape:
        raise ValueError(f"{name} has shape {c.shape}, expected {shape} (users x items like test)")
    return c


def _scatter(mat: sp.csr_matrix, users: np.ndarray, out: np.ndarray, value) -> None:
    """``out[b, i] = value`` for every stored entry ``(users[b], i)`` of ``mat`` (``out`` is ``(B, I)``)."""
    sub = mat[users]
    rows = np.repeat(np.arange(len(users)), np.diff(sub.indptr))
    out[rows, sub.indices] = value


def _top_hits(scores: np.ndarray, is_test: np.ndarray, K: int) -> np.ndarray:
    """``(B, K) bool`` hit at each rank of the top ``K`` (score desc, non-test first, item id), pessimistic.

    Args:
        scores: ``(B, I)`` scores, ``-inf`` for excluded items.
        is_test: ``(B, I) bool`` test positives.
        K: list length (``<= I``).
    """
    B = len(scores)
    th = -np.partition(-scores, K - 1, axis=1)[:, K - 1 : K]  # (B, 1) K-th best score
    above = scores > th
    tied = scores == th
    need = K - above.sum(axis=1, keepdims=True)  # slots left for tied items
    tied_miss = tied & ~is_test
    take_miss = tied_miss & (np.cumsum(tied_miss, axis=1, dtype=np.int32) <= need)
    need_hit = need - take_miss.sum(axis=1, keepdims=True)
    tied_hit = tied & is_test
    take = above | take_miss | (tied_hit & (np.cumsum(tied_hit, axis=1, dtype=np.int32) <= need_hit))
    items = np.nonzero(take)[1].reshape(B, K)  # row-major: each row's ids ascending
    sc = np.take_along_axis(scores, items, axis=1)
    hit = np.take_along_axis(is_test, items, axis=1)
    o = np.lexsort((items, hit, -sc), axis=1)
    return np.take_along_axis(hit & (sc > -np.inf), o, axis=1)


def per_user_full_ranking(
    user_emb,
    item_emb,
    train,
    test,
    ks: Sequence[int] = DEFAULT_FULL_KS,
    *,
    users=None,
    block: int = 1024,
    score_fn: ScoreFn | None = None,
    exclude: Sequence | None = None,
) -> dict[str, np.ndarray]:
    """Recall@k, NDCG@k and Precision@k of every evaluated user under all-ranking (see the module docstring).

    Args:
        user_emb: ``(U, d)`` user embeddings (unused, may be None, when ``score_fn`` is given).
        item_emb: ``(I, d)`` item embeddings (unused, may be None, when ``score_fn`` is given).
        train: ``(U, I)`` scipy.sparse train positives; the default ``exclude`` (unused when ``exclude``
            is given).
        test: ``(U, I)`` scipy.sparse positives to retrieve (the test or the validation split).
        ks: cut-offs.
        users: ``(n,)`` user ids to evaluate (default: all); those without a test positive are skipped.
        block: users scored at once (memory ~ ``block * I`` floats).
        score_fn: ``score_fn(user_ids (B,) int64) -> (B, I)`` scores, used instead of the embeddings.
        exclude: ``(U, I)`` sparse matrices whose items are never ranked (default ``[train]``; e.g.
            ``[train, valid]`` to mask the validation items too).

    Returns:
        ``{"user_id": (m,) int64, "num_test": (m,) int64, "recall@k" / "ndcg@k" / "precision@k": (m,)
        float64}`` for the ``m`` evaluated users with ``>= 1`` test positive, in the order of ``users``.

    Raises:
        ValueError: bad shapes, cut-offs or block, NaN scores, user ids out of range, no user with a test
            positive.
        TypeError: a non-sparse ``train`` / ``test`` / ``exclude`` matrix.
    """
    ks = check_ks(ks)
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    test_m = _canonical(test, "test", None)
    U, I = test_m.shape
    ex = [_canonical(m, "exclude", (U, I)) for m in ([train] if exclude is None else exclude)]
    if score_fn is None:
        if user_emb is None or item_emb is None:
            raise ValueError("give user_emb and item_emb, or score_fn")
        ue, ie = np.asarray(user_emb), np.asarray(item_emb)
        if ue.ndim != 2 or ie.ndim != 2 or ue.shape[0] != U or ie.shape[0] != I or ue.shape[1] != ie.shape[1]:
            raise ValueError(f"user_emb {ue.shape} and item_emb {ie.shape} must be (U={U}, d) and (I={I}, d)")

    n_test = np.diff(test_m.indptr)
    u = np.arange(U, dtype=np.int64) if users is None else np.asarray(users, dtype=np.int64).ravel()
    if u.size and (u.min() < 0 or u.max() >= U):
        raise ValueError(f"users must lie in 0..{U - 1}")
    u = u[n_test[u] > 0]
    if u.size == 0:
        raise ValueError("no evaluated user has a test positive")

    K = min(max(ks), I)
    kmax = max(ks)
    disc = 1.0 / np.log2(np.arange(2, kmax + 2))  # (kmax,)
    ideal_cum = np.cumsum(disc)
    nt = n_test[u].astype(np.int64)
    hits_cum = np.empty((len(u), K))
    dcg_cum = np.empty((len(u), K))
    for s in range(0, len(u), block):
        ub = u[s : s + block]
        if score_fn is None:
            sc = ue[ub] @ ie.T
        else:
            sc = np.asarray(score_fn(ub))
            if sc.shape != (len(ub), I):
                raise ValueError(f"score_fn returned shape {sc.shape}, expected {(len(ub), I)}")
        sc = np.array(sc, dtype=np.result_type(sc.dtype, np.float32), copy=True)
        if np.isnan(sc).any():
            raise ValueError("scores contain NaN")
        for m in ex:
            _scatter(m, ub, sc, -np.inf)
        is_test = np.zeros(sc.shape, dtype=bool)
        _scatter(test_m, ub, is_test, True)
        hit = _top_hits(sc, is_test, K).astype(np.float64)
        hits_cum[s : s + len(ub)] = np.cumsum(hit, axis=1)
        dcg_cum[s : s + len(ub)] = np.cumsum(hit * disc[:K], axis=1)

    out: dict[str, np.ndarray] = {"user_id": u, "num_test": nt}
    for k in ks:
        c = min(k, K) - 1
        out[f"recall@{k}"] = hits_cum[:, c] / nt
        out[f"ndcg@{k}"] = dcg_cum[:, c] / ideal_cum[np.minimum(nt, k) - 1]
        out[f"precision@{k}"] = hits_cum[:, c] / k
    return out


def full_ranking_metrics(*args, **kwargs) -> dict[str, float]:
    """Mean Recall@k, NDCG@k, Precision@k over the users with ``>= 1`` test positive (all-ranking).

    Arguments as :func:`per_user_full_ranking`.

    Returns:
        ``{"recall@k", "ndcg@k", "precision@k"}`` -> float for every ``k`` in ``ks``.
    """
    per = per_user_full_ranking(*args, **kwargs)
    return {name: float(v.mean()) for name, v in per.items() if name not in ("user_id", "num_test")}


def multi_seed_summary(results: Sequence[dict]) -> dict[str, dict[str, float]]:
    """Mean and spread of metric dicts of several seeds (the paper's "averaged over five runs").

    Args:
        results: one ``{metric: float}`` dict per seed (e.g. :func:`full_ranking_metrics` outputs), all with
            the same keys.

    Returns:
        ``{metric: {"mean": float, "std": float, "n": int}}``; ``std`` is the sample standard deviation
        (``ddof=1``) over seeds, NaN with a single seed.

    Raises:
        ValueError: no results, or dicts with different keys.
    """
    if not results:
        raise ValueError("no results to summarise")
    keys = list(results[0])
    for r in results[1:]:
        if set(r) != set(keys):
            raise ValueError(f"every result needs the same metrics: {sorted(keys)} vs {sorted(r)}")
    out = {}
    for name in keys:
        v = np.array([float(r[name]) for r in results])
        std = float(np.std(v, ddof=1)) if len(v) > 1 else float("nan")
        out[name] = {"mean": float(v.mean()), "std": std, "n": len(v)}
    return out


def top_k_items(user_emb, item_emb, exclude, users, k: int, *, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """The ranked lists that serving returns and the run's ``predictions.parquet`` holds: for each of ``users``
    the ``k`` best items by ``user_emb[u] @ item_emb.T`` computed in float64, the items of ``exclude`` (a
    ``(U, I)`` sparse matrix, e.g. the train positives) left out, ties broken by the smaller item id.

    Args:
        user_emb: ``(U, d)``; item_emb: ``(I, d)``.
        exclude: ``(U, I)`` scipy.sparse matrix of items never returned (None: nothing excluded).
        users: ``(n,)`` user ids.
        k: list length (``1 <= k``); users with fewer than ``k`` rankable items get ``-1`` items and
            ``-inf`` scores at the end of their list.

    Returns:
        ``(items (n, k) int64, scores (n, k) float64)``, best first.
    """
    ue = np.asarray(user_emb, dtype=np.float64)
    ie = np.asarray(item_emb, dtype=np.float64)
    U, n_items = ue.shape[0], ie.shape[0]
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    u = np.asarray(users, dtype=np.int64).ravel()
    if u.size and (u.min() < 0 or u.max() >= U):
        raise ValueError(f"users must lie in 0..{U - 1}")
    ex = None if exclude is None else _canonical(exclude, "exclude", (U, n_items))
    kk = min(k, n_items)
    items = np.full((len(u), k), -1, dtype=np.int64)
    scores = np.full((len(u), k), -np.inf)
    for s in range(0, len(u), block):
        ub = u[s : s + block]
        sc = ue[ub] @ ie.T
        if ex is not None:
            _scatter(ex, ub, sc, -np.inf)
        part = (
            np.argpartition(-sc, kk - 1, axis=1)[:, :kk] if kk < n_items else np.tile(np.arange(n_items), (len(ub), 1))
        )
        th = np.take_along_axis(sc, part, axis=1).min(axis=1, keepdims=True)  # the kk-th best score
        # every item tied with the threshold competes, so that the smaller id wins a tie at the cut
        cand = sc >= th
        rows, cols = np.nonzero(cand)
        o = np.lexsort((cols, -sc[rows, cols], rows))
        rows, cols = rows[o], cols[o]
        start = np.searchsorted(rows, np.arange(len(ub)))
        rank = np.arange(len(rows)) - start[rows]
        take = rank < kk
        top_i = cols[take].reshape(len(ub), kk)
        top_s = np.take_along_axis(sc, top_i, axis=1)
        valid = np.isfinite(top_s)
        items[s : s + len(ub), :kk] = np.where(valid, top_i, -1)
        scores[s : s + len(ub), :kk] = top_s
    return items, scores


def seed_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean of per-seed values (NaN bounds with fewer than two seeds)."""
    from scipy import stats

    v = np.asarray(values, dtype=np.float64)
    if v.size < 2:
        return float("nan"), float("nan")
    half = stats.t.ppf(0.5 + level / 2, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size)
    return float(v.mean() - half), float(v.mean() + half)
