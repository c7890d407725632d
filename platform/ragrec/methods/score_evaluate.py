"""`ragrec evaluate` for SCoRe: the paper's variants (Figure 3) and the Ke / Ks sweeps (Figure 4).

Every variant is the base config with a few fields overridden (:data:`VARIANTS`), run through the same
:class:`~ragrec.methods.score.Pipeline` on the same test samples; the shared stages (samples, SASRec,
user documents, CAR, rationales, SARE) are computed once. Rows:

* ``zero_shot`` — the basic prompt P^b without instruction tuning (ICL-style);
* ``no_ci`` — P^b with LoRA, no similar users (TALLRec-style);
* ``score_base`` — users retrieved by the *untuned* encoder, then SARE;
* ``score_cf`` — users retrieved by SASRec (``h_i·h_t``) alone, then SARE;
* ``score_rerank`` — CAR without SARE (retrieval order);
* ``score`` — full SCoRe (CAR + SARE, top Ks users in P^s).

-base and -cf swap only the retriever, so their gap to SCoRe is CAR's contribution; -rerank's gap is
SARE's. Sweep points reuse the full variant's adapter (only the inference-time context changes).
Fusion (``eval.fusion``, on unless false): a logistic regression over the full SCoRe's logit, SASRec's
raw score of the target given the sample's history and the item+user baseline's logit, fitted on the
validation split (:mod:`ragrec.evaluation.fusion`): rows ``SASRec``, ``fusion``, ``fusion w/o LLM`` and
the paired ΔAUC of the fusion against each input, as for RALLRec.
Outputs in ``<output_dir>/<name>/evaluate/`` as for RALLRec: ``report.md``, ``metrics.json``,
``predictions.parquet``, ``auc.png``, ``auc_vs_ke.png``, ``auc_vs_ks.png``; rewritten after every row.
Learning curve (``eval.learning_curve``, ``eval.variants: []`` for the curve alone) as for RALLRec
(:mod:`ragrec.methods.learning_curve`): full SCoRe tuned on N training samples, zero-shot as N = 0.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from ..config import RunConfig
from ..evaluation.fusion import skipped as fusion_skipped
from .learning_curve import LearningCurve, curve_on, fusion_on, sweeps_on
from .rallrec import train_interactions
from .rallrec_evaluate import (
    _decomposition_notes,
    _fusion_parts,
    _reading,
    _row,
    _Scored,
    fusion_comparisons,
    fusion_labels,
    variant_config,
)
from .score import Pipeline, RunResult

log = logging.getLogger("ragrec.evaluate")

FULL = {"ci.retriever": "car", "sare.enabled": True, "lora.enabled": True}


@dataclass(frozen=True)
class Variant:
    name: str
    label: str
    overrides: dict[str, Any] = field(default_factory=dict)


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("zero_shot", "zero-shot (P^b, w/o IT)", {**FULL, "lora.enabled": False, "ci.ks": 0}),
        Variant("no_ci", "w/o CI (TALLRec-style P^b)", {**FULL, "ci.ks": 0}),
        Variant("score_base", "SCoRe-base (untuned retriever)", {**FULL, "ci.retriever": "base"}),
        Variant("score_cf", "SCoRe-cf (SASRec neighbours)", {**FULL, "ci.retriever": "cf"}),
        Variant("score_rerank", "SCoRe-rerank (w/o SARE)", {**FULL, "sare.enabled": False}),
        Variant("score", "SCoRe (CAR + SARE)", dict(FULL)),
    )
}
REFERENCE = "score"
FUSION_NAMES = {"llm": "SCoRe", "crm": "SASRec", "item_user": "item_user_logit"}


def sasrec_logits(pipe: Pipeline, samples: pa.Table) -> tuple[np.ndarray, str]:
    """SASRec's raw score (its next-item logit) of each sample's target item given the history before it.

    Returns ``(scores (n,) float64, how)``: ``how`` is ``"history"`` (the saved weights run on the sample's
    ``history_item_ids``, the most recent ``sasrec.max_len``) or, for a SASRec artifact trained before
    weights were saved, ``"train_user_vector"``: ``h_u . e_i`` with ``h_u`` from the user's training
    sequence (``--force sasrec`` retrains it with weights).
    """
    from ..training.sasrec import MODEL_FILE, SASRecScorer

    art = pipe.arts["sasrec"]
    users, items = samples.column("user_id").to_numpy(), samples.column("item_id").to_numpy()
    if (art.path / "train" / MODEL_FILE).exists():
        return SASRecScorer(art.path / "train")(samples.column("history_item_ids"), items), "history"
    log.warning(
        "evaluate: SASRec artifact %s has no saved weights; the fusion uses h_u . e_i from the training "
        "sequences (retrain with --force sasrec to score each sample's own history)",
        art.key,
    )
    h, e = np.load(art.file("user_emb.npy")), np.load(art.file("item_emb.npy"))
    return (h[users].astype(np.float64) * e[items].astype(np.float64)).sum(1), "train_user_vector"


class Evaluation:
    """Scores SCoRe's variants and sweep points of one config on the same test samples; writes the report."""

    def __init__(self, cfg: RunConfig, force: tuple[str, ...] = ()):
        self.cfg = cfg
        self.pipe = Pipeline(cfg, force)
        self.out_dir = cfg.run_dir() / "evaluate"
        self.t0 = time.perf_counter()
        self.test: pa.Table | None = None
        self.scored: dict[str, _Scored] = {}
        self.ke_points: dict[int, _Scored] = {}
        self.ks_points: dict[int, _Scored] = {}
        self._full_adapter = None
        self.fusion = None  # FusionResult once run_fusion succeeded
        self.fusion_rows: list[dict] = []
        self.fusion_error: str | None = None
        self.fusion_crm_mode: str | None = None  # how SASRec scored: "history" or "train_user_vector"
        self.curve: LearningCurve | None = None

    def _score(self, vcfg: RunConfig, adapter, name: str) -> _Scored:
        self.pipe.upstream(vcfg)
        preds, art = self.pipe.predict(adapter, vcfg)
        if not np.array_equal(preds.column("sample_id").to_numpy(), self.test.column("sample_id").to_numpy()):
            raise RuntimeError("variant predictions are not aligned with the evaluation samples")
        keys = {"scores": art.key} | ({"lora": adapter.key} if adapter is not None else {})
        n_ex = int(adapter.manifest()["rows"]) if adapter is not None else None
        return _Scored(name, name, "variant", preds.column("prob").to_numpy().astype(np.float64), n_ex, keys)

    def run_variant(self, v: Variant) -> _Scored:
        vcfg = variant_config(self.cfg, v.overrides)
        log.info("evaluate: variant %s (%s)", v.name, v.label)
        self.pipe.upstream(vcfg)
        adapter = self.pipe.adapter(vcfg)
        if v.name == REFERENCE:
            self._full_adapter = adapter
        s = self._score(vcfg, adapter, v.label)
        s.name = v.name
        return s

    def curve_point(self, overrides: dict[str, Any], label: str) -> _Scored:
        """One learning-curve point: full SCoRe with ``overrides`` (its own adapter), on the test samples."""
        vcfg = variant_config(self.cfg, {**FULL, **overrides})
        self.pipe.upstream(vcfg)
        s = self._score(vcfg, self.pipe.adapter(vcfg), label)
        s.table = "learning curve"
        return s

    def run_point(self, overrides: dict[str, Any], label: str) -> _Scored:
        vcfg = variant_config(self.cfg, {**FULL, **overrides})
        ref = variant_config(self.cfg, FULL)
        if vcfg.ci == ref.ci and REFERENCE in self.scored:
            return self.scored[REFERENCE]
        if self._full_adapter is None:
            self.pipe.upstream(ref)
            self._full_adapter = self.pipe.adapter(ref)
        s = self._score(vcfg, self._full_adapter, label)
        s.examples = None
        return s

    def run_fusion(self) -> None:
        """Fusion rows: full SCoRe + SASRec + item/user, fitted on the validation split (``eval.fusion``).

        The full variant scores ``eval.max_valid_samples`` validation samples (cached like the test
        scores); a fit that cannot run is a note unless ``eval.fusion`` is explicitly true.
        """
        from ..evaluation.baselines import ItemUserBaseline
        from ..evaluation.fusion import fuse, logit

        log.info("evaluate: fusion (SCoRe + SASRec + item/user, fitted on the validation split)")
        ref = self.run_point({}, VARIANTS[REFERENCE].label)  # also sets the full adapter
        full = variant_config(self.cfg, FULL)
        self.pipe.upstream(full)
        a = self.pipe.arts
        try:
            vpreds, vart = self.pipe.predict(self._full_adapter, full, split_name="valid")
            valid = self.pipe.eval_samples("valid")
            if not np.array_equal(vpreds.column("sample_id").to_numpy(), valid.column("sample_id").to_numpy()):
                raise RuntimeError("validation predictions are not aligned with the validation samples")
            baseline = ItemUserBaseline(
                train_interactions(a["dataset"].read_table("interactions"), a["samples"].read_table("samples"))
            )
            (crm_v, how), (crm_t, _) = sasrec_logits(self.pipe, valid), sasrec_logits(self.pipe, self.test)

            def inputs(t: pa.Table, probs: np.ndarray, crm: np.ndarray) -> dict[str, np.ndarray]:
                return {
                    "llm": logit(probs),
                    "crm": crm,
                    "item_user": baseline.logit(t.column("user_id").to_numpy(), t.column("item_id").to_numpy()),
                }

            res = fuse(
                inputs(valid, vpreds.column("prob").to_numpy(), crm_v),
                valid.column("label").to_numpy(),
                inputs(self.test, ref.probs, crm_t),
                FUSION_NAMES,
                store=self.pipe.store,
                inputs=[vart, a["sasrec"], a["samples"], a["dataset"]],
            )
        except ValueError as e:
            self.fusion_error = fusion_skipped(self.cfg.eval.fusion, e)
            return
        keys = {"fusion": res.artifact.key, "valid_scores": vart.key, "sasrec": a["sasrec"].key}
        crm = res.input_probs("crm")
        self.scored["sasrec"] = _Scored("sasrec", "SASRec (CRM score)", "fusion", crm, keys={"sasrec": a["sasrec"].key})
        label, no_llm = fusion_labels(res.names)
        self.scored["fusion"] = _Scored("fusion", label, "fusion", res.fused, keys=keys)
        self.scored["fusion_no_llm"] = _Scored("fusion_no_llm", no_llm, "fusion", res.fused_without_llm, keys=keys)
        self.fusion, self.fusion_crm_mode = res, how

        def row(name, probs, ref_probs):
            return self._row(
                _Scored(name, name, "fusion", probs), _Scored(name, name, "fusion", ref_probs), group="fusion", key=name
            )

        self.fusion_rows = fusion_comparisons(res, None, None, self.cfg, ref.probs, crm, row=row)

    def run(self) -> RunResult:
        cfg = self.cfg
        self.pipe.upstream(variant_config(cfg, FULL))
        self.test = self.pipe.eval_samples("test")
        order = cfg.eval.variants_for("score")
        if REFERENCE in order:
            order.remove(REFERENCE)
            order.insert(0, REFERENCE)
        for name in order:
            self.scored[name] = self.run_variant(VARIANTS[name])
            self.write()
        if fusion_on(cfg):
            self.run_fusion()
            self.write()
        for ke in cfg.eval.ke_sweep if sweeps_on(cfg) else []:
            if ke < cfg.ci.ks:
                log.warning("evaluate: Ke=%d < Ks=%d skipped", ke, cfg.ci.ks)
                continue
            self.ke_points[ke] = self.run_point({"ci.ke": ke}, f"Ke={ke}")
            self.write()
        for ks in cfg.eval.ks_sweep if sweeps_on(cfg) else []:
            if ks > cfg.ci.ke:
                log.warning("evaluate: Ks=%d > Ke=%d skipped", ks, cfg.ci.ke)
                continue
            self.ks_points[ks] = self.run_point({"ci.ks": ks}, f"Ks={ks}")
            self.write()
        if curve_on(cfg):
            self.curve = LearningCurve(cfg, self.pipe.store, self.test)
            self.curve.run(self.scored, lambda: self.run_variant(VARIANTS["zero_shot"]), self.curve_point, self.write)
        return RunResult(self.out_dir, self.write(final=True), dict(self.pipe.arts))

    # ---- report ----------------------------------------------------------------------------------------
    def _row(self, s: _Scored, ref: _Scored | None, **kw) -> dict:
        return _row(
            s.label,
            self.test.column("label").to_numpy(),
            s.probs,
            ref,
            self.cfg,
            examples=s.examples,
            user_ids=self.test.column("user_id").to_numpy(),
            **kw,
        )

    def _rows(self) -> list[dict]:
        from ..evaluation.baselines import trivial_baselines

        ref = self.scored.get(REFERENCE)
        rows = [self._row(s, ref, group="variant", key=s.name) for s in self.scored.values()]
        a = self.pipe.arts
        train = train_interactions(a["dataset"].read_table("interactions"), a["samples"].read_table("samples"))
        for name, p in trivial_baselines(train, self.test).items():
            rows.append(self._row(_Scored(name, name, "trivial", p), ref, group="trivial", key=name))
        return rows

    def write(self, final: bool = False) -> dict:
        import pyarrow.parquet as pq

        from ..evaluation.report import format_rows, plot_auc_bars, plot_sweep, write_report

        cfg = self.cfg
        rows = self._rows()
        ref = self.scored.get(REFERENCE)
        ke_rows = [{"ke": x, **self._row(s, ref, key=s.label)} for x, s in self.ke_points.items()]
        ks_rows = [{"ks": x, **self._row(s, ref, key=s.label)} for x, s in self.ks_points.items()]
        counts = dict(self.pipe.arts["samples"].manifest()["splits"])
        counts[f"evaluated ({cfg.eval.subset} test samples)"] = self.test.num_rows
        counts["users evaluated"] = len(np.unique(self.test.column("user_id").to_numpy()))
        counts["positive rate of evaluated"] = round(float(self.test.column("label").to_numpy().mean()), 4)
        trivial = {r["name"]: r["auc"] for r in rows if r["group"] == "trivial"}
        plots = {"auc": (lambda r: lambda p: plot_auc_bars(r, p))(rows)}
        note = "every point uses the full variant's adapter (only the inference-time CI changes)"
        f_sections, f_notes, f_extra = _fusion_parts(self)
        if self.fusion is not None:
            f_extra["fusion"]["crm_score"] = self.fusion_crm_mode
            if self.fusion_crm_mode != "history":
                f_notes.append(
                    "fusion: the SASRec artifact has no saved weights, so its input is h_u · e_i from the "
                    "training sequences (retrain with --force sasrec to score each sample's own history)"
                )
        sections = dict(f_sections)
        for title, pts, x, xlabel, plot in (
            ("Ke sweep (Figure 4)", ke_rows, "ke", "Ke (users retrieved by CAR)", "auc_vs_ke"),
            ("Ks sweep (Figure 4)", ks_rows, "ks", "Ks (users in the prompt)", "auc_vs_ks"),
        ):
            if pts:
                sections[title] = f"{note}.\n\n" + format_rows(pts, "SCoRe")
                if len(pts) > 1:
                    plots[plot] = (lambda r, col, xl: lambda p: plot_sweep([q[col] for q in r], r, p, xl, trivial))(
                        pts, x, xlabel
                    )
        c_sections, c_plots, c_extra = (
            self.curve.report({r["key"]: r["auc"] for r in rows}) if self.curve else ({}, {}, {})
        )
        sections.update(c_sections)
        plots.update(c_plots)
        sas = self.pipe.arts["sasrec"].read_json("metrics")
        wall = time.perf_counter() - self.t0
        notes = [
            f"{'finished' if final else 'in progress'}; wall time so far {wall:.0f} s",
            f"model {cfg.llm.model}; LoRA r={cfg.lora.r} α={cfg.lora.alpha} on {cfg.lora.train_samples} "
            f"sampled training samples; Ke = {cfg.ci.ke}, Ks = {cfg.ci.ks}, Kc = {cfg.car.kc}; "
            f"SARE tuned on {cfg.rationale.pairs} self-assessed pairs",
            f"SASRec sanity (leave-one-out, {cfg.sasrec.eval_negatives} negatives): NDCG@10 "
            f"{sas.get('ndcg@10', float('nan')):.4f}, HR@10 {sas.get('hr@10', float('nan')):.4f}",
        ]
        notes += _decomposition_notes(self.test, ref) + _reading(rows, REFERENCE, "SCoRe")
        notes += f_notes
        self.out_dir.mkdir(parents=True, exist_ok=True)
        preds = self.test.select(["sample_id", "user_id", "item_id", "label"])
        for s in list(self.scored.values()) + list(self.ke_points.values()) + list(self.ks_points.values()):
            if s.name not in preds.column_names:
                preds = preds.append_column(s.name, pa.array(s.probs.astype(np.float32)))
        for name, probs in (self.curve.columns() if self.curve else {}).items():
            preds = preds.append_column(name, pa.array(probs.astype(np.float32)))
        pq.write_table(preds, self.out_dir / "predictions.parquet")
        extra = {
            "ke_sweep": ke_rows,
            "ks_sweep": ks_rows,
            "sasrec": sas,
            "wall_seconds": round(wall, 1),
            "finished": final,
            "artifacts": {s.name: s.keys for s in self.scored.values()},
        }
        extra.update(f_extra)
        extra.update(c_extra)
        write_report(
            self.out_dir,
            title=f"SCoRe evaluation on {cfg.data.name}",
            config=cfg.model_dump(mode="json"),
            counts=counts,
            rows=rows,
            notes=notes,
            plots=plots,
            sections=sections,
            reference="SCoRe",
            extra=extra,
        )
        return {"rows": rows, "ke_sweep": ke_rows, "ks_sweep": ks_rows, "counts": counts, "wall_seconds": wall}


def evaluate(cfg: RunConfig, force: tuple[str, ...] = ()) -> RunResult:
    """Run every SCoRe variant and sweep point of ``cfg.eval`` and write the report (module docstring)."""
    if cfg.method != "score":
        raise ValueError(f"this evaluation is SCoRe's; the config says method {cfg.method!r}")
    return Evaluation(cfg, force).run()
