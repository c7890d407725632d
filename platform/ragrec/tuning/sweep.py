"""``ragrec sweep``: Ray Tune over run-config fields, objective on the validation split, best reported on test.

Each trial is ``evaluate_split(trial_config, "valid")``: it builds the stages its method (any registered one) needs
in the shared content-addressed store (an ABSOLUTE ``artifacts_dir``), so stages whose inputs a trial
does not change are reused from earlier trials and a new description temperature, say, recomputes
only descriptions -> embeddings -> projector -> ... -> scores.

Resources: the trial function itself holds only ``trial_cpus`` (default 0.01 CPU: Tune rejects an
empty bundle). The stages it runs request their own resources: Ray Data actor pools and Ray Train V2
workers are scheduled outside the trial's placement group. Ray's default (one whole CPU per trial)
would on a 2-CPU machine leave a single CPU for an actor pool plus the Ray Data tasks feeding it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .report import TrialRow, best_row, write_results
from .spec import METRICS, SweepSpec, load_sweep, trial_config

log = logging.getLogger("ragrec.tuning")

# environment a trial needs from the driver (tests and jobs set these; remote nodes may not have them)
_FORWARD_ENV = ("RAGREC_DATA_DIR", "RAGREC_CACHE", "RAGREC_LOG", "TOKENIZERS_PARALLELISM")


def _numeric(metrics: dict) -> dict:
    """The metrics of ``evaluate_split``'s result (auc/logloss/acc or map@k/ndcg@k, and n), without Tune's own."""
    return {k: metrics[k] for k in (*METRICS, "n") if k in metrics}


@dataclass
class SweepResult:
    """What :func:`run_sweep` found: the searched params of the best trial, its valid and test metrics."""

    out_dir: Path
    best_config: dict[str, Any]
    valid: dict
    test: dict
    trials: list[TrialRow] = field(default_factory=list)


def _evaluate(base_raw: dict, params: dict, split_name: str, env: dict[str, str]) -> dict:
    from ..methods import evaluate_split

    os.environ.update(env)
    return evaluate_split(trial_config(base_raw, params), split_name)


def _trial(params: dict, *, base_raw: dict, env: dict[str, str]) -> None:
    """The Tune trainable: one validation evaluation, reported once."""
    from ray import tune

    metrics = _evaluate(base_raw, params, "valid", env)
    tune.report(_numeric(metrics))


def _tuner(spec: SweepSpec, storage: Path, callbacks: list | None = None):
    from ray import tune
    from ray.tune.search import BasicVariantGenerator

    cfg = spec.config
    env = {k: os.environ[k] for k in _FORWARD_ENV if k in os.environ}
    trainable = tune.with_resources(
        tune.with_parameters(_trial, base_raw=spec.base_raw, env=env), {"cpu": cfg.trial_cpus}
    )
    return tune.Tuner(
        trainable,
        param_space={k: v.to_tune() for k, v in cfg.search_space.items()},
        tune_config=tune.TuneConfig(
            metric=cfg.metric,
            mode=cfg.mode,
            num_samples=cfg.num_samples,
            max_concurrent_trials=cfg.max_concurrent_trials,
            search_alg=BasicVariantGenerator(max_concurrent=cfg.max_concurrent_trials, random_state=cfg.seed),
        ),
        run_config=tune.RunConfig(
            name=cfg.name,
            storage_path=str(storage),
            verbose=1,
            failure_config=tune.FailureConfig(max_failures=0),
            callbacks=callbacks or None,  # tracking: Ray Tune's MLflow / TensorBoard loggers (ragrec.tracking)
        ),
    )


def _rows(spec: SweepSpec, grid) -> list[TrialRow]:
    rows = []
    for i, r in enumerate(grid):
        m = r.metrics or {}
        params = {k: r.config[k] for k in spec.params}
        rows.append(
            TrialRow(
                trial_id=str(m.get("trial_id", i)),
                params=params,
                metrics=_numeric(m),
                error=None if r.error is None else f"{type(r.error).__name__}: {r.error}".splitlines()[0],
            )
        )
    return rows


def _tracker(spec: SweepSpec, run_cfg, out_dir: Path):
    """The base config's ``tracking`` tracker of the sweep: its run holds the search space, the base config, the
    best params and their valid / test metrics and ``results.*``; the trials nest under it (Ray Tune's loggers)."""
    from ..methods import get_method
    from ..tracking import track

    config = {"sweep": spec.config.model_dump(mode="json"), **get_method(run_cfg.method).config_dict(run_cfg)}
    tags = {"ragrec.method": run_cfg.method, "ragrec.dataset": run_cfg.data.name}
    return track(run_cfg.tracking, name=spec.config.name, command="sweep", root=out_dir, config=config, tags=tags)


def run_sweep(config_path: str, overrides: list[str] | None = None) -> SweepResult:
    """Run the sweep in ``config_path``; write ``results.md``, ``results.csv`` and ``sweep.png``.

    ``overrides``: ``--set`` items; keys whose first part is a sweep field (``num_samples=2``,
    ``search_space.retrieval.k={grid: [5]}``) change the sweep file, all others the base run config
    (``eval.max_valid_samples=100``). The best trial (by ``metric``/``mode`` on the validation split)
    is then evaluated on the test split. Raises ConfigError for an invalid sweep before Ray starts,
    RuntimeError when every trial fails.
    """
    from ..runtime import init, setup_logging

    setup_logging()
    spec = load_sweep(config_path, overrides)
    run_cfg = spec.trial_config({})
    out_dir = spec.out_dir()
    with _tracker(spec, run_cfg, out_dir) as tracker:  # before Ray starts: a missing MLflow fails here
        init(run_cfg.ray.address, run_cfg.ray.num_cpus)
        out_dir.mkdir(parents=True, exist_ok=True)
        storage = out_dir / "tune"
        log.info("sweep %s: %s over %s -> %s", spec.config.name, spec.config.metric, spec.params, out_dir)
        grid = _tuner(spec, storage, tracker.tune_callbacks()).fit()
        rows = _rows(spec, grid)
        best = best_row(rows, spec.config.metric, spec.config.mode)
        if best is None:
            errors = "\n".join(f"  trial {r.trial_id} {r.params}: {r.error}" for r in rows)
            raise RuntimeError(f"sweep {spec.config.name}: every trial failed (logs under {storage}):\n{errors}")
        env = {k: os.environ[k] for k in _FORWARD_ENV if k in os.environ}
        log.info(
            "sweep %s: best on valid %s (%s %.4f); evaluating it on test",
            spec.config.name,
            best.params,
            spec.config.metric,
            best.metrics[spec.config.metric],
        )
        test = _evaluate(spec.base_raw, best.params, "test", env)
        write_results(out_dir, spec, rows, best, test)
        summary = {f"{split}/{k}": v for split, m in (("valid", best.metrics), ("test", test)) for k, v in m.items()}
        tracker.log(out_dir, metrics=summary, params={"best": best.params})
    return SweepResult(out_dir=out_dir, best_config=dict(best.params), valid=dict(best.metrics), test=test, trials=rows)
