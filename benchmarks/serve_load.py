"""Load test of the Serve application: ``@serve.batch`` vs one request at a time, on loopback.

    python benchmarks/serve_load.py [--run-dir runs/rallrec_ml100k] [--requests 48] [--quick]

Starts a local Ray and deploys the app of a finished run twice, side by side — Predictor without
batching (the reference: each request is one engine call) and with ``@serve.batch`` (requests arriving
within the wait window share one engine call) — and, level by level, one mode right after the other,
drives ``POST /predict`` from client threads at concurrency 1, 4 and 16:
each level sends a fixed number of requests (``--requests``; 16 at concurrency 1) and stops. Requests
replay the run's offline test predictions (user, one item, ``as_of`` = the sample's timestamp), so the
answers of both modes are checked equal to each other and to the offline probabilities (1e-4).

Reported per concurrency: requests/s of both modes (the ratio is batched / unbatched), p50 / p99
latency. Goal: batched >= 3x unbatched at concurrency 16.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import REPO, Measurement, Result, machine, parse_args, report

BENCH = "serve"
GOAL = 3.0
LEVELS = (1, 4, 16)
TOLERANCE = 1e-4


@dataclass
class Load:
    """One load level of one mode: wall seconds, per-request latencies (s), answers (prob per request)."""

    concurrency: int
    wall: float
    latencies: np.ndarray
    probs: np.ndarray
    errors: int
    first_error: str = ""

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) * 1000.0


def _post(url: str, body: dict, timeout: float = 600.0) -> tuple[int, dict, float]:
    data = json.dumps(body).encode()
    req = urllib.request.Request(url + "/predict", data=data, headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            out = r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        out = e.code, json.loads(e.read())
    return out[0], out[1], time.perf_counter() - t0


def drive(url: str, bodies: list[dict], concurrency: int) -> Load:
    """Send ``bodies`` with ``concurrency`` client threads (each sends its share one after another)."""

    def one(body: dict) -> tuple[int, float, float, str]:
        status, out, dt = _post(url, body)
        ok = status == 200
        return status, (out["predictions"][0]["prob"] if ok else np.nan), dt, "" if ok else f"{status} {out}"

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        res = list(pool.map(one, bodies))
    wall = time.perf_counter() - t0
    status = np.array([r[0] for r in res])
    return Load(
        concurrency,
        wall,
        np.array([r[2] for r in res]),
        np.array([r[1] for r in res]),
        int((status != 200).sum()),
        next((r[3] for r in res if r[3]), ""),
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


MODES = {False: "unbatched", True: "batched"}


def run_levels(run_dir: str, plans: dict[int, list[dict]], warmup: list[dict]) -> dict[bool, dict[int, Load]]:
    """Deploy the app twice side by side (``/unbatched``, ``/batched``), warm both up, then drive each
    level on one mode right after the other (so a change of load on a shared machine hits both alike);
    Serve is shut down at the end."""
    from ray import serve

    from ragrec.serving import build_app

    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        for batching, name in MODES.items():  # 2 x 0.8 + 6 x 0.05 CPUs: both fit on 2 CPUs
            serve.run(
                build_app(
                    run_dir,
                    batching=batching,
                    predictor_cpus=0.8,
                    light_cpus=0.05,
                    torch_threads=os.cpu_count(),
                    max_batch_size=16,
                    batch_wait_timeout_s=0.01,
                ),
                name=name,
                route_prefix=f"/{name}",
            )
        urls = {b: f"http://127.0.0.1:{port}/{name}" for b, name in MODES.items()}
        for url in urls.values():
            drive(url, warmup, 4)
        out: dict[bool, dict[int, Load]] = {False: {}, True: {}}
        for c, bodies in plans.items():
            for b, url in urls.items():
                out[b][c] = drive(url, bodies, c)
                print(
                    f"{MODES[b]:>9} concurrency {c:>2}: {len(bodies) / out[b][c].wall:.2f} requests/s",
                    file=sys.stderr,
                    flush=True,
                )
        return out
    finally:
        serve.shutdown()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(
        __doc__.splitlines()[0],
        argv,
        **{
            "--run-dir": {"default": str(REPO / "runs" / "rallrec_ml100k"), "help": "finished run (run.json)"},
            "--requests": {"type": int, "default": 48, "help": "requests per level at concurrency 4 and 16"},
        },
    )
    import pyarrow.parquet as pq
    import ray

    from ragrec.runtime import init

    n = 12 if args.quick else args.requests
    preds = pq.read_table(Path(args.run_dir) / "predictions.parquet").to_pylist()
    need = max(n, 16)
    if len(preds) < need + 4:
        raise SystemExit(f"{args.run_dir}/predictions.parquet holds {len(preds)} rows; need {need + 4}")
    bodies = [{"user_id": p["user_id"], "item_ids": [p["item_id"]], "as_of": p["timestamp"]} for p in preds[:need]]
    offline = np.array([p["prob"] for p in preds[:need]])
    warmup = [{"user_id": p["user_id"], "item_ids": [p["item_id"]]} for p in preds[need : need + 4]]
    plans = {c: bodies[: min(n, 16) if c == 1 else n] for c in LEVELS}

    init()
    t0 = time.perf_counter()
    loads = run_levels(args.run_dir, plans, warmup)
    total = time.perf_counter() - t0
    cpus = int(ray.cluster_resources().get("CPU", 0))

    results = []
    for c in LEVELS:
        ref, bat = loads[False][c], loads[True][c]
        k = len(plans[c])
        agree = float(np.nanmax(np.abs(ref.probs - bat.probs))) if k else 0.0
        vs_offline = float(np.nanmax(np.abs(bat.probs - offline[:k]))) if k else 0.0
        ok = ref.errors == bat.errors == 0 and agree <= TOLERANCE and vs_offline <= TOLERANCE
        if ref.errors or bat.errors:
            print(f"concurrency {c}: first error: {ref.first_error or bat.first_error}", file=sys.stderr)
        results.append(
            Result(
                bench=BENCH,
                case=f"concurrency {c}",
                unit="requests",
                reference=Measurement("unbatched", k, ref.wall),
                ragrec=Measurement("@serve.batch", k, bat.wall),
                verified=ok,
                goal=GOAL if c == max(LEVELS) else None,
                details={
                    "latency unbatched": f"p50 {ref.pct(50):,.0f} ms, p99 {ref.pct(99):,.0f} ms",
                    "latency @serve.batch": f"p50 {bat.pct(50):,.0f} ms, p99 {bat.pct(99):,.0f} ms",
                    "answers": f"max |batched - unbatched| = {agree:.1e}, max |batched - offline| = {vs_offline:.1e} "
                    f"({ref.errors + bat.errors} errors)",
                },
            )
        )
    results[-1].notes += [
        f"run: {args.run_dir}; one item per request (user, item, as_of) replayed from the offline test predictions",
        "both apps deployed side by side, each level driven on one mode right after the other; Predictor: 1 replica, "
        "num_cpus=0.8, torch threads = all CPUs; max_batch_size 16, batch_wait_timeout_s 0.01; "
        "Retriever/Reranker/Ingress 0.05 CPU each",
        f"Ray: {cpus} CPUs; machine: {machine()}; whole benchmark {total:.0f} s",
    ]
    report(results, args)


if __name__ == "__main__":
    main()
