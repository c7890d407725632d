"""LightGCN building blocks: graph, normalisation, negatives, Recall@k, input checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ragrec.models import lightgcn as lg


def test_bipartite_edge_index_has_both_directions_with_item_offset():
    ei = lg.bipartite_edge_index(torch.tensor([0, 2]), torch.tensor([1, 0]), num_users=3)
    assert ei.tolist() == [[0, 2, 4, 3], [4, 3, 0, 2]]


def test_prenormalised_csr_gives_pyg_default_embeddings_and_loss():
    torch.manual_seed(0)
    users, items, U, I = torch.randint(0, 7, (30,)), torch.randint(0, 5, (30,)), 7, 5
    u, i = lg.unique_pairs(users.numpy(), items.numpy(), I)
    ei = lg.bipartite_edge_index(torch.as_tensor(u), torch.as_tensor(i), U)
    reference = lg.build_model(U, I, 8, 3, normalize=True)  # PyG default: gcn_norm inside every LGConv
    fast = lg.build_model(U, I, 8, 3, normalize=False)
    fast.load_state_dict(reference.state_dict())
    adj = lg.normalized_adjacency(ei, U + I)
    torch.testing.assert_close(fast.get_embedding(adj), reference.get_embedding(ei), rtol=1e-5, atol=1e-6)
    label = torch.tensor([[0, 1, 0, 1], [7, 8, 9, 11]])
    torch.testing.assert_close(lg.bpr_step(fast, adj, label, 1e-4), lg.bpr_step(reference, ei, label, 1e-4))


def test_normalized_adjacency_is_symmetric_degree_normalised():
    ei = lg.bipartite_edge_index(torch.tensor([0, 0, 1]), torch.tensor([0, 1, 1]), num_users=2)
    dense = lg.normalized_adjacency(ei, 4).to_dense()
    # degrees: user0 2, user1 1, item0 1, item1 2 -> weight 1/sqrt(d_u d_i)
    expected = torch.zeros(4, 4)
    for uu, it in [(0, 0), (0, 1), (1, 1)]:
        deg = {0: 2, 1: 1, 2: 1, 3: 2}
        expected[uu, 2 + it] = expected[2 + it, uu] = 1 / np.sqrt(deg[uu] * deg[2 + it])
    torch.testing.assert_close(dense, expected)


def test_sample_bpr_batch_keeps_users_and_draws_items_from_item_range():
    pos = torch.tensor([[0, 1, 2] * 100, [5, 6, 7] * 100])
    out = lg.sample_bpr_batch(pos, num_users=3, num_items=4, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 600)
    assert torch.equal(out[:, :300], pos)
    assert torch.equal(out[0, 300:], pos[0])
    neg = out[1, 300:]
    assert neg.min() >= 3 and neg.max() <= 6 and len(neg.unique()) == 4  # all 4 items hit


def test_recall_at_k_masks_train_items_and_averages_over_eval_users():
    # 3 users x 4 items; scores = user_emb @ item_emb.T = user_emb (items are one-hot)
    item_emb = torch.eye(4)
    user_emb = torch.tensor([[4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 1.0]])
    train_u, train_i = torch.tensor([0]), torch.tensor([0])  # user 0's best item is a train item
    eval_u, eval_i = torch.tensor([0, 0, 1]), torch.tensor([1, 3, 0])  # user 2 has no eval items
    # user 0: train item 0 masked -> top-2 = {1, 2}: 1 of {1, 3} -> 0.5
    # user 1: top-2 = {3, 2}: 0 of {0} -> 0.0 ; mean over users with eval items = 0.25
    assert lg.recall_at_k(user_emb, item_emb, train_u, train_i, eval_u, eval_i, k=2) == pytest.approx(0.25)
    # chunking must not change the result
    assert lg.recall_at_k(user_emb, item_emb, train_u, train_i, eval_u, eval_i, k=2, chunk=1) == pytest.approx(0.25)
    assert lg.recall_at_k(user_emb, item_emb, train_u, train_i, eval_u, eval_i, k=3) == pytest.approx(0.5)


def test_validate_interactions_names_field_and_position():
    with pytest.raises(ValueError, match=r"item_id\[2\]=9 is outside 0\.\.4"):
        lg.validate_interactions(np.array([0, 1, 2]), np.array([0, 1, 9]), 3, 5)
    with pytest.raises(ValueError, match="equal length"):
        lg.validate_interactions(np.array([0, 1]), np.array([0]), 3, 5)
    with pytest.raises(ValueError, match="integer dense ids"):
        lg.validate_interactions(np.array([0.0, 1.0]), np.array([0, 1]), 3, 5)


def test_unique_pairs_drops_duplicates():
    u, i = lg.unique_pairs(np.array([1, 0, 1, 1]), np.array([2, 3, 2, 0]), num_items=4)
    assert list(zip(u.tolist(), i.tolist())) == [(0, 3), (1, 0), (1, 2)]


def test_symmetric_spmm_backward_is_torchs_csr_backward_and_csr_lightgcn_trains_like_pyg():
    """The backward that reuses the symmetric matrix gives torch's CSR gradients (up to summation order), and a
    CSRLightGCN follows PyG's LightGCN step for step; a non-symmetric matrix would not (the reuse is what matters)."""
    g = torch.Generator().manual_seed(0)
    U, I = 30, 40
    draw = lambda n: torch.randint(0, n, (300,), generator=g).numpy()
    u, i = lg.unique_pairs(draw(U), draw(I), I)
    u, i = torch.as_tensor(u), torch.as_tensor(i)
    adj = lg.normalized_adjacency(lg.bipartite_edge_index(u, i, U), U + I)
    x = torch.randn(U + I, 8, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(U + I, 8, generator=g, dtype=torch.float64)
    adj64 = adj.to(torch.float64)
    (gx_torch,) = torch.autograd.grad((adj64 @ x * w).sum(), x)
    (gx_sym,) = torch.autograd.grad((lg.symmetric_spmm(adj64, x) * w).sum(), x)
    torch.testing.assert_close(gx_sym, gx_torch, rtol=1e-12, atol=1e-12)
    upper = torch.triu(adj64.to_dense()).to_sparse_csr()  # not symmetric: reusing it in the backward is wrong
    (gx_up,) = torch.autograd.grad((upper @ x * w).sum(), x)
    assert not torch.allclose(torch.autograd.grad((lg.symmetric_spmm(upper, x) * w).sum(), x)[0], gx_up)

    torch.manual_seed(0)
    reference = lg.build_model(U, I, 8, 3)  # PyG's LightGCN: LGConv over the same CSR matrix
    fast = lg.CSRLightGCN(U + I, 8, 3)
    fast.load_state_dict(reference.state_dict())
    start = fast.embedding.weight.detach().clone()
    opts = [torch.optim.Adam(m.parameters(), lr=0.05) for m in (reference, fast)]
    for _ in range(30):
        idx = torch.randint(0, len(u), (64,), generator=g)
        label = lg.sample_bpr_batch(torch.stack([u[idx], i[idx] + U]), U, I, generator=g)
        for m, opt in zip((reference, fast), opts):
            opt.zero_grad()
            lg.bpr_step(m, adj, label, 1e-4).backward()
            opt.step()
    torch.testing.assert_close(fast.get_embedding(adj), reference.get_embedding(adj), rtol=1e-4, atol=1e-5)
    assert (fast.embedding.weight - start).abs().max() > 0.1  # it trained
