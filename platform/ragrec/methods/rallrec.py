"""RALLRec (Xu et al., 2025): representation learning for retrieval-augmented LLM recommendation.

The pipeline is a chain of cached stages (``docs/architecture.md``); each function below builds one artifact and
returns it, so a rerun skips what is finished and a sweep recomputes only what its parameters touch:

  dataset -> samples -> descriptions -> title/desc embeddings -> text features (PCA)
          -> lightgcn -> projector -> item embeddings (Eq. 7) -> contexts (retrieval + rerank, Eq. 8)
          -> train prompts (mixed views) -> lora -> scores -> metrics/report
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..artifacts import Artifact, ArtifactStore
from ..config import RunConfig
from ..llm.prompts_ctr import prompts_for
from ..retrieval.context import ItemViews, with_context
from ..stages import embed_stage, generate_stage, to_numpy
from ..stages.data import dataset_stage, read_users, samples_stage
from ..stages.lightgcn import LightGCNGraph, lightgcn_embeddings_stage
from ..stages.lora import lora_stage
from .base import MethodPipeline, RunFusion
from .common import cut_timestamp, preds_row, train_interactions, train_subset

log = logging.getLogger("ragrec.rallrec")


# ---------------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------------
# ---------------------------------------------------------------------------------------------------
# steps 1-2: descriptions and text embeddings
# ---------------------------------------------------------------------------------------------------
def description_prompts(items: pa.Table, template: str) -> pa.Table:
    """Step 1 prompts: ``description.template`` with ``{title}`` and ``{genre}`` (``"Action, Crime"`` or
    ``unknown``), filled by :func:`ragrec.templates.fill_template` (named fields only, no ``str.format``)."""
    from ..templates import fill_template

    genres = items.column("genres").combine_chunks()
    genre = pc.fill_null(pc.binary_join(genres, ", "), "")
    genre = pc.if_else(pc.equal(genre, ""), pa.scalar("unknown"), genre)
    title = pc.fill_null(items.column("title").combine_chunks().cast(pa.string()), "")
    prompts = fill_template(template, {"title": title, "genre": genre}, "description.template", required=("title",))
    return pa.table({"item_id": items.column("item_id"), "prompt": prompts})


def descriptions_stage(store: ArtifactStore, cfg: RunConfig, ds_art: Artifact) -> Artifact:
    items = ds_art.read_table("items")
    if cfg.description.max_items:
        items = items.slice(0, cfg.description.max_items)
    d = cfg.description
    return generate_stage(
        store,
        "descriptions",
        description_prompts(items, d.template),
        key="item_id",
        prompt="prompt",
        llm_cfg=cfg.llm,
        block_size=d.block_size,
        inputs=[ds_art],
        sampling={"max_new_tokens": d.max_new_tokens, "temperature": d.temperature, "top_p": d.top_p, "seed": cfg.seed},
    )


def text_features_stage(store: ArtifactStore, cfg: RunConfig, ds_art: Artifact, desc_art: Artifact | None) -> Artifact:
    """e_text = PCA([e_title || e_desc]) (Eq. 3); items without a description use the title alone."""
    from ..retrieval.embeddings import pca

    items = ds_art.read_table("items")
    e = cfg.embedding
    common = dict(llm_cfg=cfg.llm, encoder=e.model, pooling=e.pooling, max_tokens=e.max_tokens, block_size=256)
    title_art = embed_stage(
        store, "embed_title", items.select(["item_id", "title"]), key="item_id", text="title", inputs=[ds_art], **common
    )
    parts = [title_art]
    if desc_art is not None:
        desc = desc_art.read_table()
        # descriptions may cover a prefix of the catalog (description.max_items): fall back to titles
        text = _fill_missing_descriptions(items, desc)
        parts.append(embed_stage(store, "embed_desc", text, key="item_id", text="text", inputs=[desc_art], **common))

    def compute(art: Artifact):
        mats = [to_numpy(p.read_table().column("embedding")) for p in parts]
        full = np.concatenate(mats, axis=1)
        reduced = pca(full, e.pca_dim, seed=cfg.seed) if e.pca_dim else full
        np.save(art.staging / "title.npy", mats[0])
        np.save(art.staging / "text.npy", reduced.astype(np.float32))
        return {"rows": len(reduced), "dim": int(reduced.shape[1]), "raw_dim": int(full.shape[1])}

    return store.run("text_features", {"pca_dim": e.pca_dim, "seed": cfg.seed}, parts, compute)


def _fill_missing_descriptions(items: pa.Table, desc: pa.Table) -> pa.Table:
    text = np.array(items.column("title").to_pylist(), dtype=object)
    ids = desc.column("item_id").to_numpy()
    text[ids] = desc.column("text").to_numpy(zero_copy_only=False)
    return pa.table({"item_id": items.column("item_id"), "text": pa.array(text.tolist(), pa.string())})


# ---------------------------------------------------------------------------------------------------
# steps 3-4: collaborative embeddings and the SSL projector (Ray Train)
# ---------------------------------------------------------------------------------------------------
def lightgcn_stage(store: ArtifactStore, cfg: RunConfig, ds_art: Artifact, samples_art: Artifact) -> Artifact:
    """LightGCN on the interactions before the first valid/test sample (``stages.lightgcn``)."""

    def graph() -> LightGCNGraph:
        interactions = ds_art.read_table("interactions")
        samples = samples_art.read_table("samples")
        # Recall@20 sanity metric on the held-out period's positive interactions
        held = interactions.filter(
            pc.and_(
                pc.greater_equal(interactions.column("timestamp"), cut_timestamp(samples)),
                pc.equal(interactions.column("label"), 1),
            )
        )
        n_users = ds_art.manifest().get("users") or int(pc.max(interactions.column("user_id")).as_py()) + 1
        return LightGCNGraph(
            train_interactions(interactions, samples),
            n_users,
            ds_art.manifest()["items"],
            (held.column("user_id").to_numpy(), held.column("item_id").to_numpy()) if held.num_rows else None,
        )

    spec = {"lightgcn": cfg.lightgcn.model_dump(), "seed": cfg.seed}
    return lightgcn_embeddings_stage(store, cfg, "lightgcn", spec, [ds_art, samples_art], cfg.lightgcn, graph)


def projector_stage(store: ArtifactStore, cfg: RunConfig, text_art: Artifact, lg_art: Artifact) -> Artifact:
    from ..training.projector import train_projector
    from ..training.ray_train import TrainOptions

    def compute(art: Artifact):
        res = train_projector(
            np.load(text_art.file("text.npy")),
            np.load(lg_art.file("item_emb.npy")),
            cfg.projector,
            opts=TrainOptions.for_stage(cfg, art, out="train"),
        )
        np.save(art.staging / "ssl_emb.npy", res.ssl_emb.astype(np.float32))
        art.write_json(res.history, "history")
        return {"rows": int(res.ssl_emb.shape[0])}

    return store.run(
        "projector", {"projector": cfg.projector.model_dump(), "seed": cfg.seed}, [text_art, lg_art], compute
    )


# ---------------------------------------------------------------------------------------------------
# steps 5-7: retrieval, reranking, prompts
# ---------------------------------------------------------------------------------------------------
def training_examples(
    samples: pa.Table,
    views: ItemViews,
    items: pa.Table,
    users: pa.Table | None,
    cfg: RunConfig,
    interactions: pa.Table | None = None,
) -> pa.Table:
    """Instruction-tuning examples (prompt, answer, view) for the sampled training subset."""
    from ..llm.chat import ANSWER_NO, ANSWER_YES
    from ..llm.prompts_ctr import augment_views

    sub = train_subset(samples, cfg.lora.train_samples, cfg.seed)
    retrieved = with_context(sub, views, cfg.retrieval)
    if cfg.prompt.augmentation:
        recent = with_context(sub, views, cfg.retrieval.model_copy(update={"strategy": "recent"}))
        table = augment_views(retrieved, recent, np.random.default_rng(cfg.seed))
    else:
        table = retrieved.append_column("view", pa.array(["retrieved"] * retrieved.num_rows, pa.string()))
    answers = np.where(table.column("label").to_numpy() > 0, ANSWER_YES, ANSWER_NO)
    return pa.table(
        {
            "sample_id": table.column("sample_id"),
            "view": table.column("view"),
            "prompt": prompts_for(table, items, users, cfg, interactions),
            "answer": pa.array(answers.tolist(), pa.string()),
        }
    )


# ---------------------------------------------------------------------------------------------------
# the composition: steps 1-7 upstream, 8 (stages.lora) and 9 (prediction)
# ---------------------------------------------------------------------------------------------------
class Pipeline(MethodPipeline):
    """The RALLRec artifacts of one config; variants and sweep points reuse its upstream stages."""

    loss_stages = ("lightgcn", "projector", "lora")
    views: ItemViews

    def upstream(self, cfg: RunConfig | None = None) -> ItemViews:
        """dataset -> samples -> descriptions -> text features -> LightGCN -> projector; the item views."""
        cfg, store, a = self.cfg, self.store, self.arts
        if "projector" not in a:
            a["dataset"] = dataset_stage(store, cfg)
            a["samples"] = samples_stage(store, cfg, a["dataset"])
            a["descriptions"] = descriptions_stage(store, cfg, a["dataset"]) if cfg.description.enabled else None
            a["text_features"] = text_features_stage(store, cfg, a["dataset"], a["descriptions"])
            a["lightgcn"] = lightgcn_stage(store, cfg, a["dataset"], a["samples"])
            a["projector"] = projector_stage(store, cfg, a["text_features"], a["lightgcn"])
            self.views = ItemViews.from_artifacts(a)
        return self.views

    def examples(self, cfg: RunConfig | None = None) -> Artifact:
        """Instruction-tuning examples of ``cfg`` (default: the pipeline's config; variants pass theirs)."""
        cfg, a = cfg or self.cfg, self.arts
        items, users = a["dataset"].read_table("items"), read_users(a["dataset"])
        spec = {
            "retrieval": cfg.retrieval.model_dump(),
            "prompt": cfg.prompt.model_dump(),
            "train_samples": cfg.lora.train_samples,
            "seed": cfg.seed,
        }

        def compute(art: Artifact):
            inter = a["dataset"].read_table("interactions") if cfg.prompt.stats else None
            table = training_examples(self.samples(), self.views, items, users, cfg, inter)
            art.write_table(table)
            return table.num_rows

        inputs = [a["samples"], a["text_features"], a["lightgcn"], a["projector"]]
        return self.store.run("examples", spec, inputs, compute)

    def adapter(self, cfg: RunConfig | None = None) -> Artifact | None:
        """The LoRA adapter of ``cfg`` (None when ``lora.enabled`` is false): examples -> Ray Train."""
        cfg = cfg or self.cfg
        if not cfg.lora.enabled:
            return None
        ex = self.examples(cfg)
        if cfg is self.cfg:
            self.arts["examples"] = ex
        return lora_stage(self.store, cfg, ex)

    def predict(
        self, adapter: Artifact | None, cfg: RunConfig | None = None, split_name: str = "test", name: str = "scores"
    ) -> tuple[pa.Table, Artifact]:
        """Score the ``split_name`` samples with the context that ``cfg.retrieval`` selects: ``(predictions,
        scores artifact)``; predictions = the samples (without history lists) + ``context_item_ids`` + ``prob``."""
        cfg, a = cfg or self.cfg, self.arts
        samples = with_context(self.eval_samples(split_name), self.views, cfg.retrieval)
        inter = a["dataset"].read_table("interactions") if cfg.prompt.stats else None
        prompts = prompts_for(samples, a["dataset"].read_table("items"), read_users(a["dataset"]), cfg, inter)
        art = self.score_prompts(samples, prompts, adapter, cfg, name)
        probs = art.read_table().column("prob")
        return samples.drop_columns(
            [c for c in ("history_item_ids", "history_ratings") if c in samples.column_names]
        ).append_column("prob", probs), art

    def run_fusion(self, preds: pa.Table, llm_name: str) -> RunFusion:
        """DeepFM (the evaluation's cached stage), the validation scores and the fusion artifact (all added to
        ``self.arts``, so run.json references them and serving finds them); rows DeepFM, fusion, fusion w/o
        LLM, the paired ΔAUC section, the coefficient note and ``p_fused`` / ``p_fused_no_llm``."""
        from .rallrec_evaluate import fusion_comparisons, fusion_labels, fusion_report, rallrec_fusion

        cfg = self.cfg
        probs = preds.column("prob").to_numpy().astype(np.float64)
        res, vart = rallrec_fusion(self, cfg, self.arts.get("lora"), preds, probs, llm_name)
        self.arts["valid_scores"] = vart
        self.arts["fusion"] = res.artifact
        labels, users = preds.column("label").to_numpy(), preds.column("user_id").to_numpy()
        crm = res.input_probs("crm")
        full, no_llm = fusion_labels(res.names)
        rows = [
            preds_row(n, preds, p, cfg)
            for n, p in ((res.names["crm"], crm), (full, res.fused), (no_llm, res.fused_without_llm))
        ]
        sections, notes, extra = fusion_report(res, fusion_comparisons(res, labels, users, cfg, probs, crm))
        cols = {"p_fused": res.fused, "p_fused_no_llm": res.fused_without_llm}
        return RunFusion(rows, sections, notes, extra, cols)
