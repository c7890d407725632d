"""``ragrec evaluate`` for ER2ALM: the paper's Table 3 baselines, Table 4 ablations and Figure 4 sweeps, on the
same full-ranking split.

Rows (``eval.variants``; each a config override of the run's config, its models cached per seed):
**BPR-MF** (LightGCN without propagation), **LightGCN**, **LLMRec-style** (LLM augmentation + side information:
aspects written without retrieval, no noise control), **ER2ALM**, and the ablations **w/o item information**,
**w/o user information**, **w/o noise control**, **w/o augmentation**. Every row has Recall / NDCG /
Precision@{10, 20, 50} over ``gnn.seeds`` seeds (mean ± sd and the 95% t interval of Recall@20), the user-level
interval of Recall@20 and its paired difference to ER2ALM; the popularity ranking is the trivial row.

Sweeps (Figure 4, ``eval.sweep_seeds`` seeds per point): noise.tau, noise.bank_size (N), noise.theta and
augment.eta. None of them regenerates text: noise control and the GNN are retrained, the LLM stages are shared.
The report (``runs/<name>/evaluate/``, beside the run's own) is rewritten after each row and point, so an
interrupted evaluation shows what it measured and a rerun reuses every finished model.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from ..artifacts import Artifact
from ..config import RunConfig
from ..evaluation.report import plot_curve, plot_histories, plot_ranking_bars, write_report
from .base import get_method
from .common import RunResult
from .er2alm import BPR_MF, LIGHTGCN, MAIN
from .evaluation import Variant, by_name, variant_config
from .full_ranking import (
    CI_METRIC,
    POPULARITY,
    PROTOCOL_NOTE,
    embedding_scorer,
    format_full_rows,
    full_row,
    per_user_runs,
    popularity_scorer,
    trivial_notes,
)

log = logging.getLogger("ragrec.evaluate")


@dataclass(frozen=True)
class ModelVariant(Variant):
    """A row: the shared :class:`Variant` (its config overrides) plus the model ``kind`` it trains."""

    kind: str = MAIN


VARIANTS = by_name(
    ModelVariant("bpr_mf", "BPR-MF", "baselines", kind=BPR_MF),
    ModelVariant("lightgcn", "LightGCN", "baselines", kind=LIGHTGCN),
    ModelVariant(
        "llmrec",
        "LLMRec-style (augmentation + side info, no RAG, no noise control)",
        "baselines",
        overrides={"rag.enabled": False, "noise.enabled": False},
    ),
    ModelVariant("er2alm", "ER2ALM", "baselines"),
    ModelVariant("no_item", "w/o item information", "ablations", overrides={"gnn.use_items": False}),
    ModelVariant("no_user", "w/o user information", "ablations", overrides={"gnn.use_users": False}),
    ModelVariant("no_noise", "w/o noise control", "ablations", overrides={"noise.enabled": False}),
    ModelVariant("no_aug", "w/o augmentation", "ablations", overrides={"augment.enabled": False}),
)
SWEEPS = (
    ("noise.tau", "tau_sweep", "Gumbel temperature τ"),
    ("noise.bank_size", "bank_sweep", "retain/abandon size N"),
    ("noise.theta", "theta_sweep", "reliability threshold θ"),
    ("augment.eta", "eta_sweep", "augmentation factor η"),
)
SWEEP_METRICS = ("recall@20", "ndcg@20", "precision@20")
LIGHTGCN_ANCHOR = (
    "sanity anchor: no published LightGCN figure for MovieLens-100K under this exact protocol (positives rating > 3, "
    "per-user random 8:1:1, all-ranking) was found to compare with; the ER2ALM paper's LightGCN Recall@20 is "
    "0.2660 on its MovieLens-10M subset (Table 3: 12,237 users, 10,681 items), another dataset and density, so "
    "only the order of magnitude is comparable"
)


def _runs(pipe, v: ModelVariant, cfg: RunConfig, mats, seeds: int | None = None) -> tuple[list[dict], list[Artifact]]:
    """The per-user metrics of ``v``'s models (one per seed) and the models."""
    vcfg = variant_config(cfg, v.overrides) if v.overrides else cfg
    arts = pipe.models(vcfg, v.kind, seeds)
    return per_user_runs([embedding_scorer(a) for a in arts], mats), arts


def kept_epochs(arts: list[Artifact]) -> list[int]:
    """Per model, how many epochs its kept weights trained: up to the best validation epoch (gnn.patience) or
    all of them."""
    out = []
    for a in arts:
        last = a.read_json("history")[-1]
        out.append(int(last.get("best_epoch", last["epoch"])) + 1)
    return out


OWN_LLM_STAGES = ("llmrec",)  # rows whose variant needs LLM generations of its own (aspects, profiles w/o RAG)


def evaluation_order(names: list[str]) -> tuple[list[str], list[str], list[str]]:
    """``(first, cheap, last)``: ER2ALM (every other row is paired against it), the rows that reuse its LLM
    stages (GNN trainings only; the sweeps follow them), then the rows that generate their own texts."""
    first = ["er2alm"] if "er2alm" in names else []
    cheap = [n for n in names if n != "er2alm" and n not in OWN_LLM_STAGES]
    return first, cheap, [n for n in names if n in OWN_LLM_STAGES]


def evaluate(cfg: RunConfig, force: tuple[str, ...] = ()) -> RunResult:
    """The rows, ablations and sweeps (module docstring) on ``cfg``'s split."""
    t0 = time.perf_counter()
    method = get_method("er2alm")
    pipe = method.evaluation_pipeline(cfg, force)
    pipe.noise_control()  # the kept aspects per aspect in the report's notes
    mats = pipe.split_matrices()
    names = cfg.eval.variants_for("er2alm")
    pop = full_row(POPULARITY, per_user_runs([popularity_scorer(mats["train"])], mats), cfg)
    runs: dict[str, list[dict]] = {}
    curves: dict[str, list[dict]] = {}  # each row's first model's training history (validation Recall@20)
    rows: dict[str, dict] = {}
    sweeps: dict[str, list[dict]] = {}
    run_dir = cfg.run_dir() / "evaluate"  # beside the run's own report, as the other methods' evaluations

    def write() -> None:
        vs = versus_lightgcn(runs, cfg, names)
        _write(run_dir, cfg, method, pipe, names, rows, pop, sweeps, time.perf_counter() - t0, vs, curves)

    def row(name: str) -> None:
        v = VARIANTS[name]
        runs[name], arts = _runs(pipe, v, cfg, mats)
        curves[v.label] = arts[0].read_json("history")
        ref = runs.get("er2alm") if name != "er2alm" else None
        rows[name] = full_row(v.label, runs[name], cfg, ref, "ER2ALM" if ref is not None else None) | {
            "key": name,
            "table": v.table,
            "epochs": kept_epochs(arts),
        }
        r = rows[name]
        log.info(
            "%-40s Recall@20 %.4f  NDCG@20 %.4f  P@20 %.4f", r["name"], r["recall@20"], r["ndcg@20"], r["precision@20"]
        )
        write()

    first, cheap, last = evaluation_order(names)
    for name in first + cheap:  # ER2ALM first: every other row's difference is paired against it
        row(name)
    for field, attr, _ in SWEEPS:
        for value in getattr(cfg.eval, attr):
            v = ModelVariant(f"{field}={value}", f"{field}={value}", "sweep", overrides={field: value})
            pt_runs, arts = _runs(pipe, v, cfg, mats, cfg.eval.sweep_seeds)
            r = full_row(v.label, pt_runs, cfg) | {"value": value, "epochs": kept_epochs(arts)}
            sweeps.setdefault(field, []).append(r)
            log.info("sweep %-34s Recall@20 %.4f  NDCG@20 %.4f", v.label, r["recall@20"], r["ndcg@20"])
            write()
    for name in last:  # rows with LLM generations of their own: an interrupted evaluation has the rest already
        row(name)
    write()
    metrics = {
        "rows": [rows[n] for n in names if n in rows],
        "sweeps": sweeps,
        "popularity": pop,
        "vs_lightgcn": versus_lightgcn(runs, cfg, names),
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "table": format_full_rows([*[rows[n] for n in names if n in rows], pop]),  # what `ragrec evaluate` prints
    }
    return RunResult(run_dir, metrics, dict(pipe.arts))


def versus_lightgcn(runs: dict[str, list[dict]], cfg: RunConfig, names: list[str]) -> list[dict]:
    """Every finished row but LightGCN against LightGCN, paired on the same users (and seeds): does the row's LLM
    part add anything over the collaborative model? (The main table pairs every row with ER2ALM.)"""
    if "lightgcn" not in runs:
        return []
    return [
        full_row(VARIANTS[n].label, runs[n], cfg, runs["lightgcn"], "LightGCN") | {"key": n}
        for n in names
        if n in runs and n != "lightgcn"
    ]


def _versus_table(rows: list[dict]) -> str:
    out = [
        "| row | R@20 | ΔR@20 vs LightGCN [95% CI, users] | [95% CI, seeds] |",
        "|---|---|---|---|",
    ]
    for r in rows:
        star = " *" if r["delta_lo"] > 0 or r["delta_hi"] < 0 else ""
        seeds = f"[{r['delta_slo']:+.4f}, {r['delta_shi']:+.4f}]" if "delta_slo" in r else "—"
        out.append(
            f"| {r['name']} | {r['recall@20']:.4f} | {r['delta']:+.4f} [{r['delta_lo']:+.4f}, {r['delta_hi']:+.4f}]"
            f"{star} | {seeds} |"
        )
    return "\n".join(out)


def gain_note(rows: dict[str, dict]) -> list[str]:
    """Whether ER2ALM's Recall@20 over LightGCN is a measured gain (the paired user-level interval excludes 0)."""
    lg = rows.get("lightgcn")
    if lg is None or "er2alm" not in rows:
        return []
    d, lo, hi = -lg["delta"], -lg["delta_hi"], -lg["delta_lo"]
    verdict = (
        "a measured gain" if lo > 0 else ("a measured LOSS" if hi < 0 else "NOT a measured gain (interval spans 0)")
    )
    return [f"ER2ALM − LightGCN Recall@20 {d:+.4f} [{lo:+.4f}, {hi:+.4f}] (users, paired): {verdict}"]


def epochs_note(cfg: RunConfig, shown: list[dict]) -> str:
    """How many epochs each row's kept models trained (per seed), and by which rule."""
    rule = (
        f"the best validation Recall@20 of at most {cfg.gnn.epochs} (gnn.patience={cfg.gnn.patience})"
        if cfg.gnn.patience is not None
        else f"all {cfg.gnn.epochs}, the last kept (gnn.patience: null)"
    )
    per_row = "; ".join(f"{r['name']} {'/'.join(map(str, r['epochs']))}" for r in shown if r.get("epochs"))
    return f"epochs kept per seed ({rule}): {per_row}"


def _write(
    run_dir, cfg, method, pipe, names, rows: dict, pop: dict, sweeps: dict, wall: float, vs: list, curves: dict
) -> None:
    shown = [rows[n] for n in names if n in rows]
    sections = {}
    for table, heading in (("baselines", "Baselines and ER2ALM (Table 3)"), ("ablations", "Ablations (Table 4)")):
        part = [r for r in shown if r["table"] == table]
        if part:
            sections[heading] = format_full_rows([*part, pop] if table == "baselines" else part)
    if vs:
        sections["Against LightGCN (the collaborative model, paired; * = interval excludes 0)"] = _versus_table(vs)
    for field, _, title in SWEEPS:
        if field in sweeps:
            sections[f"Sweep: {title} ({field}, Figure 4)"] = _sweep_table(sweeps[field])
    lg = rows.get("lightgcn")
    notes = [
        f"wall time {wall:.0f} s; {cfg.gnn.seeds} seeds per row, {cfg.eval.sweep_seeds} per sweep point",
        PROTOCOL_NOTE,
        *pipe.report_notes(),
        *gain_note(rows),
        epochs_note(cfg, shown),
        *trivial_notes([*shown, pop]),
        LIGHTGCN_ANCHOR + (f"; LightGCN here: Recall@20 {lg['recall@20']:.4f}" if lg else ""),
    ]
    plots = pipe.report_plots()
    if shown:
        plots["recall"] = lambda p: plot_ranking_bars([*shown, pop], p, CI_METRIC)
        plots["valid_curves"] = lambda p: plot_histories(curves, "recall@20", p, "validation Recall@20 (first seed)")
    for field, pts in sweeps.items():
        plots[f"sweep_{field.replace('.', '_')}"] = lambda p, pts=pts, field=field: plot_curve(
            [pt["value"] for pt in pts], {m: [pt[m] for pt in pts] for m in SWEEP_METRICS}, p, field, "metric"
        )
    write_report(
        run_dir,
        title=f"ER2ALM evaluation on {cfg.data.name}",
        config=method.config_dict(cfg),
        counts={"evaluated users": pop["n"], "items": int(pipe.split_matrices()["train"].shape[1])},
        rows=shown,
        notes=notes,
        plots=plots,
        sections=sections,
        extra={"sweeps": sweeps, "popularity": pop, "vs_lightgcn": vs, **pipe.report_metrics()},
        table=format_full_rows([*shown, pop]),
    )


def _sweep_table(pts: list[dict]) -> str:
    out = [
        "| value | Recall@20 | NDCG@20 | Precision@20 | Recall@20 [95% CI, users] | seeds |",
        "|---|---|---|---|---|---|",
    ]
    for p in pts:
        out.append(
            f"| {p['value']} | {p['recall@20']:.4f} | {p['ndcg@20']:.4f} | {p['precision@20']:.4f} "
            f"| [{p['recall@20_lo']:.4f}, {p['recall@20_hi']:.4f}] | {p['seeds']} |"
        )
    return "\n".join(out)
