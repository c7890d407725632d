"""LightGCN collaborative embeddings (RALLRec step 3) on PyG's ``LightGCN``.

Graph convention (as in PyG ``examples/lightgcn.py``): one node set with users ``0..U-1`` and items
``U..U+I-1``; every interaction is an edge in both directions. Training is BPR with one random
negative item per positive edge.

Speed: the symmetric normalisation ``D^-1/2 A D^-1/2`` is computed once and the graph is passed to
PyG's ``LightGCN`` (built with ``normalize=False``) as a sparse CSR matrix, so each layer is one
sparse-dense matmul instead of a re-normalisation plus scatter: ~30x faster per step on CPU, same
embeddings (checked in tests/unit/test_models_lightgcn.py). That matrix is symmetric, so :class:`CSRLightGCN`'s
layers multiply by the same matrix in the backward (:func:`symmetric_spmm`), where torch's own CSR backward
transposes the matrix (a sort and a format conversion) at every layer of every step: about half of a LightGCN
step on CPU. Its gradients equal torch's up to rounding (summation order), not bit for bit, so a trainer moves
to it with a new stage version: the ER2ALM GNN uses it; RALLRec's LightGCN (:func:`build_model`) does not yet,
since its cached embeddings feed every later RALLRec stage.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch_geometric.nn.conv.gcn_conv import gcn_norm
from torch_geometric.nn.models import LightGCN


def validate_interactions(
    user_ids: np.ndarray, item_ids: np.ndarray, num_users: int, num_items: int, what: str = "interactions"
) -> tuple[np.ndarray, np.ndarray]:
    """Check and return ``(user_ids, item_ids)`` as int64 arrays of equal length (E,).

    Raises ValueError naming the field and the offending value when ids are out of ``0..n-1``.
    """
    u = np.asarray(user_ids)
    i = np.asarray(item_ids)
    if u.ndim != 1 or i.ndim != 1 or len(u) != len(i):
        raise ValueError(
            f"{what}: user_id and item_id must be 1-d arrays of equal length, got shapes {u.shape} and {i.shape}"
        )
    if len(u) == 0:
        raise ValueError(f"{what}: no interactions (empty user_id/item_id arrays)")
    for name, arr, n in (("user_id", u, num_users), ("item_id", i, num_items)):
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"{what}: {name} must be integer dense ids, got dtype {arr.dtype}")
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= n:
            bad = int(np.flatnonzero((arr < 0) | (arr >= n))[0])
            raise ValueError(
                f"{what}: {name}[{bad}]={int(arr[bad])} is outside 0..{n - 1} "
                f"(num_{name.split('_')[0]}s={n}); re-index ids densely or pass the right count"
            )
    return u.astype(np.int64, copy=False), i.astype(np.int64, copy=False)


def unique_pairs(user_ids: np.ndarray, item_ids: np.ndarray, num_items: int) -> tuple[np.ndarray, np.ndarray]:
    """Drop duplicate (user, item) pairs; returns sorted by (user, item). Shapes (E',)."""
    key = np.unique(user_ids.astype(np.int64) * num_items + item_ids.astype(np.int64))
    return key // num_items, key % num_items


def bipartite_edge_index(user_ids: torch.Tensor, item_ids: torch.Tensor, num_users: int) -> torch.Tensor:
    """Message-passing graph (2, 2E): user->item and item->user edges, items offset by ``num_users``."""
    src = user_ids.long()
    dst = item_ids.long() + num_users
    return torch.stack([torch.cat([src, dst]), torch.cat([dst, src])])


def normalized_adjacency(edge_index: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """Sparse CSR (N, N) ``D^-1/2 A D^-1/2`` of a symmetric ``edge_index`` (what LGConv computes)."""
    ei, w = gcn_norm(edge_index, None, num_nodes, add_self_loops=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        adj = torch.sparse_coo_tensor(ei, w, (num_nodes, num_nodes)).coalesce().to_sparse_csr()
    return adj


class _SymmetricSpMM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, adj: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ctx.adj = adj
        return adj @ x

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return None, ctx.adj @ grad


def symmetric_spmm(adj: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``adj @ x`` for a symmetric sparse ``adj`` (no gradient to it): the backward is ``adj @ grad``, since
    ``adj.T == adj``, instead of torch's transpose of ``adj`` at every call."""
    return _SymmetricSpMM.apply(adj, x)


class CSRLightGCN(LightGCN):
    """PyG's ``LightGCN`` (``normalize=False``) whose layers take the symmetric normalised CSR matrix of
    :func:`normalized_adjacency` through :func:`symmetric_spmm`; an ``edge_index`` still goes through PyG's
    ``LGConv``. Same parameters, state dict and outputs as ``LightGCN``."""

    def __init__(self, num_nodes: int, embedding_dim: int, num_layers: int):
        super().__init__(num_nodes=num_nodes, embedding_dim=embedding_dim, num_layers=num_layers, normalize=False)

    def propagate_from(self, x: torch.Tensor, adj: torch.Tensor, edge_weight=None) -> torch.Tensor:
        """``sum_l alpha_l x_l`` from layer-0 embeddings ``x`` (N, dim)."""
        csr = isinstance(adj, torch.Tensor) and adj.layout == torch.sparse_csr
        out = x * self.alpha[0]
        for i in range(self.num_layers):
            x = symmetric_spmm(adj, x) if csr else self.convs[i](x, adj, edge_weight)
            out = out + x * self.alpha[i + 1]
        return out

    def get_embedding(self, edge_index, edge_weight=None) -> torch.Tensor:
        return self.propagate_from(self.embedding.weight, edge_index, edge_weight)


def build_model(num_users: int, num_items: int, dim: int, num_layers: int, *, normalize: bool = False) -> LightGCN:
    """PyG LightGCN over ``num_users + num_items`` nodes.

    ``normalize=False`` expects the pre-normalised adjacency of :func:`normalized_adjacency`;
    ``normalize=True`` is PyG's default (normalises ``edge_index`` at every layer call).
    """
    return LightGCN(num_nodes=num_users + num_items, embedding_dim=dim, num_layers=num_layers, normalize=normalize)


def sample_bpr_batch(
    pos_label_index: torch.Tensor, num_users: int, num_items: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Positive (user, item-node) pairs (2, B) -> (2, 2B): positives then one random negative each."""
    b = pos_label_index.size(1)
    neg_items = torch.randint(
        num_users, num_users + num_items, (b,), device=pos_label_index.device, generator=generator
    )
    neg = torch.stack([pos_label_index[0], neg_items])
    return torch.cat([pos_label_index, neg], dim=1)


def bpr_step(model: torch.nn.Module, adj: torch.Tensor, label_index: torch.Tensor, lambda_reg: float) -> torch.Tensor:
    """BPR loss (scalar) of a (2, 2B) positives+negatives batch via ``LightGCN.recommendation_loss``.

    ``adj``: the graph as the model expects it (normalised CSR, or ``edge_index`` with normalize=True).

    ``model`` may be DDP-wrapped: the forward goes through the wrapper (gradient sync), the loss
    through the underlying module.
    """
    core = getattr(model, "module", model)
    pos_rank, neg_rank = model(adj, label_index).chunk(2)
    return core.recommendation_loss(pos_rank, neg_rank, node_id=label_index.unique(), lambda_reg=lambda_reg)


@torch.no_grad()
def recall_at_k(
    user_emb: torch.Tensor,
    item_emb: torch.Tensor,
    train_users: torch.Tensor,
    train_items: torch.Tensor,
    eval_users: torch.Tensor,
    eval_items: torch.Tensor,
    k: int = 20,
    chunk: int = 2048,
) -> float:
    """Mean Recall@k over users with at least one held-out item, full ranking over all items.

    Scores are ``user_emb @ item_emb.T`` (U, I); the user's training items are masked to -inf;
    recall of a user = |top-k ∩ held-out| / |held-out|. Users are processed in chunks of ``chunk``
    rows (vectorised within a chunk) to bound memory at ``chunk x I``.
    """
    num_users, num_items = user_emb.size(0), item_emb.size(0)
    k = min(k, num_items)
    device = user_emb.device
    n_eval = torch.bincount(eval_users, minlength=num_users)
    total, counted = 0.0, 0
    for start in range(0, num_users, chunk):
        stop = min(start + chunk, num_users)
        scores = user_emb[start:stop] @ item_emb.T
        tm = (train_users >= start) & (train_users < stop)
        scores[train_users[tm] - start, train_items[tm]] = float("-inf")
        truth = torch.zeros(stop - start, num_items, dtype=torch.bool, device=device)
        em = (eval_users >= start) & (eval_users < stop)
        truth[eval_users[em] - start, eval_items[em]] = True
        top = scores.topk(k, dim=1).indices
        hits = truth.gather(1, top).sum(1).float()
        n = n_eval[start:stop].float()
        has = n > 0
        total += (hits[has] / n[has]).sum().item()
        counted += int(has.sum())
    if counted == 0:
        raise ValueError("recall_at_k: eval_pairs hold no user with a held-out item")
    return total / counted
