"""The four methods, each a short pipeline of cached stages. ``run(cfg)`` dispatches on ``cfg.method``."""

from __future__ import annotations

from ..config import RunConfig


def run(cfg: RunConfig, force: tuple[str, ...] = ()):
    if cfg.method == "rallrec":
        from .rallrec import run as run_rallrec

        return run_rallrec(cfg, force=force)
    raise ValueError(f"method '{cfg.method}' is not implemented yet")
