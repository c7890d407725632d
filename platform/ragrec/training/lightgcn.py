"""Ray Train loop for LightGCN collaborative embeddings (RALLRec step 3).

``train_loop(config)`` runs standalone or as a ``TorchTrainer`` worker; :func:`train_lightgcn` is
the public entry point. Outputs in ``out_dir``: ``item_emb.npy`` (I, dim) float32,
``user_emb.npy`` (U, dim) float32, ``history.json`` (per-epoch loss / Recall@k / seconds).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

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
    ``eval_users``, ``eval_items`` (held-out pairs for Recall@20 each epoch), ``report_every``
    (epochs between checkpoints, see :func:`ray_train.report_due`).
    Returns the per-epoch history (rank 0's under Ray).
    """
    cfg = LightGCNConfig.model_validate(config["cfg"])
    num_users, num_items = int(config["num_users"]), int(config["num_items"])
    seed = int(config.get("seed", 0))
    rank, world = rt.world_rank(), rt.world_size()
    torch.manual_seed(seed)  # same init on every rank (DDP also broadcasts rank 0's weights)
    dev = rt.torch_device()

    users = torch.as_tensor(config["user_ids"], dtype=torch.long, device=dev)
    items = torch.as_tensor(config["item_ids"], dtype=torch.long, device=dev)
    adj = normalized_adjacency(bipartite_edge_index(users, items, num_users), num_users + num_items)
    pos_label_index = torch.stack([users, items + num_users])  # (2, E)
    has_eval = config.get("eval_users") is not None
    if has_eval:
        eval_users = torch.as_tensor(config["eval_users"], dtype=torch.long, device=dev)
        eval_items = torch.as_tensor(config["eval_items"], dtype=torch.long, device=dev)

    model = rt.prepare_model(build_model(num_users, num_items, cfg.dim, cfg.num_layers), dev)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    start_epoch, history = 0, []
    state = rt.load_state()
    if state is not None:
        rt.unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, history = state["epoch"] + 1, state["history"]
    neg_gen = torch.Generator(device=dev).manual_seed(seed * 7919 + rank)

    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        model.train()
        batches = rt.epoch_batches(users.numel(), cfg.batch_size, seed=seed, epoch=epoch, rank=rank, world_size=world)
        total, count = 0.0, 0
        for idx in tqdm(batches, desc=f"lightgcn epoch {epoch}", leave=False, disable=rt.progress_disabled()):
            label_index = sample_bpr_batch(pos_label_index[:, idx.to(dev)], num_users, num_items, neg_gen)
            optimizer.zero_grad()
            loss = bpr_step(model, adj, label_index, cfg.weight_decay)
            loss.backward()
            optimizer.step()
            total += loss.item() * idx.numel()
            count += idx.numel()
        row = {"epoch": epoch, "loss": total / max(count, 1), "seconds": time.perf_counter() - t0}
        if has_eval:
            user_emb, item_emb = _split_embeddings(rt.unwrap(model), adj, num_users)
            row[f"recall@{EVAL_K}"] = recall_at_k(user_emb, item_emb, users, items, eval_users, eval_items, EVAL_K)
        history.append(row)
        rt.checkpoint_epoch(row, model, optimizer, epoch, cfg.epochs, history, config.get("report_every"))

    user_emb, item_emb = _split_embeddings(rt.unwrap(model), adj, num_users)

    def write(out: Path) -> None:
        np.save(out / "item_emb.npy", item_emb.cpu().numpy().astype(np.float32))
        np.save(out / "user_emb.npy", user_emb.cpu().numpy().astype(np.float32))
        (out / "history.json").write_text(json.dumps(history, indent=1))

    final = history[-1] if history else {"epoch": -1}
    rt.publish(config, final, write, state=None)
    return history


@torch.no_grad()
def _split_embeddings(model, adj: torch.Tensor, num_users: int) -> tuple[torch.Tensor, torch.Tensor]:
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
    use_ray: bool = True,
    seed: int = 0,
    out_dir: str | Path,
    num_workers: int = 1,
    use_gpu: bool = False,
    storage_path: str | None = None,
) -> LightGCNResult:
    """Train LightGCN on train interactions (E,) and return item (I, dim) / user (U, dim) embeddings.

    Duplicate pairs are merged. With ``ratings`` and ``cfg.positive_threshold`` set, only pairs with
    rating > threshold become edges. ``eval_pairs=(users, items)`` adds Recall@20 per epoch (full
    ranking, training items masked). ``use_ray`` runs the loop under ``TorchTrainer`` with
    ``num_workers`` workers (Ray must be initialised), else in this process.
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
    config = {
        "user_ids": u,
        "item_ids": i,
        "num_users": int(num_users),
        "num_items": int(num_items),
        "cfg": cfg.model_dump(),
        "seed": int(seed),
        "out_dir": str(out_dir),
    }
    if eval_pairs is not None:
        eu, ei = validate_interactions(eval_pairs[0], eval_pairs[1], num_users, num_items, "lightgcn eval_pairs")
        config["eval_users"], config["eval_items"] = eu, ei
    history = rt.run_loop(
        train_loop,
        config,
        use_ray=use_ray,
        name="lightgcn",
        num_workers=num_workers,
        use_gpu=use_gpu,
        storage_path=storage_path,
    )
    out = Path(out_dir)
    return LightGCNResult(
        item_emb=np.load(out / "item_emb.npy"), user_emb=np.load(out / "user_emb.npy"), history=history
    )
