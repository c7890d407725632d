"""UR4Rec (Zhang et al., 2024): LLM user preferences retrieved by a proxy transformer to augment rerankers.

The pipeline is a chain of cached stages (``docs/architecture.md``):

  dataset -> samples (rerank protocol: 100-candidate lists)
          -> user_preferences s_u, item_knowledge s_i (LLM generation, Eq. 1-3)
          -> ur4rec_texts: the frozen encoder's e_u / e_i tables (Eq. 5), and the raw-text tables (+text row)
          -> rerank_<backbone> Base -> retriever (pretrained with L_CL + alpha L_PIM on the Base's item
             embeddings h_i, Eq. 6-8) -> rerank_<backbone> UR4Rec (e_aug concatenated to each candidate, Eq. 9)

Each reranker stage trains one backbone on the training lists and stores its scores of the evaluated valid
and test lists, so the report, the sweep and the evaluation read them without retraining. The retriever is
frozen while the augmented backbone trains, so the augmented vectors of each list are computed once (the
paper's phase 3 trains it jointly; on 2 CPUs that costs a retriever forward per list per epoch).
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..artifacts import Artifact, ArtifactStore
from ..config import RunConfig
from ..data.lists import Lists
from ..llm.prompts_ur4rec import history_texts, item_phrases, item_prompts, user_histories, user_prompts
from ..stages import embed_texts_stage, generate_stage, to_numpy
from ..stages.data import dataset_stage, samples_stage
from ..stages.lightgcn import rerank_ranker_stage
from .base import ListScorer, RankingPipeline
from .common import eval_lists, train_lists

log = logging.getLogger("ragrec.ur4rec")

VERSION = "2"  # 2: the frozen retriever's e_aug in float32 (1: float16)
BACKBONE_TITLES = {"dlcm": "DLCM", "prm": "PRM", "setrank": "SetRank", "gru4rec": "GRU4Rec", "sasrec": "SASRec"}
_NEVER = np.iinfo(np.int64).max


def user_cut(samples: pa.Table, num_users: int) -> np.ndarray:
    """``(num_users,)`` the timestamp of each user's first valid/test target (int64 max when none): what the
    user's LLM preference may see is strictly before it."""
    held = samples.filter(pc.not_equal(samples.column("split"), "train"))
    cut = np.full(num_users, _NEVER, dtype=np.int64)
    np.minimum.at(cut, held.column("user_id").to_numpy(), held.column("timestamp").to_numpy())
    return cut


# ---------------------------------------------------------------------------------------------------
# LLM generation (Eq. 1-3) and the frozen encoder (Eq. 5)
# ---------------------------------------------------------------------------------------------------
def _generate(store: ArtifactStore, cfg: RunConfig, name: str, rows: pa.Table, source: Artifact) -> Artifact:
    """One UR4Rec generation stage: ``rows`` = (key column, ``prompt``) -> (key, text), with ``ur4rec``'s sampling."""
    u = cfg.ur4rec
    sampling = {"max_new_tokens": u.max_new_tokens, "temperature": u.temperature, "top_p": 1.0, "seed": cfg.seed}
    key = rows.column_names[0]
    return generate_stage(
        store,
        name,
        rows,
        key=key,
        prompt="prompt",
        llm_cfg=cfg.llm,
        sampling=sampling,
        block_size=u.block_size,
        inputs=[source],
    )


def _num_users(ds_art: Artifact, interactions: pa.Table) -> int:
    return ds_art.manifest().get("users") or int(pc.max(interactions.column("user_id")).as_py()) + 1


def user_history_table(cfg: RunConfig, ds_art: Artifact, samples_art: Artifact) -> tuple[pa.Table, int]:
    """``(user_id, item_ids, ratings)`` of every user with a sample: their rated interactions before their
    first valid/test target, the last ``ur4rec.user_history_items``."""
    inter = ds_art.read_table("interactions")
    samples = samples_art.read_table("samples")
    n_users = _num_users(ds_art, inter)
    ids, ratings = user_histories(inter, user_cut(samples, n_users), n_users, cfg.ur4rec.user_history_items)
    users = np.unique(samples.column("user_id").to_numpy())
    table = pa.table({"user_id": pa.array(np.arange(n_users, dtype=np.int64)), "item_ids": ids, "ratings": ratings})
    return table.take(pa.array(users)), n_users


def preferences_stage(store: ArtifactStore, cfg: RunConfig, ds_art: Artifact, samples_art: Artifact) -> Artifact:
    """s_u = LLM(p_u) (Eq. 1-2) for every user with a sample."""
    hist, _ = user_history_table(cfg, ds_art, samples_art)
    items = ds_art.read_table("items")
    prompts = user_prompts(cfg.ur4rec.user_template, items, hist.column("item_ids"), hist.column("ratings"))
    rows = pa.table({"user_id": hist.column("user_id"), "prompt": prompts})
    return _generate(store, cfg, "user_preferences", rows, samples_art)


def knowledge_stage(store: ArtifactStore, cfg: RunConfig, ds_art: Artifact) -> Artifact:
    """s_i = LLM(p_i) (Eq. 3) for every item (the first ``ur4rec.max_items`` when set)."""
    items = ds_art.read_table("items")
    if cfg.ur4rec.max_items:
        items = items.slice(0, cfg.ur4rec.max_items)
    rows = pa.table({"item_id": items.column("item_id"), "prompt": item_prompts(cfg.ur4rec.item_template, items)})
    return _generate(store, cfg, "item_knowledge", rows, ds_art)


TEXT_TABLES = ("user_llm", "item_llm", "user_raw", "item_raw")


def texts_stage(
    store: ArtifactStore, cfg: RunConfig, ds_art: Artifact, samples_art: Artifact, pref: Artifact, know: Artifact
) -> Artifact:
    """The frozen encoder's tables: ``user_llm.npy`` (U, E) = Encoder(s_u), ``item_llm.npy`` (I, E) =
    Encoder(s_i), and for the +text row ``user_raw.npy`` / ``item_raw.npy`` = the encoder on the history list
    and on ``"title", a genre movie`` without the LLM. Users without a sample get zero rows; items without an
    s_i (``ur4rec.max_items``) get their raw text's row. All four go through one embedding stage (one encoder
    actor) with keys ``"<table>:<id>"``."""
    items = ds_art.read_table("items")
    hist, n_users = user_history_table(cfg, ds_art, samples_art)
    n_items = ds_art.manifest()["items"]
    p, k = pref.read_table(), know.read_table()
    parts = {
        "user_llm": (p.column("user_id"), p.column("text")),
        "item_llm": (k.column("item_id"), k.column("text")),
        "user_raw": (hist.column("user_id"), history_texts(items, hist.column("item_ids"), hist.column("ratings"))),
        "item_raw": (items.column("item_id"), item_phrases(items)),
    }
    flat = lambda a: a.combine_chunks() if isinstance(a, pa.ChunkedArray) else a
    keys = pa.concat_arrays(
        [flat(pc.binary_join_element_wise(f"{n}:", ids.cast(pa.string()), "")) for n, (ids, _) in parts.items()]
    )
    emb = embed_texts_stage(
        store,
        "embed_ur4rec_texts",
        keys,
        [t for _, t in parts.values()],
        llm_cfg=cfg.llm,
        encoder=cfg.ur4rec.encoder,
        max_tokens=256,
        inputs=[samples_art, pref, know],
    )

    def compute(art: Artifact):
        t = emb.read_table()
        matrix = to_numpy(t.column("embedding"))
        parts_ = pc.split_pattern(t.column("key"), ":", max_splits=1)
        table = pc.list_element(parts_, 0).to_numpy(zero_copy_only=False).astype(str)
        ids = pc.list_element(parts_, 1).cast(pa.int64()).to_numpy()
        out = {}
        for name in ("user_raw", "item_raw", "user_llm", "item_llm"):  # item_llm falls back to item_raw
            size = n_users if name.startswith("user") else n_items
            full = out["item_raw"].copy() if name == "item_llm" else np.zeros((size, matrix.shape[1]), np.float32)
            sel = table == name
            full[ids[sel]] = matrix[sel]
            out[name] = full
            np.save(art.staging / f"{name}.npy", full)
        return {"users": n_users, "items": n_items, "dim": int(matrix.shape[1])}

    return store.run("ur4rec_texts", {"encoder": cfg.ur4rec.encoder}, [emb], compute, version=VERSION)


def load_texts(art: Artifact, which: str) -> tuple[np.ndarray, np.ndarray]:
    """``(user_table, item_table)`` of ``which`` = ``llm`` (s_u / s_i) or ``raw`` (the +text row)."""
    return np.load(art.path / f"user_{which}.npy"), np.load(art.path / f"item_{which}.npy")


# ---------------------------------------------------------------------------------------------------
# rerankers and the retriever (Ray Train)
# ---------------------------------------------------------------------------------------------------
AUG_NONE, AUG_TEXT, AUG_LLM, AUG_UR4REC = "none", "text", "llm", "ur4rec"


def _eval_spec(cfg: RunConfig) -> dict:
    e = cfg.eval
    return {"max_test_samples": e.max_test_samples, "max_valid_samples": e.max_valid_samples, "subset": e.subset}


def _augmenter(kind: str, texts: Artifact | None, retriever: Artifact | None, base: Artifact | None, cfg: RunConfig):
    """The module giving each candidate its augmented vector for ``kind`` (None for the Base row)."""
    if kind == AUG_NONE:
        return None
    if kind in (AUG_TEXT, AUG_LLM):
        from ..models.augment import TableAugmenter

        return TableAugmenter(*load_texts(texts, "raw" if kind == AUG_TEXT else "llm"))
    from ..training.ur4rec import Augmenter, load_retriever

    user_t, item_t = load_texts(texts, "llm")
    return Augmenter(
        load_retriever(retriever.path / "model"), user_t, item_t, base_item_embeddings(base), cfg.ur4rec.aggr_items
    )


def base_item_embeddings(base: Artifact) -> np.ndarray:
    """h_i: the item embeddings of a trained Base backbone (what the retriever aligns to)."""
    from ..training.rerank import RerankScorer

    return RerankScorer(base.path / "model").item_embeddings()


def reranker_stage(
    store: ArtifactStore,
    cfg: RunConfig,
    samples_art: Artifact,
    backbone: str,
    kind: str = AUG_NONE,
    *,
    texts: Artifact | None = None,
    retriever: Artifact | None = None,
    base: Artifact | None = None,
) -> Artifact:
    """Train ``backbone`` on the training lists with the ``kind`` augmentation and score the evaluated valid
    and test lists: ``model/`` + ``scores_valid.npy`` / ``scores_test.npy`` (N, C) float32 +
    ``sample_ids_{split}.npy``."""
    from ..training.ray_train import TrainOptions
    from ..training.rerank import RerankScorer, train_reranker

    spec = {
        "backbone": backbone,
        "kind": kind,
        "reranker": cfg.reranker.model_dump(mode="json", exclude={"backbones"}),
        "history_len": cfg.data.rerank.history_len,
        "eval": _eval_spec(cfg),
        "seed": cfg.seed,
    }
    if kind in (AUG_TEXT, AUG_LLM, AUG_UR4REC):
        spec["aggr_items"] = cfg.ur4rec.aggr_items
    inputs = [a for a in (samples_art, texts, retriever, base) if a is not None]

    def compute(art: Artifact):
        samples = samples_art.read_table("samples")
        n_items = int(samples_art.manifest().get("items") or _max_item(samples) + 1)
        train = train_lists(samples, cfg, cfg.reranker.max_train_samples)
        valid, test = eval_lists(samples, cfg, "valid"), eval_lists(samples, cfg, "test")
        module = _augmenter(kind, texts, retriever, base, cfg)
        precomputed = kind == AUG_UR4REC  # a frozen retriever: each list's vectors once, not every epoch
        augs = (
            {n: _augment(module, lists) for n, lists in (("train", train), ("valid", valid), ("test", test))}
            if precomputed
            else {}
        )
        res = train_reranker(
            backbone,
            train.arrays(augs.get("train")),
            valid.arrays(augs.get("valid")),
            n_items,
            cfg.data.rerank.history_len,
            cfg.reranker,
            opts=TrainOptions.for_stage(cfg, art, out="model"),
            augmenter=None if precomputed else module,
        )
        art.write_json(res.history, "history")
        scorer = RerankScorer(art.staging / "model")
        for name, lists in (("valid", valid), ("test", test)):
            scores = scorer(
                lists.history,
                lists.candidates,
                aug=augs.get(name),
                users=lists.users,
                augmenter=None if precomputed else module,
            )
            np.save(art.staging / f"scores_{name}.npy", scores.astype(np.float32))
            np.save(art.staging / f"sample_ids_{name}.npy", lists.sample_id)
        return {"rows": len(train), "valid": len(valid), "test": len(test), **_manifest_metrics(res.metrics)}

    return store.run(f"rerank_{backbone}", spec, inputs, compute, version=VERSION)


def _manifest_metrics(metrics: dict) -> dict:
    """A trainer's final metrics for the manifest (its ``seconds`` is the stage's own timing there)."""
    return {k: v for k, v in metrics.items() if k not in ("seconds", "rows")}


def _max_item(samples: pa.Table) -> int:
    return int(pc.max(pc.list_flatten(samples.column("candidates"))).as_py())


def _augment(module, lists: Lists) -> np.ndarray:
    """The frozen retriever's e_aug of every candidate of ``lists`` (:class:`Augmenter`): (N, C, H) float32 (so
    that serving one list reproduces the offline scores; see :func:`compute_augment`)."""
    from ..training.ur4rec import compute_augment

    return compute_augment(
        module.retriever,
        module.user_text.cpu().numpy(),
        module.item_text.cpu().numpy(),
        module.item_repr.cpu().numpy(),
        lists.users,
        lists.history,
        lists.candidates,
        m=module.m,
        dtype=np.float32,
    )


def retriever_stage(
    store: ArtifactStore, cfg: RunConfig, ds_art: Artifact, samples_art: Artifact, texts: Artifact, base: Artifact
) -> Artifact:
    """Pretrain the preference retriever (Eq. 6-8) on the training targets, with the Base backbone's h_i."""
    from ..training.ray_train import TrainOptions
    from ..training.ur4rec import train_retriever

    spec = {
        "ur4rec": cfg.ur4rec.model_dump(
            mode="json",
            include={
                "encoder",
                "aggr_items",
                "proxies",
                "layers",
                "alpha",
                "tau",
                "cl_negatives",
                "use_cl",
                "use_pim",
                "epochs",
                "lr",
                "batch_size",
                "max_train_samples",
            },
        ),
        "history_len": cfg.data.rerank.history_len,
        "eval": _eval_spec(cfg),
        "seed": cfg.seed,
    }

    def compute(art: Artifact):
        samples = samples_art.read_table("samples")
        inter = ds_art.read_table("interactions")
        n_users = _num_users(ds_art, inter)
        n_items = ds_art.manifest()["items"]
        train = train_lists(samples, cfg, cfg.ur4rec.max_train_samples)
        valid = eval_lists(samples, cfg, "valid")
        # negatives avoid what the user rated before their first held-out target
        u, i, t = (inter.column(c).to_numpy() for c in ("user_id", "item_id", "timestamp"))
        seen = t < user_cut(samples, n_users)[u]
        interacted = np.unique(u[seen].astype(np.int64) * n_items + i[seen])
        user_t, item_t = load_texts(texts, "llm")
        as_dict = lambda lists: {"users": lists.users, "history": lists.history, "targets": lists.targets}
        res = train_retriever(
            user_t,
            item_t,
            base_item_embeddings(base),
            as_dict(train),
            cfg.ur4rec,
            opts=TrainOptions.for_stage(cfg, art, out="model"),
            valid=as_dict(valid),
            interacted=interacted,
            init_encoder=cfg.ur4rec.encoder,
        )
        art.write_json(res.history, "history")
        return {"rows": len(train), **_manifest_metrics(res.metrics)}

    return store.run("retriever", spec, [samples_art, texts, base], compute, version=VERSION)


# ---------------------------------------------------------------------------------------------------
# the pipeline
# ---------------------------------------------------------------------------------------------------
class Pipeline(RankingPipeline):
    """The UR4Rec artifacts of one config: per backbone of ``reranker.backbones`` a Base and a UR4Rec reranker."""

    loss_stages = ()

    def upstream(self, cfg: RunConfig | None = None) -> None:
        """dataset [-> ranker] -> samples -> s_u, s_i -> encoder tables (``ranker``: LightGCN on the training
        positives, whose top unseen items are the negatives of ``data.rerank.negatives: ranker``)."""
        cfg, store, a = self.cfg, self.store, self.arts
        if "ur4rec_texts" not in a:
            a["dataset"] = dataset_stage(store, cfg)
            if cfg.data.rerank.negatives == "ranker":
                a["ranker"] = rerank_ranker_stage(store, cfg, a["dataset"])
            a["samples"] = samples_stage(store, cfg, a["dataset"], ranker=a.get("ranker"))
            a["user_preferences"] = preferences_stage(store, cfg, a["dataset"], a["samples"])
            a["item_knowledge"] = knowledge_stage(store, cfg, a["dataset"])
            a["ur4rec_texts"] = texts_stage(
                store, cfg, a["dataset"], a["samples"], a["user_preferences"], a["item_knowledge"]
            )

    def base(self, backbone: str, cfg: RunConfig | None = None) -> Artifact:
        return reranker_stage(self.store, cfg or self.cfg, self.arts["samples"], backbone)

    def augmented(self, backbone: str, kind: str, cfg: RunConfig | None = None) -> Artifact:
        """The ``kind`` (text | llm | ur4rec) augmented reranker of ``backbone``."""
        own, cfg, a = cfg is None or cfg is self.cfg, cfg or self.cfg, self.arts
        base = self.base(backbone, cfg) if kind == AUG_UR4REC else None
        retriever = (
            retriever_stage(self.store, cfg, a["dataset"], a["samples"], a["ur4rec_texts"], base)
            if kind == AUG_UR4REC
            else None
        )
        if own and retriever is not None:
            a[f"retriever_{backbone}"] = retriever
        return reranker_stage(
            self.store, cfg, a["samples"], backbone, kind, texts=a["ur4rec_texts"], retriever=retriever, base=base
        )

    def rankings(self, cfg: RunConfig | None = None, split_name: str = "test") -> dict[str, np.ndarray]:
        """``row name -> (N, C) scores`` of the evaluated ``split_name`` lists: Base and UR4Rec per backbone."""
        cfg = cfg or self.cfg
        out: dict[str, np.ndarray] = {}
        for b in cfg.reranker.backbones:
            title = BACKBONE_TITLES[b]
            base = self.base(b, cfg)
            ur = self.augmented(b, AUG_UR4REC, cfg)
            self.arts[f"rerank_{b}"], self.arts[f"ur4rec_{b}"] = base, ur
            out[f"{title} Base"] = np.load(base.path / f"scores_{split_name}.npy")
            out[f"{title} + UR4Rec"] = np.load(ur.path / f"scores_{split_name}.npy")
        return out

    @classmethod
    def list_scorer(cls, run) -> ListScorer:
        return UR4RecListScorer(run)

    def pairs(self, names: list[str]) -> list[tuple[str, str]]:
        """Each backbone's UR4Rec row against its Base row."""
        return [(n, n.replace(" + UR4Rec", " Base")) for n in names if n.endswith(" + UR4Rec")]

    def predict(
        self,
        adapter: Artifact | None = None,
        cfg: RunConfig | None = None,
        split_name: str = "test",
        name: str = "scores",
    ) -> tuple[pa.Table, Artifact]:
        """The first backbone's UR4Rec scores of the evaluated ``split_name`` lists: ``(predictions, artifact)``,
        predictions = ``sample_id, user_id, item_id, candidates, target_index, scores`` (list<float32>)."""
        cfg = cfg or self.cfg
        art = self.augmented(cfg.reranker.backbones[0], AUG_UR4REC, cfg)
        lists = eval_lists(self.samples(), cfg, split_name)
        scores = np.load(art.path / f"scores_{split_name}.npy")
        return lists_table(lists, scores), art


def lists_table(lists: Lists, scores: np.ndarray) -> pa.Table:
    c = lists.candidates.shape[1]
    fixed = lambda x, t: pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1), t), c)
    return pa.table(
        {
            "sample_id": lists.sample_id,
            "user_id": lists.users,
            "item_id": lists.targets,
            "candidates": fixed(lists.candidates, pa.int64()),
            "target_index": lists.target_index,
            "scores": fixed(scores.astype(np.float32), pa.float32()),
        }
    )


class UR4RecListScorer(ListScorer):
    """A finished run's UR4Rec reranker (its first backbone) for one list at a time: the user's last
    ``history_len`` positives, the frozen retriever's e_aug of each candidate, the augmented backbone's scores.
    Equal to the offline scores of the same (history, list) up to float rounding."""

    def __init__(self, run) -> None:
        from ..data.lists import PositiveSequences
        from ..training.rerank import RerankScorer
        from ..training.ur4rec import load_retriever

        cfg, arts = run.cfg, run.arts
        b = cfg.reranker.backbones[0]
        missing = [k for k in (f"ur4rec_{b}", f"rerank_{b}", f"retriever_{b}", "ur4rec_texts") if k not in arts]
        if missing:
            raise FileNotFoundError(f"{run.run_dir}: run.json names no {missing} artifacts; rerun `ragrec run`")
        self.cfg, self.backbone = cfg, b
        self.history_len = cfg.data.rerank.history_len
        self.scorer = RerankScorer(arts[f"ur4rec_{b}"].path / "model")
        user_t, item_t = load_texts(arts["ur4rec_texts"], "llm")
        self.user_text, self.item_text = user_t, item_t
        self.item_repr = base_item_embeddings(arts[f"rerank_{b}"])
        self.retriever = load_retriever(arts[f"retriever_{b}"].path / "model")
        self.n_users, self.n_items = user_t.shape[0], item_t.shape[0]
        self.positives = PositiveSequences(arts["samples"].read_table("samples"), self.n_users)

    def score(self, user_id: int, item_ids, as_of: int | None = None, history=None) -> np.ndarray:
        from ..data.lists import left_padded
        from ..training.ur4rec import compute_augment

        if history is None:
            history = self.positives.history(int(user_id), self.history_len, as_of)
        else:
            history = left_padded(pa.array([list(history)], pa.list_(pa.int64())), self.history_len)
        cands = np.asarray(item_ids, dtype=np.int64)[None, :]
        users = np.array([int(user_id)], dtype=np.int64)
        aug = compute_augment(
            self.retriever,
            self.user_text,
            self.item_text,
            self.item_repr,
            users,
            history,
            cands,
            m=self.cfg.ur4rec.aggr_items,
            dtype=np.float32,
        )
        return self.scorer(history, cands, aug=aug, users=users)[0]
