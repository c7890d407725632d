"""Ray Train loop for the RALLRec alignment projector (Eq. 5, 6).

Outputs in ``out_dir``: ``ssl_emb.npy`` (n, d_colla) float32 = MLP(e_text), ``projector.pt``
(state dict), ``history.json`` (per-epoch loss, alignment top-1, seconds).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ragrec.config import ProjectorConfig
from ragrec.models.projector import Projector, alignment_top1, symmetric_info_nce
from ragrec.training import ray_train as rt

EVAL_ROWS = 2048
"""Alignment top-1 is measured among the first EVAL_ROWS items (cost O(EVAL_ROWS^2))."""


@dataclass
class ProjectorResult:
    ssl_emb: np.ndarray  # (n, d_colla) float32
    history: list[dict]  # per epoch: epoch, loss, align_top1, seconds


def train_loop(config: dict) -> list[dict]:
    """Train the projector. ``config`` keys: ``text_emb`` (n, d_text), ``colla_emb`` (n, d_colla)
    float arrays, ``cfg`` (ProjectorConfig as dict), ``seed``, ``out_dir``, optional ``checkpoint_dir``,
    ``report_every`` (see :class:`ray_train.EpochLoop`). Returns the history."""
    cfg = ProjectorConfig.model_validate(config["cfg"])
    seed = int(config.get("seed", 0))
    rank, world = rt.world_rank(), rt.world_size()
    dev = rt.torch_device()
    text = torch.as_tensor(np.asarray(config["text_emb"], dtype=np.float32), device=dev)
    colla = torch.as_tensor(np.asarray(config["colla_emb"], dtype=np.float32), device=dev)  # fixed, no grad
    n = text.size(0)
    torch.manual_seed(seed)
    model = rt.prepare_model(Projector(text.size(1), cfg.hidden_dim, colla.size(1)), dev)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    loop = rt.EpochLoop("projector", config, model, optimizer, cfg.epochs)
    n_eval = min(n, EVAL_ROWS)

    def step(idx: torch.Tensor) -> tuple[torch.Tensor, int] | None:
        if idx.numel() < 2:  # a 1-row batch has no negatives
            return None
        idx = idx.to(dev)
        return symmetric_info_nce(model(text[idx]), colla[idx], cfg.temperature), idx.numel()

    def train_epoch(epoch: int) -> dict:
        batches = rt.epoch_batches(n, cfg.batch_size, seed=seed, epoch=epoch, rank=rank, world_size=world)
        loss = loop.train_batches(epoch, batches, step)
        model.eval()
        with torch.no_grad():
            return {"loss": loss, "align_top1": alignment_top1(model(text[:n_eval]), colla[:n_eval])}

    history = loop.run(train_epoch)
    model.eval()
    with torch.no_grad():
        ssl = torch.cat([model(chunk) for chunk in text.split(8192)]).cpu().numpy().astype(np.float32)

    def write(out: Path) -> None:
        np.save(out / "ssl_emb.npy", ssl)
        torch.save(rt.unwrap(model).state_dict(), out / "projector.pt")
        (out / "history.json").write_text(json.dumps(history, indent=1))

    loop.publish(write)
    return history


def train_projector(
    text_emb: np.ndarray,
    colla_emb: np.ndarray,
    cfg: ProjectorConfig,
    *,
    opts: rt.TrainOptions,
) -> ProjectorResult:
    """Align text embeddings (n, d_text) to fixed collaborative embeddings (n, d_colla), row i = item i.

    Returns ``e_ssl = MLP(e_text)`` (n, d_colla) float32 and the per-epoch history. ``opts``: where it
    runs, seed, ``out_dir`` (:class:`TrainOptions`).
    """
    text = np.asarray(text_emb)
    colla = np.asarray(colla_emb)
    if text.ndim != 2 or colla.ndim != 2 or len(text) != len(colla):
        raise ValueError(
            f"train_projector: text_emb and colla_emb must be 2-d with one row per item each, got shapes "
            f"{text.shape} and {colla.shape}"
        )
    if len(text) < 2:
        raise ValueError(f"train_projector: need at least 2 items for in-batch negatives, got {len(text)}")
    for name, arr in (("text_emb", text), ("colla_emb", colla)):
        if not np.isfinite(arr).all():
            bad = int(np.flatnonzero(~np.isfinite(arr).all(axis=1))[0])
            raise ValueError(f"train_projector: {name} row {bad} has NaN/inf values; fix the upstream embedding")
    config = {
        "text_emb": text.astype(np.float32, copy=False),
        "colla_emb": colla.astype(np.float32, copy=False),
        "cfg": cfg.model_dump(),
        **opts.loop_config("projector"),
    }
    history = rt.run_loop(train_loop, config, opts, name="projector")
    return ProjectorResult(ssl_emb=np.load(Path(config["out_dir"]) / "ssl_emb.npy"), history=history)
