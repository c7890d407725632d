"""Ray Train loop for the DeepFM CTR baseline (RALLRec Table 1, "ID-based CTR model").

BCE on the samples' labels with Adam; after every epoch the validation AUC decides early stopping and
the best epoch's weights are the ones kept. ``train_loop(config)`` runs standalone or as a
``TorchTrainer`` worker (every rank evaluates the full validation set with the same replicated
weights, so all ranks take the same stop decision). Outputs in ``out_dir``: ``model.pt`` (best state
dict), ``deepfm.json`` (feature spec + config), ``history.json`` (per epoch: loss, valid AUC /
LogLoss, seconds, and ``best_epoch``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.nn.functional as F

from ragrec.data.errors import DataError
from ragrec.evaluation.metrics import ctr_metrics
from ragrec.models.deepfm import (
    DeepFM,
    DeepFMConfig,
    FeatureSpec,
    build_model,
    build_spec,
    config_from,
    encode_features,
)
from ragrec.training import ray_train as rt

MODEL_FILE = "model.pt"
SPEC_FILE = "deepfm.json"
HISTORY_FILE = "history.json"


@dataclass
class DeepFMResult:
    model_dir: Path
    history: list[dict]  # per epoch: epoch, loss, seconds[, valid_auc, valid_logloss]; best_epoch in the last
    predict_fn: Callable[[pa.Table], np.ndarray]  # samples (N rows) -> (N,) float32 P(label=1)


# ----------------------------------------------------------------------------------------------------
# the loop


@torch.no_grad()
def predict_logits(model: torch.nn.Module, x: dict[str, torch.Tensor], batch_size: int) -> torch.Tensor:
    """(N,) logits of encoded features ``x`` in eval mode, ``batch_size`` rows at a time (on CPU)."""
    core = rt.unwrap(model)
    was = core.training
    core.eval()
    dev = next(core.parameters()).device
    n = len(next(iter(x.values())))
    out = [core({k: v[s : s + batch_size].to(dev) for k, v in x.items()}).cpu() for s in range(0, n, batch_size)]
    core.train(was)
    return torch.cat(out) if out else torch.zeros(0)


def train_loop(config: dict) -> list[dict]:
    """Train DeepFM. ``config`` keys: ``spec`` (FeatureSpec JSON), ``cfg`` (DeepFMConfig dict),
    ``train_x`` {field: (N,) or (N, L) int64 array}, ``train_y`` (N,) float32; optional ``valid_x``,
    ``valid_y``; ``seed``; ``out_dir``; optional ``checkpoint_dir``, ``report_every`` (see
    :class:`ray_train.EpochLoop`). Returns the history."""
    cfg = DeepFMConfig.model_validate(config["cfg"])
    spec = FeatureSpec.from_json(config["spec"])
    seed = int(config.get("seed", 0))
    rank, world = rt.world_rank(), rt.world_size()
    dev = rt.torch_device()
    x = {k: torch.as_tensor(v) for k, v in config["train_x"].items()}
    y = torch.as_tensor(config["train_y"], dtype=torch.float32)
    has_valid = config.get("valid_x") is not None
    if has_valid:
        vx = {k: torch.as_tensor(v) for k, v in config["valid_x"].items()}
        vy = np.asarray(config["valid_y"])
    torch.manual_seed(seed)  # same init and dropout stream on every rank / every run
    model = rt.prepare_model(build_model(spec, cfg), dev)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    # early stopping on the validation AUC; the best epoch's weights are restored when the loop ends
    select = ("valid_auc", cfg.patience) if has_valid else None
    loop = rt.EpochLoop("deepfm", config, model, optimizer, cfg.epochs, select=select)

    def step(idx: torch.Tensor) -> tuple[torch.Tensor, int]:
        logits = model({k: v[idx].to(dev) for k, v in x.items()})
        return F.binary_cross_entropy_with_logits(logits, y[idx].to(dev)), idx.numel()

    def train_epoch(epoch: int) -> dict:
        batches = rt.epoch_batches(len(y), cfg.batch_size, seed=seed, epoch=epoch, rank=rank, world_size=world)
        row: dict[str, Any] = {"loss": loop.train_batches(epoch, batches, step)}
        if has_valid:
            probs = torch.sigmoid(predict_logits(model, vx, cfg.eval_batch_size)).numpy()
            m = ctr_metrics(vy, probs)
            row |= {"valid_auc": m["auc"], "valid_logloss": m["logloss"]}
        return row

    history = loop.run(train_epoch)
    final_state = rt.unwrap(model).state_dict()
    if history and not has_valid:
        history[-1]["best_epoch"] = history[-1]["epoch"]

    def write(out: Path) -> None:
        torch.save(final_state, out / MODEL_FILE)
        (out / SPEC_FILE).write_text(json.dumps({"spec": json.loads(spec.to_json()), "cfg": cfg.model_dump()}))
        (out / HISTORY_FILE).write_text(json.dumps(history, indent=1))

    loop.publish(write)
    return history


# ----------------------------------------------------------------------------------------------------
# driver side


def _labels(samples: pa.Table, what: str) -> np.ndarray:
    """(N,) float32 0/1 labels of a samples table; DataError when missing, null or not 0/1."""
    if samples.num_rows == 0:
        raise DataError("no samples", file=f"{what} samples", fix=f"pass a non-empty {what} split")
    if "label" not in samples.schema.names:
        raise DataError(
            f"no 'label' column (columns: {', '.join(samples.schema.names)})",
            file=f"{what} samples",
            field="label",
            fix="pass a samples table (ragrec.data.rallrec_samples)",
        )
    col = samples.column("label")
    y = col.to_numpy(zero_copy_only=False).astype(np.float64)  # nulls -> NaN
    bad = np.flatnonzero(~np.isin(y, (0.0, 1.0)))
    if len(bad):
        raise DataError(
            f"label={col[int(bad[0])].as_py()} is not 0/1",
            file=f"{what} samples",
            line=int(bad[0]),
            line_word="row",
            field="label",
            fix="labels must be 0 or 1 (no nulls)",
        )
    return y.astype(np.float32)


def _arrays(x: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in x.items()}


def train_deepfm(
    train: pa.Table,
    valid: pa.Table | None,
    items: pa.Table,
    users: pa.Table | None,
    cfg: dict | DeepFMConfig | None = None,
    *,
    opts: rt.TrainOptions,
) -> DeepFMResult:
    """Train DeepFM on ``train`` samples (early stopping on ``valid`` AUC when given).

    ``items`` / ``users``: the canonical tables the samples index (side features); ``cfg``: a
    :class:`~ragrec.models.deepfm.DeepFMConfig` or its dict (unknown keys raise); ``opts``: where it
    runs, seed, ``out_dir`` (:class:`TrainOptions`). The returned ``predict_fn(samples) -> (N,) float32``
    probabilities uses the saved model and these tables.

    Raises:
        DataError: unknown feature column, missing/invalid labels or ids, a one-class validation set.
    """
    conf = config_from(cfg)
    n_users = None
    if users is None:  # ids only: the users are those of the training / validation samples
        n_users = 1 + max(int(pc.max(t["user_id"]).as_py()) for t in (train, valid) if t is not None and t.num_rows)
    spec = build_spec(items, users, conf, n_users=n_users)
    config: dict[str, Any] = {
        "spec": spec.to_json(),
        "cfg": conf.model_dump(),
        "train_x": _arrays(encode_features(train, items, users, spec)),
        "train_y": _labels(train, "train"),
        **opts.loop_config("deepfm"),
    }
    if valid is not None:
        vy = _labels(valid, "valid")
        if vy.min() == vy.max():
            raise DataError(
                f"all {len(vy)} labels are {int(vy[0])}: AUC is undefined",
                file="valid samples",
                field="label",
                fix="pass a validation split with both classes, or valid=None",
            )
        config["valid_x"], config["valid_y"] = _arrays(encode_features(valid, items, users, spec)), vy
    history = rt.run_loop(train_loop, config, opts, name="deepfm")
    model_dir = Path(config["out_dir"])
    predictor = DeepFMPredictor(model_dir)
    return DeepFMResult(model_dir, history, lambda samples: predictor(samples, items, users))


class DeepFMPredictor:
    """A trained DeepFM loaded once from ``model_dir``: ``predictor(samples, items, users) -> (N,) float32``."""

    def __init__(self, model_dir: str | Path, device: str = "cpu"):
        model_dir = Path(model_dir)
        meta_path = model_dir / SPEC_FILE
        if not meta_path.exists():
            raise FileNotFoundError(f"{meta_path} not found: model_dir must be the out_dir of train_deepfm")
        meta = json.loads(meta_path.read_text())
        self.spec = FeatureSpec.from_json(json.dumps(meta["spec"]))
        self.cfg = DeepFMConfig.model_validate(meta["cfg"])
        self.model: DeepFM = build_model(self.spec, self.cfg)
        self.model.load_state_dict(torch.load(model_dir / MODEL_FILE, map_location=device, weights_only=True))
        self.model.to(device).eval()

    def __call__(self, samples: pa.Table, items: pa.Table, users: pa.Table | None) -> np.ndarray:
        x = encode_features(samples, items, users, self.spec)
        return torch.sigmoid(predict_logits(self.model, x, self.cfg.eval_batch_size)).numpy().astype(np.float32)


def predict_deepfm(model_dir: str | Path, samples: pa.Table, items: pa.Table, users: pa.Table | None) -> np.ndarray:
    """(N,) float32 P(label=1) of ``samples`` from the DeepFM saved in ``model_dir`` (see :func:`train_deepfm`)."""
    return DeepFMPredictor(model_dir)(samples, items, users)
