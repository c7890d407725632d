"""``ragrec evaluate`` for UR4Rec: the paper's Table 2 rows, the Table 3 ablations and the Figure 4 proxy sweep,
per backbone, on the same test lists.

Rows per backbone (``eval.variants``): **Base**; **+text** (the frozen encoder on titles and genres: the paper's
+BERT row); **+LLM** (the encoder on s_u / s_i without the retriever: +Llama2, w/o Retr.); **UR4Rec**; **w/o CL**
and **w/o PIM** (the retriever pretrained with one objective). Every row has MAP@{1,5,10,20}, NDCG@{1,5,10,20},
a user-level bootstrap interval of NDCG@5 and, against the backbone's Base row, the paired interval of the
NDCG@5 difference. The popularity ranking of the candidates is the trivial row. The proxy sweep retrains the
retriever and the augmented backbone for each K of ``eval.proxy_sweep`` on ``eval.proxy_sweep_backbones``.

Every row is a cached stage, so an interrupted evaluation resumes where it stopped, and the report
(``runs/<name>/evaluate/``, beside the run's own) is rewritten after each backbone.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from ..config import RunConfig
from ..evaluation.report import RANK_KS, format_ranking_rows, plot_curve, plot_ranking_bars, write_report
from .base import get_method
from .common import RunResult
from .evaluation import Variant, by_name, variant_config
from .ranking import CI_METRIC, POPULARITY, popularity_scores, ranking_row, trivial_notes
from .ur4rec import AUG_LLM, AUG_NONE, AUG_TEXT, AUG_UR4REC, BACKBONE_TITLES

log = logging.getLogger("ragrec.evaluate")


@dataclass(frozen=True)
class RankVariant(Variant):
    """A row of a backbone's table: the shared :class:`Variant` plus the augmentation ``kind`` it trains."""

    kind: str = AUG_NONE


VARIANTS = by_name(
    RankVariant("base", "Base", kind=AUG_NONE),
    RankVariant("text", "+text (encoder on titles/genres; paper +BERT)", kind=AUG_TEXT),
    RankVariant("llm", "+LLM (encoder on s_u/s_i, w/o Retr.)", kind=AUG_LLM),
    RankVariant("ur4rec", "UR4Rec", kind=AUG_UR4REC),
    RankVariant("no_cl", "w/o CL", overrides={"ur4rec.use_cl": False}, kind=AUG_UR4REC),
    RankVariant("no_pim", "w/o PIM", overrides={"ur4rec.use_pim": False}, kind=AUG_UR4REC),
)

ABLATIONS = ("no_cl", "no_pim")  # Table 3 rows: only on eval.ablation_backbones
PAPER_ML1M = {  # Table 2, MovieLens-1M Base rows: M@1, M@5, N@1, N@5 (a direction check, another dataset)
    "dlcm": (0.158, 0.235, 0.158, 0.271),
    "prm": (0.156, 0.242, 0.156, 0.283),
    "setrank": (0.154, 0.239, 0.154, 0.279),
    "sasrec": (0.345, 0.505, 0.345, 0.555),
    "gru4rec": (0.240, 0.340, 0.240, 0.383),
}
SWEEP_METRIC = "ndcg@10"


def _scores(pipe, backbone: str, v: RankVariant, cfg: RunConfig) -> np.ndarray:
    vcfg = variant_config(cfg, v.overrides) if v.overrides else cfg
    art = pipe.base(backbone, vcfg) if v.kind == AUG_NONE else pipe.augmented(backbone, v.kind, vcfg)
    return np.load(art.path / "scores_test.npy")


def evaluate(cfg: RunConfig, force: tuple[str, ...] = ()) -> RunResult:
    """The rows, ablations and proxy sweep of every backbone of ``reranker.backbones`` (module docstring)."""
    t0 = time.perf_counter()
    method = get_method("ur4rec")
    pipe = method.evaluation_pipeline(cfg, force)
    lists = pipe.eval_lists("test")
    target, users = lists.target_index, lists.users
    pop = ranking_row(POPULARITY, popularity_scores(pipe.train_positive_counts(), lists.candidates), target, users, cfg)
    names = cfg.eval.variants_for("ur4rec")
    tables: dict[str, list[dict]] = {}
    summary: list[dict] = []
    sweep: dict[str, list[dict]] = {}
    run_dir = cfg.run_dir() / "evaluate"  # beside the run's own report, as the other methods' evaluations

    def write() -> None:
        _write(run_dir, cfg, method, tables, summary, pop, sweep, len(lists), time.perf_counter() - t0)

    for b in cfg.reranker.backbones:
        title = BACKBONE_TITLES[b]
        base = _scores(pipe, b, VARIANTS["base"], cfg)
        rows = []
        for name in names:
            if name in ABLATIONS and b not in cfg.eval.ablation_backbones:
                continue
            v = VARIANTS[name]
            s = base if name == "base" else _scores(pipe, b, v, cfg)
            ref = None if name == "base" else base
            row = ranking_row(f"{title} {v.label}", s, target, users, cfg, ref, None if ref is None else "Base")
            rows.append(row | {"variant": name, "backbone": b})
            log.info("%-40s NDCG@5 %.4f  NDCG@10 %.4f", row["name"], row["ndcg@5"], row["ndcg@10"])
        tables[b] = rows
        by = {r["variant"]: r for r in rows}
        if "ur4rec" in by:
            summary.append(by["ur4rec"] | {"name": title, "base_ndcg@5": by.get("base", {}).get("ndcg@5")})
        write()
    for b in (b for b in cfg.eval.proxy_sweep_backbones if cfg.eval.proxy_sweep):
        pts = []
        base = _scores(pipe, b, VARIANTS["base"], cfg)  # each K paired with the backbone's Base on the same lists
        for k in cfg.eval.proxy_sweep:
            s = _scores(pipe, b, RankVariant(f"k{k}", f"K={k}", overrides={"ur4rec.proxies": k}, kind=AUG_UR4REC), cfg)
            row = ranking_row(f"{BACKBONE_TITLES[b]} K={k}", s, target, users, cfg, base, "Base")
            pts.append(row | {"k": k})
        sweep[b] = pts
        write()
    write()
    metrics = {
        "tables": tables,
        "sweep": sweep,
        "popularity": pop,
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "table": _summary_table(summary) if summary else format_ranking_rows([pop], RANK_KS, CI_METRIC),
    }
    return RunResult(run_dir, metrics, dict(pipe.arts))


def _write(run_dir, cfg, method, tables, summary, pop, sweep, n_lists: int, wall: float) -> None:
    sections: dict[str, str] = {}
    for b, rows in tables.items():
        sections[f"{BACKBONE_TITLES[b]}"] = format_ranking_rows([*rows, pop], RANK_KS, CI_METRIC)
    if sweep:
        sections["Proxy count K (Figure 4)"] = _sweep_table(sweep)
    all_rows = [r for rows in tables.values() for r in rows]
    notes = [
        f"wall time {wall:.0f} s; {n_lists} test lists of {cfg.data.rerank.num_candidates} candidates",
        "MAP@k divides by the hits in the top k (KAR / LibRerank). Intervals: user-level bootstrap; Δ = paired "
        "NDCG@5 difference against the backbone's Base row on the same lists, * = its interval excludes 0.",
        f"Ablations w/o CL and w/o PIM on {', '.join(BACKBONE_TITLES[b] for b in cfg.eval.ablation_backbones)} "
        "only (eval.ablation_backbones; the paper's Table 3 uses PRM and GRU4Rec).",
        *trivial_notes([*all_rows, pop]),
        *_anchor_notes(tables),
    ]
    plots = {}
    if all_rows:
        plots["ndcg"] = lambda p: plot_ranking_bars([*all_rows, pop], p, CI_METRIC)
    if sweep:
        plots["proxy_sweep"] = lambda p: plot_curve(
            [pt["k"] for pt in next(iter(sweep.values()))],
            {BACKBONE_TITLES[b]: [pt[SWEEP_METRIC] for pt in pts] for b, pts in sweep.items()},
            p,
            "proxies K",
            SWEEP_METRIC.upper(),
        )
    write_report(
        run_dir,
        title=f"UR4Rec evaluation on {cfg.data.name}",
        config=method.config_dict(cfg),
        counts={"test lists": n_lists, "candidates per list": cfg.data.rerank.num_candidates},
        rows=all_rows,
        notes=notes,
        plots=plots,
        sections=sections,
        extra={"tables": tables, "sweep": sweep, "popularity": pop},
        table=_summary_table(summary) if summary else format_ranking_rows([pop], RANK_KS, CI_METRIC),
    )


def _paired_cells(r: dict) -> str:
    """``NDCG@5 [lo, hi] | Δ [lo, hi]`` of a row paired with Base (``*``: the Δ interval excludes 0) and its
    NDCG@10 and MAP@10."""
    star = " *" if r["delta_lo"] > 0 or r["delta_hi"] < 0 else ""
    return (
        f"{r['ndcg@5']:.4f} [{r['ndcg@5_lo']:.4f}, {r['ndcg@5_hi']:.4f}] "
        f"| {r['delta']:+.4f} [{r['delta_lo']:+.4f}, {r['delta_hi']:+.4f}]{star} | {r['ndcg@10']:.4f} "
        f"| {r['map@10']:.4f}"
    )


def _summary_table(summary: list[dict]) -> str:
    head = (
        "| backbone | Base NDCG@5 | UR4Rec NDCG@5 [95% CI, users] | Δ vs Base [95% CI, users] | NDCG@10 | MAP@10 | n |"
    )
    out = [head, "|---|---|---|---|---|---|---|"]
    out += [f"| {r['name']} | {r['base_ndcg@5']:.4f} | {_paired_cells(r)} | {r['n']} |" for r in summary]
    return "\n".join(out)


def _sweep_table(sweep: dict[str, list[dict]]) -> str:
    """One row per backbone and K: NDCG@5 with its user-level interval and the paired difference to the
    backbone's Base on the same lists."""
    head = "| backbone | K | NDCG@5 [95% CI, users] | Δ vs Base [95% CI, users] | NDCG@10 | MAP@10 |"
    out = [head, "|---|---|---|---|---|---|"]
    out += [f"| {BACKBONE_TITLES[b]} | {p['k']} | {_paired_cells(p)} |" for b, pts in sweep.items() for p in pts]
    return "\n".join(out)


def _anchor_notes(tables: dict[str, list[dict]]) -> list[str]:
    """Each Base row next to the paper's MovieLens-1M Base (another dataset: a direction check, not a target)."""
    out = []
    for b, rows in tables.items():
        base = next((r for r in rows if r["variant"] == "base"), None)
        if base is None:
            continue
        m1, m5, _, n5 = PAPER_ML1M[b]
        out.append(
            f"{BACKBONE_TITLES[b]} Base here: MAP@1 {base['map@1']:.3f}, MAP@5 {base['map@5']:.3f}, NDCG@5 "
            f"{base['ndcg@5']:.3f}; the paper's MovieLens-1M Base: MAP@1 {m1:.3f}, MAP@5 {m5:.3f}, NDCG@5 {n5:.3f}"
        )
    return out
