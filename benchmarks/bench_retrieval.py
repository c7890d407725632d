"""Top-K history retrieval for every sample: ``select_history`` vs the per-sample Python walk.

    python benchmarks/bench_retrieval.py [--quick] [--k K] [--ref-samples N]

Inputs: the RALLRec samples of MovieLens-100K (``$RAGREC_DATA_DIR/ml-100k``) when available, else a
synthetic catalog of the same shape; random item embeddings, 128-d, L2-normalised and then rounded to
multiples of 2**-8 so that every dot product is exact in float32 (products are multiples of 2**-16 and
every partial sum stays below 2**8, i.e. within float32's 24-bit mantissa). Both implementations then
see bit-identical similarities whatever the summation order (BLAS matrix product vs per-sample
matrix-vector product), and equal outputs are a real check of the ordering rules, ties included.

``ragrec.retrieval.history.select_history`` runs on all samples (best of 3 after a warm-up); the
reference ``ragrec.retrieval.reference.reference_select_history_loop`` on a random subset of them
(default: all of them; its rate, samples/s, is what is compared; its outputs are checked equal to
ragrec's rows).
Strategies ``rerank`` (Eq. 8, alpha 2/3, beta 1) and ``relevance``, K = 30.

Fraction of matmul peak: for catalogs of <= ``SIM_MATRIX_MAX_ITEMS`` items select_history computes the
item x item similarity matrix once (2 * n_items**2 * d FLOPs) and gathers the scores from it; the
report gives that product's own fraction of the measured ``torch.mm`` peak and the fraction the whole
call reaches when only the FLOPs the per-sample reference needs (2 * d per history entry) are counted.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    Measurement,
    Result,
    machine,
    matmul_peak_gflops,
    measure,
    parse_args,
    peak_memory,
    report,
    timed,
    timeit,
)
from ragrec.config import DataConfig, RetrievalConfig, SyntheticConfig
from ragrec.data import load_dataset, rallrec_samples
from ragrec.retrieval.history import CONTEXT_ITEMS, CONTEXT_RATINGS, SIM_MATRIX_MAX_ITEMS, select_history
from ragrec.retrieval.reference import reference_select_history_loop

BENCH = "retrieval"
GOAL = 50.0
DIM = 128
_GRID = 2.0**-8


def dyadic_embeddings(n_items: int, d: int = DIM, seed: int = 0) -> np.ndarray:
    """``(n_items, d) float32``: random unit vectors rounded to multiples of 2**-8 (exact dot products)."""
    x = np.random.default_rng(seed).standard_normal((n_items, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return (np.round(x / _GRID) * _GRID).astype(np.float32)


def load_samples(quick: bool) -> tuple[pa.Table, int, str]:
    """``(samples, n_items, description)``: ML-100K RALLRec samples, else synthetic; quick: first 4,000."""
    root = os.environ.get("RAGREC_DATA_DIR")
    if root and (Path(root) / "ml-100k" / "u.data").exists():
        cfg = DataConfig(name="ml-100k")
        source = "MovieLens-100K"
    else:
        shape = SyntheticConfig(n_users=943, n_items=1682, n_genres=18, ratings_per_user=106)  # ML-100K-like
        cfg = DataConfig(name="synthetic", synthetic=shape)
        source = "synthetic (RAGREC_DATA_DIR/ml-100k not found)"
    ds = load_dataset(cfg)
    samples = rallrec_samples(ds.interactions, cfg)
    if quick:
        samples = samples.slice(0, 4000)
    return samples, ds.items.num_rows, source


def compare_context(got: pa.Table, want: pa.Table) -> list[str]:
    """Differences in the context columns of two select_history outputs (empty list: equal)."""
    problems = []
    for name in (CONTEXT_ITEMS, CONTEXT_RATINGS):
        g, w = got.column(name).to_pylist(), want.column(name).to_pylist()
        bad = [i for i, (a, b) in enumerate(zip(g, w)) if a != b]
        if len(g) != len(w) or bad:
            problems.append(f"{name}: {len(bad)} of {len(w)} rows differ (first row {bad[0] if bad else 'n/a'})")
    return problems


def run(quick: bool = False, k: int = 30, ref_samples: int | None = None, seed: int = 0) -> list[Result]:
    """Time both implementations for ``rerank`` and ``relevance``; one :class:`Result` each.

    The reference runs on ``ref_samples`` random samples (default: all; quick: 300).
    """
    samples, n_items, source = load_samples(quick)
    emb = dyadic_embeddings(n_items, DIM, seed)
    n = samples.num_rows
    m = min(n, 300 if quick else (ref_samples or n))
    idx = np.sort(np.random.default_rng(seed).choice(n, m, replace=False))
    subset = samples.take(pa.array(idx))
    hist_len = pc.list_value_length(samples.column("history_item_ids")).to_numpy()
    entries = int(hist_len.sum())

    peak = matmul_peak_gflops()
    sim_flops = 2.0 * n_items**2 * DIM
    t_sim = timeit(lambda: emb @ emb.T, repeat=5, warmup=1)
    useful_flops = 2.0 * DIM * entries

    subset_note = [f"reference rate measured on a random {m:,} of the {n:,} samples (per-sample work is independent)"]
    results = []
    for strategy in ("rerank", "relevance"):
        cfg = RetrievalConfig(k=k, strategy=strategy)
        timing = measure(lambda: select_history(samples, cfg, emb), repeat=3, warmup=1)
        t_ragrec = timing.wall
        full = select_history(samples, cfg, emb)
        want, t_ref = timed(lambda: reference_select_history_loop(subset, cfg, emb))
        problems = compare_context(full.take(pa.array(idx)), want)
        _, mem_ref = peak_memory(lambda: reference_select_history_loop(subset, cfg, emb))
        _, mem_rag = peak_memory(lambda: select_history(subset, cfg, emb))
        _, mem_rag_full = peak_memory(lambda: select_history(samples, cfg, emb)) if m < n else (None, mem_rag)
        on_ref = f"all {n:,}" if m == n else f"a random {m:,}"
        details = {
            "inputs": (
                f"{source}: {n:,} samples, {n_items:,} items, history length mean {hist_len.mean():.0f} / max "
                f"{hist_len.max()}, {entries:,} history entries; embeddings {DIM}-d dyadic unit vectors"
            ),
            "times": (
                f"ragrec {t_ragrec:.3f} s wall / {timing.cpu:.3f} s CPU on all {n:,} samples; reference "
                f"{t_ref.wall:.2f} s wall / {t_ref.cpu:.2f} s CPU on {on_ref}"
            ),
            "verified": f"{CONTEXT_ITEMS} and {CONTEXT_RATINGS} equal on {on_ref} samples",
            "peak memory": f"both columns measured on {on_ref} samples (the same inputs)"
            + (f"; ragrec on all {n:,}: {mem_rag_full / 2**20:,.1f} MiB" if m < n else ""),
            "machine": f"{machine()}; torch.mm float32 peak {peak:,.1f} GFLOP/s",
        }
        if n_items <= SIM_MATRIX_MAX_ITEMS:
            details["fraction of matmul peak"] = (
                f"similarity matrix emb @ emb.T ({sim_flops / 1e9:.2f} GFLOP) {sim_flops / t_sim / 1e9:,.1f} GFLOP/s = "
                f"{sim_flops / t_sim / 1e9 / peak:.0%} of peak; whole select_history counting the reference's "
                f"{useful_flops / 1e9:.2f} GFLOP of history dot products: "
                f"{useful_flops / t_ragrec / 1e9:,.2f} GFLOP/s = "
                f"{useful_flops / t_ragrec / 1e9 / peak:.1%} of peak (the rest of the call is gathers, top-K and list "
                f"building, memory-bound); the similarity matrix is {t_sim / t_ragrec:.1%} of its time; "
                f"peak and matrix timings on a shared machine can disagree by tens of percent"
            )
        results.append(
            Result(
                bench=BENCH,
                case=f"{strategy}, K={k}",
                unit="samples",
                reference=Measurement.of("reference_select_history_loop", m, t_ref, mem_ref, extrapolated=m < n),
                ragrec=Measurement.of("select_history", n, timing, mem_rag),
                verified=not problems,
                goal=GOAL,
                details=details,
                notes=[f"MISMATCH: {p}" for p in problems] + (subset_note if m < n else []),
            )
        )
    return results


def main(argv: list[str] | None = None) -> None:
    args = parse_args(
        __doc__.splitlines()[0],
        argv,
        **{
            "--k": {"type": int, "default": 30, "help": "retrieval.k"},
            "--ref-samples": {"type": int, "default": None, "help": "samples the reference runs on (default: all)"},
        },
    )
    report(run(args.quick, args.k, args.ref_samples), args)


if __name__ == "__main__":
    main()
