"""SCoRe end to end on a slice of MovieLens-100K with the real SmolLM2 and MiniLM, then its evaluation."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from pipeline_helpers import IN_PROCESS, check_pinned, slice_config, stage_keys

from ragrec.methods import run
from ragrec.methods.score_evaluate import evaluate

pytestmark = [pytest.mark.slow, pytest.mark.ray]
CONFIG = "score_ml100k_slice.yaml"

STAGES = [
    "dataset",
    "samples",
    "sasrec",
    "user_docs",
    "user_base",
    "car",
    "rationales",
    "sare",
    "ci_contexts",
    "score_examples",
    "lora",
    "scores",
]


PINNED = {  # per pipeline_helpers.cpu_kind; a name listed twice has two measured outcomes (check_pinned)
    "bf16": [
        ("SCoRe", 0.78125, 0.666205),
        ("SCoRe", 0.664062, 0.680624),
        ("item_rate", 0.617188, 0.697126),
        ("item_user_logit", 0.648438, 0.690316),
    ],
    "avx2": [("SCoRe", 0.75, 0.66743), ("item_rate", 0.617188, 0.697126), ("item_user_logit", 0.648438, 0.690316)],
}


def test_score_end_to_end_cache_and_evaluation(ray_session, data_dir, tmp_path):
    root = tmp_path / "artifacts"
    cfg = slice_config(CONFIG, root, tmp_path, *IN_PROCESS)  # Ray paths: tests/unit/test_stages_in_process.py
    result = run(cfg)
    a = result.artifacts

    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    rows = {r["name"]: r for r in metrics["rows"]}
    assert {"SCoRe", "item_rate", "item_user_logit"} <= set(rows)
    for r in rows.values():
        assert 0.0 <= r["auc_lo"] <= r["auc"] <= r["auc_hi"] <= 1.0 and r["n"] == cfg.eval.max_test_samples
        assert np.isnan(r["uauc"]) or 0.0 <= r["uauc"] <= 1.0
    # behaviour pinned across refactors: the slice's numbers on the same machine type as CI, re-pinned when the
    # slice moved to llm.dtype bfloat16 (2026-12-02; float32 gave SCoRe 0.75 / 0.667529); with 16 samples one
    # flipped pair of ~64 moves AUC by ~0.016. SCoRe re-measured later that day (AUC 0.78125 -> 0.664062,
    # LogLoss 0.666205 -> 0.680624) when a fresh install of newer dependencies moved it at 7f80a56 too: the
    # versions are now constraints.txt's. "avx2": measured 2026-12-02 on a 2-core EPYC without AVX-512, where the
    # bf16 slice runs float32 (ragrec.runtime.engine_dtype). CI at 0157cdc (2026-12-03, constraints.txt versions,
    # bf16 kind) measured 0.78125 / 0.6662 again, alone as in the suite; with RAGREC_TORCH_THREADS=1 the same
    # machine gives 0.796875 / 0.6631: the LLM row follows the float kernels, so the bf16 kind has two outcomes
    check_pinned(rows, PINNED, auc_abs=0.02)
    report = (result.run_dir / "report.md").read_text()
    assert '"lightgcn": {' not in report and '"retrieval": {' not in report, "only SCoRe's config sections"
    assert "UAUC" in report and "SASRec sanity (leave-one-out, 100 negatives): NDCG@10 0." in report
    sas = a["sasrec"].read_json("metrics")
    assert 0.0 < sas["hr@10"] <= 1.0 and 0.0 < sas["ndcg@10"] <= sas["hr@10"]

    preds = pq.read_table(result.run_dir / "predictions.parquet")
    probs = preds.column("prob").to_numpy()
    assert preds.num_rows == cfg.eval.max_test_samples and np.all((probs > 0) & (probs < 1))
    assert len(np.unique(probs)) > 1
    assert set(preds.column("split").to_pylist()) == {"test"}

    # self-assessments were generated for the sampled training pairs, SARE learned from their ranking
    rat = a["rationales"].read_table()
    assert rat.num_rows == cfg.rationale.pairs and all(len(t.strip()) > 0 for t in rat.column("text").to_pylist())
    samples = a["samples"].read_table("samples")
    ranking = a["sare"].read_table("ranking")
    users = (
        samples.take(np.searchsorted(samples.column("sample_id").to_numpy(), ranking.column("sample_id").to_numpy()))
        .column("user_id")
        .to_numpy()
    )
    ranked = np.asarray(ranking.column("ranked_user_ids").to_pylist())
    assert ranked.shape == (cfg.rationale.pairs, cfg.ci.ke)
    assert not np.any(ranked == users[:, None]), "a user must never retrieve itself"

    # the tuning prompts carry the Ks most useful users' liked items (P^s)
    ex = a["examples"].read_table()
    docs = a["user_docs"].read_table().column("doc").to_pylist()
    prompt = ex.column("prompt")[0].as_py()
    assert "Other users with similar preferences have given high ratings to the movies: [" in prompt
    assert prompt.count("[") == cfg.ci.ks and any(f"[{d}]" in prompt for d in docs)

    # a rerun reuses every stage
    keys = stage_keys(root, STAGES, present_only=True)
    assert set(keys) == set(STAGES)
    again = run(cfg)
    assert stage_keys(root, STAGES, present_only=True) == keys
    assert again.metrics["rows"][0]["auc"] == pytest.approx(metrics["rows"][0]["auc"])

    # the evaluation: variants on the same samples, a sweep point with the full adapter, UAUC in the report;
    # it reuses SASRec, CAR, the self-assessments and SARE and adds only contexts, prompts, adapters, scores
    out = evaluate(
        slice_config(
            CONFIG,
            root,
            tmp_path,
            "eval.variants=[score_rerank,score]",
            "eval.ke_sweep=[]",
            "eval.ks_sweep=[1]",
            *IN_PROCESS,
        )
    )
    after = stage_keys(root, STAGES, present_only=True)
    assert {s for s in STAGES if after[s] != keys[s]} == {"ci_contexts", "score_examples", "lora", "scores"}
    assert len(after["lora"] - keys["lora"]) == 1  # SCoRe-rerank's adapter; the sweep reuses SCoRe's
    m = json.loads((out.run_dir / "metrics.json").read_text())
    names = [r["key"] for r in m["rows"]]
    assert names == ["score", "score_rerank", "sasrec", "fusion", "fusion_no_llm", "item_rate", "item_user_logit"]
    fusion = m["fusion"]  # fitted on the validation split over SCoRe's, SASRec's and item/user's logits
    assert fusion["model"]["features"] == ["llm", "crm", "item_user"] and fusion["crm_score"] == "history"
    assert fusion["valid"]["n"] == cfg.eval.max_valid_samples
    assert [r["versus"] for r in fusion["comparisons"]] == ["SCoRe", "SASRec", "item_user_logit", "fusion w/o LLM"]
    full = m["rows"][0]
    assert full["auc"] == pytest.approx(metrics["rows"][0]["auc"])  # same samples, same cached adapter
    assert full["uauc"] == pytest.approx(metrics["rows"][0]["uauc"], nan_ok=True)
    assert m["rows"][1]["delta"] == pytest.approx(m["rows"][1]["auc"] - full["auc"], abs=1e-9)
    assert [r["ks"] for r in m["ks_sweep"]] == [1] and m["ke_sweep"] == []
    ev = pq.read_table(out.run_dir / "predictions.parquet")
    np.testing.assert_allclose(ev.column("score").to_numpy(), probs, atol=1e-6)
    assert not np.allclose(ev.column("Ks=1").to_numpy(), probs), "Ks=1 prompts carry one user, not two"
    assert (out.run_dir / "auc.png").read_bytes()[:4] == b"\x89PNG"
    assert "SCoRe-rerank (w/o SARE)" in (out.run_dir / "report.md").read_text()
