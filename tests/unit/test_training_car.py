"""CAR: neighbour sampling / masks, InfoNCE tuning that learns non-textual groups, Ray Train path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ragrec.config import CARConfig
from ragrec.llm.registry import model_path
from ragrec.training.car import (
    encode_users,
    false_negative_mask,
    sample_positives,
    train_car,
    usable_anchors,
)
from ragrec.training.ray_train import TrainOptions

GROUPS, PER_GROUP, KC = 2, 8, 3
U = GROUPS * PER_GROUP
CFG = CARConfig(epochs=4, lr=2e-4, batch_size=8, max_tokens=32, kc=KC)


# MiniLM steps on a shared 2-CPU box are ~10x slower with 2 contending threads than with 1
pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")


def toy_users(seed: int = 0):
    """Docs of random vocabulary words (no shared theme); neighbours = KC members of the same group.

    Group membership is invisible in the text, so only training can pull neighbours together.
    """
    rng = np.random.default_rng(seed)
    vocab = [
        w
        for w in (Path(model_path("minilm-l6")) / "vocab.txt").read_text().split("\n")
        if w.isalpha() and w.isascii() and len(w) >= 4
    ]
    words = rng.choice(vocab, 300, replace=False)
    group = np.repeat(np.arange(GROUPS), PER_GROUP)
    docs = [" ".join(rng.choice(words, 6, replace=False)) for _ in range(U)]
    nb = np.stack(
        [rng.choice(np.flatnonzero((group == group[u]) & (np.arange(U) != u)), KC, replace=False) for u in range(U)]
    )
    return docs, nb.astype(np.int64), group


def neighbour_gap(emb: np.ndarray, nb: np.ndarray, group: np.ndarray) -> float:
    """mean cos(anchor, neighbour) - mean cos(anchor, other-group user)."""
    sim = emb @ emb.T
    pos = sim[np.arange(len(emb))[:, None], nb].mean()
    neg = sim[group[:, None] != group[None, :]].mean()
    return float(pos - neg)


# ----------------------------------------------------------------------------- pure helpers


def test_usable_anchors_drop_users_without_doc_or_neighbours():
    docs = ["a b", "", "c d", "e f", "g h"]
    nb = np.array([[1, 2], [0, 2], [2, -1], [-1, -1], [4, 0]])
    valid = np.array([True, True, True, True, False])
    nb2, anchors = usable_anchors(docs, nb, valid)
    # 0: neighbour 1 has no doc -> only 2; 1: no doc; 2: only itself -> none; 3: none; 4: invalid
    np.testing.assert_array_equal(anchors, [0])
    np.testing.assert_array_equal(nb2, [[-1, 2], [0, 2], [-1, -1], [-1, -1], [-1, 0]])
    with pytest.raises(ValueError, match="only 1 user"):
        train_car(docs, nb, CFG, valid=valid, opts=TrainOptions(out_dir="/nonexistent"))
    with pytest.raises(ValueError, match=r"neighbours must be \(U, kc\) with U=5"):
        usable_anchors(docs, nb[:3])


def test_sample_positives_draws_uniformly_among_usable_neighbours():
    nb = np.array([[3, -1, 5, -1], [-1, -1, -1, 7]])
    anchors = np.array([0, 1, 0, 1])
    rng = np.random.default_rng(0)
    draws = np.stack([sample_positives(nb, anchors, rng) for _ in range(400)])  # (400, 4)
    assert set(np.unique(draws[:, [0, 2]])) == {3, 5}
    assert (draws[:, [1, 3]] == 7).all()
    assert 0.4 < (draws[:, 0] == 3).mean() < 0.6


def test_false_negative_mask():
    nb = np.array([[1, 2], [0, 3], [3, 0], [2, 1]])
    anchors, positives = np.array([0, 1, 2, 3]), np.array([1, 3, 3, 2])
    m = false_negative_mask(anchors, positives, nb)
    assert not m.diagonal().any()
    # anchor 0 (neighbours 1, 2): positive 3 is a real negative; positive 2 (of anchor 3) is a neighbour
    np.testing.assert_array_equal(m[0], [False, False, False, True])
    # anchor 1 (neighbours 0, 3): positive 1 is itself, positive 3 its own positive / a neighbour; 2 is a negative
    np.testing.assert_array_equal(m[1], [True, False, True, False])
    # anchor 3: positives 3 are the anchor itself
    np.testing.assert_array_equal(m[3], [True, True, True, False])


# ----------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    docs, nb, _group = toy_users()
    out = tmp_path_factory.mktemp("car")
    res = train_car(docs, nb, CFG, opts=TrainOptions(seed=3, out_dir=out))
    return res, out


def test_tuning_pulls_collaborative_neighbours_together(tuned):
    res, _ = tuned
    docs, nb, group = toy_users()
    before = neighbour_gap(encode_users("minilm-l6", docs, max_tokens=CFG.max_tokens), nb, group)
    after_emb = encode_users(res.model_dir, docs)
    after = neighbour_gap(after_emb, nb, group)
    assert abs(before) < 0.1  # random words: the untuned encoder sees no groups
    assert after > before + 0.25  # measured ~0.5
    assert after_emb.shape == (U, 384) and after_emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(after_emb, axis=1), 1.0, atol=1e-5)


def test_outputs_loss_and_saved_model(tuned):
    from sentence_transformers import SentenceTransformer

    res, out = tuned
    assert res.model_dir == out / "model"
    losses = [h["loss"] for h in res.history]
    assert [h["epoch"] for h in res.history] == list(range(CFG.epochs))
    assert losses[-1] < 0.75 * losses[0]  # starts near ln(8) (one positive among <= 8 in-batch candidates)
    assert res.history[0]["anchors"] == U
    assert json.loads((out / "history.json").read_text()) == res.history
    st = SentenceTransformer(str(res.model_dir), device="cpu")
    assert st.max_seq_length == CFG.max_tokens


@pytest.mark.ray
@pytest.mark.slow  # worker-group start on 2 shared CPUs
def test_ray_train_one_epoch_matches_standalone(ray_session, tmp_path):
    docs, nb, _ = toy_users(1)
    cfg = CFG.model_copy(update={"epochs": 1})
    local = train_car(docs, nb, cfg, opts=TrainOptions(seed=5, out_dir=tmp_path / "local"))
    on_ray = TrainOptions(use_ray=True, seed=5, out_dir=tmp_path / "ray", storage_path=str(tmp_path / "rs"))
    res = train_car(docs, nb, cfg, opts=on_ray)
    assert res.model_dir == tmp_path / "ray" / "model" and (res.model_dir / "modules.json").exists()
    assert len(res.history) == 1 and res.history[0]["epoch"] == 0
    emb = encode_users(res.model_dir, docs)
    assert emb.shape == (U, 384)
    # same loop, seeds and single worker: the same weights as the in-process run
    np.testing.assert_allclose(emb, encode_users(local.model_dir, docs), atol=2e-4)
    assert res.history[0]["loss"] == pytest.approx(local.history[0]["loss"], rel=1e-3)
