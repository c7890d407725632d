"""Ray Train loop for UR4Rec's reranking backbones (§3.3, Eq. 9; :mod:`ragrec.models.rerankers`).

``train_loop(config)`` runs standalone or as a ``TorchTrainer`` worker; :func:`train_reranker` is the public
entry point and :class:`RerankScorer` scores candidate lists with a trained model (evaluation, serving).

Objective: listwise softmax cross-entropy over each sample's C candidate scores, the positive
(``target_index``) as the class; Adam. After every epoch the validation samples are ranked (NDCG@k, MAP@k
for k in 1, 5, 10, 20 by :func:`ragrec.evaluation.ranking.ranking_metrics`, ties pessimistic); the state with
the best validation NDCG@10 is kept and published, and training stops early after ``patience`` epochs without
improvement.

Joint training (Eq. 9, phase 3): an ``augmenter`` module called as ``augmenter(users (B,), history (B, L),
candidates (B, C)) -> (B, C, A)`` is trained together with the backbone (one optimizer); otherwise a
precomputed ``aug`` (N, C, A) array (float16 and np.memmap allowed: read per batch) may be given.

Outputs in ``out_dir``: ``model.pt`` (the backbone's state dict), ``augmenter.pt`` (the augmenter's, when
one was trained), ``reranker.json`` (name, num_items, history_len, aug_dim, cfg), ``history.json`` (per
epoch: loss, seconds, valid_ndcg@10, valid_map@10) and ``metrics.json`` (the best epoch's validation
metrics and ``epoch``).
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

from ragrec.config import RerankerConfig
from ragrec.evaluation.ranking import ranking_metrics
from ragrec.models.rerankers import BACKBONES, MAX_CANDIDATES, RerankBackbone, build_backbone
from ragrec.training import ray_train as rt

log = logging.getLogger("ragrec.rerank")

MODEL_FILE = "model.pt"
AUGMENTER_FILE = "augmenter.pt"
META_FILE = "reranker.json"
BEST_KEY = "ndcg@10"
_EVAL_CHUNK = 512  # samples per forward pass at validation / scoring time


@dataclass
class RerankResult:
    model_dir: Path  # out_dir: model.pt, reranker.json, history.json, metrics.json[, augmenter.pt]
    history: list[dict]  # per epoch: epoch, loss, seconds, valid_ndcg@10, valid_map@10
    metrics: dict  # the best epoch's validation {"ndcg@k", "map@k", "epoch"}


class _Joint(nn.Module):
    """The backbone and, in joint training, the augmenter producing its ``aug`` (one module for DDP)."""

    def __init__(self, backbone: RerankBackbone, augmenter: nn.Module | None = None):
        super().__init__()
        self.backbone, self.augmenter = backbone, augmenter

    def forward(self, history, candidates, aug=None, users=None):
        if self.augmenter is not None:
            aug = self.augmenter(users, history, candidates)
        return self.backbone(history, candidates, aug)


def _batch(arrays: dict, rows: np.ndarray, dev) -> tuple[torch.Tensor, ...]:
    """The ``rows`` of a split as tensors on ``dev``: history, candidates, target, aug or None, users or None."""
    out = [torch.as_tensor(np.asarray(arrays[k][rows], dtype=np.int64)).to(dev) for k in ("history", "candidates")]
    out.append(torch.as_tensor(np.asarray(arrays["target_index"][rows], dtype=np.int64)).to(dev))
    aug = arrays.get("aug")
    out.append(None if aug is None else torch.as_tensor(np.asarray(aug[rows], dtype=np.float32)).to(dev))
    users = arrays.get("users")
    out.append(None if users is None else torch.as_tensor(np.asarray(users[rows], dtype=np.int64)).to(dev))
    return tuple(out)


@torch.no_grad()
def _score(model: _Joint, arrays: dict, dev, chunk: int = _EVAL_CHUNK) -> np.ndarray:
    """(N, C) float32 eval-mode scores of a split, ``chunk`` samples per forward pass."""
    was_training = model.training
    model.eval()
    n = len(arrays["candidates"])
    out = []
    for s in range(0, n, chunk):
        h, c, _t, a, u = _batch(arrays, np.arange(s, min(s + chunk, n)), dev)
        out.append(model(h, c, a, u).float().cpu().numpy())
    model.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, arrays["candidates"].shape[1]), np.float32)


def _train_rows(n: int, limit: int | None, seed: int) -> np.ndarray:
    """The training rows: all, or a seeded random subset of ``limit`` (sorted)."""
    if limit is None or limit >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


def train_loop(config: dict) -> list[dict]:
    """Train one reranking backbone. ``config`` keys:

    ``name``, ``num_items``, ``history_len``, ``aug_dim``; ``cfg`` (RerankerConfig as dict); ``train`` and
    ``valid`` (dicts of arrays: history, candidates, target_index[, aug][, users], as checked by
    :func:`train_reranker`); optional ``augmenter`` (nn.Module, trained jointly) and ``patience`` (default 2);
    ``seed``, ``out_dir``, ``checkpoint_dir``, ``report_every`` (see :class:`ray_train.EpochLoop`).
    Returns the per-epoch history (rank 0's under Ray).
    """
    cfg = RerankerConfig.model_validate(config["cfg"])
    name, num_items = config["name"], int(config["num_items"])
    history_len, aug_dim = int(config["history_len"]), int(config["aug_dim"])
    train, valid = config["train"], config["valid"]
    augmenter, patience = config.get("augmenter"), int(config.get("patience") or 2)
    seed, rank, world, dev = rt.worker_setup(config)
    rows = _train_rows(len(train["target_index"]), cfg.max_train_samples, seed)

    model = rt.prepare_model(_Joint(build_backbone(name, num_items, cfg, history_len, aug_dim), augmenter), dev)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    best: dict = {"state": None, "metrics": None, "bad": 0}

    def save() -> dict:
        return {"model": rt.unwrap(model).state_dict(), "best": best, "rng": torch.get_rng_state()}

    def load(state: dict) -> None:
        rt.unwrap(model).load_state_dict(state["model"])
        best.update(state["best"])
        torch.set_rng_state(state["rng"])  # the resumed epochs draw the dropout masks of an uninterrupted run

    loop = rt.EpochLoop(f"rerank_{name}", config, model, optimizer, cfg.epochs, save=save, load=load)

    def step(idx: torch.Tensor) -> tuple[torch.Tensor, int]:
        b = np.sort(rows[idx.numpy()])  # sorted rows: sequential reads from a memmapped aug
        h, c, t, a, u = _batch(train, b, dev)
        return F.cross_entropy(model(h, c, a, u), t), len(b)

    def train_epoch(epoch: int) -> dict:
        batches = rt.epoch_batches(len(rows), cfg.batch_size, seed=seed, epoch=epoch, rank=rank, world_size=world)
        return {"loss": loop.train_batches(epoch, batches, step)}

    def evaluate(epoch: int) -> dict:
        core = rt.unwrap(model)
        m = ranking_metrics(_score(core, valid, dev), valid["target_index"])
        if best["metrics"] is None or m[BEST_KEY] > best["metrics"][BEST_KEY]:
            state = {k: v.detach().cpu().clone() for k, v in core.state_dict().items()}
            best.update(state=state, metrics={**m, "epoch": epoch}, bad=0)
        else:
            best["bad"] += 1
            loop.stop = best["bad"] >= patience  # every rank sees the same metrics: they stop together
        return {"valid_ndcg@10": m["ndcg@10"], "valid_map@10": m["map@10"]}

    history = loop.run(train_epoch, evaluate)
    core = rt.unwrap(model)
    core.load_state_dict(best["state"])
    metrics = best["metrics"]
    meta = {"name": name, "num_items": num_items, "history_len": history_len, "aug_dim": aug_dim}

    def write(out: Path) -> None:
        torch.save({k: v.detach().cpu() for k, v in core.backbone.state_dict().items()}, out / MODEL_FILE)
        if core.augmenter is not None:
            aug_state = {k: v.detach().cpu() for k, v in core.augmenter.state_dict().items()}
            torch.save(aug_state, out / AUGMENTER_FILE)
        (out / META_FILE).write_text(json.dumps({**meta, "cfg": cfg.model_dump()}, indent=1))
        (out / "history.json").write_text(json.dumps(history, indent=1))
        (out / "metrics.json").write_text(json.dumps(metrics, indent=1))

    loop.publish(write, {**loop.last_row, **{f"best_{k}": v for k, v in metrics.items()}})
    return history


# ----------------------------------------------------------------------------- checks


def _int_array(arrays: dict, key: str, split: str) -> np.ndarray:
    a = np.asarray(arrays[key])
    if a.dtype.kind not in "iu":
        raise ValueError(f"rerank {split}: {key} has dtype {a.dtype}; pass integer ids (np.int64)")
    return a.astype(np.int64, copy=False)


def check_split(
    arrays: dict, split: str, num_items: int, history_len: int, aug_dim: int | None = None, need_users: bool = False
) -> dict:
    """``arrays`` (history, candidates, target_index[, aug][, users]) checked, ids as int64; aug kept as is.

    ``aug_dim``: the expected A of ``aug`` (None: any; 0: none allowed). One-line ValueErrors name the array
    and the fix.
    """
    missing = [k for k in ("history", "candidates", "target_index") if k not in arrays]
    if missing:
        raise ValueError(f"rerank {split}: missing arrays {missing}; pass history, candidates, target_index")
    unknown = sorted(set(arrays) - {"history", "candidates", "target_index", "aug", "users"})
    if unknown:
        raise ValueError(
            f"rerank {split}: unknown arrays {unknown}; allowed: history, candidates, target_index, aug, users"
        )
    hist, cand, tgt = (_int_array(arrays, k, split) for k in ("history", "candidates", "target_index"))
    if hist.ndim != 2 or cand.ndim != 2 or tgt.ndim != 1 or not (len(hist) == len(cand) == len(tgt)):
        raise ValueError(
            f"rerank {split}: need history (N, L), candidates (N, C), target_index (N,), got shapes "
            f"{hist.shape}, {cand.shape}, {tgt.shape}"
        )
    n, c = cand.shape
    if n == 0 or c == 0:
        raise ValueError(f"rerank {split}: no samples or no candidates (candidates shape {cand.shape})")
    if hist.shape[1] > history_len:
        raise ValueError(
            f"rerank {split}: history has {hist.shape[1]} columns > history_len={history_len}; keep the most "
            "recent history_len items or raise history_len"
        )
    if c > MAX_CANDIDATES:
        raise ValueError(f"rerank {split}: {c} candidates per sample > {MAX_CANDIDATES}; shorten the lists")
    if hist.size and (hist.min() < 0 or hist.max() > num_items):
        raise ValueError(f"rerank {split}: history ids must be item id + 1 in [0, {num_items}] (0 = padding)")
    real = hist != 0
    if (real[:, :-1] & ~real[:, 1:]).any():
        raise ValueError(f"rerank {split}: history must be left-padded (zeros only before the first real item)")
    if cand.min() < 0 or cand.max() >= num_items:
        raise ValueError(f"rerank {split}: candidates must be 0-based item ids in [0, {num_items})")
    if tgt.min() < 0 or tgt.max() >= c:
        raise ValueError(f"rerank {split}: target_index must be a candidate position in [0, {c})")
    out = {"history": hist, "candidates": cand, "target_index": tgt}
    aug = arrays.get("aug")
    if aug is not None:
        if aug.ndim != 3 or aug.shape[:2] != (n, c) or aug.shape[2] == 0 or aug.dtype.kind != "f":
            raise ValueError(
                f"rerank {split}: aug must be float (N, C, A) = ({n}, {c}, A>0), got {aug.dtype} {aug.shape}"
            )
        if aug_dim is not None and aug.shape[2] != aug_dim:
            raise ValueError(f"rerank {split}: aug has A={aug.shape[2]}, expected {aug_dim} (as in training)")
        out["aug"] = aug
    elif aug_dim:
        raise ValueError(f"rerank {split}: the model takes aug (N, C, {aug_dim}): pass aug or an augmenter")
    if arrays.get("users") is not None:
        users = _int_array(arrays, "users", split)
        if users.shape != (n,) or (n and users.min() < 0):
            raise ValueError(f"rerank {split}: users must be (N,) = ({n},) non-negative ids, got shape {users.shape}")
        out["users"] = users
    elif need_users:
        raise ValueError(f"rerank {split}: an augmenter needs users (N,): pass the users array")
    return out


@torch.no_grad()
def _augmenter_dim(augmenter: nn.Module, split: dict) -> int:
    """A of the augmenter: its ``aug_dim`` attribute, else probed on one sample in eval mode."""
    dim = getattr(augmenter, "aug_dim", None)
    if dim is not None:
        return int(dim)
    was_training = augmenter.training
    augmenter.eval()
    dev = next((p.device for p in augmenter.parameters()), torch.device("cpu"))
    h, c, _t, _a, u = _batch(split, np.arange(1), dev)
    out = augmenter(u, h, c)
    augmenter.train(was_training)
    if out.dim() != 3 or tuple(out.shape[:2]) != tuple(c.shape):
        raise ValueError(f"rerank: augmenter returned shape {tuple(out.shape)}, expected (B, C, A) = {(*c.shape, 'A')}")
    return int(out.shape[2])


# ----------------------------------------------------------------------------- entry points


def train_reranker(
    name: str,
    train: dict[str, np.ndarray],
    valid: dict[str, np.ndarray],
    num_items: int,
    history_len: int,
    cfg: RerankerConfig,
    *,
    opts: rt.TrainOptions,
    augmenter: nn.Module | None = None,
    patience: int = 2,
) -> RerankResult:
    """Train backbone ``name`` on ``train`` and select its best epoch on ``valid`` (listwise softmax).

    Each split is a dict of arrays (see :mod:`ragrec.models.rerankers` for the conventions): ``history`` (N, L)
    shifted left-padded ids, ``candidates`` (N, C) 0-based ids, ``target_index`` (N,), optional ``aug``
    (N, C, A) float and ``users`` (N,). ``augmenter`` (exclusive with ``aug``; needs ``users``) is trained
    jointly and, afterwards, holds the best epoch's weights. ``opts``: where it runs, seed, ``out_dir``.
    """
    if name not in BACKBONES:
        raise ValueError(f"train_reranker: unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    if patience < 1:
        raise ValueError(f"train_reranker: patience={patience} must be >= 1 (epochs without improvement)")
    if augmenter is not None and (train.get("aug") is not None or valid.get("aug") is not None):
        raise ValueError("train_reranker: pass either precomputed aug arrays or an augmenter, not both")
    joint = augmenter is not None
    tr = check_split(train, "train", num_items, history_len, need_users=joint)
    aug_dim = _augmenter_dim(augmenter, tr) if joint else (tr["aug"].shape[2] if "aug" in tr else 0)
    va = check_split(valid, "valid", num_items, history_len, None if joint else aug_dim, need_users=joint)
    config = {
        "name": name,
        "num_items": int(num_items),
        "history_len": int(history_len),
        "aug_dim": int(aug_dim),
        "cfg": cfg.model_dump(),
        "train": tr,
        "valid": va,
        "augmenter": augmenter,
        "patience": int(patience),
        **opts.loop_config(f"rerank_{name}"),
    }
    history = rt.run_loop(train_loop, config, opts, name=f"rerank_{name}")
    out = Path(config["out_dir"])
    metrics = json.loads((out / "metrics.json").read_text())
    if joint:  # under Ray the worker trained a copy; standalone this restores the best epoch
        augmenter.load_state_dict(torch.load(out / AUGMENTER_FILE, map_location="cpu", weights_only=True))
    log.info(
        "rerank %s: best valid NDCG@10=%.4f MAP@10=%.4f (epoch %d)",
        name,
        metrics["ndcg@10"],
        metrics["map@10"],
        metrics["epoch"],
    )
    return RerankResult(model_dir=out, history=history, metrics=metrics)


class RerankScorer:
    """A trained reranker read from :func:`train_reranker`'s ``out_dir``: (N, C) scores of candidate lists.

    Eval mode, no grad, ``batch_size`` samples per forward pass (the scores do not depend on it). A model
    trained with precomputed ``aug`` needs ``aug`` at scoring time; one trained jointly needs its
    ``augmenter`` (with the trained weights: the one passed to :func:`train_reranker`, or any module of the
    same architecture after :meth:`load_augmenter`) and ``users``.
    """

    def __init__(self, model_dir: str | Path, device: str = "cpu", batch_size: int = _EVAL_CHUNK):
        model_dir = Path(model_dir)
        if not ((model_dir / META_FILE).exists() and (model_dir / MODEL_FILE).exists()):
            raise FileNotFoundError(f"{model_dir}: no {MODEL_FILE} / {META_FILE}; train the reranker first")
        meta = json.loads((model_dir / META_FILE).read_text())
        self.name, self.num_items = meta["name"], int(meta["num_items"])
        self.history_len, self.aug_dim = int(meta["history_len"]), int(meta["aug_dim"])
        self.cfg = RerankerConfig.model_validate(meta["cfg"])
        self.model_dir, self.device, self.batch_size = model_dir, device, int(batch_size)
        self.backbone = build_backbone(self.name, self.num_items, self.cfg, self.history_len, self.aug_dim)
        self.backbone.load_state_dict(torch.load(model_dir / MODEL_FILE, map_location=device, weights_only=True))
        self.backbone.to(device).eval()

    def load_augmenter(self, augmenter: nn.Module) -> nn.Module:
        """``augmenter`` with the jointly trained weights (``augmenter.pt``) loaded; returns it."""
        path = self.model_dir / AUGMENTER_FILE
        if not path.exists():
            raise FileNotFoundError(f"{path}: this reranker was not trained jointly with an augmenter")
        augmenter.load_state_dict(torch.load(path, map_location=self.device, weights_only=True))
        return augmenter

    def item_embeddings(self) -> np.ndarray:
        """(I, dim) float32 trained item embeddings ``h_i``."""
        return self.backbone.item_embeddings().detach().float().cpu().numpy()

    @torch.no_grad()
    def __call__(
        self,
        history: np.ndarray,
        candidates: np.ndarray,
        aug: np.ndarray | None = None,
        users: np.ndarray | None = None,
        augmenter: nn.Module | None = None,
    ) -> np.ndarray:
        """(N, C) float32 scores of ``candidates`` (N, C) given ``history`` (N, L) [``aug`` (N, C, A)]."""
        if augmenter is not None and aug is not None:
            raise ValueError(f"rerank {self.name}: pass either aug or an augmenter, not both")
        if augmenter is None and self.aug_dim and aug is None:
            raise ValueError(f"rerank {self.name}: the model takes aug (N, C, {self.aug_dim}): pass aug or augmenter")
        cand = np.asarray(candidates)
        if cand.ndim == 2 and len(cand) == 0:
            return np.zeros((0, cand.shape[1]), np.float32)
        arrays = {"history": history, "candidates": cand, "target_index": np.zeros(len(cand), np.int64)}
        if aug is not None:
            arrays["aug"] = aug
        if users is not None:
            arrays["users"] = users
        split = check_split(
            arrays,
            "scoring",
            self.num_items,
            self.history_len,
            None if augmenter is not None else self.aug_dim,
            need_users=augmenter is not None,
        )
        was_training = augmenter.training if augmenter is not None else False
        try:
            joint = _Joint(self.backbone, augmenter).eval()  # _score restores this (eval) mode afterwards
            return _score(joint, split, self.device, self.batch_size)
        finally:
            if augmenter is not None:
                augmenter.train(was_training)
