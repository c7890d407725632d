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

This module is data and hooks (:data:`SPEC`); the run, the rows and the report are the shared engine's
(:class:`ragrec.methods.evaluation.Evaluation`).
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa

from .common import train_interactions
from .evaluation import Evaluation, EvaluationSpec, FusionFit, Scored, Sweep, Variant, by_name
from .score import Pipeline

log = logging.getLogger("ragrec.evaluate")

FULL = {"ci.retriever": "car", "sare.enabled": True, "lora.enabled": True}


VARIANTS: dict[str, Variant] = by_name(
    Variant("zero_shot", "zero-shot (P^b, w/o IT)", overrides={**FULL, "lora.enabled": False, "ci.ks": 0}),
    Variant("no_ci", "w/o CI (TALLRec-style P^b)", overrides={**FULL, "ci.ks": 0}),
    Variant("score_base", "SCoRe-base (untuned retriever)", overrides={**FULL, "ci.retriever": "base"}),
    Variant("score_cf", "SCoRe-cf (SASRec neighbours)", overrides={**FULL, "ci.retriever": "cf"}),
    Variant("score_rerank", "SCoRe-rerank (w/o SARE)", overrides={**FULL, "sare.enabled": False}),
    Variant("score", "SCoRe (CAR + SARE)", overrides=dict(FULL)),
)
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


def _fusion(ev: Evaluation, ref: Scored) -> FusionFit:
    """Full SCoRe + SASRec + item/user, fitted on the validation split: the full variant scores
    ``eval.max_valid_samples`` validation samples (cached like the test scores); SASRec's row is its fusion
    input as a probability."""
    from ..evaluation.baselines import ItemUserBaseline
    from ..evaluation.fusion import fuse, logit

    pipe, a = ev.pipe, ev.pipe.arts
    vpreds, vart = pipe.predict(ev.full_adapter(), ev.full_config, split_name="valid")
    valid = pipe.eval_samples("valid")
    if not np.array_equal(vpreds.column("sample_id").to_numpy(), valid.column("sample_id").to_numpy()):
        raise RuntimeError("validation predictions are not aligned with the validation samples")
    baseline = ItemUserBaseline(
        train_interactions(a["dataset"].read_table("interactions"), a["samples"].read_table("samples"))
    )
    (crm_v, how), (crm_t, _) = sasrec_logits(pipe, valid), sasrec_logits(pipe, ev.test)

    def inputs(t: pa.Table, probs: np.ndarray, crm: np.ndarray) -> dict[str, np.ndarray]:
        return {
            "llm": logit(probs),
            "crm": crm,
            "item_user": baseline.logit(t.column("user_id").to_numpy(), t.column("item_id").to_numpy()),
        }

    res = fuse(
        inputs(valid, vpreds.column("prob").to_numpy(), crm_v),
        valid.column("label").to_numpy(),
        inputs(ev.test, ref.probs, crm_t),
        FUSION_NAMES,
        store=pipe.store,
        inputs=[vart, a["sasrec"], a["samples"], a["dataset"]],
    )
    keys = {"fusion": res.artifact.key, "valid_scores": vart.key, "sasrec": a["sasrec"].key}
    crm = Scored("sasrec", "SASRec (CRM score)", "fusion", res.input_probs("crm"), keys={"sasrec": a["sasrec"].key})
    notes = []
    if how != "history":
        notes.append(
            "fusion: the SASRec artifact has no saved weights, so its input is h_u · e_i from the "
            "training sequences (retrain with --force sasrec to score each sample's own history)"
        )
    return FusionFit(res, keys, crm, notes, {"crm_score": how})


def _notes(ev: Evaluation) -> list[str]:
    cfg, sas = ev.cfg, ev.pipe.arts["sasrec"].read_json("metrics")
    return [
        f"model {cfg.llm.model}; LoRA r={cfg.lora.r} α={cfg.lora.alpha} on {cfg.lora.train_samples} "
        f"sampled training samples; Ke = {cfg.ci.ke}, Ks = {cfg.ci.ks}, Kc = {cfg.car.kc}; "
        f"SARE tuned on {cfg.rationale.pairs} self-assessed pairs",
        f"SASRec sanity (leave-one-out, {cfg.sasrec.eval_negatives} negatives): NDCG@10 "
        f"{sas.get('ndcg@10', float('nan')):.4f}, HR@10 {sas.get('hr@10', float('nan')):.4f}",
    ]


def _metrics(ev: Evaluation) -> dict:
    return {"sasrec": ev.pipe.arts["sasrec"].read_json("metrics")}


SPEC = EvaluationSpec(
    method="score",
    variants=VARIANTS,
    reference=REFERENCE,
    sweeps=(
        Sweep(
            "ke_sweep",
            "ci.ke",
            "ke",
            "Ke={}",
            "Ke sweep (Figure 4)",
            "Ke (users retrieved by CAR)",
            "auc_vs_ke",
            skip=lambda cfg, ke: f"Ke={ke} < Ks={cfg.ci.ks}" if ke < cfg.ci.ks else None,
        ),
        Sweep(
            "ks_sweep",
            "ci.ks",
            "ks",
            "Ks={}",
            "Ks sweep (Figure 4)",
            "Ks (users in the prompt)",
            "auc_vs_ks",
            skip=lambda cfg, ks: f"Ks={ks} > Ke={cfg.ci.ke}" if ks > cfg.ci.ke else None,
        ),
    ),
    point_section="ci",
    shared_note="every point uses the full variant's adapter (only the inference-time CI changes)",
    row_group="variant",
    fusion_names=FUSION_NAMES,
    fusion=_fusion,
    notes=_notes,
    metrics=_metrics,
)


evaluate = SPEC.evaluate
"""``ragrec evaluate`` for SCoRe: every variant and sweep point of ``cfg.eval``, then the report (module doc)."""
