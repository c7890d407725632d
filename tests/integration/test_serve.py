"""Ray Serve over a finished RALLRec slice run: HTTP on loopback, parity with the offline predictions,
every 4xx case, the service still answering afterwards, a live request never seeing its target's rating, a
bounded soak at twice the concurrency the service admits (200 or 503 + Retry-After only, flat replica
memory, offline answers), and ``ragrec serve`` stopping cleanly on SIGINT (the module's last test).

The slice run (configs/rallrec_ml100k_slice.yaml, the real SmolLM2 + LoRA) shares the session's slice
artifact store with the pipeline test, so its stages are computed once per test session.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.ray]
# the app's overload limits: ADMITTED = max_ongoing_requests + max_queued_requests requests at once, more get 503
MAX_ONGOING, MAX_QUEUED = 8, 16  # a burst of 10 (the parity test) fits the queue
ADMITTED = MAX_ONGOING + MAX_QUEUED


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
                "max_ongoing_requests": str(MAX_ONGOING),
                "max_queued_requests": str(MAX_QUEUED),
                "retry_after_s": "1",
            }
        ),
        name="ragrec",
        route_prefix="/",
    )
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


def _call(url: str, path: str, body: bytes | dict | None = None) -> tuple[int, dict]:
    status, answer, _ = _call_headers(url, path, body)
    return status, answer


def _call_headers(url: str, path: str, body: bytes | dict | None = None) -> tuple[int, dict, dict]:
    """(status, JSON body or {"text": ...}, lower-cased headers)."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        url + path, data=data, headers={"Content-Type": "application/json"}, method="GET" if data is None else "POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            status, raw, headers = r.status, r.read(), r.headers
    except urllib.error.HTTPError as e:
        status, raw, headers = e.code, e.read(), e.headers
    try:
        answer = json.loads(raw)
    except ValueError:  # Serve's own 503 body is text
        answer = {"text": raw.decode(errors="replace")}
    return status, answer, {k.lower(): v for k, v in headers.items()}


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


def test_a_live_request_never_sees_its_target_and_says_it_was_rated(url, slice_run):
    """Without as_of the context is the user's whole history minus the target's own rating (issue 14: the
    target, rated 5, came first in its own context); with as_of it is the offline sample's context."""
    p = pq.read_table(slice_run / "predictions.parquet").slice(0, 1).to_pylist()[0]
    status, body = _call(url, "/predict", {"user_id": p["user_id"], "item_ids": [p["item_id"]]})
    assert status == 200, body
    (live,) = body["predictions"]
    assert live["in_history"] is True and p["item_id"] not in live["history_item_ids"]
    status, body = _call(
        url, "/predict", {"user_id": p["user_id"], "item_ids": [p["item_id"]], "as_of": p["timestamp"]}
    )
    (replayed,) = body["predictions"]
    assert replayed["in_history"] is False and replayed["history_item_ids"] == p["context_item_ids"]


def _replica_rss(name: str) -> int:
    """Resident bytes of the (one) live replica of deployment ``name`` of the app."""
    import psutil
    import ray
    from ray.util.state import list_actors

    actors = list_actors(
        address=ray.get_runtime_context().gcs_address,  # this session's Ray (others may run on the machine)
        filters=[("class_name", "=", f"ServeReplica:ragrec:{name}"), ("state", "=", "ALIVE")],
    )
    assert len(actors) == 1, actors
    return psutil.Process(actors[0].pid).memory_info().rss


def _hammer(url: str, bodies: list[dict], clients: int, seconds: float) -> list[tuple[int, dict, dict, int]]:
    """``clients`` threads posting ``bodies`` round-robin for ``seconds``; (status, body, headers, index) each
    (a transport error is status 0). A 503 is retried at once: the load stays at ``clients``."""
    deadline = time.monotonic() + seconds

    def client(k: int) -> list:
        out, j = [], k
        while time.monotonic() < deadline:
            idx = j % len(bodies)
            try:
                out.append((*_call_headers(url, "/predict", bodies[idx]), idx))
            except OSError as e:
                out.append((0, {"text": repr(e)}, {}, idx))
            j += clients
        return out

    with ThreadPoolExecutor(clients) as pool:
        return [r for rs in pool.map(client, range(clients)) for r in rs]


def test_soak_at_twice_the_admitted_concurrency(url, slice_run):
    """2 x (max_ongoing_requests + max_queued_requests) clients for 4 + 12 s on loopback: every answer is 200
    or 503 with Retry-After, the 200s equal the offline predictions, the replicas' memory stays flat and the
    service answers afterwards."""
    preds = pq.read_table(slice_run / "predictions.parquet").slice(0, 16).to_pylist()
    bodies = [{"user_id": p["user_id"], "item_ids": [p["item_id"]], "as_of": p["timestamp"]} for p in preds]
    clients = 2 * ADMITTED
    warm = _hammer(url, bodies, clients, 4.0)  # allocations of the first batches are not a leak
    rss0 = {d: _replica_rss(d) for d in ("Ingress", "PredictorDeployment")}
    results = warm + _hammer(url, bodies, clients, 12.0)
    rss1 = {d: _replica_rss(d) for d in ("Ingress", "PredictorDeployment")}

    statuses = Counter(r[0] for r in results)
    assert set(statuses) <= {200, 503}, statuses
    assert statuses[200] >= 2 * len(bodies) and statuses[503] > 0, statuses  # served, and overloaded
    for status, body, headers, idx in results:
        if status == 503:
            assert headers.get("retry-after") == "1", headers
            continue
        (got,) = body["predictions"]
        assert got["item_id"] == preds[idx]["item_id"] and got["history_item_ids"] == preds[idx]["context_item_ids"]
        assert got["prob"] == pytest.approx(preds[idx]["prob"], abs=1e-4)
    for d in rss0:  # flat: at most 10% + 64 MiB above the warmed-up size
        assert rss1[d] <= 1.10 * rss0[d] + (64 << 20), (d, rss0[d] >> 20, rss1[d] >> 20)
    assert _call(url, "/healthz")[0] == 200


def test_ragrec_serve_stops_cleanly_on_sigint(slice_run, ray_session):
    """``ragrec serve`` in a subprocess (on the session's Ray) answers, then SIGINT: exit 0 within 60 s, Serve
    gone, no traceback or native stack dump. The module's last test: it replaces the module's app."""
    from ray import serve

    serve.shutdown()  # the module's app is done with; the subprocess starts Serve again
    port = _free_port()
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ragrec.cli", "serve", str(slice_run), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        for line in proc.stdout:  # the ready line
            if "Ctrl-C stops" in line:
                break
        status, body = _call(f"http://127.0.0.1:{port}", "/predict", {"user_id": 2, "item_ids": [10]})
        assert status == 200 and body["predictions"][0]["item_id"] == 10
        start = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert time.monotonic() - start < 60
    for bad in ("Traceback", "Fatal Python error", "Stack (most recent call first)", "*** SIG", "core dumped"):
        assert bad not in err, err[-3000:]
    assert "SIGINT: stopping the service" in err
    with pytest.raises(ValueError):  # Serve's controller is gone
        ray_session.get_actor("SERVE_CONTROLLER_ACTOR", namespace="serve")
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass
