"""Sweep results: the trials table (sorted by the objective, best marked), CSV, markdown and a plot."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:  # pragma: no cover
    from .spec import SweepSpec

COLUMNS = ("auc", "logloss", "acc", "n")
RANKING_COLUMNS = ("ndcg@5", "ndcg@10", "map@5", "map@10", "n")
FULL_RANKING_COLUMNS = ("recall@20", "ndcg@20", "precision@20", "n")


def columns(metric: str) -> tuple[str, ...]:
    """The metric columns of a sweep's tables: the CTR ones, the full-ranking ones for a recall@k / precision@k /
    ndcg@50 objective, or the ranking ones for an ndcg@k / map@k objective."""
    if metric in COLUMNS:
        return COLUMNS
    full = metric.startswith(("recall@", "precision@")) or metric == "ndcg@50"
    return tuple(dict.fromkeys((metric, *(FULL_RANKING_COLUMNS if full else RANKING_COLUMNS))))


@dataclass
class TrialRow:
    """One Tune trial: its searched params (dotted field -> value), validation metrics, error if it failed."""

    trial_id: str
    params: dict[str, Any]
    metrics: dict[str, float]
    error: str | None = None

    def objective(self, metric: str) -> float | None:
        v = self.metrics.get(metric)
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def best_row(rows: list[TrialRow], metric: str, mode: str) -> TrialRow | None:
    """The trial with the best ``metric`` (``mode`` max/min); ties go to the earlier trial; None if all failed."""
    ok = [r for r in rows if r.error is None and r.objective(metric) is not None]
    if not ok:
        return None
    sign = 1.0 if mode == "max" else -1.0
    return max(ok, key=lambda r: sign * r.objective(metric))  # max() keeps the first of equal keys


def trials_frame(rows: list[TrialRow], params: list[str], metric: str, mode: str) -> pd.DataFrame:
    """One row per trial: rank, trial_id, best, each param, auc, logloss, acc, n, status; sorted best first
    (failed trials last)."""
    best = best_row(rows, metric, mode)
    records = [
        {
            "trial_id": r.trial_id,
            "best": r is best,
            **{p: r.params.get(p) for p in params},
            **{c: r.metrics.get(c) for c in columns(metric)},
            "status": "ok" if r.error is None else r.error,
        }
        for r in rows
    ]
    df = pd.DataFrame.from_records(records, columns=["trial_id", "best", *params, *columns(metric), "status"])
    df = df.sort_values(metric, ascending=(mode == "min"), na_position="last", kind="stable").reset_index(drop=True)
    df.insert(0, "rank", range(1, len(df) + 1))
    return df


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def markdown_table(df: pd.DataFrame) -> str:
    cols = [c for c in df.columns if c != "best"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in df.iterrows():
        cells = [_fmt(int(row[c]) if c == "n" and pd.notna(row[c]) else row[c]) for c in cols]
        if row["best"]:
            cells = [f"**{c}**" for c in cells]
            cells[0] += " ★"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_sweep(df: pd.DataFrame, params: list[str], metric: str, path: str | os.PathLike) -> None:
    """``metric`` against each searched parameter (one panel each); the best trial is a red star."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = df[df[metric].notna()]
    fig, axes = plt.subplots(1, len(params), figsize=(4.2 * len(params), 3.4), squeeze=False)
    for ax, p in zip(axes[0], params):
        numeric = pd.api.types.is_numeric_dtype(ok[p]) and not pd.api.types.is_bool_dtype(ok[p])
        cats = sorted(ok[p].astype(str).unique())
        x = ok[p].astype(float) if numeric else ok[p].astype(str).map(cats.index)
        ax.scatter(x, ok[metric], color="tab:blue", alpha=0.8)
        best = ok[ok["best"]]
        if len(best):
            bx = best[p].astype(float) if numeric else best[p].astype(str).map(cats.index)
            ax.scatter(bx, best[metric], marker="*", s=220, color="tab:red", label="best (valid)", zorder=3)
            ax.legend(loc="best", fontsize=8)
        if not numeric:
            ax.set_xticks(range(len(cats)), cats)
        ax.set_xlabel(p)
        ax.set_ylabel(f"valid {metric}")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = Path(str(path) + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def write_results(out_dir: Path, spec: SweepSpec, rows: list[TrialRow], best: TrialRow, test: dict) -> pd.DataFrame:
    """Write ``results.csv``, ``results.md``, ``sweep.png`` and ``sweep.json`` into ``out_dir``."""
    cfg = spec.config
    df = trials_frame(rows, spec.params, cfg.metric, cfg.mode)
    out_dir.mkdir(parents=True, exist_ok=True)
    df.to_csv(out_dir / "results.csv", index=False)
    plot_sweep(df, spec.params, cfg.metric, out_dir / "sweep.png")
    space = "\n".join(f"- `{k}`: {v.kind} {v.values()}" for k, v in cfg.search_space.items())
    test_line = " · ".join(f"{k} {_fmt(test.get(k))}" for k in columns(cfg.metric))
    failed = [r for r in rows if r.error is not None]
    md = [
        f"# Sweep `{cfg.name}`",
        "",
        f"Base config `{spec.path.parent / cfg.base}` (sweep file `{spec.path}`); objective **valid {cfg.metric}** "
        f"({cfg.mode}); {len(rows)} trials ({len(failed)} failed).",
        "",
        "Search space:",
        "",
        space,
        "",
        "## Trials (validation split, best first; the selected one in bold with a star)",
        "",
        markdown_table(df),
        "",
        "## Best configuration on the test split",
        "",
        "Selected on validation, then evaluated once on test:",
        "",
        "```json",
        json.dumps(best.params, indent=2),
        "```",
        "",
        "- valid: " + " · ".join(f"{k} {_fmt(best.metrics.get(k))}" for k in columns(cfg.metric)),
        f"- **test: {test_line}**",
        "",
        "![objective vs parameters](sweep.png)",
        "",
    ]
    (out_dir / "results.md").write_text("\n".join(md))
    (out_dir / "sweep.json").write_text(
        json.dumps(
            {
                "name": cfg.name,
                "metric": cfg.metric,
                "mode": cfg.mode,
                "best_config": best.params,
                "valid": best.metrics,
                "test": test,
                "trials": df.to_dict(orient="records"),
                "base_config": spec.base_raw,
            },
            indent=2,
            default=str,
        )
    )
    return df
