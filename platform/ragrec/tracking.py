"""Experiment tracking: every ``ragrec run``, ``ragrec evaluate`` and ``ragrec sweep`` logged where people already
look, as the config's ``tracking`` section says (:class:`~ragrec.config.TrackingConfig`).

* ``none`` (default): nothing; the run folder (``report.md``, ``metrics.json``, plots) is the record.
* ``mlflow``: one MLflow run per command (experiment = ``tracking.experiment`` or the config's name), opened
  when the command starts (a command that raises ends it ``FAILED``). When the command has written its
  folder, the run gets the resolved config as params (dotted names) and ``config.json``, the main row's metrics,
  ``report.md`` / ``metrics.json`` / ``run.json`` / the plots as artifacts, and one nested run per report row
  (every variant, sweep point, baseline) holding that row's metrics. Sweep trials are logged by Ray Tune's own
  ``MLflowLoggerCallback``, nested under the sweep's run. MLflow is the optional extra ``ragrec[mlflow]``
  (``mlflow-skinny``, the tracking client), imported only here and only when asked for.
* ``tensorboard``: tensorboardX event files (the writer Ray Tune itself uses, installed with ``ray[tune]``)
  under the run folder's ``tensorboard/<command>-<time>/``: the rows' metrics as scalars, the config and the
  report as text, the plots as images, the config with the main metrics in the HParams tab. Sweep trials through
  Ray Tune's ``TBXLoggerCallback`` (in each trial's folder under ``<sweep>/tune/``), so ``tensorboard --logdir
  runs`` shows everything.

The commands call :func:`track` once: ``with track(cfg.tracking, ...) as tracker: ...; tracker.log(folder)``.
A missing library or an unusable URI is a :class:`TrackingError` (one line, exit 2) raised *before* the command
computes anything.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .config import ConfigError, TrackingConfig

log = logging.getLogger("ragrec.tracking")

MLFLOW_INSTALL = "pip install 'ragrec[mlflow]'"
ARTIFACT_SUFFIXES = (".md", ".json", ".png", ".csv")
"""Files of a result folder that are logged as artifacts (not ``predictions.parquet``: it can be large)."""
_ROW_SKIP = ("config", "notes")  # metrics.json entries that hold no result rows


class TrackingError(ConfigError):
    """Tracking cannot work as configured (library missing, URI unusable, logging failed); one line."""


# ---------------------------------------------------------------------------------------------------
# lazy imports
# ---------------------------------------------------------------------------------------------------
def require_mlflow():
    """The ``mlflow`` module, or a :class:`TrackingError` naming the install command."""
    try:
        import mlflow
    except ImportError:
        raise TrackingError(
            f"tracking.backend is mlflow but MLflow is not installed: {MLFLOW_INSTALL} (or set tracking.backend: none)"
        ) from None
    return mlflow


def require_tensorboardx():
    """``tensorboardX.SummaryWriter`` (a Ray Tune dependency), or a :class:`TrackingError`."""
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        raise TrackingError(
            "tracking.backend is tensorboard but tensorboardX is not installed: pip install tensorboardX "
            "(it comes with ray[tune]) or set tracking.backend: none"
        ) from None
    return SummaryWriter


# ---------------------------------------------------------------------------------------------------
# what gets logged
# ---------------------------------------------------------------------------------------------------
def metric_name(key: str) -> str:
    """``key`` as an MLflow metric name (alphanumerics, ``_ - . / : space``): ``ndcg@10`` -> ``ndcg_at_10``."""
    return re.sub(r"[^\w\-. /:]", "_", str(key).replace("@", "_at_"))


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def numeric(row: Mapping) -> dict[str, float]:
    """The finite numbers of ``row`` (not booleans, None or NaN) under MLflow-safe names."""
    out = {}
    for k, v in row.items():
        x = _number(v)
        if x is not None:
            out[metric_name(k)] = x
    return out


def flat_params(config: Mapping, prefix: str = "") -> dict[str, str]:
    """``{"lora": {"lr": 0.002}}`` -> ``{"lora.lr": "0.002"}``; lists and None as JSON."""
    out: dict[str, str] = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flat_params(v, f"{key}."))
        else:
            out[key] = v if isinstance(v, str) else json.dumps(v, default=str)
    return out


def _is_row(d: Mapping) -> bool:
    return isinstance(d.get("name"), str) and any(_number(v) is not None for k, v in d.items() if k != "name")


def result_rows(metrics: Mapping) -> list[tuple[str, dict]]:
    """Every report row in ``metrics`` (a ``metrics.json``): ``(section, row)`` for each dict with a ``name``
    and numbers, found anywhere (``rows``, sweep points, learning-curve points, fusion comparisons, UR4Rec's
    per-backbone tables); ``section`` is the path to it (``rows``, ``k_sweep``, ``tables/prm``...)."""
    out: list[tuple[str, dict]] = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, Mapping):
            if _is_row(node):
                out.append((path, dict(node)))
                return
            for k, v in node.items():
                if not path and k in _ROW_SKIP:
                    continue
                walk(v, f"{path}/{k}" if path else str(k))
        elif isinstance(node, list):
            for v in node:
                walk(v, path)

    walk(metrics, "")
    return out


def summary_metrics(metrics: Mapping) -> dict[str, float]:
    """The command's own metrics: the first row's numbers (the method's main row), the top-level numbers
    (``wall_seconds``) and the sample counts (``counts/<name>``)."""
    rows = metrics.get("rows")
    out = numeric(rows[0]) if isinstance(rows, list) and rows and isinstance(rows[0], Mapping) else {}
    out.update(numeric(metrics))
    counts = metrics.get("counts")
    if isinstance(counts, Mapping):
        out.update({f"counts/{k}": v for k, v in numeric(counts).items()})
    return out


def artifact_files(folder: Path) -> list[Path]:
    """The report files of a result folder: ``report.md``, ``metrics.json``, ``run.json``, plots, tables."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in ARTIFACT_SUFFIXES)


def _read_metrics(folder: Path) -> dict:
    path = Path(folder) / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")


# ---------------------------------------------------------------------------------------------------
# trackers
# ---------------------------------------------------------------------------------------------------
class Tracker:
    """One tracked command. The base class is the ``none`` backend: it logs nothing and adds no callbacks."""

    backend = "none"

    def log(
        self,
        folder: Path | str,
        metrics: Mapping | None = None,
        files: list[Path] | None = None,
        params: Mapping | None = None,
    ) -> None:
        """Log the finished command: ``metrics`` (default: ``folder/metrics.json``), ``files`` (default: the
        report files of ``folder``) and ``params`` (e.g. a sweep's best configuration) besides the config."""

    def tune_callbacks(self) -> list:
        """Ray Tune callbacks that log every sweep trial to this backend."""
        return []

    def close(self, failed: bool = False) -> None:
        """End the tracked run (``FAILED`` when the command raised)."""

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(failed=exc_type is not None)


def mlflow_uri(tcfg: TrackingConfig) -> str:
    """The tracking URI: ``tracking.uri`` (a plain path becomes a ``file:`` URI), else ``$MLFLOW_TRACKING_URI``,
    else the local file store ``./mlruns``."""
    uri = tcfg.uri or os.environ.get("MLFLOW_TRACKING_URI") or "mlruns"
    if re.match(r"^[A-Za-z][A-Za-z0-9+.\-]*:", uri) and not re.match(r"^[A-Za-z]:[\\/]", uri):
        return uri  # a scheme (http:, file:, sqlite:, databricks) and not a Windows drive
    return Path(uri).expanduser().resolve().as_uri()


class MLflowTracker(Tracker):
    """The ``mlflow`` backend (module docstring); one MLflow run, created when the command starts."""

    backend = "mlflow"

    def __init__(self, tcfg: TrackingConfig, experiment: str, run_name: str, tags: Mapping[str, str], config: Mapping):
        require_mlflow()
        from mlflow.tracking import MlflowClient

        self.uri = mlflow_uri(tcfg)
        if self.uri.startswith("file:"):
            # MLflow >= 3.7 keeps the file store in maintenance mode and refuses it unless asked for: the local
            # store is what `tracking.uri` asks for here (`mlflow migrate-filestore` moves it to a database later)
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.experiment = experiment
        self.config = dict(config)
        try:
            self.client = MlflowClient(tracking_uri=self.uri)
            exp = self.client.get_experiment_by_name(experiment)
            self.experiment_id = exp.experiment_id if exp is not None else self.client.create_experiment(experiment)
            run = self.client.create_run(self.experiment_id, run_name=run_name, tags=dict(tags))
        except Exception as e:
            raise TrackingError(
                f"tracking: cannot open MLflow experiment {experiment!r} at {self.uri} ({_first_line(e)}); "
                f"fix tracking.uri / $MLFLOW_TRACKING_URI (a server needs the full `mlflow` package on its side)"
            ) from None
        self.run_id = run.info.run_id
        self._closed = False
        log.info("tracking: MLflow run %s (experiment %s) at %s", self.run_id, experiment, self.uri)

    def _batch(self, run_id: str, metrics: Mapping[str, float] = (), params: Mapping[str, str] = ()) -> None:
        from mlflow.entities import Metric, Param
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

        now = int(time.time() * 1000)
        ms = [Metric(k, float(v), now, 0) for k, v in dict(metrics).items()]
        ps = [Param(k, str(v)[:MAX_PARAM_VAL_LENGTH]) for k, v in dict(params).items()]
        for i in range(0, max(len(ms), len(ps)), 100):  # MLflow's batch limit: 100 params, 1000 metrics
            self.client.log_batch(run_id, metrics=ms[i : i + 100], params=ps[i : i + 100])

    def log(self, folder, metrics=None, files=None, params=None) -> None:
        folder = Path(folder)
        metrics = _read_metrics(folder) if metrics is None else metrics
        try:
            self._batch(self.run_id, summary_metrics(metrics), flat_params({**self.config, **(params or {})}))
            self.client.log_dict(self.run_id, self.config, "config.json")
            for path in artifact_files(folder) if files is None else files:
                self.client.log_artifact(self.run_id, str(path))
            for section, row in result_rows(metrics):
                tags = {"mlflow.parentRunId": self.run_id, "ragrec.section": section}
                tags.update({f"ragrec.{k}": v for k, v in row.items() if isinstance(v, str) and k != "name"})
                child = self.client.create_run(self.experiment_id, run_name=row["name"], tags=tags)
                self._batch(child.info.run_id, numeric(row))
                self.client.set_terminated(child.info.run_id)
        except Exception as e:
            raise TrackingError(
                f"tracking: logging to MLflow run {self.run_id} at {self.uri} failed ({_first_line(e)}); "
                f"the command's files are complete in {folder}"
            ) from None

    def tune_callbacks(self) -> list:
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        class _Callback(MLflowLoggerCallback):
            """Ray Tune's MLflow logger with the result keys made valid MLflow names (``ndcg@10``)."""

            def log_trial_result(self, iteration, trial, result):
                from ray.tune.utils import flatten_dict

                flat = flatten_dict(dict(result), delimiter="/")
                super().log_trial_result(iteration, trial, {metric_name(k): v for k, v in flat.items()})

        tags = {"mlflow.parentRunId": self.run_id, "ragrec.command": "sweep trial"}
        return [_Callback(tracking_uri=self.uri, experiment_name=self.experiment, tags=tags)]

    def close(self, failed: bool = False) -> None:
        if not self._closed:
            self._closed = True
            try:
                self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")
            except Exception as e:  # never hide the command's own error behind a tracking one
                log.warning("tracking: could not end MLflow run %s: %s", self.run_id, _first_line(e))


class TensorBoardTracker(Tracker):
    """The ``tensorboard`` backend (module docstring); the event files are written when the command finished."""

    backend = "tensorboard"

    def __init__(self, tcfg: TrackingConfig, name: str, command: str, root: Path, config: Mapping):
        self.writer_class = require_tensorboardx()
        base = Path(tcfg.uri).expanduser() / name if tcfg.uri else Path(root) / "tensorboard"
        self.logdir = base / f"{command.replace(' ', '_')}-{time.strftime('%Y%m%d-%H%M%S')}"
        self.config = dict(config)

    def log(self, folder, metrics=None, files=None, params=None) -> None:
        folder = Path(folder)
        metrics = _read_metrics(folder) if metrics is None else metrics
        files = artifact_files(folder) if files is None else files
        config = {**self.config, **(params or {})}
        w = self.writer_class(str(self.logdir))
        try:
            for section, row in result_rows(metrics):
                for k, v in numeric(row).items():
                    w.add_scalar(f"{section}/{row['name']}/{k}", v, 0)
            w.add_text("config", "```json\n" + json.dumps(config, indent=2, default=str) + "\n```", 0)
            for path in files:
                if path.suffix == ".md":
                    w.add_text(path.stem, path.read_text(), 0)
                elif path.suffix == ".png":
                    import matplotlib.image

                    w.add_image(path.stem, matplotlib.image.imread(str(path)), 0, dataformats="HWC")
            summary = summary_metrics(metrics)
            if summary:
                hparams = {k: v for k, v in flat_params(config).items() if len(v) <= 200}
                w.add_hparams(hparams, {f"hparams/{k}": v for k, v in summary.items()}, name="hparams")
        finally:
            w.close()
        log.info("tracking: TensorBoard events in %s", self.logdir)

    def tune_callbacks(self) -> list:
        from ray.tune.logger import TBXLoggerCallback

        return [TBXLoggerCallback()]


def track(
    tcfg: TrackingConfig,
    *,
    name: str,
    command: str,
    root: Path | str,
    config: Mapping,
    tags: Mapping[str, str] | None = None,
) -> Tracker:
    """Open the tracker of one command (``run``, ``evaluate``, ``sweep``) of the config called ``name`` whose
    result folder is ``root``; ``config`` is the resolved config to log. Use it as a context manager and call
    :meth:`Tracker.log` with the result folder once the command has written it."""
    if tcfg.backend == "none":
        return Tracker()
    if tcfg.backend == "tensorboard":
        return TensorBoardTracker(tcfg, name, command, Path(root), config)
    all_tags = {"ragrec.command": command, "ragrec.name": name, "ragrec.folder": str(Path(root).resolve())}
    all_tags.update(tags or {})
    return MLflowTracker(tcfg, tcfg.experiment or name, command, all_tags, config)
