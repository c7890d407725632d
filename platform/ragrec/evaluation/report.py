"""Run reports (docs/architecture.md §7): ``report.md`` + ``metrics.json`` + PNG plots, written atomically.

The markdown table follows the paper's tables: ``variant | AUC [95% CI] | LogLoss | ACC | n``. Rows with a
user-clustered interval (``auc_ulo``, ``auc_uhi``; ``delta_ulo``, ``delta_uhi``) get a second interval
column, ``[95% CI, users]``, next to the sample-bootstrap one.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

__all__ = [
    "USER_CI_NOTE",
    "decomposition_note",
    "delta_interval",
    "format_rows",
    "plot_auc_bars",
    "plot_curve",
    "plot_sweep",
    "png_figure",
    "write_report",
]

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


USER_CI_NOTE = (
    "Two 95% intervals: [95% CI, samples] resamples test samples; [95% CI, users] resamples users "
    "with all their samples (a user-clustered bootstrap). Samples of one user are correlated, so the "
    "sample interval is too narrow: the user-clustered interval is the one to read."
)


def fmt_num(x) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def fmt_ci(lo, hi, fmt: str = ".4f") -> str:
    if lo is None or hi is None or (isinstance(lo, float) and math.isnan(lo)):
        return "—"
    return f"[{lo:{fmt}}, {hi:{fmt}}]"


def delta_interval(row: Mapping) -> tuple[float, float]:
    """The interval of a row's paired ΔAUC to judge it by: user-clustered when the row has it, else samples."""
    if row.get("delta_ulo") is not None and not math.isnan(row["delta_ulo"]):
        return row["delta_ulo"], row["delta_uhi"]
    return row["delta_lo"], row["delta_hi"]


def _significant(row: Mapping) -> bool:
    lo, hi = delta_interval(row)
    return lo is not None and hi is not None and (lo > 0 or hi < 0)


def decomposition_note(name: str, d: Mapping) -> str:
    """One line: ``name AUC a = w × within-user AUC + w × between-user AUC on U users`` (see auc_decomposition)."""
    f2 = lambda x: "—" if x is None or math.isnan(x) else f"{x:.2f}"
    line = (
        f"{name}: AUC {fmt_num(d['auc'])} = {f2(d['w_within'])} × within-user AUC {f2(d['auc_within'])} "
        f"+ {f2(d['w_between'])} × between-user AUC {f2(d['auc_between'])} on {d['users']} users "
        f"({d['users_both_labels']} with both labels)"
    )
    if d.get("auc_user_only") is not None and not math.isnan(d["auc_user_only"]):
        line += f"; scoring by the user's positive rate alone (in-sample) gives AUC {d['auc_user_only']:.4f}"
    return line + "."


def format_rows(rows: Sequence[Mapping], reference: str | None = None) -> str:
    """Markdown table of result rows (keys: name, auc, auc_lo, auc_hi, logloss, acc, n).

    Rows may carry ``auc_ulo, auc_uhi`` (user-clustered bootstrap interval), ``delta, delta_lo, delta_hi``
    (paired-bootstrap AUC difference against ``reference``) with ``delta_ulo, delta_uhi`` (its
    user-clustered interval), ``uauc`` (per-user AUC) and ``examples`` (instruction-tuning examples); the
    columns appear when any row has them. With user intervals the headers say which interval is which,
    and the ``*`` of a significant ΔAUC is judged on the user-clustered interval.
    """
    has_delta = any("delta" in r for r in rows)
    has_ex = any("examples" in r for r in rows)
    has_uauc = any("uauc" in r for r in rows)
    has_uci = any("auc_ulo" in r for r in rows)
    has_duci = has_delta and any("delta_ulo" in r for r in rows)
    head = ["variant"] + (["AUC [95% CI, samples]", "[95% CI, users]"] if has_uci else ["AUC [95% CI]"])
    head += ["UAUC"] if has_uauc else []
    if has_delta:
        dname = f"ΔAUC vs {reference or 'reference'}"
        head += [f"{dname} [95% CI, samples]", "[95% CI, users]"] if has_duci else [f"{dname} [95% CI]"]
    head += ["LogLoss", "ACC", "n"] + (["IT examples"] if has_ex else [])
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        missing = [k for k in ROW_KEYS if k not in r]
        if missing:
            raise ValueError(f"report row {r.get('name', r)!r} lacks {missing}; rows need {list(ROW_KEYS)}")
        ci = f" [{fmt_num(r['auc_lo'])}, {fmt_num(r['auc_hi'])}]" if r["auc_lo"] is not None else ""
        cells = [str(r["name"]), f"{fmt_num(r['auc'])}{ci}"]
        cells += [fmt_ci(r.get("auc_ulo"), r.get("auc_uhi"))] if has_uci else []
        cells += [fmt_num(r.get("uauc"))] if has_uauc else []
        if has_delta:
            d = r.get("delta")
            star = " *" if d is not None and _significant(r) else ""
            if d is None:
                cells += ["—", "—"] if has_duci else ["—"]
            elif has_duci:
                cells += [
                    f"{d:+.4f} {fmt_ci(r['delta_lo'], r['delta_hi'], '+.4f')}",
                    fmt_ci(r.get("delta_ulo"), r.get("delta_uhi"), "+.4f") + star,
                ]
            else:
                cells.append(f"{d:+.4f} {fmt_ci(r['delta_lo'], r['delta_hi'], '+.4f')}{star}")
        cells += [fmt_num(r["logloss"]), fmt_num(r["acc"]), str(r["n"])]
        if has_ex:
            cells.append("—" if r.get("examples") is None else f"{r['examples']:,}")
        out.append("| " + " | ".join(cells) + " |")
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


def _auc_interval(r: Mapping) -> tuple:
    """The AUC interval to draw: user-clustered when the row has one, else the sample bootstrap's."""
    if r.get("auc_ulo") is not None and not math.isnan(r["auc_ulo"]):
        return r["auc_ulo"], r["auc_uhi"]
    return r.get("auc_lo"), r.get("auc_hi")


@contextmanager
def png_figure(path: str | os.PathLike, figsize: tuple[float, float], ncols: int = 1) -> Iterator[Any]:
    """The axes of a new figure of ``figsize`` (an array of ``ncols`` side by side when ``ncols`` > 1); when the
    block ends, the figure is laid out tight and written as a PNG (120 dpi) to ``path``. It is closed in any
    case, also when the block raises (nothing written)."""
    fig, ax = plt.subplots(1, ncols, figsize=figsize)
    try:
        yield ax
        fig.tight_layout()
        fig.savefig(path, format="png", dpi=120)
    finally:
        plt.close(fig)


RANK_KS = (1, 5, 10, 20)


def format_ranking_rows(rows: Sequence[Mapping], ks: Sequence[int] = RANK_KS, ci_metric: str = "ndcg@5") -> str:
    """Markdown table of ranking rows: ``name``, ``map@k`` / ``ndcg@k`` for ``ks``, ``n``; ``<ci_metric>_lo/_hi``
    (user-level bootstrap interval) and ``delta, delta_lo, delta_hi, reference`` (paired user-level interval of
    the row's ``ci_metric`` minus its reference row's) when the rows carry them; ``*`` = the interval excludes 0."""
    head = ["variant", *[f"MAP@{k}" for k in ks]]
    head += [f"NDCG@{k}" + (" [95% CI, users]" if f"ndcg@{k}" == ci_metric else "") for k in ks]
    has_delta = any(r.get("delta") is not None for r in rows)
    head += [f"Δ{ci_metric.upper()} vs reference [95% CI, users]"] if has_delta else []
    head += ["n"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [str(r["name"]), *[fmt_num(r.get(f"map@{k}")) for k in ks]]
        for k in ks:
            m = f"ndcg@{k}"
            ci = (
                f" {fmt_ci(r.get(m + '_lo'), r.get(m + '_hi'))}"
                if m == ci_metric and r.get(m + "_lo") is not None
                else ""
            )
            cells.append(fmt_num(r.get(m)) + ci)
        if has_delta:
            d = r.get("delta")
            if d is None:
                cells.append("—")
            else:
                lo, hi = r["delta_lo"], r["delta_hi"]
                star = " *" if lo > 0 or hi < 0 else ""
                cells.append(f"{d:+.4f} {fmt_ci(lo, hi, '+.4f')}{star} vs {r['reference']}")
        cells.append(str(r["n"]))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def plot_ranking_bars(rows: Sequence[Mapping], path: str | os.PathLike, metric: str = "ndcg@5") -> None:
    """Bar chart of ``metric`` per row with its user-level 95% interval (when the rows carry it); PNG at ``path``."""
    names = [str(r["name"]) for r in rows]
    vals = [float(r[metric]) for r in rows]
    lo = [v - r[f"{metric}_lo"] if r.get(f"{metric}_lo") is not None else 0.0 for v, r in zip(vals, rows)]
    hi = [r[f"{metric}_hi"] - v if r.get(f"{metric}_hi") is not None else 0.0 for v, r in zip(vals, rows)]
    with png_figure(path, (max(4.0, 0.9 * len(rows) + 2), 3.5)) as ax:
        ax.bar(range(len(rows)), vals, yerr=[lo, hi], capsize=4, color="tab:blue")
        ax.set_xticks(range(len(rows)), names, rotation=30, ha="right")
        ax.set_ylabel(metric.upper())


def plot_auc_bars(rows: Sequence[Mapping], path: str | os.PathLike) -> None:
    """Bar chart of AUC per variant with 95% CI error bars (user-clustered when rows have it); PNG at ``path``."""
    names = [str(r["name"]) for r in rows]
    auc = [float(r["auc"]) for r in rows]
    ci = [_auc_interval(r) for r in rows]
    lo = [a - float(c[0]) if c[0] is not None else 0.0 for a, c in zip(auc, ci)]
    hi = [float(c[1]) - a if c[1] is not None else 0.0 for a, c in zip(auc, ci)]
    with png_figure(path, (max(4.0, 0.9 * len(rows) + 2), 3.5)) as ax:
        ax.bar(range(len(rows)), auc, yerr=[lo, hi], capsize=4, color="tab:blue")
        ax.set_xticks(range(len(rows)), names, rotation=30, ha="right")
        finite = [a for a in auc if math.isfinite(a)]
        ax.set_ylim(max(0.0, min(finite + [0.5]) - 0.05), min(1.0, max(finite + [0.5]) + 0.05))
        ax.axhline(0.5, color="grey", lw=0.8, ls="--")
        ax.set_ylabel("AUC")


def plot_curve(
    xs: Sequence[float], series: Mapping[str, Sequence[float]], path: str | os.PathLike, xlabel: str, ylabel: str
) -> None:
    """Line plot of one or more series over ``xs`` (e.g. AUC vs K, training loss); PNG at ``path``."""
    with png_figure(path, (5, 3.5)) as ax:
        for name, ys in series.items():
            if len(ys) != len(xs):
                raise ValueError(f"plot_curve: series {name!r} has {len(ys)} points but xs has {len(xs)}")
            ax.plot(list(xs), list(ys), marker="o", label=name)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if len(series) > 1:
            ax.legend()


def plot_histories(
    histories: Mapping[str, Sequence[Mapping]], metric: str, path: str | os.PathLike, ylabel: str | None = None
) -> None:
    """Per-epoch ``metric`` of training histories, one line each (e.g. validation Recall@20 of every row), with
    a dot at each history's ``best_epoch`` (the weights it kept); epochs without the metric are skipped."""
    with png_figure(path, (6, 3.8)) as ax:
        for name, history in histories.items():
            pts = [(h["epoch"], h[metric]) for h in history if h.get(metric) is not None]
            if not pts:
                continue
            line = ax.plot([p[0] for p in pts], [p[1] for p in pts], label=name, linewidth=1)[0]
            best = history[-1].get("best_epoch") if history else None
            hit = [p for p in pts if p[0] == best]
            if hit:
                ax.plot([hit[0][0]], [hit[0][1]], "o", color=line.get_color())
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel or metric)
        ax.legend(fontsize="small")


def plot_sweep(
    xs: Sequence[float],
    rows: Sequence[Mapping],
    path: str | os.PathLike,
    xlabel: str,
    baselines: Mapping[str, float] | None = None,
) -> None:
    """AUC with its 95% CI band (user-clustered when rows have it) over a swept parameter (one row per x);
    dashed lines for reference AUCs."""
    auc = [float(r["auc"]) for r in rows]
    ci = [_auc_interval(r) for r in rows]
    lo = [float(c[0]) if c[0] is not None else a for a, c in zip(auc, ci)]
    hi = [float(c[1]) if c[1] is not None else a for a, c in zip(auc, ci)]
    if len(xs) != len(rows):
        raise ValueError(f"plot_sweep: {len(rows)} rows for {len(xs)} x values")
    with png_figure(path, (5, 3.5)) as ax:
        ax.fill_between(
            list(xs),
            lo,
            hi,
            alpha=0.25,
            color="tab:blue",
            label="95% CI (users)" if any("auc_ulo" in r for r in rows) else "95% CI",
        )
        ax.plot(list(xs), auc, marker="o", color="tab:blue", label="AUC")
        for i, (name, value) in enumerate((baselines or {}).items()):
            ax.axhline(value, ls="--", lw=0.9, color=f"C{i + 1}", label=name)
        ax.set_xticks(list(xs), [f"{x:g}" if isinstance(x, int) else f"{x:.3g}" for x in xs])
        ax.set_xlabel(xlabel)
        ax.set_ylabel("AUC")
        ax.legend(fontsize=7)


def write_report(
    run_dir: str | os.PathLike,
    *,
    title: str,
    config: dict,
    counts: dict,
    rows: list[dict],
    notes: list[str],
    plots: Mapping[str, Callable[[Path], None]],
    sections: Mapping[str, str] | None = None,
    reference: str | None = None,
    extra: Mapping | None = None,
    table: str | None = None,
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
        sections: extra ``heading -> markdown`` blocks printed after the results table (e.g. sweeps).
        reference: name of the row the ``delta`` columns compare against.
        extra: more JSON-able fields for ``metrics.json`` (e.g. sweep rows).
        table: the results table in Markdown, for rows that are not CTR rows (ranking: :func:`format_ranking_rows`).

    Returns:
        the path of ``report.md``. Every file is written to a temporary name and renamed.
    """
    out = Path(run_dir)
    text_table = format_rows(rows, reference) if table is None else table
    for name, fn in plots.items():
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"plot name {name!r} must be a plain file stem")
        _atomic_write(out / f"{name}.png", fn)
    lines = [f"# {title}", "", "## Results", "", text_table, ""]
    if any("auc_ulo" in r for r in rows):
        lines += [USER_CI_NOTE, ""]
    if any("delta" in r for r in rows) and table is None:
        which = "the user-clustered 95% interval" if any("delta_ulo" in r for r in rows) else "the 95% interval"
        lines += [
            f"ΔAUC: paired bootstrap against {reference or 'the reference row'} on the same samples; "
            f"* = {which} excludes 0 (a real gap, not noise).",
            "",
        ]
    for heading, body in (sections or {}).items():
        lines += [f"## {heading}", "", body, ""]
    lines += ["## Samples", "", *[f"- {k}: {v}" for k, v in counts.items()], ""]
    if notes:
        lines += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    if plots:
        lines += ["## Plots", "", *[f"![{n}]({n}.png)" for n in plots], ""]
    lines += ["## Config", "", "```json", json.dumps(_json_safe(config), indent=2, sort_keys=True), "```", ""]
    text = "\n".join(lines)
    _atomic_write(out / "report.md", lambda p: p.write_text(text))
    payload = {"title": title, "rows": rows, "counts": counts, "notes": notes, "config": config, **(extra or {})}
    blob = json.dumps(_json_safe(payload), indent=2, sort_keys=True)
    _atomic_write(out / "metrics.json", lambda p: p.write_text(blob))
    return out / "report.md"
