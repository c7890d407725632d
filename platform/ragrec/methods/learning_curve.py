"""The learning curve of `ragrec evaluate` (RALLRec and SCoRe): the full variant's AUC against the number of
instruction-tuning samples.

``eval.learning_curve`` lists training-sample counts N (``lora.train_samples``, before RALLRec's mixed-view
augmentation); ``eval.learning_curve_grid`` optionally crosses every N with more config fields (one curve
per combination). Each point is the method's full variant with those overrides, applied by
:func:`~ragrec.methods.evaluation.variant_config` like every variant, and scored on the evaluation's
test samples; the zero-shot variant is the point N = 0. The evaluations (``rallrec_evaluate``,
``score_evaluate``) supply how to score one point; this module orders the points, times them, builds the
rows, the report section, the ``metrics.json`` block and ``learning_curve.png``.

Every point (zero-shot included) carries two paired ΔAUCs on the same test samples, both with a user-clustered
bootstrap interval: against zero-shot (``delta``) and against the item+user baseline ``item_user_logit``
(``delta_base``, ``delta_base_ulo/uhi``): does the tuned LLM reach what user and item click rates give?

Wall time: a point's seconds are read from the manifests of its artifacts (examples + lora = training,
scores = scoring), which :meth:`~ragrec.artifacts.ArtifactStore.run` writes when it computes them
(``seconds_total`` for a stage that resumed after an interruption). So a point reused from the cache
reports the time it took when it was computed.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from ..artifacts import Artifact, ArtifactStore
from ..config import RunConfig
from ..evaluation.report import fmt_ci, fmt_num
from .evaluation import Scored, variant_row

log = logging.getLogger("ragrec.evaluate")

EXAMPLE_STAGES = ("examples", "score_examples")
"""Stages whose artifact feeds the lora stage (RALLRec, SCoRe): part of a point's training time."""
SECTION = "Learning curve"
PLOT = "learning_curve"
BASELINE = "item_user_logit"


@dataclass(frozen=True)
class CurvePoint:
    """``n`` training samples (0 = the zero-shot variant) with the ``grid`` values of one combination."""

    n: int
    grid: tuple[tuple[str, Any], ...] = ()

    @property
    def overrides(self) -> dict[str, Any]:
        """Dotted-field overrides of the full variant (none for the zero-shot point)."""
        return {"lora.train_samples": self.n, **dict(self.grid)} if self.n else {}

    @property
    def setting(self) -> str:
        """The grid combination, e.g. ``lora.lr=0.0005, lora.epochs=2`` (``""`` without a grid)."""
        return ", ".join(f"{k}={_value(v)}" for k, v in self.grid)

    @property
    def label(self) -> str:
        if not self.n:
            return "zero-shot (N=0)"
        return f"N={self.n}" + (f" ({self.setting})" if self.grid else "")


def curve_points(cfg: RunConfig) -> list[CurvePoint]:
    """The points of ``eval.learning_curve`` (without the zero-shot one) in the order they run and print:
    N ascending, and for every N the grid combinations in the order of ``eval.learning_curve_grid``."""
    ns = sorted(cfg.eval.learning_curve or [])
    grid = cfg.eval.learning_curve_grid or {}
    combos = [tuple(zip(grid, values)) for values in itertools.product(*grid.values())] or [()]
    return [CurvePoint(n, combo) for n in ns for combo in combos]


def curve_on(cfg: RunConfig) -> bool:
    return bool(cfg.eval.learning_curve)


def sweeps_on(cfg: RunConfig) -> bool:
    """The K/α (RALLRec) and Ke/Ks (SCoRe) sweeps, points of the full variant: not with ``eval.variants: []``
    (the curve only)."""
    return cfg.eval.variants != []


def fusion_on(cfg: RunConfig) -> bool:
    """``eval.fusion``: true runs it, false never; None runs it unless ``eval.variants: []`` (curve only)."""
    return cfg.eval.fusion is True or (cfg.eval.fusion is None and cfg.eval.variants != [])


def artifact_seconds(art: Artifact) -> float:
    """Seconds it took to compute ``art`` (all attempts when it resumed); 0 for a manifest without timing."""
    m = art.manifest()
    return float(m.get("seconds_total", m.get("seconds")) or 0.0)


def point_seconds(store: ArtifactStore, keys: Mapping[str, str]) -> tuple[float, float]:
    """``(training, scoring)`` seconds of a point from the artifact keys of its row (``lora``, ``scores``):
    training = the lora stage + the examples it was tuned on, scoring = the scores stage."""
    score = artifact_seconds(Artifact(store, "scores", keys["scores"])) if "scores" in keys else 0.0
    train = 0.0
    if keys.get("lora"):
        lora = Artifact(store, "lora", keys["lora"])
        train += artifact_seconds(lora)
        for key in lora.manifest().get("spec", {}).get("inputs", []):
            for stage in EXAMPLE_STAGES:
                ex = Artifact(store, stage, key)
                if ex.done:
                    train += artifact_seconds(ex)
    return train, score


def baseline_delta(labels: np.ndarray, probs: np.ndarray, base: np.ndarray, users: np.ndarray, cfg: RunConfig) -> dict:
    """Paired ΔAUC of ``probs`` − ``base`` (the item+user baseline on the same samples) with the user-clustered
    bootstrap interval (users resampled with all their samples; ``eval.bootstrap`` resamples, ``seed``):
    ``delta_base``, ``delta_base_ulo``, ``delta_base_uhi``."""
    from ..evaluation.metrics import bootstrap_delta_ci

    d, lo, hi = bootstrap_delta_ci(labels, probs, base, n=cfg.eval.bootstrap, seed=cfg.seed, groups=users)
    return {"delta_base": float(d), "delta_base_ulo": float(lo), "delta_base_uhi": float(hi)}


class LearningCurve:
    """The curve's points of one evaluation: run in order, each row computed once when its point finishes.

    ``baseline``: P(yes) of the item+user baseline (``item_user_logit``, training interactions only) on the same
    test samples, computed once by the evaluation; every row then gets its paired ΔAUC against it (none
    without)."""

    def __init__(self, cfg: RunConfig, store: ArtifactStore, test: pa.Table, baseline: np.ndarray | None = None):
        self.cfg, self.store = cfg, store
        self.labels = test.column("label").to_numpy()
        self.users = test.column("user_id").to_numpy()
        if baseline is not None and len(baseline) != len(self.labels):
            raise ValueError(f"baseline has {len(baseline)} probabilities for {len(self.labels)} test samples")
        self.baseline = baseline
        self.points = curve_points(cfg)
        self.scored: dict[CurvePoint, Scored] = {}
        self.rows: dict[CurvePoint, dict] = {}

    def run(
        self,
        scored: dict[str, Scored],
        zero_shot: Callable[[], Scored],
        score: Callable[[dict[str, Any], str], Scored],
        done: Callable[[], Any] = lambda: None,
    ) -> None:
        """Score the zero-shot point and every point (``score(overrides, label)``, the full variant with
        ``overrides``); ``done()`` after each (the evaluation rewrites its report). The zero-shot point is the
        evaluation's ``scored["zero_shot"]`` row, scored by ``zero_shot()`` and added there when the variants
        did not run it."""
        if "zero_shot" not in scored:
            scored["zero_shot"] = zero_shot()
        self.add(CurvePoint(0), scored["zero_shot"])
        done()
        for i, p in enumerate(self.points, 1):
            log.info("evaluate: learning curve point %d/%d: %s", i, len(self.points), p.label)
            self.add(p, score(p.overrides, p.label))
            done()

    def add(self, point: CurvePoint, scored: Scored) -> dict:
        zs = self.scored.get(CurvePoint(0))
        base = {}
        if self.baseline is not None:
            base = baseline_delta(self.labels, scored.probs, self.baseline, self.users, self.cfg)
        train, score = point_seconds(self.store, scored.keys)
        row = {
            "n_train": point.n,
            "setting": point.setting,
            "grid": dict(point.grid),
            **variant_row(
                point.label,
                self.labels,
                scored.probs,
                zs,
                self.cfg,
                examples=scored.examples,
                group="learning curve",
                key=f"curve:{point.label}",
                user_ids=self.users,
            ),
            **base,
            "train_seconds": round(train, 3),
            "score_seconds": round(score, 3),
            "seconds": round(train + score, 3),
            "artifacts": dict(scored.keys),
        }
        self.scored[point], self.rows[point] = scored, row
        return row

    # ---- report ----------------------------------------------------------------------------------
    def columns(self) -> dict[str, np.ndarray]:
        """``predictions.parquet`` columns: ``curve:<label>`` -> P(yes) of each finished point."""
        return {self.rows[p]["key"]: s.probs for p, s in self.scored.items() if p.n}  # N=0: the zero_shot column

    def report(self, baselines: Mapping[str, float]) -> tuple[dict[str, str], dict[str, Callable], dict]:
        """``(sections, plots, metrics.json extra)``; ``baselines``: the rows' AUCs by key (for the dashed
        line of ``item_user_logit``)."""
        rows = list(self.rows.values())
        if not rows:
            return {}, {}, {}
        lines = {}
        zs = self.rows.get(CurvePoint(0))
        if zs is not None:
            lines["zero-shot (N=0)"] = zs["auc"]
        if BASELINE in baselines:
            lines[BASELINE] = baselines[BASELINE]
        grid = self.cfg.eval.learning_curve_grid or {}
        text = (
            "The full variant LoRA-tuned on N sampled training samples (`lora.train_samples`, before any "
            "mixed-view augmentation; IT examples = what the tuning actually saw)"
            + (f", crossed with {', '.join(f'`{k}`' for k in grid)}" if grid else "")
            + ", scored on the same test samples as every row above; N = 0 is the zero-shot variant. ΔAUC is "
            "paired against zero-shot and, in the next column, against the item+user baseline "
            f"(`{BASELINE}`, user and item click rates from the training interactions only: does the tuned LLM "
            "reach it?), both on the same test samples with a user-clustered bootstrap interval (users resampled "
            "with all their samples; `*` when it excludes 0). Time = wall time of the point's training (examples + "
            "LoRA) and scoring when it was computed.\n\n" + format_curve(rows)
        )
        plots = {}
        if any(r["n_train"] > 0 for r in rows):
            plots[PLOT] = (lambda r, b: lambda path: plot_learning_curve(r, path, b))(rows, lines)
        extra = {
            "learning_curve": {
                "points": rows,
                "grid": grid,
                "baselines": lines,
                "planned": [p.label for p in self.points],
            }
        }
        return {SECTION: text}, plots, extra


def _value(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def duration(seconds: float) -> str:
    """``0.4 s``, ``42 s``, ``12.5 min``, ``3.10 h``."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def _delta_cell(d: float | None, lo: float | None, hi: float | None) -> str:
    """``+0.0123 [+0.0010, +0.0200] *`` (``*``: the interval excludes 0); ``—`` without a delta."""
    if d is None:
        return "—"
    star = " *" if lo is not None and hi is not None and (lo > 0 or hi < 0) else ""
    return f"{d:+.4f} {fmt_ci(lo, hi, '+.4f')}{star}"


def format_curve(rows: Sequence[Mapping]) -> str:
    """Markdown table of the curve's rows: N, grid setting (when any), AUC with both intervals, UAUC, ΔAUC vs
    zero-shot and ΔAUC vs the item+user baseline (user-clustered intervals; ``*`` when one excludes 0; ``—``
    for a row without it), IT examples and the wall times."""
    has_grid = any(r.get("setting") for r in rows)
    head = (
        ["N"]
        + (["setting"] if has_grid else [])
        + [
            "AUC [95% CI, samples]",
            "[95% CI, users]",
            "UAUC",
            "ΔAUC vs zero-shot [95% CI, users]",
            "ΔAUC vs item+user [95% CI, users]",
            "IT examples",
            "training",
            "scoring",
            "time",
        ]
    )
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [f"{r['n_train']:,}"] + ([r.get("setting") or "—"] if has_grid else [])
        cells += [
            f"{fmt_num(r['auc'])} {fmt_ci(r.get('auc_lo'), r.get('auc_hi'))}",
            fmt_ci(r.get("auc_ulo"), r.get("auc_uhi")),
            fmt_num(r.get("uauc")),
        ]
        cells.append(
            _delta_cell(r.get("delta"), r.get("delta_ulo", r.get("delta_lo")), r.get("delta_uhi", r.get("delta_hi")))
        )
        cells.append(_delta_cell(r.get("delta_base"), r.get("delta_base_ulo"), r.get("delta_base_uhi")))
        cells.append("—" if r.get("examples") is None else f"{r['examples']:,}")
        cells += [
            duration(r["train_seconds"]) if r["n_train"] else "—",
            duration(r["score_seconds"]),
            duration(r["seconds"]),
        ]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def plot_learning_curve(
    rows: Sequence[Mapping], path: str | os.PathLike, baselines: Mapping[str, float] | None = None
) -> None:
    """AUC against N (log x axis) with the user-clustered 95% interval as error bars, one line per grid
    setting, and dashed horizontal lines for ``baselines`` (zero-shot, item+user); PNG at ``path``."""
    from ..evaluation.report import png_figure

    pts = [r for r in rows if r["n_train"] > 0]
    settings = list(dict.fromkeys(r.get("setting") or "" for r in pts))
    with png_figure(path, (5.5, 3.8)) as ax:
        for i, setting in enumerate(settings):
            line = sorted((r for r in pts if (r.get("setting") or "") == setting), key=lambda r: r["n_train"])
            dodge = 1.04 ** (i - (len(settings) - 1) / 2)  # side by side on the log axis: bars stay readable
            x = [r["n_train"] * dodge for r in line]
            y = np.array([r["auc"] for r in line], dtype=float)
            lo = np.array([r.get("auc_ulo", r.get("auc_lo")) for r in line], dtype=float)
            hi = np.array([r.get("auc_uhi", r.get("auc_hi")) for r in line], dtype=float)
            err = np.nan_to_num(np.vstack([y - lo, hi - y]), nan=0.0).clip(min=0)
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, color=f"C{i}", label=setting or "full variant")
        for j, (name, auc) in enumerate((baselines or {}).items()):
            ax.axhline(auc, ls="--", lw=0.9, color=("black", "tab:gray", "tab:brown")[j % 3], label=name)
        ax.set_xscale("log")
        ns = sorted({r["n_train"] for r in pts})
        if ns:
            ax.set_xticks(ns, [f"{n:,}" for n in ns])
            ax.minorticks_off()
        ax.set_xlabel("training samples N (log scale)")
        ax.set_ylabel("AUC (95% CI, users)")
        ax.legend(fontsize=7)
