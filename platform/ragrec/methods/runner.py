"""``ragrec run`` for every method: build the stages, tune, score the test samples, compare with zero-shot
and the trivial baselines (and the fusion, where the method has one), and write the run folder.

The folder ``<output_dir>/<name>/`` holds ``report.md`` (+ plots), ``metrics.json``, ``predictions.parquet``
and ``run.json`` (what ``ragrec serve`` opens).
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pyarrow as pa

from ..config import RunConfig
from .base import get_method
from .common import RunResult, artifacts_note, finish_report, loss_plots, preds_row, trivial_note, write_run_folder

log = logging.getLogger("ragrec.run")


def run(cfg: RunConfig, force: tuple[str, ...] = ()) -> RunResult:
    """Run ``cfg``'s method end to end and write the report into ``cfg.run_dir()``."""

    from ..evaluation.baselines import trivial_baselines
    from ..evaluation.metrics import auc_decomposition
    from ..evaluation.report import decomposition_note, plot_auc_bars

    method = get_method(cfg.method)
    t0 = time.perf_counter()
    pipe = method.pipeline(cfg, force)
    if pipe.task == "rerank":
        from .ranking import run_rerank

        return run_rerank(method, pipe, cfg, t0)
    if pipe.task == "full_ranking":
        from .full_ranking import run_full_ranking

        return run_full_ranking(method, pipe, cfg, t0)
    pipe.upstream()
    adapter = pipe.adapter()
    pipe.arts["lora"] = adapter
    preds, pipe.arts["scores"] = pipe.predict(adapter)

    labels, users = preds.column("label").to_numpy(), preds.column("user_id").to_numpy()
    probs = preds.column("prob").to_numpy()
    main = method.title if adapter else f"{method.title} (zero-shot)"
    rows = [preds_row(main, preds, probs, cfg)]
    others: dict[str, np.ndarray] = {}
    if adapter is not None and cfg.eval.zero_shot:
        zs, pipe.arts["scores_zero_shot"] = pipe.predict(None)
        others["zero-shot (untuned)"] = zs.column("prob").to_numpy()
        preds = preds.append_column("prob_zero_shot", zs.column("prob"))
    trivial = trivial_baselines(pipe.train_interactions(), preds)
    others.update(trivial)
    rows += [preds_row(name, preds, p, cfg, against=probs) for name, p in others.items()]
    fusion = pipe.run_fusion(preds, main) if cfg.eval.fusion else None
    if fusion is not None:
        for col, values in fusion.columns.items():  # p_fused, p_fused_no_llm in predictions.parquet
            preds = preds.append_column(col, pa.array(values.astype(np.float32)))

    run_dir, counts = write_run_folder(cfg, method, pipe, preds)
    counts["train_examples"] = pipe.arts["examples"].manifest()["rows"] if adapter else 0
    wall = time.perf_counter() - t0
    notes = [
        f"wall time {wall:.0f} s",
        *pipe.report_notes(),
        artifacts_note(pipe.arts),
        decomposition_note(main, auc_decomposition(users, labels, probs)),
        *trivial_note([rows[0], *rows[len(rows) - len(trivial) :]], len(trivial)),
    ]
    extra = pipe.report_metrics()
    sections: dict[str, str] = {}
    if fusion is not None:
        rows += fusion.rows
        notes += fusion.notes
        sections.update(fusion.sections)
        extra.update(fusion.metrics)
    plots = {"auc": lambda p: plot_auc_bars(rows, p), **loss_plots(pipe.arts, pipe.loss_stages)}
    metrics = finish_report(
        run_dir, method, cfg, counts, rows, wall, extra, notes=notes, plots=plots, sections=sections, reference=main
    )
    log.info(
        "%s %s: AUC %.4f  UAUC %.4f  LogLoss %.4f  (%d samples, %.0f s) -> %s",
        method.title,
        cfg.data.name,
        rows[0]["auc"],
        rows[0].get("uauc", float("nan")),
        rows[0]["logloss"],
        preds.num_rows,
        wall,
        run_dir / "report.md",
    )
    return RunResult(run_dir, metrics, dict(pipe.arts))
