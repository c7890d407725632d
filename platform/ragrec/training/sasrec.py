"""Ray Train loop for SASRec, SCoRe's collaborative model (CRM), and the neighbours it defines.

``train_loop(config)`` runs standalone or as a ``TorchTrainer`` worker; :func:`train_sasrec` is the
public entry point. Objective: SASRec's BCE on the next item vs one sampled negative per position
(negatives avoid the user's fitting sequence).

Sanity metric (leave-one-out): each user's LAST training item is held out, the model is fitted on
the rest and the held-out item is ranked against ``eval_negatives`` sampled items the user never
interacted with (fixed once per run, so epochs are comparable): NDCG@10 / HR@10 over users with at
least two training interactions. After training, ``user_emb`` is computed from each user's FULL
training sequence (held-out item included); users without any training interaction get a zero
vector (:attr:`SASRecResult.trained_users` is False for them; pass it as ``valid`` to
:func:`collaborative_neighbours`).

Outputs in ``out_dir``: ``user_emb.npy`` (U, dim) float32, ``item_emb.npy`` (I, dim) float32,
``history.json`` (per epoch: loss, seconds, and every ``eval_every`` epochs ndcg@10 / hr@10),
``metrics.json`` (final ``{"ndcg@10", "hr@10", "users_evaluated"}``), ``model.pt`` + ``sasrec.json`` (the
weights and the model's size/config, read by :class:`SASRecScorer` to score items given any history).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ragrec.config import SASRecConfig
from ragrec.models.lightgcn import validate_interactions
from ragrec.models.sasrec import (
    SASRec,
    interaction_keys,
    leave_one_out_metrics,
    pad_sequences,
    sample_negatives,
)
from ragrec.training import ray_train as rt

log = logging.getLogger("ragrec.sasrec")

EVAL_K = 10
MODEL_FILE = "model.pt"
"""The trained weights (state dict) in ``out_dir``; with :data:`META_FILE` they load into :class:`SASRecScorer`."""
META_FILE = "sasrec.json"
_EVAL_CHUNK = 1024  # users per forward pass at evaluation / embedding time


@dataclass
class SASRecResult:
    user_emb: np.ndarray  # (num_users, dim) float32, zeros for users without training data
    item_emb: np.ndarray  # (num_items, dim) float32, row k = item id k
    history: list[dict]  # one dict per epoch: epoch, loss, seconds[, ndcg@10, hr@10]
    metrics: dict  # {"ndcg@10", "hr@10", "users_evaluated"}: final leave-one-out sanity metric

    @property
    def trained_users(self) -> np.ndarray:
        """(U,) bool: users with at least one training interaction (non-zero ``user_emb``)."""
        return np.abs(self.user_emb).sum(1) > 0


def build_model(num_items: int, cfg: SASRecConfig) -> SASRec:
    return SASRec(num_items, cfg.dim, cfg.num_layers, cfg.num_heads, cfg.max_len, cfg.dropout)


def train_loop(config: dict) -> list[dict]:
    """Train SASRec. ``config`` keys:

    ``user_ids``, ``item_ids``, ``timestamps`` (E,) training interactions; ``num_users``,
    ``num_items``; ``cfg`` (SASRecConfig as dict); ``seed``; ``out_dir``; optional ``checkpoint_dir``,
    ``report_every`` (see :class:`ray_train.EpochLoop`) and ``eval_every`` (epochs between
    leave-one-out evaluations in the history, default ``max(1, epochs // 10)``).
    Returns the per-epoch history (rank 0's under Ray).
    """
    cfg = SASRecConfig.model_validate(config["cfg"])
    num_users, num_items = int(config["num_users"]), int(config["num_items"])
    seed, rank, world, dev = rt.worker_setup(config)  # same init on every rank (DDP also broadcasts rank 0's weights)
    L = cfg.max_len

    # (U, L + 2): the last column is the held-out item, columns [:-1] the fitting sequence
    seqs = torch.as_tensor(
        pad_sequences(config["user_ids"], config["item_ids"], config["timestamps"], num_users, L + 2), device=dev
    )
    held = seqs[:, -1] - 1  # 0-based held-out item, -1 for users without data
    fit_seq = seqs[:, :-1]  # (U, L + 1): inputs [:, :-1], next-item targets [:, 1:]
    users_all = torch.arange(num_users, device=dev)
    fit_mask = fit_seq != 0
    fit_keys = interaction_keys(users_all.unsqueeze(1).expand_as(fit_seq)[fit_mask], fit_seq[fit_mask] - 1, num_items)
    all_mask = seqs != 0
    # every training interaction (not only the last L + 2) counts as "interacted" for eval negatives
    all_keys = interaction_keys(
        torch.as_tensor(config["user_ids"], device=dev), torch.as_tensor(config["item_ids"], device=dev), num_items
    )
    train_users = torch.nonzero((fit_seq[:, -2] != 0) & (fit_seq[:, -1] != 0)).squeeze(1)  # >= 1 training pair
    eval_users = torch.nonzero(fit_seq[:, -1] != 0).squeeze(1)  # >= 2 interactions: history + held-out
    if train_users.numel() == 0:
        raise ValueError("sasrec: no user has 3+ training interactions, nothing to learn from the sequences")
    eval_gen = torch.Generator(device=dev).manual_seed(seed * 104_729 + 1)
    eval_negs, eval_ok = sample_negatives(eval_users, cfg.eval_negatives, num_items, all_keys, eval_gen)

    model = rt.prepare_model(build_model(num_items, cfg), dev)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay)
    loop = rt.EpochLoop("sasrec", config, model, optimizer, cfg.epochs)
    neg_gen = torch.Generator(device=dev).manual_seed(seed * 7919 + rank)
    eval_every = int(config.get("eval_every") or max(1, cfg.epochs // 10))

    def evaluate() -> dict:
        return _leave_one_out(rt.unwrap(model), fit_seq[eval_users, 1:], held[eval_users], eval_negs, eval_ok)

    def step(idx: torch.Tensor) -> tuple[torch.Tensor, int]:
        users = train_users[idx.to(dev)]
        batch = fit_seq[users]
        inp, pos = batch[:, :-1], batch[:, 1:]
        valid = (inp != 0) & (pos != 0)
        neg, neg_ok = sample_negatives(users, L, num_items, fit_keys, neg_gen)
        hidden = model(inp)  # through the DDP wrapper: gradient sync
        emb = rt.unwrap(model).item_emb
        pos_logit = (hidden * emb(pos)).sum(-1)
        neg_logit = (hidden * emb(neg + 1)).sum(-1)
        loss_pos = F.binary_cross_entropy_with_logits(pos_logit, torch.ones_like(pos_logit), reduction="none")
        loss_neg = F.binary_cross_entropy_with_logits(neg_logit, torch.zeros_like(neg_logit), reduction="none")
        n_valid = valid.sum().clamp(min=1)
        return ((loss_pos * valid).sum() + (loss_neg * (valid & neg_ok)).sum()) / n_valid, int(n_valid)

    def train_epoch(epoch: int) -> dict:
        batches = rt.epoch_batches(
            train_users.numel(), cfg.batch_size, seed=seed, epoch=epoch, rank=rank, world_size=world
        )
        return {"loss": loop.train_batches(epoch, batches, step)}

    def eval_epoch(epoch: int) -> dict:
        if (epoch + 1) % eval_every != 0 and epoch != cfg.epochs - 1:
            return {}
        m = evaluate()
        return {f"ndcg@{EVAL_K}": m[f"ndcg@{EVAL_K}"], f"hr@{EVAL_K}": m[f"hr@{EVAL_K}"]}

    history = loop.run(train_epoch, eval_epoch)
    core = rt.unwrap(model)
    metrics = evaluate()
    user_emb = torch.zeros(num_users, cfg.dim, device=dev)
    has_data = torch.nonzero(all_mask[:, -1]).squeeze(1)
    user_emb[has_data] = _user_repr(core, seqs[has_data, 2:])  # the full sequence's last L items
    item_emb = core.item_vectors().detach()

    def write(out: Path) -> None:
        np.save(out / "user_emb.npy", user_emb.cpu().numpy().astype(np.float32))
        np.save(out / "item_emb.npy", item_emb.cpu().numpy().astype(np.float32))
        (out / "history.json").write_text(json.dumps(history, indent=1))
        (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
        torch.save({k: v.detach().cpu() for k, v in core.state_dict().items()}, out / MODEL_FILE)
        (out / META_FILE).write_text(json.dumps({"num_items": num_items, "cfg": cfg.model_dump()}))

    loop.publish(write, {**loop.last_row, **metrics})
    return history


@torch.no_grad()
def _user_repr(model: SASRec, seqs: torch.Tensor) -> torch.Tensor:
    """(N, dim) eval-mode representations of (N, L) sequences, in chunks."""
    was_training = model.training
    model.eval()
    out = [model.user_repr(seqs[s : s + _EVAL_CHUNK]) for s in range(0, seqs.size(0), _EVAL_CHUNK)]
    model.train(was_training)
    return torch.cat(out) if out else seqs.new_zeros((0, model.dim), dtype=torch.float32)


@torch.no_grad()
def _leave_one_out(
    model: SASRec, seqs: torch.Tensor, held: torch.Tensor, negs: torch.Tensor, neg_ok: torch.Tensor
) -> dict:
    """Rank each held-out item (N,) against negatives (N, C) given the sequences before it (N, L)."""
    h = _user_repr(model, seqs)
    emb = model.item_vectors()
    pos = (h * emb[held]).sum(-1)
    neg = torch.einsum("nd,ncd->nc", h, emb[negs])
    return leave_one_out_metrics(pos, neg, neg_ok, k=EVAL_K)


def train_sasrec(
    user_ids: np.ndarray,
    item_ids: np.ndarray,
    timestamps: np.ndarray,
    num_users: int,
    num_items: int,
    cfg: SASRecConfig,
    *,
    opts: rt.TrainOptions,
    eval_every: int | None = None,
) -> SASRecResult:
    """Train SASRec on training interactions (E,) and return user (U, dim) / item (I, dim) embeddings.

    Sequences are each user's interactions ordered by timestamp (ties: input order), the most
    recent ``cfg.max_len`` kept. ``opts``: where it runs, seed, ``out_dir`` (:class:`TrainOptions`).
    Logs the leave-one-out sanity metric on ``ragrec.sasrec``.
    """
    u, i = validate_interactions(user_ids, item_ids, num_users, num_items, "sasrec train interactions")
    t = np.asarray(timestamps)
    if t.shape != u.shape:
        raise ValueError(f"sasrec train interactions: timestamps has shape {t.shape}, expected {u.shape}")
    config = {
        "user_ids": u,
        "item_ids": i,
        "timestamps": t.astype(np.int64, copy=False),
        "num_users": int(num_users),
        "num_items": int(num_items),
        "cfg": cfg.model_dump(),
        **opts.loop_config("sasrec"),
        "eval_every": eval_every,
    }
    history = rt.run_loop(train_loop, config, opts, name="sasrec")
    out = Path(config["out_dir"])
    metrics = json.loads((out / "metrics.json").read_text())
    log.info(
        "SASRec leave-one-out (%d negatives): NDCG@%d=%.4f HR@%d=%.4f over %d users",
        cfg.eval_negatives,
        EVAL_K,
        metrics[f"ndcg@{EVAL_K}"],
        EVAL_K,
        metrics[f"hr@{EVAL_K}"],
        metrics["users_evaluated"],
    )
    return SASRecResult(
        user_emb=np.load(out / "user_emb.npy"),
        item_emb=np.load(out / "item_emb.npy"),
        history=history,
        metrics=metrics,
    )


def collaborative_neighbours(
    user_emb: np.ndarray, k: int, *, valid: np.ndarray | None = None, block_elems: int = 1 << 26
) -> np.ndarray:
    """(U, k) int64: each user's top-k other users by dot product ``h_i . h_t``, best first.

    The user itself and users with ``valid[t] == False`` (e.g. no training data: pass
    :attr:`SASRecResult.trained_users`) are never returned. Rows of invalid users are still filled
    (their zero vectors tie with everyone, so those rows are arbitrary valid users). Computed with
    ``torch.topk`` over row blocks of at most ``block_elems`` scores.
    """
    h = torch.as_tensor(np.asarray(user_emb, dtype=np.float32))
    if h.dim() != 2:
        raise ValueError(f"collaborative_neighbours: user_emb must be (U, d), got shape {tuple(h.shape)}")
    n = h.size(0)
    ok = torch.ones(n, dtype=torch.bool) if valid is None else torch.as_tensor(np.asarray(valid, dtype=bool))
    if ok.shape != (n,):
        raise ValueError(f"collaborative_neighbours: valid has shape {tuple(ok.shape)}, expected ({n},)")
    n_valid = int(ok.sum())
    if k < 1 or k > n_valid - 1:
        raise ValueError(
            f"collaborative_neighbours: k={k} needs 1 <= k <= valid users - 1 = {n_valid - 1}; lower k (car.kc)"
        )
    block = max(1, block_elems // max(n, 1))
    out = []
    for s in range(0, n, block):
        scores = h[s : s + block] @ h.T  # (b, U)
        scores[:, ~ok] = float("-inf")
        rows = torch.arange(s, min(s + block, n))
        scores[rows - s, rows] = float("-inf")
        out.append(scores.topk(k, dim=1).indices)
    return torch.cat(out).numpy().astype(np.int64)


class SASRecScorer:
    """A trained SASRec read from ``train_sasrec``'s ``out_dir``: raw scores of target items given histories.

    The score is the model's logit for the next item, ``user_repr(history) . item_emb(target)`` (what
    the BCE objective trains), with the history's most recent ``max_len`` items as the sequence, in
    eval mode.
    """

    def __init__(self, model_dir: str | Path, device: str = "cpu"):
        model_dir = Path(model_dir)
        meta_path = model_dir / META_FILE
        if not (meta_path.exists() and (model_dir / MODEL_FILE).exists()):
            raise FileNotFoundError(
                f"{model_dir}: no {MODEL_FILE} / {META_FILE}; the SASRec was trained before "
                f"weights were saved: retrain it (ragrec run CONFIG --force sasrec)"
            )
        meta = json.loads(meta_path.read_text())
        self.cfg = SASRecConfig.model_validate(meta["cfg"])
        self.num_items = int(meta["num_items"])
        self.model = build_model(self.num_items, self.cfg)
        self.model.load_state_dict(torch.load(model_dir / MODEL_FILE, map_location=device, weights_only=True))
        self.model.to(device).eval()
        self.device = device

    def sequences(self, histories) -> np.ndarray:
        """(N, max_len) int64 left-padded shifted-id sequences of a list<int> array of 0-based item histories
        (oldest first), keeping each history's most recent ``max_len`` items."""
        import pyarrow as pa

        arr = histories.combine_chunks() if isinstance(histories, pa.ChunkedArray) else histories
        if not isinstance(arr, pa.ListArray):
            arr = pa.array(list(histories), pa.list_(pa.int64()))
        offsets = arr.offsets.to_numpy().astype(np.int64)
        values = arr.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
        n, length = len(offsets) - 1, self.cfg.max_len
        if values.size and (values.min() < 0 or values.max() >= self.num_items):
            raise ValueError(f"sasrec: history item ids must lie in [0, {self.num_items})")
        lens = np.diff(offsets)
        row = np.repeat(np.arange(n), lens)
        col = length - lens[row] + (np.arange(values.size) - (offsets[:-1] - offsets[0])[row])
        out = np.zeros((n, length), dtype=np.int64)
        keep = col >= 0
        out[row[keep], col[keep]] = values[keep] + 1
        return out

    @torch.no_grad()
    def __call__(self, histories, items) -> np.ndarray:
        """(N,) float64 scores of ``items`` (N,) 0-based, each given its history (see :meth:`sequences`)."""
        seqs = torch.as_tensor(self.sequences(histories))
        tgt = torch.as_tensor(np.asarray(items, dtype=np.int64))
        if tgt.shape != (seqs.size(0),):
            raise ValueError(f"sasrec: {tgt.numel()} target items for {seqs.size(0)} histories")
        if tgt.numel() and (int(tgt.min()) < 0 or int(tgt.max()) >= self.num_items):
            raise ValueError(f"sasrec: target item ids must lie in [0, {self.num_items})")
        dev, step = self.device, _EVAL_CHUNK
        out = [
            self.model.score(seqs[s : s + step].to(dev), tgt[s : s + step, None].to(dev))[:, 0].cpu()
            for s in range(0, seqs.size(0), step)
        ]
        return torch.cat(out).double().numpy() if out else np.zeros(0)
