"""The thin `ray job submit` entrypoints jobs/sweep.py and jobs/serve.py: argument handling and errors."""

import importlib.util
import sys
import types
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_job_{name}", REPO / "jobs" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_serve_job_passes_run_dir_host_port_and_blocks(monkeypatch, tmp_path):
    calls = []
    fake = types.ModuleType("ragrec.serving")
    fake.serve_run = lambda run_dir, **kw: calls.append((run_dir, kw))
    monkeypatch.setitem(sys.modules, "ragrec.serving", fake)
    assert _load("serve").main([str(tmp_path), "--host", "127.0.0.1", "--port", "8123"]) == 0
    assert calls == [(str(tmp_path), {"host": "127.0.0.1", "port": 8123, "blocking": True})]


def test_serve_job_reports_a_missing_run(monkeypatch, capsys, tmp_path):
    fake = types.ModuleType("ragrec.serving")

    def serve_run(run_dir, **kw):
        raise FileNotFoundError(f"{run_dir}/run.json not found")

    fake.serve_run = serve_run
    monkeypatch.setitem(sys.modules, "ragrec.serving", fake)
    assert _load("serve").main([str(tmp_path / "nope")]) == 2
    assert "run.json not found" in capsys.readouterr().err


def test_sweep_job_rejects_a_bad_sweep_before_starting_ray(capsys, tmp_path, monkeypatch):
    import ray

    calls = []
    monkeypatch.setattr(ray, "init", lambda *a, **k: calls.append((a, k)))  # the session may already run Ray
    (tmp_path / "base.yaml").write_text("name: b\n")
    bad = tmp_path / "sweep.yaml"
    bad.write_text(yaml.safe_dump({"base": "base.yaml", "search_space": {"retrieval.kk": {"grid": [3]}}}))
    assert _load("sweep").main([str(bad)]) == 2
    err = capsys.readouterr().err
    assert "retrieval.kk" in err and str(bad) in err
    assert calls == []
