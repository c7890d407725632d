"""The four methods, each a short pipeline of cached stages. ``run(cfg)`` dispatches on ``cfg.method``."""

from __future__ import annotations

from ..config import RunConfig


def run(cfg: RunConfig, force: tuple[str, ...] = ()):
    if cfg.method == "rallrec":
        from .rallrec import run as run_rallrec

        return run_rallrec(cfg, force=force)
    if cfg.method == "score":
        from .score import run as run_score

        return run_score(cfg, force=force)
    raise ValueError(f"method '{cfg.method}' is not implemented yet")


def evaluate(cfg: RunConfig, force: tuple[str, ...] = ()):
    """The method's paper evaluation (variants, baselines, sweeps) on ``cfg``'s test samples."""
    if cfg.method == "rallrec":
        from .rallrec_evaluate import evaluate as evaluate_rallrec

        return evaluate_rallrec(cfg, force=force)
    if cfg.method == "score":
        from .score_evaluate import evaluate as evaluate_score

        return evaluate_score(cfg, force=force)
    raise ValueError(f"`ragrec evaluate` is not implemented for method '{cfg.method}' yet")
