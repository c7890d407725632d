"""serve/app.py and serve/config.yaml without starting Ray: argument parsing, config schema, error texts."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from serve import app as serve_app  # noqa: E402  (the `serve deploy` import path)


def test_config_yaml_is_a_valid_serve_deploy_config_pointing_at_the_builder():
    from ray.serve.schema import ServeDeploySchema

    cfg = ServeDeploySchema.model_validate(yaml.safe_load((REPO / "serve" / "config.yaml").read_text()))
    (application,) = cfg.applications
    assert application.import_path == "serve.app:app"
    assert application.route_prefix == "/"
    module, attr = application.import_path.split(":")
    assert callable(getattr(serve_app, attr)) and module == "serve.app"
    unknown = set(application.args) - {"run_dir"} - set(serve_app._FIELDS)
    assert not unknown, f"config.yaml args the builder does not know: {unknown}"


def test_builder_needs_a_run_dir(monkeypatch):
    monkeypatch.delenv("RAGREC_RUN_DIR", raising=False)
    with pytest.raises(ValueError, match="run_dir=RUN_DIR"):
        serve_app.app({})


def test_builder_rejects_unknown_arguments(monkeypatch):
    with pytest.raises(ValueError, match=r"unknown serve argument\(s\) \['batch_size'\]"):
        serve_app.app({"run_dir": "x", "batch_size": 3})


def test_builder_reports_a_missing_run(tmp_path, monkeypatch):
    monkeypatch.setenv("RAGREC_RUN_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="run.json not found"):
        serve_app.app({"batching": "false"})


@pytest.mark.parametrize(
    "name, text, value",
    [
        ("batching", "false", False),
        ("batching", "True", True),
        ("max_batch_size", "8", 8),
        ("predictor_cpus", "0.5", 0.5),
        ("predictor_gpus", "1", 1.0),
        ("torch_threads", "2", 2),
        ("max_items", 7, 7),
    ],
)
def test_command_line_strings_become_typed_options(name, text, value):
    got = serve_app._parse(name, text)
    assert got == value and type(got) is type(value)


def test_predictor_asks_ray_for_gpus_only_when_told():
    from ragrec.serving.app import ServeOptions, predictor_resources

    assert predictor_resources(ServeOptions()) == {"num_cpus": 1.0}  # CPU default: schedulable anywhere
    assert predictor_resources(ServeOptions(predictor_cpus=0.5, predictor_gpus=1)) == {"num_cpus": 0.5, "num_gpus": 1}
    with pytest.raises(ValueError, match="predictor_gpus must be >= 0"):
        predictor_resources(ServeOptions(predictor_gpus=-1))


def test_config_yaml_gives_the_predictor_a_gpu_for_the_cluster():
    args = yaml.safe_load((REPO / "serve" / "config.yaml").read_text())["applications"][0]["args"]
    assert float(args["predictor_gpus"]) == 1.0


@pytest.mark.parametrize("task", ["rerank", "full_ranking"])
def test_one_deployment_apps_carry_the_overload_limits(task, monkeypatch):
    """UR4Rec's /rerank and ER2ALM's /recommend apps get Serve's concurrency limit, queue bound and 503 +
    Retry-After from the serve options, like the RALLRec chain's ingress (an unbounded queue would hold
    every request of an overload in memory)."""
    from ragrec.serving import app as app_mod

    monkeypatch.setattr(app_mod, "run_task", lambda run_dir: task)
    app = app_mod.build_app("/runs/x", max_ongoing_requests=3, max_queued_requests=5, retry_after_s=2.5)
    d = app._bound_deployment
    assert (d.max_ongoing_requests, d.max_queued_requests) == (3, 5)
    bp = d._deployment_config.backpressure_config
    assert (bp.status_code, bp.retry_after_s) == (503, 2.5)
