"""Each benchmark's core in --quick mode: outputs verified equal to the reference, ragrec faster.

The goals (20x samples, 50x retrieval) are for the full runs; here only ratio > 1 is required.
Also checks that the comparison helpers catch a real difference (a benchmark that cannot fail to
verify would verify nothing).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root holds `benchmarks`

from benchmarks import bench_gnn_step, bench_retrieval, bench_samples
from ragrec.config import DataConfig, RetrievalConfig, SyntheticConfig
from ragrec.data import rallrec_samples
from ragrec.data.synthetic import make_synthetic
from ragrec.retrieval.history import select_history


def test_samples_benchmark_quick_verifies_and_is_faster():
    (r,) = bench_samples.run(quick=True)
    assert r.verified, r.notes
    assert r.ragrec.units == r.reference.units > 20_000  # same inputs on both sides
    assert r.ratio > 1.0
    assert r.ragrec.peak_bytes and r.reference.peak_bytes


def test_reference_samples_pandas_matches_and_compare_catches_differences():
    inter = make_synthetic(SyntheticConfig(n_users=20, n_items=30, ratings_per_user=15)).interactions
    cfg = DataConfig(name="synthetic", min_history=2, max_history=4)
    got, want = rallrec_samples(inter, cfg), bench_samples.reference_samples_pandas(inter, cfg)
    assert bench_samples.compare_samples(got, want) == []
    assert max(len(h) for h in want.column("history_item_ids").to_pylist()) == 4

    hist = want.column("history_item_ids").to_pylist()
    hist[7] = hist[7][::-1] if len(set(hist[7])) > 1 else [999] * len(hist[7])
    col = want.schema.get_field_index("history_item_ids")
    tampered = want.set_column(col, "history_item_ids", pa.array(hist, pa.list_(pa.int64())))
    assert any("history_item_ids" in p for p in bench_samples.compare_samples(got, tampered))
    short = want.slice(1)
    assert bench_samples.compare_samples(got, short) == [
        f"sample count {got.num_rows:,} != reference {short.num_rows:,}"
    ]


def test_retrieval_benchmark_quick_verifies_and_is_faster():
    results = bench_retrieval.run(quick=True)
    assert [r.case for r in results] == ["rerank, K=30", "relevance, K=30"]
    for r in results:
        assert r.verified, r.notes
        assert r.ratio > 1.0
        assert r.reference.units < r.ragrec.units  # the reference ran on a subset of the samples
        assert "fraction of matmul peak" in r.details


def test_dyadic_embeddings_give_exact_dot_products_and_compare_catches_differences():
    emb = bench_retrieval.dyadic_embeddings(50, 128, seed=3)
    assert emb.shape == (50, 128) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=0.02)
    exact = emb.astype(np.float64) @ emb.astype(np.float64).T
    assert np.array_equal((emb @ emb.T).astype(np.float64), exact)  # float32 BLAS result is exact
    assert np.array_equal((emb[[4, 9, 2]] @ emb[7]).astype(np.float64), exact[[4, 9, 2], 7])

    inter = make_synthetic(SyntheticConfig(n_users=10, n_items=50, ratings_per_user=20)).interactions
    samples = rallrec_samples(inter, DataConfig(name="synthetic"))
    a = select_history(samples, RetrievalConfig(k=3, strategy="relevance"), emb)
    b = select_history(samples, RetrievalConfig(k=3, strategy="recent"), emb)
    assert bench_retrieval.compare_context(a, a) == []
    assert len(bench_retrieval.compare_context(a, b)) == 2  # items and ratings both differ


def test_gnn_step_benchmark_quick_verifies_and_the_symmetric_backward_is_faster():
    results = bench_gnn_step.run(quick=True, threads=1)  # one thread: no waiting on threads another job holds
    assert [r.case for r in results] == ["LightGCN (side=False)", "with side inputs (ER2ALM row)"]
    for r in results:
        assert r.verified, r.details
        assert r.ragrec.units == r.reference.units == bench_gnn_step.QUICK["steps"]
    assert results[0].ratio > 1.0  # ~1.9x alone; the side case's ~1.4x is left to the full run
