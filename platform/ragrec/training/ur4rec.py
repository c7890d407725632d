"""Ray Train loop pretraining UR4Rec's user preference retriever (paper §3.2, §3.4 phase 2), and the
augmented vectors it gives a reranker (§3.3).

Inputs (numpy): ``user_text`` (U, E) float32, the encoded s_u; ``item_text`` (I, E) float32, the encoded s_i;
``item_repr`` (I, D) float32, the recommender's item representations h_i (frozen: never trained here); per
sample ``users`` (N,) int64, ``history`` (N, L) int64 (item id + 1, 0 = padding, left-padded, most recent
last) and ``targets`` (N,) int64 (the 0-based positive item).

e_aggr (Eq. 5, :func:`build_aggr`) = the concatenation of e_u and the s_i embeddings of the sample's last m
history items: M = 1 + m slots, with a mask for the slots of missing (padding) history items.

Objective: ``L = L_CL + alpha * L_PIM`` (either can be switched off by ``use_cl`` / ``use_pim``, the paper's
ablations), each over the positive and ``cl_negatives`` uniform random negatives per sample, drawn per batch
with a seeded generator. Negatives never are the sample's target nor any other training target of the same
user, nor (when ``interacted`` is given) any item the user interacted with: exact sampling over the items
outside those sorted keys (:func:`ragrec.models.sasrec.sample_negatives`); a user who knows every item gets
no negatives (they are masked out of the losses).

Sanity metric (``valid`` samples, negatives drawn once per run the same way, also avoiding the user's
training targets): ``valid_auc_pim`` = mean over samples of the fraction of negatives whose Eq. 8 match logit
the positive's beats, ``valid_auc_cl`` the same with the proxy similarity of L_CL, and ``valid_auc`` = the
PIM one (the CL one when ``use_pim`` is off). ``valid_auc_init`` in the metrics is its value before training.

Outputs in ``out_dir``: ``model.pt`` (the retriever's state dict), ``retriever.json`` (its sizes, the config,
the encoder it was initialised from), ``history.json`` (per epoch: loss, cl, pim, seconds, valid metrics),
``metrics.json`` (the last epoch's row, ``valid_auc_init``, ``train_samples``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ragrec.config import UR4RecConfig
from ragrec.models.sasrec import sample_negatives
from ragrec.models.ur4rec_retriever import (
    PreferenceRetriever,
    cl_loss,
    init_from_encoder,
    pim_loss,
    proxy_similarity,
)
from ragrec.training import ray_train as rt

log = logging.getLogger("ragrec.ur4rec")

MODEL_FILE = "model.pt"
META_FILE = "retriever.json"
_EVAL_CHUNK = 256  # samples per forward pass at validation time


@dataclass
class RetrieverResult:
    model_dir: Path  # model.pt + retriever.json (load_retriever), history.json, metrics.json
    history: list[dict]  # per epoch: epoch, loss, cl, pim, seconds[, valid_auc, valid_auc_cl, valid_auc_pim]
    metrics: dict  # the last row + valid_auc_init, train_samples


# ----------------------------------------------------------------------------- e_aggr and the augmenter


def build_aggr(user_text, item_text, users, history, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 5: e_aggr = concat(e_u, e_{i_1..i_m}) of a batch, as torch tensors (on ``user_text``'s device).

    ``user_text`` (U, E), ``item_text`` (I, E) tables; ``users`` (B,); ``history`` (B, L) item id + 1, 0 = pad,
    left-padded, most recent last. Slot 0 is e_u; slots 1..m the s_i embeddings of the last m history columns
    (oldest first; histories shorter than m are padded on the left). Returns ``aggr`` (B, 1 + m, E) (zeros at
    padding slots) and ``aggr_mask`` (B, 1 + m) bool (False = padding slot; slot 0 is always valid).
    """
    user_text = torch.as_tensor(user_text)
    dev = user_text.device
    item_text = torch.as_tensor(item_text, device=dev)
    users = torch.as_tensor(users, device=dev).long()
    history = torch.as_tensor(history, device=dev).long()
    e_u = user_text[users].unsqueeze(1)
    head = torch.ones(users.numel(), 1, dtype=torch.bool, device=dev)
    if m <= 0:
        return e_u, head
    L = history.size(1)
    hist = history[:, L - m :] if L >= m else F.pad(history, (m - L, 0))
    ok = hist > 0
    e_i = item_text[(hist - 1).clamp(min=0)] * ok.unsqueeze(-1).to(item_text.dtype)
    return torch.cat([e_u, e_i], dim=1), torch.cat([head, ok], dim=1)


class Augmenter(nn.Module):
    """The retriever with its three frozen tables, for a reranker that trains it jointly (phase 3).

    ``forward(users (B,), history (B, L), candidates (B, C) 0-based) -> (B, C, hidden)``: e_aug of every
    candidate by the multi-item form (:meth:`PreferenceRetriever.augment`, mask (c)) given e_aggr of the
    sample's user and last ``m`` history items. The tables are non-persistent buffers (they follow
    ``.to(device)`` but stay out of the state dict and get no gradient). Under DDP, wrap with
    ``broadcast_buffers=False`` to keep the tables from being broadcast at every step.
    """

    def __init__(self, retriever: PreferenceRetriever, user_text, item_text, item_repr, m: int):
        super().__init__()
        self.retriever = retriever
        self.m = int(m)
        self.register_buffer("user_text", _f32(user_text), persistent=False)
        self.register_buffer("item_text", _f32(item_text), persistent=False)
        self.register_buffer("item_repr", _f32(item_repr), persistent=False)

    def aggr(self, users: torch.Tensor, history: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return build_aggr(self.user_text, self.item_text, users, history, self.m)

    def forward(self, users: torch.Tensor, history: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        aggr, mask = self.aggr(users, history)
        return self.retriever.augment(self.item_repr[candidates.long()], aggr, mask)


def _f32(x) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().float()
    return torch.as_tensor(np.asarray(x, dtype=np.float32))


# ----------------------------------------------------------------------------- the pretraining module


class _Pretrainer(nn.Module):
    """What DDP wraps in :func:`train_loop`: the retriever, and the tables as plain tensors (not buffers, so
    DDP does not broadcast them). ``forward`` returns (L_CL, L_PIM) of a batch."""

    def __init__(self, retriever: PreferenceRetriever, tables: dict[str, torch.Tensor], cfg: UR4RecConfig):
        super().__init__()
        self.retriever = retriever
        self.tables, self.cfg = tables, cfg

    def _inputs(self, users, history, targets, negs):
        t = self.tables
        aggr, mask = build_aggr(t["user_text"], t["item_text"], users, history, self.cfg.aggr_items)
        h = t["item_repr"][torch.cat([targets.unsqueeze(1), negs], dim=1)]  # (B, 1 + M, D)
        return aggr, mask, h

    def forward(self, users, history, targets, negs, neg_ok) -> tuple[torch.Tensor, torch.Tensor]:
        r, cfg = self.retriever, self.cfg
        aggr, mask, h = self._inputs(users, history, targets, negs)
        cl = pim = aggr.new_zeros(())
        if cfg.use_cl:
            e = r.items(h)
            cl = cl_loss(r.preference(aggr, mask), e[:, 0], e[:, 1:], cfg.tau, neg_ok)
        if cfg.use_pim:
            logits = r.match_logits(h, aggr, mask)
            pim = pim_loss(logits[:, 0], logits[:, 1:], neg_ok)
        else:  # keep every parameter in the graph (DDP without find_unused_parameters)
            pim = pim + 0.0 * sum(p.sum() for p in r.match_head.parameters())
        return cl, pim

    @torch.no_grad()
    def scores(self, users, history, targets, negs) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 1 + M) proxy similarities (L_CL's) and match logits (Eq. 8), the positive first."""
        r = self.retriever
        aggr, mask, h = self._inputs(users, history, targets, negs)
        return proxy_similarity(r.preference(aggr, mask), r.items(h)), r.match_logits(h, aggr, mask)


def _auc(scores: torch.Tensor, ok: torch.Tensor) -> tuple[float, int]:
    """Sum over samples of the fraction of valid negatives the positive beats (strictly), and the count of
    samples with at least one valid negative."""
    n_ok = ok.sum(1)
    frac = ((scores[:, :1] > scores[:, 1:]) & ok).sum(1) / n_ok.clamp(min=1)
    has = n_ok > 0
    return float(frac[has].sum()), int(has.sum())


# ----------------------------------------------------------------------------- the loop


def _arrays(d: dict, dev, what: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    users = torch.as_tensor(np.asarray(d["users"], dtype=np.int64), device=dev)
    history = torch.as_tensor(np.asarray(d["history"], dtype=np.int64), device=dev)
    targets = torch.as_tensor(np.asarray(d["targets"], dtype=np.int64), device=dev)
    n = users.numel()
    if users.dim() != 1 or targets.shape != (n,) or history.dim() != 2 or history.size(0) != n:
        raise ValueError(
            f"ur4rec {what}: users (N,), history (N, L), targets (N,) expected, got {tuple(users.shape)}, "
            f"{tuple(history.shape)}, {tuple(targets.shape)}"
        )
    return users, history, targets


def train_loop(config: dict) -> list[dict]:
    """Pretrain the retriever. ``config`` keys: ``user_text`` (U, E), ``item_text`` (I, E), ``item_repr``
    (I, D) float arrays; ``train`` / optional ``valid`` dicts of ``users``, ``history``, ``targets`` arrays;
    optional ``interacted`` (sorted int64 keys user * I + item); ``cfg`` (UR4RecConfig as dict); ``arch``
    (``hidden``, ``heads``, ``ffn``, ``dropout`` of :class:`PreferenceRetriever`); ``init_encoder`` (name or
    folder, or None: random blocks); ``seed``, ``out_dir``, optional ``checkpoint_dir``, ``report_every``
    (see :class:`ray_train.EpochLoop`). Returns the per-epoch history (rank 0's under Ray)."""
    cfg = UR4RecConfig.model_validate(config["cfg"])
    if not cfg.use_cl and (not cfg.use_pim or cfg.alpha == 0):
        raise ValueError("ur4rec: use_cl and use_pim (with alpha > 0) are both off: nothing to pretrain")
    seed, rank, world, dev = rt.worker_setup(config)
    tables = {k: _f32(config[k]).to(dev) for k in ("user_text", "item_text", "item_repr")}
    num_items = tables["item_repr"].size(0)
    users, history, targets = _arrays(config["train"], dev, "train")
    if users.numel() == 0:
        raise ValueError("ur4rec: no training samples")
    interacted = config.get("interacted")
    known = [users * num_items + targets]
    if interacted is not None:
        known.append(torch.as_tensor(np.asarray(interacted, dtype=np.int64), device=dev))
    train_keys = torch.unique(torch.cat(known))
    M = cfg.cl_negatives

    retriever = PreferenceRetriever(
        item_dim=tables["item_repr"].size(1),
        proxies=cfg.proxies,
        layers=cfg.layers,
        aggr_dim=tables["user_text"].size(1),
        **config["arch"],
    )
    if config.get("init_encoder"):
        init_from_encoder(retriever, config["init_encoder"])
    core = _Pretrainer(retriever, tables, cfg)
    model = rt.prepare_model(core, dev)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    loop = rt.EpochLoop(
        "ur4rec_retriever",
        config,
        model,
        optimizer,
        cfg.epochs,
        save=lambda: {"model": retriever.state_dict()},
        load=lambda state: retriever.load_state_dict(state["model"]),
    )
    neg_gen = torch.Generator(device=dev).manual_seed(seed * 7919 + rank + 1)

    valid = None
    if config.get("valid") is not None:
        v_users, v_hist, v_tgt = _arrays(config["valid"], dev, "valid")
        if v_users.numel():
            v_keys = torch.unique(torch.cat([train_keys, v_users * num_items + v_tgt]))
            v_gen = torch.Generator(device=dev).manual_seed(seed * 104_729 + 1)
            v_negs, v_ok = sample_negatives(v_users, M, num_items, v_keys, v_gen)
            valid = (v_users, v_hist, v_tgt, v_negs, v_ok)

    def evaluate() -> dict:
        if valid is None:
            return {}
        was = core.training
        core.eval()
        tot_cl = tot_pim = 0.0
        count = 0
        for s in range(0, valid[0].numel(), _EVAL_CHUNK):
            u, h, t, n, ok = (x[s : s + _EVAL_CHUNK] for x in valid)
            sim, logit = core.scores(u, h, t, n)
            a_cl, c = _auc(sim, ok)
            a_pim, _ = _auc(logit, ok)
            tot_cl, tot_pim, count = tot_cl + a_cl, tot_pim + a_pim, count + c
        core.train(was)
        auc_cl, auc_pim = tot_cl / max(count, 1), tot_pim / max(count, 1)
        return {"valid_auc": auc_pim if cfg.use_pim else auc_cl, "valid_auc_cl": auc_cl, "valid_auc_pim": auc_pim}

    init_metrics = evaluate()
    sums: dict[str, float] = {}

    def step(idx: torch.Tensor) -> tuple[torch.Tensor, int]:
        idx = idx.to(dev)
        u = users[idx]
        negs, ok = sample_negatives(u, M, num_items, train_keys, neg_gen)
        cl, pim = model(u, history[idx], targets[idx], negs, ok)
        loss = cl + cfg.alpha * pim
        b = idx.numel()
        sums["cl"] = sums.get("cl", 0.0) + float(cl.detach()) * b
        sums["pim"] = sums.get("pim", 0.0) + float(pim.detach()) * b
        sums["n"] = sums.get("n", 0.0) + b
        return loss, b

    def train_epoch(epoch: int) -> dict:
        sums.clear()
        batches = rt.epoch_batches(users.numel(), cfg.batch_size, seed=seed, epoch=epoch, rank=rank, world_size=world)
        loss = loop.train_batches(epoch, batches, step)
        n = max(sums.get("n", 0.0), 1.0)
        return {"loss": loss, "cl": sums.get("cl", 0.0) / n, "pim": sums.get("pim", 0.0) / n}

    history_rows = loop.run(train_epoch, lambda epoch: evaluate())
    metrics = {**loop.last_row, "train_samples": int(users.numel())}
    if init_metrics:
        metrics["valid_auc_init"] = init_metrics["valid_auc"]
    meta = {
        **retriever.sizes(),
        "num_users": int(tables["user_text"].size(0)),
        "num_items": int(num_items),
        "init_encoder": config.get("init_encoder"),
        "cfg": cfg.model_dump(),
    }

    def write(out: Path) -> None:
        torch.save({k: v.detach().cpu() for k, v in retriever.state_dict().items()}, out / MODEL_FILE)
        (out / META_FILE).write_text(json.dumps(meta, indent=1))
        (out / "history.json").write_text(json.dumps(history_rows, indent=1))
        (out / "metrics.json").write_text(json.dumps(metrics, indent=1))

    loop.publish(write, metrics)
    return history_rows


# ----------------------------------------------------------------------------- entry points


def _check_samples(d: dict, num_users: int, num_items: int, what: str) -> dict:
    out = {k: np.asarray(d[k], dtype=np.int64) for k in ("users", "history", "targets")}
    n = out["users"].shape[0]
    if out["users"].shape != (n,) or out["targets"].shape != (n,) or out["history"].ndim != 2:
        raise ValueError(f"ur4rec {what}: users (N,), history (N, L), targets (N,) expected")
    if out["history"].shape[0] != n:
        raise ValueError(f"ur4rec {what}: history has {out['history'].shape[0]} rows for {n} users")
    if n and (out["users"].min() < 0 or out["users"].max() >= num_users):
        raise ValueError(f"ur4rec {what}: user ids must lie in [0, {num_users})")
    if n and (out["targets"].min() < 0 or out["targets"].max() >= num_items):
        raise ValueError(f"ur4rec {what}: target ids must lie in [0, {num_items})")
    if out["history"].size and (out["history"].min() < 0 or out["history"].max() > num_items):
        raise ValueError(f"ur4rec {what}: history holds item id + 1 in [0, {num_items}] (0 = padding)")
    return out


def train_retriever(
    user_text: np.ndarray,
    item_text: np.ndarray,
    item_repr: np.ndarray,
    train: dict,
    cfg: UR4RecConfig,
    *,
    opts: rt.TrainOptions,
    valid: dict | None = None,
    interacted: np.ndarray | None = None,
    init_encoder: str | None = "minilm-l6",
    hidden: int | None = None,
    heads: int | None = None,
    ffn: int | None = None,
    dropout: float = 0.1,
) -> RetrieverResult:
    """Pretrain the retriever with L_CL + alpha * L_PIM (see the module doc) and return its folder.

    ``train`` / ``valid``: dicts of ``users`` (N,), ``history`` (N, L), ``targets`` (N,). ``interacted``:
    sorted int64 keys ``user * I + item`` never drawn as negatives. ``init_encoder``: the BERT whose first
    ``cfg.layers`` layers initialise the blocks (None: random). ``hidden`` / ``heads`` / ``ffn``: the block
    sizes, default the encoder's (384 / 12 / 1536 without one). ``cfg.max_train_samples`` keeps a seeded
    random subset of ``train``.
    """
    user_text = np.asarray(user_text, dtype=np.float32)
    item_text = np.asarray(item_text, dtype=np.float32)
    item_repr = np.asarray(item_repr, dtype=np.float32)
    if user_text.ndim != 2 or item_text.ndim != 2 or item_repr.ndim != 2:
        raise ValueError("ur4rec: user_text (U, E), item_text (I, E), item_repr (I, D) must be 2-D")
    if user_text.shape[1] != item_text.shape[1] or item_text.shape[0] != item_repr.shape[0]:
        raise ValueError(
            f"ur4rec: user_text {user_text.shape}, item_text {item_text.shape}, item_repr {item_repr.shape} "
            "disagree (same E for the texts, same I for the items)"
        )
    U, I = user_text.shape[0], item_text.shape[0]
    tr = _check_samples(train, U, I, "train")
    n = tr["users"].shape[0]
    if cfg.max_train_samples is not None and n > cfg.max_train_samples:
        keep = np.sort(np.random.default_rng(opts.seed).choice(n, cfg.max_train_samples, replace=False))
        tr = {k: v[keep] for k, v in tr.items()}
    va = _check_samples(valid, U, I, "valid") if valid is not None else None
    arch = {"dropout": float(dropout)}
    if init_encoder:
        from transformers import AutoConfig

        from ragrec.llm.registry import model_path

        folder = init_encoder if Path(init_encoder).is_dir() else model_path(init_encoder)
        ec = AutoConfig.from_pretrained(folder, local_files_only=True)
        arch |= {"hidden": ec.hidden_size, "heads": ec.num_attention_heads, "ffn": ec.intermediate_size}
    for k, v in (("hidden", hidden), ("heads", heads), ("ffn", ffn)):
        if v is not None:
            arch[k] = int(v)
    config = {
        "user_text": user_text,
        "item_text": item_text,
        "item_repr": item_repr,
        "train": tr,
        "valid": va,
        "interacted": None if interacted is None else np.asarray(interacted, dtype=np.int64),
        "cfg": cfg.model_dump(),
        "arch": arch,
        "init_encoder": init_encoder,
        **opts.loop_config("ur4rec_retriever"),
    }
    history = rt.run_loop(train_loop, config, opts, name="ur4rec_retriever")
    out = Path(config["out_dir"])
    metrics = json.loads((out / "metrics.json").read_text())
    if "valid_auc" in metrics:
        log.info(
            "UR4Rec retriever: valid_auc %.4f (untrained %.4f) over %d negatives",
            metrics["valid_auc"],
            metrics.get("valid_auc_init", float("nan")),
            cfg.cl_negatives,
        )
    return RetrieverResult(model_dir=out, history=history, metrics=metrics)


def load_retriever(model_dir: str | Path, device: str = "cpu") -> PreferenceRetriever:
    """The retriever :func:`train_retriever` wrote into ``model_dir``, in eval mode."""
    model_dir = Path(model_dir)
    meta = json.loads((model_dir / META_FILE).read_text())
    sizes = {k: meta[k] for k in ("item_dim", "proxies", "layers", "hidden", "heads", "ffn", "aggr_dim", "dropout")}
    retriever = PreferenceRetriever(**sizes)
    retriever.load_state_dict(torch.load(model_dir / MODEL_FILE, map_location="cpu", weights_only=True))
    return retriever.to(device).eval()


@torch.no_grad()
def compute_augment(
    model: str | Path | PreferenceRetriever,
    user_text: np.ndarray,
    item_text: np.ndarray,
    item_repr: np.ndarray,
    users: np.ndarray,
    history: np.ndarray,
    candidates: np.ndarray,
    m: int | None = None,
    batch_size: int = 64,
    device: str = "cpu",
    dtype: type = np.float16,
) -> np.ndarray:
    """(N, C, hidden) ``dtype``: e_aug of every candidate (N, C) 0-based of every sample (users (N,), history
    (N, L)), by :class:`Augmenter` in eval mode, ``batch_size`` samples per forward pass. ``model``: a
    :func:`train_retriever` folder or a retriever; ``m``: history items in e_aggr (default: the folder's
    ``cfg.aggr_items``; required with a retriever). float16 halves the memory; float32 keeps the vectors
    independent of the batch they were computed in (float16 rounding can flip a last bit between batch shapes),
    which is what lets a single served list reproduce the offline scores."""
    if isinstance(model, (str, Path)):
        if m is None:
            m = json.loads((Path(model) / META_FILE).read_text())["cfg"]["aggr_items"]
        retriever = load_retriever(model, device)
    else:
        retriever = model
    if m is None:
        raise ValueError("compute_augment: pass m (history items in e_aggr) with a retriever object")
    users = torch.as_tensor(np.asarray(users, dtype=np.int64))
    history = torch.as_tensor(np.asarray(history, dtype=np.int64))
    candidates = torch.as_tensor(np.asarray(candidates, dtype=np.int64))
    n = users.numel()
    if history.dim() != 2 or history.size(0) != n or candidates.dim() != 2 or candidates.size(0) != n:
        raise ValueError("compute_augment: users (N,), history (N, L), candidates (N, C) expected")
    was = retriever.training
    aug = Augmenter(retriever, user_text, item_text, item_repr, m).to(device).eval()
    out = np.empty((n, candidates.size(1), retriever.hidden), dtype=dtype)
    for s in range(0, n, batch_size):
        sl = slice(s, s + batch_size)
        e = aug(users[sl].to(device), history[sl].to(device), candidates[sl].to(device))
        out[sl] = e.float().cpu().numpy().astype(dtype, copy=False)
    retriever.train(was)
    return out
