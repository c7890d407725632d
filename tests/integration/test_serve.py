"""Ray Serve over a finished RALLRec slice run: HTTP on loopback, parity with the offline predictions,
every 4xx case, and the service still answering afterwards.

The slice run (configs/rallrec_ml100k_slice.yaml, the real SmolLM2 + LoRA) shares the session's slice
artifact store with the pipeline test, so its stages are computed once per test session.
"""

from __future__ import annotations

import json
import socket
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.ray]


@pytest.fixture(scope="module")
def slice_run(ray_session, data_dir, slice_artifacts, tmp_path_factory) -> Path:
    from ragrec.config import load_config
    from ragrec.methods import run

    out = tmp_path_factory.mktemp("serve-run")
    cfg = load_config(
        REPO / "configs" / "rallrec_ml100k_slice.yaml", [f"artifacts_dir={slice_artifacts}", f"output_dir={out}"]
    )
    return run(cfg).run_dir


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def url(slice_run):
    from ray import serve

    sys.path.insert(0, str(REPO))
    from serve.app import app  # the `serve deploy` import path

    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(
        app(
            {
                "run_dir": str(slice_run),
                "predictor_cpus": "0.5",
                "light_cpus": "0.05",
                "torch_threads": "2",
                "max_items": "8",
                "max_batch_size": "8",
                "batch_wait_timeout_s": "0.05",
            }
        ),
        name="ragrec",
        route_prefix="/",
    )
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


def _call(url: str, path: str, body: bytes | dict | None = None) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        url + path, data=data, headers={"Content-Type": "application/json"}, method="GET" if data is None else "POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_healthz(url):
    status, body = _call(url, "/healthz")
    assert status == 200
    assert body == {"status": "ok", "run": "rallrec_ml100k_slice", "n_users": 40, "n_items": 1682, "batching": True}


def test_predictions_equal_the_offline_run(url, slice_run):
    preds = pq.read_table(slice_run / "predictions.parquet").slice(0, 10).to_pylist()
    bodies = [{"user_id": p["user_id"], "item_ids": [p["item_id"]], "as_of": p["timestamp"]} for p in preds]
    with ThreadPoolExecutor(len(bodies)) as pool:  # concurrent: they share @serve.batch batches
        answers = list(pool.map(lambda b: _call(url, "/predict", b), bodies))
    for p, (status, body) in zip(preds, answers):
        assert status == 200, body
        (got,) = body["predictions"]
        assert got["item_id"] == p["item_id"]
        assert got["history_item_ids"] == p["context_item_ids"]
        assert got["prob"] == pytest.approx(p["prob"], abs=1e-4)
    # several items of one user in one request: each as its own offline sample would be
    same = [p for p in preds if p["user_id"] == preds[0]["user_id"] and p["timestamp"] == preds[0]["timestamp"]]
    status, body = _call(
        url,
        "/predict",
        {
            "user_id": preds[0]["user_id"],
            "item_ids": [p["item_id"] for p in same] + [preds[0]["item_id"]],
            "as_of": preds[0]["timestamp"],
        },
    )
    assert status == 200
    np.testing.assert_allclose(
        [x["prob"] for x in body["predictions"]], [p["prob"] for p in same] + [preds[0]["prob"]], atol=1e-4
    )


@pytest.mark.parametrize(
    "body, status, words",
    [
        ({"user_id": 40, "item_ids": [1]}, 404, ["unknown user_id 40", "0..39"]),
        ({"user_id": -3, "item_ids": [1]}, 404, ["unknown user_id -3"]),
        ({"user_id": 1, "item_ids": [1, 1682, 99999]}, 404, ["unknown item_ids [1682, 99999]", "0..1681"]),
        ({"user_id": 1, "item_ids": []}, 422, ["item_ids", "at least 1"]),
        ({"user_id": 1, "item_ids": list(range(9))}, 413, ["9 items", "at most 8"]),
        ({"user_id": "1", "item_ids": [1]}, 422, ["user_id", "integer"]),
        ({"user_id": 1, "item_ids": [1.5]}, 422, ["item_ids.0", "integer"]),
        ({"user_id": 1, "item_ids": "1,2"}, 422, ["item_ids", "list"]),
        ({"item_ids": [1]}, 422, ["user_id", "required"]),
        ({"user_id": 1, "item_ids": [1], "asof": 5}, 422, ["asof", "not permitted"]),
        (b'{"user_id": 1, "item_ids": [1,', 422, ["JSON"]),
        (b"", 422, ["body"]),
    ],
    ids=[
        "unknown-user",
        "negative-user",
        "unknown-items",
        "empty",
        "oversized",
        "string-id",
        "float-item",
        "string-list",
        "missing-user",
        "unknown-field",
        "malformed-json",
        "no-body",
    ],
)
def test_bad_requests_get_4xx_with_a_reason(url, body, status, words):
    got_status, got = _call(url, "/predict", body)
    assert got_status == status, got
    assert all(w in got["detail"] for w in words), got["detail"]


def test_service_keeps_answering_after_errors(url):
    for bad in ({"user_id": 999, "item_ids": [1]}, b"not json", {"user_id": 1, "item_ids": []}):
        assert 400 <= _call(url, "/predict", bad)[0] < 500
    assert _call(url, "/healthz")[0] == 200
    status, body = _call(url, "/predict", {"user_id": 2, "item_ids": [10, 20]})
    assert status == 200 and [p["item_id"] for p in body["predictions"]] == [10, 20]
    assert all(0.0 < p["prob"] < 1.0 and len(p["history_item_ids"]) == 5 for p in body["predictions"])
