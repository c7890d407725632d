"""The whole UR4Rec pipeline on a slice of MovieLens-100K with the real SmolLM2 and MiniLM."""

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from pipeline_helpers import IN_PROCESS, slice_config, stage_keys

from ragrec.methods import evaluate_split, run

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.ray]
CONFIG = "ur4rec_ml100k_slice.yaml"

STAGES = [
    "dataset",
    "samples",
    "user_preferences",
    "item_knowledge",
    "embed_ur4rec_texts",
    "ur4rec_texts",
    "rerank_setrank",
    "rerank_gru4rec",
    "retriever",
]


def test_ur4rec_end_to_end_cache_and_tune_objective(ray_session, data_dir, tmp_path):
    root = tmp_path / "artifacts"
    cfg = slice_config(CONFIG, root, tmp_path, *IN_PROCESS)  # Ray paths: tests/unit/test_stages_in_process.py
    result = run(cfg)
    a = result.artifacts

    # the LLM wrote a preference per user with a sample and knowledge for the first max_items items
    samples = a["samples"].read_table("samples")
    prefs = a["user_preferences"].read_table()
    assert set(prefs.column("user_id").to_pylist()) == set(samples.column("user_id").to_pylist())
    assert a["item_knowledge"].read_table().num_rows == cfg.ur4rec.max_items
    assert all(t.strip() for t in prefs.column("text").to_pylist())
    u = np.load(a["ur4rec_texts"].path / "user_llm.npy")
    assert np.allclose(np.linalg.norm(u[np.unique(samples.column("user_id").to_numpy())], axis=1), 1, atol=1e-4)

    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    rows = {r["name"]: r for r in metrics["rows"]}
    expected = {"SetRank Base", "SetRank + UR4Rec", "GRU4Rec Base", "GRU4Rec + UR4Rec", "popularity (train positives)"}
    assert set(rows) == expected
    chance = np.mean(1 / np.log2(np.arange(2, 7))) * 5 / cfg.data.rerank.num_candidates  # a random order's NDCG@5
    for r in rows.values():
        assert r["n"] == cfg.eval.max_test_samples
        assert 0.0 <= r["ndcg@5_lo"] <= r["ndcg@5"] <= r["ndcg@5_hi"] <= 1.0
        assert r["map@1"] == pytest.approx(r["ndcg@1"]) and r["ndcg@5"] <= r["ndcg@10"] <= r["ndcg@20"]
        assert r["ndcg@5"] > 1.5 * chance
    for b in ("SetRank", "GRU4Rec"):
        ur = rows[f"{b} + UR4Rec"]
        assert ur["reference"] == f"{b} Base"
        assert ur["delta"] == pytest.approx(ur["ndcg@5"] - rows[f"{b} Base"]["ndcg@5"])
    report = (result.run_dir / "report.md").read_text()
    assert "NDCG@5 [95% CI, users]" in report and "MAP@k divides by the hits in the top k" in report
    assert '"lightgcn": {' not in report and '"ur4rec": {' in report

    preds = pq.read_table(result.run_dir / "predictions.parquet")
    assert preds.num_rows == cfg.eval.max_test_samples
    cands = np.stack(preds.column("candidates").to_numpy(zero_copy_only=False))
    tgt = preds.column("target_index").to_numpy()
    assert (cands[np.arange(len(tgt)), tgt] == preds.column("item_id").to_numpy()).all()
    assert cands.shape[1] == cfg.data.rerank.num_candidates

    # each backbone's retriever was pretrained on its Base's item embeddings and beats its untrained self
    for b in ("setrank", "gru4rec"):
        m = a[f"retriever_{b}"].manifest()
        assert m["valid_auc"] > m["valid_auc_init"], b

    # serving: the same (history, list) gives the offline scores; the response is ordered; bad input is a 4xx
    _check_serving(result.run_dir, samples, preds)
    _check_http(result.run_dir, preds)

    # a rerun reuses every stage; the Tune objective reads the same cached scores
    keys = stage_keys(root, STAGES)
    again = run(cfg)
    assert stage_keys(root, STAGES) == keys
    assert again.metrics["rows"][0]["ndcg@5"] == pytest.approx(metrics["rows"][0]["ndcg@5"])
    valid = evaluate_split(cfg, "valid")
    assert valid["n"] == cfg.eval.max_valid_samples and 0.0 < valid["ndcg@10"] <= 1.0
    assert stage_keys(root, STAGES) == keys


def _check_serving(run_dir, samples, preds):
    import pyarrow as pa

    from ragrec.serving.rerank import RankService, RerankRequest
    from ragrec.serving.schemas import RequestError

    svc = RankService(str(run_dir))
    idx = np.searchsorted(samples.column("sample_id").to_numpy(), preds.column("sample_id").to_numpy())
    hist = samples.take(pa.array(idx)).column("history").to_pylist()
    worst = 0.0
    for k, r in enumerate(preds.slice(0, 16).to_pylist()):
        resp = svc.rerank(RerankRequest(user_id=r["user_id"], item_ids=r["candidates"], history_item_ids=hist[k]))
        scores = [it.score for it in resp.items]
        assert scores == sorted(scores, reverse=True)
        assert sorted(it.item_id for it in resp.items) == sorted(r["candidates"])
        got = {it.item_id: it.score for it in resp.items}
        worst = max(worst, *(abs(got[i] - s) for i, s in zip(r["candidates"], r["scores"])))
    assert worst < 1e-4
    n_items = svc.catalog.n_items
    for user, items, status in ((0, [1, 1], 422), (10**6, [1], 404), (0, [n_items], 404), (0, list(range(101)), 413)):
        with pytest.raises(RequestError) as e:
            svc.rerank(RerankRequest(user_id=user, item_ids=items))
        assert e.value.status == status


def _check_http(run_dir, preds):
    """``serve deploy``'s import path on a ranking run: one deployment behind POST /rerank."""
    import socket
    import sys
    import urllib.error
    import urllib.request

    from ray import serve

    sys.path.insert(0, str(REPO))
    from serve.app import app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def call(path, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}{path}", data=data, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(
            app({"run_dir": str(run_dir), "predictor_cpus": "0.5", "torch_threads": "2"}),
            name="ur4rec",
            route_prefix="/",
        )
        assert call("/healthz")[0] == 200
        r = preds.slice(0, 1).to_pylist()[0]
        status, body = call("/rerank", {"user_id": r["user_id"], "item_ids": r["candidates"]})
        assert status == 200 and sorted(it["item_id"] for it in body["items"]) == sorted(r["candidates"])
        scores = [it["score"] for it in body["items"]]
        assert scores == sorted(scores, reverse=True)
        status, body = call("/rerank", {"user_id": r["user_id"], "item_ids": [1, 1]})
        assert status == 422 and "repeats" in body["detail"]
        assert call("/rerank", {"user_id": "3", "item_ids": [1]})[0] == 422
    finally:
        serve.shutdown()
