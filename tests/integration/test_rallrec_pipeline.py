"""The whole RALLRec pipeline on a slice of MovieLens-100K with the real SmolLM2 and MiniLM."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from pipeline_helpers import check_pinned, slice_config, stage_keys

from ragrec.methods import run

pytestmark = [pytest.mark.slow, pytest.mark.ray]
CONFIG = "rallrec_ml100k_slice.yaml"

STAGES = [
    "dataset",
    "samples",
    "descriptions",
    "embed_title",
    "embed_desc",
    "text_features",
    "lightgcn",
    "projector",
    "examples",
    "lora",
    "scores",
]


PINNED = {  # per pipeline_helpers.cpu_kind
    "bf16": [("RALLRec", 0.596078, 0.952483), ("item_rate", 0.5, 0.69599), ("item_user_logit", 0.586275, 0.678322)],
    "avx2": [("RALLRec", 0.6, 0.963081), ("item_rate", 0.5, 0.69599), ("item_user_logit", 0.586275, 0.678322)],
}


def test_rallrec_end_to_end_and_cache(ray_session, data_dir, slice_artifacts, tmp_path):
    # the store is shared with the serve/evaluate tests of this session: they only ever add artifacts
    # of the same config (same keys) or of other stages, so the counts below hold in any test order
    cfg = slice_config(CONFIG, slice_artifacts, tmp_path)
    result = run(cfg)
    run_dir = result.run_dir

    # metrics file: the method row and the two trivial baselines, each with a bootstrap interval
    metrics = json.loads((run_dir / "metrics.json").read_text())
    rows = {r["name"]: r for r in metrics["rows"]}
    assert "RALLRec" in rows and len(rows) >= 3
    for r in rows.values():
        assert 0.0 <= r["auc_lo"] <= r["auc"] <= r["auc_hi"] <= 1.0
        assert r["n"] == cfg.eval.max_test_samples
    # behaviour pinned across refactors: the numbers the slice gave before the method contract (7d9c265, the
    # same machine type as CI; one flipped pair of the 32 samples' ~255 pairs moves AUC by ~0.004). RALLRec's
    # AUC re-measured 2026-12-02 (0.603922 -> 0.596078, two pairs) when a fresh install of newer dependencies
    # moved it at 7f80a56 too, before any change of that session: the versions are now constraints.txt's. The
    # "avx2" row: measured 2026-12-02 on a 2-core EPYC without AVX-512 (float32 kernels differ, so sampled
    # descriptions differ). Tolerance two pairs (0.0078) and a margin: CI on the bf16 kind measured 0.603922 again
    # at 9c352f5 (logloss 0.9555) with the same constraints.txt versions, so RALLRec's slice AUC takes both values
    # between fresh installs
    check_pinned(rows, PINNED, auc_abs=0.01)
    report = (run_dir / "report.md").read_text()
    assert "RALLRec" in report and "AUC" in report
    assert '"car": {' not in report and '"sasrec": {' not in report, "the report shows only RALLRec's config"
    assert (run_dir / "auc.png").read_bytes()[:4] == b"\x89PNG"

    # predictions: one probability per evaluated test sample, consistent with the metric
    preds = pq.read_table(run_dir / "predictions.parquet")
    probs = preds.column("prob").to_numpy()
    assert preds.num_rows == cfg.eval.max_test_samples and np.all((probs > 0) & (probs < 1))
    assert len(np.unique(probs)) > 1, "the LLM must give sample-specific probabilities"
    ctx = preds.column("context_item_ids").to_pylist()
    assert all(1 <= len(c) <= cfg.retrieval.k for c in ctx)

    # artifacts: every stage published exactly once, the adapter and item embeddings exist
    root = slice_artifacts
    keys = stage_keys(root, STAGES, present_only=True)
    assert set(keys) == set(STAGES)
    assert all(result.artifacts[s].key in keys[s] for s in STAGES if s in result.artifacts)
    # no other test of the session builds other upstream artifacts for the slice
    for s in ("dataset", "samples", "descriptions", "text_features", "lightgcn", "projector"):
        assert keys[s] == {result.artifacts[s].key}, s
    assert len(keys["embed_title"]) == len(keys["embed_desc"]) == 1
    lora = result.artifacts["lora"]
    assert (lora.path / "adapter" / "adapter_config.json").exists()
    lg = np.load(result.artifacts["lightgcn"].file("item_emb.npy"))
    assert lg.shape == (1682, cfg.lightgcn.dim)

    # a rerun reuses every stage; a new K recomputes only what depends on it
    again = run(cfg)
    assert stage_keys(root, STAGES, present_only=True) == keys
    assert again.metrics["rows"][0]["auc"] == pytest.approx(result.metrics["rows"][0]["auc"])
    run(slice_config(CONFIG, slice_artifacts, tmp_path, "retrieval.k=3"))
    after = stage_keys(root, STAGES, present_only=True)
    changed = {s for s in STAGES if after[s] != keys[s]}
    assert changed == {"examples", "lora", "scores"}
