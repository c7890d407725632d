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
