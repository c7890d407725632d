"""The LightGCN stage: collaborative user / item embeddings trained on a training-interactions table.

Shared by the methods that need them: RALLRec's step 3 (``lightgcn``) and UR4Rec's initial ranker
(``ranker``, whose inner products pick the hard negatives of ``data.rerank.negatives: ranker``). The method
names the stage, its spec and its inputs (the cache key) and supplies the graph; this trains
:func:`~ragrec.training.lightgcn.train_lightgcn` under Ray Train (``TrainOptions.for_stage``) and writes
``item_emb.npy`` (I, dim) float32, ``user_emb.npy`` (U, dim) float32, ``history.json`` (per-epoch loss
[/ Recall@20]) and the trainer's folder ``train/``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..artifacts import Artifact, ArtifactStore
from ..config import LightGCNConfig, RunConfig


@dataclass
class LightGCNGraph:
    """What LightGCN trains on.

    Attributes:
        train: ``(E,)`` training interactions with ``user_id``, ``item_id`` and ``rating`` columns (the
            rating only matters with ``lightgcn.positive_threshold``).
        num_users, num_items: sizes of the dense id spaces (rows of the embedding tables).
        eval_pairs: optional held-out ``(users, items)`` positives for the per-epoch Recall@20.
    """

    train: pa.Table
    num_users: int
    num_items: int
    eval_pairs: tuple[np.ndarray, np.ndarray] | None = None


def train_lightgcn_into(art: Artifact, cfg: RunConfig, lg_cfg: LightGCNConfig, graph: LightGCNGraph) -> dict:
    """Train LightGCN on ``graph`` and write its outputs into ``art.staging``; the manifest fields."""
    from ..training.lightgcn import train_lightgcn
    from ..training.ray_train import TrainOptions

    inter = graph.train
    res = train_lightgcn(
        inter.column("user_id").to_numpy(),
        inter.column("item_id").to_numpy(),
        graph.num_users,
        graph.num_items,
        lg_cfg,
        ratings=inter.column("rating").to_numpy(),
        eval_pairs=graph.eval_pairs,
        opts=TrainOptions.for_stage(cfg, art, out="train"),
    )
    np.save(art.staging / "item_emb.npy", res.item_emb.astype(np.float32))
    np.save(art.staging / "user_emb.npy", res.user_emb.astype(np.float32))
    art.write_json(res.history, "history")
    return {"rows": int(res.item_emb.shape[0]), "edges": inter.num_rows}


def lightgcn_embeddings_stage(
    store: ArtifactStore,
    cfg: RunConfig,
    name: str,
    spec: dict,
    inputs: list[Artifact],
    lg_cfg: LightGCNConfig,
    graph: Callable[[], LightGCNGraph],
    version: str = "1",
) -> Artifact:
    """The cached LightGCN stage ``name``: key = (``name``, ``spec``, ``inputs``, ``version``), all the
    caller's; ``graph()`` builds the training graph, called only when the stage runs (not when cached)."""
    return store.run(name, spec, inputs, lambda art: train_lightgcn_into(art, cfg, lg_cfg, graph()), version=version)


def rerank_ranker_config(cfg: RunConfig) -> LightGCNConfig:
    """The LightGCN settings of the ``rerank`` protocol's initial ranker (``data.rerank.ranker``)."""
    r = cfg.data.rerank.ranker
    return LightGCNConfig(dim=r.dim, epochs=r.epochs, lr=r.lr)


def rerank_ranker_stage(store: ArtifactStore, cfg: RunConfig, ds_art: Artifact) -> Artifact:
    """``ranker``: the initial ranker of ``data.rerank.negatives: ranker``, LightGCN on the protocol's
    training positives (:func:`~ragrec.data.rerank.train_positive_interactions`): no valid / test positive
    is an edge. :func:`~ragrec.stages.data.samples_stage` takes it as ``ranker=``."""
    lg_cfg = rerank_ranker_config(cfg)
    d = cfg.data
    spec = {
        "lightgcn": lg_cfg.model_dump(),
        "positives": {"label_threshold": d.label_threshold, "split": list(d.split), "kcore": d.rerank.kcore},
        "seed": cfg.seed,
    }

    def graph() -> LightGCNGraph:
        from ..data.rerank import train_positive_interactions

        inter = ds_art.read_table("interactions")
        n_items = ds_art.manifest()["items"]
        n_users = ds_art.manifest().get("users") or int(pc.max(inter.column("user_id")).as_py()) + 1
        return LightGCNGraph(train_positive_interactions(inter, d, num_items=n_items), n_users, n_items)

    return lightgcn_embeddings_stage(store, cfg, "ranker", spec, [ds_art], lg_cfg, graph)
