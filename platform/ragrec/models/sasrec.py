"""SASRec (Kang & McAuley 2018): causal self-attention over a user's item sequence (SCoRe's CRM).

Conventions:

* Sequences hold **shifted** item ids ``item_id + 1``; ``0`` is padding. They are **left-padded**
  and most-recent-last (what :func:`pad_sequences` builds), so position ``-1`` is the latest item.
* Candidate items passed to :meth:`SASRec.score` / :func:`sample_negatives` are plain 0-based ids.
* Positions are counted from a sequence's first real item (0, 1, ...), and every query attends only
  to itself and to earlier *real* items, so the outputs at real positions do not depend on how much
  left padding a sequence has (padded positions output zeros).

Blocks are ``torch.nn.TransformerEncoderLayer`` (pre-LN, batch_first, ReLU FFN of width ``dim`` as in
the paper) followed by a final LayerNorm.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

__all__ = [
    "SASRec",
    "interaction_keys",
    "leave_one_out_metrics",
    "pad_sequences",
    "sample_negatives",
]


class SASRec(nn.Module):
    """Self-attentive sequential recommender.

    Args:
        num_items: I, number of real items (embedding table has I + 1 rows, row 0 = padding).
        dim: hidden size d. num_layers / num_heads: transformer blocks / heads (dim % heads == 0).
        max_len: longest sequence L accepted by :meth:`forward` (positional table size).
        dropout: on embeddings, attention and FFN.
    """

    def __init__(
        self,
        num_items: int,
        dim: int = 64,
        num_layers: int = 2,
        num_heads: int = 1,
        max_len: int = 50,
        dropout: float = 0.2,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"sasrec.dim={dim} must be divisible by sasrec.num_heads={num_heads}")
        self.num_items, self.dim, self.num_heads, self.max_len = int(num_items), int(dim), int(num_heads), int(max_len)
        self.item_emb = nn.Embedding(self.num_items + 1, dim, padding_idx=0)
        self.pos_emb = nn.Embedding(self.max_len, dim)
        self.emb_dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(
            d_model=dim,
            nhead=num_heads,
            dim_feedforward=dim,
            dropout=dropout,
            activation="relu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers=num_layers, enable_nested_tensor=False)
        self.final_norm = nn.LayerNorm(dim)
        nn.init.xavier_normal_(self.item_emb.weight)
        nn.init.xavier_normal_(self.pos_emb.weight)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def attention_mask(self, seqs: torch.Tensor) -> torch.Tensor:
        """Boolean mask (B*heads, L, L), True = blocked: later positions and padded keys, never self."""
        _b, length = seqs.shape
        pad = seqs == 0
        eye = torch.eye(length, dtype=torch.bool, device=seqs.device)
        causal = torch.ones(length, length, dtype=torch.bool, device=seqs.device).triu(1)
        blocked = (causal.unsqueeze(0) | pad.unsqueeze(1)) & ~eye
        return blocked.repeat_interleave(self.num_heads, dim=0)

    def forward(self, seqs: torch.Tensor) -> torch.Tensor:
        """Hidden states (B, L, dim) of left-padded shifted-id sequences ``seqs`` (B, L) long.

        Output at position t depends only on the real items at positions <= t; padded positions are 0.
        """
        if seqs.dim() != 2:
            raise ValueError(f"sasrec: seqs must be (batch, length), got shape {tuple(seqs.shape)}")
        if seqs.size(1) > self.max_len:
            raise ValueError(
                f"sasrec: sequence length {seqs.size(1)} > sasrec.max_len={self.max_len}; "
                "keep the most recent max_len items (pad_sequences does) or raise max_len"
            )
        real = seqs != 0
        pos = (real.long().cumsum(1) - 1).clamp(min=0)  # 0 at the first real item
        x = self.item_emb(seqs) * self.dim**0.5 + self.pos_emb(pos) * real.unsqueeze(-1)
        x = self.emb_dropout(x)
        x = self.encoder(x, mask=self.attention_mask(seqs))
        return self.final_norm(x) * real.unsqueeze(-1)

    def user_repr(self, seqs: torch.Tensor) -> torch.Tensor:
        """(B, dim): the hidden state at the last position (the most recent item)."""
        return self.forward(seqs)[:, -1]

    def item_vectors(self) -> torch.Tensor:
        """(I, dim) item embeddings without the padding row (row k = item id k)."""
        return self.item_emb.weight[1:]

    def score(self, seqs: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Dot products (B, C) of each user's representation with candidate 0-based ``items`` (B, C)."""
        h = self.user_repr(seqs)
        return torch.einsum("bd,bcd->bc", h, self.item_emb(items + 1))


def pad_sequences(
    user_ids: np.ndarray, item_ids: np.ndarray, timestamps: np.ndarray, num_users: int, max_len: int
) -> np.ndarray:
    """(U, max_len) int64: each user's ``max_len`` most recent items as ``item_id + 1``, left-padded with 0.

    Rows are ordered by (timestamp, original row order) so ties keep their input order; users
    without interactions get all-zero rows. Vectorised: one lexsort + per-user offsets.
    """
    u = np.asarray(user_ids, dtype=np.int64)
    i = np.asarray(item_ids, dtype=np.int64)
    t = np.asarray(timestamps)
    if not (u.shape == i.shape == t.shape) or u.ndim != 1:
        raise ValueError(
            f"pad_sequences: user_ids, item_ids, timestamps must be 1-d of equal length, got "
            f"{u.shape}, {i.shape}, {t.shape}"
        )
    out = np.zeros((num_users, max_len), dtype=np.int64)
    if len(u) == 0:
        return out
    order = np.lexsort((np.arange(len(u)), t, u))  # by user, then time, then input order
    su, si = u[order], i[order]
    counts = np.bincount(su, minlength=num_users)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(len(su)) - starts[su]  # 0 = oldest item of the user
    col = max_len - counts[su] + rank  # most recent item lands in column max_len - 1
    keep = col >= 0
    out[su[keep], col[keep]] = si[keep] + 1
    return out


def interaction_keys(user_ids: torch.Tensor, item_ids: torch.Tensor, num_items: int) -> torch.Tensor:
    """Sorted unique int64 keys ``user * num_items + item`` (for :func:`sample_negatives`)."""
    return torch.unique(user_ids.long() * num_items + item_ids.long())


def sample_negatives(
    users: torch.Tensor,
    num: int,
    num_items: int,
    known_keys: torch.Tensor,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``num`` uniform random 0-based items per user among the items the user has NOT interacted with.

    Exact and rejection-free: draw ``r`` uniform in ``[0, I - m_u)`` (``m_u`` = the user's known
    items) and map it to the r-th unknown item with one ``searchsorted`` over the keys shifted by
    their rank inside the user's segment (``item - rank`` counts the unknown items below ``item``).

    Args:
        users: (N,) user ids. known_keys: :func:`interaction_keys` (sorted unique) of the
            interactions to avoid.
    Returns:
        items (N, num) int64 and ok (N, num) bool: False for users who know every item (their
        entries are meaningless; callers drop them).
    """
    dev = users.device
    users = users.long()
    keys = known_keys.long().to(dev)
    ku = torch.div(keys, num_items, rounding_mode="floor")
    seg_start = torch.searchsorted(keys, ku * num_items)  # first key of each key's user
    adj = keys - (torch.arange(keys.numel(), device=dev) - seg_start)  # user*I + (#unknown items below item)
    start = torch.searchsorted(keys, users * num_items)
    known = torch.searchsorted(keys, (users + 1) * num_items) - start  # m_u, (N,)
    free = (num_items - known).clamp(min=1).unsqueeze(1)
    r = (torch.rand(users.numel(), num, device=dev, generator=generator) * free).long().clamp(max=free - 1)
    below = torch.searchsorted(adj, users.unsqueeze(1) * num_items + r, right=True) - start.unsqueeze(1)
    items = r + below
    ok = (known < num_items).unsqueeze(1).expand(-1, num).clone()
    return torch.where(ok, items, torch.zeros_like(items)), ok


def leave_one_out_metrics(
    pos_scores: torch.Tensor, neg_scores: torch.Tensor, neg_ok: torch.Tensor | None = None, k: int = 10
) -> dict[str, float]:
    """NDCG@k / HR@k of one held-out item ranked against sampled negatives.

    Args:
        pos_scores: (N,) score of each user's held-out item. neg_scores: (N, C) negatives' scores.
        neg_ok: (N, C) bool, False entries are ignored (see :func:`sample_negatives`).
    The rank is the number of negatives scoring >= the positive (ties count against the model, so a
    constant scorer gets rank C, not 0). Returns ``{"ndcg@k", "hr@k", "users_evaluated"}``.
    """
    n = int(pos_scores.numel())
    if n == 0:
        return {f"ndcg@{k}": 0.0, f"hr@{k}": 0.0, "users_evaluated": 0}
    beats = neg_scores >= pos_scores.unsqueeze(1)
    if neg_ok is not None:
        beats &= neg_ok
    rank = beats.sum(1).double()
    hit = rank < k
    ndcg = torch.where(hit, 1.0 / torch.log2(rank + 2.0), torch.zeros_like(rank))
    return {f"ndcg@{k}": float(ndcg.mean()), f"hr@{k}": float(hit.double().mean()), "users_evaluated": n}
