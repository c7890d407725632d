"""User retrieval and ranking math for SCoRe (steps 4 and 6): vectorised numpy / faiss, no model code.

* :func:`retrieve_users` — the top-``k`` most similar users by inner product of user embeddings
  (CAR: L2-normalised encodings of the users' behaviour documents ``d(H(u))``), excluding each
  query's own user and users without a behaviour document.
* :func:`rank_by_rationale` — the self-assessment ranking ``O(u_t, v_t)``: candidates ordered by the
  cosine between the LLM rationale's embedding and each candidate's document embedding (paper §3.3).
* :func:`order_by_scores` / :func:`take_rows` — reorder candidate ids by any (Q, K) score matrix
  (e.g. SARE's cross-encoder scores) and keep the first ``n``.
"""

from __future__ import annotations

import numpy as np

from ragrec.retrieval.index import ItemIndex

__all__ = ["order_by_scores", "rank_by_rationale", "retrieve_users", "take_rows"]


def retrieve_users(
    query_emb: np.ndarray,
    user_emb: np.ndarray,
    k: int,
    *,
    query_user_ids: np.ndarray | None = None,
    valid: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` users per query by inner product (an exact faiss ``IndexFlatIP``).

    Args:
        query_emb: (Q, d) query embeddings (for cosine, L2-normalise both sides).
        user_emb: (U, d) embeddings of every user; row u is user id u.
        k: users returned per query.
        query_user_ids: (Q,) the user id each query belongs to, excluded from its own result
            (``None``: nothing excluded, e.g. cold queries that are no user of the corpus).
        valid: (U,) bool, False for users that may never be returned (no behaviour document).

    Returns:
        ``(ids, scores)``: (Q, k) int64 user ids and (Q, k) float32 inner products, best first.

    Raises:
        ValueError: when a query has fewer than ``k`` eligible users, or on shape mismatches.
    """
    q = np.asarray(query_emb, dtype=np.float32)
    emb = np.asarray(user_emb, dtype=np.float32)
    if q.ndim != 2 or emb.ndim != 2 or q.shape[1] != emb.shape[1]:
        raise ValueError(
            f"retrieve_users: query_emb {q.shape} and user_emb {emb.shape} must be (Q, d) and (U, d) with the same d"
        )
    if k < 1:
        raise ValueError(f"retrieve_users: k must be >= 1, got {k}")
    num_users = emb.shape[0]
    if valid is None:
        valid = np.ones(num_users, dtype=bool)
    valid = np.asarray(valid, dtype=bool)
    if valid.shape != (num_users,):
        raise ValueError(
            f"retrieve_users: valid must have shape ({num_users},) like user_emb's rows, got {valid.shape}"
        )
    eligible = np.flatnonzero(valid)  # (E,) user ids that can be retrieved
    if query_user_ids is not None:
        own = np.asarray(query_user_ids, dtype=np.int64)
        if own.shape != (q.shape[0],):
            raise ValueError(f"retrieve_users: query_user_ids must have shape ({q.shape[0]},), got {own.shape}")
        if own.size and (own.min() < 0 or own.max() >= num_users):
            raise ValueError(f"retrieve_users: query_user_ids must lie in 0..{num_users - 1}")
        own_eligible = valid[own]
    else:
        own = np.full(q.shape[0], -1, dtype=np.int64)
        own_eligible = np.zeros(q.shape[0], dtype=bool)
    available = len(eligible) - own_eligible.astype(np.int64)  # (Q,) users each query may get
    if q.shape[0] and available.min() < k:
        bad = int(np.argmin(available))
        raise ValueError(
            f"retrieve_users: query {bad} has only {int(available[bad])} eligible users (valid, not itself) but "
            f"k={k} were asked; lower ci.ke or give more users a behaviour document"
        )
    if q.shape[0] == 0:
        return np.zeros((0, k), dtype=np.int64), np.zeros((0, k), dtype=np.float32)

    extra = int(own_eligible.any())  # one spare slot per row in case the query's own user comes back
    scores, pos = ItemIndex(emb[eligible], metric="ip").search(q, k + extra)
    ids = eligible[pos]  # (Q, k + extra)
    if extra:
        # move the (at most one) self hit to the end of its row, keeping the order of the others
        keep = np.argsort(ids == own[:, None], axis=1, kind="stable")[:, :k]
        ids = np.take_along_axis(ids, keep, axis=1)
        scores = np.take_along_axis(scores, keep, axis=1)
    return ids.astype(np.int64, copy=False), scores.astype(np.float32, copy=False)


def _unit(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def rank_by_rationale(rationale_emb: np.ndarray, cand_emb: np.ndarray) -> np.ndarray:
    """Positions of each pair's candidates ordered by cosine to its rationale, descending.

    Args:
        rationale_emb: (P, d) embeddings of the LLM self-assessments ``TxtEmb(r_t)``.
        cand_emb: (P, K, d) embeddings of the K retrieved users' documents ``TxtEmb(d(H(u_i)))``.

    Returns:
        (P, K) int64: ``order[p, 0]`` is the position (0..K-1) of pair p's best candidate; ties keep
        the retrieval order (stable).
    """
    r = np.asarray(rationale_emb, dtype=np.float32)
    c = np.asarray(cand_emb, dtype=np.float32)
    if r.ndim != 2 or c.ndim != 3 or c.shape[0] != r.shape[0] or c.shape[2] != r.shape[1]:
        raise ValueError(
            f"rank_by_rationale: rationale_emb {r.shape} and cand_emb {c.shape} must be (P, d) and (P, K, d)"
        )
    sims = np.einsum("pd,pkd->pk", _unit(r), _unit(c))
    return order_by_scores(sims)


def order_by_scores(scores: np.ndarray) -> np.ndarray:
    """(Q, K) int64 positions sorting each row of ``scores`` (Q, K) descending; ties keep their order."""
    s = np.asarray(scores)
    if s.ndim != 2:
        raise ValueError(f"order_by_scores: scores must be (Q, K), got shape {s.shape}")
    return np.argsort(-s, axis=1, kind="stable").astype(np.int64, copy=False)


def take_rows(ids: np.ndarray, order: np.ndarray, n: int) -> np.ndarray:
    """The first ``n`` entries of each row of ``ids`` (Q, K) in the order ``order`` (Q, K): (Q, n)."""
    ids, order = np.asarray(ids), np.asarray(order)
    if ids.ndim != 2 or ids.shape != order.shape:
        raise ValueError(f"take_rows: ids {ids.shape} and order {order.shape} must be the same (Q, K) shape")
    if not 0 <= n <= ids.shape[1]:
        raise ValueError(f"take_rows: n={n} must lie in 0..{ids.shape[1]} (the candidates per row)")
    return np.take_along_axis(ids, order[:, :n], axis=1)
