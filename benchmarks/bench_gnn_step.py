"""ER2ALM GNN training step: the symmetric backward (``CSRLightGCN``) vs torch's CSR backward, same batches.

    python benchmarks/bench_gnn_step.py [--quick] [--steps N]

Both models propagate over the same normalised CSR matrix ``D^-1/2 A D^-1/2`` (users + items, one node set):

* reference: PyG's ``LightGCN(normalize=False)``, each layer PyG's ``LGConv`` -> ``torch.sparse.mm``, whose
  backward transposes the CSR matrix (a sort and a format conversion) at every layer of every step;
* ragrec: :class:`ragrec.models.er2alm_gnn.ER2ALMGNN` (a :class:`ragrec.models.lightgcn.CSRLightGCN`), whose
  layers go through :func:`ragrec.models.lightgcn.symmetric_spmm` (the matrix is symmetric: the backward
  multiplies by it again).

Cases: plain LightGCN (ER2ALM's LightGCN row, ``side=False``), and with the side inputs of the ER2ALM row
(user profile 384-d, item basic + 6 aspects = 7 x 384-d: the MiniLM sizes of ``configs/er2alm_ml100k.yaml``);
there the reference is the same ER2ALMGNN with its layers routed through ``LGConv``. A step is one BPR batch of
1,024 positives (forward, backward, Adam) on an ML-100K-sized random graph (943 users, 1,682 items, 44,000
training pairs: the ER2ALM ML-100K split's sizes); ``--quick`` uses a tenth of it.

Verified: both start from the same weights and take the same batches; after every step the embedding gradients
agree to 1e-5 relative (summation order differs, so not bit for bit) and after all steps the weights too.
Headline: steps per second, ragrec / reference (> 1: ragrec is faster), each the best of 3 timed runs. Time it
alone: with another job on the CPUs, torch's parallel sparse kernels wait on descheduled threads, and the
symmetric backward, one more parallel sparse product a layer than torch's, measured 0.2x (LightGCN) and 0.4x
(side inputs) in ``--quick`` beside a 2-thread job, and 1.8x / 1.7x there with ``--threads 1``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks` when run as a script

from benchmarks.common import Measurement, Result, parse_args, report, timed
from ragrec.models.er2alm_gnn import ER2ALMGNN
from ragrec.models.lightgcn import (
    CSRLightGCN,
    bipartite_edge_index,
    bpr_step,
    normalized_adjacency,
    sample_bpr_batch,
    unique_pairs,
)

FULL = {"users": 943, "items": 1682, "pairs": 44_000, "batch": 1024, "steps": 120}
QUICK = {"users": 94, "items": 168, "pairs": 4_400, "batch": 256, "steps": 30}
REPEAT = 3
SIDE_DIMS = (384, 7 * 384)  # user profile; item basic + 6 aspects (MiniLM-L6)


class TorchBackward(ER2ALMGNN):
    """The same model with its layers through PyG's ``LGConv`` (torch's CSR backward): the reference."""

    def propagate_from(self, x, adj, edge_weight=None):
        out = x * self.alpha[0]
        for i in range(self.num_layers):
            x = self.convs[i](x, adj, edge_weight)
            out = out + x * self.alpha[i + 1]
        return out


def _models(n: dict, side: bool, seed: int) -> tuple[CSRLightGCN, CSRLightGCN]:
    rng = np.random.default_rng(seed)
    kw = {"side": side}
    if side:
        kw |= {
            "user_side": rng.standard_normal((n["users"], SIDE_DIMS[0])).astype(np.float32),
            "item_side": rng.standard_normal((n["items"], SIDE_DIMS[1])).astype(np.float32),
        }
    torch.manual_seed(seed)
    ours = ER2ALMGNN(n["users"], n["items"], 64, 3, **kw)
    ref = TorchBackward(n["users"], n["items"], 64, 3, **kw)
    ref.load_state_dict(ours.state_dict())
    return ref, ours


def _batches(n: dict, seed: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    rng = np.random.default_rng(seed)
    u, i = unique_pairs(rng.integers(0, n["users"], n["pairs"]), rng.integers(0, n["items"], n["pairs"]), n["items"])
    u, i = torch.as_tensor(u), torch.as_tensor(i)
    adj = normalized_adjacency(bipartite_edge_index(u, i, n["users"]), n["users"] + n["items"])
    g = torch.Generator().manual_seed(seed)
    labels = []
    for _ in range(n["steps"]):
        idx = torch.randint(0, len(u), (n["batch"],), generator=g)
        labels.append(sample_bpr_batch(torch.stack([u[idx], i[idx] + n["users"]]), n["users"], n["items"], g))
    return adj, labels


def _train(model: CSRLightGCN, adj: torch.Tensor, labels: list[torch.Tensor]) -> list[torch.Tensor]:
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    grads = []
    for label in labels:
        opt.zero_grad()
        bpr_step(model, adj, label, 1e-4).backward()
        grads.append(model.embedding.weight.grad.clone())
        opt.step()
    return grads


def run(quick: bool = False, steps: int | None = None, seed: int = 0, threads: int | None = None) -> list[Result]:
    """Both cases; ``threads``: torch threads for the run (None: torch's default, the machine's cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        return _run(quick, steps, seed)
    finally:
        torch.set_num_threads(before)


def _run(quick: bool, steps: int | None, seed: int) -> list[Result]:
    n = dict(QUICK if quick else FULL)
    n["steps"] = steps or n["steps"]
    adj, labels = _batches(n, seed)
    warm = labels[:3]
    results = []
    for side in (False, True):
        ref, ours = _models(n, side, seed)
        for m in _models(n, side, seed):  # warm both code paths on throwaway copies
            _train(m, adj, warm)
        g_ref, g_ours = _train(ref, adj, labels), _train(ours, adj, labels)  # the verified runs
        # timing: the best of REPEAT runs of each from the same start, alternating (steadier on a shared machine)
        times: dict[int, list] = {0: [], 1: []}
        for _ in range(REPEAT):
            for j, m in enumerate(_models(n, side, seed)):
                times[j].append(timed(lambda m=m: _train(m, adj, labels))[1])
        t_ref, t_ours = (min(times[j], key=lambda t: t.wall) for j in (0, 1))
        worst = max(float((a - b).abs().max() / a.abs().max().clamp_min(1e-30)) for a, b in zip(g_ref, g_ours))
        same_weights = torch.allclose(ref.embedding.weight, ours.embedding.weight, rtol=1e-4, atol=1e-6)
        case = "with side inputs (ER2ALM row)" if side else "LightGCN (side=False)"
        results.append(
            Result(
                bench="gnn_step",
                case=case,
                unit="steps",
                reference=Measurement.of("torch CSR backward (LGConv)", len(labels), t_ref),
                ragrec=Measurement.of("symmetric_spmm backward", len(labels), t_ours),
                verified=worst < 1e-5 and same_weights,
                details={
                    "graph": f"{n['users']} users, {n['items']} items, {n['pairs']:,} pairs drawn, batch {n['batch']}",
                    "max relative gradient difference": f"{worst:.1e}",
                },
            )
        )
    return results


def main(argv: list[str] | None = None) -> None:
    args = parse_args(
        __doc__.splitlines()[0],
        argv,
        **{
            "--steps": {"type": int, "default": None, "help": "steps per case"},
            "--threads": {"type": int, "default": None, "help": "torch threads (default: all cores)"},
        },
    )
    report(run(quick=args.quick, steps=args.steps, threads=args.threads), args)


if __name__ == "__main__":
    main()
