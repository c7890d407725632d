"""SCoRe step 2: the CollAborative Retriever (CAR), a sentence-transformers bi-encoder tuned with InfoNCE.

Paper §3.2: ``L_CAR = -sum_{u_i in N^c(u_t)} log g(e_t, e_i) / (g(e_t, e_i) + sum_{j not in N^c(u_t)} g(e_t, e_j))``
with ``g(a, b) = exp(cos(a, b) / tau)`` and ``e = RetrieverEnc(d(H(u)))`` the encoding of a user's
behaviour document. Here, per epoch, every anchor user gets one positive sampled uniformly from its
Kc collaborative neighbours (SASRec top-Kc); the negatives are the other anchors' positives in the
mini-batch, except those that are the anchor itself or one of its neighbours (no false negatives).

``train_loop(config)`` runs standalone or as a ``TorchTrainer`` worker (see :mod:`ray_train`);
:func:`train_car` is the public entry point. Outputs in ``out_dir``: ``model/`` (a
sentence-transformers folder: ``SentenceTransformer(out_dir / "model")`` loads it) and
``history.json`` (per-epoch loss / anchors / seconds).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ragrec.config import CARConfig
from ragrec.training import ray_train as rt

MODEL_SUBDIR = "model"


@dataclass
class CARResult:
    model_dir: Path  # sentence-transformers folder of the tuned encoder
    history: list[dict]  # one dict per epoch: epoch, loss, anchors, seconds


# ----------------------------------------------------------------------------- shared helpers


def load_sentence_transformer(
    name_or_dir: str | Path, device: str | torch.device = "cpu", max_tokens: int | None = None
):
    """A ``SentenceTransformer`` from a registry name (``minilm-l6``) or a local folder, offline."""
    from sentence_transformers import SentenceTransformer

    from ragrec.llm.registry import model_path

    path = Path(name_or_dir)
    source = str(path) if path.is_dir() else model_path(str(name_or_dir))
    model = SentenceTransformer(source, device=str(device), local_files_only=True)
    if max_tokens is not None:
        model.max_seq_length = int(max_tokens)
    return model


def st_features(model, texts: Sequence[str], device: torch.device) -> dict:
    """Tokenised inputs of a ``SentenceTransformer`` (truncated to its ``max_seq_length``) on ``device``."""
    prep = getattr(model, "preprocess", None) or model.tokenize  # ST >= 6: preprocess; older: tokenize
    feats = prep(list(texts))
    return {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in feats.items()}


def sample_positives(neighbours: np.ndarray, anchors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One uniformly drawn usable neighbour per anchor: (A,) int64.

    ``neighbours`` (U, kc) int64 with -1 (or an unusable user, already replaced by -1) for none;
    every anchor must have at least one entry >= 0.
    """
    rows = neighbours[anchors]  # (A, kc)
    usable = rows >= 0
    count = usable.sum(axis=1)  # (A,) >= 1
    pick = (rng.random(len(anchors)) * count).astype(np.int64)  # (A,) in 0..count-1
    # position of the pick-th usable entry: usable entries first (stable), then index
    order = np.argsort(~usable, axis=1, kind="stable")
    cols = np.take_along_axis(order, pick[:, None], axis=1)[:, 0]
    return rows[np.arange(len(anchors)), cols]


def infonce_logits(
    anchor_emb: torch.Tensor, pos_emb: torch.Tensor, temperature: float, mask: torch.Tensor
) -> torch.Tensor:
    """(B, B) cosine/τ logits of anchors (B, d) vs in-batch positives (B, d); ``mask`` (B, B) True
    entries (false negatives) are set to -inf. The diagonal holds each anchor's own positive."""
    logits = F.normalize(anchor_emb, dim=-1) @ F.normalize(pos_emb, dim=-1).T / temperature
    return logits.masked_fill(mask, float("-inf"))


def false_negative_mask(anchors: np.ndarray, positives: np.ndarray, neighbours: np.ndarray) -> np.ndarray:
    """(B, B) bool: True where in-batch positive j must not be a negative for anchor i (j != i and
    positive j is anchor i itself, one of anchor i's neighbours, or the same user as positive i)."""
    pos = positives[None, :]  # (1, B)
    bad = (pos == anchors[:, None]) | (pos == positives[:, None])
    bad |= (neighbours[anchors][:, :, None] == pos[:, None, :]).any(axis=1)  # (B, kc, B) -> (B, B)
    np.fill_diagonal(bad, False)
    return bad


# ----------------------------------------------------------------------------- the loop


def train_loop(config: dict) -> list[dict]:
    """Tune the encoder with InfoNCE. ``config`` keys:

    ``docs`` list[str] (U,) user documents; ``neighbours`` (U, kc) int64 with -1 for none, already
    restricted to usable users; ``anchors`` (A,) int64 users with a document and >= 1 neighbour;
    ``cfg`` (CARConfig as dict); ``seed``; ``out_dir``; optional ``checkpoint_dir``, ``report_every`` (see
    :class:`ray_train.EpochLoop`).
    Returns the per-epoch history (rank 0's under Ray).
    """
    cfg = CARConfig.model_validate(config["cfg"])
    docs: list[str] = list(config["docs"])
    neighbours = np.asarray(config["neighbours"], dtype=np.int64)
    anchors = np.asarray(config["anchors"], dtype=np.int64)
    seed, rank, world, dev = rt.worker_setup(config)

    st = load_sentence_transformer(cfg.encoder, device="cpu", max_tokens=cfg.max_tokens)
    model = rt.prepare_model(st, dev)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    loop = rt.EpochLoop("car", config, model, optimizer, cfg.epochs)

    def train_epoch(epoch: int) -> dict:
        # the same positives on every rank: the draw depends on (seed, epoch) only
        positives = sample_positives(neighbours, anchors, np.random.default_rng([seed, epoch]))
        batches = rt.epoch_batches(len(anchors), cfg.batch_size, seed=seed, epoch=epoch, rank=rank, world_size=world)

        def step(idx: torch.Tensor) -> tuple[torch.Tensor, int]:
            sel = idx.numpy()
            a, p = anchors[sel], positives[sel]
            # one forward over the batch's distinct users (DDP allows one forward per backward)
            users, inverse = np.unique(np.concatenate([a, p]), return_inverse=True)
            emb = model(st_features(rt.unwrap(model), [docs[u] for u in users], dev))["sentence_embedding"]
            inv = torch.as_tensor(inverse, device=dev)
            mask = torch.as_tensor(false_negative_mask(a, p, neighbours), device=dev)
            logits = infonce_logits(emb[inv[: len(a)]], emb[inv[len(a) :]], cfg.temperature, mask)
            return F.cross_entropy(logits, torch.arange(len(a), device=dev)), len(a)

        return {"loss": loop.train_batches(epoch, batches, step), "anchors": len(anchors)}

    history = loop.run(train_epoch)

    def write(out: Path) -> None:
        rt.unwrap(model).save(str(out / MODEL_SUBDIR))
        (out / "history.json").write_text(json.dumps(history, indent=1))

    loop.publish(write)
    return history


# ----------------------------------------------------------------------------- public API


def usable_anchors(
    docs: Sequence[str], neighbours: np.ndarray, valid: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(neighbours', anchors)``: ``neighbours`` (U, kc) with every unusable entry (out of range,
    -1, a user without a document, the user itself) set to -1, and the (A,) users that have a
    document and at least one usable neighbour."""
    nb = np.asarray(neighbours)
    num_users = len(docs)
    if nb.ndim != 2 or nb.shape[0] != num_users:
        raise ValueError(f"car: neighbours must be (U, kc) with U={num_users} rows like docs, got shape {nb.shape}")
    if not np.issubdtype(nb.dtype, np.integer):
        raise ValueError(f"car: neighbours must be integer user ids (-1 for none), got dtype {nb.dtype}")
    nb = nb.astype(np.int64)
    has_doc = np.fromiter((bool(d and d.strip()) for d in docs), dtype=bool, count=num_users)
    if valid is not None:
        valid = np.asarray(valid, dtype=bool)
        if valid.shape != (num_users,):
            raise ValueError(f"car: valid must have shape ({num_users},), got {valid.shape}")
        has_doc &= valid
    if ((nb < -1) | (nb >= num_users)).any():
        raise ValueError(f"car: neighbours hold ids outside -1..{num_users - 1}")
    usable = (nb >= 0) & has_doc[np.clip(nb, 0, None)] & (nb != np.arange(num_users)[:, None])
    nb = np.where(usable, nb, -1)
    anchors = np.flatnonzero(has_doc & usable.any(axis=1)).astype(np.int64)
    return nb, anchors


def train_car(
    docs: list[str],
    neighbours: np.ndarray,
    cfg: CARConfig,
    *,
    valid: np.ndarray | None = None,
    opts: rt.TrainOptions,
) -> CARResult:
    """Tune ``cfg.encoder`` so that users' documents land near their collaborative neighbours'.

    Args:
        docs: (U,) behaviour documents ``d(H(u))``; empty strings for users without one.
        neighbours: (U, kc) int64 top-Kc SASRec neighbours, -1 for none.
        valid: (U,) bool, False for users to leave out entirely (neither anchor nor positive).
        opts: where it runs, seed, ``out_dir`` (:class:`~ragrec.training.ray_train.TrainOptions`).

    Users with no document or no usable neighbour are skipped as anchors. Returns the tuned
    model's folder (``out_dir/model``) and the per-epoch history.
    """
    nb, anchors = usable_anchors(docs, neighbours, valid)
    if len(anchors) < 2:
        raise ValueError(
            f"car: only {len(anchors)} user(s) have a document and a usable neighbour; InfoNCE needs at least 2 "
            "(check the SASRec neighbours and the user documents)"
        )
    config = {
        "docs": list(docs),
        "neighbours": nb,
        "anchors": anchors,
        "cfg": cfg.model_dump(),
        **opts.loop_config("car"),
    }
    history = rt.run_loop(train_loop, config, opts, name="car")
    return CARResult(model_dir=Path(config["out_dir"]) / MODEL_SUBDIR, history=history)


def encode_users(
    model_dir_or_name: str | Path,
    docs: Sequence[str],
    batch_size: int = 64,
    *,
    max_tokens: int | None = None,
    device: str = "auto",
) -> np.ndarray:
    """(U, d) float32 L2-normalised embeddings of ``docs`` with a tuned CAR folder or a registry
    encoder (``minilm-l6``: SCoRe-base). ``max_tokens`` None keeps the model's ``max_seq_length``
    (the tuned folder stores ``car.max_tokens``)."""
    from ragrec.runtime import device as pick_device

    model = load_sentence_transformer(model_dir_or_name, device=pick_device(device), max_tokens=max_tokens)
    if len(docs) == 0:
        dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return np.zeros((0, int(dim())), dtype=np.float32)
    emb = model.encode(
        list(docs), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
    )
    return np.ascontiguousarray(emb, dtype=np.float32)
