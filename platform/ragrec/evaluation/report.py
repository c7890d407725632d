"""Run reports (DESIGN §7): ``report.md`` + ``metrics.json`` + PNG plots, written atomically.

The markdown table follows the paper's tables: ``variant | AUC [95% CI] | LogLoss | ACC | n``.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["write_report", "plot_auc_bars", "plot_curve", "format_rows"]

ROW_KEYS = ("name", "auc", "auc_lo", "auc_hi", "logloss", "acc", "n")


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file next to ``path`` and rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _num(x) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def format_rows(rows: Sequence[Mapping]) -> str:
    """Markdown table of result rows (keys: name, auc, auc_lo, auc_hi, logloss, acc, n)."""
    out = ["| variant | AUC [95% CI] | LogLoss | ACC | n |", "|---|---|---|---|---|"]
    for r in rows:
        missing = [k for k in ROW_KEYS if k not in r]
        if missing:
            raise ValueError(f"report row {r.get('name', r)!r} lacks {missing}; rows need {list(ROW_KEYS)}")
        ci = f" [{_num(r['auc_lo'])}, {_num(r['auc_hi'])}]" if r["auc_lo"] is not None else ""
        out.append(f"| {r['name']} | {_num(r['auc'])}{ci} | {_num(r['logloss'])} | {_num(r['acc'])} | {r['n']} |")
    return "\n".join(out)


def _json_safe(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, Mapping):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if hasattr(x, "item") and callable(x.item):  # numpy scalars
        return _json_safe(x.item())
    return x


def plot_auc_bars(rows: Sequence[Mapping], path: str | os.PathLike) -> None:
    """Bar chart of AUC per variant with 95% CI error bars; PNG at ``path``."""
    names = [str(r["name"]) for r in rows]
    auc = [float(r["auc"]) for r in rows]
    lo = [a - float(r["auc_lo"]) if r.get("auc_lo") is not None else 0.0 for a, r in zip(auc, rows)]
    hi = [float(r["auc_hi"]) - a if r.get("auc_hi") is not None else 0.0 for a, r in zip(auc, rows)]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(rows) + 2), 3.5))
    try:
        ax.bar(range(len(rows)), auc, yerr=[lo, hi], capsize=4, color="tab:blue")
        ax.set_xticks(range(len(rows)), names, rotation=30, ha="right")
        finite = [a for a in auc if math.isfinite(a)]
        ax.set_ylim(max(0.0, min(finite + [0.5]) - 0.05), min(1.0, max(finite + [0.5]) + 0.05))
        ax.axhline(0.5, color="grey", lw=0.8, ls="--")
        ax.set_ylabel("AUC")
        fig.tight_layout()
        fig.savefig(path, format="png", dpi=120)
    finally:
        plt.close(fig)


def plot_curve(
    xs: Sequence[float], series: Mapping[str, Sequence[float]], path: str | os.PathLike, xlabel: str, ylabel: str
) -> None:
    """Line plot of one or more series over ``xs`` (e.g. AUC vs K, training loss); PNG at ``path``."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    try:
        for name, ys in series.items():
            if len(ys) != len(xs):
                raise ValueError(f"plot_curve: series {name!r} has {len(ys)} points but xs has {len(xs)}")
            ax.plot(list(xs), list(ys), marker="o", label=name)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if len(series) > 1:
            ax.legend()
        fig.tight_layout()
        fig.savefig(path, format="png", dpi=120)
    finally:
        plt.close(fig)


def write_report(
    run_dir: str | os.PathLike,
    *,
    title: str,
    config: dict,
    counts: dict,
    rows: list[dict],
    notes: list[str],
    plots: Mapping[str, Callable[[Path], None]],
) -> Path:
    """Write ``report.md``, ``metrics.json`` and ``<name>.png`` for each plot into ``run_dir``.

    Args:
        run_dir: output folder (created).
        title: report heading.
        config: the exact config used (dumped as YAML-like JSON block).
        counts: sample counts, e.g. ``{"train": 8192, "test": 10000}``.
        rows: result rows ``{name, auc, auc_lo, auc_hi, logloss, acc, n}`` (None / NaN print as —).
        notes: free-text lines (e.g. whether the method beats the trivial baselines).
        plots: ``name -> fn(path)``; each fn writes a PNG to the path it is given,
            e.g. ``{"auc": lambda p: plot_auc_bars(rows, p)}``.

    Returns:
        the path of ``report.md``. Every file is written to a temporary name and renamed.
    """
    out = Path(run_dir)
    table = format_rows(rows)
    for name, fn in plots.items():
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"plot name {name!r} must be a plain file stem")
        _atomic_write(out / f"{name}.png", fn)
    lines = [f"# {title}", "", "## Results", "", table, ""]
    lines += ["## Samples", "", *[f"- {k}: {v}" for k, v in counts.items()], ""]
    if notes:
        lines += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    if plots:
        lines += ["## Plots", "", *[f"![{n}]({n}.png)" for n in plots], ""]
    lines += ["## Config", "", "```json", json.dumps(_json_safe(config), indent=2, sort_keys=True), "```", ""]
    text = "\n".join(lines)
    _atomic_write(out / "report.md", lambda p: p.write_text(text))
    payload = {"title": title, "rows": rows, "counts": counts, "notes": notes, "config": config}
    blob = json.dumps(_json_safe(payload), indent=2, sort_keys=True)
    _atomic_write(out / "metrics.json", lambda p: p.write_text(blob))
    return out / "report.md"
