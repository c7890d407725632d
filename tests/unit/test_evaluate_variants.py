"""Pure parts of `ragrec evaluate`: variant configs, the paired bootstrap, the report's difference column."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from ragrec.config import load_config
from ragrec.evaluation.metrics import bootstrap_ci, bootstrap_delta_ci
from ragrec.evaluation.report import format_rows
from ragrec.methods.evaluation import reading, same_config, variant_config
from ragrec.methods.rallrec_evaluate import FULL, REFERENCE, VARIANTS


def test_variant_configs_change_only_their_fields():
    base = load_config(None, ["retrieval.strategy=relevance", "retrieval.k=12", "prompt.augmentation=true"])
    full = variant_config(base, VARIANTS[REFERENCE].overrides)
    assert (full.retrieval.strategy, full.retrieval.embedding, full.lora.enabled) == ("rerank", "mixed", True)
    assert full.retrieval.k == 12 and full.prompt.augmentation
    zs = variant_config(base, VARIANTS["zero_shot"].overrides)
    assert not zs.lora.enabled and zs.retrieval == full.retrieval
    rella = variant_config(base, VARIANTS["rella"].overrides)
    assert (rella.retrieval.strategy, rella.retrieval.embedding) == ("relevance", "text")
    assert variant_config(base, VARIANTS["recent"].overrides).prompt.augmentation is False
    assert variant_config(base, VARIANTS["no_aug"].overrides).retrieval == full.retrieval
    assert base.retrieval.strategy == "relevance", "the base config must not be mutated"
    with pytest.raises(KeyError, match="retrieval.kk"):
        variant_config(base, {"retrieval.kk": 3})
    # every paper variant differs from the full one in at least one field, except the full one itself
    for name, v in VARIANTS.items():
        same = variant_config(base, v.overrides).model_dump() == full.model_dump()
        assert same == (name == REFERENCE), name


def test_same_retrieval_tolerates_yaml_rounding_of_two_thirds():
    a = load_config(None, ["retrieval.alpha=0.6666667"]).retrieval.model_dump()
    b = variant_config(load_config(None), {**FULL, "retrieval.alpha": 2 / 3}).retrieval.model_dump()
    assert same_config(a, b)
    assert not same_config(a, {**b, "alpha": 0.5}) and not same_config(a, {**b, "k": 5})


def test_paired_delta_matches_auc_difference_and_detects_a_real_gap():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    good = np.clip(0.5 + 0.3 * (y - 0.5) + 0.2 * rng.standard_normal(400), 0, 1)
    bad = rng.random(400)
    d, lo, hi = bootstrap_delta_ci(y, good, bad, n=300, seed=1)
    assert d == pytest.approx(roc_auc_score(y, good) - roc_auc_score(y, bad), abs=1e-12)
    assert 0 < lo <= d <= hi  # a real gap: the interval excludes 0
    # identical predictors: zero difference with a zero-width interval
    assert bootstrap_delta_ci(y, good, good, n=100) == (0.0, 0.0, 0.0)
    # pairing: a small shift on the same samples is resolved far better than by the separate intervals
    noisy = np.clip(good + 0.05 * rng.standard_normal(400), 0, 1)
    _d2, lo2, hi2 = bootstrap_delta_ci(y, good, noisy, n=300, seed=1)
    alo, ahi = bootstrap_ci(y, good, n=300, seed=1)
    assert hi2 - lo2 < 0.5 * (ahi - alo)
    with pytest.raises(ValueError, match="same length"):
        bootstrap_delta_ci(y, good, bad[:-1])


def _row(name, auc, delta=None, key=""):
    r = {
        "name": name,
        "key": key,
        "group": "",
        "auc": auc,
        "auc_lo": auc - 0.1,
        "auc_hi": auc + 0.1,
        "logloss": 0.69,
        "acc": 0.5,
        "n": 10,
        "examples": None,
    }
    if delta is not None:
        r.update(delta=delta[0], delta_lo=delta[1], delta_hi=delta[2])
    return r


def test_report_marks_only_significant_gaps_and_reading_says_which():
    rows = [
        _row("RALLRec", 0.70, key=REFERENCE) | {"delta": None},
        _row("A", 0.60, (-0.1, -0.15, -0.05)),
        _row("B", 0.69, (-0.01, -0.05, 0.03)),
    ]
    rows.append(_row("item rate", 0.75, (0.05, 0.01, 0.09)) | {"group": "trivial"})
    table = format_rows(rows, "RALLRec")
    lines = table.splitlines()
    assert "ΔAUC vs RALLRec" in lines[0]
    assert lines[3].count("*") == 1 and "-0.1000 [-0.1500, -0.0500] *" in lines[3]
    assert "*" not in lines[4] and "| — |" in lines[2]
    text = "\n".join(reading(rows, REFERENCE, "RALLRec"))
    assert "significantly better than: A" in text and "not distinguishable" in text and "B" in text
    assert "does NOT beat the best trivial baseline (AUC 0.7500)" in text


def test_eval_subset_first_or_seeded_random_in_split_order():
    import pyarrow as pa

    from ragrec.methods.common import eval_subset

    part = pa.table({"sample_id": pa.array(range(100), pa.int64()), "user_id": pa.array([i // 25 for i in range(100)])})
    assert eval_subset(part, 10, "first", 0).column("sample_id").to_pylist() == list(range(10))
    r = eval_subset(part, 40, "random", 3).column("sample_id").to_pylist()
    assert len(set(r)) == 40 and r == sorted(r)
    assert r == eval_subset(part, 40, "random", 3).column("sample_id").to_pylist()  # seeded
    assert r != eval_subset(part, 40, "random", 4).column("sample_id").to_pylist()
    assert set(eval_subset(part, 40, "random", 3).column("user_id").to_pylist()) == {0, 1, 2, 3}
    assert eval_subset(part, None, "random", 0).num_rows == 100 and eval_subset(part, 500, "first", 0).num_rows == 100


def test_rows_carry_user_clustered_intervals_and_reading_uses_them():
    from types import SimpleNamespace

    from ragrec.methods.common import metric_row
    from ragrec.methods.evaluation import Scored
    from ragrec.methods.evaluation import variant_row as eval_row

    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(30), 20)
    yu = rng.integers(0, 2, 30)
    y = np.where(rng.random(600) < 0.15, 1 - yu.repeat(20), yu.repeat(20))  # strongly clustered labels
    ref = np.clip(0.5 + 0.3 * (yu.repeat(20) - 0.5) + rng.normal(0, 0.1, 600), 0, 1)
    other = np.clip(ref + rng.normal(0, 0.2, 30).repeat(20), 0, 1)
    cfg = SimpleNamespace(eval=SimpleNamespace(bootstrap=300), seed=0)
    row = eval_row("other", y, other, Scored("full", "RALLRec", "", ref), cfg, key="x", user_ids=users)
    for k in ("auc_ulo", "auc_uhi", "uauc", "delta_ulo", "delta_uhi"):
        assert np.isfinite(row[k]), k
    assert row["auc_ulo"] <= row["auc"] <= row["auc_uhi"] and row["delta_ulo"] <= row["delta"] <= row["delta_uhi"]
    assert row["auc_uhi"] - row["auc_ulo"] > 1.5 * (row["auc_hi"] - row["auc_lo"])
    assert row["delta_uhi"] - row["delta_ulo"] > 1.5 * (row["delta_hi"] - row["delta_lo"])
    assert "auc_ulo" not in eval_row("other", y, other, None, cfg)
    m = metric_row("other", y, other, 300, 0, users)  # `ragrec run` rows: same intervals and UAUC
    assert (m["auc_ulo"], m["auc_uhi"], m["uauc"]) == (row["auc_ulo"], row["auc_uhi"], row["uauc"])
    assert "auc_ulo" not in metric_row("x", y, ref, 50, 0)

    # the reading judges significance on the user interval when rows have it
    rows = [
        _row("RALLRec", 0.70, key=REFERENCE) | {"delta": None},
        _row("A", 0.60, (-0.1, -0.15, -0.05)) | {"delta_ulo": -0.2, "delta_uhi": 0.02},
        _row("B", 0.50, (-0.2, -0.25, -0.15)) | {"delta_ulo": -0.3, "delta_uhi": -0.1},
    ]
    text = "\n".join(reading(rows, REFERENCE, "RALLRec"))
    assert "significantly better than: B (95% user-clustered interval" in text
    assert "not distinguishable from RALLRec (95% user-clustered interval of ΔAUC contains 0): A" in text


def test_fusion_rows_pair_the_fusion_with_each_input_and_report_the_coefficients():
    from ragrec.evaluation.fusion import fuse, logit
    from ragrec.methods.evaluation import fusion_comparisons, fusion_labels, fusion_parts
    from ragrec.methods.rallrec_evaluate import FUSION_NAMES

    rng = np.random.default_rng(0)

    def split(n):
        a, b, c = rng.standard_normal((3, n))
        y = (rng.random(n) < 1 / (1 + np.exp(-(1.2 * a + 0.8 * b + 0.4 * c)))).astype(int)
        return {"llm": 1.5 * a, "crm": b, "item_user": c}, y

    (vx, vy), (tx, ty) = split(600), split(400)
    users = rng.integers(0, 40, 400)
    res = fuse(vx, vy, tx, FUSION_NAMES)
    assert res.model.features == ("llm", "crm", "item_user") and res.without_llm.features == ("crm", "item_user")
    cfg = load_config(None, ["eval.bootstrap=100"])
    llm, crm = 1 / (1 + np.exp(-tx["llm"])), 1 / (1 + np.exp(-tx["crm"]))
    rows = fusion_comparisons(res, ty, users, cfg, llm, crm)
    assert [r["versus"] for r in rows] == ["RALLRec", "DeepFM", "item_user_logit", "fusion w/o LLM"]
    for r, ref in zip(rows, (llm, crm, res.input_probs("item_user"), res.fused_without_llm)):
        assert r["delta"] == pytest.approx(roc_auc_score(ty, res.fused) - roc_auc_score(ty, ref), abs=1e-9)
        assert r["delta_lo"] <= r["delta"] <= r["delta_hi"] and r["name"].startswith("fusion − ")
        assert "delta_ulo" in r and "auc_ulo" in r  # the row helper's user-clustered intervals come along
    assert rows[0]["delta_lo"] > 0 and rows[1]["delta_lo"] > 0  # fusing beats each input here
    assert fusion_labels(res.names) == ("fusion (RALLRec + DeepFM + item/user)", "fusion w/o LLM (DeepFM + item/user)")

    class Ev:
        fusion, fusion_rows, fusion_error = res, rows, None

    sections, notes, extra = fusion_parts(Ev)
    ((title, body),) = sections.items()
    assert "validation" in title and "fusion − fusion w/o LLM" in body and "ΔAUC vs the row's input" in body
    assert len(notes) == 1 and "RALLRec +" in notes[0] and "\n" not in notes[0]
    m = extra["fusion"]
    assert m["model"]["features"] == ["llm", "crm", "item_user"] and len(m["model"]["coef"]) == 3
    assert m["without_llm"]["features"] == ["crm", "item_user"] and m["comparisons"] == rows
    assert set(m["valid"]["auc"]) == {"RALLRec", "DeepFM", "item_user_logit", "fusion", "fusion w/o LLM"}
    np.testing.assert_allclose(logit(res.fused), res.model.decision(tx), atol=1e-8)

    class Skipped:
        fusion, fusion_rows, fusion_error = None, [], "fusion: all 10 validation labels are 1"

    assert fusion_parts(Skipped) == ({}, ["fusion skipped: fusion: all 10 validation labels are 1"], {})


def test_run_rows_carry_the_paired_delta_against_the_main_model():
    from ragrec.methods.common import metric_row

    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(40), 10)
    y = rng.integers(0, 2, 400)
    good = np.clip(0.5 + 0.3 * (y - 0.5) + rng.normal(0, 0.15, 400), 0.01, 0.99)
    noise = rng.random(400)
    same = metric_row("same", y, good, 200, 0, users, against=good)
    assert same["delta"] == 0 and same["delta_lo"] == same["delta_hi"] == 0 and same["delta_ulo"] == 0
    worse = metric_row("noise", y, noise, 200, 0, users, against=good)
    assert worse["delta"] == pytest.approx(worse["auc"] - metric_row("m", y, good, 10, 0)["auc"])
    assert worse["delta_uhi"] < 0 and worse["delta_hi"] < 0  # a real gap: both intervals exclude 0
