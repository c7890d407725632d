"""ER2ALM GNN training (§3.5, Eq. 13-14): BPR on the train graph plus the LLM-augmented pairs, on the shared
:mod:`ray_train` skeleton (standalone or Ray Train via :func:`ray_train.run_loop`).

BPR rows (one positive, one negative each) per epoch:

* every train edge ``(u, i)``: negative = a uniformly random item (as :mod:`ragrec.training.lightgcn`);
* every augmented positive ``(u, i+)`` (an item the LLM picked as liked): negative = a random item;
* every augmented negative ``(u, i-)`` (picked as disliked): positive = a random train item of ``u``, negative =
  ``i-`` (users without train items are skipped).

The augmented pairs are BPR samples only; the propagation graph holds the train edges (as in LLMRec, whose
augmentation ER2ALM follows). Outputs in ``out_dir``: ``user_emb.npy`` (U, dim), ``item_emb.npy`` (I, dim) float32
(propagated), ``model.pt`` (state dict; the side inputs are not in it), ``history.json``, ``meta.json``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from ragrec.config import GNNConfig
from ragrec.models.er2alm_gnn import ER2ALMGNN
from ragrec.models.lightgcn import (
    bipartite_edge_index,
    bpr_step,
    normalized_adjacency,
    sample_bpr_batch,
    unique_pairs,
    validate_interactions,
)
from ragrec.training import ray_train as rt
from ragrec.training.lightgcn import EVAL_K, run_graph_loop, train_graph_epochs


@dataclass
class ER2ALMResult:
    user_emb: np.ndarray  # (num_users, dim) float32
    item_emb: np.ndarray  # (num_items, dim) float32
    history: list[dict]  # per epoch: epoch, loss, seconds[, recall@20]
    out_dir: Path


def _as_pairs(picks, what: str) -> np.ndarray:
    """``{user: [items]}``, ``(users, items)`` arrays or an (n, 2) array -> (n, 2) int64 unique pairs."""
    if picks is None:
        return np.zeros((0, 2), np.int64)
    if isinstance(picks, dict):
        rows = [(int(u), int(i)) for u, items in picks.items() for i in np.atleast_1d(items)]
        arr = np.asarray(rows, dtype=np.int64).reshape(-1, 2)
    elif isinstance(picks, tuple) and len(picks) == 2:
        u, i = np.asarray(picks[0]).reshape(-1), np.asarray(picks[1]).reshape(-1)
        if len(u) != len(i):
            raise ValueError(f"augmented_pairs: {what} users and items differ in length ({len(u)} != {len(i)})")
        arr = np.stack([u, i], axis=1).astype(np.int64)
    else:
        arr = np.asarray(picks, dtype=np.int64)
        if arr.size == 0:
            return np.zeros((0, 2), np.int64)
        if arr.ndim != 2 or arr.shape[1] != 2:
            raise ValueError(f"augmented_pairs: {what} must be a dict, (users, items) or (n, 2), got {arr.shape}")
    return np.unique(arr, axis=0) if len(arr) else arr


def augmented_count(num_edges: int, eta: float) -> int:
    """``ceil(eta * num_edges)``, with ``eta`` taken as the decimal it prints as (0.07 * 100 = 7, not 8)."""
    return math.ceil(Fraction(repr(float(eta))) * int(num_edges))


def augmented_pairs(liked, disliked, num_edges: int, eta: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The extra BPR pairs: exactly ``n = ceil(eta * num_edges)`` of them, positives and negatives together.

    ``liked`` / ``disliked``: the LLM's picks among each user's candidates, as ``{user: [items]}``,
    ``(users, items)`` or (m, 2) arrays (duplicates merged). All picks form one pool (liked -> positive,
    disliked -> negative); ``n`` are drawn uniformly without replacement (``numpy.default_rng(seed)``), so the
    positive / negative split follows the picks. When the pool is smaller than ``n`` it is taken whole and the
    rest drawn with replacement. Returns ``(pos_pairs (p, 2), neg_pairs (n - p, 2))`` int64 (user, item), each in
    pool order. (Paper, Table 2: ``ceil(2 |U| eta)`` augmented edges, i.e. ``num_edges = 2 |U|`` reproduces it.)
    """
    if eta < 0 or num_edges < 0:
        raise ValueError(f"augmented_pairs: eta and num_edges must be >= 0, got {eta}, {num_edges}")
    pos, neg = _as_pairs(liked, "liked"), _as_pairs(disliked, "disliked")
    n = augmented_count(num_edges, eta)
    pool = len(pos) + len(neg)
    if n == 0:
        return pos[:0], neg[:0]
    if pool == 0:
        raise ValueError(f"augmented_pairs: {n} pairs asked (eta={eta}, |E|={num_edges}) but the LLM picked nothing")
    rng = np.random.default_rng(seed)
    if n <= pool:
        pick = np.sort(rng.choice(pool, size=n, replace=False))
    else:
        pick = np.sort(np.concatenate([np.arange(pool), rng.integers(0, pool, n - pool)]))
    return pos[pick[pick < len(pos)]], neg[pick[pick >= len(pos)] - len(pos)]


def train_loop(config: dict) -> list[dict]:
    """Train :class:`ER2ALMGNN` with BPR. ``config`` keys: ``user_ids``, ``item_ids`` (E,) train edges;
    ``num_users``, ``num_items``; ``cfg`` (GNNConfig as dict); ``user_side`` / ``item_side`` arrays or None;
    ``extra_pos`` / ``extra_neg`` (n, 2) arrays; ``seed``, ``out_dir``; optional ``eval_users`` / ``eval_items``
    (Recall@20 per epoch), ``checkpoint_dir``, ``report_every``. Returns the history."""
    cfg = GNNConfig.model_validate(config["cfg"])
    num_users, num_items = int(config["num_users"]), int(config["num_items"])
    seed, rank, _, dev = rt.worker_setup(config)

    def long(x) -> torch.Tensor:
        return torch.as_tensor(np.asarray(x), dtype=torch.long, device=dev)

    users, items = long(config["user_ids"]), long(config["item_ids"])
    adj = normalized_adjacency(bipartite_edge_index(users, items, num_users), num_users + num_items)
    # each user's train items (CSR) to draw the positive of an augmented negative
    order = torch.argsort(users, stable=True)
    items_by_user = items[order]
    deg = torch.bincount(users, minlength=num_users)
    indptr = torch.cumsum(deg, 0) - deg
    extra_pos, extra_neg = long(config["extra_pos"]).reshape(-1, 2), long(config["extra_neg"]).reshape(-1, 2)
    extra_neg = extra_neg[deg[extra_neg[:, 0]] > 0]
    none = lambda n: torch.full((n,), -1, dtype=torch.long, device=dev)
    row_u = torch.cat([users, extra_pos[:, 0], extra_neg[:, 0]])
    row_pos = torch.cat([items, extra_pos[:, 1], none(len(extra_neg))])  # -1: a random train item of the user
    row_neg = torch.cat([none(len(users) + len(extra_pos)), extra_neg[:, 1]])  # -1: a random item

    model = ER2ALMGNN(
        num_users,
        num_items,
        cfg.dim,
        cfg.num_layers,
        user_side=config.get("user_side"),
        item_side=config.get("item_side"),
        side=cfg.side,
        use_users=cfg.use_users,
        use_items=cfg.use_items,
    )
    model = rt.prepare_model(model, dev)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    select = (f"recall@{EVAL_K}", cfg.patience) if cfg.patience is not None else None
    loop = rt.EpochLoop("er2alm", config, model, optimizer, cfg.epochs, select=select)
    gen = torch.Generator(device=dev).manual_seed(seed * 7919 + rank)

    def step(idx: torch.Tensor) -> tuple[torch.Tensor, int]:
        idx = idx.to(dev)
        u, pos, neg = row_u[idx], row_pos[idx], row_neg[idx]
        need = pos < 0
        if need.any():
            un = u[need]
            off = (torch.rand(un.shape, generator=gen, device=dev) * deg[un]).long().clamp(max=deg[un] - 1)
            pos[need] = items_by_user[indptr[un] + off]
        label = sample_bpr_batch(torch.stack([u, pos + num_users]), num_users, num_items, gen)
        fixed = neg >= 0
        if fixed.any():
            negs = label[1, len(idx) :].clone()
            negs[fixed] = neg[fixed] + num_users
            label[1, len(idx) :] = negs
        return bpr_step(model, adj, label, cfg.weight_decay), idx.numel()

    meta = {
        "train_edges": int(users.numel()),
        "extra_pos": len(extra_pos),
        "extra_neg": len(extra_neg),
        "side": cfg.side,
        "use_users": rt.unwrap(model).uses_users,
        "use_items": rt.unwrap(model).uses_items,
    }

    def write(out: Path) -> None:
        torch.save(rt.unwrap(model).state_dict(), out / "model.pt")
        (out / "meta.json").write_text(json.dumps(meta, indent=1))

    # balanced batches: with |E| / batch_size batches an epoch, a remainder of a few rows made one noisy full step
    return train_graph_epochs(
        loop, step, row_u.numel(), cfg.batch_size, seed, adj, users, items, num_users, write, balanced=True
    )


def train_er2alm(
    user_ids: np.ndarray,
    item_ids: np.ndarray,
    num_users: int,
    num_items: int,
    cfg: GNNConfig,
    *,
    user_side: np.ndarray | None = None,
    item_side: np.ndarray | None = None,
    extra_pos: np.ndarray | None = None,
    extra_neg: np.ndarray | None = None,
    eval_pairs: tuple[np.ndarray, np.ndarray] | None = None,
    opts: rt.TrainOptions,
) -> ER2ALMResult:
    """Train the ER2ALM GNN on train interactions (E,) (duplicates merged) and return its embeddings.

    ``user_side`` (U, d_u) / ``item_side`` (I, d_i): see :class:`ER2ALMGNN` (needed only when ``cfg`` uses them).
    ``extra_pos`` / ``extra_neg``: (n, 2) (user, item) pairs, e.g. from :func:`augmented_pairs`.
    ``eval_pairs=(users, items)``: Recall@20 per epoch, the validation pairs that ``cfg.patience`` selects the
    epoch on (required then). ``opts``: :class:`ray_train.TrainOptions`.
    """
    if cfg.patience is not None and eval_pairs is None:
        raise ValueError("train_er2alm: gnn.patience selects the epoch on validation pairs: pass eval_pairs")
    for who, feats, rows in (("user", user_side, num_users), ("item", item_side, num_items)):
        used = cfg.side and (cfg.use_users if who == "user" else cfg.use_items)
        if used and feats is None:
            raise ValueError(f"train_er2alm: {who}_side is required with gnn.side=True and gnn.use_{who}s=True")
        if used and (np.ndim(feats) != 2 or len(feats) != rows):
            raise ValueError(f"train_er2alm: {who}_side must be ({rows}, d), got {np.shape(feats)}")
    u, i = validate_interactions(user_ids, item_ids, num_users, num_items, "er2alm train interactions")
    u, i = unique_pairs(u, i, num_items)
    extras = {}
    for name, pairs in (("extra_pos", extra_pos), ("extra_neg", extra_neg)):
        arr = np.zeros((0, 2), np.int64) if pairs is None else np.asarray(pairs).reshape(-1, 2)
        if len(arr):
            validate_interactions(arr[:, 0], arr[:, 1], num_users, num_items, f"er2alm {name}")
        extras[name] = arr.astype(np.int64)
    history, out = run_graph_loop(
        train_loop,
        "er2alm",
        u,
        i,
        num_users,
        num_items,
        cfg,
        eval_pairs,
        opts,
        user_side=None if user_side is None else np.asarray(user_side, np.float32),
        item_side=None if item_side is None else np.asarray(item_side, np.float32),
        **extras,
    )
    return ER2ALMResult(
        user_emb=np.load(out / "user_emb.npy"), item_emb=np.load(out / "item_emb.npy"), history=history, out_dir=out
    )
