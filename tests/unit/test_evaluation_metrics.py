"""CTR metrics vs sklearn, UAUC by hand, bootstrap CIs."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, log_loss, roc_auc_score

from ragrec.evaluation.metrics import bootstrap_ci, ctr_metrics, uauc


def _data(n, seed=0, ties=False):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = 1 / (1 + np.exp(-(rng.normal(size=n) + 0.8 * (y - 0.5))))
    if ties:
        p = np.round(p, 1)
    return y, p


@pytest.mark.parametrize("ties", [False, True])
def test_ctr_metrics_match_sklearn(ties):
    y, p = _data(2000, ties=ties)
    m = ctr_metrics(y, p)
    assert m["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert m["logloss"] == pytest.approx(log_loss(y, p), abs=1e-9)
    assert m["acc"] == pytest.approx(accuracy_score(y, p >= 0.5))
    assert m["n"] == 2000
    # clipping: a confident wrong 0/1 prediction gives a large but finite loss
    assert np.isfinite(ctr_metrics([1, 0], [0.0, 0.0])["logloss"])
    assert np.isnan(ctr_metrics([1, 1], [0.2, 0.9])["auc"])


def test_ctr_metrics_reject_bad_input():
    with pytest.raises(ValueError, match="same length"):
        ctr_metrics([0, 1], [0.5])
    with pytest.raises(ValueError, match="0/1"):
        ctr_metrics([0, 2], [0.5, 0.5])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ctr_metrics([0, 1], [0.5, 1.5])


def test_uauc_hand_example_skips_single_label_users():
    users = [7, 7, 7, 7, 3, 3, 3, 9, 9]
    labels = [1, 0, 1, 0, 1, 1, 1, 0, 1]
    probs = [0.9, 0.1, 0.4, 0.6, 0.5, 0.2, 0.3, 0.7, 0.7]
    # user 7: pos {.9,.4} vs neg {.1,.6}: pairs (.9>.1, .9>.6, .4>.1, .4<.6) -> 3/4
    # user 3: only positives -> skipped;   user 9: one tie -> 0.5
    assert uauc(users, labels, probs) == pytest.approx((0.75 + 0.5) / 2)
    assert np.isnan(uauc([1, 1, 2], [1, 1, 0], [0.1, 0.2, 0.3]))


def test_uauc_matches_per_user_sklearn_loop():
    rng = np.random.default_rng(55)  # not _data's seed: same stream would tie users to labels
    y, p = _data(3000, seed=5, ties=True)
    u = rng.integers(0, 150, 3000)
    want = [roc_auc_score(y[u == k], p[u == k]) for k in np.unique(u) if 0 < y[u == k].sum() < (u == k).sum()]
    assert len(want) > 100
    assert uauc(u, y, p) == pytest.approx(np.mean(want), abs=1e-12)


def test_bootstrap_resample_auc_is_exact():
    """The weighted Mann-Whitney AUC of one resample equals sklearn on the materialised resample."""
    from ragrec.evaluation.metrics import _bootstrap_values

    y, p = _data(300, seed=2, ties=True)
    rng = np.random.default_rng(9)
    idx = rng.integers(0, 300, size=(4, 300))
    counts = np.stack([np.bincount(i, minlength=300) for i in idx]).astype(float)
    got = _bootstrap_values(y.astype(float), p, counts, "auc")
    assert got == pytest.approx([roc_auc_score(y[i], p[i]) for i in idx], abs=1e-12)
    got_ll = _bootstrap_values(y.astype(float), p, counts, "logloss")
    pc = np.clip(p, 1e-7, 1 - 1e-7)  # rounded probs include 0.0 / 1.0: same clipping as ctr_metrics
    assert got_ll == pytest.approx([log_loss(y[i], pc[i]) for i in idx], abs=1e-9)


def test_bootstrap_ci_contains_point_and_narrows():
    y, p = _data(500, seed=1)
    lo, hi = bootstrap_ci(y, p, n=500, seed=0)
    auc = roc_auc_score(y, p)
    assert lo < auc < hi
    assert 0.02 < hi - lo < 0.2
    y4, p4 = _data(8000, seed=1)
    lo4, hi4 = bootstrap_ci(y4, p4, n=500, seed=0)
    assert lo4 < roc_auc_score(y4, p4) < hi4
    assert (hi4 - lo4) < 0.5 * (hi - lo)  # 16x the samples: width shrinks ~4x
    assert bootstrap_ci(y, p, n=200, seed=3) == bootstrap_ci(y, p, n=200, seed=3)
    llo, lhi = bootstrap_ci(y, p, metric="logloss", n=300)
    assert llo < log_loss(y, p) < lhi
    with pytest.raises(ValueError, match="'auc', 'logloss' or 'acc'"):
        bootstrap_ci(y, p, metric="f1")


# ---- user-clustered bootstrap ------------------------------------------------------------------------
def test_cluster_bootstrap_with_one_sample_per_user_is_the_sample_bootstrap():
    """Distinct groups (any labels, any order) draw exactly what the plain bootstrap draws."""
    from ragrec.evaluation.metrics import bootstrap_delta_ci

    y, p = _data(400, seed=4, ties=True)
    users = np.array([f"u{i}" for i in np.random.default_rng(1).permutation(400)])
    assert bootstrap_ci(y, p, n=300, seed=5, groups=users) == bootstrap_ci(y, p, n=300, seed=5)
    q = np.clip(p + np.random.default_rng(2).normal(0, 0.1, 400), 0, 1)
    assert bootstrap_delta_ci(y, p, q, n=300, seed=5, groups=users) == bootstrap_delta_ci(y, p, q, n=300, seed=5)


def _clustered(n_users=40, per_user=25, seed=0):
    """Users whose samples are all positive or all negative, with one score per user."""
    rng = np.random.default_rng(seed)
    yu = rng.integers(0, 2, n_users)
    yu[:2] = [0, 1]
    pu = 1 / (1 + np.exp(-(rng.normal(size=n_users) + 1.0 * (yu - 0.5))))
    users = np.repeat(rng.permutation(1000)[:n_users], per_user)  # arbitrary ids, grouped in blocks
    return users, np.repeat(yu, per_user), np.repeat(pu, per_user), yu, pu


def test_cluster_bootstrap_resamples_users_and_is_wider_on_clustered_data():
    users, y, p, yu, pu = _clustered()
    slo, shi = bootstrap_ci(y, p, n=500, seed=0)
    ulo, uhi = bootstrap_ci(y, p, n=500, seed=0, groups=users)
    auc = roc_auc_score(y, p)
    assert ulo < auc < uhi and slo < auc < shi
    assert (uhi - ulo) > 3 * (shi - slo)  # 40 independent users, not 1000 independent samples
    # every user is 25 copies of one point: resampling users = resampling the 40 per-user points
    # (same draws: 40 clusters with replacement), and a uniform weight scale leaves the AUC unchanged
    assert (ulo, uhi) == pytest.approx(bootstrap_ci(yu, pu, n=500, seed=0), abs=1e-12)


def test_cluster_delta_interval_is_wider_on_clustered_data():
    from ragrec.evaluation.metrics import bootstrap_delta_ci

    users, y, p, _, _ = _clustered(seed=3)
    q = np.clip(p + np.random.default_rng(1).normal(0, 0.15, len(users) // 25).repeat(25), 0, 1)
    d, slo, shi = bootstrap_delta_ci(y, p, q, n=400, seed=0)
    du, ulo, uhi = bootstrap_delta_ci(y, p, q, n=400, seed=0, groups=users)
    assert d == du and ulo <= d <= uhi
    assert (uhi - ulo) > 3 * (shi - slo)
    with pytest.raises(ValueError, match="groups must have the same length"):
        bootstrap_delta_ci(y, p, q, groups=users[:-1])
    with pytest.raises(ValueError, match="groups must have the same length"):
        bootstrap_ci(y, p, groups=users[1:])


# ---- AUC decomposition -------------------------------------------------------------------------------
def _brute_pairs(u, y, p):
    pos, neg = np.where(y == 1)[0], np.where(y == 0)[0]
    win = (p[pos][:, None] > p[neg][None, :]) + 0.5 * (p[pos][:, None] == p[neg][None, :])
    same = u[pos][:, None] == u[neg][None, :]
    return win, same


@pytest.mark.parametrize("seed", [0, 1])
def test_auc_decomposition_identity_and_parts_by_brute_force(seed):
    from ragrec.evaluation.metrics import auc_decomposition

    rng = np.random.default_rng(seed)
    n = 600
    u = rng.integers(0, 25, n) * 7 + 3
    u[:5] = 999  # one user with a single label
    y = (rng.random(n) < 0.3 + 0.4 * (u % 2)).astype(int)
    y[:5] = 1
    p = np.round(1 / (1 + np.exp(-(rng.normal(size=n) + 0.7 * y))), 1)  # heavy ties
    d = auc_decomposition(u, y, p)
    assert d["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert d["w_within"] * d["auc_within"] + d["w_between"] * d["auc_between"] == pytest.approx(
        roc_auc_score(y, p), abs=1e-12
    )
    assert d["w_within"] + d["w_between"] == pytest.approx(1.0)
    win, same = _brute_pairs(u, y, p)
    assert d["pairs"] == win.size and d["pairs_within"] == same.sum() and d["pairs_between"] == (~same).sum()
    assert d["auc_within"] == pytest.approx(win[same].mean(), abs=1e-12)
    assert d["auc_between"] == pytest.approx(win[~same].mean(), abs=1e-12)
    assert d["users"] == len(np.unique(u))
    assert d["users_both_labels"] == sum(0 < y[u == k].mean() < 1 for k in np.unique(u))
    rate = {k: y[u == k].mean() for k in np.unique(u)}
    assert d["auc_user_only"] == pytest.approx(roc_auc_score(y, [rate[k] for k in u]), abs=1e-12)


def test_auc_decomposition_edge_cases_and_scale():
    from ragrec.evaluation.metrics import auc_decomposition

    # one sample per user: no within-user pairs
    d = auc_decomposition([1, 2, 3, 4], [1, 0, 1, 0], [0.9, 0.1, 0.4, 0.6])
    assert d["pairs_within"] == 0 and np.isnan(d["auc_within"]) and d["w_between"] == 1.0
    assert d["auc_between"] == pytest.approx(0.75) == d["auc"]
    # one class: everything undefined
    assert np.isnan(auc_decomposition([1, 1, 2], [1, 1, 1], [0.2, 0.3, 0.4])["auc"])
    with pytest.raises(ValueError, match="same length"):
        auc_decomposition([1, 2], [1, 0, 1], [0.2, 0.3, 0.4])
    # n = 10,000 on 18 users (the ML-100K situation): exact, no pairwise matrix
    y, p = _data(10_000, seed=7, ties=True)
    u = np.random.default_rng(70).integers(0, 18, 10_000)
    d = auc_decomposition(u, y, p)
    assert d["users"] == d["users_both_labels"] == 18
    total = d["w_within"] * d["auc_within"] + d["w_between"] * d["auc_between"]
    assert total == pytest.approx(roc_auc_score(y, p), abs=1e-12)
