"""The whole ER2ALM chain on a slice of MovieLens-100K with the real SmolLM2 and MiniLM: run, report, serving
equal to the offline ranking, the Tune objective and a small evaluation reusing the cached stages."""

import json
import logging

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from pipeline_helpers import IN_PROCESS, slice_config, stage_keys

from ragrec.methods import evaluate, evaluate_split, run

pytestmark = [pytest.mark.slow, pytest.mark.ray]
CONFIG = "er2alm_ml100k_slice.yaml"

LLM_STAGES = ["er2alm_descriptions", "er2alm_aspects", "er2alm_profiles", "er2alm_picks"]


def test_er2alm_end_to_end_serving_tune_objective_and_evaluation(ray_session, data_dir, tmp_path, caplog):
    root = tmp_path / "artifacts"
    cfg = slice_config(CONFIG, root, tmp_path, *IN_PROCESS)  # Ray paths: tests/unit/test_stages_in_process.py
    result = run(cfg)
    a = result.artifacts

    # the LLM wrote aspects for the first rag.max_items items and a profile per user with a training positive
    assert a["aspects"].read_table().num_rows == cfg.rag.max_items
    # the engine wrote the labels (rag / profile / augment.force_format): every SmolLM2-135M answer parses. A
    # value may still clean away to nothing (three free tokens of punctuation): "partial", never "failed"
    from ragrec.llm.prompts_er2alm import parse_aspects, parse_picks, parse_profiles

    asp_stats = parse_aspects(a["aspects"].read_table().column("text").to_pylist())[1]
    assert asp_stats["failed"] == 0 and asp_stats["parsed"] + asp_stats["partial"] == cfg.rag.max_items
    assert asp_stats["parsed"] >= 1
    prof_texts = a["profiles"].read_table().column("text").to_pylist()
    _, weights, prof_stats = parse_profiles(prof_texts)
    assert prof_stats["failed"] == 0 and prof_stats["parsed"] + prof_stats["partial"] == len(prof_texts)
    # profile.force_weights: every aspect of every profile has the model's own weight, none filled or uniform
    assert prof_stats["weight_missing"] == prof_stats["uniform_rows"] == prof_stats["weight_filled"] == 0
    assert len(np.unique(weights)) > 1
    picks = parse_picks(a["picks"].read_table().column("text").to_pylist(), cfg.augment.candidates)[2]
    assert picks["unlabelled"] == 0 and picks["missing_liked"] == 0
    prof = a["profiles"].read_table()
    split = a["samples"].read_table("samples")
    train_users = set(np.unique(split.filter(pc.equal(split.column("split"), "train")).column("user_id").to_numpy()))
    assert set(prof.column("user_id").to_pylist()) == train_users
    feats = np.load(a["features"].path / "weights.npy")
    assert ((feats[list(train_users)] >= cfg.profile.min_weight - 1e-6) & (feats[list(train_users)] <= 1)).all()

    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    rows = {r["name"]: r for r in metrics["rows"]}
    assert set(rows) == {"ER2ALM", "LightGCN", "popularity (train positives)"}
    n_test_users = len(np.unique(split.filter(pc.equal(split.column("split"), "test")).column("user_id").to_numpy()))
    for r in rows.values():
        assert r["n"] == n_test_users
        assert 0.0 <= r["recall@10"] <= r["recall@20"] <= r["recall@50"] <= 1.0
        assert r["precision@20"] <= r["precision@10"] * 10 / 20 + r["recall@20"]  # sanity of the P@k scale
        assert 0.0 <= r["recall@20_lo"] <= r["recall@20"] <= r["recall@20_hi"] <= 1.0
    er = rows["ER2ALM"]
    assert er["reference"] == "LightGCN" and er["delta"] == pytest.approx(
        er["recall@20"] - rows["LightGCN"]["recall@20"]
    )
    # kept aspects were reported and only present aspects were kept
    noise = metrics["er2alm"]["noise"]
    assert all(noise["kept_per_aspect"][k] <= noise["present_per_aspect"][k] for k in noise["kept_per_aspect"])
    assert sum(noise["present_per_aspect"].values()) > 0
    report = (result.run_dir / "report.md").read_text()
    assert "the RAG source fell back to the dataset's own metadata" in report
    assert "noise control kept / present per aspect" in report and "R@20 [95% CI, users]" in report
    assert "augmentation picks per candidate number in the prompt (candidates ranked)" in report
    assert (result.run_dir / "picks.png").read_bytes()[:4] == b"\x89PNG"

    # serving: POST /recommend's logic gives predictions.parquet's lists and scores
    _check_serving(result.run_dir)

    # the Tune objective reads the cached models; a rerun recomputes nothing
    stages = ["dataset", "samples", *LLM_STAGES, "er2alm_features", "er2alm_noise", "er2alm_gnn"]
    keys = stage_keys(root, stages)
    valid = evaluate_split(cfg, "valid")
    assert valid["split"] == "valid" and 0.0 <= valid["recall@20"] <= 1.0 and valid["n"] >= 1
    assert stage_keys(root, stages) == keys

    # a small evaluation: LightGCN, ER2ALM, one ablation + a one-point theta sweep, sharing every LLM stage (the
    # ablation changes gnn flags: the candidates, hence the picks, must not be regenerated)
    ev_cfg = slice_config(
        CONFIG,
        root,
        tmp_path,
        "name=er2alm_slice_eval",
        "eval.variants=[lightgcn, er2alm, no_item]",
        "eval.tau_sweep=[]",
        "eval.bank_sweep=[]",
        "eval.eta_sweep=[]",
        "eval.theta_sweep=[0.3]",
        *IN_PROCESS,
    )
    with caplog.at_level(logging.INFO, logger="ragrec.evaluate"):
        ev = evaluate(ev_cfg)
    assert stage_keys(root, LLM_STAGES) == {s: keys[s] for s in LLM_STAGES}
    ev_rows = {r["key"]: r for r in ev.metrics["rows"]}
    assert list(ev_rows) == ["lightgcn", "er2alm", "no_item"]
    assert ev_rows["er2alm"]["recall@20"] == pytest.approx(er["recall@20"])  # the run's model, reused
    assert ev_rows["lightgcn"]["delta"] == pytest.approx(rows["LightGCN"]["recall@20"] - er["recall@20"])
    (point,) = ev.metrics["sweeps"]["noise.theta"]
    assert "sweep noise.theta=0.3" in caplog.text and f"Recall@20 {point['recall@20']:.4f}" in caplog.text
    assert ev.run_dir == ev_cfg.run_dir() / "evaluate"  # beside a run's report, never over it
    text = (ev.run_dir / "report.md").read_text()
    assert "Baselines and ER2ALM (Table 3)" in text and "Ablations (Table 4)" in text and "sanity anchor" in text


def _check_serving(run_dir):
    from ragrec.serving.recommend import RecommendRequest, RecommendService
    from ragrec.serving.schemas import RequestError

    svc = RecommendService(str(run_dir))
    preds = pq.read_table(run_dir / "predictions.parquet").to_pylist()
    for r in preds:
        resp = svc.recommend(RecommendRequest(user_id=r["user_id"], k=20))
        assert [it.item_id for it in resp.items] == r["items"][:20]
        np.testing.assert_allclose([it.score for it in resp.items], r["scores"][:20], rtol=1e-5, atol=1e-6)
        train = svc.recommender.train
        seen = set(train.indices[train.indptr[r["user_id"]] : train.indptr[r["user_id"] + 1]].tolist())
        assert not seen & set(r["items"])  # never a training positive
    for user, k, status in ((10**6, 5, 404), (preds[0]["user_id"], 0, 422), (preds[0]["user_id"], 10**4, 413)):
        with pytest.raises(RequestError) as e:
            svc.recommend(RecommendRequest(user_id=user, k=k))
        assert e.value.status == status
