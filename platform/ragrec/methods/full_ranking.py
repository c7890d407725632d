"""``ragrec run`` for full-ranking methods (:class:`~ragrec.methods.base.FullRankingPipeline`, the
``full_ranking`` task): the method's rows (one model per seed), the trivial popularity ranking, Recall / NDCG /
Precision@{10, 20, 50} over every item the user has no training positive of, and the run folder.

Intervals of a row (``docs/architecture.md`` §7):

* over seeds: the mean and sample deviation of each metric over the row's seeds and, for Recall@20, the 95%
  Student-t interval of that mean (the paper averages five runs);
* over users: the user-level bootstrap interval of Recall@20 (each user's value averaged over the seeds);
* against a reference row (:meth:`~ragrec.methods.base.FullRankingPipeline.pairs`): the paired difference of
  Recall@20 on the same users (user-level bootstrap) and, with two or more seeds, its t interval over the seeds
  paired by seed index.

The run folder is the other runners': ``report.md`` (+ ``recall.png``, the loss plot and the method's ``report_plots``,
e.g. ER2ALM's ``picks.png``), ``metrics.json``,
``predictions.parquet`` (each test user's top 50 of the method's first seed) and ``run.json``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from ..artifacts import Artifact
from ..config import RunConfig
from ..evaluation.full_ranking import DEFAULT_FULL_KS, multi_seed_summary, per_user_full_ranking, seed_interval
from .common import RunResult, artifacts_note, finish_report, loss_plots, popularity_notes, write_run_folder

log = logging.getLogger("ragrec.run")

CI_METRIC = "recall@20"
POPULARITY = "popularity (train positives)"
METRICS = tuple(f"{m}@{k}" for k in DEFAULT_FULL_KS for m in ("recall", "ndcg", "precision"))
PROTOCOL_NOTE = (
    "all-ranking: every item without a training positive of the user is ranked (validation items stay in the "
    "ranking of the test split and count as misses, as in LightGCN / LLMRec); users with a test positive; ties "
    "count against the model. Recall@20 interval over seeds: 95% Student-t of the mean; over users: user-level "
    "bootstrap of the seed-averaged values; Δ = paired difference to the reference row, * = its interval "
    "excludes 0."
)

Scorer = Callable[[np.ndarray], np.ndarray]


def embedding_scorer(art: Artifact) -> Scorer:
    """``users -> (B, I)`` inner products of a model artifact's ``user_emb.npy`` and ``item_emb.npy``."""
    ue, ie = np.load(art.path / "user_emb.npy"), np.load(art.path / "item_emb.npy")
    return lambda users: ue[users] @ ie.T


def popularity_scorer(train) -> Scorer:
    """The trivial ranking: each item's number of training positives (the same list for every user)."""
    counts = np.asarray(train.sum(axis=0)).ravel().astype(np.float32)
    return lambda users: np.broadcast_to(counts, (len(users), len(counts)))


def per_user_runs(scorers: Sequence[Scorer], mats: Mapping, split_name: str = "test") -> list[dict]:
    """:func:`~ragrec.evaluation.full_ranking.per_user_full_ranking` of each seed's scorer on ``split_name``
    (training positives excluded)."""
    return [
        per_user_full_ranking(None, None, mats["train"], mats[split_name], DEFAULT_FULL_KS, score_fn=f) for f in scorers
    ]


def full_row(
    name: str,
    runs: Sequence[dict],
    cfg: RunConfig,
    against: Sequence[dict] | None = None,
    reference: str | None = None,
) -> dict:
    """One report row from the per-user results of each seed (module docstring for the intervals)."""
    from ..evaluation.ranking import bootstrap_mean_ci, bootstrap_mean_delta_ci

    means = [{m: float(r[m].mean()) for m in METRICS} for r in runs]
    summary = multi_seed_summary(means)
    row: dict = {"name": name, **{m: s["mean"] for m, s in summary.items()}}
    row.update({f"{m}_sd": s["std"] for m, s in summary.items()})
    row[f"{CI_METRIC}_slo"], row[f"{CI_METRIC}_shi"] = seed_interval([x[CI_METRIC] for x in means])
    per_user = np.mean([r[CI_METRIC] for r in runs], axis=0)
    n, seed = cfg.eval.bootstrap, cfg.seed
    row[f"{CI_METRIC}_lo"], row[f"{CI_METRIC}_hi"] = bootstrap_mean_ci(per_user, n=n, seed=seed)
    row.update(n=len(per_user), seeds=len(runs), per_seed=[x[CI_METRIC] for x in means])
    if against is not None:
        ref_user = np.mean([r[CI_METRIC] for r in against], axis=0)
        row["delta"], row["delta_lo"], row["delta_hi"] = bootstrap_mean_delta_ci(per_user, ref_user, n=n, seed=seed)
        if len(runs) == len(against) and len(runs) > 1:
            diff = [float(a[CI_METRIC].mean() - b[CI_METRIC].mean()) for a, b in zip(runs, against)]
            row["delta_slo"], row["delta_shi"] = seed_interval(diff)
        row["reference"] = reference
    return row


def full_rows(runs: Mapping[str, Sequence[dict]], cfg: RunConfig, pairs: Sequence[tuple[str, str]] = ()) -> list[dict]:
    """A row per entry of ``runs`` (in order); rows named first in ``pairs`` get the paired difference."""
    ref_of = dict(pairs)
    return [
        full_row(name, r, cfg, runs[ref_of[name]] if name in ref_of else None, ref_of.get(name))
        for name, r in runs.items()
    ]


def _f(x) -> str:
    return "—" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.4f}"


def format_full_rows(rows: Sequence[Mapping]) -> str:
    """Markdown table: R / N / P @ {10, 20, 50}, Recall@20 over seeds (mean ± sd [t interval]) and over users
    ([bootstrap]), the paired ΔRecall@20 against the row's reference, seeds and users."""
    ks = DEFAULT_FULL_KS
    head = ["row", *[f"{m}@{k}" for k in ks for m in ("R", "N", "P")]]
    head += ["R@20 ± sd over seeds [95% CI, seeds]", "R@20 [95% CI, users]"]
    has_delta = any(r.get("delta") is not None for r in rows)
    head += ["ΔR@20 vs reference [95% CI users; seeds]"] if has_delta else []
    head += ["seeds", "users"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    m = CI_METRIC
    for r in rows:
        cells = [str(r["name"]), *[_f(r.get(f"{x}@{k}")) for k in ks for x in ("recall", "ndcg", "precision")]]
        sd = r.get(f"{m}_sd")
        seeds = f"{_f(r[m])} ± {_f(sd)}" if sd is not None and np.isfinite(sd) else _f(r[m])
        if r.get(f"{m}_slo") is not None and np.isfinite(r[f"{m}_slo"]):
            seeds += f" [{_f(r[f'{m}_slo'])}, {_f(r[f'{m}_shi'])}]"
        cells += [seeds, f"{_f(r[m])} [{_f(r.get(f'{m}_lo'))}, {_f(r.get(f'{m}_hi'))}]"]
        if has_delta:
            d = r.get("delta")
            if d is None:
                cells.append("—")
            else:
                star = " *" if r["delta_lo"] > 0 or r["delta_hi"] < 0 else ""
                cell = f"{d:+.4f} [{r['delta_lo']:+.4f}, {r['delta_hi']:+.4f}]"
                if r.get("delta_slo") is not None and np.isfinite(r["delta_slo"]):
                    cell += f"; [{r['delta_slo']:+.4f}, {r['delta_shi']:+.4f}]"
                cells.append(f"{cell}{star} vs {r['reference']}")
        cells += [str(r.get("seeds", 1)), str(r["n"])]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def trivial_notes(rows: Sequence[dict], popularity: str = POPULARITY) -> list[str]:
    """Which rows beat the popularity ranking on Recall@20 with a user-level interval above it."""
    return popularity_notes(rows, CI_METRIC, "Recall@20", popularity)


def model_runs(rankings: Mapping[str, Sequence[Artifact]], mats: Mapping, split_name: str = "test") -> dict:
    """``row -> per-user results per seed`` of every model row, plus the popularity row."""
    runs = {
        name: per_user_runs([embedding_scorer(a) for a in arts], mats, split_name) for name, arts in rankings.items()
    }
    runs[POPULARITY] = per_user_runs([popularity_scorer(mats["train"])], mats, split_name)
    return runs


def run_full_ranking(method, pipe, cfg: RunConfig, t0: float) -> RunResult:
    """``ragrec run`` of a full-ranking method (see the module docstring)."""
    from ..evaluation.report import plot_ranking_bars

    pipe.upstream()
    rankings = pipe.rankings()
    mats = pipe.split_matrices()
    runs = model_runs(rankings, mats)
    rows = full_rows(runs, cfg, pipe.pairs(list(runs)))
    preds, _ = pipe.predict()  # the method's test lists (its model artifact is already in pipe.arts)

    run_dir, counts = write_run_folder(cfg, method, pipe, preds)
    counts["evaluated users"] = rows[0]["n"]
    counts["items"] = int(mats["train"].shape[1])
    wall = time.perf_counter() - t0
    notes = [
        f"wall time {wall:.0f} s",
        PROTOCOL_NOTE,
        *pipe.report_notes(),
        *trivial_notes(rows),
        artifacts_note(pipe.arts),
    ]
    plots = {"recall": lambda p: plot_ranking_bars(rows, p, CI_METRIC), **loss_plots(pipe.arts, pipe.loss_stages)}
    plots |= pipe.report_plots()
    extra = pipe.report_metrics()
    table = format_full_rows(rows)
    metrics = finish_report(run_dir, method, cfg, counts, rows, wall, extra, notes=notes, plots=plots, table=table)
    for r in rows:
        log.info(
            "%-28s Recall@20 %.4f  NDCG@20 %.4f  P@20 %.4f", r["name"], r["recall@20"], r["ndcg@20"], r["precision@20"]
        )
    log.info("%s %s: %d users, %.0f s -> %s", method.title, cfg.data.name, rows[0]["n"], wall, run_dir / "report.md")
    return RunResult(run_dir, metrics, dict(pipe.arts))


def split_metrics(pipe, split_name: str) -> dict:
    """``evaluate_split``'s metrics of a full-ranking pipeline: its first row's Recall / NDCG / Precision@k on
    ``split_name`` (mean over its seeds), ``n`` (users) and ``split``."""
    arts = pipe.main_models()
    runs = per_user_runs([embedding_scorer(a) for a in arts], pipe.split_matrices(), split_name)
    means = multi_seed_summary([{m: float(r[m].mean()) for m in METRICS} for r in runs])
    return {**{m: s["mean"] for m, s in means.items()}, "n": len(runs[0]["user_id"]), "split": split_name}
