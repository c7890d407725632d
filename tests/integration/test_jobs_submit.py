"""`ray job submit --working-dir . -- python jobs/run.py ...` against a real local head node.

The head runs in its own process group on loopback with free ports and its own --temp-dir, so it
coexists with the test session's `ray.init`. It is stopped by signalling that process group: `ray
stop` would kill every Ray process on the machine, the test session's (and any neighbour's) included.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

RAY = str(Path(sys.executable).parent / "ray")
# the working-dir upload: Ray already skips .gitignore'd paths; be explicit about the big ones, anchored at the
# root (gitignore syntax: a bare "data" would also drop platform/ragrec/data)
EXCLUDES = ["/.venv", "/.git", "/.ragrec_cache", "/.pytest_cache", "/artifacts", "/runs", "/data", "**/__pycache__"]
TINY = [
    "name=job_demo",
    "llm.model=tiny-random-llama",
    "llm.max_prompt_tokens=256",
    "data.synthetic={n_users: 40, n_items: 48, n_genres: 6, ratings_per_user: 16, seed: 0}",
    "description.max_new_tokens=6",
    "description.block_size=24",
    "embedding={pca_dim: 8, max_tokens: 32}",
    "lightgcn={dim: 8, num_layers: 1, epochs: 2, batch_size: 256}",
    "projector={hidden_dim: 16, epochs: 2}",
    "lora.enabled=false",
    "eval={max_test_samples: 24, bootstrap: 50}",
]


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # the job's `python` = this venv
    # a loopback-only throwaway cluster: without this, Ray 2.60 turns token auth on whenever ~/.ray/auth_token
    # exists, and the in-process JobSubmissionClient (auth mode not set in this process) is refused
    env["RAY_AUTH_MODE"] = "disabled"
    return env


def _wait_http(url: str, timeout: float, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"ray start exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:  # answered (401 when Ray token auth is on): the dashboard is up
            return
        except OSError:
            pass
        time.sleep(1)
    pytest.fail(f"the dashboard at {url} did not come up in {timeout:.0f}s:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen, temp_dir: str) -> None:
    """SIGTERM the head's process group, then SIGKILL what is left of it (only processes this test started)."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    import psutil

    for p in psutil.process_iter(["pid", "cmdline"]):  # children that left the group but use our temp dir
        try:
            if any(temp_dir in part for part in p.info["cmdline"] or []):
                p.kill()
        except psutil.Error:
            pass


def test_job_submit_runs_the_pipeline(tmp_path):
    temp_dir = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # short: Ray's unix socket paths must fit 107 bytes
    gcs, dash, client, nm, om, agent, agent_grpc, metrics, rt_env = _free_ports(9)
    log = tmp_path / "head.log"
    head = subprocess.Popen(
        [
            RAY,
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={gcs}",
            "--num-cpus=1",
            "--num-gpus=0",
            f"--temp-dir={temp_dir}",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash}",
            f"--ray-client-server-port={client}",
            f"--node-manager-port={nm}",
            f"--object-manager-port={om}",
            f"--dashboard-agent-listen-port={agent}",
            f"--dashboard-agent-grpc-port={agent_grpc}",
            f"--metrics-export-port={metrics}",
            f"--runtime-env-agent-port={rt_env}",
            f"--object-store-memory={256 * 1024**2}",
            "--disable-usage-stats",
        ],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env=_env(),
        start_new_session=True,
    )
    address = f"http://127.0.0.1:{dash}"
    try:
        _wait_http(f"{address}/api/version", 120, head, log)
        runtime_env = {
            "excludes": EXCLUDES,
            "env_vars": {
                "TOKENIZERS_PARALLELISM": "false",
                **({"RAGREC_CACHE": os.environ["RAGREC_CACHE"]} if os.environ.get("RAGREC_CACHE") else {}),
            },
        }
        job_id = f"ragrec-test-{uuid.uuid4().hex[:8]}"
        out = tmp_path / "out"
        sets = [
            a for s in TINY + [f"artifacts_dir={out / 'artifacts'}", f"output_dir={out / 'runs'}"] for a in ("--set", s)
        ]
        sub = subprocess.run(
            [
                RAY,
                "job",
                "submit",
                "--address",
                address,
                "--submission-id",
                job_id,
                "--working-dir",
                str(REPO),
                "--runtime-env-json",
                json.dumps(runtime_env),
                "--",
                "python",
                "jobs/run.py",
                "configs/demo.yaml",
                *sets,
            ],
            cwd=REPO,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=600,
        )
        from ray.job_submission import JobStatus, JobSubmissionClient

        jobs = JobSubmissionClient(address)
        status, logs = jobs.get_job_status(job_id), jobs.get_job_logs(job_id)
        assert status == JobStatus.SUCCEEDED, f"{status}\n{sub.stdout[-3000:]}\n{sub.stderr[-3000:]}\n{logs[-3000:]}"

        # the upload: the source travelled, the venv / caches / outputs did not
        assert jobs.get_job_info(job_id).runtime_env["working_dir"].startswith("gcs://")
        pkgs = [
            p for p in Path(temp_dir).glob("session_2*/runtime_resources/working_dir_files/_ray_pkg_*") if p.is_dir()
        ]
        assert len(pkgs) == 1, pkgs
        pkg = pkgs[0]
        assert (pkg / "jobs" / "run.py").is_file() and (pkg / "platform" / "ragrec" / "data").is_dir()
        assert [d for d in (".venv", ".ragrec_cache", ".git", "artifacts", "runs") if (pkg / d).exists()] == []
        run_dir = out / "runs" / "job_demo"
        assert f"report: {run_dir / 'report.md'}" in logs  # jobs/run.py's last line, from the job's own log
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert metrics["rows"][0]["n"] == 24 and 0.0 <= metrics["rows"][0]["auc"] <= 1.0
        assert json.loads((run_dir / "run.json").read_text())["name"] == "job_demo"
        assert (out / "artifacts" / "scores").is_dir()
    finally:
        _stop(head, temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert head.poll() is not None, "the head node is still running"
