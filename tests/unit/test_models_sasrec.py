"""SASRec model: shapes, causality, padding invariance, pad_sequences, negatives and the metric."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ragrec.models.sasrec import SASRec, interaction_keys, leave_one_out_metrics, pad_sequences, sample_negatives

I, D, L = 30, 16, 8


@pytest.fixture(scope="module")
def model() -> SASRec:
    torch.manual_seed(0)
    return SASRec(I, dim=D, num_layers=2, num_heads=2, max_len=L, dropout=0.2).eval()


def test_shapes_and_score_is_dot_product_with_item_rows(model):
    seqs = torch.tensor([[0, 0, 0, 1, 5, 7, 2, 30], [3, 4, 5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        h = model(seqs)
        u = model.user_repr(seqs)
        items = torch.tensor([[0, 29, 4], [1, 2, 3]])
        s = model.score(seqs, items)
    assert h.shape == (2, L, D) and u.shape == (2, D) and s.shape == (2, 3)
    torch.testing.assert_close(u, h[:, -1])
    # candidate ids are 0-based: item k is embedding row k + 1 == item_vectors()[k]
    expect = torch.einsum("bd,bcd->bc", u, model.item_vectors()[items])
    torch.testing.assert_close(s, expect)
    assert model.item_vectors().shape == (I, D)
    assert torch.all(model.item_emb.weight[0] == 0)


def test_causal_a_later_item_does_not_change_earlier_outputs(model):
    a = torch.tensor([[0, 0, 4, 9, 2, 11, 5, 6]])
    b = a.clone()
    b[0, 5] = 20  # change position 5
    with torch.no_grad():
        ha, hb = model(a), model(b)
    torch.testing.assert_close(ha[:, :5], hb[:, :5])
    assert (ha[:, 5:] - hb[:, 5:]).abs().amax(-1).min() > 1e-3  # position 5 and every later one change


def test_left_padding_does_not_change_real_positions_and_pads_are_zero(model):
    short = torch.tensor([[4, 9, 2]])
    padded = torch.tensor([[0, 0, 0, 0, 0, 4, 9, 2]])
    for grad in (False, True):  # no_grad takes torch's fused encoder fast path
        with torch.set_grad_enabled(grad):
            hs, hp = model(short), model(padded)
        torch.testing.assert_close(hp[:, 5:], hs, atol=1e-5, rtol=1e-5)
        assert torch.all(hp[:, :5] == 0)
        assert torch.isfinite(hp).all()


def test_sequences_longer_than_max_len_are_rejected(model):
    with pytest.raises(ValueError, match="sasrec.max_len=8"):
        model(torch.ones(1, L + 1, dtype=torch.long))


def test_pad_sequences_hand_example():
    # user 0: items 5 (t=3), 7 (t=1), 2 (t=2), 9 (t=2, after 2 in input order) -> 7, 2, 9, 5
    # user 1: nothing; user 2: item 0 (t=10); user 3: 1 (t=5), 3 (t=4)
    users = np.array([0, 3, 0, 2, 0, 3, 0])
    items = np.array([5, 1, 7, 0, 2, 3, 9])
    ts = np.array([3, 5, 1, 10, 2, 4, 2])
    got = pad_sequences(users, items, ts, num_users=4, max_len=3)
    expect = np.array(
        [
            [3, 10, 6],  # most recent 3 of 7,2,9,5 -> 2,9,5 shifted by +1 (7 truncated)
            [0, 0, 0],
            [0, 0, 1],
            [0, 4, 2],
        ]
    )
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, expect)
    np.testing.assert_array_equal(pad_sequences(users, items, ts, 4, 5)[0], [0, 8, 3, 10, 6])


def test_sample_negatives_are_uniform_over_unknown_items_only():
    g = torch.Generator().manual_seed(0)
    users = torch.tensor([0, 1, 2, 3])
    # user 0 knows items 0..8 of 10, user 1 nothing, user 2 every item, user 3 knows {1, 3, 4, 8}
    known_u = [0] * 9 + [2] * 10 + [3] * 4
    known_i = list(range(9)) + list(range(10)) + [1, 3, 4, 8]
    keys = interaction_keys(torch.tensor(known_u), torch.tensor(known_i), 10)
    items, ok = sample_negatives(users, 6000, 10, keys, g)
    assert items.shape == ok.shape == (4, 6000)
    assert torch.all(items[0] == 9) and ok[0].all()
    assert not ok[2].any()  # nothing left to sample: flagged for the caller to drop
    for u, allowed in ((1, list(range(10))), (3, [0, 2, 5, 6, 7, 9])):
        assert ok[u].all()
        counts = torch.bincount(items[u], minlength=10).double() / 6000
        assert set(items[u].unique().tolist()) == set(allowed)
        assert counts[allowed].sub(1 / len(allowed)).abs().max() < 0.03
    none, ok_none = sample_negatives(
        users, 3, 10, interaction_keys(torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long), 10), g
    )
    assert ok_none.all() and none.min() >= 0 and none.max() < 10


def test_metric_perfect_scorer_is_one_and_random_scorer_is_chance():
    n, c = 4000, 100
    pos = torch.ones(n)
    neg = torch.zeros(n, c)
    m = leave_one_out_metrics(pos, neg)
    assert m == {"ndcg@10": 1.0, "hr@10": 1.0, "users_evaluated": n}
    g = torch.Generator().manual_seed(0)
    r = leave_one_out_metrics(torch.rand(n, generator=g), torch.rand(n, c, generator=g))
    assert r["hr@10"] == pytest.approx(10 / 101, abs=0.015)
    expect_ndcg = sum(1 / math.log2(k + 2) for k in range(10)) / 101
    assert r["ndcg@10"] == pytest.approx(expect_ndcg, abs=0.01)
    # ties count against the model (a constant scorer is not "perfect"), dropped negatives do not count
    assert leave_one_out_metrics(torch.zeros(3), torch.zeros(3, c))["hr@10"] == 0.0
    ok = torch.zeros(3, c, dtype=torch.bool)
    assert leave_one_out_metrics(torch.zeros(3), torch.zeros(3, c), ok)["hr@10"] == 1.0
    # rank 2 (two negatives above) -> ndcg 1/log2(4) = 0.5
    two_above = torch.tensor([[2.0, 3.0] + [0.0] * 98])
    assert leave_one_out_metrics(torch.ones(1), two_above)["ndcg@10"] == pytest.approx(0.5)
