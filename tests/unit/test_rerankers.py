"""UR4Rec reranking backbones and their training loop: shapes, order (in)variance, padding, learning, scorer,
resume, joint training with an augmenter, input checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from ragrec.config import RerankerConfig
from ragrec.evaluation.ranking import ranking_metrics
from ragrec.models.rerankers import BACKBONES, build_backbone
from ragrec.training import ray_train as rt
from ragrec.training.rerank import (
    RerankScorer,
    _train_rows,
    train_reranker,
)

I, L, C, A = 50, 8, 10, 6
NAMES = list(BACKBONES)
SMALL = RerankerConfig(dim=16, heads=2, layers=2, dropout=0.1)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one torch thread, restored afterwards


def parity_data(n: int, seed: int, aug: bool = False, anti: bool = False) -> dict[str, np.ndarray]:
    """Each sample's history holds 3-8 items of one parity; among C candidates exactly one (the target)
    shares it. Every item is equally frequent, so only reading the history beats chance. ``anti``: the
    target is the one candidate of the other parity (what the parity task teaches is then wrong)."""
    rng = np.random.default_rng(seed)
    parity = rng.integers(0, 2, n)
    lens = rng.integers(3, L + 1, n)
    hist_items = 2 * rng.integers(0, I // 2, (n, L)) + parity[:, None]
    history = np.where(np.arange(L)[None] >= L - lens[:, None], hist_items + 1, 0)  # left-padded, shifted
    flip = 0 if anti else 1
    cand = 2 * rng.integers(0, I // 2, (n, C)) + (flip - parity[:, None]) % 2
    target = rng.integers(0, C, n)
    cand[np.arange(n), target] = 2 * rng.integers(0, I // 2, n) + (1 - flip + parity) % 2
    out = {"history": history.astype(np.int64), "candidates": cand.astype(np.int64), "target_index": target}
    if aug:
        out["aug"] = rng.normal(size=(n, C, A)).astype(np.float16)
    return out


def _inputs(b: int = 4, seed: int = 0, aug: bool = False):
    d = parity_data(b, seed, aug)
    a = torch.as_tensor(d["aug"].astype(np.float32)) if aug else None
    return torch.as_tensor(d["history"]), torch.as_tensor(d["candidates"]), a


@pytest.mark.parametrize("name", NAMES)
def test_shapes_with_and_without_aug(name):
    torch.manual_seed(0)
    h, c, a = _inputs(aug=True)
    plain = build_backbone(name, I, SMALL, L)
    assert plain(h, c).shape == (4, C)
    assert plain.item_embeddings().shape == (I, SMALL.dim)
    with pytest.raises(ValueError, match="aug_dim=0"):
        plain(h, c, a)
    augmented = build_backbone(name, I, SMALL, L, aug_dim=A)
    s = augmented(h, c, a)
    assert s.shape == (4, C) and torch.isfinite(s).all()
    assert augmented.candidate_input(c, a).shape == (4, C, SMALL.dim)
    with pytest.raises(ValueError, match="pass aug"):
        augmented(h, c)
    s.sum().backward()
    assert augmented.aug_proj.weight.grad is not None  # the augmented vector reaches the scores
    with pytest.raises(ValueError, match="history_len"):
        build_backbone(name, I, SMALL, L - 1)(h, c)


def test_unknown_backbone():
    with pytest.raises(ValueError, match="dlcm, prm, setrank, gru4rec, sasrec"):
        build_backbone("lightgcn", I, SMALL, L)


def test_setrank_is_permutation_equivariant():
    torch.manual_seed(1)
    model = build_backbone("setrank", I, SMALL, L, aug_dim=A).eval()
    h, c, a = _inputs(aug=True)
    perm = torch.randperm(C)
    with torch.no_grad():
        s, sp = model(h, c, a), model(h, c[:, perm], a[:, perm])
    torch.testing.assert_close(sp, s[:, perm], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["dlcm", "prm"])
def test_dlcm_and_prm_depend_on_the_list_order(name):
    torch.manual_seed(1)
    model = build_backbone(name, I, SMALL, L).eval()
    h, c, _ = _inputs()
    perm = torch.arange(C).flip(0)
    with torch.no_grad():
        s, sp = model(h, c), model(h, c[:, perm])
    assert (sp - s[:, perm]).abs().max() > 1e-3


@pytest.mark.parametrize("name", NAMES)
def test_scores_depend_on_history_but_not_on_padding(name):
    torch.manual_seed(2)
    model = build_backbone(name, I, SMALL, L).eval()
    h, c, _ = _inputs(b=6)
    h[:, :3] = 0  # at most 5 real items: the first 3 columns are padding in every row
    with torch.no_grad():
        s = model(h, c)
        torch.testing.assert_close(model(h[:, 3:], c), s, atol=1e-5, rtol=0)  # less left padding
        other = h.clone()
        other[:, -1] = (h[:, -1] % I) + 1  # another most recent item
        assert (model(other, c) - s).abs().max() > 1e-4
        empty = torch.zeros_like(h)
        assert torch.isfinite(model(empty, c)).all()


def _untrained_ndcg(name: str, cfg: RerankerConfig, seed: int, valid: dict) -> float:
    torch.manual_seed(seed)  # what worker_setup does before the model is built: the same initial weights
    model = build_backbone(name, I, cfg, L).eval()
    with torch.no_grad():
        s = model(torch.as_tensor(valid["history"]), torch.as_tensor(valid["candidates"])).numpy()
    return ranking_metrics(s, valid["target_index"])["ndcg@10"]


LEARN = RerankerConfig(dim=32, heads=2, layers=1, dropout=0.0, epochs=6, lr=1e-2, batch_size=32)


@pytest.mark.parametrize("name", NAMES)
def test_each_backbone_learns_the_parity_task(name, tmp_path):
    train, valid = parity_data(300, 0), parity_data(100, 1)
    opts = rt.TrainOptions(use_ray=False, out_dir=tmp_path, seed=3)
    res = train_reranker(name, train, valid, I, L, LEARN, opts=opts, patience=1)
    before = _untrained_ndcg(name, LEARN, 3, valid)
    assert before < 0.6  # chance for 10 candidates is ~0.39 (untrained: 0.44-0.50)
    assert res.metrics["ndcg@10"] > max(0.8, before + 0.3), (before, res.history)
    assert {"ndcg@1", "map@10", "ndcg@20", "epoch"} <= set(res.metrics)
    assert res.metrics["ndcg@10"] == max(h["valid_ndcg@10"] for h in res.history)  # the best epoch is kept
    files = {p.name for p in tmp_path.iterdir()}
    assert {"model.pt", "reranker.json", "history.json", "metrics.json"} <= files
    meta = json.loads((tmp_path / "reranker.json").read_text())
    assert (meta["name"], meta["num_items"], meta["history_len"], meta["aug_dim"]) == (name, I, L, 0)
    scores = RerankScorer(tmp_path)(valid["history"], valid["candidates"])
    assert ranking_metrics(scores, valid["target_index"])["ndcg@10"] == pytest.approx(res.metrics["ndcg@10"])


def test_scorer_reproduces_training_scores_and_is_batch_size_independent(tmp_path):
    train, valid = parity_data(200, 0, aug=True), parity_data(60, 1, aug=True)
    cfg = RerankerConfig(dim=16, heads=2, layers=1, dropout=0.2, epochs=2, lr=1e-2, batch_size=32)
    opts = rt.TrainOptions(out_dir=tmp_path, seed=0)
    res = train_reranker("prm", train, valid, I, L, cfg, opts=opts)
    assert json.loads((tmp_path / "reranker.json").read_text())["aug_dim"] == A
    mm = np.lib.format.open_memmap(tmp_path / "aug.npy", mode="w+", dtype=np.float16, shape=valid["aug"].shape)
    mm[:] = valid["aug"]
    big = RerankScorer(tmp_path)(valid["history"], valid["candidates"], aug=mm)
    assert big.dtype == np.float32 and big.shape == (60, C)
    small = RerankScorer(tmp_path, batch_size=7)(valid["history"], valid["candidates"], aug=valid["aug"])
    np.testing.assert_allclose(small, big, atol=1e-5)
    m = ranking_metrics(big, valid["target_index"])
    assert {k: m[k] for k in m} == pytest.approx({k: res.metrics[k] for k in m})  # the training-time scores
    with pytest.raises(ValueError, match="pass aug"):
        RerankScorer(tmp_path)(valid["history"], valid["candidates"])


def test_standalone_run_resumes_from_checkpoint_dir(tmp_path, monkeypatch, kill_after_epoch):
    train, valid = parity_data(200, 0), parity_data(60, 1)
    cfg = RerankerConfig(dim=16, heads=2, layers=1, dropout=0.2, epochs=4, lr=1e-2, batch_size=32)
    ref = train_reranker("sasrec", train, valid, I, L, cfg, opts=rt.TrainOptions(out_dir=tmp_path / "ref"), patience=9)
    opts = rt.TrainOptions(out_dir=tmp_path / "out", checkpoint_dir=tmp_path / "ckpt", report_every=1)
    kill_after_epoch(lambda: train_reranker("sasrec", train, valid, I, L, cfg, opts=opts, patience=9), epoch=1)
    assert not (tmp_path / "out" / "model.pt").exists()
    assert rt.load_state(tmp_path / "ckpt")["epoch"] == 1

    trained = []
    original_batches = rt.EpochLoop.train_batches

    def spy(self, epoch, batches, step):
        trained.append(epoch)
        return original_batches(self, epoch, batches, step)

    monkeypatch.setattr(rt.EpochLoop, "train_batches", spy)
    res = train_reranker("sasrec", train, valid, I, L, cfg, opts=opts, patience=9)
    assert trained == [2, 3]  # continued after the last checkpoint rather than restarted
    assert [h["epoch"] for h in res.history] == [0, 1, 2, 3]
    assert [h["loss"] for h in res.history] == pytest.approx([h["loss"] for h in ref.history], rel=1e-5)
    assert res.metrics == pytest.approx(ref.metrics)


def test_early_stopping_publishes_the_best_epoch(tmp_path):
    train, valid = parity_data(300, 0), parity_data(100, 1, anti=True)  # training makes valid worse
    cfg = RerankerConfig(dim=16, heads=1, layers=1, dropout=0.0, epochs=20, lr=1e-2, batch_size=32)
    res = train_reranker("gru4rec", train, valid, I, L, cfg, opts=rt.TrainOptions(out_dir=tmp_path), patience=2)
    assert len(res.history) == 3 and res.metrics["epoch"] == 0  # stopped 2 epochs after the best (first) one
    assert res.history[-1]["valid_ndcg@10"] < res.metrics["ndcg@10"] - 0.05
    scores = RerankScorer(tmp_path)(valid["history"], valid["candidates"])  # the published model is epoch 0's
    assert ranking_metrics(scores, valid["target_index"])["ndcg@10"] == pytest.approx(res.metrics["ndcg@10"])


class ToyAugmenter(nn.Module):
    """A learnable per-item vector plus a per-user vector for every candidate: (B, C, A)."""

    def __init__(self, num_users: int):
        super().__init__()
        self.items = nn.Embedding(I, A)
        self.users = nn.Embedding(num_users, A)

    def forward(self, users, history, candidates):
        return self.items(candidates) + self.users(users)[:, None]


def test_joint_training_with_an_augmenter(tmp_path):
    torch.manual_seed(0)
    train, valid = parity_data(200, 0), parity_data(60, 1)
    train["users"], valid["users"] = np.arange(200) % 20, np.arange(60) % 20
    augmenter = ToyAugmenter(20)
    before = {k: v.clone() for k, v in augmenter.state_dict().items()}
    cfg = RerankerConfig(dim=16, heads=2, layers=1, dropout=0.0, epochs=2, lr=1e-2, batch_size=32)
    opts = rt.TrainOptions(out_dir=tmp_path)
    res = train_reranker("setrank", train, valid, I, L, cfg, opts=opts, augmenter=augmenter)
    assert (tmp_path / "augmenter.pt").exists()
    assert json.loads((tmp_path / "reranker.json").read_text())["aug_dim"] == A
    assert not torch.equal(augmenter.items.weight, before["items.weight"])  # trained with the backbone
    scorer = RerankScorer(tmp_path)
    fresh = scorer.load_augmenter(ToyAugmenter(20))
    scores = scorer(valid["history"], valid["candidates"], users=valid["users"], augmenter=fresh)
    assert ranking_metrics(scores, valid["target_index"])["ndcg@10"] == pytest.approx(res.metrics["ndcg@10"])
    with pytest.raises(ValueError, match="not both"):
        train_reranker("setrank", parity_data(20, 0, aug=True), valid, I, L, cfg, opts=opts, augmenter=augmenter)
    with pytest.raises(ValueError, match="needs users"):
        train_reranker("setrank", parity_data(20, 0), valid, I, L, cfg, opts=opts, augmenter=augmenter)


def test_joint_training_under_ray_train_equals_the_in_process_loop(ray_session, tmp_path):
    """UR4Rec's augmented rerankers: the augmenter goes to the Ray Train worker and its trained weights come back
    into the caller's module, as in the in-process loop."""
    import sys

    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # ToyAugmenter travels by value to the worker
    train, valid = parity_data(120, 0), parity_data(40, 1)
    train["users"], valid["users"] = np.arange(120) % 20, np.arange(40) % 20
    cfg = RerankerConfig(dim=16, heads=2, layers=1, dropout=0.0, epochs=1, lr=1e-2, batch_size=32)
    results = {}
    for side, use_ray in (("local", False), ("ray", True)):
        torch.manual_seed(0)
        augmenter = ToyAugmenter(20)
        opts = rt.TrainOptions(use_ray=use_ray, out_dir=tmp_path / side, storage_path=str(tmp_path / f"{side}_rs"))
        res = train_reranker("setrank", train, valid, I, L, cfg, opts=opts, augmenter=augmenter)
        results[side] = (res, augmenter.state_dict())
    (local, local_aug), (on_ray, ray_aug) = results["local"], results["ray"]
    assert on_ray.metrics == pytest.approx(local.metrics, rel=1e-5)
    for k in local_aug:
        torch.testing.assert_close(ray_aug[k], local_aug[k], atol=1e-5, rtol=1e-5)


def test_input_checks_name_the_array(tmp_path):
    opts = rt.TrainOptions(out_dir=tmp_path)
    valid = parity_data(10, 1)

    def run(train, name="dlcm"):
        return train_reranker(name, train, valid, I, L, SMALL, opts=opts)

    with pytest.raises(ValueError, match="unknown backbone 'foo'"):
        run(parity_data(10, 0), "foo")
    bad = parity_data(10, 0)
    bad["candidates"][0, 0] = I
    with pytest.raises(ValueError, match="candidates must be 0-based"):
        run(bad)
    bad = parity_data(10, 0)
    bad["history"][0] = [0, 3, 0, 4, 5, 6, 7, 8]
    with pytest.raises(ValueError, match="history must be left-padded"):
        run(bad)
    bad = parity_data(10, 0)
    bad["target_index"][0] = C
    with pytest.raises(ValueError, match="target_index"):
        run(bad)
    with pytest.raises(ValueError, match="aug has A=3"):
        train_reranker(
            "dlcm", parity_data(10, 0, aug=True), {**valid, "aug": np.zeros((10, C, 3))}, I, L, SMALL, opts=opts
        )
    with pytest.raises(ValueError, match="valid: the model takes aug"):
        train_reranker("dlcm", parity_data(10, 0, aug=True), valid, I, L, SMALL, opts=opts)


def test_max_train_samples_is_a_seeded_subset():
    rows = _train_rows(100, 30, seed=5)
    assert len(rows) == 30 and len(set(rows)) == 30 and (np.diff(rows) > 0).all()
    np.testing.assert_array_equal(rows, _train_rows(100, 30, seed=5))
    assert not np.array_equal(rows, _train_rows(100, 30, seed=6))
    np.testing.assert_array_equal(_train_rows(10, None, seed=5), np.arange(10))
