"""`ragrec evaluate`: the RALLRec paper's evaluation (Tables 1, 3, 4 and Figures 3, 4) on one config.

Every variant is the base config with a few fields overridden (:data:`VARIANTS`), run through the same
:class:`~ragrec.methods.rallrec.Pipeline` on the same test samples. Stages are content-addressed, so
what variants share (dataset, samples, descriptions, embeddings, LightGCN, projector, and the full
variant's adapter for the sweeps) is computed once; a rerun reuses every finished variant.

Outputs in ``<output_dir>/<name>/evaluate/``: ``report.md`` (variant table with AUC 95% bootstrap CIs, over
samples and user-clustered, and the paired-bootstrap AUC difference against full RALLRec, K and alpha
sweep tables), ``metrics.json``,
``auc.png`` (AUC per variant), ``auc_vs_k.png``, ``auc_vs_alpha.png`` and ``predictions.parquet`` (one
probability column per variant). The report is rewritten after every finished variant, so a long
evaluation can be watched and an interrupted one still shows what it measured.

Fusion (``eval.fusion``, on unless false): the full variant also scores the validation split, a logistic
regression over its logit, DeepFM's and the item+user baseline's is fitted there
(:mod:`ragrec.evaluation.fusion`) and applied to the test samples: rows ``fusion`` and ``fusion w/o
LLM``, a section with the paired ΔAUC of the fusion against each input and against ``fusion w/o LLM``,
the coefficients in ``metrics.json`` (``fusion``) and one report line.

Learning curve (``eval.learning_curve``, :mod:`ragrec.methods.learning_curve`): the full variant tuned on N
training samples (crossed with ``eval.learning_curve_grid``), plus zero-shot as N = 0, on the same test
samples: a report section, ``metrics.json`` ``learning_curve`` and ``learning_curve.png``. ``eval.variants:
[]`` runs only the curve (zero-shot and the trivial baselines stay; no sweeps; fusion only when true).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from ..config import RunConfig, apply_overrides
from ..evaluation.fusion import skipped as fusion_skipped
from .learning_curve import LearningCurve, curve_on, fusion_on, sweeps_on
from .rallrec import ItemViews, Pipeline, RunResult, read_users, split, train_interactions

log = logging.getLogger("ragrec.evaluate")

FULL = {"retrieval.strategy": "rerank", "retrieval.embedding": "mixed", "lora.enabled": True}
"""Overrides that make a config the full RALLRec (reranker over concat + SSL embeddings, tuned)."""


@dataclass(frozen=True)
class Variant:
    """One row of the paper's tables: ``overrides`` (dotted field -> value) applied to the base config."""

    name: str
    label: str
    table: str
    overrides: dict[str, Any] = field(default_factory=dict)


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("zero_shot", "w/o IT (zero-shot)", "Table 3", {**FULL, "lora.enabled": False}),
        Variant(
            "recent",
            "w/o retrieval (recent-K)",
            "Table 3",
            {**FULL, "retrieval.strategy": "recent", "prompt.augmentation": False},
        ),
        Variant(
            "rella",
            "ReLLa (text retrieval)",
            "Table 1",
            {**FULL, "retrieval.strategy": "relevance", "retrieval.embedding": "text"},
        ),
        Variant("hybrid", "Hybrid-Score (½ text, ½ colla)", "Table 1", {**FULL, "retrieval.strategy": "hybrid"}),
        Variant(
            "concat",
            "concat w/o SSL",
            "Table 4",
            {**FULL, "retrieval.strategy": "relevance", "retrieval.embedding": "concat"},
        ),
        Variant("concat_ssl", "concat + SSL", "Table 4", {**FULL, "retrieval.strategy": "relevance"}),
        Variant("rallrec", "RALLRec (concat + SSL + reranker)", "Table 1", dict(FULL)),
        Variant("no_aug", "w/o data augmentation", "Table 3", {**FULL, "prompt.augmentation": False}),
    )
}
REFERENCE = "rallrec"
BASELINE_VARIANTS = ("deepfm",)


def variant_config(cfg: RunConfig, overrides: dict[str, Any]) -> RunConfig:
    """``cfg`` with dotted-field ``overrides`` applied (validated like a config file)."""
    raw = apply_overrides(cfg.model_dump(mode="json"), [])
    for key, value in overrides.items():
        node = raw
        *parents, last = key.split(".")
        for p in parents:
            node = node[p]
        if last not in node:
            raise KeyError(f"variant override {key!r}: no such config field")
        node[last] = value
    return RunConfig.model_validate(raw)


# ---------------------------------------------------------------------------------------------------
# baselines
# ---------------------------------------------------------------------------------------------------
def deepfm_stage(pipe: Pipeline):
    """DeepFM (ID + side features) trained under Ray Train on the train split, early-stopped on valid."""
    from ..training.deepfm import train_deepfm

    cfg, a = pipe.cfg, pipe.arts
    drop = ["history_item_ids", "history_ratings"]

    def compute(art):
        samples = a["samples"].read_table("samples").drop_columns(drop)
        items, users = a["dataset"].read_table("items"), read_users(a["dataset"])
        res = train_deepfm(
            split(samples, "train"),
            split(samples, "valid"),
            items,
            users,
            cfg.eval.deepfm,
            use_ray=True,
            seed=cfg.seed,
            out_dir=str(art.staging / "model"),
            num_workers=cfg.ray.num_workers,
            use_gpu=cfg.ray.use_gpu,
        )
        art.write_json(res.history, "history")
        return {"rows": len(res.history)}

    return pipe.store.run(
        "deepfm", {"deepfm": cfg.eval.deepfm, "seed": cfg.seed}, [a["dataset"], a["samples"]], compute
    )


def deepfm_probs(pipe: Pipeline, test: pa.Table) -> np.ndarray:
    from ..training.deepfm import predict_deepfm

    art = deepfm_stage(pipe)
    pipe.arts["deepfm"] = art
    a = pipe.arts
    return predict_deepfm(art.path / "model", test, a["dataset"].read_table("items"), read_users(a["dataset"]))


# ---------------------------------------------------------------------------------------------------
# fusion: LLM + DeepFM + item/user baseline (ragrec.evaluation.fusion), used by evaluate and `ragrec run`
# ---------------------------------------------------------------------------------------------------
FUSION_NAMES = {"llm": "RALLRec", "crm": "DeepFM", "item_user": "item_user_logit"}


def fusion_labels(names: dict[str, str]) -> tuple[str, str]:
    """Row names of the fusion and of the fusion without the LLM."""
    return (f"fusion ({names['llm']} + {names['crm']} + item/user)", f"fusion w/o LLM ({names['crm']} + item/user)")


def fusion_logits(pipe: Pipeline, samples: pa.Table, llm_probs: np.ndarray, baseline) -> dict[str, np.ndarray]:
    """The fusion inputs of ``samples``: logit of the LLM's P(yes), of DeepFM's P(click), item+user log-odds."""
    from ..evaluation.fusion import logit

    return {
        "llm": logit(llm_probs),
        "crm": logit(deepfm_probs(pipe, samples)),
        "item_user": baseline.logit(samples.column("user_id").to_numpy(), samples.column("item_id").to_numpy()),
    }


def rallrec_fusion(
    pipe: Pipeline,
    views: ItemViews,
    vcfg: RunConfig,
    adapter,
    test: pa.Table,
    test_probs: np.ndarray,
    llm_name: str = "RALLRec",
):
    """Fit the fusion of ``vcfg`` (+ ``adapter``) on the validation split and apply it to ``test``.

    Scores the ``eval.max_valid_samples`` validation samples (a cached scores artifact, like the test
    scores), trains or reuses the DeepFM stage, builds the item+user table from training interactions,
    and fits the full model as a cached ``fusion`` artifact. ``test_probs``: the same variant's test
    P(yes), aligned with ``test``. Returns ``(FusionResult, validation scores artifact)``; sets
    ``pipe.arts["deepfm"]``.
    """
    from ..evaluation.baselines import ItemUserBaseline
    from ..evaluation.fusion import fuse

    valid, vart = pipe.predict(views, vcfg.retrieval, adapter, split_name="valid", cfg=vcfg)
    a = pipe.arts
    baseline = ItemUserBaseline(
        train_interactions(a["dataset"].read_table("interactions"), a["samples"].read_table("samples"))
    )
    vlog = fusion_logits(pipe, valid, valid.column("prob").to_numpy(), baseline)
    tlog = fusion_logits(pipe, test, test_probs, baseline)
    res = fuse(
        vlog,
        valid.column("label").to_numpy(),
        tlog,
        {**FUSION_NAMES, "llm": llm_name},
        store=pipe.store,
        inputs=[vart, a["deepfm"], a["samples"], a["dataset"]],
    )
    return res, vart


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
            return _row(
                name,
                labels,
                probs,
                _Scored(name, name, "fusion", ref_probs),
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


# ---------------------------------------------------------------------------------------------------
# the evaluation
# ---------------------------------------------------------------------------------------------------
@dataclass
class _Scored:
    name: str
    label: str
    table: str
    probs: np.ndarray
    examples: int | None = None
    keys: dict[str, str] = field(default_factory=dict)


class Evaluation:
    """Scores variants and sweep points of one config on the same test samples and writes the report."""

    def __init__(self, cfg: RunConfig, force: tuple[str, ...] = ()):
        self.cfg = cfg
        self.pipe = Pipeline(cfg, force)
        self.out_dir = cfg.run_dir() / "evaluate"
        self.t0 = time.perf_counter()
        self.views: ItemViews | None = None
        self.test: pa.Table | None = None
        self.scored: dict[str, _Scored] = {}
        self.k_points: dict[int, _Scored] = {}
        self.alpha_points: dict[float, _Scored] = {}
        self._full_adapter = None
        self.fusion = None  # FusionResult once run_fusion succeeded
        self.fusion_rows: list[dict] = []
        self.fusion_error: str | None = None
        self.curve: LearningCurve | None = None

    # ---- scoring ---------------------------------------------------------------------------------
    def _score(self, vcfg: RunConfig, adapter) -> tuple[np.ndarray, dict[str, str]]:
        preds, art = self.pipe.predict(self.views, vcfg.retrieval, adapter, cfg=vcfg)
        if not np.array_equal(preds.column("sample_id").to_numpy(), self.test.column("sample_id").to_numpy()):
            raise RuntimeError("variant predictions are not aligned with the evaluation samples")
        keys = {"scores": art.key}
        if adapter is not None:
            keys["lora"] = adapter.key
        return preds.column("prob").to_numpy().astype(np.float64), keys

    def _examples(self, vcfg: RunConfig) -> int | None:
        if not vcfg.lora.enabled:
            return None
        return int(self.pipe.examples(self.views, vcfg).manifest()["rows"])

    def run_variant(self, v: Variant) -> _Scored:
        vcfg = variant_config(self.cfg, v.overrides)
        log.info("evaluate: variant %s (%s)", v.name, v.label)
        adapter = self.pipe.adapter(self.views, vcfg)
        if v.name == REFERENCE:
            self._full_adapter = adapter
        probs, keys = self._score(vcfg, adapter)
        return _Scored(v.name, v.label, v.table, probs, self._examples(vcfg), keys)

    def full_adapter(self):
        if self._full_adapter is None:
            self._full_adapter = self.pipe.adapter(self.views, variant_config(self.cfg, FULL))
        return self._full_adapter

    def run_point(self, overrides: dict[str, Any], label: str) -> _Scored:
        """One sweep point: full RALLRec with ``overrides``; the full adapter unless ``sweep_adapter=retrain``."""
        vcfg = variant_config(self.cfg, {**FULL, **overrides})
        ref = variant_config(self.cfg, FULL)
        if _same(vcfg.retrieval.model_dump(), ref.retrieval.model_dump()) and REFERENCE in self.scored:
            return self.scored[REFERENCE]
        adapter = (
            self.pipe.adapter(self.views, vcfg) if self.cfg.eval.sweep_adapter == "retrain" else self.full_adapter()
        )
        probs, keys = self._score(vcfg, adapter)
        examples = self._examples(vcfg) if self.cfg.eval.sweep_adapter == "retrain" else None
        return _Scored(label, label, "sweep", probs, examples, keys)

    def curve_point(self, overrides: dict[str, Any], label: str) -> _Scored:
        """One learning-curve point: the full variant with ``overrides`` (its own adapter), on the test samples."""
        vcfg = variant_config(self.cfg, {**FULL, **overrides})
        probs, keys = self._score(vcfg, self.pipe.adapter(self.views, vcfg))
        return _Scored(label, label, "learning curve", probs, self._examples(vcfg), keys)

    def run_fusion(self) -> None:
        """Fusion rows: full RALLRec + DeepFM + item/user fitted on the validation split (``eval.fusion``).

        A fit that cannot run (e.g. one-class validation labels) is a note in the report unless
        ``eval.fusion`` is explicitly true, then it raises.
        """
        log.info("evaluate: fusion (RALLRec + DeepFM + item/user, fitted on the validation split)")
        ref = self.run_point({}, VARIANTS[REFERENCE].label)  # the full variant's test scores (cached)
        try:
            res, vart = rallrec_fusion(
                self.pipe, self.views, variant_config(self.cfg, FULL), self.full_adapter(), self.test, ref.probs
            )
        except ValueError as e:
            self.fusion_error = fusion_skipped(self.cfg.eval.fusion, e)
            return
        deepfm_key = self.pipe.arts["deepfm"].key
        if "deepfm" in self.scored:
            crm = self.scored["deepfm"].probs
        else:
            crm = deepfm_probs(self.pipe, self.test).astype(np.float64)
            self.scored["deepfm"] = _Scored(
                "deepfm", "DeepFM (ID-based CTR)", "fusion", crm, keys={"deepfm": deepfm_key}
            )
        keys = {"fusion": res.artifact.key, "valid_scores": vart.key, "deepfm": deepfm_key}
        full, no_llm = fusion_labels(res.names)
        self.scored["fusion"] = _Scored("fusion", full, "fusion", res.fused, keys=keys)
        self.scored["fusion_no_llm"] = _Scored("fusion_no_llm", no_llm, "fusion", res.fused_without_llm, keys=keys)
        self.fusion = res
        self.fusion_rows = fusion_comparisons(
            res, self.test.column("label").to_numpy(), self.test.column("user_id").to_numpy(), self.cfg, ref.probs, crm
        )

    # ---- the whole evaluation ------------------------------------------------------------------------
    def run(self) -> RunResult:
        cfg = self.cfg
        self.views = self.pipe.upstream()
        self.test = self.pipe.eval_samples("test")
        order = [n for n in cfg.eval.variants_for("rallrec") if n in VARIANTS]
        if REFERENCE in order:  # the reference first: every other row's delta is computed against it
            order.remove(REFERENCE)
            order.insert(0, REFERENCE)
        for name in order:
            self.scored[name] = self.run_variant(VARIANTS[name])
            self.write()
        if "deepfm" in cfg.eval.variants_for("rallrec"):
            log.info("evaluate: DeepFM baseline (Ray Train)")
            self.scored["deepfm"] = _Scored(
                "deepfm",
                "DeepFM (ID-based CTR)",
                "Table 1",
                deepfm_probs(self.pipe, self.test).astype(np.float64),
                keys={"deepfm": self.pipe.arts["deepfm"].key},
            )
            self.write()
        if fusion_on(cfg):
            self.run_fusion()
            self.write()
        for k in cfg.eval.k_sweep if sweeps_on(cfg) else []:
            self.k_points[k] = self.run_point({"retrieval.k": k}, f"K={k}")
            self.write()
        for alpha in cfg.eval.alpha_sweep if sweeps_on(cfg) else []:
            self.alpha_points[alpha] = self.run_point(
                {"retrieval.alpha": alpha, "retrieval.beta": 1.0}, f"alpha={alpha:.3g}"
            )
            self.write()
        if curve_on(cfg):
            self.curve = LearningCurve(cfg, self.pipe.store, self.test)
            self.curve.run(self.scored, lambda: self.run_variant(VARIANTS["zero_shot"]), self.curve_point, self.write)
        return RunResult(self.out_dir, self.write(final=True), dict(self.pipe.arts))

    # ---- report ----------------------------------------------------------------------------------------
    def _rows(self) -> list[dict]:
        from ..evaluation.baselines import trivial_baselines

        labels = self.test.column("label").to_numpy()
        users = self.test.column("user_id").to_numpy()
        ref = self.scored.get(REFERENCE)
        rows = [
            _row(
                s.label, labels, s.probs, ref, self.cfg, examples=s.examples, group=s.table, key=s.name, user_ids=users
            )
            for s in self.scored.values()
        ]
        samples = self.pipe.arts["samples"].read_table("samples")
        train = train_interactions(self.pipe.arts["dataset"].read_table("interactions"), samples)
        for name, p in trivial_baselines(train, self.test).items():
            rows.append(_row(name, labels, p, ref, self.cfg, group="trivial", key=name, user_ids=users))
        return rows

    def _sweep_rows(self, points: dict, xname: str) -> list[dict]:
        labels = self.test.column("label").to_numpy()
        ref = self.scored.get(REFERENCE)
        users = self.test.column("user_id").to_numpy()
        return [
            {
                xname: x,
                **_row(s.label, labels, s.probs, ref, self.cfg, examples=s.examples, key=s.label, user_ids=users),
            }
            for x, s in points.items()
        ]

    def write(self, final: bool = False) -> dict:
        import pyarrow.parquet as pq

        from ..evaluation.report import format_rows, plot_auc_bars, plot_sweep, write_report

        cfg = self.cfg
        rows = self._rows()
        k_rows = self._sweep_rows(self.k_points, "k")
        a_rows = self._sweep_rows(self.alpha_points, "alpha")
        counts = dict(self.pipe.arts["samples"].manifest()["splits"])
        counts[f"evaluated ({cfg.eval.subset} test samples)"] = self.test.num_rows
        counts["users evaluated"] = len(np.unique(self.test.column("user_id").to_numpy()))
        counts["positive rate of evaluated"] = round(float(self.test.column("label").to_numpy().mean()), 4)
        trivial = {r["name"]: r["auc"] for r in rows if r["group"] == "trivial"}
        plots = {"auc": (lambda r: lambda p: plot_auc_bars(r, p))(rows)}
        f_sections, f_notes, f_extra = _fusion_parts(self)
        sections = dict(f_sections)
        adapter_note = (
            "every point uses the full variant's adapter (eval.sweep_adapter=shared: "
            "only the retrieval changes at inference)"
            if cfg.eval.sweep_adapter == "shared"
            else "every point tunes its own adapter (eval.sweep_adapter=retrain)"
        )
        if k_rows:
            sections["K sweep (Figure 3)"] = f"{adapter_note}.\n\n" + format_rows(k_rows, "RALLRec")
            if len(k_rows) > 1:
                plots["auc_vs_k"] = (
                    lambda r: lambda p: plot_sweep([x["k"] for x in r], r, p, "K (history items)", trivial)
                )(k_rows)
        if a_rows:
            sections["α sweep, β = 1 (Figure 4)"] = f"{adapter_note}.\n\n" + format_rows(a_rows, "RALLRec")
            if len(a_rows) > 1:
                plots["auc_vs_alpha"] = (
                    lambda r: lambda p: plot_sweep([x["alpha"] for x in r], r, p, "α (relevance weight)", trivial)
                )(a_rows)
        c_sections, c_plots, c_extra = (
            self.curve.report({r["key"]: r["auc"] for r in rows}) if self.curve else ({}, {}, {})
        )
        sections.update(c_sections)
        plots.update(c_plots)
        wall = time.perf_counter() - self.t0
        notes = [
            f"{'finished' if final else 'in progress'}; wall time so far {wall:.0f} s",
            f"model {cfg.llm.model}; LoRA on {cfg.lora.train_samples} sampled training samples "
            f"({'x3 mixed views' if cfg.prompt.augmentation else 'one view'}), K = {cfg.retrieval.k}, "
            f"α = {cfg.retrieval.alpha:.3g}, β = {cfg.retrieval.beta:g}",
        ]
        notes += _decomposition_notes(self.test, self.scored.get(REFERENCE)) + _reading(rows)
        notes += f_notes
        self.out_dir.mkdir(parents=True, exist_ok=True)
        preds = self.test.select(["sample_id", "user_id", "item_id", "label"])
        for s in list(self.scored.values()) + list(self.k_points.values()) + list(self.alpha_points.values()):
            if s.name not in preds.column_names:
                preds = preds.append_column(s.name, pa.array(s.probs.astype(np.float32)))
        for name, probs in (self.curve.columns() if self.curve else {}).items():
            preds = preds.append_column(name, pa.array(probs.astype(np.float32)))
        pq.write_table(preds, self.out_dir / "predictions.parquet")
        extra = {
            "k_sweep": k_rows,
            "alpha_sweep": a_rows,
            "wall_seconds": round(wall, 1),
            "finished": final,
            "artifacts": {s.name: s.keys for s in self.scored.values()},
        }
        extra.update(f_extra)
        extra.update(c_extra)
        write_report(
            self.out_dir,
            title=f"RALLRec evaluation on {cfg.data.name}",
            config=cfg.model_dump(mode="json"),
            counts=counts,
            rows=rows,
            notes=notes,
            plots=plots,
            sections=sections,
            reference="RALLRec",
            extra=extra,
        )
        return {"rows": rows, "k_sweep": k_rows, "alpha_sweep": a_rows, "counts": counts, "wall_seconds": wall}


def _fusion_parts(ev) -> tuple[dict[str, str], list[str], dict]:
    """An evaluation's fusion ``(sections, notes, metrics.json extra)``: the report, or why it was skipped."""
    if ev.fusion is not None:
        return fusion_report(ev.fusion, ev.fusion_rows)
    return {}, ([f"fusion skipped: {ev.fusion_error}"] if ev.fusion_error else []), {}


def _same(a: dict, b: dict) -> bool:
    """Equal configs up to float noise (2/3 written as 0.6666667 in YAML is the paper's 2/3)."""
    return a.keys() == b.keys() and all(
        abs(a[k] - b[k]) < 1e-6 if isinstance(a[k], float) and isinstance(b[k], (int, float)) else a[k] == b[k]
        for k in a
    )


def _row(
    name: str,
    labels: np.ndarray,
    probs: np.ndarray,
    ref: _Scored | None,
    cfg: RunConfig,
    *,
    examples: int | None = None,
    group: str = "",
    key: str = "",
    user_ids: np.ndarray | None = None,
) -> dict:
    """One report row. ``auc_lo/auc_hi`` and ``delta_lo/delta_hi`` resample samples; with ``user_ids`` the row
    also gets ``uauc`` and the user-clustered intervals ``auc_ulo/auc_uhi`` and ``delta_ulo/delta_uhi``
    (users resampled with all their samples; the intervals to read)."""
    from ..evaluation.metrics import bootstrap_ci, bootstrap_delta_ci, ctr_metrics, uauc

    m = ctr_metrics(labels, probs)
    lo, hi = bootstrap_ci(labels, probs, metric="auc", n=cfg.eval.bootstrap, seed=cfg.seed)
    row = {
        "name": name,
        "key": key,
        "group": group,
        **{k: float(v) for k, v in m.items()},
        "auc_lo": float(lo),
        "auc_hi": float(hi),
        "n": len(labels),
        "examples": examples,
    }
    if user_ids is not None:
        ulo, uhi = bootstrap_ci(labels, probs, metric="auc", n=cfg.eval.bootstrap, seed=cfg.seed, groups=user_ids)
        row.update(auc_ulo=float(ulo), auc_uhi=float(uhi), uauc=float(uauc(user_ids, labels, probs)))
    if ref is not None and ref.probs is not probs:
        d, dlo, dhi = bootstrap_delta_ci(labels, probs, ref.probs, n=cfg.eval.bootstrap, seed=cfg.seed)
        row.update(delta=d, delta_lo=dlo, delta_hi=dhi)
        if user_ids is not None:
            _, dulo, duhi = bootstrap_delta_ci(
                labels, probs, ref.probs, n=cfg.eval.bootstrap, seed=cfg.seed, groups=user_ids
            )
            row.update(delta_ulo=dulo, delta_uhi=duhi)
    elif ref is not None:
        row.update(delta=None)
    return row


def _decomposition_notes(test: pa.Table, ref: _Scored | None) -> list[str]:
    """One note line: the reference variant's AUC split into within-user and between-user pairs."""
    from ..evaluation.metrics import auc_decomposition
    from ..evaluation.report import decomposition_note

    if ref is None:
        return []
    d = auc_decomposition(test.column("user_id").to_numpy(), test.column("label").to_numpy(), ref.probs)
    return [decomposition_note(ref.label, d)]


def _reading(rows: list[dict], reference: str = REFERENCE, method: str = "RALLRec") -> list[str]:
    """Plain-language lines: does the full method (row key ``reference``) beat each row, and the trivial baselines?

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


def evaluate(cfg: RunConfig, force: tuple[str, ...] = ()) -> RunResult:
    """Run every variant and sweep point of ``cfg.eval`` and write the report (see the module docstring)."""
    if cfg.method != "rallrec":
        raise ValueError(f"ragrec evaluate supports method 'rallrec' here, got {cfg.method!r}")
    return Evaluation(cfg, force).run()
