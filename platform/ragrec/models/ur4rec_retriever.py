"""UR4Rec's user preference retriever (paper §3.2-3.3, Eq. 4-9, Fig. 3).

A stack of BERT-style post-LN blocks (Eq. 4): self-attention over the direct input X, cross-attention of X
(query) over Z = the projected e_u^aggr slots (key/value), and a GELU FFN, each followed by residual +
LayerNorm. The direct input is built from K learnable proxies P and the recommender's item representations
h_i (projected to the hidden size); there are no position embeddings (proxies are told apart by their own
learned vectors, and items' order carries no meaning).

Uses (X^0 / Z / mask):

* :meth:`PreferenceRetriever.preference` (Eq. 6): X^0 = P, Z = e_aggr, mask (a) -> e^pref (B, K, H).
* :meth:`PreferenceRetriever.items` (Eq. 7): X^0 = h_i alone (a length-1 sequence), no cross-attention.
* :meth:`PreferenceRetriever.match_logit` (Eq. 8): X^0 = [P; h_i], Z = e_aggr, mask (b); the logit is
  ``match_head`` of the mean of the K proxy outputs.
* :meth:`PreferenceRetriever.augment` (multi-item form after Eq. 9): X^0 = [P; h_1..h_n], Z = e_aggr,
  mask (c); e_aug of item j = the mean of the K proxy outputs and item j's output.

Masks are boolean "may attend" matrices (True = the query row may attend the key column), shaped
(B or 1, Lq, Lk), passed to :func:`torch.nn.functional.scaled_dot_product_attention`. Padding slots of
e_aggr (``aggr_mask`` False) are never attended. A query row with no visible key at all (an e_aggr whose
slots are all padding) gets a zero cross-attention output instead of NaN.

Losses: :func:`proxy_similarity` (the paper's sim), :func:`cl_loss` (InfoNCE, L_CL) and :func:`pim_loss`
(BCE, L_PIM).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "Attention",
    "PreferenceRetriever",
    "RetrieverBlock",
    "cl_loss",
    "cross_mask",
    "init_from_encoder",
    "mask_a",
    "mask_b",
    "mask_c",
    "pim_loss",
    "proxy_similarity",
]

LN_EPS = 1e-12  # BERT's LayerNorm epsilon


# ----------------------------------------------------------------------------- masks


def cross_mask(aggr_mask: torch.Tensor, queries: int) -> torch.Tensor:
    """(B, queries, M) bool: every query may attend every valid e_aggr slot (``aggr_mask`` (B, M) True)."""
    return aggr_mask.bool()[:, None, :].expand(-1, queries, -1)


def mask_a(proxies: int, aggr_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Fig. 3(a), Eq. 6: X^0 = P (K proxies), Z = e_aggr. Returns (self mask (1, K, K), cross mask (B, K, M)).

    Bidirectional: every proxy attends every proxy and every valid e_aggr slot (padding slots ``.`` masked)::

        self-attention        cross-attention (slots e_u, e_i1, e_i2, pad)
              p1 p2 p3                e_u e_i1 e_i2 pad
          p1 [ 1  1  1 ]         p1 [  1    1    1   . ]
          p2 [ 1  1  1 ]         p2 [  1    1    1   . ]
          p3 [ 1  1  1 ]         p3 [  1    1    1   . ]

    The cross mask is None when ``aggr_mask`` is None.
    """
    self_mask = torch.ones(1, proxies, proxies, dtype=torch.bool, device=_dev(aggr_mask))
    return self_mask, None if aggr_mask is None else cross_mask(aggr_mask, proxies)


def mask_b(proxies: int, aggr_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Fig. 3(b), Eq. 8: X^0 = [P; h_i], Z = e_aggr. Returns (self mask (1, K+1, K+1), cross (B, K+1, M)).

    Fully bidirectional: proxies and the item attend each other (and themselves); every position attends
    every valid e_aggr slot::

              p1 p2  i
          p1 [ 1  1  1 ]      cross-attention: every row sees the valid slots of e_aggr
          p2 [ 1  1  1 ]
          i  [ 1  1  1 ]
    """
    n = proxies + 1
    self_mask = torch.ones(1, n, n, dtype=torch.bool, device=_dev(aggr_mask))
    return self_mask, None if aggr_mask is None else cross_mask(aggr_mask, n)


def mask_c(proxies: int, n: int, aggr_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Fig. 3(c), the multi-item form after Eq. 9: X^0 = [P; h_1..h_n]. Returns (self (1, K+n, K+n), cross).

    Proxies attend all proxies and all items; each item attends the proxies and itself, never another item
    (so item j's output does not depend on item k's input directly, only through the proxies)::

              p1 p2 i1 i2 i3
          p1 [ 1  1  1  1  1 ]
          p2 [ 1  1  1  1  1 ]
          i1 [ 1  1  1  .  . ]
          i2 [ 1  1  .  1  . ]
          i3 [ 1  1  .  .  1 ]

    Every position attends every valid e_aggr slot in cross-attention.
    """
    dev = _dev(aggr_mask)
    L = proxies + n
    self_mask = torch.zeros(1, L, L, dtype=torch.bool, device=dev)
    self_mask[:, :proxies, :] = True
    self_mask[:, :, :proxies] = True
    idx = torch.arange(proxies, L, device=dev)
    self_mask[:, idx, idx] = True
    return self_mask, None if aggr_mask is None else cross_mask(aggr_mask, L)


def _dev(t: torch.Tensor | None) -> torch.device | None:
    return None if t is None else t.device


# ----------------------------------------------------------------------------- blocks


class Attention(nn.Module):
    """Multi-head attention with BERT's parameter layout (query, key, value, output dense)."""

    def __init__(self, hidden: int, heads: int, dropout: float = 0.1):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"ur4rec retriever: hidden={hidden} must be divisible by heads={heads}")
        self.heads, self.dropout = heads, dropout
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.output = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor, kv: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, Lq, H) queries, kv (B, Lk, H) keys/values, mask (B or 1, Lq, Lk) bool -> (B, Lq, H)."""
        B, Lq, H = x.shape
        d = H // self.heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(B, t.size(1), self.heads, d).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(kv)), split(self.value(kv))
        ok = None
        if mask is not None:
            ok = mask.any(-1, keepdim=True)  # rows with no visible key: attend all, zero the output below
            mask = (mask | ~ok)[:, None]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        out = out.transpose(1, 2).reshape(B, Lq, H)
        if ok is not None:
            out = out * ok.to(out.dtype)
        return self.output(out)


class RetrieverBlock(nn.Module):
    """One block of Eq. 4, BERT-style post-LN:

    ``X_M = LN(X + MHAtt(X))``, ``X_C = LN(X_M + CrossAtt(X_M, Z))`` (skipped when Z is None, Eq. 7),
    ``X' = LN(X_C + FFN(X_C))`` with ``FFN = Linear -> GELU -> Linear``.
    """

    def __init__(self, hidden: int = 384, heads: int = 12, ffn: int = 1536, dropout: float = 0.1):
        super().__init__()
        self.self_attn = Attention(hidden, heads, dropout)
        self.self_norm = nn.LayerNorm(hidden, eps=LN_EPS)
        self.cross_attn = Attention(hidden, heads, dropout)
        self.cross_norm = nn.LayerNorm(hidden, eps=LN_EPS)
        self.ffn_in = nn.Linear(hidden, ffn)
        self.ffn_out = nn.Linear(ffn, hidden)
        self.ffn_norm = nn.LayerNorm(hidden, eps=LN_EPS)
        self.drop = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        z: torch.Tensor | None = None,
        self_mask: torch.Tensor | None = None,
        cross: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, L, H), z (B, M, H) or None, self_mask (B or 1, L, L), cross (B or 1, L, M) -> (B, L, H)."""
        x = self.self_norm(x + self.drop(self.self_attn(x, x, self_mask)))
        if z is not None:
            x = self.cross_norm(x + self.drop(self.cross_attn(x, z, cross)))
        return self.ffn_norm(x + self.drop(self.ffn_out(F.gelu(self.ffn_in(x)))))


# ----------------------------------------------------------------------------- the retriever


class PreferenceRetriever(nn.Module):
    """The retriever of UR4Rec.

    Args:
        item_dim: D, size of the recommender's item representations h_i.
        proxies: K learnable proxies. layers: blocks. hidden / heads / ffn: block sizes (BERT's when the
            weights come from :func:`init_from_encoder`). aggr_dim: E, size of the encoded s_u / s_i.
        dropout: on attention probabilities and sub-layer outputs (BERT: 0.1).
    """

    def __init__(
        self,
        item_dim: int,
        proxies: int,
        layers: int,
        hidden: int = 384,
        heads: int = 12,
        ffn: int = 1536,
        aggr_dim: int = 384,
        dropout: float = 0.1,
    ):
        super().__init__()
        self.item_dim, self.num_proxies, self.num_layers = int(item_dim), int(proxies), int(layers)
        self.hidden, self.heads, self.ffn, self.aggr_dim, self.dropout = hidden, heads, ffn, aggr_dim, dropout
        self.proxies = nn.Parameter(torch.randn(proxies, hidden) * 0.02)
        self.item_proj = nn.Linear(item_dim, hidden)
        self.aggr_proj = nn.Linear(aggr_dim, hidden)
        if aggr_dim == hidden:  # start from the encoder's own space
            with torch.no_grad():
                self.aggr_proj.weight.copy_(torch.eye(hidden))
                self.aggr_proj.bias.zero_()
        self.input_norm = nn.LayerNorm(hidden, eps=LN_EPS)  # like BERT's embedding LayerNorm, on P and h_i
        self.blocks = nn.ModuleList(RetrieverBlock(hidden, heads, ffn, dropout) for _ in range(layers))
        self.match_head = nn.Linear(hidden, 1)

    def sizes(self) -> dict:
        """The constructor's arguments (to rebuild the module from a state dict)."""
        return {
            "item_dim": self.item_dim,
            "proxies": self.num_proxies,
            "layers": self.num_layers,
            "hidden": self.hidden,
            "heads": self.heads,
            "ffn": self.ffn,
            "aggr_dim": self.aggr_dim,
            "dropout": self.dropout,
        }

    # -- pieces

    def encode(self, x: torch.Tensor, *context: torch.Tensor | None) -> torch.Tensor:
        """The blocks over a direct input x (B, L, H) (already projected / normalised); ``context`` is what
        :meth:`RetrieverBlock.forward` takes after x (z, self_mask, cross), passed to every block."""
        for block in self.blocks:
            x = block(x, *context)
        return x

    def _proxy_input(self, batch: int) -> torch.Tensor:
        return self.input_norm(self.proxies).unsqueeze(0).expand(batch, -1, -1)

    def _item_input(self, h: torch.Tensor) -> torch.Tensor:
        return self.input_norm(self.item_proj(h))

    def _z(self, aggr: torch.Tensor) -> torch.Tensor:
        return self.aggr_proj(aggr)

    # -- Eq. 6-9

    def preference(self, aggr: torch.Tensor, aggr_mask: torch.Tensor) -> torch.Tensor:
        """Eq. 6: e^pref = Retriever(P, e_aggr) with mask (a). aggr (B, M, E), aggr_mask (B, M) -> (B, K, H)."""
        sm, cm = mask_a(self.num_proxies, aggr_mask)
        return self.encode(self._proxy_input(aggr.size(0)), self._z(aggr), sm, cm)

    def items(self, h: torch.Tensor) -> torch.Tensor:
        """Eq. 7: e_i = Retriever(h_i), each item alone (length-1 sequence), no cross-attention.
        h (B, n, D) -> (B, n, H)."""
        lead = h.shape[:-1]
        x = self._item_input(h.reshape(-1, 1, h.size(-1)))
        return self.encode(x).reshape(*lead, self.hidden)

    def match_logits(self, h: torch.Tensor, aggr: torch.Tensor, aggr_mask: torch.Tensor) -> torch.Tensor:
        """Eq. 8 for n items per sample, each scored separately: h (B, n, D) -> (B, n) logits.

        Every (sample, item) pair is its own sequence [P; h_i] (mask (b)) with the sample's e_aggr.
        """
        B, n, _ = h.shape
        K = self.num_proxies
        x = torch.cat([self._proxy_input(B * n), self._item_input(h.reshape(B * n, 1, -1))], dim=1)
        z = self._z(aggr).repeat_interleave(n, dim=0)
        sm, cm = mask_b(K, aggr_mask.repeat_interleave(n, dim=0))
        out = self.encode(x, z, sm, cm)
        return self.match_head(out[:, :K].mean(1)).view(B, n)

    def match_logit(self, h: torch.Tensor, aggr: torch.Tensor, aggr_mask: torch.Tensor) -> torch.Tensor:
        """Eq. 8: y = Linear(avg over the K proxy outputs of Retriever([P; h_i], e_aggr)), mask (b).
        h (B, D) -> (B,) logits."""
        return self.match_logits(h.unsqueeze(1), aggr, aggr_mask)[:, 0]

    def augment(self, h: torch.Tensor, aggr: torch.Tensor, aggr_mask: torch.Tensor) -> torch.Tensor:
        """The multi-item form after Eq. 9 with mask (c): h (B, n, D) -> e_aug (B, n, H).

        One sequence [P; h_1..h_n] per sample. "The aggregation of embeddings on the position of proxies and
        each item" is read as a mean: e_aug of item j = mean over {the K proxy outputs, item j's output}
        = (sum of the K proxy outputs + item j's output) / (K + 1).
        """
        B, n, _ = h.shape
        K = self.num_proxies
        x = torch.cat([self._proxy_input(B), self._item_input(h)], dim=1)
        sm, cm = mask_c(K, n, aggr_mask)
        out = self.encode(x, self._z(aggr), sm, cm)
        return (out[:, :K].sum(1, keepdim=True) + out[:, K:]) / (K + 1)


# ----------------------------------------------------------------------------- losses


def proxy_similarity(pref: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """The paper's sim: max over the K proxies of the cosine between a proxy output and an item.
    pref (B, K, H), items (B, n, H) -> (B, n)."""
    cos = torch.einsum("bkh,bnh->bkn", F.normalize(pref, dim=-1), F.normalize(items, dim=-1))
    return cos.max(dim=1).values


def cl_loss(
    pref: torch.Tensor,
    pos: torch.Tensor,
    neg: torch.Tensor,
    tau: float,
    neg_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """L_CL, InfoNCE: mean over samples of ``-log softmax([sim(pref, pos), sim(pref, neg_1..M)] / tau)[0]``.

    pref (B, K, H), pos (B, H), neg (B, M, H); ``neg_mask`` (B, M) bool drops negatives (False). The paper
    writes the denominator as a sum over the negatives only; we include the positive, as standard InfoNCE
    (the loss is then >= 0 and bounded below).
    """
    s = proxy_similarity(pref, torch.cat([pos.unsqueeze(1), neg], dim=1)) / tau  # (B, 1 + M)
    if neg_mask is not None:
        keep = torch.cat([torch.ones_like(neg_mask[:, :1]), neg_mask.bool()], dim=1)
        s = s.masked_fill(~keep, float("-inf"))
    return -torch.log_softmax(s, dim=1)[:, 0].mean()


def pim_loss(logit_pos: torch.Tensor, logit_neg: torch.Tensor, neg_mask: torch.Tensor | None = None) -> torch.Tensor:
    """L_PIM: binary cross-entropy with logits, positives labelled 1 and negatives 0, mean over all pairs.
    logit_pos (B,), logit_neg (B, M); ``neg_mask`` (B, M) bool drops negatives (False)."""
    lp = F.binary_cross_entropy_with_logits(logit_pos, torch.ones_like(logit_pos), reduction="sum")
    ln = F.binary_cross_entropy_with_logits(logit_neg, torch.zeros_like(logit_neg), reduction="none")
    if neg_mask is None:
        return (lp + ln.sum()) / (logit_pos.numel() + logit_neg.numel())
    w = neg_mask.to(ln.dtype)
    return (lp + (ln * w).sum()) / (logit_pos.numel() + w.sum())


# ----------------------------------------------------------------------------- init from BERT


_COPY = {  # retriever block key -> BERT layer key
    "self_attn.query": "attention.self.query",
    "self_attn.key": "attention.self.key",
    "self_attn.value": "attention.self.value",
    "self_attn.output": "attention.output.dense",
    "self_norm": "attention.output.LayerNorm",
    "ffn_in": "intermediate.dense",
    "ffn_out": "output.dense",
    "ffn_norm": "output.LayerNorm",
}


def init_from_encoder(retriever: PreferenceRetriever, model_name_or_path: str | Path) -> PreferenceRetriever:
    """Copy the self-attention and FFN weights (with their LayerNorms) of the first ``retriever.num_layers``
    layers of a BERT encoder into the retriever's blocks (paper: BERT-base; cross-attention, proxies and
    projections stay random). ``model_name_or_path``: a local folder, or a registry name (e.g.
    ``"minilm-l6"``, resolved by :func:`ragrec.llm.registry.model_path`). Returns ``retriever``.
    """
    from transformers import AutoModel

    path = Path(model_name_or_path)
    if not path.is_dir():
        from ragrec.llm.registry import model_path

        path = Path(model_path(str(model_name_or_path)))
    bert = AutoModel.from_pretrained(str(path), local_files_only=True)
    cfg = bert.config
    want = {"hidden": cfg.hidden_size, "heads": cfg.num_attention_heads, "ffn": cfg.intermediate_size}
    have = {"hidden": retriever.hidden, "heads": retriever.heads, "ffn": retriever.ffn}
    if want != have:
        raise ValueError(f"ur4rec retriever sizes {have} differ from the encoder {path.name}'s {want}")
    if cfg.hidden_act != "gelu" or getattr(cfg, "layer_norm_eps", LN_EPS) != LN_EPS:
        raise ValueError(f"ur4rec retriever: {path.name} is not a BERT with exact GELU and LayerNorm eps 1e-12")
    if retriever.num_layers > cfg.num_hidden_layers:
        raise ValueError(f"ur4rec retriever: {retriever.num_layers} layers but the encoder has {cfg.num_hidden_layers}")
    layers = bert.encoder.layer
    with torch.no_grad():
        for block, layer in zip(retriever.blocks, layers):
            for ours, theirs in _COPY.items():
                dst, src = block.get_submodule(ours), layer.get_submodule(theirs)
                dst.weight.copy_(src.weight)
                dst.bias.copy_(src.bias)
    return retriever
