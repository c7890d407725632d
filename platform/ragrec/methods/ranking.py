"""``ragrec run`` for ranking methods (:class:`~ragrec.methods.base.RankingPipeline`, the ``rerank`` task): the
method's rows, the trivial popularity ranking, MAP@k / NDCG@k with user-level intervals, and the run folder.

The run folder is the CTR runner's: ``report.md`` (+ ``ndcg.png``), ``metrics.json``, ``predictions.parquet``
(the evaluated lists with the method's scores) and ``run.json``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa

from ..config import RunConfig
from ..evaluation.report import RANK_KS
from .common import RunResult, artifacts_note, finish_report, popularity_notes, write_run_folder

log = logging.getLogger("ragrec.run")

CI_METRIC = "ndcg@5"
POPULARITY = "popularity (train positives)"


def ranking_row(
    name: str,
    scores: np.ndarray,
    target_index: np.ndarray,
    users: np.ndarray,
    cfg: RunConfig,
    against: np.ndarray | None = None,
    reference: str | None = None,
) -> dict:
    """One report row: MAP@k / NDCG@k (k in :data:`RANK_KS`), the user-level bootstrap interval of NDCG@5, and
    with ``against`` (the reference row's scores on the same lists) the paired user-level interval of the
    NDCG@5 difference."""
    from ..evaluation.ranking import bootstrap_mean_ci, bootstrap_mean_delta_ci, per_sample_ranking_metrics

    per = per_sample_ranking_metrics(scores, target_index, RANK_KS)
    row: dict = {"name": name, **{k: float(v.mean()) for k, v in per.items()}, "n": len(target_index)}
    n, seed = cfg.eval.bootstrap, cfg.seed
    row[f"{CI_METRIC}_lo"], row[f"{CI_METRIC}_hi"] = bootstrap_mean_ci(per[CI_METRIC], users, n=n, seed=seed)
    if against is not None:
        ref = per_sample_ranking_metrics(against, target_index, RANK_KS)[CI_METRIC]
        row["delta"], row["delta_lo"], row["delta_hi"] = bootstrap_mean_delta_ci(
            per[CI_METRIC], ref, users, n=n, seed=seed
        )
        row["reference"] = reference
    return row


def ranking_rows(
    rankings: Mapping[str, np.ndarray],
    target_index: np.ndarray,
    users: np.ndarray,
    cfg: RunConfig,
    pairs: Sequence[tuple[str, str]] = (),
) -> list[dict]:
    """A row per ranking (in order); rows named first in ``pairs`` get the paired difference to the second."""
    ref_of = dict(pairs)
    return [
        ranking_row(
            name,
            s,
            target_index,
            users,
            cfg,
            against=rankings[ref_of[name]] if name in ref_of else None,
            reference=ref_of.get(name),
        )
        for name, s in rankings.items()
    ]


def popularity_scores(train_counts: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """``(N, C)`` the trivial ranking: each candidate's number of training positives."""
    return train_counts[candidates].astype(np.float32)


def trivial_notes(rows: Sequence[dict], popularity: str = POPULARITY) -> list[str]:
    """Which rows beat the popularity ranking on NDCG@5 with a user-level interval above it (a reranker below it
    is a bug until shown otherwise)."""
    return popularity_notes(rows, CI_METRIC, "NDCG@5", popularity)


def run_rerank(method, pipe, cfg: RunConfig, t0: float) -> RunResult:
    """``ragrec run`` of a ranking method (see the module docstring)."""

    from ..evaluation.report import format_ranking_rows, plot_ranking_bars

    pipe.upstream()
    preds, pipe.arts["scores"] = pipe.predict()
    rankings = pipe.rankings()
    lists = pipe.eval_lists("test")
    counts_items = pipe.train_positive_counts()
    rankings = {**rankings, POPULARITY: popularity_scores(counts_items, lists.candidates)}
    rows = ranking_rows(rankings, lists.target_index, lists.users, cfg, pipe.pairs(list(rankings)))

    run_dir, counts = write_run_folder(cfg, method, pipe, preds)
    counts["candidates per list"] = int(lists.candidates.shape[1])
    wall = time.perf_counter() - t0
    notes = [
        f"wall time {wall:.0f} s",
        "MAP@k divides by the hits in the top k (KAR / LibRerank); NDCG@k has one relevant item per list. "
        "Intervals: user-level bootstrap (users resampled with all their lists); Δ = paired difference of NDCG@5 "
        "on the same lists, * = its interval excludes 0.",
        *pipe.report_notes(),
        *trivial_notes(rows),
        artifacts_note(pipe.arts),
    ]
    extra = pipe.report_metrics()
    plots = {"ndcg": lambda p: plot_ranking_bars(rows, p, CI_METRIC)}
    table = format_ranking_rows(rows, RANK_KS, CI_METRIC)
    metrics = finish_report(run_dir, method, cfg, counts, rows, wall, extra, notes=notes, plots=plots, table=table)
    for r in rows:
        log.info("%-28s NDCG@5 %.4f  NDCG@10 %.4f  MAP@10 %.4f", r["name"], r["ndcg@5"], r["ndcg@10"], r["map@10"])
    log.info("%s %s: %d lists, %.0f s -> %s", method.title, cfg.data.name, preds.num_rows, wall, run_dir / "report.md")
    return RunResult(run_dir, metrics, dict(pipe.arts))


def split_metrics(preds: pa.Table, split_name: str) -> dict:
    """``evaluate_split``'s metrics of ranking predictions: MAP@k / NDCG@k means, ``n`` and ``split``."""
    from ..evaluation.ranking import ranking_metrics

    scores = np.stack(preds.column("scores").to_numpy(zero_copy_only=False))
    m = ranking_metrics(scores, preds.column("target_index").to_numpy(), RANK_KS)
    return {**{k: float(v) for k, v in m.items()}, "n": preds.num_rows, "split": split_name}
