"""User retrieval (self / invalid exclusion, brute-force agreement) and the ranking helpers."""

from __future__ import annotations

import numpy as np
import pytest

from ragrec.retrieval.users import order_by_scores, rank_by_rationale, retrieve_users, take_rows


def brute_force(q, emb, k, own, valid):
    sims = q @ emb.T
    sims[:, ~valid] = -np.inf
    if own is not None:
        sims[np.arange(len(q)), own] = -np.inf
    ids = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return ids, np.take_along_axis(sims, ids, axis=1)


@pytest.mark.parametrize("with_own", [True, False])
def test_matches_brute_force_and_excludes_self_and_invalid(with_own):
    rng = np.random.default_rng(0)
    U, Q, d, k = 60, 25, 8, 7
    emb = rng.normal(size=(U, d)).astype(np.float32)
    valid = rng.random(U) > 0.3
    own = rng.choice(U, Q, replace=False) if with_own else None
    # the queries ARE (noisy copies of) their own users' embeddings: self would rank first if kept
    q = (emb[own] if with_own else rng.normal(size=(Q, d))).astype(np.float32)
    q = q + 0.01 * rng.normal(size=q.shape).astype(np.float32)
    ids, scores = retrieve_users(q, emb, k, query_user_ids=own, valid=valid)
    assert ids.shape == scores.shape == (Q, k) and ids.dtype == np.int64 and scores.dtype == np.float32
    ref_ids, ref_scores = brute_force(q, emb, k, own, valid)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-5)
    assert valid[ids].all()
    if with_own:
        assert not (ids == own[:, None]).any()
        assert valid[own].any()  # the self-exclusion path was exercised
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first


def test_small_example_by_hand():
    emb = np.array([[1.0, 0.0], [0.9, 0.1], [0.8, 0.2], [0.0, 1.0]], dtype=np.float32)
    valid = np.array([True, True, False, True])
    ids, scores = retrieve_users(emb[[0, 3]], emb, 2, query_user_ids=np.array([0, 3]), valid=valid)
    # user 0: itself (1.0) and user 2 (invalid) are skipped -> 1, then 3
    # user 3: itself skipped -> 1 (0.1), then 0 (0.0)
    np.testing.assert_array_equal(ids, [[1, 3], [1, 0]])
    np.testing.assert_allclose(scores, [[0.9, 0.0], [0.1, 0.0]], atol=1e-6)


def test_too_few_eligible_users_is_an_error():
    emb = np.eye(4, dtype=np.float32)
    valid = np.array([True, True, True, False])
    # 3 valid users, one of which is the query itself: only 2 eligible
    with pytest.raises(ValueError, match=r"query 0 has only 2 eligible users .* k=3"):
        retrieve_users(emb[:1], emb, 3, query_user_ids=np.array([0]), valid=valid)
    ids, _ = retrieve_users(emb[:1], emb, 3, query_user_ids=np.array([3]), valid=valid)  # invalid self: 3 left
    assert sorted(ids[0].tolist()) == [0, 1, 2]
    with pytest.raises(ValueError, match="valid must have shape"):
        retrieve_users(emb[:1], emb, 1, valid=np.ones(3, bool))


def test_rank_by_rationale_is_cosine_descending_and_stable():
    r = np.array([[1.0, 0.0], [0.0, 2.0]], dtype=np.float32)
    cand = np.array(
        [
            # pair 0: a long vector at 45 deg must rank below a short one at 0 deg (cosine, not dot)
            [[10.0, 10.0], [0.1, 0.0], [0.0, 1.0], [3.0, 1.0]],
            # pair 1: candidates 0 and 2 tie (same direction): retrieval order kept
            [[0.0, 1.0], [1.0, 0.0], [0.0, 5.0], [1.0, 1.0]],
        ],
        dtype=np.float32,
    )
    order = rank_by_rationale(r, cand)
    assert order.dtype == np.int64
    np.testing.assert_array_equal(order, [[1, 3, 0, 2], [0, 2, 3, 1]])  # a dot product would give [0, 3, 1, 2]
    with pytest.raises(ValueError, match=r"\(P, d\) and \(P, K, d\)"):
        rank_by_rationale(r, cand[:1])


def test_order_by_scores_and_take_rows():
    scores = np.array([[0.1, 0.9, 0.5, 0.9], [3.0, 2.0, 1.0, 0.0]])
    order = order_by_scores(scores)
    np.testing.assert_array_equal(order, [[1, 3, 2, 0], [0, 1, 2, 3]])
    ids = np.array([[10, 11, 12, 13], [20, 21, 22, 23]])
    np.testing.assert_array_equal(take_rows(ids, order, 2), [[11, 13], [20, 21]])
    assert take_rows(ids, order, 0).shape == (2, 0)
    with pytest.raises(ValueError, match="n=5 must lie in 0..4"):
        take_rows(ids, order, 5)
