"""RALLRec (Xu et al., 2025): representation learning for retrieval-augmented LLM recommendation.

The pipeline is a chain of cached stages (DESIGN §5); each function below builds one artifact and
returns it, so a rerun skips what is finished and a sweep recomputes only what its parameters touch:

  dataset -> samples -> descriptions -> title/desc embeddings -> text features (PCA)
          -> lightgcn -> projector -> item embeddings (Eq. 7) -> contexts (retrieval + rerank, Eq. 8)
          -> train prompts (mixed views) -> lora -> scores -> metrics/report
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..artifacts import Artifact, ArtifactStore
from ..config import RetrievalConfig, RunConfig
from ..runtime import seed_everything, setup_logging
from ..stages import embed_stage, generate_stage, score_stage, to_numpy

log = logging.getLogger("ragrec.rallrec")


# ---------------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------------
def dataset_stage(store: ArtifactStore, cfg: RunConfig) -> Artifact:
    from ..data import load_dataset

    data_cfg = cfg.data.model_dump(mode="json", exclude={"min_history", "max_history", "split", "protocol", "temporal"})
    if data_cfg["columns"].get("split") is None:  # keys added later stay out of the hash until used
        data_cfg["columns"].pop("split", None)
    path = cfg.data.resolved_path()
    if path is not None:
        data_cfg["files"] = sorted((p.name, p.stat().st_size) for p in Path(path).glob("*") if p.is_file())

    def compute(art: Artifact):
        ds = load_dataset(cfg.data)
        if cfg.data.max_users:
            ds.interactions = ds.interactions.filter(pc.less(ds.interactions.column("user_id"), cfg.data.max_users))
            if ds.users is not None:
                ds.users = ds.users.filter(pc.less(ds.users.column("user_id"), cfg.data.max_users))
        art.write_table(ds.interactions, "interactions")
        art.write_table(ds.items, "items")
        if ds.users is not None:
            art.write_table(ds.users, "users")
        return {
            "rows": ds.interactions.num_rows,
            "items": ds.items.num_rows,
            "users": ds.users.num_rows if ds.users is not None else None,
        }

    return store.run("dataset", data_cfg, [], compute)


def samples_stage(store: ArtifactStore, cfg: RunConfig, ds_art: Artifact) -> Artifact:
    spec = cfg.data.model_dump(
        mode="json", include={"protocol", "min_history", "max_history", "split", "label_threshold"}
    )
    if cfg.data.protocol == "temporal":  # (rallrec keys unchanged so existing caches stay valid)
        spec["temporal"] = cfg.data.temporal.model_dump(mode="json")
        spec["own_split_column"] = cfg.data.columns.split

    def compute(art: Artifact):
        from ..data import build_samples

        samples = build_samples(ds_art.read_table("interactions"), cfg.data)
        art.write_table(samples, "samples")
        counts = {s: int(pc.sum(pc.equal(samples.column("split"), s)).as_py() or 0) for s in ("train", "valid", "test")}
        return {"rows": samples.num_rows, "splits": counts}

    return store.run("samples", spec, [ds_art], compute)


def read_users(ds_art: Artifact) -> pa.Table | None:
    return ds_art.read_table("users") if (ds_art.path / "users.parquet").exists() else None


def split(samples: pa.Table, name: str, limit: int | None = None) -> pa.Table:
    part = samples.filter(pc.equal(samples.column("split"), name))
    if part.num_rows == 0:
        raise ValueError(f"the '{name}' split is empty: lower data.min_history or change data.split")
    return part.slice(0, limit) if limit else part


def eval_subset(part: pa.Table, limit: int | None, how: str, seed: int) -> pa.Table:
    """``limit`` rows of a split: the first ones (the reference's protocol) or a seeded random subset
    kept in split order (a time split's first rows come from few users; a random subset spans them all)."""
    if not limit or limit >= part.num_rows:
        return part
    if how == "first":
        return part.slice(0, limit)
    idx = np.sort(np.random.default_rng(seed).choice(part.num_rows, size=limit, replace=False))
    return part.take(pa.array(idx))


def _cut_timestamp(samples: pa.Table) -> int:
    held = samples.filter(pc.not_equal(samples.column("split"), "train"))
    return pc.min(held.column("timestamp")).as_py() if held.num_rows else np.iinfo(np.int64).max


def train_interactions(interactions: pa.Table, samples: pa.Table) -> pa.Table:
    """Interactions strictly before the first valid/test sample: the only ones models may learn from."""
    return interactions.filter(pc.less(interactions.column("timestamp"), _cut_timestamp(samples)))


# ---------------------------------------------------------------------------------------------------
# steps 1-2: descriptions and text embeddings
# ---------------------------------------------------------------------------------------------------
def description_prompts(items: pa.Table, template: str) -> pa.Table:
    genres = items.column("genres").to_pylist()
    titles = items.column("title").to_pylist()
    prompts = [template.format(title=t, genre=", ".join(g or []) or "unknown") for t, g in zip(titles, genres)]
    return pa.table({"item_id": items.column("item_id"), "prompt": pa.array(prompts, pa.string())})


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
    from ..training.lightgcn import train_lightgcn

    def compute(art: Artifact):
        interactions = ds_art.read_table("interactions")
        inter = train_interactions(interactions, samples_art.read_table("samples"))
        # Recall@20 sanity metric on the held-out period's positive interactions
        held = interactions.filter(
            pc.and_(
                pc.greater_equal(interactions.column("timestamp"), _cut_timestamp(samples_art.read_table("samples"))),
                pc.equal(interactions.column("label"), 1),
            )
        )
        n_users = ds_art.manifest().get("users") or int(pc.max(interactions.column("user_id")).as_py()) + 1
        n_items = ds_art.manifest()["items"]
        res = train_lightgcn(
            inter.column("user_id").to_numpy(),
            inter.column("item_id").to_numpy(),
            n_users,
            n_items,
            cfg.lightgcn,
            ratings=inter.column("rating").to_numpy(),
            eval_pairs=(held.column("user_id").to_numpy(), held.column("item_id").to_numpy())
            if held.num_rows
            else None,
            use_ray=True,
            seed=cfg.seed,
            out_dir=str(art.staging / "train"),
            num_workers=cfg.ray.num_workers,
            use_gpu=cfg.ray.use_gpu,
        )
        np.save(art.staging / "item_emb.npy", res.item_emb.astype(np.float32))
        np.save(art.staging / "user_emb.npy", res.user_emb.astype(np.float32))
        art.write_json(res.history, "history")
        return {"rows": int(res.item_emb.shape[0]), "edges": inter.num_rows}

    return store.run(
        "lightgcn", {"lightgcn": cfg.lightgcn.model_dump(), "seed": cfg.seed}, [ds_art, samples_art], compute
    )


def projector_stage(store: ArtifactStore, cfg: RunConfig, text_art: Artifact, lg_art: Artifact) -> Artifact:
    from ..training.projector import train_projector

    def compute(art: Artifact):
        res = train_projector(
            np.load(text_art.file("text.npy")),
            np.load(lg_art.file("item_emb.npy")),
            cfg.projector,
            use_ray=True,
            seed=cfg.seed,
            out_dir=str(art.staging / "train"),
            num_workers=cfg.ray.num_workers,
            use_gpu=cfg.ray.use_gpu,
        )
        np.save(art.staging / "ssl_emb.npy", res.ssl_emb.astype(np.float32))
        art.write_json(res.history, "history")
        return {"rows": int(res.ssl_emb.shape[0])}

    return store.run(
        "projector", {"projector": cfg.projector.model_dump(), "seed": cfg.seed}, [text_art, lg_art], compute
    )


@dataclass
class ItemViews:
    """The item embedding views of Table 4; ``get`` builds the mixtures of Eq. 7 on demand."""

    title: np.ndarray
    text: np.ndarray
    colla: np.ndarray
    ssl: np.ndarray | None = None

    def get(self, name: str) -> np.ndarray:
        from ..retrieval.embeddings import mix

        if name == "mixed":
            parts = [self.text, self.colla] + ([self.ssl] if self.ssl is not None else [])
            return mix(parts)
        if name == "concat":
            return mix([self.text, self.colla])
        view = getattr(self, name)
        if view is None:
            raise ValueError(f"embedding view '{name}' is not available in this run")
        return mix([view])


# ---------------------------------------------------------------------------------------------------
# steps 5-7: retrieval, reranking, prompts
# ---------------------------------------------------------------------------------------------------
def with_context(samples: pa.Table, views: ItemViews, rcfg: RetrievalConfig) -> pa.Table:
    from ..retrieval.history import select_history

    if rcfg.strategy == "recent":
        return select_history(samples, rcfg, None)
    if rcfg.strategy == "hybrid":  # half text, half collaborative (Hybrid-Score baseline)
        return select_history(samples, rcfg, views.get("text"), views.get("colla"))
    return select_history(samples, rcfg, views.get(rcfg.embedding))


def prompts_for(
    samples: pa.Table, items: pa.Table, users: pa.Table | None, cfg: RunConfig, interactions: pa.Table | None = None
) -> pa.Array:
    """The CTR prompt of every sample; ``prompt.stats`` also needs the ``interactions`` (item averages so far)."""
    from ..llm.prompts_ctr import build_ctr_prompts

    stats = None
    if cfg.prompt.stats:
        if interactions is None:
            raise ValueError("prompt.stats needs the interactions table (the target's ratings before each sample)")
        stats = prompt_stats(samples, interactions)
    return pa.array(
        build_ctr_prompts(
            samples, items, users, max_title_chars=cfg.prompt.max_title_chars, stats=stats, genres=cfg.prompt.genres
        ),
        pa.string(),
    )


def prompt_stats(samples: pa.Table, interactions: pa.Table) -> dict:
    """``prompt.stats`` numbers of each sample: its user's past ratings (``history_ratings``) and its target's
    ratings strictly before the sample's ``timestamp``."""
    from ..data.stats import history_stats, item_stats_before

    missing = [c for c in ("history_ratings", "timestamp") if c not in samples.column_names]
    if missing:
        raise ValueError(f"prompt.stats: samples lack {missing}")
    im, ic, kind = item_stats_before(
        interactions, samples.column("item_id").to_numpy(), samples.column("timestamp").to_numpy()
    )
    um, uc = history_stats(samples.column("history_ratings"))
    return {"user_mean": um, "user_count": uc, "item_mean": im, "item_count": ic, "kind": kind}


def train_subset(samples: pa.Table, n: int, seed: int) -> pa.Table:
    train = split(samples, "train")
    if n >= train.num_rows:
        return train
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(train.num_rows, size=n, replace=False))
    return train.take(pa.array(idx))


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
# steps 8-9: LoRA instruction tuning and prediction
# ---------------------------------------------------------------------------------------------------
LORA_CHECKPOINT_STEPS = 200
"""The lora stage checkpoints every this many optimizer steps (and after every epoch but the last);
``RAGREC_LORA_CHECKPOINT_STEPS`` overrides, 0 = epoch ends only."""


def lora_stage(store: ArtifactStore, cfg: RunConfig, examples_art: Artifact) -> Artifact:
    """LoRA tuning under Ray Train. Resumable: the Ray run's storage is ``train/`` inside the artifact's
    ``<key>.partial/`` folder, so a killed run, rerun, continues from its latest checkpoint (every
    :data:`LORA_CHECKPOINT_STEPS` optimizer steps and every epoch end); removed once the adapter is written."""
    import os
    import shutil

    from ..training.lora import train_lora

    def compute(art: Artifact):
        storage = art.staging / "train"
        steps = int(os.environ.get("RAGREC_LORA_CHECKPOINT_STEPS", LORA_CHECKPOINT_STEPS)) or None
        res = train_lora(
            examples_art.read_table(),
            cfg.llm.model,
            cfg.lora,
            use_ray=True,
            seed=cfg.seed,
            out_dir=str(art.staging / "adapter"),
            num_workers=cfg.ray.num_workers,
            use_gpu=cfg.ray.use_gpu,
            load_in_8bit=cfg.llm.load_in_8bit,
            storage_path=str(storage),
            checkpoint_steps=steps,
        )
        art.write_json(res.history, "history")
        shutil.rmtree(storage, ignore_errors=True)  # the optimizer states are not part of the artifact
        return {"rows": examples_art.manifest()["rows"]}

    spec = {"lora": cfg.lora.model_dump(), "model": cfg.llm.model, "seed": cfg.seed}
    return store.run("lora", spec, [examples_art], compute)


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict
    artifacts: dict[str, Artifact] = field(default_factory=dict)


class Pipeline:
    """Builds the RALLRec artifacts of one config; variants (issue #3) reuse its upstream stages."""

    def __init__(self, cfg: RunConfig, force: tuple[str, ...] = ()):
        setup_logging()
        seed_everything(cfg.seed)
        self.cfg = cfg
        self.store = ArtifactStore(cfg.artifacts_dir, force=force)
        self.arts: dict[str, Artifact] = {}

    def upstream(self) -> ItemViews:
        cfg, store, a = self.cfg, self.store, self.arts
        a["dataset"] = dataset_stage(store, cfg)
        a["samples"] = samples_stage(store, cfg, a["dataset"])
        a["descriptions"] = descriptions_stage(store, cfg, a["dataset"]) if cfg.description.enabled else None
        a["text_features"] = text_features_stage(store, cfg, a["dataset"], a["descriptions"])
        a["lightgcn"] = lightgcn_stage(store, cfg, a["dataset"], a["samples"])
        a["projector"] = projector_stage(store, cfg, a["text_features"], a["lightgcn"])
        return ItemViews(
            title=np.load(a["text_features"].file("title.npy")),
            text=np.load(a["text_features"].file("text.npy")),
            colla=np.load(a["lightgcn"].file("item_emb.npy")),
            ssl=np.load(a["projector"].file("ssl_emb.npy")),
        )

    def examples(self, views: ItemViews, cfg: RunConfig | None = None) -> Artifact:
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
            table = training_examples(a["samples"].read_table("samples"), views, items, users, cfg, inter)
            art.write_table(table)
            return table.num_rows

        inputs = [a["samples"], a["text_features"], a["lightgcn"], a["projector"]]
        return self.store.run("examples", spec, inputs, compute)

    def adapter(self, views: ItemViews, cfg: RunConfig | None = None) -> Artifact | None:
        """The LoRA adapter of ``cfg`` (None when ``lora.enabled`` is false): examples -> Ray Train."""
        cfg = cfg or self.cfg
        if not cfg.lora.enabled:
            return None
        ex = self.examples(views, cfg)
        if cfg is self.cfg:
            self.arts["examples"] = ex
        return lora_stage(self.store, cfg, ex)

    def eval_samples(self, split_name: str = "test") -> pa.Table:
        limit = self.cfg.eval.max_test_samples if split_name == "test" else self.cfg.eval.max_valid_samples
        return eval_subset(
            split(self.arts["samples"].read_table("samples"), split_name), limit, self.cfg.eval.subset, self.cfg.seed
        )

    def predict(
        self,
        views: ItemViews,
        rcfg: RetrievalConfig,
        adapter: Artifact | None,
        split_name: str = "test",
        name: str = "scores",
        cfg: RunConfig | None = None,
    ) -> tuple[pa.Table, Artifact]:
        """Score the ``split_name`` samples with the context chosen by ``rcfg``: ``(predictions, scores artifact)``.

        ``predictions`` = the samples (without history lists) + ``context_item_ids`` + ``prob`` float32.
        """
        cfg, a = cfg or self.cfg, self.arts
        samples = with_context(self.eval_samples(split_name), views, rcfg)
        inter = a["dataset"].read_table("interactions") if cfg.prompt.stats else None
        prompts = prompts_for(samples, a["dataset"].read_table("items"), read_users(a["dataset"]), cfg, inter)
        rows = pa.table({"sample_id": samples.column("sample_id"), "prompt": prompts})
        art = score_stage(
            self.store,
            name,
            rows,
            key="sample_id",
            prompt="prompt",
            llm_cfg=cfg.llm,
            adapter=adapter,
            block_size=cfg.llm.batch_size * 8,
            inputs=[a["samples"]],
        )
        probs = art.read_table().column("prob")
        return samples.drop_columns(
            [c for c in ("history_item_ids", "history_ratings") if c in samples.column_names]
        ).append_column("prob", probs), art


def evaluate_split(cfg: RunConfig, split_name: str = "valid", force: tuple[str, ...] = ()) -> dict:
    """Train what ``cfg`` needs (cached stages are reused) and score one split: the Tune objective.

    Returns ``{"auc", "logloss", "acc", "n", "split"}`` of RALLRec on ``split_name``.
    """
    from ..evaluation.metrics import ctr_metrics

    pipe = Pipeline(cfg, force)
    views = pipe.upstream()
    adapter = pipe.adapter(views)
    preds, _ = pipe.predict(views, cfg.retrieval, adapter, split_name)
    m = ctr_metrics(preds.column("label").to_numpy(), preds.column("prob").to_numpy())
    return {**{k: float(v) for k, v in m.items()}, "n": preds.num_rows, "split": split_name}


RUN_FILE = "run.json"


def write_run_file(run_dir: Path, cfg: RunConfig, arts: dict[str, Artifact | None]) -> Path:
    """``run.json``: the exact config and the artifact of every stage, so a finished run can be served."""
    store_root = next(a.store.root for a in arts.values() if a is not None)
    payload = {
        "method": cfg.method,
        "name": cfg.name,
        "artifacts_dir": store_root,
        "artifacts": {k: {"stage": v.stage, "key": v.key} for k, v in arts.items() if v is not None},
        "config": cfg.model_dump(mode="json"),
    }
    out = run_dir / RUN_FILE
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    tmp.replace(out)
    return out


@dataclass
class LoadedRun:
    """A finished run read back from its ``run.json``: config, store and the stage artifacts by name."""

    run_dir: Path
    cfg: RunConfig
    store: ArtifactStore
    arts: dict[str, Artifact]

    def views(self) -> ItemViews:
        a = self.arts
        return ItemViews(
            title=np.load(a["text_features"].file("title.npy")),
            text=np.load(a["text_features"].file("text.npy")),
            colla=np.load(a["lightgcn"].file("item_emb.npy")),
            ssl=np.load(a["projector"].file("ssl_emb.npy")),
        )


def load_run(run_dir: str | Path) -> LoadedRun:
    """Open the run written by :func:`run` in ``run_dir`` (raises with the fix when it is not one)."""
    run_dir = Path(run_dir)
    path = run_dir / RUN_FILE
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: RUN_DIR must be the output folder of a finished "
            f"`ragrec run` (runs/<name>/); run the config first"
        )
    payload = json.loads(path.read_text())
    if payload.get("method", "rallrec") != "rallrec":
        raise ValueError(
            f"{path}: this is a {payload['method']!r} run; serving needs a RALLRec run "
            f"(method: rallrec), e.g. runs/rallrec_ml100k"
        )
    cfg = RunConfig.model_validate(payload["config"])
    store = ArtifactStore(payload["artifacts_dir"])
    arts = {}
    for name, ref in payload["artifacts"].items():
        art = Artifact(store, ref["stage"], ref["key"])
        if not art.done:
            raise FileNotFoundError(
                f"{path}: artifact {name} ({art.uri}) is missing; rerun `ragrec run` with "
                f"this run's config to rebuild it"
            )
        arts[name] = art
    return LoadedRun(run_dir, cfg, store, arts)


def run(cfg: RunConfig, force: tuple[str, ...] = ()) -> RunResult:
    """Run the whole RALLRec pipeline for ``cfg`` and write the report into ``cfg.run_dir()``."""
    from ..evaluation.baselines import trivial_baselines
    from ..evaluation.metrics import auc_decomposition
    from ..evaluation.report import decomposition_note, plot_auc_bars, plot_curve, write_report

    t0 = time.perf_counter()
    pipe = Pipeline(cfg, force)
    views = pipe.upstream()
    adapter = pipe.adapter(views)
    pipe.arts["lora"] = adapter
    preds, score_art = pipe.predict(views, cfg.retrieval, adapter)
    pipe.arts["scores"] = score_art

    labels = preds.column("label").to_numpy()
    probs = preds.column("prob").to_numpy()
    users = preds.column("user_id").to_numpy()
    samples = pipe.arts["samples"].read_table("samples")
    main = "RALLRec" if adapter else "RALLRec (zero-shot)"
    rows = [_metric_row(main, labels, probs, cfg.eval.bootstrap, cfg.seed, users)]
    others: dict[str, np.ndarray] = {}
    if adapter is not None and cfg.eval.zero_shot:
        zs, zs_art = pipe.predict(views, cfg.retrieval, None)
        pipe.arts["scores_zero_shot"] = zs_art
        others["zero-shot (untuned)"] = zs.column("prob").to_numpy()
        preds = preds.append_column("prob_zero_shot", zs.column("prob"))
    train_inter = train_interactions(pipe.arts["dataset"].read_table("interactions"), samples)
    others.update(trivial_baselines(train_inter, preds))
    for name, p in others.items():
        rows.append(_metric_row(name, labels, p, cfg.eval.bootstrap, cfg.seed, users, against=probs))
    fusion_rows, f_sections, f_notes, f_extra, f_cols = (
        _run_fusion(pipe, views, cfg, adapter, preds, rows[0]["name"]) if cfg.eval.fusion else ([], {}, [], {}, {})
    )
    for col, values in f_cols.items():  # p_fused, p_fused_no_llm in predictions.parquet
        preds = preds.append_column(col, pa.array(values.astype(np.float32)))

    run_dir = cfg.run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    import pyarrow.parquet as pq

    pq.write_table(preds, run_dir / "predictions.parquet")
    write_run_file(run_dir, cfg, pipe.arts)
    counts = dict(pipe.arts["samples"].manifest()["splits"])
    counts["evaluated"] = preds.num_rows
    counts["train_examples"] = pipe.arts["examples"].manifest()["rows"] if adapter else 0
    plots = {"auc": lambda p: plot_auc_bars(rows, p)}
    for stage in ("lightgcn", "projector", "lora"):
        art = pipe.arts.get(stage)
        if art is not None:
            hist = art.read_json("history")
            if hist and "loss" in hist[0]:
                plots[f"{stage}_loss"] = (
                    lambda h, s: (
                        lambda p: plot_curve(
                            list(range(1, len(h) + 1)), {"loss": [r["loss"] for r in h]}, p, "step", f"{s} loss"
                        )
                    )
                )(hist, stage)
    wall = time.perf_counter() - t0
    notes = [
        f"wall time {wall:.0f} s",
        "artifacts: " + ", ".join(f"{k}={v.key}" for k, v in pipe.arts.items() if v),
        decomposition_note(rows[0]["name"], auc_decomposition(users, labels, probs)),
    ]
    best_trivial = max(r["auc"] for r in rows[1:]) if len(rows) > 1 else None
    if best_trivial is not None and rows[0]["auc"] < best_trivial:
        notes.append(f"{rows[0]['name']} does NOT beat the best trivial baseline (AUC {best_trivial:.4f}).")
    rows += fusion_rows
    notes += f_notes
    write_report(
        run_dir,
        title=f"RALLRec on {cfg.data.name}",
        config=cfg.model_dump(mode="json"),
        counts=counts,
        rows=rows,
        notes=notes,
        plots=plots,
        sections=f_sections,
        extra=f_extra,
        reference=main,
    )
    metrics = {"rows": rows, "counts": counts, "wall_seconds": round(wall, 1), **f_extra}
    log.info(
        "RALLRec %s: AUC %.4f  LogLoss %.4f  ACC %.4f  (%d samples, %.0f s) -> %s",
        cfg.data.name,
        rows[0]["auc"],
        rows[0]["logloss"],
        rows[0]["acc"],
        preds.num_rows,
        wall,
        run_dir / "report.md",
    )
    return RunResult(run_dir, metrics, dict(pipe.arts))


def _run_fusion(
    pipe: Pipeline, views: ItemViews, cfg: RunConfig, adapter: Artifact | None, preds: pa.Table, llm_name: str
) -> tuple[list[dict], dict, list[str], dict, dict[str, np.ndarray]]:
    """``eval.fusion`` in `ragrec run`: DeepFM (the evaluation's cached stage), the validation scores and the
    fusion artifact (all added to ``pipe.arts``, so run.json references them and serving finds them).

    Returns the result rows (DeepFM, fusion, fusion w/o LLM), the report section with the paired ΔAUC of
    the fusion against each input, the coefficient note, the ``metrics.json`` block and the fused test
    probabilities as prediction columns (``p_fused``, ``p_fused_no_llm``).
    """
    from .rallrec_evaluate import fusion_comparisons, fusion_labels, fusion_report, rallrec_fusion

    probs = preds.column("prob").to_numpy().astype(np.float64)
    res, vart = rallrec_fusion(pipe, views, cfg, adapter, preds, probs, llm_name)
    pipe.arts["valid_scores"] = vart
    pipe.arts["fusion"] = res.artifact
    labels, users = preds.column("label").to_numpy(), preds.column("user_id").to_numpy()
    crm = res.input_probs("crm")
    full, no_llm = fusion_labels(res.names)
    rows = [
        _metric_row(n, labels, p, cfg.eval.bootstrap, cfg.seed, users)
        for n, p in ((res.names["crm"], crm), (full, res.fused), (no_llm, res.fused_without_llm))
    ]
    sections, notes, extra = fusion_report(res, fusion_comparisons(res, labels, users, cfg, probs, crm))
    return rows, sections, notes, extra, {"p_fused": res.fused, "p_fused_no_llm": res.fused_without_llm}


def _metric_row(
    name: str,
    labels: np.ndarray,
    probs: np.ndarray,
    n_boot: int,
    seed: int,
    user_ids: np.ndarray | None = None,
    against: np.ndarray | None = None,
) -> dict:
    """AUC with its sample-bootstrap interval (``auc_lo``, ``auc_hi``), LogLoss, ACC; with ``user_ids`` also
    the user-clustered interval (``auc_ulo``, ``auc_uhi``: users resampled with all their samples) and UAUC;
    with ``against`` (the main model's probabilities on the same samples) the paired ΔAUC = this row − main
    (``delta``, ``delta_lo/hi``, and ``delta_ulo/uhi`` user-clustered)."""
    from ..evaluation.metrics import bootstrap_ci, bootstrap_delta_ci, ctr_metrics, uauc

    m = ctr_metrics(labels, probs)
    lo, hi = bootstrap_ci(labels, probs, metric="auc", n=n_boot, seed=seed)
    row = {
        "name": name,
        **{k: float(v) for k, v in m.items()},
        "auc_lo": float(lo),
        "auc_hi": float(hi),
        "n": len(labels),
    }
    if user_ids is not None:
        ulo, uhi = bootstrap_ci(labels, probs, metric="auc", n=n_boot, seed=seed, groups=user_ids)
        row.update(auc_ulo=float(ulo), auc_uhi=float(uhi), uauc=float(uauc(user_ids, labels, probs)))
    if against is not None:
        d, dlo, dhi = bootstrap_delta_ci(labels, probs, against, n=n_boot, seed=seed)
        row.update(delta=float(d), delta_lo=float(dlo), delta_hi=float(dhi))
        if user_ids is not None:
            _, dulo, duhi = bootstrap_delta_ci(labels, probs, against, n=n_boot, seed=seed, groups=user_ids)
            row.update(delta_ulo=float(dulo), delta_uhi=float(duhi))
    return row
