"""Augmented vectors from fixed text tables: the ``+text`` / ``+LLM`` (w/o Retr.) rows of UR4Rec.

:class:`TableAugmenter` gives each candidate ``[e_u ; e_i]``: the user's text embedding next to the
candidate's, both looked up in frozen tables (no retriever). It has the call signature of a reranker's
``augmenter`` (``(users, history, candidates) -> (B, C, A)``) and no trainable parameters.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class TableAugmenter(nn.Module):
    """``aug[b, c] = concat(user_table[users[b]], item_table[candidates[b, c]])``: ``(B, C, Eu + Ei)``."""

    def __init__(self, user_table: np.ndarray, item_table: np.ndarray):
        super().__init__()
        self.register_buffer("user_table", torch.as_tensor(np.asarray(user_table, dtype=np.float32)))
        self.register_buffer("item_table", torch.as_tensor(np.asarray(item_table, dtype=np.float32)))

    @property
    def dim(self) -> int:
        return int(self.user_table.shape[1] + self.item_table.shape[1])

    def forward(self, users: torch.Tensor, history: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        del history  # the user's text already summarises it
        u = self.user_table[users].unsqueeze(1).expand(-1, candidates.shape[1], -1)
        return torch.cat([u, self.item_table[candidates]], dim=-1)
