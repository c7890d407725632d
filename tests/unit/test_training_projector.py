"""Projector training: recovers a hidden linear text -> colla map well enough for retrieval."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ragrec.config import ProjectorConfig
from ragrec.models.projector import Projector
from ragrec.training.projector import train_projector
from ragrec.training.ray_train import TrainOptions

N, D_TEXT, D_COLLA = 300, 32, 16
CFG = ProjectorConfig(hidden_dim=64, epochs=40, lr=3e-3, batch_size=64, temperature=0.1)


def synthetic_pairs(seed: int = 0):
    rng = np.random.default_rng(seed)
    text = rng.normal(size=(N, D_TEXT)).astype(np.float32)
    w = rng.normal(size=(D_TEXT, D_COLLA))
    colla = (text @ w + 0.3 * rng.normal(size=(N, D_COLLA)) * np.sqrt(D_TEXT)).astype(np.float32)
    return text, colla


def retrieval_top1(pred: np.ndarray, target: np.ndarray) -> float:
    p = pred / np.linalg.norm(pred, axis=1, keepdims=True)
    t = target / np.linalg.norm(target, axis=1, keepdims=True)
    return float(((p @ t.T).argmax(1) == np.arange(len(p))).mean())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    text, colla = synthetic_pairs()
    out = tmp_path_factory.mktemp("proj")
    return train_projector(text, colla, CFG, opts=TrainOptions(seed=1, out_dir=out)), out, text, colla


def test_retrieves_the_right_colla_row_far_above_chance(trained):
    res, _, text, colla = trained
    assert res.ssl_emb.shape == (N, D_COLLA) and res.ssl_emb.dtype == np.float32
    acc = retrieval_top1(res.ssl_emb, colla)
    assert acc > 0.5  # chance is 1/300
    assert retrieval_top1(text[:, :D_COLLA], colla) < 0.1  # the raw text space does not align
    assert res.history[-1]["align_top1"] == pytest.approx(acc, abs=1e-6)


def test_loss_decreases_and_saved_projector_reproduces_ssl_emb(trained):
    res, out, text, _ = trained
    losses = [h["loss"] for h in res.history]
    assert len(losses) == CFG.epochs
    assert losses[-1] < 0.3 * losses[0]
    mlp = Projector(D_TEXT, CFG.hidden_dim, D_COLLA)
    mlp.load_state_dict(torch.load(out / "projector.pt", weights_only=True))
    with torch.no_grad():
        again = mlp(torch.from_numpy(text)).numpy()
    np.testing.assert_allclose(again, res.ssl_emb, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.load(out / "ssl_emb.npy"), res.ssl_emb)
    assert len(json.loads((out / "history.json").read_text())) == CFG.epochs


def test_bad_inputs_raise_clear_errors(tmp_path):
    text, colla = synthetic_pairs()
    with pytest.raises(ValueError, match=r"one row per item each, got shapes \(300, 32\) and \(299, 16\)"):
        train_projector(text, colla[:-1], CFG, opts=TrainOptions(out_dir=tmp_path))
    colla = colla.copy()
    colla[7, 3] = np.nan
    with pytest.raises(ValueError, match="colla_emb row 7 has NaN/inf"):
        train_projector(text, colla, CFG, opts=TrainOptions(out_dir=tmp_path))


@pytest.mark.ray
def test_ray_path_gives_same_embeddings(ray_session, trained, tmp_path):
    _res_local, _, text, colla = trained
    cfg = CFG.model_copy(update={"epochs": 3})
    local = train_projector(text, colla, cfg, opts=TrainOptions(seed=1, out_dir=tmp_path / "local"))
    on_ray = TrainOptions(use_ray=True, seed=1, out_dir=tmp_path / "ray", storage_path=str(tmp_path / "storage"))
    res = train_projector(text, colla, cfg, opts=on_ray)
    assert res.ssl_emb.shape == (N, D_COLLA)
    np.testing.assert_allclose(res.ssl_emb, local.ssl_emb, rtol=1e-4, atol=1e-5)
    assert [h["epoch"] for h in res.history] == [0, 1, 2]
