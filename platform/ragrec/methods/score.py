"""SCoRe (self-assessing collaborative retrieval): similar users' behaviour as natural-language context.

A chain of cached stages (``docs/architecture.md``); each builds one artifact, so a rerun or a variant only
computes what its parameters change:

  dataset -> samples (temporal protocol) -> sasrec (CRM: user vectors h_u, neighbours N^c)
          -> user_docs d(H(u)) -> car (encoder tuned with InfoNCE on N^c) | user_base (untuned encoder)
          -> rationales (LLM self-assessment P^r, Ray Data) -> sare (cross-encoder, InfoNCE on the
             rationale ranking) -> ci_contexts (Ke retrieved users, reranked) -> examples (P^s)
          -> lora -> scores -> AUC / UAUC / report

Variants (``ci.retriever``, ``sare.enabled``, ``ci.ks``): SCoRe-base (untuned encoder), SCoRe-cf
(SASRec neighbours), SCoRe-rerank (no SARE), no CI (``ks=0``, the TALLRec-style prompt P^b).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..artifacts import Artifact, ArtifactStore
from ..config import RunConfig
from ..stages import generate_stage
from ..stages.data import dataset_stage, samples_stage
from ..stages.lora import lora_stage
from .base import MethodPipeline
from .common import split, train_interactions, train_subset

log = logging.getLogger("ragrec.score")


# ---------------------------------------------------------------------------------------------------
# CRM and behaviour documents
# ---------------------------------------------------------------------------------------------------
def _train_inter(ds_art: Artifact, samples_art: Artifact) -> pa.Table:
    return train_interactions(ds_art.read_table("interactions"), samples_art.read_table("samples"))


def _sare_dtype(precision: str) -> str:
    """``bfloat16`` / ``float32``: what ``sare.precision`` resolves to on this machine's default device."""
    import torch

    from ..runtime import device
    from ..training.lora import resolve_precision

    return "bfloat16" if resolve_precision(precision, torch.device(device("auto"))) == torch.bfloat16 else "float32"


def sasrec_stage(store: ArtifactStore, cfg: RunConfig, ds_art: Artifact, samples_art: Artifact) -> Artifact:
    """Step 1: SASRec on the training interactions; user vectors ``h_u`` and the leave-one-out sanity metric."""
    from ..training.ray_train import TrainOptions
    from ..training.sasrec import train_sasrec

    def compute(art: Artifact):
        inter = _train_inter(ds_art, samples_art)
        n_users, n_items = ds_art.manifest()["users"], ds_art.manifest()["items"]
        n_users = n_users or int(pc.max(ds_art.read_table("interactions").column("user_id")).as_py()) + 1
        res = train_sasrec(
            inter.column("user_id").to_numpy(),
            inter.column("item_id").to_numpy(),
            inter.column("timestamp").to_numpy(),
            n_users,
            n_items,
            cfg.sasrec,
            opts=TrainOptions.for_stage(cfg, art, out="train"),
        )
        np.save(art.staging / "user_emb.npy", res.user_emb.astype(np.float32))
        np.save(art.staging / "item_emb.npy", res.item_emb.astype(np.float32))
        art.write_json(res.history, "history")
        art.write_json(res.metrics, "metrics")
        return {"rows": int(res.user_emb.shape[0]), **{k: v for k, v in res.metrics.items()}}

    return store.run("sasrec", {"sasrec": cfg.sasrec.model_dump(), "seed": cfg.seed}, [ds_art, samples_art], compute)


def user_docs_stage(store: ArtifactStore, cfg: RunConfig, ds_art: Artifact, samples_art: Artifact) -> Artifact:
    """``d(H(u))`` of every user from training interactions (the retrieval corpus: no valid/test leakage)."""
    from ..llm.prompts_score import user_documents

    def compute(art: Artifact):
        inter = _train_inter(ds_art, samples_art)
        n_users = (
            ds_art.manifest()["users"] or int(pc.max(ds_art.read_table("interactions").column("user_id")).as_py()) + 1
        )
        docs = user_documents(
            inter,
            ds_art.read_table("items"),
            n_users,
            max_items=cfg.user_text.max_items,
            max_title_chars=cfg.user_text.max_title_chars,
        )
        art.write_table(docs)
        return {"rows": docs.num_rows, "with_doc": int(pc.sum(pc.greater(docs.column("n_liked"), 0)).as_py() or 0)}

    return store.run("user_docs", {"user_text": cfg.user_text.model_dump()}, [ds_art, samples_art], compute)


def _valid_users(docs_art: Artifact) -> np.ndarray:
    return docs_art.read_table().column("n_liked").to_numpy() > 0


def car_stage(store: ArtifactStore, cfg: RunConfig, sasrec_art: Artifact, docs_art: Artifact) -> Artifact:
    """Step 2: the sentence encoder tuned with InfoNCE on the top-Kc SASRec neighbours; user vectors."""
    from ..training.car import encode_users, train_car
    from ..training.ray_train import TrainOptions
    from ..training.sasrec import collaborative_neighbours

    def compute(art: Artifact):
        docs = docs_art.read_table().column("doc").to_pylist()
        h = np.load(sasrec_art.file("user_emb.npy"))
        valid = _valid_users(docs_art) & (np.abs(h).sum(axis=1) > 0)
        nbrs = collaborative_neighbours(h, cfg.car.kc, valid=valid)
        res = train_car(
            docs,
            nbrs,
            cfg.car,
            valid=valid,
            opts=TrainOptions.for_stage(cfg, art, out="train"),
        )
        np.save(art.staging / "user_emb.npy", encode_users(res.model_dir, docs).astype(np.float32))
        art.write_json(res.history, "history")
        return {"rows": len(docs), "anchors": int(valid.sum())}

    spec = {"car": cfg.car.model_dump(exclude={"enabled"}), "seed": cfg.seed}
    return store.run("car", spec, [sasrec_art, docs_art], compute)


def user_base_stage(store: ArtifactStore, cfg: RunConfig, docs_art: Artifact) -> Artifact:
    """User vectors from the untuned encoder (SCoRe-base; also TxtEmb of the rationale ranking)."""
    from ..training.car import encode_users

    def compute(art: Artifact):
        docs = docs_art.read_table().column("doc").to_pylist()
        np.save(art.staging / "user_emb.npy", encode_users(cfg.car.encoder, docs).astype(np.float32))
        return {"rows": len(docs)}

    return store.run("user_base", {"encoder": cfg.car.encoder}, [docs_art], compute)


# ---------------------------------------------------------------------------------------------------
# self-assessment and SARE
# ---------------------------------------------------------------------------------------------------
def _candidates(user_emb: np.ndarray, users: np.ndarray, valid: np.ndarray, k: int) -> np.ndarray:
    """``(len(users), k)`` retrieved user ids for the given target users (never the user itself)."""
    from ..retrieval.users import retrieve_users

    ids, _ = retrieve_users(user_emb[users], user_emb, k, query_user_ids=users, valid=valid)
    return ids


def rationale_pairs(samples: pa.Table, n: int, seed: int, valid: np.ndarray) -> pa.Table:
    """``n`` seeded training samples (users with a document) whose (user, item) pairs the LLM assesses."""
    train = split(samples, "train")
    ok = valid[train.column("user_id").to_numpy()]
    train = train.filter(pa.array(ok))
    if train.num_rows == 0:
        raise ValueError(
            "SCoRe: no training sample belongs to a user with liked training items; "
            "check data.label_threshold / the temporal windows"
        )
    if n < train.num_rows:
        idx = np.sort(np.random.default_rng(seed + 17).choice(train.num_rows, size=n, replace=False))
        train = train.take(pa.array(idx))
    return train


def _own_history(samples: pa.Table, items: pa.Table, cfg: RunConfig) -> pa.Array:
    """Each sample's own liked history as a title list, with ``cfg.user_text``'s limits (d(H(u_t)))."""
    from ..llm.prompts_score import history_documents

    return history_documents(
        samples,
        items,
        max_items=cfg.user_text.max_items,
        label_threshold=cfg.data.label_threshold,
        max_title_chars=cfg.user_text.max_title_chars,
    )


def rationales_stage(
    store: ArtifactStore, cfg: RunConfig, ds_art: Artifact, samples_art: Artifact, docs_art: Artifact
) -> Artifact:
    """Step 3: the LLM's self-assessment ``r_t = LLM(P^r(d(H(u_t)), d(v_t)))`` for sampled training pairs."""
    from ..llm.prompts_score import rationale_prompts

    items = ds_art.read_table("items")
    pairs = rationale_pairs(samples_art.read_table("samples"), cfg.rationale.pairs, cfg.seed, _valid_users(docs_art))
    hist = _own_history(pairs, items, cfg)
    prompts = rationale_prompts(pairs, hist, items, cfg.rationale.template, cfg.user_text.max_title_chars)
    rows = pa.table({"sample_id": pairs.column("sample_id"), "prompt": pa.array(prompts, pa.string())})
    r = cfg.rationale
    return generate_stage(
        store,
        "rationales",
        rows,
        key="sample_id",
        prompt="prompt",
        llm_cfg=cfg.llm,
        block_size=r.block_size,
        inputs=[samples_art, docs_art],
        sampling={"max_new_tokens": r.max_new_tokens, "temperature": r.temperature, "top_p": r.top_p, "seed": cfg.seed},
    )


def _by_sample_id(samples: pa.Table, ids: pa.Array | pa.ChunkedArray) -> pa.Table:
    sid = samples.column("sample_id").to_numpy()
    pos = np.searchsorted(sid, np.asarray(ids))
    return samples.take(pa.array(pos))


def sare_stage(
    store: ArtifactStore,
    cfg: RunConfig,
    ds_art: Artifact,
    samples_art: Artifact,
    docs_art: Artifact,
    car_art: Artifact,
    base_art: Artifact,
    rat_art: Artifact,
) -> Artifact:
    """Steps 4-5: rank the Ke CAR-retrieved users by cos(TxtEmb(r_t), TxtEmb(d(H(u_i)))) and tune SARE on it."""
    from ..llm.prompts_score import basic_prompts
    from ..retrieval.users import rank_by_rationale
    from ..training.car import encode_users
    from ..training.ray_train import TrainOptions
    from ..training.sare import train_sare

    def compute(art: Artifact):
        rat = rat_art.read_table()
        pairs = _by_sample_id(samples_art.read_table("samples"), rat.column("sample_id"))
        docs = np.array(docs_art.read_table().column("doc").to_pylist(), dtype=object)
        valid = _valid_users(docs_art)
        cand = _candidates(
            np.load(car_art.file("user_emb.npy")), pairs.column("user_id").to_numpy(), valid, cfg.ci.ke
        )  # (P, Ke)
        txt_users = np.load(base_art.file("user_emb.npy"))  # TxtEmb of d(H(u)), untuned encoder
        r_emb = encode_users(cfg.car.encoder, rat.column("text").to_pylist())
        order = rank_by_rationale(r_emb, txt_users[cand])  # (P, Ke) positions, best first
        ranked = np.take_along_axis(cand, order, axis=1)
        items = ds_art.read_table("items")
        hist = _own_history(pairs, items, cfg)
        queries = basic_prompts(pairs, hist, items, cfg.user_text.max_title_chars).to_pylist()
        res = train_sare(
            queries,
            docs[ranked].tolist(),
            cfg.sare,
            opts=TrainOptions.for_stage(cfg, art, out="train"),
        )
        art.write_table(
            pa.table(
                {
                    "sample_id": pairs.column("sample_id"),
                    "ranked_user_ids": pa.array(ranked.tolist(), pa.list_(pa.int64())),
                }
            ),
            "ranking",
        )
        art.write_json(res.history, "history")
        return {"rows": len(queries)}

    spec = {"sare": cfg.sare.model_dump(exclude={"enabled"}), "ke": cfg.ci.ke, "seed": cfg.seed}
    return store.run("sare", spec, [samples_art, docs_art, car_art, base_art, rat_art], compute)


# ---------------------------------------------------------------------------------------------------
# CI contexts, prompts, LoRA, prediction
# ---------------------------------------------------------------------------------------------------
@dataclass
class SCoReArtifacts:
    dataset: Artifact
    samples: Artifact
    sasrec: Artifact
    user_docs: Artifact
    user_base: Artifact
    car: Artifact | None = None
    rationales: Artifact | None = None
    sare: Artifact | None = None


def _sare_model_dir(sare_art: Artifact) -> Path:
    return sare_art.path / "train" / "model"


class Pipeline(MethodPipeline):
    """The SCoRe artifacts of one config; variants reuse every upstream stage."""

    loss_stages = ("sasrec", "car", "sare", "lora")
    examples_stage = "score_examples"

    def __init__(self, cfg: RunConfig, force: tuple[str, ...] = ()):
        if cfg.method != "score":
            raise ValueError(f"the SCoRe pipeline needs method: score (got '{cfg.method}')")
        super().__init__(cfg, force)

    # -- upstream ---------------------------------------------------------------------------------
    def upstream(self, cfg: RunConfig | None = None) -> dict[str, Artifact | None]:
        """Every stage ``cfg``'s CI needs (retriever and SARE); shared stages are built once."""
        cfg, store, a = cfg or self.cfg, self.store, self.arts
        if "dataset" not in a:
            a["dataset"] = dataset_stage(store, cfg)
            a["samples"] = samples_stage(store, cfg, a["dataset"])
            a["sasrec"] = sasrec_stage(store, cfg, a["dataset"], a["samples"])
            a["user_docs"] = user_docs_stage(store, cfg, a["dataset"], a["samples"])
            a["user_base"] = user_base_stage(store, cfg, a["user_docs"])
        if cfg.ci.ks > 0 and (cfg.ci.retriever == "car" or cfg.sare.enabled) and a.get("car") is None:
            a["car"] = car_stage(store, cfg, a["sasrec"], a["user_docs"])
        if cfg.ci.ks > 0 and cfg.sare.enabled and a.get("sare") is None:
            a["rationales"] = rationales_stage(store, cfg, a["dataset"], a["samples"], a["user_docs"])
            a["sare"] = sare_stage(
                store, cfg, a["dataset"], a["samples"], a["user_docs"], a["car"], a["user_base"], a["rationales"]
            )
        return a

    @functools.cached_property
    def items(self) -> pa.Table:
        return self.arts["dataset"].read_table("items")

    @functools.cached_property
    def docs(self) -> pa.Array:
        """``d(H(u))`` indexed by user id."""
        return self.arts["user_docs"].read_table().column("doc").combine_chunks()

    def user_vectors(self, retriever: str) -> np.ndarray:
        a = self.arts
        art = {"car": a.get("car"), "base": a["user_base"], "cf": a["sasrec"]}[retriever]
        return np.load(art.file("user_emb.npy"))

    def ci_contexts(self, samples: pa.Table, cfg: RunConfig, name: str) -> Artifact:
        """Per sample the Ke retrieved users, reranked by SARE (or left in retrieval order): ``ci_user_ids``."""
        a = self.arts
        spec = {
            "retriever": cfg.ci.retriever,
            "ke": cfg.ci.ke,
            "sare": cfg.sare.enabled,
            "n": samples.num_rows,
            "ids": _ids_digest(samples),
        }
        if cfg.sare.enabled:  # the dtype the reranking pass resolves to here (auto differs between machines)
            spec["sare_dtype"] = _sare_dtype(cfg.sare.precision)
        inputs = [
            a["samples"],
            a["user_docs"],
            {"car": a.get("car"), "base": a["user_base"], "cf": a["sasrec"]}[cfg.ci.retriever],
        ] + ([a["sare"]] if cfg.sare.enabled else [])

        def compute(art: Artifact):
            users = samples.column("user_id").to_numpy()
            valid = _valid_users(a["user_docs"])
            cand = _candidates(self.user_vectors(cfg.ci.retriever), users, valid, cfg.ci.ke)
            if cfg.sare.enabled:
                from ..llm.prompts_score import basic_prompts
                from ..retrieval.users import order_by_scores
                from ..training.sare import score_pairs

                docs = np.array(self.docs.to_pylist(), dtype=object)
                queries = basic_prompts(
                    samples, self._history(samples, cfg), self.items, cfg.user_text.max_title_chars
                ).to_pylist()
                scores = score_pairs(
                    _sare_model_dir(a["sare"]),
                    queries,
                    docs[cand].tolist(),
                    max_tokens=cfg.sare.max_tokens,
                    precision=cfg.sare.precision,
                )
                cand = np.take_along_axis(cand, order_by_scores(scores), axis=1)
            art.write_table(
                pa.table(
                    {
                        "sample_id": samples.column("sample_id"),
                        "ci_user_ids": pa.array(cand.tolist(), pa.list_(pa.int64())),
                    }
                )
            )
            return samples.num_rows

        return self.store.run("ci_contexts", spec, [x for x in inputs if x is not None], compute)

    def _history(self, samples: pa.Table, cfg: RunConfig) -> pa.Array:
        return _own_history(samples, self.items, cfg)

    def prompts(self, samples: pa.Table, cfg: RunConfig, name: str) -> pa.Array:
        """``P^s`` (``ci.ks > 0``) or ``P^b`` for each sample."""
        from ..llm.prompts_score import ci_prompts

        similar: list[pa.Array] = []
        if cfg.ci.ks > 0:
            ctx = self.ci_contexts(samples, cfg, name).read_table().column("ci_user_ids").combine_chunks()
            ids = ctx.flatten().to_numpy().reshape(len(ctx), -1)[:, : cfg.ci.ks]  # (n, Ke) -> (n, Ks)
            similar = [self.docs.take(pa.array(ids[:, j])) for j in range(ids.shape[1])]
        return ci_prompts(samples, self._history(samples, cfg), similar, self.items, cfg.user_text.max_title_chars)

    def adapter(self, cfg: RunConfig | None = None) -> Artifact | None:
        """The LoRA adapter of ``cfg``'s prompts (None when ``lora.enabled`` is false)."""
        from ..llm.chat import ANSWER_NO, ANSWER_YES

        cfg = cfg or self.cfg
        if not cfg.lora.enabled:
            return None
        a = self.arts
        sub = train_subset(a["samples"].read_table("samples"), cfg.lora.train_samples, cfg.seed)
        spec = {
            "ci": cfg.ci.model_dump(),
            "sare": cfg.sare.enabled,
            "user_text": cfg.user_text.model_dump(),
            "train_samples": cfg.lora.train_samples,
            "seed": cfg.seed,
        }

        def compute(art: Artifact):
            prompts = self.prompts(sub, cfg, "train")
            answers = np.where(sub.column("label").to_numpy() > 0, ANSWER_YES, ANSWER_NO)
            art.write_table(
                pa.table(
                    {
                        "sample_id": sub.column("sample_id"),
                        "prompt": prompts,
                        "answer": pa.array(answers.tolist(), pa.string()),
                    }
                )
            )
            return sub.num_rows

        inputs = [x for x in (a["samples"], a["user_docs"], a.get("car"), a.get("sare"), a["sasrec"]) if x is not None]
        ex = self.store.run("score_examples", spec, inputs, compute)
        if cfg is self.cfg:
            a["examples"] = ex
        return lora_stage(self.store, cfg, ex)

    def predict(
        self, adapter: Artifact | None, cfg: RunConfig | None = None, split_name: str = "test", name: str = "scores"
    ) -> tuple[pa.Table, Artifact]:
        """Score the evaluation samples with ``cfg``'s prompts: (samples + ``prob``, scores artifact)."""
        cfg = cfg or self.cfg
        samples = self.eval_samples(split_name)
        art = self.score_prompts(samples, self.prompts(samples, cfg, split_name), adapter, cfg, name)
        keep = [c for c in samples.column_names if not c.startswith("history_")]
        return samples.select(keep).append_column("prob", art.read_table().column("prob")), art

    def report_notes(self) -> list[str]:
        sas = self.arts["sasrec"].read_json("metrics")
        return [
            f"SASRec sanity (leave-one-out, {self.cfg.sasrec.eval_negatives} negatives): NDCG@10 "
            f"{sas.get('ndcg@10', float('nan')):.4f}, HR@10 {sas.get('hr@10', float('nan')):.4f}"
        ]

    def report_metrics(self) -> dict:
        return {"sasrec": self.arts["sasrec"].read_json("metrics")}


def _ids_digest(samples: pa.Table) -> str:
    import hashlib

    return hashlib.sha256(samples.column("sample_id").to_numpy().tobytes()).hexdigest()[:16]
