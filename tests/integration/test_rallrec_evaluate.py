"""`ragrec evaluate` on the MovieLens-100K slice with the real SmolLM2: variants, baselines, sweeps, cache."""

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from pipeline_helpers import IN_PROCESS

from ragrec.config import load_config
from ragrec.methods import evaluate, run

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.ray]


def _count(root: Path) -> dict[str, int]:
    return {
        p.name: sum(1 for q in p.iterdir() if not q.name.endswith(".partial")) for p in root.iterdir() if p.is_dir()
    }


def test_evaluate_variants_share_stages_and_match_the_pipeline(ray_session, data_dir, slice_artifacts, tmp_path):
    sets = [
        f"artifacts_dir={slice_artifacts}",
        f"output_dir={tmp_path / 'runs'}",
        "eval.variants=[zero_shot,rallrec,deepfm]",
        "eval.k_sweep=[3,5]",
        "eval.alpha_sweep=[0.5]",
    ]
    cfg = load_config(REPO / "configs" / "rallrec_ml100k_slice.yaml", sets)
    assert cfg.retrieval.k == 5, "the K=5 sweep point must be the reference itself"
    base = run(cfg)  # the plain pipeline on the same config, on Ray (shares its stages with the evaluation)
    before = _count(slice_artifacts)

    cfg = load_config(REPO / "configs" / "rallrec_ml100k_slice.yaml", [*sets, *IN_PROCESS])
    res = evaluate(cfg)
    out = res.run_dir
    metrics = json.loads((out / "metrics.json").read_text())
    rows = {r["key"]: r for r in metrics["rows"]}
    assert set(rows) == {"zero_shot", "rallrec", "deepfm", "fusion", "fusion_no_llm", "item_rate", "item_user_logit"}
    assert metrics["rows"][0]["key"] == "rallrec" and rows["rallrec"]["delta"] is None
    for key, r in rows.items():
        assert r["n"] == cfg.eval.max_test_samples
        assert r["auc_lo"] <= r["auc"] <= r["auc_hi"]
        if key != "rallrec":  # paired difference against RALLRec, its interval around the point estimate
            assert r["delta"] == pytest.approx(r["auc"] - rows["rallrec"]["auc"], abs=1e-9)
            assert r["delta_lo"] <= r["delta"] <= r["delta_hi"]
    assert rows["rallrec"]["examples"] == 3 * cfg.lora.train_samples  # mixed views
    assert rows["zero_shot"]["examples"] is None

    # the full variant is the plain pipeline's run: same probabilities on the same samples
    preds = pq.read_table(out / "predictions.parquet")
    offline = pq.read_table(base.run_dir / "predictions.parquet")
    assert preds.column("sample_id").to_pylist() == offline.column("sample_id").to_pylist()
    np.testing.assert_allclose(preds.column("rallrec").to_numpy(), offline.column("prob").to_numpy(), atol=1e-6)
    assert not np.allclose(preds.column("zero_shot").to_numpy(), preds.column("rallrec").to_numpy())
    assert rows["rallrec"]["auc"] == pytest.approx(base.metrics["rows"][0]["auc"])

    # sweeps: K=5 is the reference row; K=3 and alpha=0.5 are new scorings with the shared adapter
    ks = {r["k"]: r for r in metrics["k_sweep"]}
    assert set(ks) == {3, 5} and ks[5]["auc"] == rows["rallrec"]["auc"] and ks[5].get("delta") is None
    assert [r["alpha"] for r in metrics["alpha_sweep"]] == [0.5]
    for png in ("auc.png", "auc_vs_k.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    report = (out / "report.md").read_text()
    assert "K sweep" in report and "ΔAUC" in report and "DeepFM" in report and "finished" in report

    # shared stages computed once: no new adapter (zero-shot has none, the sweeps share the full one)
    after = _count(slice_artifacts)
    new = {s: after.get(s, 0) - before.get(s, 0) for s in after}
    assert new["lora"] == 0 and new["examples"] == 0 and new["deepfm"] == 1 and new["fusion"] == 1
    for s in ("dataset", "samples", "descriptions", "text_features", "lightgcn", "projector"):
        assert new[s] == 0, s
    assert new["scores"] == 4  # zero-shot, K=3, alpha=0.5, the full variant's validation scores (fusion)
    fusion = metrics["fusion"]  # fitted on the validation split: coefficients and paired comparisons
    assert fusion["model"]["features"] == ["llm", "crm", "item_user"] and len(fusion["model"]["coef"]) == 3
    assert fusion["valid"]["n"] == cfg.eval.max_valid_samples
    assert [r["versus"] for r in fusion["comparisons"]] == ["RALLRec", "DeepFM", "item_user_logit", "fusion w/o LLM"]
    assert "fusion − fusion w/o LLM" in report

    # a rerun computes nothing and reports the same numbers
    again = evaluate(cfg)
    assert _count(slice_artifacts) == after
    assert [r["auc"] for r in again.metrics["rows"]] == [r["auc"] for r in metrics["rows"]]
