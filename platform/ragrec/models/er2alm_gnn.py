"""ER2ALM enhanced representation learning (§3.5, Eq. 13-14): LightGCN whose layer-0 node features add projected
side embeddings.

``x0[u] = id[u] + P_u s_u`` with ``s_u`` the user profile (Eq. 5: ``sum_k w_k e_k``, :func:`user_side_features`);
``x0[i] = id[i] + P_i s_i`` with ``s_i`` the item's basic-attribute embedding and its kept aspects
(:func:`item_side_features`); ``P_u``, ``P_i`` are learned linear maps (no bias), side rows are L2-normalised.
The layers are PyG's LightGCN (:class:`ER2ALMGNN` subclasses it through
:class:`~ragrec.models.lightgcn.CSRLightGCN`: same graph convention, propagation, ``forward`` scores and
``recommendation_loss``), so ``r(u, i) = e_u · e_i`` (Eq. 13) and BPR (Eq. 14) come from
:mod:`ragrec.models.lightgcn`. Flags: ``side=False`` is plain LightGCN; ``use_users`` / ``use_items`` False drop
that side (the w/o user / item information ablations).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ragrec.models.lightgcn import CSRLightGCN


def user_side_features(profile: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Eq. 5: ``sum_k w_k e_k`` of a per-aspect profile (U, K, d) with weights (U, K) -> (U, d) float32.
    ``weights=None``: the uniform mean (the w/o weights ablation)."""
    p = np.asarray(profile, dtype=np.float32)
    if p.ndim != 3:
        raise ValueError(f"user_side_features: profile must be (U, K, d), got {p.shape}")
    w = np.full(p.shape[:2], 1.0 / p.shape[1], np.float32) if weights is None else np.asarray(weights, np.float32)
    if w.shape != p.shape[:2]:
        raise ValueError(f"user_side_features: weights must be {p.shape[:2]}, got {w.shape}")
    return np.einsum("uk,ukd->ud", w, p).astype(np.float32)


def item_side_features(
    basic: np.ndarray, aspects: np.ndarray, kept: np.ndarray | None = None, mode: str = "concat"
) -> np.ndarray:
    """Item side input from basic (I, d_b) and aspects (I, K, d) with ``kept`` (I, K) (None: all kept).

    ``concat``: ``[basic; aspect_1; ...; aspect_K]`` with dropped aspects zeroed, (I, d_b + K d);
    ``mean``: the mean of the basic embedding and the kept aspects, (I, d) (needs d_b == d).
    """
    b = np.asarray(basic, dtype=np.float32)
    a = np.asarray(aspects, dtype=np.float32)
    keep = np.ones(a.shape[:2], bool) if kept is None else np.asarray(kept, bool)
    if a.ndim != 3 or b.ndim != 2 or len(a) != len(b) or keep.shape != a.shape[:2]:
        raise ValueError(
            f"item_side_features: basic (I, d), aspects (I, K, d), kept (I, K) expected, got "
            f"{b.shape}, {a.shape}, {keep.shape}"
        )
    a = a * keep[..., None]
    if mode == "concat":
        return np.concatenate([b, a.reshape(len(a), -1)], axis=1)
    if mode == "mean":
        if b.shape[1] != a.shape[2]:
            raise ValueError(f"item_side_features(mode='mean'): basic dim {b.shape[1]} != aspect dim {a.shape[2]}")
        return ((b + a.sum(1)) / (1.0 + keep.sum(1, keepdims=True))).astype(np.float32)
    raise ValueError(f"item_side_features: mode must be 'concat' or 'mean', got {mode!r}")


class ER2ALMGNN(CSRLightGCN):
    """LightGCN over ``num_users + num_items`` nodes (users first) with side embeddings added at layer 0.

    Use with the pre-normalised CSR adjacency of :func:`ragrec.models.lightgcn.normalized_adjacency`.
    ``user_side`` (U, d_u) / ``item_side`` (I, d_i) are fixed inputs (non-persistent buffers: not in the state
    dict); they are required when used (``side and use_users`` / ``side and use_items``) and ignored otherwise.
    """

    def __init__(
        self,
        num_users: int,
        num_items: int,
        dim: int,
        num_layers: int,
        *,
        user_side: np.ndarray | torch.Tensor | None = None,
        item_side: np.ndarray | torch.Tensor | None = None,
        side: bool = True,
        use_users: bool = True,
        use_items: bool = True,
    ):
        super().__init__(num_users + num_items, dim, num_layers)
        self.num_users, self.num_items = int(num_users), int(num_items)
        self.uses_users, self.uses_items = bool(side and use_users), bool(side and use_items)
        self.user_proj = self._side("user", user_side, self.num_users, dim) if self.uses_users else None
        self.item_proj = self._side("item", item_side, self.num_items, dim) if self.uses_items else None

    def _side(self, who: str, feats, rows: int, dim: int) -> nn.Linear:
        if feats is None:
            raise ValueError(f"ER2ALMGNN: {who}_side is required with side=True and use_{who}s=True")
        x = torch.as_tensor(np.asarray(feats, dtype=np.float32))
        if x.ndim != 2 or x.shape[0] != rows:
            raise ValueError(f"ER2ALMGNN: {who}_side must be ({rows}, d), got {tuple(x.shape)}")
        self.register_buffer(f"{who}_side", F.normalize(x, dim=1), persistent=False)
        return nn.Linear(x.shape[1], dim, bias=False)

    def reset_parameters(self):
        super().reset_parameters()
        for proj in (getattr(self, "user_proj", None), getattr(self, "item_proj", None)):
            if proj is not None:
                proj.reset_parameters()

    def side_embedding(self) -> torch.Tensor | None:
        """Projected side embeddings (U + I, dim) added to the ID embeddings, None with no side."""
        if not (self.uses_users or self.uses_items):
            return None
        w = self.embedding.weight
        users = self.user_proj(self.user_side) if self.uses_users else w.new_zeros(self.num_users, w.shape[1])
        items = self.item_proj(self.item_side) if self.uses_items else w.new_zeros(self.num_items, w.shape[1])
        return torch.cat([users, items])

    def get_embedding(self, edge_index, edge_weight=None) -> torch.Tensor:
        """LightGCN's layer combination ``sum_l alpha_l x_l`` from ``x_0 = id + side``: (U + I, dim)."""
        x = self.embedding.weight
        s = self.side_embedding()
        return self.propagate_from(x if s is None else x + s, edge_index, edge_weight)
