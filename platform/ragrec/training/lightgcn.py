"""Ray Train loop for LightGCN collaborative embeddings (RALLRec step 3).

``train_loop(config)`` runs standalone or as a ``TorchTrainer`` worker; :func:`train_lightgcn` is
the public entry point. Outputs in ``out_dir``: ``item_emb.npy`` (I, dim) float32,
``user_emb.npy`` (U, dim) float32, ``history.json`` (per-epoch loss / Recall@k / seconds).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel

from ragrec.config import LightGCNConfig
from ragrec.models.lightgcn import (
    bipartite_edge_index,
    bpr_step,
    build_model,
    normalized_adjacency,
    recall_at_k,
    sample_bpr_batch,
    unique_pairs,
    validate_interactions,
)
from ragrec.training import ray_train as rt

EVAL_K = 20


@dataclass
class LightGCNResult:
    item_emb: np.ndarray  # (num_items, dim) float32
    user_emb: np.ndarray  # (num_users, dim) float32
    history: list[dict]  # one dict per epoch: epoch, loss, seconds[, recall@20]


def train_loop(config: dict) -> list[dict]:
    """Train LightGCN with BPR. ``config`` keys:

    ``user_ids``, ``item_ids`` (E,) int arrays of training interactions; ``num_users``,
    ``num_items``; ``cfg`` (LightGCNConfig as dict); ``seed``; ``out_dir``; optional
    ``eval_users``, ``eval_items`` (held-out pairs for Recall@20 each epoch), ``checkpoint_dir``,
    ``report_every`` (see :class:`ray_train.EpochLoop`).
    Returns the per-epoch history (rank 0's under Ray).
    """
    cfg = LightGCNConfig.model_validate(config["cfg"])
    num_users, num_items = int(config["num_users"]), int(config["num_items"])
    seed, rank, _, dev = rt.worker_setup(config)  # same init on every rank (DDP also broadcasts rank 0's weights)

    users = torch.as_tensor(config["user_ids"], dtype=torch.long, device=dev)
    items = torch.as_tensor(config["item_ids"], dtype=torch.long, device=dev)
    adj = normalized_adjacency(bipartite_edge_index(users, items, num_users), num_users + num_items)
    pos_label_index = torch.stack([users, items + num_users])  # (2, E)

    model = rt.prepare_model(build_model(num_users, num_items, cfg.dim, cfg.num_layers), dev)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    loop = rt.EpochLoop("lightgcn", config, model, optimizer, cfg.epochs)
    neg_gen = torch.Generator(device=dev).manual_seed(seed * 7919 + rank)

    def step(idx: torch.Tensor) -> tuple[torch.Tensor, int]:
        label_index = sample_bpr_batch(pos_label_index[:, idx.to(dev)], num_users, num_items, neg_gen)
        return bpr_step(model, adj, label_index, cfg.weight_decay), idx.numel()

    return train_graph_epochs(loop, step, users.numel(), cfg.batch_size, seed, adj, users, items, num_users)


def train_graph_epochs(
    loop: rt.EpochLoop,
    step: Callable[[torch.Tensor], tuple[torch.Tensor, int]],
    num_rows: int,
    batch_size: int,
    seed: int,
    adj: torch.Tensor,
    users: torch.Tensor,
    items: torch.Tensor,
    num_users: int,
    write: Callable[[Path], None] | None = None,
    balanced: bool = False,
) -> list[dict]:
    """The epochs and outputs of a BPR graph ``train_loop`` once its ``loop`` and ``step`` exist.

    Each epoch is one :meth:`~ray_train.EpochLoop.train_batches` pass of ``step`` over this rank's shuffled
    batches of ``num_rows`` rows (``balanced``: see :func:`~ray_train.epoch_batches`), then
    :func:`recall_evaluator` on the graph ``adj`` (train edges ``users`` / ``items``). The propagated
    embeddings and the history are published (:func:`write_embeddings`) with what ``write(out)`` adds.
    Returns the history.
    """
    model, rank, world = loop.model, rt.world_rank(), rt.world_size()

    def train_epoch(epoch: int) -> dict:
        batches = rt.epoch_batches(
            num_rows, batch_size, seed=seed, epoch=epoch, rank=rank, world_size=world, balanced=balanced
        )
        return {"loss": loop.train_batches(epoch, batches, step)}

    history = loop.run(train_epoch, recall_evaluator(loop.config, model, adj, users, items, num_users))
    user_emb, item_emb = split_embeddings(rt.unwrap(model), adj, num_users)

    def write_outputs(out: Path) -> None:
        write_embeddings(out, user_emb, item_emb, history)
        if write is not None:
            write(out)

    loop.publish(write_outputs)
    return history


def recall_evaluator(
    config: dict, model, adj: torch.Tensor, users: torch.Tensor, items: torch.Tensor, num_users: int
) -> Callable[[int], dict]:
    """The ``evaluate(epoch)`` of a BPR graph loop (:meth:`ray_train.EpochLoop.run`): Recall@EVAL_K of
    ``config``'s ``eval_users`` / ``eval_items`` (full ranking, the train edges ``users`` / ``items`` masked);
    ``{}`` every epoch when the config has none."""
    if config.get("eval_users") is None:
        return lambda epoch: {}
    dev = users.device
    eval_users = torch.as_tensor(config["eval_users"], dtype=torch.long, device=dev)
    eval_items = torch.as_tensor(config["eval_items"], dtype=torch.long, device=dev)

    def evaluate(epoch: int) -> dict:
        user_emb, item_emb = split_embeddings(rt.unwrap(model), adj, num_users)
        return {f"recall@{EVAL_K}": recall_at_k(user_emb, item_emb, users, items, eval_users, eval_items, EVAL_K)}

    return evaluate


def write_embeddings(out: Path, user_emb: torch.Tensor, item_emb: torch.Tensor, history: list[dict]) -> None:
    """``user_emb.npy`` (U, d) and ``item_emb.npy`` (I, d) float32 and ``history.json`` into ``out``."""
    np.save(out / "item_emb.npy", item_emb.cpu().numpy().astype(np.float32))
    np.save(out / "user_emb.npy", user_emb.cpu().numpy().astype(np.float32))
    (out / "history.json").write_text(json.dumps(history, indent=1))


@torch.no_grad()
def split_embeddings(model, adj: torch.Tensor, num_users: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Propagated node embeddings split into users (U, d) and items (I, d)."""
    was_training = model.training
    model.eval()
    emb = model.get_embedding(adj)
    model.train(was_training)
    return emb[:num_users], emb[num_users:]


def train_lightgcn(
    user_ids: np.ndarray,
    item_ids: np.ndarray,
    num_users: int,
    num_items: int,
    cfg: LightGCNConfig,
    *,
    eval_pairs: tuple[np.ndarray, np.ndarray] | None = None,
    ratings: np.ndarray | None = None,
    opts: rt.TrainOptions,
) -> LightGCNResult:
    """Train LightGCN on train interactions (E,) and return item (I, dim) / user (U, dim) embeddings.

    Duplicate pairs are merged. With ``ratings`` and ``cfg.positive_threshold`` set, only pairs with
    rating > threshold become edges. ``eval_pairs=(users, items)`` adds Recall@20 per epoch (full
    ranking, training items masked). ``opts``: where it runs, seed, ``out_dir`` (:class:`TrainOptions`).
    """
    u, i = validate_interactions(user_ids, item_ids, num_users, num_items, "lightgcn train interactions")
    if cfg.positive_threshold is not None:
        if ratings is None:
            raise ValueError(
                f"lightgcn.positive_threshold={cfg.positive_threshold} needs the ratings array; "
                "pass ratings= or set positive_threshold to null"
            )
        keep = np.asarray(ratings) > cfg.positive_threshold
        u, i = u[keep], i[keep]
        if len(u) == 0:
            raise ValueError(f"lightgcn: no interaction has rating > positive_threshold={cfg.positive_threshold}")
    u, i = unique_pairs(u, i, num_items)
    history, out = run_graph_loop(train_loop, "lightgcn", u, i, num_users, num_items, cfg, eval_pairs, opts)
    return LightGCNResult(
        item_emb=np.load(out / "item_emb.npy"), user_emb=np.load(out / "user_emb.npy"), history=history
    )


def run_graph_loop(
    train_loop: Callable[[dict], list[dict]],
    name: str,
    user_ids: np.ndarray,
    item_ids: np.ndarray,
    num_users: int,
    num_items: int,
    cfg: BaseModel,
    eval_pairs: tuple[np.ndarray, np.ndarray] | None,
    opts: rt.TrainOptions,
    **extra,
) -> tuple[list[dict], Path]:
    """:func:`ray_train.run_loop` of a BPR graph ``train_loop`` on the (checked) train edges ``user_ids`` /
    ``item_ids``: its config holds them, the sizes, ``cfg`` (dumped), the ``extra`` entries and
    ``eval_pairs=(users, items)`` (checked; Recall@20 per epoch). Returns ``(history, out_dir)``."""
    config = {
        "user_ids": user_ids,
        "item_ids": item_ids,
        "num_users": int(num_users),
        "num_items": int(num_items),
        "cfg": cfg.model_dump(),
        **extra,
        **opts.loop_config(name),
    }
    if eval_pairs is not None:
        eu, ei = validate_interactions(eval_pairs[0], eval_pairs[1], num_users, num_items, f"{name} eval_pairs")
        config["eval_users"], config["eval_items"] = eu, ei
    history = rt.run_loop(train_loop, config, opts, name=name)
    return history, Path(config["out_dir"])
