"""Ranking metrics: hand-computed MAP@k / NDCG@k (one target, several relevant, pessimistic ties), perfect and
constant scorers, and the (user-clustered, paired) bootstrap of per-sample means."""

from __future__ import annotations

import numpy as np
import pytest

from ragrec.evaluation.ranking import (
    bootstrap_mean_ci,
    bootstrap_mean_delta_ci,
    per_sample_ranking_metrics,
    ranking_metrics,
    ranking_metrics_labels,
)

L2 = np.log2


def test_single_target_by_hand():
    scores = np.array(
        [
            [0.1, 0.9, 0.5, 0.3],  # target 2: rank 2
            [0.2, 0.2, 0.2, 0.1],  # target 0 tied with two others: pessimistic rank 3
            [0.1, 0.2, 0.3, 0.4],  # target 3: rank 1
            [0.5, 0.6, 0.7, 0.4],  # target 3: rank 4
        ]
    )
    t = np.array([2, 0, 3, 3])
    per = per_sample_ranking_metrics(scores, t, ks=(1, 3, 5))
    assert per["rank"].tolist() == [2, 3, 1, 4]
    np.testing.assert_allclose(per["map@1"], [0, 0, 1, 0])
    np.testing.assert_allclose(per["map@3"], [1 / 2, 1 / 3, 1, 0])
    np.testing.assert_allclose(per["map@5"], [1 / 2, 1 / 3, 1, 1 / 4])
    np.testing.assert_allclose(per["ndcg@1"], [0, 0, 1, 0])
    np.testing.assert_allclose(per["ndcg@3"], [1 / L2(3), 1 / L2(4), 1, 0])
    np.testing.assert_allclose(per["ndcg@5"], [1 / L2(3), 1 / L2(4), 1, 1 / L2(5)])
    m = ranking_metrics(scores, t, ks=(3,))
    assert set(m) == {"map@3", "ndcg@3"}
    assert m["map@3"] == pytest.approx((1 / 2 + 1 / 3 + 1) / 4)
    assert m["ndcg@3"] == pytest.approx((1 / L2(3) + 1 / L2(4) + 1) / 4)


def test_multi_relevant_and_ties_by_hand():
    scores = np.array(
        [
            [0.9, 0.8, 0.7, 0.6, 0.5],  # ranked relevance 1 0 1 0 1
            [0.5, 0.5, 0.5, 0.1, 0.0],  # ties: pessimistic order 0 1 1 0 0
            [0.5, 0.4, 0.3, 0.2, 0.1],  # no relevant item
        ]
    )
    labels = np.array([[1, 0, 1, 0, 1], [1, 0, 1, 0, 0], [0, 0, 0, 0, 0]])
    m = ranking_metrics_labels(scores[:1], labels[:1], ks=(1, 3, 5))
    assert m["map@1"] == pytest.approx(1.0)
    assert m["map@3"] == pytest.approx((1 + 2 / 3) / 2)
    assert m["map@5"] == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
    idcg3 = 1 + 1 / L2(3) + 1 / L2(4)
    assert m["ndcg@1"] == pytest.approx(1.0)
    assert m["ndcg@3"] == pytest.approx((1 + 1 / L2(4)) / idcg3)
    assert m["ndcg@5"] == pytest.approx((1 + 1 / L2(4) + 1 / L2(6)) / idcg3)
    tie = ranking_metrics_labels(scores[1:2], labels[1:2], ks=(1, 3))
    assert tie["map@1"] == 0 and tie["ndcg@1"] == 0
    assert tie["map@3"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert tie["ndcg@3"] == pytest.approx((1 / L2(3) + 1 / L2(4)) / (1 + 1 / L2(3)))
    none = ranking_metrics_labels(scores[2:], labels[2:], ks=(5,))
    assert none == {"map@5": 0.0, "ndcg@5": 0.0}


def test_labels_variant_agrees_with_target_variant():
    rng = np.random.default_rng(0)
    scores = np.round(rng.random((500, 20)), 1)  # many ties
    t = rng.integers(0, 20, 500)
    onehot = np.zeros_like(scores, dtype=np.int8)
    onehot[np.arange(500), t] = 1
    ks = (1, 5, 10, 20, 30)
    a, b = ranking_metrics(scores, t, ks), ranking_metrics_labels(scores, onehot, ks)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k] == pytest.approx(b[k], abs=1e-12)


def test_perfect_and_constant_scorers():
    rng = np.random.default_rng(1)
    N, C = 50, 10
    t = rng.integers(0, C, N)
    perfect = rng.random((N, C))
    perfect[np.arange(N), t] = 2.0
    assert all(v == pytest.approx(1.0) for v in ranking_metrics(perfect, t).values())
    const = ranking_metrics(np.zeros((N, C)), t)  # target ranked last: rank C
    assert const["map@1"] == const["map@5"] == const["ndcg@1"] == const["ndcg@5"] == 0.0
    assert const["map@10"] == pytest.approx(1 / C) and const["map@20"] == pytest.approx(1 / C)
    assert const["ndcg@10"] == pytest.approx(1 / L2(C + 1)) and const["ndcg@20"] == pytest.approx(1 / L2(C + 1))


def test_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        ranking_metrics(np.array([[np.nan, 1.0]]), [0])
    with pytest.raises(ValueError, match="target_index"):
        ranking_metrics(np.zeros((2, 3)), [0, 3])
    with pytest.raises(ValueError, match="ks"):
        ranking_metrics(np.zeros((2, 3)), [0, 1], ks=(0,))
    with pytest.raises(ValueError, match="0/1"):
        ranking_metrics_labels(np.zeros((1, 2)), [[2, 0]])


def test_bootstrap_one_sample_per_group_equals_plain():
    rng = np.random.default_rng(2)
    v = rng.random(300)
    groups = rng.permutation(300) + 1000
    # the same draws; the sums may differ in the last bit (BLAS order)
    assert bootstrap_mean_ci(v, groups, n=300, seed=3) == pytest.approx(bootstrap_mean_ci(v, None, n=300, seed=3))
    lo, hi = bootstrap_mean_ci(v, n=300, seed=3)
    assert lo < v.mean() < hi
    w = rng.random(300)
    assert bootstrap_mean_delta_ci(v, w, groups, n=200) == pytest.approx(bootstrap_mean_delta_ci(v, w, None, n=200))
    assert bootstrap_mean_ci(v, groups, n=300, seed=4) != pytest.approx(bootstrap_mean_ci(v, None, n=300, seed=3))


def test_paired_delta():
    rng = np.random.default_rng(3)
    v = rng.random(200)
    g = rng.integers(0, 20, 200)
    assert bootstrap_mean_delta_ci(v, v, g, n=200) == (0.0, 0.0, 0.0)
    d, lo, hi = bootstrap_mean_delta_ci(v + 0.25, v, g, n=200)
    assert d == pytest.approx(0.25) and lo == pytest.approx(0.25) and hi == pytest.approx(0.25)
    # paired: a shared per-sample component cancels, so the delta interval is narrower than either mean's
    noise = rng.normal(0, 0.01, 200)
    d, lo, hi = bootstrap_mean_delta_ci(v + noise + 0.1, v, None, n=500)
    a_lo, a_hi = bootstrap_mean_ci(v + noise + 0.1, None, n=500)
    assert lo < d < hi and hi - lo < 0.2 * (a_hi - a_lo)


def test_cluster_bootstrap_is_wider_on_clustered_data():
    rng = np.random.default_rng(4)
    users = np.repeat(np.arange(40), 25)
    v = rng.normal(0, 1, 40)[users] + rng.normal(0, 0.1, len(users))
    lo_p, hi_p = bootstrap_mean_ci(v, None, n=1000, seed=0)
    lo_c, hi_c = bootstrap_mean_ci(v, users, n=1000, seed=0)
    assert hi_c - lo_c > 2.5 * (hi_p - lo_p)
    assert lo_c < v.mean() < hi_c
