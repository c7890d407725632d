"""UR4Rec's preference retriever: masks (a)/(b)/(c), losses, BERT init, pretraining and augmentation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ragrec.config import UR4RecConfig
from ragrec.models.ur4rec_retriever import (
    PreferenceRetriever,
    RetrieverBlock,
    cl_loss,
    init_from_encoder,
    mask_a,
    mask_b,
    mask_c,
    pim_loss,
    proxy_similarity,
)
from ragrec.training.ray_train import TrainOptions
from ragrec.training.ur4rec import Augmenter, build_aggr, compute_augment, load_retriever, train_retriever

D, E, K, H = 6, 10, 3, 16


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """The loops set torch's thread count from RAGREC_TORCH_THREADS; tiny models run fastest on one."""
    monkeypatch.setenv("RAGREC_TORCH_THREADS", "1")
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def tiny(seed: int = 0, layers: int = 2) -> PreferenceRetriever:
    torch.manual_seed(seed)
    return PreferenceRetriever(D, K, layers, hidden=H, heads=2, ffn=32, aggr_dim=E).eval()


def aggr_batch(B: int = 2, M: int = 4, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    aggr = torch.randn(B, M, E, generator=g)
    mask = torch.ones(B, M, dtype=torch.bool)
    mask[:, -1] = False  # the last slot is padding
    return aggr, mask


def changed(a: torch.Tensor, b: torch.Tensor) -> bool:
    return not torch.allclose(a, b, atol=1e-4)


# ----------------------------------------------------------------------------- masks


def test_mask_shapes_and_patterns():
    am = torch.tensor([[True, True, False]])
    s, c = mask_a(2, am)
    assert s.shape == (1, 2, 2) and s.all() and c.shape == (1, 2, 3) and c[0].tolist() == [[True, True, False]] * 2
    s, c = mask_b(2, am)
    assert s.shape == (1, 3, 3) and s.all() and c.shape == (1, 3, 3)
    s, c = mask_c(2, 3)
    assert c is None
    expect = [
        [1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1],
        [1, 1, 1, 0, 0],
        [1, 1, 0, 1, 0],
        [1, 1, 0, 0, 1],
    ]
    assert s[0].int().tolist() == expect


def test_mask_a_preference_ignores_padding_slots_only():
    r = tiny()
    aggr, mask = aggr_batch()
    with torch.no_grad():
        base = r.preference(aggr, mask)
        pad = aggr.clone()
        pad[:, -1] += 5.0
        assert torch.allclose(r.preference(pad, mask), base, atol=1e-6)
        vis = aggr.clone()
        vis[0, 1] += 1.0
        out = r.preference(vis, mask)
    assert changed(out[0], base[0]) and torch.allclose(out[1], base[1], atol=1e-6)
    assert base.shape == (2, K, H)


def test_all_padding_aggr_gives_finite_output():
    r = tiny()
    aggr, _ = aggr_batch()
    with torch.no_grad():
        out = r.preference(aggr, torch.zeros(2, 4, dtype=torch.bool))
    assert torch.isfinite(out).all()


def test_items_are_independent_without_cross_attention():
    r = tiny()
    h = torch.randn(2, 3, D)
    with torch.no_grad():
        base = r.items(h)
        h2 = h.clone()
        h2[:, 1] += 1.0
        out = r.items(h2)
    assert base.shape == (2, 3, H)
    assert torch.allclose(out[:, [0, 2]], base[:, [0, 2]], atol=1e-6) and changed(out[:, 1], base[:, 1])
    # Eq. 7 has no cross-attention: the block parameters of cross-attention get no gradient
    r.items(h).sum().backward()
    assert all(p.grad is None for p in r.blocks[0].cross_attn.parameters())


def test_mask_b_match_logit_sees_item_and_valid_slots():
    r = tiny()
    aggr, mask = aggr_batch()
    h = torch.randn(2, D)
    with torch.no_grad():
        base = r.match_logit(h, aggr, mask)
        pad = aggr.clone()
        pad[:, -1] -= 3.0
        assert torch.allclose(r.match_logit(h, pad, mask), base, atol=1e-6)
        assert changed(r.match_logit(h + 1.0, aggr, mask), base)
        vis = aggr.clone()
        vis[:, 0] += 1.0
        assert changed(r.match_logit(h, vis, mask), base)
        # the multi-item version scores each item on its own: item 1's logit does not see item 0
        hh = torch.randn(2, 3, D)
        many = r.match_logits(hh, aggr, mask)
        hh2 = hh.clone()
        hh2[:, 0] += 2.0
        many2 = r.match_logits(hh2, aggr, mask)
        assert torch.allclose(many[:, 1:], many2[:, 1:], atol=1e-6) and changed(many[:, 0], many2[:, 0])
        assert torch.allclose(many[:, 2], r.match_logit(hh[:, 2], aggr, mask), atol=1e-5)
    assert base.shape == (2,)


def test_mask_c_items_do_not_see_each_other_but_proxies_do():
    r = tiny()
    aggr, mask = aggr_batch()
    h = torch.randn(2, 3, D)
    sm, cm = mask_c(K, 3, mask)
    with torch.no_grad():
        x = torch.cat([r._proxy_input(2), r._item_input(h)], 1)
        z = r._z(aggr)
        base = r.encode(x, z, sm, cm)
        # a one-layer retriever: item 2's input is invisible to item 1 (and item 3), visible to the proxies
        r1 = tiny(layers=1)
        b1 = r1.encode(torch.cat([r1._proxy_input(2), r1._item_input(h)], 1), r1._z(aggr), sm, cm)
        h2 = h.clone()
        h2[:, 1] += 1.0
        o1 = r1.encode(torch.cat([r1._proxy_input(2), r1._item_input(h2)], 1), r1._z(aggr), sm, cm)
        assert torch.allclose(o1[:, K + 0], b1[:, K + 0], atol=1e-6)
        assert torch.allclose(o1[:, K + 2], b1[:, K + 2], atol=1e-6)
        assert changed(o1[:, :K], b1[:, :K]) and changed(o1[:, K + 1], b1[:, K + 1])
        # padding slots of e_aggr never matter
        pad = aggr.clone()
        pad[:, -1] += 4.0
        assert torch.allclose(r.encode(x, r._z(pad), sm, cm), base, atol=1e-6)
        # augment = mean over {K proxy outputs, item j's output}
        aug = r.augment(h, aggr, mask)
        expect = (base[:, :K].sum(1, keepdim=True) + base[:, K:]) / (K + 1)
        assert torch.allclose(aug, expect, atol=1e-6) and aug.shape == (2, 3, H)


# ----------------------------------------------------------------------------- losses


def test_proxy_similarity_is_max_cosine_over_proxies():
    g = torch.Generator().manual_seed(3)
    pref, items = torch.randn(2, 3, 5, generator=g), torch.randn(2, 4, 5, generator=g)
    expect = torch.empty(2, 4)
    for b in range(2):
        for j in range(4):
            expect[b, j] = max(float(F.cosine_similarity(pref[b, k], items[b, j], dim=0)) for k in range(3))
    assert torch.allclose(proxy_similarity(pref, items), expect, atol=1e-6)


def test_cl_loss_hand_value_and_monotone():
    pref = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # K = 2
    pos = torch.tensor([[1.0, 1.0]])  # cos = 0.7071 with both proxies
    neg = torch.tensor([[[-1.0, 0.0], [1.0, -1.0]]])  # max cos 0 and 0.7071
    tau = 0.5
    s = np.array([np.sqrt(0.5), 0.0, np.sqrt(0.5)]) / tau
    expect = -(s[0] - np.log(np.exp(s).sum()))
    assert cl_loss(pref, pos, neg, tau).item() == pytest.approx(expect, abs=1e-5)
    # masking the second negative drops it from the denominator
    masked = cl_loss(pref, pos, neg, tau, torch.tensor([[True, False]])).item()
    assert masked == pytest.approx(-(s[0] - np.log(np.exp(s[:2]).sum())), abs=1e-5)
    # the positive moving towards proxy 1 (cos 0.71 -> 0.999 -> 1) lowers the loss
    losses = [cl_loss(pref, torch.tensor([p]), neg, tau).item() for p in ([1.0, 1.0], [1.0, 0.05], [1.0, 0.0])]
    assert losses[0] > losses[1] > losses[2]


def test_pim_loss_is_mean_bce_over_pairs():
    lp, ln = torch.tensor([2.0, -1.0]), torch.tensor([[0.5, -0.5], [1.0, 0.0]])

    def bce(x, y):
        p = 1 / (1 + np.exp(-x))
        return -(y * np.log(p) + (1 - y) * np.log(1 - p))

    expect = (sum(bce(x, 1) for x in lp.tolist()) + sum(bce(x, 0) for x in ln.flatten().tolist())) / 6
    assert pim_loss(lp, ln).item() == pytest.approx(expect, abs=1e-6)


# ----------------------------------------------------------------------------- BERT init


def test_init_from_encoder_copies_bert_weights_and_block_matches_bert_layer():
    from transformers import AutoModel

    from ragrec.llm.registry import model_path

    folder = model_path("minilm-l6")
    bert = AutoModel.from_pretrained(folder, local_files_only=True).eval()
    torch.manual_seed(0)
    r = PreferenceRetriever(item_dim=8, proxies=2, layers=2).eval()
    cross_before = r.blocks[0].cross_attn.query.weight.clone()
    init_from_encoder(r, "minilm-l6")
    for i in range(2):
        b, layer = r.blocks[i], bert.encoder.layer[i]
        pairs = [
            (b.self_attn.query, layer.attention.self.query),
            (b.self_attn.key, layer.attention.self.key),
            (b.self_attn.value, layer.attention.self.value),
            (b.self_attn.output, layer.attention.output.dense),
            (b.self_norm, layer.attention.output.LayerNorm),
            (b.ffn_in, layer.intermediate.dense),
            (b.ffn_out, layer.output.dense),
            (b.ffn_norm, layer.output.LayerNorm),
        ]
        for ours, theirs in pairs:
            assert torch.equal(ours.weight, theirs.weight) and torch.equal(ours.bias, theirs.bias)
    assert torch.equal(r.blocks[0].cross_attn.query.weight, cross_before)  # cross-attention stays random
    # without Z the block computes what BERT's layer computes
    x = torch.randn(2, 5, 384)
    with torch.no_grad():
        ours = r.blocks[1](x, None, torch.ones(1, 5, 5, dtype=torch.bool))
        out = bert.encoder.layer[1](x)
        theirs = out[0] if isinstance(out, tuple) else out
    assert torch.allclose(ours, theirs, atol=1e-4)


def test_init_from_encoder_rejects_mismatched_sizes():
    with pytest.raises(ValueError, match="differ"):
        init_from_encoder(PreferenceRetriever(4, 2, 1, hidden=32, heads=2, ffn=64), "minilm-l6")


# ----------------------------------------------------------------------------- pretraining


def synthetic(seed: int = 0, n: int = 400, I: int = 40, C: int = 4, U: int = 40, L: int = 5):
    """I items in C clusters (item i in cluster i % C); user u in cluster u % C. Texts are noisy unit vectors
    near their cluster's centroid, item_repr a noisy cluster code; a sample's target and history items come
    from the user's cluster."""
    rng = np.random.default_rng(seed)
    cent = rng.normal(size=(C, 16))
    cent /= np.linalg.norm(cent, axis=1, keepdims=True)

    def unit(x):
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    item_c, user_c = np.arange(I) % C, np.arange(U) % C
    item_text = unit(cent[item_c] + 0.4 * rng.normal(size=(I, 16)))
    user_text = unit(cent[user_c] + 0.4 * rng.normal(size=(U, 16)))
    code = rng.normal(size=(C, 8))
    item_repr = (code[item_c] + 0.5 * rng.normal(size=(I, 8))).astype(np.float32)

    def samples(k):
        users = rng.integers(0, U, k)
        pick = lambda size: rng.integers(0, I // C, size) * C + user_c[users].reshape(-1, *([1] * (len(size) - 1)))
        targets = pick((k,))
        history = pick((k, L)) + 1
        history[: k // 4, :2] = 0  # some left padding
        return {"users": users.astype(np.int64), "history": history.astype(np.int64), "targets": targets}

    return user_text, item_text, item_repr, samples(n), samples(200)


CFG = UR4RecConfig(proxies=4, layers=1, aggr_items=3, cl_negatives=5, epochs=8, lr=3e-3, batch_size=32, tau=0.2)


def pretrain(tmp_path, cfg=CFG, **kw):
    ut, it, ir, tr, va = synthetic()
    opts = TrainOptions(use_ray=False, out_dir=tmp_path, seed=0)
    res = train_retriever(ut, it, ir, tr, cfg, opts=opts, valid=va, init_encoder=None, hidden=32, heads=2, ffn=64, **kw)
    return res, (ut, it, ir, tr, va)


def test_pretraining_learns_and_writes_outputs(tmp_path):
    res, (ut, it, ir, _, va) = pretrain(tmp_path)
    m = res.metrics
    assert len(res.history) == CFG.epochs and {"loss", "cl", "pim", "valid_auc"} <= set(res.history[-1])
    assert m["valid_auc"] > 0.75 and m["valid_auc"] > m["valid_auc_init"] + 0.2, m
    assert m["valid_auc_cl"] > 0.8, m
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    for f in ("model.pt", "retriever.json", "history.json", "metrics.json"):
        assert (tmp_path / f).exists()
    assert json.loads((tmp_path / "retriever.json").read_text())["hidden"] == 32

    # compute_augment: shape, dtype, batch-size independence, same as the loaded retriever's Augmenter
    cand = np.stack([va["targets"][:10], (va["targets"][:10] + 1) % 40, (va["targets"][:10] + 2) % 40], 1)
    args = (ut, it, ir, va["users"][:10], va["history"][:10], cand)
    a = compute_augment(tmp_path, *args, batch_size=3)
    b = compute_augment(tmp_path, *args, batch_size=64)
    assert a.shape == (10, 3, 32) and a.dtype == np.float16
    np.testing.assert_allclose(a.astype(np.float32), b.astype(np.float32), atol=2e-3)
    r = load_retriever(tmp_path)
    assert not r.training
    c = compute_augment(r, *args, m=CFG.aggr_items)
    np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize(
    ("flag", "update"),
    [("use_cl", {"epochs": 8, "lr": 1e-2}), ("use_pim", {"epochs": 4})],  # PIM alone leaves a plateau slower
)
def test_ablations_still_train(tmp_path, flag, update):
    cfg = CFG.model_copy(update={flag: False, **update})
    res, _ = pretrain(tmp_path, cfg)
    m = res.metrics
    assert m["valid_auc"] > 0.7 and m["valid_auc"] > m["valid_auc_init"] + 0.15, m
    assert (m["pim"] == 0.0) == (flag == "use_pim") and (m["cl"] == 0.0) == (flag == "use_cl")


def test_both_objectives_off_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="nothing to pretrain"):
        pretrain(tmp_path, CFG.model_copy(update={"use_cl": False, "use_pim": False}))


def test_interacted_items_are_never_negatives(tmp_path, monkeypatch):
    import ragrec.training.ur4rec as ur

    seen = []
    real = ur.sample_negatives

    def spy(users, num, num_items, keys, gen):
        out = real(users, num, num_items, keys, gen)
        seen.append((users, out[0], out[1], keys))
        return out

    monkeypatch.setattr(ur, "sample_negatives", spy)
    ut, it, ir, tr, _ = synthetic()
    inter = np.unique(tr["users"] * 40 + (tr["targets"] + 4) % 40)  # one extra item per sample's user
    cfg = CFG.model_copy(update={"epochs": 1})
    opts = TrainOptions(use_ray=False, out_dir=tmp_path)
    train_retriever(ut, it, ir, tr, cfg, opts=opts, interacted=inter, init_encoder=None, hidden=16, heads=2, ffn=32)
    forbidden = set((tr["users"] * 40 + tr["targets"]).tolist()) | set(inter.tolist())
    drawn = set()
    for users, negs, ok, _ in seen:
        drawn |= set((users[:, None] * 40 + negs)[ok].tolist())
    assert drawn and not (drawn & forbidden)


# ----------------------------------------------------------------------------- aggregation / augmenter


def test_build_aggr_takes_user_and_last_m_items():
    ut = torch.arange(3 * 2, dtype=torch.float32).view(3, 2)
    it = 100 + torch.arange(5 * 2, dtype=torch.float32).view(5, 2)
    hist = torch.tensor([[0, 2, 3, 5], [0, 0, 0, 1]])
    aggr, mask = build_aggr(ut, it, torch.tensor([2, 0]), hist, 3)
    assert aggr.shape == (2, 4, 2) and mask.tolist() == [[True] * 4, [True, False, False, True]]
    assert torch.equal(aggr[0], torch.stack([ut[2], it[1], it[2], it[4]]))
    assert torch.equal(aggr[1, 1:3], torch.zeros(2, 2)) and torch.equal(aggr[1, 3], it[0])
    aggr, mask = build_aggr(ut, it, torch.tensor([1]), torch.tensor([[4]]), 2)  # shorter than m
    assert mask.tolist() == [[True, False, True]] and torch.equal(aggr[0, 2], it[3])
    aggr, mask = build_aggr(ut, it, torch.tensor([1]), torch.tensor([[4]]), 0)
    assert aggr.shape == (1, 1, 2) and mask.all()


def test_augmenter_gradients_reach_proxies_not_tables():
    r = tiny().train()
    ut, it, ir = torch.randn(5, E), torch.randn(7, E), torch.randn(7, D)
    aug = Augmenter(r, ut, it, ir, m=2)
    assert "item_repr" not in aug.state_dict() and not aug.item_repr.requires_grad
    out = aug(torch.tensor([0, 4]), torch.tensor([[1, 2, 3], [0, 0, 7]]), torch.tensor([[0, 1], [6, 2]]))
    assert out.shape == (2, 2, H)
    out.pow(2).sum().backward()
    assert r.proxies.grad is not None and r.proxies.grad.abs().sum() > 0
    assert r.blocks[0].cross_attn.key.weight.grad.abs().sum() > 0


def test_block_without_z_skips_cross_attention():
    torch.manual_seed(0)
    blk = RetrieverBlock(8, 2, 16).eval()
    x = torch.randn(1, 3, 8)
    with torch.no_grad():
        a = blk(x)
        blk.cross_attn.query.weight.add_(1.0)
        assert torch.equal(blk(x), a)


def test_ray_train_equals_the_in_process_loop(ray_session, tmp_path):
    """Under Ray Train (one worker) the retriever's loop gives the in-process weights and history."""
    ut, it, ir, tr, va = synthetic()
    cfg = CFG.model_copy(update={"epochs": 1})
    kw = {"valid": va, "init_encoder": None, "hidden": 16, "heads": 2, "ffn": 32}
    local = train_retriever(ut, it, ir, tr, cfg, opts=TrainOptions(out_dir=tmp_path / "local", seed=0), **kw)
    on_ray = TrainOptions(use_ray=True, out_dir=tmp_path / "ray", seed=0, storage_path=str(tmp_path / "rs"))
    res = train_retriever(ut, it, ir, tr, cfg, opts=on_ray, **kw)
    a, b = torch.load(tmp_path / "ray" / "model.pt"), torch.load(tmp_path / "local" / "model.pt")
    assert a.keys() == b.keys()
    # an attention key's bias shifts every logit of a query alike: softmax ignores it, its gradient is rounding
    # noise and Adam turns that into full steps, so it drifts with the summation order; it changes no output
    inert = [k for k in a if k.endswith("key.bias")]
    differ = {k: float((a[k] - b[k]).abs().max()) for k in a if not torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-5)}
    assert set(differ) <= set(inert), differ
    assert res.metrics["valid_auc"] == pytest.approx(local.metrics["valid_auc"], abs=1e-6)
    assert res.history[0]["loss"] == pytest.approx(local.history[0]["loss"], rel=1e-5)
