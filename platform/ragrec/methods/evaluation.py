"""``ragrec evaluate`` for every method: one engine (:class:`Evaluation`) driven by a method's
:class:`EvaluationSpec`, plus the pieces it is built from: variants as config overrides, the scored result of
one variant, the report row with its intervals, the plain-language reading of a table and the fusion's
report parts.

A method's evaluation module (``rallrec_evaluate``, ``score_evaluate``) lists its variants and sweeps as
data and supplies hooks for what truly differs (extra baselines, the fusion fit, note lines, metrics
entries); the run order, the scoring of variants, sweep and learning-curve points, the rows and the report
exist once, here.

Run order: the variants (the reference first: every other row's ΔAUC is paired against it), the method's
extra baselines, the fusion (``eval.fusion``), the sweep points, the learning curve (``eval.learning_curve``);
the report is rewritten after each, so a long evaluation can be watched and an interrupted one still shows
what it measured.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa

from ..config import RunConfig, apply_overrides, config_field
from .base import get_method
from .common import RunResult, metric_row, train_interactions

log = logging.getLogger("ragrec.evaluate")
V = TypeVar("V", bound="Variant")


@dataclass(frozen=True)
class Variant:
    """One row of the paper's tables: ``overrides`` (dotted field -> value) applied to the base config."""

    name: str
    label: str
    table: str = ""
    overrides: dict[str, Any] = field(default_factory=dict)


def by_name(*variants: V) -> dict[str, V]:
    """The rows keyed by their ``name``, in the given order (a method's ``VARIANTS``)."""
    return {v.name: v for v in variants}


def variant_config(cfg: RunConfig, overrides: dict[str, Any]) -> RunConfig:
    """``cfg`` with dotted-field ``overrides`` applied (:func:`ragrec.config.apply_overrides`, validated like
    a config file); KeyError naming the override when there is no such field."""
    for key in overrides:
        try:
            config_field(key)
        except ValueError:
            raise KeyError(f"variant override {key!r}: no such config field") from None
    items = [f"{k}={json.dumps(v)}" for k, v in overrides.items()]
    return RunConfig.model_validate(apply_overrides(cfg.model_dump(mode="json"), items))


@dataclass
class Scored:
    name: str
    label: str
    table: str
    probs: np.ndarray
    examples: int | None = None
    keys: dict[str, str] = field(default_factory=dict)


def fusion_labels(names: dict[str, str]) -> tuple[str, str]:
    """Row names of the fusion and of the fusion without the LLM."""
    return (f"fusion ({names['llm']} + {names['crm']} + item/user)", f"fusion w/o LLM ({names['crm']} + item/user)")


def fusion_comparisons(
    res,
    labels: np.ndarray,
    users: np.ndarray | None,
    cfg: RunConfig,
    llm_probs: np.ndarray,
    crm_probs: np.ndarray,
    row=None,
) -> list[dict]:
    """Paired ΔAUC rows of the fusion against each input and against the fusion w/o LLM (the LLM's marginal
    value over collaborative filtering), built by :func:`_row` (or ``row(name, probs, ref_probs)``)."""
    from ..evaluation.fusion import comparison_rows

    if row is None:

        def row(name, probs, ref_probs):
            return variant_row(
                name,
                labels,
                probs,
                Scored(name, name, "fusion", ref_probs),
                cfg,
                group="fusion",
                key=name,
                user_ids=users,
            )

    n = res.names
    rows = comparison_rows(
        row,
        "fusion",
        res.fused,
        {
            n["llm"]: llm_probs,
            n["crm"]: crm_probs,
            n["item_user"]: res.input_probs("item_user"),
            "fusion w/o LLM": res.fused_without_llm,
        },
    )
    return [{k: v for k, v in r.items() if k != "examples"} for r in rows]  # no IT-examples column here


def fusion_report(res, comparisons: list[dict]) -> tuple[dict[str, str], list[str], dict]:
    """``(sections, notes, metrics.json extra)`` of a fusion: the comparison table, the coefficient line."""
    from ..evaluation.report import format_rows

    n = res.names
    text = (
        f"Logistic regression fitted on {res.model.n_fit} validation samples over the logits of {n['llm']}, "
        f"{n['crm']} and the item+user baseline ({n['item_user']}, training interactions only), applied "
        f"unchanged to the test samples above (`ragrec.evaluation.fusion`). Each row is the paired ΔAUC of "
        f"the fusion against one of its inputs; `fusion − fusion w/o LLM` is the LLM's marginal value over "
        f"collaborative filtering.\n\n" + format_rows(comparisons, "the row's input")
    )
    return (
        {f"Fusion: {n['llm']} + {n['crm']} + item/user, fitted on validation": text},
        [res.note()],
        {"fusion": {**res.summary(), "comparisons": comparisons}},
    )


def fusion_parts(ev) -> tuple[dict[str, str], list[str], dict]:
    """An evaluation's fusion ``(sections, notes, metrics.json extra)``: the report, or why it was skipped."""
    if ev.fusion is not None:
        return fusion_report(ev.fusion, ev.fusion_rows)
    return {}, ([f"fusion skipped: {ev.fusion_error}"] if ev.fusion_error else []), {}


def same_config(a: dict, b: dict) -> bool:
    """Equal configs up to float noise (2/3 written as 0.6666667 in YAML is the paper's 2/3)."""
    return a.keys() == b.keys() and all(
        abs(a[k] - b[k]) < 1e-6 if isinstance(a[k], float) and isinstance(b[k], (int, float)) else a[k] == b[k]
        for k in a
    )


def variant_row(
    name: str,
    labels: np.ndarray,
    probs: np.ndarray,
    ref: Scored | None,
    cfg: RunConfig,
    *,
    examples: int | None = None,
    group: str = "",
    key: str = "",
    user_ids: np.ndarray | None = None,
) -> dict:
    """One report row: :func:`~ragrec.methods.common.metric_row` (sample and user-clustered intervals, the
    paired ΔAUC against ``ref``; ``delta`` None for the reference itself) plus ``key``, ``group``, ``examples``."""
    against = ref.probs if ref is not None and ref.probs is not probs else None
    row = metric_row(name, labels, probs, cfg.eval.bootstrap, cfg.seed, user_ids, against)
    row.update(key=key, group=group, examples=examples)
    if ref is not None and against is None:
        row["delta"] = None
    return row


def decomposition_notes(test: pa.Table, ref: Scored | None) -> list[str]:
    """One note line: the reference variant's AUC split into within-user and between-user pairs."""
    from ..evaluation.metrics import auc_decomposition
    from ..evaluation.report import decomposition_note

    if ref is None:
        return []
    d = auc_decomposition(test.column("user_id").to_numpy(), test.column("label").to_numpy(), ref.probs)
    return [decomposition_note(ref.label, d)]


def reading(rows: list[dict], reference: str, method: str) -> list[str]:
    """Plain-language lines: does the full method (row key ``reference``, called ``method``) beat each row, and
    the trivial baselines?

    Significance is judged on the user-clustered interval of ΔAUC when rows have it (``delta_ulo/uhi``)."""
    from ..evaluation.report import delta_interval

    ref = next((r for r in rows if r["key"] == reference), None)
    if ref is None:
        return []
    out = []
    ivs = [(r["name"], *delta_interval(r)) for r in rows if r.get("delta") is not None]
    better = [n for n, lo, hi in ivs if lo > 0]
    worse = [n for n, lo, hi in ivs if hi < 0]
    tied = [n for n, lo, hi in ivs if lo <= 0 <= hi]
    users = any(r.get("delta_ulo") is not None for r in rows)
    which = "95% user-clustered interval" if users else "95% interval"
    if worse:
        out.append(f"{method} is significantly better than: " + ", ".join(worse) + f" ({which} of ΔAUC excludes 0)")
    if better:
        out.append(f"significantly better than {method}: " + ", ".join(better) + f" ({which} of ΔAUC excludes 0)")
    if tied:
        out.append(f"not distinguishable from {method} ({which} of ΔAUC contains 0): " + ", ".join(tied))
    trivial = [r for r in rows if r["group"] == "trivial"]
    if trivial and ref["auc"] < max(r["auc"] for r in trivial):
        out.append(f"{method} does NOT beat the best trivial baseline (AUC {max(r['auc'] for r in trivial):.4f}).")
    return out


# ---------------------------------------------------------------------------------------------------
# the engine: one evaluation for every method, parameterised by its EvaluationSpec
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sweep:
    """One sweep of the full variant: the dotted config field ``swept`` set to each value of ``eval.<key>``
    (plus the ``fixed`` overrides). ``key`` names the eval field listing the points and the rows' entry in
    ``metrics.json``; ``column`` is the rows' x column, ``label`` a point's row name (a format string of x),
    ``title`` the report section, ``xlabel`` and ``plot`` the AUC-vs-x plot. ``skip(cfg, x)`` says why a point
    cannot run (logged, left out) or None."""

    key: str
    swept: str
    column: str
    label: str
    title: str
    xlabel: str
    plot: str
    fixed: Mapping[str, Any] = field(default_factory=dict)
    skip: Callable[[RunConfig, Any], str | None] | None = None

    def overrides(self, x: Any) -> dict[str, Any]:
        return {self.swept: x, **self.fixed}


@dataclass
class FusionFit:
    """What a method's fusion hook returns: the fitted fusion (a ``FusionResult``), the artifact keys of the
    fusion rows, the collaborative model's test row (its probabilities are the fusion's ``crm`` input in the
    comparisons), and method-specific note lines and ``metrics.json`` ``fusion`` entries."""

    result: Any
    keys: dict[str, str]
    crm: Scored
    notes: list[str] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)


def adapter_examples(pipe: Any, vcfg: RunConfig, adapter: Any) -> int | None:
    """IT examples of a row: the ``rows`` that its adapter's manifest records (None without an adapter)."""
    return int(adapter.manifest()["rows"]) if adapter is not None else None


def _no_notes(ev: Evaluation) -> list[str]:
    return []


def _no_metrics(ev: Evaluation) -> dict:
    return {}


@dataclass(frozen=True)
class EvaluationSpec:
    """What one method's evaluation is made of; the :class:`Evaluation` engine does the rest.

    * ``method``: the registered method (``cfg.method``; the report's title is its ``Method.title``, its
      ``Method.pipeline`` the :class:`~ragrec.methods.base.MethodPipeline` scored on).
    * ``variants`` (``eval.variants`` picks and orders them) and ``reference`` (the variant key of the full
      method: the first row, every ΔAUC is paired against it; its overrides are :attr:`full`).
    * ``sweeps``; ``point_section``: the config section sweep points change (a point whose section equals
      the full variant's, :func:`same_config`, is the reference row); ``sweep_adapter``: whether
      ``eval.sweep_adapter=retrain`` gives each point its own adapter (else all share the full adapter, as
      ``shared_note`` says in the sweep sections).
    * ``row_group``: the group of every scored row (None: the row's table, e.g. ``Table 1``, ``fusion``).
    * hooks: ``baselines`` (variant name -> ``hook(ev) -> Scored``, run after the variants when
      ``eval.variants`` lists it), ``fusion(ev, ref) -> FusionFit`` (raises ValueError when it cannot fit;
      ``fusion_names`` name its inputs), ``examples(pipe, vcfg, adapter)`` (a row's IT examples),
      ``notes(ev)`` (method lines after the progress line) and ``metrics(ev)`` (extra ``metrics.json``
      entries after the sweeps).
    """

    method: str
    variants: Mapping[str, Variant]
    reference: str
    sweeps: tuple[Sweep, ...] = ()
    point_section: str = ""
    shared_note: str = "every point uses the full variant's adapter"
    sweep_adapter: bool = False
    row_group: str | None = None
    baselines: Mapping[str, Callable[[Evaluation], Scored]] = field(default_factory=dict)
    fusion_names: Mapping[str, str] = field(default_factory=dict)
    fusion: Callable[[Evaluation, Scored], FusionFit] | None = None
    examples: Callable[[Any, RunConfig, Any], int | None] = adapter_examples
    notes: Callable[[Evaluation], list[str]] = _no_notes
    metrics: Callable[[Evaluation], dict] = _no_metrics

    @property
    def full(self) -> Mapping[str, Any]:
        """The overrides of the full variant (:attr:`reference`): the base of every sweep and learning-curve point."""
        return self.variants[self.reference].overrides

    def evaluate(self, cfg: RunConfig, force: tuple[str, ...] = ()) -> RunResult:
        """Run the :class:`Evaluation` of ``cfg`` with this spec (a method module's ``evaluate``)."""
        return Evaluation(cfg, force, self).run()


class Evaluation:
    """Scores a method's variants, baselines, fusion, sweep and learning-curve points of one config on the same
    test samples and writes the report to ``<output_dir>/<name>/evaluate/`` (``report.md``, ``metrics.json``,
    ``predictions.parquet``, plots). A method's module runs it as ``evaluate = SPEC.evaluate``."""

    def __init__(self, cfg: RunConfig, force: tuple[str, ...], spec: EvaluationSpec):
        self.method = get_method(spec.method)
        self.title = self.method.title
        if cfg.method != spec.method:
            raise ValueError(f"this evaluation is {self.title}'s; the config says method {cfg.method!r}")
        self.cfg, self.spec = cfg, spec
        self.pipe = self.method.pipeline(cfg, force)
        self.full_config = variant_config(cfg, spec.full)
        self.out_dir = cfg.run_dir() / "evaluate"
        self.t0 = time.perf_counter()
        self.test: pa.Table | None = None
        self.scored: dict[str, Scored] = {}
        self.points: dict[str, dict[Any, Scored]] = {s.key: {} for s in spec.sweeps}
        self._full_adapter = None
        self.fusion = None  # FusionResult once run_fusion succeeded
        self.fusion_fit: FusionFit | None = None
        self.fusion_rows: list[dict] = []
        self.fusion_error: str | None = None
        self.curve = None  # LearningCurve once the curve runs
        self._trivial: dict[str, np.ndarray] | None = None  # trivial_baselines on the test samples, once

    # ---- scoring ---------------------------------------------------------------------------------
    def _scored(self, name: str, label: str, table: str, vcfg: RunConfig, adapter, examples: bool = True) -> Scored:
        self.pipe.upstream(vcfg)
        preds, art = self.pipe.predict(adapter, vcfg)
        if not np.array_equal(preds.column("sample_id").to_numpy(), self.test.column("sample_id").to_numpy()):
            raise RuntimeError("variant predictions are not aligned with the evaluation samples")
        keys = {"scores": art.key} | ({"lora": adapter.key} if adapter is not None else {})
        n = self.spec.examples(self.pipe, vcfg, adapter) if examples else None
        return Scored(name, label, table, preds.column("prob").to_numpy().astype(np.float64), n, keys)

    def run_variant(self, v: Variant) -> Scored:
        vcfg = variant_config(self.cfg, v.overrides)
        log.info("evaluate: variant %s (%s)", v.name, v.label)
        self.pipe.upstream(vcfg)
        adapter = self.pipe.adapter(vcfg)
        if v.name == self.spec.reference:
            self._full_adapter = adapter
        return self._scored(v.name, v.label, v.table, vcfg, adapter)

    def full_adapter(self):
        if self._full_adapter is None:
            self.pipe.upstream(self.full_config)
            self._full_adapter = self.pipe.adapter(self.full_config)
        return self._full_adapter

    @property
    def retrain_points(self) -> bool:
        return self.spec.sweep_adapter and self.cfg.eval.sweep_adapter == "retrain"

    def run_point(self, overrides: dict[str, Any], label: str) -> Scored:
        """One sweep point: the full variant with ``overrides``; the full adapter unless points retrain."""
        vcfg = variant_config(self.cfg, {**self.spec.full, **overrides})
        section = self.spec.point_section
        same = same_config(getattr(vcfg, section).model_dump(), getattr(self.full_config, section).model_dump())
        if same and self.spec.reference in self.scored:
            return self.scored[self.spec.reference]
        if self.retrain_points:
            self.pipe.upstream(vcfg)
            adapter = self.pipe.adapter(vcfg)
        else:
            adapter = self.full_adapter()
        return self._scored(label, label, "sweep", vcfg, adapter, examples=self.retrain_points)

    def curve_point(self, overrides: dict[str, Any], label: str) -> Scored:
        """One learning-curve point: the full variant with ``overrides`` (its own adapter), on the test samples."""
        vcfg = variant_config(self.cfg, {**self.spec.full, **overrides})
        self.pipe.upstream(vcfg)
        return self._scored(label, label, "learning curve", vcfg, self.pipe.adapter(vcfg))

    def run_fusion(self) -> None:
        """Fusion rows: the full variant + the method's collaborative model + item/user, fitted on the
        validation split (``eval.fusion``). A fit that cannot run (e.g. one-class validation labels) is a note
        in the report unless ``eval.fusion`` is explicitly true, then it raises."""
        from ..evaluation.fusion import skipped

        if self.spec.fusion is None:
            self.fusion_error = skipped(self.cfg.eval.fusion, ValueError(f"{self.title} has no fusion"))
            return
        n = self.spec.fusion_names
        log.info("evaluate: fusion (%s + %s + item/user, fitted on the validation split)", n["llm"], n["crm"])
        ref = self.run_point({}, self.spec.variants[self.spec.reference].label)  # the full variant's test scores
        self.pipe.upstream(self.full_config)
        try:
            fit = self.spec.fusion(self, ref)
        except ValueError as e:
            self.fusion_error = skipped(self.cfg.eval.fusion, e)
            return
        res = fit.result
        self.scored[fit.crm.name] = fit.crm
        full, no_llm = fusion_labels(res.names)
        self.scored["fusion"] = Scored("fusion", full, "fusion", res.fused, keys=fit.keys)
        self.scored["fusion_no_llm"] = Scored("fusion_no_llm", no_llm, "fusion", res.fused_without_llm, keys=fit.keys)
        self.fusion, self.fusion_fit = res, fit
        labels, users = self.test.column("label").to_numpy(), self.test.column("user_id").to_numpy()
        self.fusion_rows = fusion_comparisons(res, labels, users, self.cfg, ref.probs, fit.crm.probs)

    # ---- the whole evaluation ------------------------------------------------------------------------
    def run(self) -> RunResult:
        from .learning_curve import BASELINE, LearningCurve, curve_on, fusion_on, sweeps_on

        cfg, spec = self.cfg, self.spec
        self.pipe.upstream(self.full_config)
        self.test = self.pipe.eval_samples("test")
        names = cfg.eval.variants_for(spec.method)
        order = [n for n in names if n in spec.variants]
        if spec.reference in order:  # the reference first: every other row's delta is computed against it
            order.remove(spec.reference)
            order.insert(0, spec.reference)
        for name in order:
            self.scored[name] = self.run_variant(spec.variants[name])
            self.write()
        for name in (n for n in names if n in spec.baselines):
            self.scored[name] = spec.baselines[name](self)
            self.write()
        if fusion_on(cfg):
            self.run_fusion()
            self.write()
        for sweep in spec.sweeps if sweeps_on(cfg) else ():
            for x in getattr(cfg.eval, sweep.key):
                why = sweep.skip(cfg, x) if sweep.skip else None
                if why:
                    log.warning("evaluate: %s skipped", why)
                    continue
                self.points[sweep.key][x] = self.run_point(sweep.overrides(x), sweep.label.format(x))
                self.write()
        if curve_on(cfg):
            self.curve = LearningCurve(cfg, self.pipe.store, self.test, self.trivial()[BASELINE])
            zero_shot = spec.variants["zero_shot"]
            self.curve.run(self.scored, lambda: self.run_variant(zero_shot), self.curve_point, self.write)
        return RunResult(self.out_dir, self.write(final=True), dict(self.pipe.arts))

    # ---- report ----------------------------------------------------------------------------------------
    def _row(self, s: Scored, ref: Scored | None, **kw) -> dict:
        labels, users = self.test.column("label").to_numpy(), self.test.column("user_id").to_numpy()
        return variant_row(s.label, labels, s.probs, ref, self.cfg, examples=s.examples, user_ids=users, **kw)

    def trivial(self) -> dict[str, np.ndarray]:
        """The trivial baselines' P(yes) on the test samples (name -> probs), fitted on the training interactions
        only (:func:`~ragrec.methods.common.train_interactions`); computed once."""
        from ..evaluation.baselines import trivial_baselines

        if self._trivial is None:
            a = self.pipe.arts
            train = train_interactions(a["dataset"].read_table("interactions"), a["samples"].read_table("samples"))
            self._trivial = trivial_baselines(train, self.test)
        return self._trivial

    def _rows(self) -> list[dict]:
        ref, group = self.scored.get(self.spec.reference), self.spec.row_group
        rows = [self._row(s, ref, group=group or s.table, key=s.name) for s in self.scored.values()]
        for name, p in self.trivial().items():
            rows.append(self._row(Scored(name, name, "trivial", p), ref, group="trivial", key=name))
        return rows

    def _sweep_rows(self, sweep: Sweep) -> list[dict]:
        ref = self.scored.get(self.spec.reference)
        return [{sweep.column: x, **self._row(s, ref, key=s.label)} for x, s in self.points[sweep.key].items()]

    def sweep_note(self) -> str:
        if self.retrain_points:
            return "every point tunes its own adapter (eval.sweep_adapter=retrain)"
        return self.spec.shared_note

    def write(self, final: bool = False) -> dict:
        import pyarrow.parquet as pq

        from ..evaluation.report import format_rows, plot_auc_bars, plot_sweep, write_report

        cfg, spec, title = self.cfg, self.spec, self.title
        rows = self._rows()
        sweep_rows = {s.key: self._sweep_rows(s) for s in spec.sweeps}
        counts = dict(self.pipe.arts["samples"].manifest()["splits"])
        counts[f"evaluated ({cfg.eval.subset} test samples)"] = self.test.num_rows
        counts["users evaluated"] = len(np.unique(self.test.column("user_id").to_numpy()))
        counts["positive rate of evaluated"] = round(float(self.test.column("label").to_numpy().mean()), 4)
        trivial = {r["name"]: r["auc"] for r in rows if r["group"] == "trivial"}
        plots = {"auc": (lambda r: lambda p: plot_auc_bars(r, p))(rows)}
        f_sections, f_notes, f_extra = fusion_parts(self)
        if self.fusion is not None:
            f_extra["fusion"].update(self.fusion_fit.metrics)
            f_notes += self.fusion_fit.notes
        sections = dict(f_sections)
        for s in spec.sweeps:
            pts = sweep_rows[s.key]
            if pts:
                sections[s.title] = f"{self.sweep_note()}.\n\n" + format_rows(pts, title)
                if len(pts) > 1:
                    plots[s.plot] = (lambda r, col, xl: lambda p: plot_sweep([q[col] for q in r], r, p, xl, trivial))(
                        pts, s.column, s.xlabel
                    )
        c_sections, c_plots, c_extra = (
            self.curve.report({r["key"]: r["auc"] for r in rows}) if self.curve else ({}, {}, {})
        )
        sections.update(c_sections)
        plots.update(c_plots)
        wall = time.perf_counter() - self.t0
        notes = [f"{'finished' if final else 'in progress'}; wall time so far {wall:.0f} s", *spec.notes(self)]
        notes += decomposition_notes(self.test, self.scored.get(spec.reference))
        notes += reading(rows, spec.reference, title) + f_notes
        self.out_dir.mkdir(parents=True, exist_ok=True)
        preds = self.test.select(["sample_id", "user_id", "item_id", "label"])
        for s in [*self.scored.values(), *(p for pts in self.points.values() for p in pts.values())]:
            if s.name not in preds.column_names:
                preds = preds.append_column(s.name, pa.array(s.probs.astype(np.float32)))
        for name, probs in (self.curve.columns() if self.curve else {}).items():
            preds = preds.append_column(name, pa.array(probs.astype(np.float32)))
        pq.write_table(preds, self.out_dir / "predictions.parquet")
        extra = {
            **sweep_rows,
            **spec.metrics(self),
            "wall_seconds": round(wall, 1),
            "finished": final,
            "artifacts": {s.name: s.keys for s in self.scored.values()},
        }
        extra.update(f_extra)
        extra.update(c_extra)
        write_report(
            self.out_dir,
            title=f"{title} evaluation on {cfg.data.name}",
            config=self.method.config_dict(cfg),
            counts=counts,
            rows=rows,
            notes=notes,
            plots=plots,
            sections=sections,
            reference=title,
            extra=extra,
        )
        return {"rows": rows, **sweep_rows, "counts": counts, "wall_seconds": wall}
