"""The methods, each a short pipeline of cached stages behind one contract (:mod:`ragrec.methods.base`).

``run(cfg)`` and ``evaluate(cfg)`` dispatch through the registry on ``cfg.method``; see
``docs/architecture.md`` for the contract and how to add a method.
"""

from __future__ import annotations

from ..config import RunConfig
from .base import METHODS, Method, MethodPipeline, get_method
from .common import RunResult, load_run


def run(cfg: RunConfig, force: tuple[str, ...] = ()) -> RunResult:
    """``ragrec run``: the method of ``cfg`` end to end (:func:`ragrec.methods.runner.run`)."""
    from .runner import run as run_method

    with _tracker(cfg, "run") as tracker:
        result = run_method(cfg, force=force)
        tracker.log(result.run_dir)
    return result


def evaluate(cfg: RunConfig, force: tuple[str, ...] = ()):
    """``ragrec evaluate``: the method's paper evaluation (variants, baselines, sweeps) on ``cfg``'s test samples."""
    with _tracker(cfg, "evaluate") as tracker:
        result = get_method(cfg.method).evaluate(cfg, force=force)
        tracker.log(result.run_dir)
    return result


def _tracker(cfg: RunConfig, command: str):
    """The ``tracking`` section's tracker of one command (:mod:`ragrec.tracking`; ``none``: logs nothing)."""
    from ..tracking import track

    tags = {"ragrec.method": cfg.method, "ragrec.dataset": cfg.data.name}
    config = get_method(cfg.method).config_dict(cfg)
    return track(cfg.tracking, name=cfg.name, command=command, root=cfg.run_dir(), config=config, tags=tags)


def evaluate_split(cfg: RunConfig, split_name: str = "valid", force: tuple[str, ...] = ()) -> dict:
    """Train what ``cfg`` needs (cached stages are reused) and score one split: the Tune objective.

    Returns ``{"auc", "logloss", "acc", "n", "split"}`` of ``cfg``'s method on ``split_name`` (ranking methods:
    ``map@k`` / ``ndcg@k`` instead of the CTR metrics; full-ranking ones ``recall@k`` / ``ndcg@k`` / ``precision@k``).
    """
    from ..evaluation.metrics import ctr_metrics

    pipe = get_method(cfg.method).pipeline(cfg, force)
    pipe.upstream()
    if pipe.task == "full_ranking":  # Recall / NDCG / Precision@k over every unseen item
        from .full_ranking import split_metrics as full_split_metrics

        return full_split_metrics(pipe, split_name)
    preds, _ = pipe.predict(pipe.adapter(), split_name=split_name)
    if pipe.task == "rerank":
        from .ranking import split_metrics

        return split_metrics(preds, split_name)
    m = ctr_metrics(preds.column("label").to_numpy(), preds.column("prob").to_numpy())
    return {**{k: float(v) for k, v in m.items()}, "n": preds.num_rows, "split": split_name}


__all__ = [
    "METHODS",
    "Method",
    "MethodPipeline",
    "RunResult",
    "evaluate",
    "evaluate_split",
    "get_method",
    "load_run",
    "run",
]
