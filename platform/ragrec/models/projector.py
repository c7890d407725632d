"""RALLRec alignment projector (paper Eq. 5 and 6).

``MLP(e_text)`` maps a text embedding into the collaborative space; it is trained with the
symmetric InfoNCE of Eq. 5 against the fixed LightGCN embedding ``e_colla`` of the same item, the
other items of the batch being the negatives; ``e_ssl = MLP(e_text)`` (Eq. 6).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Projector(nn.Sequential):
    """Two-layer MLP ``Linear(d_text, hidden) -> ReLU -> Linear(hidden, d_colla)``: (B, d_text) -> (B, d_colla)."""

    def __init__(self, text_dim: int, hidden_dim: int, out_dim: int):
        super().__init__(nn.Linear(text_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, out_dim))


def symmetric_info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Eq. 5: ``-mean_i [log softmax_j(s_ij)[i] + log softmax_j(s_ji)[i]]`` with ``s = cos(a_i, b_j)/τ``.

    ``a``, ``b``: (B, d) row-aligned pairs (a_i matches b_i); returns a scalar. The two directions
    are summed as in the paper (not averaged), so the minimum is 0 and a batch of unrelated rows at
    τ=1 costs about ``2 log B``.
    """
    if a.shape != b.shape or a.dim() != 2:
        raise ValueError(f"symmetric_info_nce: a and b must both be (B, d), got {tuple(a.shape)} and {tuple(b.shape)}")
    if temperature <= 0:
        raise ValueError(f"symmetric_info_nce: temperature must be > 0, got {temperature}")
    logits = F.normalize(a, dim=1) @ F.normalize(b, dim=1).T / temperature  # (B, B)
    target = torch.arange(a.size(0), device=a.device)
    return F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)


@torch.no_grad()
def alignment_top1(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Fraction of rows i whose most cosine-similar row of ``target`` (N, d) is row i of ``pred`` (N, d)."""
    sim = F.normalize(pred, dim=1) @ F.normalize(target, dim=1).T
    return (sim.argmax(dim=1) == torch.arange(pred.size(0), device=pred.device)).float().mean().item()
