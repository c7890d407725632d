"""ER2ALM noise control (§3.4, Eq. 6-12, Algorithm 1 lines 12-31): which LLM-generated aspect embeddings of an
item are kept.

Readings of the paper (where it is loose):

* Eq. 6 ``w = MLP[W_r(basic | aspect)]``: :class:`EdgeWeightMLP` applies ``W_r`` (a linear map) to the
  concatenation ``[basic; aspect]``, then a small MLP whose output ``Emb_A`` lives in the basic-attribute
  space; the edge weight is ``w = Emb_A · basic`` (a logit). That makes Eq. 12's ``Emb_A · E`` literally the
  same quantity as Eq. 6's ``w``: ``Emb_A`` = the aspect under evaluation mapped (conditioned on the pair) into
  the reference space, ``E`` = the trusted marker (the item's basic-attribute embedding).
* Eq. 7 ``eps = (2 bias - 1) rand + (1 - bias)`` is ``eps ~ U(bias, 1 - bias)``; one ``eps`` per
  (item, aspect), since ``w`` is a scalar per edge (the paper's ``rand(d)`` would only matter for a vector
  ``w``).
* Eq. 8 is the binary-concrete (Gumbel-sigmoid) relaxation ``J = sigma((logit(eps) + w) / tau)``:
  ``P(J > 0.5) = sigma(w)`` for every ``tau``; as ``tau -> 0`` J becomes that Bernoulli draw. (The mean of
  the *soft* J at ``tau = 1`` is not ``sigma(w)``: it is pulled toward 0.5.)
* Eq. 12 ``-sum log sigma(Emb_A · E)`` over the true (item, aspect) pairs alone is minimised by a constant
  huge ``w``, so :func:`denoise` adds the usual negative-sampling term: each aspect is also paired with the
  basic embedding of a random *other* item (a known-inaccurate pair) with the sign flipped,
  ``-log sigma(-Emb_A · E')``. :func:`reliability_loss` is Eq. 12 with optional ±1 labels for that.
* Eq. 9-10 / Algorithm 1: :class:`ReliabilityBank`. ``sim(E_set, x)`` is the cosine between ``x`` and the
  set's centroid (the mean of its L2-normalised members, default) or the mean cosine to the members
  (``similarity="mean_cosine"``); both come from a running sum, so the sets cost O(d) memory. Once both
  sets hold N embeddings they are frozen (the paper's "appended to the existing embedding matrix" is read as
  the item's training features, not the bank). Eq. 9's first case ``J >> theta`` (kept whatever Δ) is not
  in Algorithm 1 and is not implemented.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ragrec.config import NoiseConfig


def gumbel_sigmoid(
    w: torch.Tensor,
    tau: float,
    generator: torch.Generator | None = None,
    bias: float = 1e-4,
    hard: bool = False,
) -> torch.Tensor:
    """Eq. 7-8: ``J = sigma((log eps - log(1 - eps) + w) / tau)`` with ``eps ~ U(bias, 1 - bias)``, same shape as
    ``w``. ``hard``: the 0/1 value ``J > 0.5`` forward with the soft gradient (straight-through)."""
    if tau <= 0:
        raise ValueError(f"gumbel_sigmoid: tau must be > 0, got {tau}")
    if not 0 < bias < 0.5:
        raise ValueError(f"gumbel_sigmoid: bias must be in (0, 0.5), got {bias}")
    u = torch.rand(w.shape, generator=generator, device=w.device, dtype=w.dtype)
    eps = (2 * bias - 1) * u + (1 - bias)  # Eq. 7: in (bias, 1 - bias]
    soft = torch.sigmoid((torch.log(eps) - torch.log1p(-eps) + w) / tau)
    if not hard:
        return soft
    return (soft > 0.5).to(soft.dtype) - soft.detach() + soft


class EdgeWeightMLP(nn.Module):
    """Eq. 6: ``Emb_A = MLP(W_r [basic; aspect])`` in the basic space, edge weight ``w = Emb_A · basic``.

    ``forward(basic (..., basic_dim), aspect (..., aspect_dim)) -> w (...)``; :meth:`represent` gives ``Emb_A``.
    """

    def __init__(self, basic_dim: int, aspect_dim: int, hidden: int):
        super().__init__()
        self.w_r = nn.Linear(basic_dim + aspect_dim, hidden)
        self.mlp = nn.Sequential(nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, basic_dim))

    def represent(self, basic: torch.Tensor, aspect: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.w_r(torch.cat([basic, aspect], dim=-1)))

    def forward(self, basic: torch.Tensor, aspect: torch.Tensor) -> torch.Tensor:
        return (self.represent(basic, aspect) * basic).sum(-1)


def reliability_loss(
    aspect_emb: torch.Tensor, basic_emb: torch.Tensor, labels: torch.Tensor | None = None
) -> torch.Tensor:
    """Eq. 12: ``-sum_rows log sigma(y * Emb_A · E)`` for ``aspect_emb`` = Emb_A (n, d) and ``basic_emb`` = E (n, d),
    the reference (trusted basic-attribute) embedding of each row. ``labels`` (n,) ±1, default all +1 (the paper's
    formula); -1 marks a known-inaccurate pair (negative sampling). A scalar (sum, not mean)."""
    score = (aspect_emb * basic_emb).sum(-1)
    if labels is not None:
        score = score * labels.to(score.dtype)
    return -F.logsigmoid(score).sum()


class ReliabilityBank:
    """The retain / abandon sets of Algorithm 1 (lines 16-28), fed in order by :meth:`decide`.

    Fill phase (while either set holds < N): ``J >= theta`` -> kept and added to the retain set, else dropped and
    added to the abandon set (a set may grow past N while the other fills). Once both hold >= N the sets are frozen
    and an embedding is kept iff ``J >= theta and Δ > 0`` (Eq. 10), ``Δ = sim(retain, x) - sim(abandon, x)``.
    """

    def __init__(self, n: int, theta: float, similarity: str = "centroid"):
        if n < 1:
            raise ValueError(f"ReliabilityBank: n must be >= 1, got {n}")
        if similarity not in ("centroid", "mean_cosine"):
            raise ValueError(f"ReliabilityBank: similarity must be 'centroid' or 'mean_cosine', got {similarity!r}")
        self.n, self.theta, self.similarity = int(n), float(theta), similarity
        self.retain_size = self.abandon_size = 0
        self._sum_r: np.ndarray | None = None  # running sums of the L2-normalised members
        self._sum_a: np.ndarray | None = None
        self.counters = {
            "seen": 0,
            "fill_retained": 0,
            "fill_abandoned": 0,
            "kept_delta": 0,  # full phase: J >= theta and Δ > 0
            "dropped_low_j": 0,  # full phase: J < theta
            "dropped_delta": 0,  # full phase: J >= theta but Δ <= 0
        }

    @property
    def full(self) -> bool:
        return self.retain_size >= self.n and self.abandon_size >= self.n

    def _sim(self, x: np.ndarray, total: np.ndarray, count: int) -> np.ndarray:
        if self.similarity == "mean_cosine":
            return x @ (total / max(count, 1))
        norm = np.linalg.norm(total)
        return x @ (total / norm) if norm > 0 else np.zeros(len(x))

    def decide(self, embs: np.ndarray, j: np.ndarray) -> np.ndarray:
        """Process ``embs`` (n, d) with reliability scores ``j`` (n,) in order; returns keep (n,) bool.

        Vectorised: the fill phase is a prefix whose set sizes are cumulative counts of ``J >= theta``; the rest
        sees frozen sets.
        """
        x = np.asarray(embs, dtype=np.float64)
        j = np.asarray(j, dtype=np.float64).reshape(-1)
        if x.ndim != 2 or len(x) != len(j):
            raise ValueError(f"ReliabilityBank.decide: embs (n, d) and J (n,) expected, got {x.shape} and {j.shape}")
        if self._sum_r is None:
            self._sum_r, self._sum_a = np.zeros(x.shape[1]), np.zeros(x.shape[1])
        elif x.shape[1] != len(self._sum_r):
            raise ValueError(f"ReliabilityBank.decide: embedding dim {x.shape[1]} != the bank's {len(self._sum_r)}")
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x = np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)
        high = j >= self.theta
        hi = high.astype(np.int64)
        before_r = self.retain_size + np.cumsum(hi) - hi
        before_a = self.abandon_size + np.cumsum(1 - hi) - (1 - hi)
        fill = (before_r < self.n) | (before_a < self.n)  # a prefix: the counts only grow
        keep = np.zeros(len(j), dtype=bool)
        keep[fill] = high[fill]
        add_r, add_a = fill & high, fill & ~high
        self._sum_r += x[add_r].sum(0)
        self._sum_a += x[add_a].sum(0)
        self.retain_size += int(add_r.sum())
        self.abandon_size += int(add_a.sum())
        rest = ~fill
        if rest.any():
            xr = x[rest]
            delta = self._sim(xr, self._sum_r, self.retain_size) - self._sim(xr, self._sum_a, self.abandon_size)
            hr = high[rest]
            keep[rest] = hr & (delta > 0)
            self.counters["kept_delta"] += int((hr & (delta > 0)).sum())
            self.counters["dropped_delta"] += int((hr & (delta <= 0)).sum())
            self.counters["dropped_low_j"] += int((~hr).sum())
        self.counters["seen"] += len(j)
        self.counters["fill_retained"] += int(add_r.sum())
        self.counters["fill_abandoned"] += int(add_a.sum())
        return keep

    def stats(self) -> dict[str, Any]:
        return {**self.counters, "retain_size": self.retain_size, "abandon_size": self.abandon_size, "n": self.n}


def _standardise(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Subtract the mean (over the rows of ``mask``), then L2-normalise rows (zero rows stay zero)."""
    mean = x[mask].mean(0) if mask is not None else x.mean(0)
    return F.normalize(x - mean, dim=-1)


def denoise(
    basic: np.ndarray | torch.Tensor,
    aspects: np.ndarray | torch.Tensor,
    cfg: NoiseConfig,
    seed: int = 0,
    *,
    batch_size: int = 1024,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Noise control of every (item, aspect): returns ``kept`` (I, K) bool and stats.

    ``basic`` (I, d_b): the trusted basic-attribute embedding per item; ``aspects`` (I, K, d_a): the generated
    aspects (an all-zero row = aspect missing: never kept, never in the bank). Inputs to the MLP are mean-centred
    and L2-normalised (basic over items, aspects over all present pairs). The MLP trains for ``cfg.epochs`` with
    Adam on Eq. 12 plus corrupted negatives (module doc); then ``J = gumbel_sigmoid(w, cfg.tau)`` per pair and
    :class:`ReliabilityBank` (N = ``cfg.bank_size``, ``cfg.theta``) decides item by item, aspect by aspect
    (Algorithm 1's order), on the raw aspect embeddings. ``cfg.enabled=False``: every present aspect is kept.
    Stats: ``kept_per_aspect``, ``present_per_aspect``, ``mean_j_per_aspect`` (K lists), ``loss`` (per epoch),
    ``bank`` (:meth:`ReliabilityBank.stats`). The caller zeroes the dropped aspects.
    """
    b = torch.as_tensor(np.asarray(basic, dtype=np.float32))
    a = torch.as_tensor(np.asarray(aspects, dtype=np.float32))
    if b.ndim != 2 or a.ndim != 3 or a.shape[0] != b.shape[0]:
        raise ValueError(
            f"denoise: basic (I, d) and aspects (I, K, d) expected, got {tuple(b.shape)}, {tuple(a.shape)}"
        )
    n_items, k = a.shape[:2]
    present = a.abs().sum(-1) > 0  # (I, K)
    stats: dict[str, Any] = {"enabled": cfg.enabled, "present_per_aspect": present.sum(0).tolist()}
    if not cfg.enabled or not present.any():
        kept = present.numpy()
        return kept, {**stats, "kept_per_aspect": kept.sum(0).tolist(), "bank": None, "loss": []}
    if n_items < 2:
        raise ValueError("denoise: needs at least 2 items (negatives pair an aspect with another item's basic)")

    gen = torch.Generator().manual_seed(int(seed))
    bz = _standardise(b)
    az = torch.zeros_like(a)
    az[present] = _standardise(a[present])
    item_idx, asp_idx = present.nonzero(as_tuple=True)  # row-major: Algorithm 1's item-then-aspect order
    m = item_idx.numel()

    with torch.random.fork_rng(devices=[]):  # init from the seed without touching the caller's global RNG
        torch.manual_seed(int(seed))
        model = EdgeWeightMLP(b.shape[1], a.shape[2], cfg.hidden)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    losses = []
    for _ in range(cfg.epochs):
        perm = torch.randperm(m, generator=gen)
        total = 0.0
        for idx in perm.split(batch_size):
            ii, kk = item_idx[idx], asp_idx[idx]
            other = (ii + torch.randint(1, n_items, ii.shape, generator=gen)) % n_items  # another item
            asp = az[ii, kk]
            ref = torch.cat([bz[ii], bz[other]])
            asp2 = torch.cat([asp, asp])
            labels = torch.cat([torch.ones(len(idx)), -torch.ones(len(idx))])
            loss = reliability_loss(model.represent(ref, asp2), ref, labels) / len(idx)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        losses.append(total / m)

    with torch.no_grad():
        w = torch.cat([model(bz[item_idx[s]], az[item_idx[s], asp_idx[s]]) for s in torch.arange(m).split(8192)])
        j = gumbel_sigmoid(w, cfg.tau, generator=gen, bias=cfg.bias)
    bank = ReliabilityBank(cfg.bank_size, cfg.theta)
    keep = bank.decide(a[item_idx, asp_idx].numpy(), j.numpy())
    kept = np.zeros((n_items, k), dtype=bool)
    kept[item_idx.numpy(), asp_idx.numpy()] = keep
    j_sum = np.zeros(k)
    np.add.at(j_sum, asp_idx.numpy(), j.numpy())
    return kept, {
        **stats,
        "kept_per_aspect": kept.sum(0).tolist(),
        "mean_j_per_aspect": (j_sum / np.maximum(present.sum(0).numpy(), 1)).tolist(),
        "loss": losses,
        "bank": bank.stats(),
    }
