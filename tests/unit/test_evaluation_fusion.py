"""The fusion model (ragrec.evaluation.fusion): fit on validation logits, apply, JSON round trip, errors."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from ragrec.evaluation.baselines import ItemUserBaseline, item_user_logit
from ragrec.evaluation.fusion import (
    EPS,
    MODEL_FILE,
    FusionModel,
    comparison_rows,
    fit_fusion,
    fusion_artifact,
    logit,
)


def synthetic(n: int, seed: int):
    """y depends on ``llm`` (strongly) and ``crm`` (weakly), not on ``item_user``; the scales differ."""
    rng = np.random.default_rng(seed)
    a, b, c = rng.standard_normal((3, n))
    z = 1.5 * a + 0.7 * b
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(np.int64)
    return {"llm": 2.0 * a + 0.3, "crm": 10.0 * b - 4.0, "item_user": 0.5 * c}, y


def test_fit_recovers_the_coefficients_ordering_and_beats_every_input():
    x, y = synthetic(3000, 0)
    model = fit_fusion(x, y)
    assert model.features == ("llm", "crm", "item_user") and model.n_fit == 3000
    # per standard deviation: llm 1.5, crm 0.7, item_user 0
    c = dict(zip(model.features, model.coef))
    assert c["llm"] > c["crm"] > 0.3 and abs(c["item_user"]) < 0.1
    raw = dict(zip(model.features, model.raw_coef))
    assert raw["llm"] == pytest.approx(0.75, abs=0.1) and raw["crm"] == pytest.approx(0.07, abs=0.015)
    xt, yt = synthetic(3000, 1)  # held-out data: fitted on one sample, applied to another
    fused = model.predict(xt)
    assert fused.shape == (3000,) and 0 < fused.min() and fused.max() < 1
    auc = roc_auc_score(yt, fused)
    for name, v in xt.items():
        assert auc > roc_auc_score(yt, v) + 0.01, name
    # the same model sklearn would apply to the standardised inputs
    z = (np.stack([xt[f] for f in model.features], 1) - model.mean) / model.scale
    lr = LogisticRegression(C=model.C).fit((np.stack([x[f] for f in model.features], 1) - model.mean) / model.scale, y)
    np.testing.assert_allclose(fused, lr.predict_proba(z)[:, 1], atol=1e-10)
    # raw coefficients describe the same function on unscaled logits
    raw_z = np.stack([xt[f] for f in model.features], 1) @ model.raw_coef + model.raw_intercept
    np.testing.assert_allclose(model.decision(xt), raw_z, atol=1e-9)


def test_feature_subset_and_order():
    x, y = synthetic(500, 2)
    m = fit_fusion(x, y, features=["crm", "item_user"])
    assert m.features == ("crm", "item_user")
    assert m.predict({"item_user": x["item_user"], "crm": x["crm"], "unused": np.zeros(3)}).shape == (500,)


def test_json_round_trip_gives_identical_probabilities(tmp_path):
    x, y = synthetic(400, 3)
    model = fit_fusion(x, y)
    path = model.save(tmp_path / MODEL_FILE)
    back = FusionModel.load(path)
    assert back.features == model.features and back.C == model.C and back.n_fit == 400
    xt, _ = synthetic(200, 4)
    assert np.array_equal(back.predict(xt), model.predict(xt))
    d = json.loads(path.read_text())
    assert {"features", "coef", "intercept", "mean", "scale", "raw_coef", "raw_intercept"} <= set(d)
    assert np.array_equal(FusionModel.from_dict(model.to_dict()).predict(xt), model.predict(xt))
    assert "llm +" in model.describe() and "400 validation samples" in model.describe()
    assert "RALLRec +" in model.describe({"llm": "RALLRec"})


def test_clear_one_line_errors():
    x, y = synthetic(100, 5)
    for bad_x, bad_y, match in [
        ({**x, "crm": x["crm"][:-1]}, y, "input 'crm' has 99 values, expected 100"),
        (x, y[:-1], "input 'llm' has 100 values, expected 99"),
        (x, np.ones(100), "all 100 validation labels are 1; the fit needs both classes"),
        (x, np.zeros(100), "all 100 validation labels are 0"),
        ({**x, "llm": np.where(np.arange(100) == 3, np.nan, x["llm"])}, y, "'llm' holds 1 non-finite"),
        (x, np.full(100, 2), "labels must be 0/1"),
        ({}, y, "no inputs"),
    ]:
        with pytest.raises(ValueError, match=match) as e:
            fit_fusion(bad_x, bad_y)
        assert "\n" not in str(e.value)
    model = fit_fusion(x, y)
    with pytest.raises(ValueError, match=r"inputs \['item_user'\] missing"):
        model.predict({"llm": x["llm"], "crm": x["crm"]})
    with pytest.raises(ValueError, match="input 'crm' has 5 values, expected 100"):
        model.predict({**x, "crm": x["crm"][:5]})
    with pytest.raises(ValueError, match=r"coef has shape \(2,\)"):
        FusionModel(("a", "b", "c"), [1.0, 2.0], 0.0, [0, 0, 0], [1, 1, 1])


def test_constant_input_does_not_break_the_fit():
    x, y = synthetic(300, 6)
    m = fit_fusion({**x, "item_user": np.full(300, 0.2)}, y)
    assert m.scale[2] == 1.0 and np.isfinite(m.predict({**x, "item_user": np.full(300, 0.2)})).all()


def test_logit_clips():
    out = logit(np.array([0.0, 0.5, 1.0], dtype=np.float32))
    assert out.dtype == np.float64 and out[1] == 0.0
    assert out[0] == pytest.approx(np.log(EPS / (1 - EPS))) and out[2] == pytest.approx(-out[0])


def test_item_user_baseline_table_equals_item_user_logit():
    rng = np.random.default_rng(0)
    train = pa.table(
        {"user_id": rng.integers(0, 40, 600), "item_id": rng.integers(0, 70, 600), "label": rng.integers(0, 2, 600)}
    )
    test = pa.table({"user_id": np.r_[rng.integers(0, 45, 200), 400], "item_id": np.r_[rng.integers(0, 80, 200), 999]})
    table = ItemUserBaseline(train)
    want = item_user_logit(train, test)
    got = table.prob(test.column("user_id").to_numpy(), test.column("item_id").to_numpy())
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    one = item_user_logit(train, pa.table({"user_id": [3], "item_id": [5]}))
    np.testing.assert_allclose(table.logit([3], [5]), np.log(one / (1 - one)), atol=1e-9)


def test_fusion_artifact_is_cached_and_loads(tmp_path):
    from ragrec.artifacts import ArtifactStore

    store = ArtifactStore(str(tmp_path / "arts"))
    x, y = synthetic(300, 7)
    art = fusion_artifact(store, x, y, [])
    again = fusion_artifact(store, x, y, [])
    assert again.key == art.key
    other = fusion_artifact(store, {**x, "llm": x["llm"] + 1}, y, [])
    assert other.key != art.key
    model = FusionModel.load(art.path / MODEL_FILE)
    np.testing.assert_array_equal(model.predict(x), fit_fusion(x, y).predict(x))


def test_comparison_rows_name_and_pair_each_input():
    seen = []

    def row(name, probs, ref):
        seen.append((probs, ref))
        return {"name": name, "delta": float(np.mean(probs - ref))}

    fused = np.full(4, 0.6)
    rows = comparison_rows(row, "fusion", fused, {"LLM": np.full(4, 0.5), "CRM": np.full(4, 0.4)})
    assert [r["name"] for r in rows] == ["fusion − LLM", "fusion − CRM"]
    assert [r["versus"] for r in rows] == ["LLM", "CRM"]
    assert rows[1]["delta"] == pytest.approx(0.2) and seen[0][0] is fused
