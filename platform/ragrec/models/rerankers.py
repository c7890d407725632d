"""The five reranking backbones of UR4Rec (§3.3, §4.2): DLCM, PRM, SetRank, GRU4Rec and SASRec.

Every backbone scores a list of C candidate items for a user given the user's history and returns
``(B, C)`` logits (trained with a listwise softmax over the candidates, see :mod:`ragrec.training.rerank`).

Conventions (the ``rerank`` protocol):

* ``history`` (B, L) int64 holds **shifted** item ids ``item_id + 1``, ``0`` = padding, **left-padded**
  (most recent last). Padding never changes a score: the list models average over real items only, GRU4Rec
  reads its GRU at each history's last real item, SASRec masks padded keys and counts positions from the
  first real item.
* ``candidates`` (B, C) int64 are plain 0-based item ids; the shared item table has ``num_items + 1`` rows
  (row 0 = padding) and candidates are shifted by +1 inside.
* ``aug`` (B, C, A): UR4Rec's augmented vector ``e_i^aug`` of each candidate (Eq. 9), concatenated to the
  candidate's item embedding in the backbone's input and mapped back to ``dim`` by a linear layer
  (:meth:`RerankBackbone.candidate_input`); only when the backbone was built with ``aug_dim > 0``.

DLCM, PRM and SetRank are list-wise rerankers (they encode the dependencies among the candidates); their
"query" is a user context ``u``, the masked mean of the history's item embeddings: every candidate input is
``Linear([x_i; u; x_i * u])`` (see :meth:`_ListBackbone.list_input`). GRU4Rec and SASRec encode the
history into one user vector and score each candidate by a dot product.
"""

from __future__ import annotations

import torch
from torch import nn

from ragrec.config import RerankerConfig
from ragrec.models import sasrec as _sasrec

__all__ = [
    "BACKBONES",
    "DLCM",
    "MAX_CANDIDATES",
    "PRM",
    "GRU4Rec",
    "RerankBackbone",
    "SASRec",
    "SetRank",
    "build_backbone",
]

MAX_CANDIDATES = 512
"""Longest candidate list PRM's learned position table accepts."""


class RerankBackbone(nn.Module):
    """Base of the reranking backbones: the shared item table, the (augmented) candidate input, checks.

    Args:
        num_items: I, number of real items (the embedding table has I + 1 rows, row 0 = padding).
        cfg: :class:`RerankerConfig` (dim, heads, layers, dropout).
        history_len: longest history L accepted (SASRec's position table).
        aug_dim: A, size of the augmented vector of each candidate (0: no augmentation).
    """

    name = ""

    def __init__(self, num_items: int, cfg: RerankerConfig, history_len: int, aug_dim: int = 0):
        super().__init__()
        if num_items < 1 or history_len < 1 or aug_dim < 0:
            raise ValueError(
                f"{type(self).__name__}: need num_items >= 1, history_len >= 1, aug_dim >= 0, "
                f"got {num_items}, {history_len}, {aug_dim}"
            )
        self.num_items, self.history_len, self.aug_dim = int(num_items), int(history_len), int(aug_dim)
        self.dim, self.cfg = int(cfg.dim), cfg
        self.item_emb = nn.Embedding(self.num_items + 1, self.dim, padding_idx=0)
        nn.init.xavier_normal_(self.item_emb.weight)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
        self.aug_proj = nn.Linear(self.dim + self.aug_dim, self.dim) if self.aug_dim else None
        self.drop = nn.Dropout(cfg.dropout)

    # ------------------------------------------------------------------ inputs

    def check_inputs(self, history: torch.Tensor, candidates: torch.Tensor, aug: torch.Tensor | None) -> None:
        """Shape checks shared by every backbone (one-line errors naming the argument)."""
        if history.dim() != 2 or candidates.dim() != 2 or history.size(0) != candidates.size(0):
            raise ValueError(
                f"{self.name}: history must be (B, L) and candidates (B, C) with the same B, got "
                f"{tuple(history.shape)} and {tuple(candidates.shape)}"
            )
        if history.size(1) > self.history_len:
            raise ValueError(
                f"{self.name}: history length {history.size(1)} > history_len={self.history_len}; keep the most "
                "recent history_len items or build the backbone with a larger history_len"
            )
        if aug is not None and not self.aug_dim:
            raise ValueError(f"{self.name}: got aug but the backbone was built with aug_dim=0")
        if aug is not None and tuple(aug.shape) != (*candidates.shape, self.aug_dim):
            raise ValueError(
                f"{self.name}: aug has shape {tuple(aug.shape)}, expected {(*candidates.shape, self.aug_dim)}"
            )

    def candidate_input(self, candidates: torch.Tensor, aug: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, dim): each candidate's item embedding; with ``aug_dim > 0``, ``Linear([h_i; e_i^aug])``."""
        x = self.item_emb(candidates + 1)
        if self.aug_proj is None:
            if aug is not None:
                raise ValueError(f"{self.name}: got aug but the backbone was built with aug_dim=0")
            return x
        if aug is None:
            raise ValueError(f"{self.name}: built with aug_dim={self.aug_dim}: pass aug (B, C, {self.aug_dim})")
        return self.aug_proj(torch.cat([x, aug.to(x.dtype)], dim=-1))

    def history_mean(self, history: torch.Tensor) -> torch.Tensor:
        """(B, dim): mean of the real history items' embeddings (zeros for an empty history)."""
        n = (history != 0).sum(1, keepdim=True).clamp(min=1)
        return self.item_emb(history).sum(1) / n  # the padding row is zero

    def item_embeddings(self) -> torch.Tensor:
        """(I, dim) the trained item embeddings ``h_i`` (row k = item id k), what UR4Rec's retriever reads."""
        return self.item_emb.weight[1:]

    def forward(self, history: torch.Tensor, candidates: torch.Tensor, aug: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C) scores of ``candidates`` (B, C) given ``history`` (B, L) [and ``aug`` (B, C, A)]."""
        raise NotImplementedError


class _ListBackbone(RerankBackbone):
    """A list-wise reranker: every candidate input is fused with the user context (history mean)."""

    def __init__(self, num_items: int, cfg: RerankerConfig, history_len: int, aug_dim: int = 0):
        super().__init__(num_items, cfg, history_len, aug_dim)
        self.fuse = nn.Linear(3 * self.dim, self.dim)

    def list_input(self, history, candidates, aug) -> torch.Tensor:
        """(B, C, dim): ``Linear([x_i; u; x_i * u])`` per candidate, x_i = candidate_input, u = user context.

        The product term stands in for the user-item interaction that DLCM's query-document features and
        PRM's personalised vector (a pre-trained CTR model's hidden state for user and item) carry.
        """
        self.check_inputs(history, candidates, aug)
        x = self.candidate_input(candidates, aug)
        user = self.history_mean(history).unsqueeze(1).expand_as(x)
        return self.drop(self.fuse(torch.cat([x, user, x * user], dim=-1)))


def _encoder(cfg: RerankerConfig, name: str) -> nn.TransformerEncoder:
    """Post-LN Transformer encoder blocks (ReLU FFN of width 4 * dim), as in PRM and SetRank's MSAB."""
    if cfg.dim % cfg.heads:
        raise ValueError(f"{name}: reranker.dim={cfg.dim} must be divisible by reranker.heads={cfg.heads}")
    layer = nn.TransformerEncoderLayer(
        d_model=cfg.dim,
        nhead=cfg.heads,
        dim_feedforward=4 * cfg.dim,
        dropout=cfg.dropout,
        activation="relu",
        batch_first=True,
        norm_first=False,
    )
    return nn.TransformerEncoder(layer, num_layers=cfg.layers, enable_nested_tensor=False)


def _gru(cfg: RerankerConfig) -> nn.GRU:
    return nn.GRU(cfg.dim, cfg.dim, num_layers=cfg.layers, batch_first=True, dropout=cfg.dropout * (cfg.layers > 1))


class DLCM(_ListBackbone):
    """DLCM (Ai et al., SIGIR 2018, "Learning a Deep Listwise Context Model for Ranking Refinement").

    A GRU reads the candidate list in its given order; the final state ``s_n`` encodes the list context and
    each position's output ``o_i`` is scored by DLCM's local attention ``phi(o_i, s_n) = V (o_i * tanh(W s_n +
    b))``. Candidate inputs are the item embedding (+ aug) fused with the user context (history mean) in place
    of DLCM's query-document features. Simplified: one attention channel (DLCM's W is a k-channel tensor), the
    list is read in the given order (DLCM reads the initial ranking reversed, best last), softmax loss only.
    Order-dependent: permuting the candidates changes the scores, not only their order.
    """

    name = "dlcm"

    def __init__(self, num_items: int, cfg: RerankerConfig, history_len: int, aug_dim: int = 0):
        super().__init__(num_items, cfg, history_len, aug_dim)
        self.gru = _gru(cfg)
        self.att_w = nn.Linear(self.dim, self.dim)
        self.att_v = nn.Linear(self.dim, 1, bias=False)

    def forward(self, history, candidates, aug=None):
        out, h_n = self.gru(self.list_input(history, candidates, aug))  # (B, C, d), (layers, B, d)
        gate = torch.tanh(self.att_w(h_n[-1])).unsqueeze(1)
        return self.att_v(out * gate).squeeze(-1)


class PRM(_ListBackbone):
    """PRM (Pei et al., RecSys 2019, "Personalized Re-ranking for Recommendation").

    Input ``E = Linear([x_i; pv_i]) + PE_i``: each candidate's input (item embedding + aug) concatenated with
    its personalised vector, plus a learned embedding of its list position; then ``cfg.layers`` post-LN
    Transformer encoder blocks over the list and a linear layer to one score per position (softmax over the
    list in the loss). Simplified: ``pv_i = [u; x_i * u]`` with ``u`` the mean of the history's item embeddings,
    trained jointly (PRM takes ``pv_i`` from a pre-trained CTR model's hidden layer for user and item i).
    Order-dependent through the position embedding.
    """

    name = "prm"

    def __init__(self, num_items: int, cfg: RerankerConfig, history_len: int, aug_dim: int = 0):
        super().__init__(num_items, cfg, history_len, aug_dim)
        self.pos_emb = nn.Embedding(MAX_CANDIDATES, self.dim)
        nn.init.normal_(self.pos_emb.weight, std=0.02)  # N(0, 1) would drown the (xavier-scaled) item inputs
        self.encoder = _encoder(cfg, self.name)
        self.out = nn.Linear(self.dim, 1)

    def forward(self, history, candidates, aug=None):
        c = candidates.size(1)
        if c > MAX_CANDIDATES:
            raise ValueError(f"prm: {c} candidates > MAX_CANDIDATES={MAX_CANDIDATES} (its position table)")
        x = self.list_input(history, candidates, aug) + self.pos_emb(torch.arange(c, device=candidates.device))
        return self.out(self.encoder(x)).squeeze(-1)


class SetRank(_ListBackbone):
    """SetRank (Pang et al., SIGIR 2020, "SetRank: Learning a Permutation-Invariant Ranking Model").

    ``cfg.layers`` multi-head self-attention blocks (MSAB: ``LN(Y + rFF(Y))``, ``Y = LN(X + MHA(X, X, X))``,
    i.e. a post-LN Transformer encoder layer) over the candidate *set* with no position information, then a
    linear layer to one score per candidate: permutation-equivariant (permuting the candidates permutes the
    scores identically). Candidate inputs are fused with the user context (history mean) as in PRM, without
    positions. Simplified: no induced set attention blocks (IMSAB) and no initial-ranking features.
    """

    name = "setrank"

    def __init__(self, num_items: int, cfg: RerankerConfig, history_len: int, aug_dim: int = 0):
        super().__init__(num_items, cfg, history_len, aug_dim)
        self.encoder = _encoder(cfg, self.name)
        self.out = nn.Linear(self.dim, 1)

    def forward(self, history, candidates, aug=None):
        return self.out(self.encoder(self.list_input(history, candidates, aug))).squeeze(-1)


class GRU4Rec(RerankBackbone):
    """GRU4Rec (Hidasi et al., ICLR 2016, "Session-based Recommendations with Recurrent Neural Networks").

    A GRU (``cfg.layers`` layers) reads the history's item embeddings; its output at the last real item is
    the user vector and each candidate's score is ``user . candidate_input`` (item embedding, + aug).
    Simplified: embedding inputs instead of one-hot, whole histories instead of session-parallel
    mini-batches, listwise softmax over the given candidates instead of sampled BPR/TOP1.
    The left-padded history is right-aligned first, so padding never enters the GRU before a real item.
    """

    name = "gru4rec"

    def __init__(self, num_items: int, cfg: RerankerConfig, history_len: int, aug_dim: int = 0):
        super().__init__(num_items, cfg, history_len, aug_dim)
        self.gru = _gru(cfg)

    def user_vector(self, history: torch.Tensor) -> torch.Tensor:
        """(B, dim): the GRU output at each history's last real item."""
        length = history.size(1)
        lens = (history != 0).sum(1)
        cols = (torch.arange(length, device=history.device).unsqueeze(0) + (length - lens).unsqueeze(1)) % length
        right = history.gather(1, cols)  # real items first, in order, then the padding
        out, _ = self.gru(self.drop(self.item_emb(right)))
        last = (lens - 1).clamp(min=0)
        return out[torch.arange(history.size(0), device=history.device), last]

    def forward(self, history, candidates, aug=None):
        self.check_inputs(history, candidates, aug)
        return torch.einsum("bd,bcd->bc", self.user_vector(history), self.candidate_input(candidates, aug))


class SASRec(RerankBackbone):
    """SASRec (Kang & McAuley, ICDM 2018, "Self-Attentive Sequential Recommendation").

    :class:`ragrec.models.sasrec.SASRec` (pre-LN causal Transformer with learned positions over the history,
    padded keys masked, positions counted from the first real item) sharing this backbone's item table; its
    hidden state at the most recent item is the user vector and each candidate's score is
    ``user . candidate_input`` (item embedding, + aug). Simplified: trained with the listwise softmax over
    the given candidates instead of SASRec's per-position BCE with one sampled negative.
    """

    name = "sasrec"

    def __init__(self, num_items: int, cfg: RerankerConfig, history_len: int, aug_dim: int = 0):
        super().__init__(num_items, cfg, history_len, aug_dim)
        self.net = _sasrec.SASRec(num_items, cfg.dim, cfg.layers, cfg.heads, history_len, cfg.dropout)
        self.item_emb = self.net.item_emb  # one table for history and candidates

    def forward(self, history, candidates, aug=None):
        self.check_inputs(history, candidates, aug)
        user = self.net.user_repr(history)
        return torch.einsum("bd,bcd->bc", user, self.candidate_input(candidates, aug))


BACKBONES: dict[str, type[RerankBackbone]] = {
    "dlcm": DLCM,
    "prm": PRM,
    "setrank": SetRank,
    "gru4rec": GRU4Rec,
    "sasrec": SASRec,
}


def build_backbone(
    name: str, num_items: int, cfg: RerankerConfig, history_len: int, aug_dim: int = 0
) -> RerankBackbone:
    """The backbone ``name`` (one of :data:`BACKBONES`)."""
    if name not in BACKBONES:
        raise ValueError(f"unknown reranker backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    return BACKBONES[name](num_items, cfg, history_len, aug_dim)
