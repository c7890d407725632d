"""CTR metrics (docs/architecture.md §7): AUC / LogLoss / ACC via scikit-learn, user-averaged AUC, bootstrap CIs.

:func:`uauc` and :func:`bootstrap_ci` use the rank (Mann-Whitney) form of the AUC,
``AUC = P(score_pos > score_neg) + 0.5 P(score_pos == score_neg)``, which equals
``sklearn.metrics.roc_auc_score`` including ties, computed for all groups / all resamples at once.

Samples of one user are correlated, so a bootstrap over samples understates the uncertainty. With
``groups=`` (the user of each sample) :func:`bootstrap_ci` and :func:`bootstrap_delta_ci` resample
*users* with replacement, each drawn user bringing all of their samples (a cluster bootstrap).
:func:`auc_decomposition` splits the global AUC into within-user and between-user pairs.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, log_loss, roc_auc_score

__all__ = ["PROB_CLIP", "auc_decomposition", "bootstrap_ci", "bootstrap_delta_ci", "ctr_metrics", "uauc"]

PROB_CLIP = 1e-7
"""Probabilities are clipped to [PROB_CLIP, 1 - PROB_CLIP] for the log loss."""


def _check(labels, probs) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).ravel()
    p = np.asarray(probs, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"labels and probs must have the same length, got {y.shape[0]} and {p.shape[0]}")
    if y.size == 0:
        raise ValueError("no predictions to evaluate (empty labels/probs)")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"labels must be 0/1, got values {np.unique(y)[:5].tolist()}")
    if not np.isfinite(p).all() or p.min() < 0 or p.max() > 1:
        raise ValueError("probs must be finite probabilities in [0, 1] (apply a sigmoid/softmax first)")
    return y.astype(np.int8), p


def ctr_metrics(labels, probs) -> dict[str, float]:
    """AUC, LogLoss and accuracy at 0.5.

    Args:
        labels: (n,) 0/1.
        probs: (n,) predicted P(label = 1).

    Returns:
        ``{"auc", "logloss", "acc", "n"}``; ``auc`` is NaN when only one class is present.
    """
    y, p = _check(labels, probs)
    auc = float(roc_auc_score(y, p)) if 0 < y.sum() < y.size else float("nan")
    return {
        "auc": auc,
        "logloss": float(log_loss(y, np.clip(p, PROB_CLIP, 1 - PROB_CLIP), labels=[0, 1])),
        "acc": float(accuracy_score(y, (p >= 0.5).astype(np.int8))),
        "n": int(y.size),
    }


def _midranks(keys: tuple[np.ndarray, ...], values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort by (keys..., value) and give each element its average 1-based rank within its key group.

    Returns:
        ``(order, ranks)``: the sort permutation and, aligned with it, the tie-averaged ranks.
    """
    order = np.lexsort((values, *keys[::-1]))
    group = np.zeros(len(order), dtype=bool)
    for k in keys:
        ks = k[order]
        group[1:] |= ks[1:] != ks[:-1]
    group[0] = True
    vs = values[order]
    tie_start = group.copy()
    tie_start[1:] |= vs[1:] != vs[:-1]
    pos = np.arange(len(order))
    group_first = np.maximum.accumulate(np.where(group, pos, 0))
    tie_id = np.cumsum(tie_start) - 1
    tie_first = pos[tie_start]
    tie_last = np.append(tie_first[1:], len(order)) - 1
    ranks = (tie_first[tie_id] + tie_last[tie_id]) / 2.0 - group_first + 1.0
    return order, ranks


def uauc(user_ids, labels, probs) -> float:
    """Mean per-user AUC over users that have both a positive and a negative sample.

    Vectorised: one lexsort by (user, prob) gives within-user mid-ranks; each user's AUC is the
    Mann-Whitney statistic ``(sum of positive ranks - P(P+1)/2) / (P N)``.

    Args:
        user_ids: (n,) user of each prediction.
        labels: (n,) 0/1.
        probs: (n,) predicted P(label = 1).

    Returns:
        the unweighted mean of per-user AUCs; NaN when no user has both labels.
    """
    y, p = _check(labels, probs)
    u = np.asarray(user_ids).ravel()
    if u.shape != y.shape:
        raise ValueError(f"user_ids must have the same length as labels, got {u.shape[0]} and {y.shape[0]}")
    _, inv = np.unique(u, return_inverse=True)
    order, ranks = _midranks((inv,), p)
    pos = np.bincount(inv, weights=y, minlength=inv.max() + 1)
    tot = np.bincount(inv, minlength=inv.max() + 1)
    neg = tot - pos
    rank_pos = np.bincount(inv[order], weights=ranks * y[order], minlength=len(tot))
    ok = (pos > 0) & (neg > 0)
    if not ok.any():
        return float("nan")
    aucs = (rank_pos[ok] - pos[ok] * (pos[ok] + 1) / 2) / (pos[ok] * neg[ok])
    return float(aucs.mean())


def _bootstrap_values(y: np.ndarray, p: np.ndarray, counts: np.ndarray, metric: str) -> np.ndarray:
    """Metric for each resample given (B, n) multiplicities of the original points."""
    m = len(y)
    if metric == "logloss":
        pc_ = np.clip(p, PROB_CLIP, 1 - PROB_CLIP)
        return counts @ -(y * np.log(pc_) + (1 - y) * np.log(1 - pc_)) / m
    if metric == "acc":
        return counts @ ((p >= 0.5) == (y == 1)).astype(np.float64) / m
    # AUC with tie handling over weighted points: group equal scores, then per resample
    # sum_pos_groups w_pos(g) * (w_neg(< g) + 0.5 w_neg(g)) / (W_pos W_neg)
    uniq, grp = np.unique(p, return_inverse=True)
    g = len(uniq)
    b = counts.shape[0]
    flat = (np.arange(b)[:, None] * g + grp[None, :]).ravel()
    w_pos = np.bincount(flat, weights=(counts * y[None, :]).ravel(), minlength=b * g).reshape(b, g)
    w_neg = np.bincount(flat, weights=(counts * (1 - y)[None, :]).ravel(), minlength=b * g).reshape(b, g)
    below = np.cumsum(w_neg, axis=1) - w_neg
    num = (w_pos * (below + 0.5 * w_neg)).sum(axis=1)
    den = w_pos.sum(axis=1) * w_neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)


def bootstrap_ci(
    labels, probs, metric: str = "auc", n: int = 1000, seed: int = 0, level: float = 0.95, groups=None
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of a metric.

    All resamples are drawn at once (an (n, m) index matrix per block of resamples, turned into
    per-point multiplicities); the AUC of every resample is the weighted Mann-Whitney statistic over the
    distinct scores, so no per-resample sort or sklearn call is needed.

    Args:
        labels: (m,) 0/1.
        probs: (m,) predicted P(label = 1).
        metric: ``"auc"``, ``"logloss"`` or ``"acc"``.
        n: number of bootstrap resamples.
        seed: numpy seed.
        level: coverage of the interval.
        groups: optional (m,) cluster id (user) of each point. When given, the clusters are resampled
            with replacement and every drawn cluster brings all of its points (cluster bootstrap).
            With one point per cluster the draws, and so the interval, equal the plain bootstrap's.

    Returns:
        ``(lo, hi)``; NaN, NaN when no resample is defined (AUC with one class).
    """
    if metric not in ("auc", "logloss", "acc"):
        raise ValueError(f"bootstrap metric must be 'auc', 'logloss' or 'acc', got {metric!r}")
    if n < 1 or not 0 < level < 1:
        raise ValueError(f"need n >= 1 and 0 < level < 1, got n={n}, level={level}")
    y, p = _check(labels, probs)
    inverse = _group_index(groups, len(y))
    vals = np.concatenate(
        [_bootstrap_values(y, p, counts, metric) for counts in _resample_counts(len(y), n, seed, inverse)]
    )
    return _percentiles(vals, level)


def _group_index(groups, m: int) -> np.ndarray | None:
    """Cluster index of each point, clusters numbered in order of first appearance (None without groups).

    Numbering by first appearance makes all-distinct groups give ``arange(m)``, so the cluster bootstrap
    then draws exactly what the plain bootstrap draws.
    """
    if groups is None:
        return None
    g = np.asarray(groups).ravel()
    if g.shape[0] != m:
        raise ValueError(f"groups must have the same length as labels, got {g.shape[0]} and {m}")
    _, first, inv = np.unique(g, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    return rank[inv.ravel()]


def _resample_counts(m: int, n: int, seed: int, inverse: np.ndarray | None = None):
    """Yield ``(b, m)`` float64 multiplicity matrices of ``n`` bootstrap resamples of ``m`` points, in blocks.

    With ``inverse`` (cluster index of each point, ``0..G-1``) each resample draws ``G`` clusters with
    replacement, i.e. ``(b, G)`` cluster multiplicities, expanded to the points as ``counts[:, inverse]``.
    """
    rng = np.random.default_rng(seed)
    g = m if inverse is None else int(inverse.max()) + 1
    block = max(1, min(n, 4_000_000 // m))  # keep (block, m) matrices at a few tens of MB
    for start in range(0, n, block):
        b = min(block, n - start)
        idx = rng.integers(0, g, size=(b, g))
        counts = np.bincount((np.arange(b)[:, None] * g + idx).ravel(), minlength=b * g).reshape(b, g)
        if inverse is not None:
            counts = counts[:, inverse]
        yield counts.astype(np.float64)


def _percentiles(vals: np.ndarray, level: float) -> tuple[float, float]:
    if np.isnan(vals).all():
        return float("nan"), float("nan")
    q = (1 - level) / 2
    lo, hi = np.nanquantile(vals, [q, 1 - q])
    return float(lo), float(hi)


def bootstrap_delta_ci(
    labels, probs_a, probs_b, metric: str = "auc", n: int = 1000, seed: int = 0, level: float = 0.95, groups=None
) -> tuple[float, float, float]:
    """Paired bootstrap of ``metric(a) - metric(b)`` on the same samples.

    Both score vectors are evaluated on the *same* resamples, so the interval of the difference is much
    narrower than the two separate intervals suggest when the models err on the same samples. An
    interval that excludes 0 is a real gap at ``level``. ``groups`` (user of each sample) resamples
    users with all their samples instead (see :func:`bootstrap_ci`).

    Returns:
        ``(delta, lo, hi)`` with ``delta`` the difference on the full sample.
    """
    if metric not in ("auc", "logloss", "acc"):
        raise ValueError(f"bootstrap metric must be 'auc', 'logloss' or 'acc', got {metric!r}")
    if n < 1 or not 0 < level < 1:
        raise ValueError(f"need n >= 1 and 0 < level < 1, got n={n}, level={level}")
    y, pa_ = _check(labels, probs_a)
    _, pb = _check(labels, probs_b)
    inverse = _group_index(groups, len(y))
    ones = np.ones((1, len(y)))
    delta = float(_bootstrap_values(y, pa_, ones, metric)[0] - _bootstrap_values(y, pb, ones, metric)[0])
    vals = np.concatenate(
        [
            _bootstrap_values(y, pa_, c, metric) - _bootstrap_values(y, pb, c, metric)
            for c in _resample_counts(len(y), n, seed, inverse)
        ]
    )
    lo, hi = _percentiles(vals, level)
    return delta, lo, hi


def auc_decomposition(user_ids, labels, probs) -> dict:
    """Split the global AUC's positive-negative pairs into within-user and between-user pairs.

    ``auc = w_within * auc_within + w_between * auc_between`` exactly, with ``w_*`` the fractions of
    pairs of each kind. A model that only ranks users (says who clicks a lot) scores on between-user
    pairs; ranking items for one user shows in ``auc_within``. Vectorised with mid-ranks (one global,
    one per user), O(n log n) time and O(n) memory.

    Args:
        user_ids: (n,) user of each prediction.
        labels: (n,) 0/1.
        probs: (n,) predicted P(label = 1).

    Returns:
        ``{"auc", "auc_within", "auc_between", "w_within", "w_between", "pairs", "pairs_within",
        "pairs_between", "users", "users_both_labels", "auc_user_only"}``; ``auc_user_only`` is the
        (in-sample) AUC of scoring every sample by its user's positive rate in these labels, the AUC
        that knowing only the user gives. AUCs over no pairs are NaN.
    """
    y, p = _check(labels, probs)
    u = np.asarray(user_ids).ravel()
    if u.shape != y.shape:
        raise ValueError(f"user_ids must have the same length as labels, got {u.shape[0]} and {y.shape[0]}")
    _, inv = np.unique(u, return_inverse=True)
    inv = inv.ravel()
    n_users = int(inv.max()) + 1
    yf = y.astype(np.float64)

    def mann_whitney(keys, scores):
        """(U statistic summed over key groups, positive-negative pairs summed over key groups)."""
        order, ranks = _midranks(keys, scores)
        k = keys[0][order] if keys else np.zeros(len(order), dtype=np.int64)
        ys = yf[order]
        pos = np.bincount(k, weights=ys)
        tot = np.bincount(k).astype(np.float64)
        rank_pos = np.bincount(k, weights=ranks * ys)
        return float((rank_pos - pos * (pos + 1) / 2).sum()), float((pos * (tot - pos)).sum())

    u_all, pairs = mann_whitney((), p)
    u_in, pairs_in = mann_whitney((inv,), p)
    pairs_out = pairs - pairs_in
    pos_u = np.bincount(inv, weights=yf, minlength=n_users)
    tot_u = np.bincount(inv, minlength=n_users)
    nan = float("nan")
    rate = pos_u / tot_u
    u_rate, _ = mann_whitney((), rate[inv])
    return {
        "auc": u_all / pairs if pairs else nan,
        "auc_within": u_in / pairs_in if pairs_in else nan,
        "auc_between": (u_all - u_in) / pairs_out if pairs_out else nan,
        "w_within": pairs_in / pairs if pairs else nan,
        "w_between": pairs_out / pairs if pairs else nan,
        "pairs": int(pairs),
        "pairs_within": int(pairs_in),
        "pairs_between": int(pairs_out),
        "users": n_users,
        "users_both_labels": int(((pos_u > 0) & (pos_u < tot_u)).sum()),
        "auc_user_only": u_rate / pairs if pairs else nan,
    }
