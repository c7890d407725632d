"""LightGCN training: ragrec's loop vs PyG's own ``examples/lightgcn.py`` loop, same graph and settings.

    python benchmarks/bench_lightgcn.py [--quick | --full] [--seeds 0 1] [--epochs N]

Sizes: the default (``DEFAULT``: 2 epochs at lr 0.01, 2 seeds; 20 s on an idle 2-CPU machine, a few minutes
when other jobs share the CPUs) fits ``make bench``; ``--full`` (``FULL``: ragrec's defaults, 20 epochs at lr 1e-3;
~2.5 min idle, ~29 min measured on a shared machine, per-epoch 23 s vs 2.7 s idle) is the long version; both reach
about the same Recall@20 on MovieLens-100K (~0.18, untrained ~0.016), so the default still checks that
ragrec's model learns as well as the reference's. ``--quick``: a small synthetic graph (tests).

Graph: MovieLens-100K ratings (``$RAGREC_DATA_DIR/ml-100k``), else an ML-100K-shaped synthetic
catalog; a random 80 % of the (user, item) pairs are the training graph, the other 20 % the held-out
pairs (split seed fixed, the same for both implementations and every training seed).

* ragrec: :func:`ragrec.training.lightgcn.train_lightgcn` in this process (``opts.use_ray=False``): PyG
  ``LightGCN(normalize=False)`` on the adjacency normalised once into a sparse CSR matrix.
* reference: the loop of PyG's ``examples/lightgcn.py`` (``LightGCN(num_nodes, dim, num_layers)``
  on ``edge_index``, ``DataLoader(range(E), shuffle=True)``, one random negative item per positive,
  ``model(edge_index, edge_label_index)``, ``recommendation_loss(..., lambda_reg)``, Adam).

Same seed (hence the same initial embeddings, checked), epochs, dim, layers, lr, batch size and
``lambda_reg`` (= ``LightGCNConfig.weight_decay``). Batch order and negatives come from different
random streams (ragrec: a seeded generator per run; reference: torch's global RNG), so the models
differ by sampling noise: the figure "within noise" is the seed-to-seed spread of each
implementation's Recall@20, measured over ``--seeds``.

Recall@20 of both models: full ranking over all items, training items masked, on the same held-out
pairs, computed by ragrec's ``recall_at_k`` and cross-checked against the upstream example's
``test()`` (they must agree to 1e-5 on every model).

Headline: the epoch-rate ratio (reference seconds per epoch / ragrec seconds per epoch; > 1 means
ragrec is faster; goal >= 1) and the recall difference against its tolerance.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from torch_geometric.nn import LightGCN
from torch_geometric.utils import degree

from benchmarks.common import Measurement, Result, Timing, machine, parse_args, report, timed
from ragrec.config import DataConfig, LightGCNConfig, SyntheticConfig
from ragrec.data import load_dataset
from ragrec.models.lightgcn import build_model, recall_at_k, unique_pairs
from ragrec.training.lightgcn import train_lightgcn
from ragrec.training.ray_train import TrainOptions

BENCH = "lightgcn"
GOAL = 1.0
K = 20
HELDOUT_FRACTION = 0.2
SPLIT_SEED = 12345
MIN_TOLERANCE = 0.01
"""Floor of the recall tolerance (absolute Recall@20): two seeds can agree by chance."""
SPREAD_FACTOR = 3.0
"""Tolerance = max(MIN_TOLERANCE, SPREAD_FACTOR x the larger seed-to-seed Recall@20 spread)."""

FULL = LightGCNConfig(batch_size=8192)
"""``--full``: ragrec's defaults (dim 64, 3 layers, 20 epochs, lr 1e-3, lambda_reg 1e-4) with the upstream example's
batch size (each step propagates over the whole graph, so an epoch costs about E / batch_size full-graph passes)."""
DEFAULT = FULL.model_copy(update={"epochs": 2, "lr": 0.01})
"""The default run: FULL with 2 epochs at lr 0.01 (10x), for both implementations. Measured on MovieLens-100K
(ragrec, seed 0): Recall@20 0.180 after 2 epochs at lr 0.01 vs FULL (20 epochs at lr 1e-3); the
untrained model scores 0.016 (ragrec means over seeds 0 and 1: 0.180 with FULL).
Same per-epoch work as FULL, so the epoch-rate ratio means the same."""
WARMUP_EDGES = 8192
"""The untimed warm-up run trains one epoch on this many train edges (one batch)."""
QUICK = LightGCNConfig(dim=16, num_layers=2, epochs=4, lr=0.02, batch_size=1024)
QUICK_DATA = SyntheticConfig(n_users=150, n_items=200, ratings_per_user=30)
EVAL_ATOL = 1e-5
"""recall_at_k vs the upstream test(): same ranking, float32 sums in different order."""


@dataclass
class Graph:
    """Train edges (E,) and held-out pairs (H,) of ``num_users`` x ``num_items``; ``source`` describes it."""

    train_users: np.ndarray
    train_items: np.ndarray
    eval_users: np.ndarray
    eval_items: np.ndarray
    num_users: int
    num_items: int
    source: str


@dataclass
class Run:
    """One training run: total timing, per-epoch wall seconds, Recall@K by ragrec's and upstream's eval."""

    timing: Timing
    epoch_seconds: list[float]
    recall: float
    recall_upstream: float
    eval_key: tuple[int, int]  # (number of held-out pairs, hash of them) the recall was computed on


def load_graph(quick: bool) -> Graph:
    """ML-100K pairs (synthetic ML-100K-shaped without RAGREC_DATA_DIR; quick: a small synthetic catalog)."""
    root = os.environ.get("RAGREC_DATA_DIR")
    if quick:
        cfg = DataConfig(name="synthetic", synthetic=QUICK_DATA)
        source = f"synthetic {QUICK_DATA.n_users} users x {QUICK_DATA.n_items} items (quick)"
    elif root and (Path(root) / "ml-100k" / "u.data").exists():
        cfg, source = DataConfig(name="ml-100k"), "MovieLens-100K"
    else:
        shape = SyntheticConfig(n_users=943, n_items=1682, n_genres=18, ratings_per_user=106)
        cfg, source = (
            DataConfig(name="synthetic", synthetic=shape),
            "synthetic ML-100K-shaped (RAGREC_DATA_DIR not set)",
        )
    ds = load_dataset(cfg)
    u, i = unique_pairs(ds.interactions["user_id"].to_numpy(), ds.interactions["item_id"].to_numpy(), ds.n_items)
    held = np.random.default_rng(SPLIT_SEED).random(len(u)) < HELDOUT_FRACTION
    return Graph(u[~held], i[~held], u[held], i[held], ds.n_users, ds.n_items, source)


def eval_key(users: torch.Tensor, items: torch.Tensor) -> tuple[int, int]:
    """Identity of a held-out set: (size, order-independent hash of its pairs)."""
    key = users.long() * 1_000_003 + items.long()
    return int(key.numel()), int(torch.sort(key).values.mul(2654435761).remainder(2**31 - 1).sum())


# ----------------------------------------------------------------------------------------------------
# reference: PyG examples/lightgcn.py


def reference_train_epoch(
    model, optimizer, edge_index, train_edge_label_index, num_users, num_items, batch_size, lambda_reg
) -> float:
    """One epoch of the upstream example's ``train()`` (mean BPR loss)."""
    loader = torch.utils.data.DataLoader(range(train_edge_label_index.size(1)), shuffle=True, batch_size=batch_size)
    total_loss = total_examples = 0
    for index in loader:
        pos_edge_label_index = train_edge_label_index[:, index]
        neg_edge_label_index = torch.stack(
            [pos_edge_label_index[0], torch.randint(num_users, num_users + num_items, (index.numel(),))], dim=0
        )
        edge_label_index = torch.cat([pos_edge_label_index, neg_edge_label_index], dim=1)
        optimizer.zero_grad()
        pos_rank, neg_rank = model(edge_index, edge_label_index).chunk(2)
        loss = model.recommendation_loss(pos_rank, neg_rank, node_id=edge_label_index.unique(), lambda_reg=lambda_reg)
        loss.backward()
        optimizer.step()
        total_loss += loss.item() * pos_rank.numel()
        total_examples += pos_rank.numel()
    return total_loss / total_examples


@torch.no_grad()
def upstream_recall(
    user_emb, item_emb, train_edge_label_index, eval_edge_label_index, num_users, k, batch_size=8192
) -> float:
    """The upstream example's ``test(k)`` recall (items offset by ``num_users`` in the label indices)."""
    recall = total_examples = 0
    for start in range(0, num_users, batch_size):
        end = start + batch_size
        logits = user_emb[start:end] @ item_emb.t()
        mask = (train_edge_label_index[0] >= start) & (train_edge_label_index[0] < end)
        logits[train_edge_label_index[0, mask] - start, train_edge_label_index[1, mask] - num_users] = float("-inf")
        ground_truth = torch.zeros_like(logits, dtype=torch.bool)
        mask = (eval_edge_label_index[0] >= start) & (eval_edge_label_index[0] < end)
        ground_truth[eval_edge_label_index[0, mask] - start, eval_edge_label_index[1, mask] - num_users] = True
        node_count = degree(eval_edge_label_index[0, mask] - start, num_nodes=logits.size(0))
        isin_mat = ground_truth.gather(1, logits.topk(k, dim=-1).indices)
        recall += float((isin_mat.sum(dim=-1) / node_count.clamp(1e-6)).sum())
        total_examples += int((node_count > 0).sum())
    return recall / total_examples


def _label_index(users: np.ndarray, items: np.ndarray, num_users: int) -> torch.Tensor:
    return torch.stack([torch.as_tensor(users), torch.as_tensor(items) + num_users])


def _recalls(g: Graph, user_emb: torch.Tensor, item_emb: torch.Tensor) -> tuple[float, float, tuple[int, int]]:
    """(ragrec recall_at_k, upstream recall, held-out key) of one model's embeddings."""
    tu, ti, eu, ei = (torch.as_tensor(a) for a in (g.train_users, g.train_items, g.eval_users, g.eval_items))
    ours = recall_at_k(user_emb, item_emb, tu, ti, eu, ei, K)
    theirs = upstream_recall(
        user_emb,
        item_emb,
        _label_index(g.train_users, g.train_items, g.num_users),
        _label_index(g.eval_users, g.eval_items, g.num_users),
        g.num_users,
        K,
    )
    return ours, theirs, eval_key(eu, ei)


def run_reference(g: Graph, cfg: LightGCNConfig, seed: int) -> Run:
    """Train with the upstream loop and evaluate; timing covers model build + all epochs."""
    train_eli = _label_index(g.train_users, g.train_items, g.num_users)
    edge_index = torch.cat([train_eli, train_eli.flip(0)], dim=1)  # as data.to_homogeneous() gives it
    epoch_seconds: list[float] = []

    def train() -> LightGCN:
        torch.manual_seed(seed)
        model = LightGCN(num_nodes=g.num_users + g.num_items, embedding_dim=cfg.dim, num_layers=cfg.num_layers)
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        for _ in range(cfg.epochs):
            t0 = time.perf_counter()
            reference_train_epoch(
                model, optimizer, edge_index, train_eli, g.num_users, g.num_items, cfg.batch_size, cfg.weight_decay
            )
            epoch_seconds.append(time.perf_counter() - t0)
        return model

    model, timing = timed(train)
    with torch.no_grad():
        emb = model.get_embedding(edge_index)
    return Run(timing, epoch_seconds, *_recalls(g, emb[: g.num_users], emb[g.num_users :]))


def run_ragrec(g: Graph, cfg: LightGCNConfig, seed: int) -> Run:
    """Train with ``train_lightgcn`` in this process and evaluate; timing covers the whole call."""
    with tempfile.TemporaryDirectory(prefix="bench-lightgcn-") as out:
        res, timing = timed(
            lambda: train_lightgcn(
                g.train_users, g.train_items, g.num_users, g.num_items, cfg, opts=TrainOptions(seed=seed, out_dir=out)
            )
        )
    user_emb, item_emb = torch.as_tensor(res.user_emb), torch.as_tensor(res.item_emb)
    return Run(timing, [h["seconds"] for h in res.history], *_recalls(g, user_emb, item_emb))


def same_initial_embeddings(g: Graph, cfg: LightGCNConfig, seed: int) -> bool:
    """Both loops seed torch then build PyG LightGCN: their initial embedding tables must be equal."""
    torch.manual_seed(seed)
    a = build_model(g.num_users, g.num_items, cfg.dim, cfg.num_layers).embedding.weight
    torch.manual_seed(seed)
    b = LightGCN(num_nodes=g.num_users + g.num_items, embedding_dim=cfg.dim, num_layers=cfg.num_layers).embedding.weight
    return bool(torch.equal(a, b))


def untrained_recall(g: Graph, cfg: LightGCNConfig, seed: int) -> float:
    """Recall@K of the initial embeddings (what training has to improve on)."""
    torch.manual_seed(seed)
    model = LightGCN(num_nodes=g.num_users + g.num_items, embedding_dim=cfg.dim, num_layers=cfg.num_layers)
    train_eli = _label_index(g.train_users, g.train_items, g.num_users)
    with torch.no_grad():
        emb = model.get_embedding(torch.cat([train_eli, train_eli.flip(0)], dim=1))
    return _recalls(g, emb[: g.num_users], emb[g.num_users :])[0]


def _sum_timing(runs: list[Run]) -> Timing:
    return Timing(sum(r.timing.wall for r in runs), sum(r.timing.cpu for r in runs))


def _spread(values: list[float]) -> float:
    return max(values) - min(values) if len(values) > 1 else 0.0


@dataclass
class Comparison:
    """Both implementations trained once per seed on the same graph, and what was checked."""

    graph: Graph
    cfg: LightGCNConfig
    seeds: tuple[int, ...]
    reference: list[Run]
    ragrec: list[Run]
    untrained_recall: float
    same_init: bool

    @property
    def ref_recall(self) -> float:
        return float(np.mean([r.recall for r in self.reference]))

    @property
    def rag_recall(self) -> float:
        return float(np.mean([r.recall for r in self.ragrec]))

    @property
    def spread(self) -> float:
        """The larger seed-to-seed Recall@K spread of the two implementations."""
        return max(_spread([r.recall for r in self.reference]), _spread([r.recall for r in self.ragrec]))

    @property
    def tolerance(self) -> float:
        return max(MIN_TOLERANCE, SPREAD_FACTOR * self.spread)

    @property
    def eval_keys(self) -> set[tuple[int, int]]:
        return {r.eval_key for r in self.reference + self.ragrec}

    @property
    def eval_diff(self) -> float:
        return max(abs(r.recall - r.recall_upstream) for r in self.reference + self.ragrec)

    def problems(self) -> list[str]:
        out = []
        if len(self.eval_keys) != 1:
            out.append(f"recalls computed on different held-out sets: {sorted(self.eval_keys)}")
        if self.eval_diff > EVAL_ATOL:
            out.append(f"ragrec recall_at_k and the upstream test() recall differ by {self.eval_diff:.1e}")
        if not self.same_init:
            out.append("initial embeddings differ for the same seed")
        if self.rag_recall < self.ref_recall - self.tolerance:
            out.append(
                f"ragrec Recall@{K} {self.rag_recall:.4f} < reference {self.ref_recall:.4f} - tolerance "
                f"{self.tolerance:.4f}"
            )
        return out


def warmup_graph(g: Graph, n_edges: int = WARMUP_EDGES) -> Graph:
    """``g`` with only its first ``n_edges`` train edges (same nodes and held-out pairs): a cheap warm-up."""
    return Graph(
        g.train_users[:n_edges], g.train_items[:n_edges], g.eval_users, g.eval_items, g.num_users, g.num_items, g.source
    )


def compare(
    quick: bool = False, seeds: tuple[int, ...] = (0, 1), epochs: int | None = None, full: bool = False
) -> Comparison:
    """Train both implementations once per seed (alternating, reference first).

    Config: ``QUICK`` (``quick``), ``FULL`` (``full``) or ``DEFAULT``; ``epochs`` overrides its epochs.
    A one-epoch run of each on the first ``WARMUP_EDGES`` train edges comes first, untimed, so that
    one-off costs (lazy imports, allocator and thread-pool warm-up) are not charged to whichever
    implementation happens to run first.
    """
    if quick and full:
        raise ValueError("--quick and --full exclude each other")
    cfg = QUICK if quick else FULL if full else DEFAULT
    if epochs is not None:
        cfg = cfg.model_copy(update={"epochs": epochs})
    g = load_graph(quick)
    warm, warm_g = cfg.model_copy(update={"epochs": 1}), warmup_graph(g)
    run_reference(warm_g, warm, seeds[0])
    run_ragrec(warm_g, warm, seeds[0])
    ref_runs, rag_runs = [], []
    for seed in seeds:
        ref_runs.append(run_reference(g, cfg, seed))
        rag_runs.append(run_ragrec(g, cfg, seed))
    same_init = all(same_initial_embeddings(g, cfg, s) for s in seeds)
    return Comparison(g, cfg, tuple(seeds), ref_runs, rag_runs, untrained_recall(g, cfg, seeds[0]), same_init)


def to_result(c: Comparison) -> Result:
    """The RESULTS.md row of a comparison: epoch rates, recalls and the checks in the details."""
    g, cfg, problems = c.graph, c.cfg, c.problems()
    n_epochs = cfg.epochs * len(c.seeds)
    ref_epoch = float(np.median([s for r in c.reference for s in r.epoch_seconds]))
    rag_epoch = float(np.median([s for r in c.ragrec for s in r.epoch_seconds]))
    fmt = ", ".join
    within = abs(c.rag_recall - c.ref_recall) <= c.tolerance
    details = {
        "inputs": (
            f"{g.source}: {g.num_users:,} users x {g.num_items:,} items, {len(g.train_users):,} train edges, "
            f"{len(g.eval_users):,} held-out pairs (random {HELDOUT_FRACTION:.0%} of the pairs, "
            f"split seed {SPLIT_SEED})"
        ),
        "settings (both)": (
            f"dim {cfg.dim}, {cfg.num_layers} layers, {cfg.epochs} epochs, lr {cfg.lr:g}, batch {cfg.batch_size}, "
            f"lambda_reg {cfg.weight_decay:g}, Adam, 1 random negative per positive; seeds {list(c.seeds)}; "
            f"same initial embeddings per seed: {'yes' if c.same_init else 'NO'}"
        ),
        "seconds per epoch (median)": (
            f"reference {ref_epoch:.3f} s, ragrec {rag_epoch:.3f} s -> per-epoch ratio {ref_epoch / rag_epoch:.1f}x "
            f"(the table's ratio: whole runs incl. model build, {n_epochs} epochs each)"
        ),
        f"Recall@{K}": (
            f"reference {fmt(f'{r.recall:.4f}' for r in c.reference)} (mean {c.ref_recall:.4f}); ragrec "
            f"{fmt(f'{r.recall:.4f}' for r in c.ragrec)} (mean {c.rag_recall:.4f}); ragrec - reference "
            f"{c.rag_recall - c.ref_recall:+.4f}; untrained model {c.untrained_recall:.4f}"
        ),
        "within noise": (
            f"seed-to-seed spread of Recall@{K}: reference {_spread([r.recall for r in c.reference]):.4f}, ragrec "
            f"{_spread([r.recall for r in c.ragrec]):.4f}; tolerance max({MIN_TOLERANCE}, {SPREAD_FACTOR:g} x spread) "
            f"= {c.tolerance:.4f} -> {'equal within noise' if within else 'NOT within noise'}"
        ),
        "held-out set": (
            f"same for all {len(c.reference) + len(c.ragrec)} models: {'yes' if len(c.eval_keys) == 1 else 'NO'} "
            f"({len(g.eval_users):,} pairs); ragrec recall_at_k vs upstream test() recall: max |difference| "
            f"{c.eval_diff:.1e} over all models"
        ),
        "machine": machine(),
    }
    return Result(
        bench=BENCH,
        case=f"LightGCN training, {g.source.split(' (')[0]}",
        unit="epochs",
        reference=Measurement.of("PyG examples/lightgcn.py loop", n_epochs, _sum_timing(c.reference)),
        ragrec=Measurement.of("ragrec train_lightgcn", n_epochs, _sum_timing(c.ragrec)),
        verified=not problems,
        goal=GOAL,
        details=details,
        notes=[f"MISMATCH: {p}" for p in problems],
    )


def run(
    quick: bool = False, seeds: tuple[int, ...] = (0, 1), epochs: int | None = None, full: bool = False
) -> list[Result]:
    """:func:`compare` then :func:`to_result` (one :class:`Result`)."""
    return [to_result(compare(quick, seeds, epochs, full))]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(
        __doc__.splitlines()[0],
        argv,
        **{
            "--seeds": {"type": int, "nargs": "+", "default": [0, 1], "help": "training seeds (>= 2 for a spread)"},
            "--epochs": {
                "type": int,
                "default": None,
                "help": f"override the epochs (default: {DEFAULT.epochs}, full: {FULL.epochs}, quick: {QUICK.epochs})",
            },
            "--full": {
                "action": "store_true",
                "help": f"the long run: {FULL.epochs} epochs at lr {FULL.lr:g} (~2.5 min on an idle 2-CPU machine)",
            },
        },
    )
    results = run(args.quick, tuple(args.seeds), args.epochs, args.full)
    for r in results:
        print(
            f"{r.case}: ragrec/reference epoch-rate ratio {r.ratio:.2f}x (CPU-time {r.cpu_ratio:.2f}x); "
            f"{r.details[f'Recall@{K}']}"
        )
    report(results, args)


if __name__ == "__main__":
    main()
