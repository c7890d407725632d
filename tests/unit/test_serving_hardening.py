"""Serving and security hardening: int64 bounds (422), body-size limit (413), run names and run.json paths
confined to their folders, and checkpoints loaded with ``torch.load(weights_only=True)``.

The HTTP tests use Starlette's TestClient on a minimal FastAPI app built with ``make_api`` (no Ray Serve).
"""

# no `from __future__ import annotations`: FastAPI reads the route signatures' real types
import asyncio
import json
import pickle

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from serving_helpers import checking_client

from ragrec.config import RunConfig
from ragrec.methods.common import load_run
from ragrec.serving.app import DEFAULT_MAX_BODY_BYTES, BodySizeLimit, ServeOptions, set_body_limit
from ragrec.serving.schemas import INT64_MAX, INT64_MIN
from ragrec.training import ray_train as rt

# ----------------------------------------------------------------------------- int64 bounds -> 422


@pytest.mark.parametrize("route", ["/predict", "/rerank"])
@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"user_id": 1, "item_ids": [2**63]}, "item_ids.0"),
        ({"user_id": 1, "item_ids": [3, -(2**63) - 1]}, "item_ids.1"),
        ({"user_id": 2**63, "item_ids": [3]}, "user_id"),
        ({"user_id": 1, "item_ids": [3], "as_of": 2**70}, "as_of"),
    ],
)
def test_ids_outside_int64_are_a_422_naming_the_field(route, body, field):
    r = checking_client().post(route, json=body)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert detail.startswith("invalid request: ") and f"{field}:" in detail
    assert str(INT64_MAX) in detail or str(INT64_MIN) in detail


def test_history_item_ids_outside_int64_are_a_422():
    r = checking_client().post("/rerank", json={"user_id": 1, "item_ids": [3], "history_item_ids": [1, 2**64]})
    assert r.status_code == 422 and "history_item_ids.1:" in r.json()["detail"]


def test_int64_extremes_pass_validation_and_get_the_catalog_404():
    c = checking_client()
    assert c.post("/predict", json={"user_id": 1, "item_ids": [3], "as_of": INT64_MAX}).status_code == 200
    r = c.post("/predict", json={"user_id": 1, "item_ids": [INT64_MAX, INT64_MIN]})
    assert r.status_code == 404 and "unknown item_ids" in r.json()["detail"]
    r = c.post("/rerank", json={"user_id": 1, "item_ids": [3], "history_item_ids": [INT64_MAX]})
    assert r.status_code == 404 and "history_item_ids" in r.json()["detail"]


# ----------------------------------------------------------------------------- body size -> 413


def test_a_body_over_max_body_bytes_is_a_413_with_the_reason():
    c = checking_client(max_body_bytes=200)
    assert c.post("/predict", json={"user_id": 1, "item_ids": [1, 2, 3]}).status_code == 200
    r = c.post("/predict", json={"user_id": 1, "item_ids": list(range(100))})  # ~400 bytes
    assert r.status_code == 413
    assert "at most 200 bytes" in r.json()["detail"] and "Content-Length" in r.json()["detail"]


def test_a_streamed_body_without_content_length_is_counted():
    c = checking_client(max_body_bytes=200)
    chunks = [b'{"user_id": 1, "item_ids": [', b", ".join(b"1" for _ in range(150)), b"]}"]
    r = c.post("/predict", content=iter(chunks), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "bytes received" in r.json()["detail"]


def test_a_lying_content_length_is_caught_on_the_received_bytes():
    """Raw ASGI: Content-Length says 10, the body arrives in chunks totalling 300 bytes."""
    called = []

    async def app(scope, receive, send):  # never reached
        called.append(True)

    chunks = [{"type": "http.request", "body": b"x" * 100, "more_body": True}] * 2
    chunks.append({"type": "http.request", "body": b"x" * 100, "more_body": False})
    sent = []

    async def receive():
        return chunks.pop(0)

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/", "headers": [(b"content-length", b"10")]}
    asyncio.run(BodySizeLimit(app, max_bytes=250)(scope, receive, send))
    assert not called and sent[0]["status"] == 413
    assert b"at most 250 bytes" in sent[1]["body"]


def test_the_default_limit_is_1_mib_and_set_body_limit_changes_it():
    assert ServeOptions().max_body_bytes == DEFAULT_MAX_BODY_BYTES == 1 << 20
    with pytest.raises(ValueError, match="max_body_bytes"):
        ServeOptions(max_body_bytes=0)
    c = checking_client()  # no fixed limit: the process's (what the Serve ingress sets from ServeOptions)
    padded = b'{"user_id": 1, "item_ids": [1]' + b" " * (1 << 20) + b"}"
    assert c.post("/predict", content=padded, headers={"content-type": "application/json"}).status_code == 413
    try:
        set_body_limit(2 << 20)
        assert c.post("/predict", content=padded, headers={"content-type": "application/json"}).status_code == 200
    finally:
        set_body_limit(DEFAULT_MAX_BODY_BYTES)


def test_the_serve_ingress_apps_carry_the_limit():
    from ragrec.serving.app import api
    from ragrec.serving.rerank import rank_api

    for app in (api, rank_api):
        assert any(m.cls is BodySizeLimit for m in app.user_middleware)


# ----------------------------------------------------------------------------- paths from configs / run.json


@pytest.mark.parametrize("name", ["../../x", "..", ".", "/etc/x", "a/b", "a\\b", "", "x/../y"])
def test_run_name_must_be_a_plain_folder_name(name):
    with pytest.raises(ValidationError, match="must be a plain folder name") as e:
        RunConfig(name=name)
    assert "e.g. name: rallrec_ml100k" in str(e.value)


def test_plain_run_names_pass():
    for name in ("rallrec_ml100k", "demo-1", "v1.2"):
        assert RunConfig(name=name, output_dir="runs").run_dir().name == name


def _write_run(run_dir, stage, key):
    run_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "method": "rallrec",
        "config": {"name": "demo"},
        "artifacts_dir": str(run_dir / "artifacts"),
        "artifacts": {"dataset": {"stage": stage, "key": key}},
    }
    (run_dir / "run.json").write_text(json.dumps(payload))


@pytest.mark.parametrize(
    ("stage", "key", "field"),
    [("../../etc", "abc", "stage"), ("dataset", "../../x", "key"), ("dataset", "/abs", "key"), ("..", "k", "stage")],
)
def test_load_run_rejects_stage_and_key_that_leave_the_store(tmp_path, stage, key, field):
    _write_run(tmp_path / "run", stage, key)
    with pytest.raises(ValueError, match=rf"artifact dataset has {field} .*must match \[A-Za-z0-9_\.-\]\+"):
        load_run(tmp_path / "run")


def test_load_run_accepts_plain_stage_and_key_and_reports_the_missing_artifact(tmp_path):
    _write_run(tmp_path / "run", "dataset", "1fd3dc7900b92c60")
    with pytest.raises(FileNotFoundError, match="artifact dataset .* is missing"):
        load_run(tmp_path / "run")


# ----------------------------------------------------------------------------- weights_only checkpoints


def test_a_saved_state_round_trips_under_weights_only(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    state = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "epoch": 1,
        "batch": 2,
        "history": [{"epoch": 0, "loss": 0.5, "valid_auc": np.float64(0.75), "n": np.int64(3)}],
        "best": {"auc": -np.inf, "metrics": {"ndcg@10": np.float32(0.25)}, "state": None, "bad": 0},
        "rng": torch.get_rng_state(),
    }
    rt.report_state({"loss": 0.5}, state, tmp_path)
    loaded = rt.load_state(tmp_path)
    assert loaded["epoch"] == 1 and loaded["batch"] == 2 and loaded["history"] == state["history"]
    assert loaded["best"]["auc"] == -np.inf and loaded["best"]["metrics"]["ndcg@10"] == np.float32(0.25)
    assert torch.equal(loaded["rng"], state["rng"])
    assert all(torch.equal(loaded["model"][k], v) for k, v in state["model"].items())
    restored = torch.optim.Adam(model.parameters(), lr=0.01)
    restored.load_state_dict(loaded["optimizer"])
    assert restored.state_dict()["param_groups"] == opt.state_dict()["param_groups"]
    assert torch.load(tmp_path / rt.STATE_FILE, map_location="cpu", weights_only=False)["epoch"] == 1


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_a_state_holding_arbitrary_objects_is_refused(tmp_path):
    torch.save({"epoch": 0, "payload": _Evil()}, tmp_path / rt.STATE_FILE)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        rt.load_state(tmp_path)
