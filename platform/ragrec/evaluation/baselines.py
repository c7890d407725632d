"""Trivial CTR baselines from training labels only (docs/architecture.md §7).

Every report carries them: on MovieLens they are strong, and an LLM method that does not beat them
must say so.

* ``item_rate`` — the item's smoothed positive rate ``(pos_i + a·g) / (n_i + a)``, where ``g`` is the
  global positive rate of the training labels and ``a`` the prior strength (unseen items get ``g``).
* ``item_user_logit`` — item and user smoothed rates combined in logit space:
  ``sigmoid(logit(item) + logit(user) - logit(g))``.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

__all__ = ["ItemUserBaseline", "item_rate", "item_user_logit", "smoothed_rate", "trivial_baselines"]

_EPS = 1e-6


def _col(t: pa.Table, name: str, what: str) -> np.ndarray:
    if name not in t.column_names:
        raise ValueError(f"{what} table has no '{name}' column (has {t.column_names})")
    arr = t.column(name)
    if arr.null_count:
        raise ValueError(f"{what}.{name} has {arr.null_count} nulls")
    return arr.to_numpy().astype(np.int64)


def smoothed_rate(keys: np.ndarray, labels: np.ndarray, query: np.ndarray, prior: float, a: float) -> np.ndarray:
    """``(pos_k + a·prior) / (n_k + a)`` for each query key, counts from (keys, labels).

    Args:
        keys: (n,) non-negative int ids of the training rows.
        labels: (n,) 0/1 training labels.
        query: (m,) ids to score (ids never seen in training get ``prior``).
        prior: the rate to shrink towards.
        a: prior strength (pseudo-count), > 0.

    Returns:
        (m,) float64 rates.
    """
    if a <= 0:
        raise ValueError(f"smoothing strength a must be > 0, got {a}")
    size = int(max(keys.max(initial=-1), query.max(initial=-1))) + 1
    n = np.bincount(keys, minlength=size)
    pos = np.bincount(keys, weights=labels, minlength=size)
    return (pos[query] + a * prior) / (n[query] + a)


def _logit(p: np.ndarray | float) -> np.ndarray:
    p = np.clip(p, _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def item_rate(train: pa.Table, test: pa.Table, a: float = 10.0) -> np.ndarray:
    """Smoothed item positive rate for each test row; (len(test),) float64."""
    y = _col(train, "label", "train").astype(np.float64)
    g = float(y.mean())
    return smoothed_rate(_col(train, "item_id", "train"), y, _col(test, "item_id", "test"), g, a)


def item_user_logit(train: pa.Table, test: pa.Table, a: float = 10.0) -> np.ndarray:
    """``sigmoid(logit(item rate) + logit(user rate) - logit(global))`` for each test row."""
    y = _col(train, "label", "train").astype(np.float64)
    g = float(y.mean())
    ir = smoothed_rate(_col(train, "item_id", "train"), y, _col(test, "item_id", "test"), g, a)
    ur = smoothed_rate(_col(train, "user_id", "train"), y, _col(test, "user_id", "test"), g, a)
    return 1.0 / (1.0 + np.exp(-(_logit(ir) + _logit(ur) - _logit(g))))


class ItemUserBaseline:
    """``item_user_logit`` as lookup tables fitted once on training rows (fusion inputs, serving).

    ``logit(users, items)`` is ``logit(item rate) + logit(user rate) - logit(g)``, the log-odds whose
    sigmoid :func:`item_user_logit` returns, computed the same way; ids never seen in training (or
    beyond the tables) get the prior ``g``.
    """

    def __init__(self, train: pa.Table, a: float = 10.0) -> None:
        if train.num_rows == 0:
            raise ValueError("ItemUserBaseline: the training table is empty")
        y = _col(train, "label", "train").astype(np.float64)
        g = float(y.mean())
        items, users = _col(train, "item_id", "train"), _col(train, "user_id", "train")
        self.global_logit = float(_logit(g))
        self.unseen_logit = float(_logit((0.0 + a * g) / (0 + a)))  # smoothed_rate of an id without rows
        self.item_logit = _logit(smoothed_rate(items, y, np.arange(int(items.max()) + 1), g, a))
        self.user_logit = _logit(smoothed_rate(users, y, np.arange(int(users.max()) + 1), g, a))

    @staticmethod
    def _lookup(table: np.ndarray, ids: np.ndarray, prior: float) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64).ravel()
        known = (ids >= 0) & (ids < len(table))
        return np.where(known, table[np.where(known, ids, 0)], prior)

    def logit(self, user_ids, item_ids) -> np.ndarray:
        """(n,) float64 log-odds of the (user, item) pairs."""
        u = self.unseen_logit
        item = self._lookup(self.item_logit, item_ids, u)
        return item + self._lookup(self.user_logit, user_ids, u) - self.global_logit

    def prob(self, user_ids, item_ids) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.logit(user_ids, item_ids)))


def trivial_baselines(train: pa.Table, test: pa.Table, a: float = 10.0) -> dict[str, np.ndarray]:
    """Both baselines' probabilities for the (user_id, item_id) rows of ``test``.

    Args:
        train: training rows only (``user_id``, ``item_id``, ``label``); never pass test labels here.
        test: rows to score (``user_id``, ``item_id``).
        a: smoothing pseudo-count.

    Returns:
        ``{"item_rate": (m,), "item_user_logit": (m,)}`` float64 probabilities.
    """
    if train.num_rows == 0:
        raise ValueError("trivial_baselines: the training table is empty")
    return {"item_rate": item_rate(train, test, a), "item_user_logit": item_user_logit(train, test, a)}
