"""Experiment tracking (``ragrec.tracking``): what a run, an evaluation and a sweep trial log is read back through
MLflow's client API and from TensorBoard event files; ``none`` writes nothing; a missing MLflow is one line."""

from __future__ import annotations

import glob
import json
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from ragrec.config import RunConfig, TrackingConfig
from ragrec.tracking import Tracker, TrackingError, metric_name, mlflow_uri, result_rows, track

REPO = Path(__file__).resolve().parents[2]

ROWS = [
    {"name": "RALLRec", "auc": 0.712, "logloss": 0.61, "acc": 0.66, "n": 1000, "delta": None, "key": "rallrec"},
    {"name": "zero-shot (untuned)", "auc": 0.466, "logloss": 0.74, "acc": 0.5, "n": 1000, "delta": -0.246},
    {"name": "item + user rate", "auc": 0.686, "logloss": float("nan"), "acc": 0.64, "n": 1000, "delta": -0.026},
]
CONFIG = {"method": "rallrec", "name": "demo", "lora": {"lr": 0.002, "target_modules": ["q_proj", "v_proj"]}}


def _folder(tmp_path: Path) -> Path:
    """A result folder as ``write_report`` leaves it: report.md, metrics.json (rows, counts, a sweep, UR4Rec-style
    nested tables, the config), a plot and run.json; predictions.parquet is not an artifact."""
    import matplotlib.image

    out = tmp_path / "runs" / "demo"
    out.mkdir(parents=True)
    metrics = {
        "title": "RALLRec on synthetic",
        "rows": ROWS,
        "counts": {"train": 800, "evaluated (first test samples)": 200},
        "notes": ["a note"],
        "config": CONFIG,  # holds dicts with a "name" too: they are not rows
        "k_sweep": [{"name": "K=5", "k": 5, "auc": 0.70}],
        "tables": {"prm": [{"name": "PRM + UR4Rec", "ndcg@10": 0.41, "map@10": 0.33}]},
        "wall_seconds": 12.5,
        "finished": True,
    }
    (out / "metrics.json").write_text(json.dumps(metrics))
    (out / "report.md").write_text("# RALLRec on synthetic\n\n| row | AUC |\n")
    (out / "run.json").write_text(json.dumps({"method": "rallrec"}))
    (out / "predictions.parquet").write_bytes(b"PAR1")
    matplotlib.image.imsave(out / "auc.png", np.linspace(0, 1, 48).reshape(4, 4, 3))
    return out


@pytest.fixture()
def mlflow_env(monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    # absent when the test starts (restored afterwards): the tracker itself must opt in to the local file store
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "false")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")


def _client(store: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=store.resolve().as_uri())


def _children(client, parent_id: str) -> dict:
    exp = client.get_run(parent_id).info.experiment_id
    runs = client.search_runs([exp], filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'")
    return {r.info.run_name: r for r in runs}


def test_mlflow_run_reads_back_params_metrics_artifacts_and_a_nested_run_per_row(tmp_path, mlflow_env):
    folder = _folder(tmp_path)
    store = tmp_path / "mlruns"
    tcfg = TrackingConfig(backend="mlflow", uri=str(store))
    with track(tcfg, name="demo", command="run", root=folder, config=CONFIG, tags={"ragrec.method": "rallrec"}) as t:
        t.log(folder)
    client = _client(store)
    exp = client.get_experiment_by_name("demo")
    (parent,) = client.search_runs([exp.experiment_id], filter_string="tags.`ragrec.command` = 'run'")
    assert parent.info.status == "FINISHED" and parent.info.run_name == "run"
    assert parent.data.tags["ragrec.method"] == "rallrec"
    p = parent.data.params
    assert p["lora.lr"] == "0.002" and json.loads(p["lora.target_modules"]) == ["q_proj", "v_proj"]
    assert p["method"] == "rallrec"
    m = parent.data.metrics  # the main row, top-level numbers and counts
    assert m["auc"] == pytest.approx(0.712) and m["logloss"] == pytest.approx(0.61) and m["n"] == 1000
    assert m["wall_seconds"] == pytest.approx(12.5) and m["counts/train"] == 800
    assert m["counts/evaluated _first test samples_"] == 200
    assert "delta" not in m and "finished" not in m  # None and booleans are not metrics
    files = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert files == {"report.md", "metrics.json", "run.json", "auc.png", "config.json"}
    logged = Path(client.download_artifacts(parent.info.run_id, "config.json", str(tmp_path / "dl")))
    assert json.loads(logged.read_text()) == CONFIG
    report = Path(client.download_artifacts(parent.info.run_id, "report.md", str(tmp_path / "dl")))
    assert report.read_text() == (folder / "report.md").read_text()

    kids = _children(client, parent.info.run_id)
    assert set(kids) == {"RALLRec", "zero-shot (untuned)", "item + user rate", "K=5", "PRM + UR4Rec"}
    assert kids["zero-shot (untuned)"].data.metrics["delta"] == pytest.approx(-0.246)
    assert kids["item + user rate"].data.metrics["auc"] == pytest.approx(0.686)
    assert "logloss" not in kids["item + user rate"].data.metrics  # NaN is left out
    assert kids["PRM + UR4Rec"].data.metrics["ndcg_at_10"] == pytest.approx(0.41)
    assert kids["PRM + UR4Rec"].data.tags["ragrec.section"] == "tables/prm"
    assert kids["K=5"].data.tags["ragrec.section"] == "k_sweep"
    assert kids["RALLRec"].data.tags["ragrec.key"] == "rallrec"


def test_a_command_that_raises_ends_its_mlflow_run_failed(tmp_path, mlflow_env):
    store = tmp_path / "mlruns"
    with pytest.raises(RuntimeError, match="boom"):
        with track(
            TrackingConfig(backend="mlflow", uri=str(store)), name="x", command="evaluate", root=tmp_path, config={}
        ):
            raise RuntimeError("boom")
    client = _client(store)
    (run,) = client.search_runs([client.get_experiment_by_name("x").experiment_id])
    assert run.info.status == "FAILED"


def test_run_and_evaluate_commands_are_logged_through_the_hook(tmp_path, mlflow_env, monkeypatch):
    """``ragrec.methods.run`` / ``evaluate`` (what the CLI and jobs/run.py call) log whatever folder the method
    wrote, with the method's config sections as params, into ``tracking.experiment``."""
    import ragrec.methods as methods
    from ragrec.methods import runner
    from ragrec.methods.base import Method
    from ragrec.methods.common import RunResult

    folder = _folder(tmp_path)
    monkeypatch.setattr(runner, "run", lambda cfg, force=(): RunResult(folder, {}, {}))
    monkeypatch.setattr(Method, "evaluate", lambda self, cfg, force=(): RunResult(folder, {}, {}))
    store = tmp_path / "store"
    cfg = RunConfig.model_validate(
        {"name": "demo", "output_dir": str(tmp_path / "runs"), "lora": {"lr": 0.003},
         "tracking": {"backend": "mlflow", "uri": str(store), "experiment": "paper-tables"}}
    )  # fmt: skip
    methods.run(cfg)
    methods.evaluate(cfg)
    client = _client(store)
    runs = client.search_runs([client.get_experiment_by_name("paper-tables").experiment_id])
    parents = {r.data.tags["ragrec.command"]: r for r in runs if "mlflow.parentRunId" not in r.data.tags}
    assert set(parents) == {"run", "evaluate"}
    for r in parents.values():
        assert r.data.params["lora.lr"] == "0.003" and r.data.params["tracking.backend"] == "mlflow"
        assert "sasrec.dim" not in r.data.params  # only the method's sections, as in run.json
        assert r.data.metrics["auc"] == pytest.approx(0.712)
        assert r.data.tags["ragrec.dataset"] == cfg.data.name


def test_sweep_trials_go_through_ray_tunes_mlflow_callback_nested_under_the_sweep(tmp_path, mlflow_env):
    store = tmp_path / "mlruns"
    tracker = track(
        TrackingConfig(backend="mlflow", uri=str(store)), name="sw", command="sweep", root=tmp_path, config={}
    )
    (cb,) = tracker.tune_callbacks()
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    assert isinstance(cb, MLflowLoggerCallback)

    class Trial:  # what the callback reads of a Tune trial
        config = {"retrieval.k": 10, "ur4rec.tau": 0.1}  # noqa: RUF012

        def __str__(self):
            return "trial_0001"

    trial = Trial()
    cb.setup()
    cb.log_trial_start(trial)
    cb.log_trial_result(1, trial, {"ndcg@10": 0.42, "map@10": 0.3, "n": 64, "training_iteration": 1})
    cb.log_trial_end(trial)
    tracker.log(tmp_path, metrics={"valid/ndcg@10": 0.42, "test/ndcg@10": 0.40}, params={"best": {"retrieval.k": 10}})
    tracker.close()
    client = _client(store)
    sweep = client.get_run(tracker.run_id)
    assert (
        sweep.data.metrics["test/ndcg_at_10"] == pytest.approx(0.40) and sweep.data.params["best.retrieval.k"] == "10"
    )
    (t,) = _children(client, tracker.run_id).values()
    assert t.info.run_name == "trial_0001" and t.info.status == "FINISHED"
    assert t.data.params == {"retrieval.k": "10", "ur4rec.tau": "0.1"}
    assert t.data.metrics["ndcg_at_10"] == pytest.approx(0.42) and t.data.metrics["map_at_10"] == pytest.approx(0.3)


def _events(logdir: Path) -> dict:
    """``tag -> (plugin, value)`` of every summary value in the TFRecord event files under ``logdir``."""
    from tensorboardX.proto import event_pb2

    out = {}
    for f in sorted(glob.glob(str(logdir / "**" / "events.out.tfevents.*"), recursive=True)):
        data, i = Path(f).read_bytes(), 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i : i + 8])
            event = event_pb2.Event.FromString(data[i + 12 : i + 12 + n])
            i += 16 + n
            for v in event.summary.value:
                which = v.WhichOneof("value")
                out[v.tag] = (v.metadata.plugin_data.plugin_name or which, getattr(v, which) if which else None)
    return out


def test_tensorboard_writes_event_files_whose_scalars_text_and_images_read_back(tmp_path):
    folder = _folder(tmp_path)
    with track(TrackingConfig(backend="tensorboard"), name="demo", command="run", root=folder, config=CONFIG) as t:
        t.log(folder)
    (logdir,) = (folder / "tensorboard").iterdir()
    assert logdir.name.startswith("run-")
    ev = _events(logdir)
    assert ev["rows/RALLRec/auc"][1] == pytest.approx(0.712)
    # TensorBoard's tag rules turn what is not [-/\w.] into _
    assert ev["rows/zero-shot__untuned_/delta"][1] == pytest.approx(-0.246)
    assert ev["tables/prm/PRM___UR4Rec/ndcg_at_10"][1] == pytest.approx(0.41)
    assert ev["rows/item___user_rate/auc"][1] == pytest.approx(0.686)
    assert "rows/item___user_rate/logloss" not in ev  # NaN left out
    text = {k for k, (plugin, _) in ev.items() if plugin == "text"}
    assert {"config/text_summary", "report/text_summary"} <= text
    assert ev["auc"][0] == "image" and ev["auc"][1].height == 4 and ev["auc"][1].width == 4
    assert ev["hparams/auc"][1] == pytest.approx(0.712)  # the HParams tab's metric


def test_tensorboard_uri_is_a_log_dir_root(tmp_path):
    folder = _folder(tmp_path)
    with track(TrackingConfig(backend="tensorboard", uri=str(tmp_path / "tb")), name="demo", command="evaluate",
               root=folder, config={}) as t:  # fmt: skip
        t.log(folder)
    (logdir,) = (tmp_path / "tb" / "demo").iterdir()
    assert logdir.name.startswith("evaluate-") and _events(logdir)["rows/RALLRec/acc"][1] == pytest.approx(0.66)
    assert not (folder / "tensorboard").exists()


def test_none_writes_nothing_and_adds_no_tune_callbacks(tmp_path, monkeypatch):
    folder = _folder(tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    monkeypatch.chdir(tmp_path)
    with track(TrackingConfig(), name="demo", command="run", root=folder, config=CONFIG) as t:
        t.log(folder)
        assert t.tune_callbacks() == []
    assert type(t) is Tracker
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # no mlruns/, no tensorboard/
    assert RunConfig().tracking.backend == "none"


def test_missing_mlflow_is_one_line_naming_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow -> ImportError
    with pytest.raises(TrackingError) as e:
        track(TrackingConfig(backend="mlflow"), name="x", command="run", root=tmp_path, config={})
    msg = str(e.value)
    assert "\n" not in msg and "pip install 'ragrec[mlflow]'" in msg and "tracking.backend" in msg


def test_cli_with_mlflow_missing_exits_2_before_writing_anything(tmp_path, monkeypatch, capsys):
    from ragrec.cli import main

    monkeypatch.setitem(sys.modules, "mlflow", None)
    out = tmp_path / "runs"
    sets = [
        "--set",
        f"output_dir={out}",
        "--set",
        f"artifacts_dir={tmp_path / 'art'}",
        "--set",
        "tracking.backend=mlflow",
    ]
    assert main(["run", str(REPO / "configs" / "demo.yaml"), *sets]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pip install 'ragrec[mlflow]'" in err
    assert not out.exists() and not (tmp_path / "art").exists()


def test_bad_tracking_config_names_the_field():
    from ragrec.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"tracking\.backend"):
        load_config(None, ["tracking.backend=wandb"])
    with pytest.raises(ConfigError, match=r"tracking\.uri"):
        load_config(None, ["tracking.uri=' '"])


def test_uri_resolution_and_metric_names(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert mlflow_uri(TrackingConfig(backend="mlflow")) == (tmp_path / "mlruns").resolve().as_uri()
    assert mlflow_uri(TrackingConfig(backend="mlflow", uri="store")) == (tmp_path / "store").resolve().as_uri()
    assert mlflow_uri(TrackingConfig(backend="mlflow", uri="http://mlflow:5000")) == "http://mlflow:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.internal")
    assert mlflow_uri(TrackingConfig(backend="mlflow")) == "http://tracking.internal"
    assert metric_name("ndcg@10") == "ndcg_at_10" and metric_name("auc (users)") == "auc _users_"
    assert result_rows({"config": {"data": {"name": "ml-100k", "min_history": 5}}}) == []


@pytest.mark.ray
def test_a_real_tune_run_logs_each_trial_through_the_callbacks(ray_session, tmp_path, mlflow_env):
    """Ray Tune itself drives the callbacks: each trial becomes an MLflow run nested under the sweep's run (with
    its params and sanitised metrics), and TBXLoggerCallback writes each trial's scalars."""
    from ray import tune

    def trainable(config):  # defined here: cloudpickle ships it by value to the trial's worker
        tune.report({"ndcg@10": config["x"], "n": 8})

    store = tmp_path / "mlruns"
    trackers = [
        track(TrackingConfig(backend="mlflow", uri=str(store)), name="sw", command="sweep", root=tmp_path, config={}),
        track(TrackingConfig(backend="tensorboard"), name="sw", command="sweep", root=tmp_path, config={}),
    ]
    callbacks = [cb for t in trackers for cb in t.tune_callbacks()]
    tune.Tuner(
        tune.with_resources(trainable, {"cpu": 0.01}),
        param_space={"x": tune.grid_search([0.25, 0.5])},
        tune_config=tune.TuneConfig(max_concurrent_trials=2),
        run_config=tune.RunConfig(name="sw", storage_path=str(tmp_path / "tune"), callbacks=callbacks, verbose=0),
    ).fit()
    for t in trackers:
        t.close()
    client = _client(store)
    trials = _children(client, trackers[0].run_id).values()
    assert sorted((r.data.params["x"], r.data.metrics["ndcg_at_10"]) for r in trials) == [("0.25", 0.25), ("0.5", 0.5)]
    assert all(r.info.status == "FINISHED" and r.data.tags["ragrec.command"] == "sweep trial" for r in trials)
    scalars = [_events(Path(d)) for d in glob.glob(str(tmp_path / "tune" / "sw" / "*")) if Path(d).is_dir()]
    values = sorted(v for ev in scalars for k, (_, v) in ev.items() if k.endswith(("ndcg@10", "ndcg_10")))
    assert values == pytest.approx([0.25, 0.5]), [list(ev) for ev in scalars]
