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

This module is data and hooks (:data:`SPEC`); the run, the rows and the report are the shared engine's
(:class:`ragrec.methods.evaluation.Evaluation`).
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa

from ..config import RunConfig
from ..stages.data import read_users
from .common import split, train_interactions
from .evaluation import (
    Evaluation,
    EvaluationSpec,
    FusionFit,
    Scored,
    Sweep,
    Variant,
    by_name,
    fusion_comparisons,  # noqa: F401  (re-exported: `ragrec run`'s fusion in rallrec.py imports these three here)
    fusion_labels,  # noqa: F401
    fusion_report,  # noqa: F401
)
from .rallrec import Pipeline

log = logging.getLogger("ragrec.evaluate")

FULL = {"retrieval.strategy": "rerank", "retrieval.embedding": "mixed", "lora.enabled": True}
"""Overrides that make a config the full RALLRec (reranker over concat + SSL embeddings, tuned)."""


VARIANTS: dict[str, Variant] = by_name(
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
REFERENCE = "rallrec"
DEEPFM_LABEL = "DeepFM (ID-based CTR)"


# ---------------------------------------------------------------------------------------------------
# baselines
# ---------------------------------------------------------------------------------------------------
def deepfm_stage(pipe: Pipeline):
    """DeepFM (ID + side features) trained under Ray Train on the train split, early-stopped on valid."""
    from ..training.deepfm import train_deepfm
    from ..training.ray_train import TrainOptions

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
            opts=TrainOptions.for_stage(cfg, art, out="model"),
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

    valid, vart = pipe.predict(adapter, vcfg, split_name="valid")
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


# ---------------------------------------------------------------------------------------------------
# the evaluation: RALLRec's spec for the shared engine
# ---------------------------------------------------------------------------------------------------
def deepfm_row(ev: Evaluation) -> Scored:
    """The DeepFM baseline row (``deepfm`` in ``eval.variants``, Table 1): trained under Ray Train (cached)."""
    log.info("evaluate: DeepFM baseline (Ray Train)")
    probs = deepfm_probs(ev.pipe, ev.test).astype(np.float64)
    return Scored("deepfm", DEEPFM_LABEL, "Table 1", probs, keys={"deepfm": ev.pipe.arts["deepfm"].key})


BASELINES = {"deepfm": deepfm_row}
BASELINE_VARIANTS = tuple(BASELINES)


def _fusion(ev: Evaluation, ref: Scored) -> FusionFit:
    """Full RALLRec + DeepFM + item/user fitted on the validation split; DeepFM's test row (reused when the
    baseline ran)."""
    res, vart = rallrec_fusion(ev.pipe, ev.full_config, ev.full_adapter(), ev.test, ref.probs)
    key = ev.pipe.arts["deepfm"].key
    crm = ev.scored.get("deepfm")
    if crm is None:
        probs = deepfm_probs(ev.pipe, ev.test).astype(np.float64)
        crm = Scored("deepfm", DEEPFM_LABEL, "fusion", probs, keys={"deepfm": key})
    return FusionFit(res, {"fusion": res.artifact.key, "valid_scores": vart.key, "deepfm": key}, crm)


def _examples(pipe: Pipeline, vcfg: RunConfig, adapter) -> int | None:
    """IT examples: the rows of the variant's examples artifact (x3 with mixed-view augmentation)."""
    return int(pipe.examples(vcfg).manifest()["rows"]) if vcfg.lora.enabled else None


def _notes(ev: Evaluation) -> list[str]:
    cfg = ev.cfg
    return [
        f"model {cfg.llm.model}; LoRA on {cfg.lora.train_samples} sampled training samples "
        f"({'x3 mixed views' if cfg.prompt.augmentation else 'one view'}), K = {cfg.retrieval.k}, "
        f"α = {cfg.retrieval.alpha:.3g}, β = {cfg.retrieval.beta:g}"
    ]


SPEC = EvaluationSpec(
    method="rallrec",
    variants=VARIANTS,
    reference=REFERENCE,
    sweeps=(
        Sweep("k_sweep", "retrieval.k", "k", "K={}", "K sweep (Figure 3)", "K (history items)", "auc_vs_k"),
        Sweep(
            "alpha_sweep",
            "retrieval.alpha",
            "alpha",
            "alpha={:.3g}",
            "α sweep, β = 1 (Figure 4)",
            "α (relevance weight)",
            "auc_vs_alpha",
            fixed={"retrieval.beta": 1.0},
        ),
    ),
    point_section="retrieval",
    shared_note="every point uses the full variant's adapter (eval.sweep_adapter=shared: "
    "only the retrieval changes at inference)",
    sweep_adapter=True,
    baselines=BASELINES,
    fusion_names=FUSION_NAMES,
    fusion=_fusion,
    examples=_examples,
    notes=_notes,
)


evaluate = SPEC.evaluate
"""``ragrec evaluate`` for RALLRec: every variant and sweep point of ``cfg.eval``, then the report (module doc)."""
