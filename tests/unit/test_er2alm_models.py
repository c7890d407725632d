"""ER2ALM noise control (Gumbel-sigmoid, retain/abandon bank, Eq. 12, denoise) and the GNN (side embeddings,
ablation flags, BPR with augmented pairs)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from ragrec.config import GNNConfig, NoiseConfig
from ragrec.models.er2alm_gnn import ER2ALMGNN, item_side_features, user_side_features
from ragrec.models.lightgcn import bipartite_edge_index, build_model, normalized_adjacency
from ragrec.models.noise_control import (
    EdgeWeightMLP,
    ReliabilityBank,
    denoise,
    gumbel_sigmoid,
    reliability_loss,
)
from ragrec.training.er2alm import augmented_count, augmented_pairs, train_er2alm
from ragrec.training.ray_train import TrainOptions

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one torch thread, restored afterwards


# ----------------------------------------------------------------------------- Gumbel-sigmoid (Eq. 7-8)


def test_gumbel_sigmoid_becomes_binary_as_tau_goes_to_zero():
    w = torch.randn(20_000, generator=torch.Generator().manual_seed(0)) * 2
    j = gumbel_sigmoid(w, 1e-4, generator=torch.Generator().manual_seed(1))
    near = torch.minimum(j, 1 - j) < 1e-3
    assert near.float().mean() > 0.99
    soft = gumbel_sigmoid(w, 1.0, generator=torch.Generator().manual_seed(1))
    assert (torch.minimum(soft, 1 - soft) < 1e-3).float().mean() < 0.05  # tau = 1 is not binary


@pytest.mark.parametrize("w", [-2.0, 0.0, 1.5])
def test_gumbel_sigmoid_is_a_relaxed_bernoulli_of_sigmoid_w(w):
    gen = torch.Generator().manual_seed(2)
    wt = torch.full((200_000,), w)
    target = torch.sigmoid(torch.tensor(w)).item()
    hard = gumbel_sigmoid(wt, 1.0, generator=gen, hard=True)
    assert set(hard.unique().tolist()) <= {0.0, 1.0}
    assert hard.mean().item() == pytest.approx(target, abs=0.01)  # P(J > 0.5) = sigmoid(w) at any tau
    assert gumbel_sigmoid(wt, 0.01, generator=gen).mean().item() == pytest.approx(target, abs=0.01)
    soft = gumbel_sigmoid(wt, 1.0, generator=gen).mean().item()
    if w != 0:  # the soft mean at tau = 1 is pulled toward 0.5: the noise is really added
        assert abs(soft - 0.5) < abs(target - 0.5) - 0.03


def test_gumbel_sigmoid_bias_bounds_eps_and_seed_reproduces():
    w = torch.zeros(50_000)
    j = gumbel_sigmoid(w, 1.0, generator=torch.Generator().manual_seed(3), bias=0.1)
    assert j.min() >= 0.1 - 1e-6 and j.max() <= 0.9 + 1e-6  # eps in (bias, 1 - bias), w = 0, tau = 1 -> J = eps
    assert j.min() < 0.11 and j.max() > 0.89
    again = gumbel_sigmoid(w, 1.0, generator=torch.Generator().manual_seed(3), bias=0.1)
    assert torch.equal(j, again)
    x = torch.tensor([0.3, -0.2], requires_grad=True)
    gumbel_sigmoid(x, 0.5, generator=torch.Generator().manual_seed(0), hard=True).sum().backward()
    assert x.grad is not None and (x.grad > 0).all()  # straight-through gradient


# ----------------------------------------------------------------------------- reliability bank (Alg. 1, Eq. 10)

R, A = [1.0, 0.0], [0.0, 1.0]
SEQ_EMB = np.array([R, A, [1, 0.1], [1, -0.1], [0.1, 1], [1, 0.2], [0.2, 1], R, [0.3, 1]], dtype=float)
SEQ_J = np.array([0.9, 0.1, 0.8, 0.4, 0.2, 0.9, 0.9, 0.1, 0.95])
# fill: 0 retain, 1 abandon, 2 retain (r=2), 3 retain (J == theta; a=1 < N so still filling: r=3), 4 abandon (a=2,
# both full); then frozen sets: 5 J high, near retain -> keep; 6 near abandon -> drop; 7 low J -> drop; 8 -> drop
SEQ_KEEP = [True, False, True, True, False, True, False, False, False]


@pytest.mark.parametrize("split", [9, 1, 3, 5])
def test_bank_hand_made_sequence_exact_decisions_and_sizes(split):
    bank = ReliabilityBank(2, 0.4)
    keep = np.concatenate([bank.decide(SEQ_EMB[:split], SEQ_J[:split]), bank.decide(SEQ_EMB[split:], SEQ_J[split:])])
    assert keep.tolist() == SEQ_KEEP
    assert (bank.retain_size, bank.abandon_size) == (3, 2)
    s = bank.stats()
    assert (s["seen"], s["fill_retained"], s["fill_abandoned"]) == (9, 3, 2)
    assert (s["kept_delta"], s["dropped_delta"], s["dropped_low_j"]) == (1, 2, 1)


def test_bank_uses_the_set_means_and_never_keeps_low_j():
    bank = ReliabilityBank(1, 0.5)
    bank.decide(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([0.9, 0.1]))  # retain ~ e1, abandon ~ e2
    x = np.array([[2.0, 1.0], [1.0, 2.0], [5.0, 0.0]])
    assert bank.decide(x, np.array([0.6, 0.6, 0.49])).tolist() == [True, False, False]
    assert (bank.retain_size, bank.abandon_size) == (1, 1)  # frozen once both are full
    # mean-cosine variant: the same here (unit members), differs from centroid only through the set norms
    mc = ReliabilityBank(1, 0.5, similarity="mean_cosine")
    mc.decide(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([0.9, 0.1]))
    assert mc.decide(x, np.array([0.6, 0.6, 0.49])).tolist() == [True, False, False]


# ----------------------------------------------------------------------------- Eq. 12 and denoise


def test_reliability_loss_by_hand():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[1.0, 1.0], [0.0, -1.0]])  # dots 1, -1
    expected = math.log1p(math.exp(-1)) + math.log1p(math.exp(1))
    assert reliability_loss(a, b).item() == pytest.approx(expected, rel=1e-6)
    assert reliability_loss(a, b, torch.tensor([1, -1])).item() == pytest.approx(2 * math.log1p(math.exp(-1)))


def test_edge_weight_is_emb_a_dot_basic():
    torch.manual_seed(0)
    mlp = EdgeWeightMLP(3, 5, 8)
    b, a = torch.randn(4, 3), torch.randn(4, 5)
    emb_a = mlp.represent(b, a)
    assert emb_a.shape == (4, 3)
    assert torch.allclose(mlp(b, a), (emb_a * b).sum(-1))


def planted_items(n_items=300, k_inf=2, k_noise=2, d=16, seed=0, offset=0.0):
    """Aspects 0..k_inf-1 are a fixed rotation of the basic embedding plus small noise; the rest are pure noise.
    ``offset``: a common direction (length ``offset``) per kind, one for informative and another for noise aspects
    (texts of one kind look alike), which the retain / abandon sets can pick up."""
    rng = np.random.default_rng(seed)
    basic = rng.normal(size=(n_items, d))
    good, bad = (offset * v / np.linalg.norm(v) for v in rng.normal(size=(2, d)))
    aspects = []
    for _ in range(k_inf):
        rot = np.linalg.qr(rng.normal(size=(d, d)))[0]
        aspects.append(basic @ rot + 0.3 * rng.normal(size=(n_items, d)) + good)
    aspects += [rng.normal(size=(n_items, d)) + bad for _ in range(k_noise)]
    return basic.astype(np.float32), np.stack(aspects, axis=1).astype(np.float32)


NOISE = NoiseConfig(hidden=32, tau=0.5, theta=0.4, bank_size=30, epochs=30, lr=3e-3)


def test_denoise_gate_alone_keeps_informative_aspects_more_often():
    """Bank never full (N > I K): decisions are J >= theta only, so this isolates the trained MLP + Gumbel gate."""
    basic, aspects = planted_items()
    cfg = NOISE.model_copy(update={"bank_size": 10_000})
    kept, stats = denoise(basic, aspects, cfg, seed=0, batch_size=128)
    rate = kept.mean(0)
    assert rate[:2].min() > rate[2:].max() + 0.2, rate  # ~0.82 vs ~0.5 (untrained: all ~0.57)
    assert min(stats["mean_j_per_aspect"][:2]) > max(stats["mean_j_per_aspect"][2:]) + 0.2
    assert stats["loss"][-1] < stats["loss"][0] - 0.2
    assert stats["bank"]["fill_retained"] == kept.sum() and stats["bank"]["kept_delta"] == 0


def test_denoise_with_the_bank_drops_planted_noise_aspects():
    basic, aspects = planted_items(offset=2.0)
    kept, stats = denoise(basic, aspects, NOISE, seed=0, batch_size=128)
    assert kept.shape == (300, 4) and kept.dtype == bool
    rate = kept.mean(0)
    assert rate[:2].min() > rate[2:].max() + 0.4, rate  # ~0.75 vs ~0.15
    assert stats["kept_per_aspect"] == kept.sum(0).tolist()
    bank = stats["bank"]
    assert bank["seen"] == 1200 and bank["retain_size"] >= 30 and bank["abandon_size"] == 30
    assert bank["kept_delta"] > 0 and bank["dropped_delta"] > 0
    again, _ = denoise(basic, aspects, NOISE, seed=0, batch_size=128)
    assert np.array_equal(kept, again)


def test_denoise_missing_aspects_and_disabled():
    basic, aspects = planted_items(n_items=40)
    aspects[:5, 1] = 0  # not generated
    off, stats = denoise(basic, aspects, NOISE.model_copy(update={"enabled": False}))
    assert off[:5, 1].sum() == 0 and off.sum() == 40 * 4 - 5 and stats["bank"] is None
    on, stats = denoise(basic, aspects, NOISE.model_copy(update={"epochs": 2}))
    assert on[:5, 1].sum() == 0 and stats["bank"]["seen"] == 40 * 4 - 5


# ----------------------------------------------------------------------------- GNN (Eq. 13) and ablation flags


def small_graph(U=5, I=6):
    g = torch.Generator().manual_seed(0)
    u = torch.tensor([0, 0, 1, 2, 2, 3, 4, 4])
    i = torch.tensor([0, 1, 2, 3, 4, 5, 0, 5])
    adj = normalized_adjacency(bipartite_edge_index(u, i, U), U + I)
    pairs = torch.stack([torch.arange(U).repeat_interleave(I), torch.arange(I).repeat(U) + U])
    return adj, pairs, torch.randn(U, 4, generator=g), torch.randn(I, 3, generator=g)


@pytest.mark.parametrize(
    "side,use_users,use_items", [(True, True, True), (True, False, True), (True, True, False), (False, True, True)]
)
def test_ablation_flags_decide_which_side_inputs_matter(side, use_users, use_items):
    U, I = 5, 6
    adj, pairs, us, its = small_graph(U, I)
    torch.manual_seed(0)
    flags = {"side": side, "use_users": use_users, "use_items": use_items}
    base = ER2ALMGNN(U, I, 8, 2, user_side=us, item_side=its, **flags)
    scores = base(adj, pairs)
    for who in ("user", "item"):
        feats = {"user_side": us, "item_side": its}
        feats[f"{who}_side"] = feats[f"{who}_side"] + torch.randn_like(feats[f"{who}_side"])
        other = ER2ALMGNN(U, I, 8, 2, **feats, **flags)
        other.load_state_dict(base.state_dict())
        changed = not torch.allclose(other(adj, pairs), scores)
        assert changed == (side and (use_users if who == "user" else use_items)), who


def test_without_side_it_is_pyg_lightgcn():
    U, I = 5, 6
    adj, pairs, _, _ = small_graph(U, I)
    torch.manual_seed(0)
    ours = ER2ALMGNN(U, I, 8, 3, side=False)
    ref = build_model(U, I, 8, 3)
    ref.load_state_dict(ours.state_dict())
    assert len(list(ours.parameters())) == 1  # no projections
    assert torch.allclose(ours(adj, pairs), ref(adj, pairs))
    with pytest.raises(ValueError, match="user_side is required"):
        ER2ALMGNN(U, I, 8, 3)


def test_side_feature_helpers():
    prof = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2)
    w = np.array([[1, 0, 0], [0.5, 0, 0.5]], np.float32)
    assert user_side_features(prof, w).tolist() == [[0, 1], [(6 + 10) / 2, (7 + 11) / 2]]
    assert np.allclose(user_side_features(prof), prof.mean(1))
    basic, asp = np.ones((2, 2), np.float32), np.full((2, 3, 2), 4, np.float32)
    kept = np.array([[True, False, True], [False, False, False]])
    cat = item_side_features(basic, asp, kept)
    assert cat.shape == (2, 8) and cat[0].tolist() == [1, 1, 4, 4, 0, 0, 4, 4] and cat[1, 2:].sum() == 0
    assert item_side_features(basic, asp, kept, mode="mean").tolist() == [[3, 3], [1, 1]]


# ----------------------------------------------------------------------------- augmentation pairs


@pytest.mark.parametrize("num_edges,eta", [(100, 0.07), (26_374, 0.04), (10, 0.5), (999, 0.123), (10, 0.0)])
def test_augmented_pairs_count_is_exactly_ceil_eta_e(num_edges, eta):
    liked = {u: [u % 7, (u + 3) % 7] for u in range(60)}
    disliked = (np.arange(60), (np.arange(60) + 1) % 7)
    pos, neg = augmented_pairs(liked, disliked, num_edges, eta, seed=1)
    n = math.ceil(round(eta * num_edges, 9))
    assert augmented_count(num_edges, eta) == n and len(pos) + len(neg) == n
    assert {tuple(p) for p in pos} <= {(u, i) for u, items in liked.items() for i in items}
    assert all(i == (u + 1) % 7 for u, i in neg)
    if 0 < n <= 180:  # from a pool of 180 picks: without replacement, seeded
        assert len({tuple(p) for p in pos}) == len(pos)
        p2, n2 = augmented_pairs(liked, disliked, num_edges, eta, seed=1)
        assert np.array_equal(pos, p2) and np.array_equal(neg, n2)


def test_augmented_pairs_mix_follows_the_pool_and_rejects_empty():
    liked = np.stack([np.arange(300), np.zeros(300, int)], 1)
    disliked = np.stack([np.arange(100), np.ones(100, int)], 1)
    pos, neg = augmented_pairs(liked, disliked, 1000, 0.2, seed=0)
    assert len(pos) + len(neg) == 200 and 120 < len(pos) < 180  # ~3/4 positives
    with pytest.raises(ValueError, match="picked nothing"):
        augmented_pairs({}, None, 10, 0.1)


# ----------------------------------------------------------------------------- BPR training on a toy graph

U, IC, COLD = 20, 20, 4  # items 0-9 cluster A, 10-19 cluster B, 20-21 cold A, 22-23 cold B (no train edges)
NI = IC + COLD
GNN = GNNConfig(dim=16, num_layers=2, epochs=40, lr=0.05, batch_size=32, weight_decay=1e-4)


def toy_graph(seed=0):
    """Users 0-9 like cluster A, 10-19 cluster B; 7 train + 3 held-out items each."""
    rng = np.random.default_rng(seed)
    tr_u, tr_i, held = [], [], {}
    for u in range(U):
        liked = (0 if u < 10 else 10) + rng.permutation(10)
        tr_u += [u] * 7
        tr_i += liked[:7].tolist()
        held[u] = liked[7:]
    return np.array(tr_u), np.array(tr_i), held


def auc(scores: np.ndarray, good, bad) -> float:
    return float((scores[good][:, None] > scores[bad][None, :]).mean())


def preference_auc(res, held) -> np.ndarray:
    """Per user: fraction of (held-out own-cluster item, other-cluster item) pairs ranked right."""
    s = res.user_emb @ res.item_emb.T
    return np.array([auc(s[u], held[u], np.arange(10, 20) if u < 10 else np.arange(10)) for u in range(U)])


def side_inputs(seed=0):
    rng = np.random.default_rng(seed)
    group = np.r_[np.zeros(10), np.ones(10)].astype(int)
    item_cluster = np.r_[np.zeros(10), np.ones(10), [0, 0, 1, 1]].astype(int)
    return (np.eye(2)[group] + 0.3 * rng.normal(size=(U, 2)), np.eye(2)[item_cluster] + 0.3 * rng.normal(size=(NI, 2)))


@pytest.fixture(scope="module")
def plain(tmp_path_factory, one_torch_thread_per_module):
    tr_u, tr_i, held = toy_graph()
    extra_pos = np.array([[u, 20] for u in range(10)])  # cold item 20: liked by group A (LLM picks)
    extra_neg = np.array([[u, 20] for u in range(10, 20)])  # and disliked by group B
    out = tmp_path_factory.mktemp("er2alm_plain")
    cfg = GNN.model_copy(update={"side": False})
    res = train_er2alm(
        tr_u, tr_i, U, NI, cfg, extra_pos=extra_pos, extra_neg=extra_neg, opts=TrainOptions(seed=3, out_dir=out)
    )
    return res, held


@pytest.fixture(scope="module")
def with_side(tmp_path_factory, one_torch_thread_per_module):
    tr_u, tr_i, held = toy_graph()
    us, its = side_inputs()
    out = tmp_path_factory.mktemp("er2alm_side")
    res = train_er2alm(tr_u, tr_i, U, NI, GNN, user_side=us, item_side=its, opts=TrainOptions(seed=3, out_dir=out))
    return res, held


def test_plain_lightgcn_learns_the_planted_preference_and_uses_augmented_pairs(plain):
    res, held = plain
    a = preference_auc(res, held)
    assert a.mean() > 0.9 and (a > 0.75).mean() >= 0.9
    s = res.user_emb @ res.item_emb[20]
    assert s[:10].min() > s[10:].max()  # augmented positives (group A) vs negatives (group B) on a cold item
    meta = json.loads((res.out_dir / "meta.json").read_text())
    assert (meta["train_edges"], meta["extra_pos"], meta["extra_neg"]) == (140, 10, 10)
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    assert {p.name for p in res.out_dir.iterdir()} >= {"user_emb.npy", "item_emb.npy", "model.pt", "history.json"}


def test_side_embeddings_learn_the_preference_and_place_cold_items(with_side):
    res, held = with_side
    a = preference_auc(res, held)
    assert a.mean() > 0.9 and (a > 0.75).mean() >= 0.9
    s = res.user_emb @ res.item_emb.T
    cold = [auc(s[u], [20, 21] if u < 10 else [22, 23], [22, 23] if u < 10 else [20, 21]) for u in range(U)]
    assert np.mean(cold) > 0.85  # only the item side says where items 20-23 belong
    assert res.user_emb.shape == (U, 16) and res.item_emb.shape == (NI, 16)


def test_patience_keeps_the_best_validation_epoch(tmp_path):
    """gnn.patience: Recall@20 on the validation pairs every epoch. With 24 items, top-20 holds every held-out
    item from the first epoch on (Recall 1.0 throughout), so epoch 0 stays the best: training stops after
    ``patience`` more epochs and keeps epoch 0's weights, the same embeddings as a 1-epoch training."""
    tr_u, tr_i, held = toy_graph()
    valid = (np.repeat(np.arange(U), 3), np.concatenate([held[u] for u in range(U)]))
    cfg = GNN.model_copy(update={"side": False, "patience": 4})
    res = train_er2alm(tr_u, tr_i, U, NI, cfg, eval_pairs=valid, opts=TrainOptions(seed=3, out_dir=tmp_path / "p"))
    assert [h["recall@20"] for h in res.history] == [1.0] * 5 and res.history[-1]["best_epoch"] == 0
    one = cfg.model_copy(update={"epochs": 1, "patience": None})
    ref = train_er2alm(tr_u, tr_i, U, NI, one, opts=TrainOptions(seed=3, out_dir=tmp_path / "one"))
    np.testing.assert_array_equal(res.user_emb, ref.user_emb)
    np.testing.assert_array_equal(res.item_emb, ref.item_emb)
    with pytest.raises(ValueError, match="eval_pairs"):
        train_er2alm(tr_u, tr_i, U, NI, cfg, opts=TrainOptions(out_dir=tmp_path / "x"))


def test_train_er2alm_input_checks(tmp_path):
    tr_u, tr_i, _ = toy_graph()
    with pytest.raises(ValueError, match="user_side is required"):
        train_er2alm(tr_u, tr_i, U, NI, GNN, opts=TrainOptions(out_dir=tmp_path))
    with pytest.raises(ValueError, match="extra_pos"):
        train_er2alm(
            tr_u,
            tr_i,
            U,
            NI,
            GNN.model_copy(update={"side": False}),
            extra_pos=np.array([[0, 99]]),
            opts=TrainOptions(out_dir=tmp_path),
        )


def test_ray_train_equals_the_in_process_loop(ray_session, tmp_path):
    """The pipeline trains this GNN on Ray Train workers (``ray.num_workers`` >= 1) or in the calling process
    (0): same loop, seed and single worker, so the same embeddings and history."""
    tr_u, tr_i, _ = toy_graph()
    us, its = side_inputs()
    cfg = GNN.model_copy(update={"epochs": 3})
    extra = {"extra_pos": np.array([[0, 20]]), "extra_neg": np.array([[15, 20]]), "user_side": us, "item_side": its}
    local = train_er2alm(tr_u, tr_i, U, NI, cfg, opts=TrainOptions(seed=3, out_dir=tmp_path / "local"), **extra)
    on_ray = TrainOptions(use_ray=True, seed=3, out_dir=tmp_path / "ray", storage_path=str(tmp_path / "rs"))
    res = train_er2alm(tr_u, tr_i, U, NI, cfg, opts=on_ray, **extra)
    assert [h["epoch"] for h in res.history] == [0, 1, 2]
    np.testing.assert_allclose(res.user_emb, local.user_emb, atol=1e-5)
    np.testing.assert_allclose(res.item_emb, local.item_emb, atol=1e-5)
    assert [h["loss"] for h in res.history] == pytest.approx([h["loss"] for h in local.history], rel=1e-5)
