"""Ranking metrics of candidate lists (UR4Rec / KAR / LibRerank): MAP@k and NDCG@k, user-clustered bootstrap CIs.

A list is a row of an ``(N, C)`` score matrix; higher scores rank first. Everything is vectorised over the
whole matrix (no loop over lists).

**Ties are pessimistic**: a relevant item tied with irrelevant ones is ranked after all of them, so a
constant scorer gets no credit. With one relevant item (the target) its 1-based rank is
``1 + #(others scoring strictly higher) + #(others scoring the same)``.

* ``NDCG@k = DCG@k / IDCG@k`` with ``DCG@k = sum_{j<=k} rel_j / log2(j + 1)`` and the IDCG of the ideal
  order (all relevant first); one target: ``1 / log2(rank + 1)`` if ``rank <= k`` else 0.
* ``MAP@k`` as in KAR / LibRerank: ``AP@k = (sum_{j<=k} P@j rel_j) / (number of relevant in the top k)``,
  0 when the top k holds none; one target: ``1 / rank`` if ``rank <= k`` else 0.

Lists without any relevant item score 0. :func:`bootstrap_mean_ci` / :func:`bootstrap_mean_delta_ci` give
percentile intervals of the mean of per-list values, resampling users (``groups``) with all their lists.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .metrics import _group_index, _percentiles, _resample_counts

__all__ = [
    "DEFAULT_KS",
    "bootstrap_mean_ci",
    "bootstrap_mean_delta_ci",
    "per_sample_ranking_metrics",
    "per_sample_ranking_metrics_labels",
    "ranking_metrics",
    "ranking_metrics_labels",
]

DEFAULT_KS = (1, 5, 10, 20)


def _check_scores(scores) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] == 0 or s.shape[1] == 0:
        raise ValueError(f"scores must be a non-empty (N, C) matrix, got shape {s.shape}")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    return s


def check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive cut-offs, got {ks}")
    return ks


def per_sample_ranking_metrics(scores, target_index, ks: Sequence[int] = DEFAULT_KS) -> dict[str, np.ndarray]:
    """MAP@k and NDCG@k of every list with one relevant item, the target.

    Args:
        scores: ``(N, C)`` scores of the candidates (higher = ranked first).
        target_index: ``(N,)`` column of the target in each row.
        ks: cut-offs.

    Returns:
        ``{"map@k": (N,), "ndcg@k": (N,)}`` for every ``k`` (float64), plus ``"rank"``: ``(N,)`` the
        target's pessimistic 1-based rank.
    """
    s = _check_scores(scores)
    ks = check_ks(ks)
    t = np.asarray(target_index).ravel()
    if t.shape[0] != s.shape[0]:
        raise ValueError(f"target_index must have one entry per row, got {t.shape[0]} for {s.shape[0]} rows")
    if t.size and (t.min() < 0 or t.max() >= s.shape[1]):
        raise ValueError(f"target_index must lie in 0..{s.shape[1] - 1}")
    st = s[np.arange(len(t)), t]
    rank = (s >= st[:, None]).sum(axis=1)  # 1 (itself) + strictly higher + tied others
    out: dict[str, np.ndarray] = {"rank": rank.astype(np.int64)}
    for k in ks:
        hit = rank <= k
        out[f"map@{k}"] = np.where(hit, 1.0 / rank, 0.0)
        out[f"ndcg@{k}"] = np.where(hit, 1.0 / np.log2(rank + 1.0), 0.0)
    return out


def ranking_metrics(scores, target_index, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """Mean MAP@k and NDCG@k over lists with one relevant item (see :func:`per_sample_ranking_metrics`).

    Returns:
        ``{"map@k": float, "ndcg@k": float}`` for every ``k``.
    """
    per = per_sample_ranking_metrics(scores, target_index, ks)
    return {name: float(v.mean()) for name, v in per.items() if name != "rank"}


def per_sample_ranking_metrics_labels(scores, labels, ks: Sequence[int] = DEFAULT_KS) -> dict[str, np.ndarray]:
    """MAP@k and NDCG@k of every list with any number of relevant items.

    Each row is sorted by (score descending, label ascending): ties put irrelevant items first
    (pessimistic). Then ``DCG@k``, ``IDCG@k`` (``min(k, R)`` relevant items at the top, ``R`` = relevant in
    the row) and ``AP@k = sum_{j<=k} P@j rel_j / hits@k`` come from cumulative sums along axis 1.

    Args:
        scores: ``(N, C)`` scores.
        labels: ``(N, C)`` 0/1 relevance.
        ks: cut-offs.

    Returns:
        ``{"map@k": (N,), "ndcg@k": (N,)}`` float64 for every ``k``; 0 for rows without a relevant item.
    """
    s = _check_scores(scores)
    ks = check_ks(ks)
    y = np.asarray(labels)
    if y.shape != s.shape:
        raise ValueError(f"labels must have the shape of scores {s.shape}, got {y.shape}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0/1")
    order = np.lexsort((y, -s), axis=1)
    rel = np.take_along_axis(y, order, axis=1).astype(np.float64)  # (N, C) relevance in ranked order
    C = s.shape[1]
    disc = 1.0 / np.log2(np.arange(2, C + 2))  # (C,)
    dcg_cum = np.cumsum(rel * disc, axis=1)
    hits_cum = np.cumsum(rel, axis=1)
    ap_cum = np.cumsum(rel * hits_cum / np.arange(1, C + 1), axis=1)  # sum_j P@j rel_j
    ideal_cum = np.cumsum(disc)
    n_rel = rel.sum(axis=1).astype(np.int64)
    out: dict[str, np.ndarray] = {}
    for k in ks:
        c = min(k, C) - 1
        idcg = np.where(n_rel > 0, ideal_cum[np.clip(np.minimum(n_rel, k) - 1, 0, C - 1)], 1.0)
        hits = hits_cum[:, c]
        out[f"map@{k}"] = np.where(hits > 0, ap_cum[:, c] / np.maximum(hits, 1.0), 0.0)
        out[f"ndcg@{k}"] = dcg_cum[:, c] / idcg
    return out


def ranking_metrics_labels(scores, labels, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """Mean MAP@k and NDCG@k over lists with 0/1 ``labels`` (see :func:`per_sample_ranking_metrics_labels`)."""
    return {name: float(v.mean()) for name, v in per_sample_ranking_metrics_labels(scores, labels, ks).items()}


def _check_values(values, name: str = "values") -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        raise ValueError(f"no {name} to bootstrap")
    if not np.isfinite(v).all():
        raise ValueError(f"{name} must be finite")
    return v


def _check_boot(n: int, level: float) -> None:
    if n < 1 or not 0 < level < 1:
        raise ValueError(f"need n >= 1 and 0 < level < 1, got n={n}, level={level}")


def _resampled_means(v: np.ndarray, groups, n: int, seed: int) -> np.ndarray:
    """``(n,)`` weighted means ``counts @ v / counts.sum(1)`` over the bootstrap resamples."""
    inverse = _group_index(groups, len(v))
    return np.concatenate([c @ v / c.sum(axis=1) for c in _resample_counts(len(v), n, seed, inverse)])


def bootstrap_mean_ci(values, groups=None, n: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-list values (e.g. ``ndcg@10`` of every sample).

    Args:
        values: ``(N,)`` per-sample values.
        groups: optional ``(N,)`` user of each sample: users are resampled with replacement, each bringing
            all its samples (cluster bootstrap; the mean of a resample is weighted by the multiplicities).
            With one sample per user the draws equal the plain bootstrap's.
        n: number of resamples.
        seed: numpy seed.
        level: coverage.

    Returns:
        ``(lo, hi)``.
    """
    _check_boot(n, level)
    v = _check_values(values)
    return _percentiles(_resampled_means(v, groups, n, seed), level)


def bootstrap_mean_delta_ci(
    values_a, values_b, groups=None, n: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """Paired bootstrap of ``mean(a) - mean(b)`` over the same samples (the same resamples for both).

    Args:
        values_a: ``(N,)`` per-sample values of model a.
        values_b: ``(N,)`` per-sample values of model b on the same samples.
        groups: optional ``(N,)`` user of each sample (cluster bootstrap, see :func:`bootstrap_mean_ci`).
        n: number of resamples.
        seed: numpy seed.
        level: coverage.

    Returns:
        ``(delta, lo, hi)`` with ``delta = mean(a) - mean(b)`` on all samples.
    """
    _check_boot(n, level)
    a = _check_values(values_a, "values_a")
    b = _check_values(values_b, "values_b")
    if a.shape != b.shape:
        raise ValueError(f"values_a and values_b must have the same length, got {a.size} and {b.size}")
    d = a - b
    lo, hi = _percentiles(_resampled_means(d, groups, n, seed), level)
    return float(d.mean()), lo, hi
