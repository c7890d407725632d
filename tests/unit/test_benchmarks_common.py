"""benchmarks/common.py: timing, peak memory, the results file (sections replaced, others kept)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root holds `benchmarks`

from benchmarks.common import Measurement, Result, peak_memory, timeit, write_results


def test_timeit_counts_warmup_and_returns_the_best_call():
    durations = iter([0.0, 0.08, 0.02, 0.05])  # warm-up, then three timed calls
    calls = []

    def fn():
        d = next(durations)
        calls.append(d)
        time.sleep(d)

    best = timeit(fn, repeat=3, warmup=1)
    assert calls == [0.0, 0.08, 0.02, 0.05]
    assert 0.02 <= best < 0.045  # the fastest timed call, not the warm-up and not the mean
    with pytest.raises(ValueError, match="repeat >= 1"):
        timeit(fn, repeat=0)


def test_peak_memory_sees_numpy_and_arrow_allocations_that_are_freed():
    def numpy_temp():
        a = np.ones(4_000_000)  # 32 MB, freed before returning
        return float(a.sum())

    out, peak = peak_memory(numpy_temp)
    assert out == 4_000_000.0
    assert 32_000_000 <= peak < 40_000_000

    base = pa.array(np.arange(2_000_000))  # zero-copy view of a numpy buffer made outside the call

    def arrow_temp():
        arr = pc.add(base, 1)  # 16 MB in Arrow's pool: invisible to tracemalloc, found by the sampler
        time.sleep(0.05)
        n = len(arr)
        del arr
        return n

    out, peak = peak_memory(arrow_temp)
    assert out == 2_000_000
    assert 16_000_000 <= peak < 20_000_000

    _, small = peak_memory(lambda: 1 + 1)
    assert small < 1_000_000


def _result(bench: str, case: str, ref_s: float, rag_s: float) -> Result:
    return Result(
        bench=bench,
        case=case,
        unit="rows",
        reference=Measurement("ref", 1000, ref_s, 2**20),
        ragrec=Measurement("fast", 4000, rag_s, 3 * 2**20, extrapolated=False),
        verified=True,
        goal=10.0,
        details={"inputs": "toy"},
    )


def test_ratio_is_rate_over_rate_not_time_over_time():
    r = _result("x", "c", ref_s=2.0, rag_s=0.5)  # 500 rows/s vs 8000 rows/s
    assert r.ratio == pytest.approx(16.0)
    assert r.meets_goal is True
    assert _result("x", "c", ref_s=1.0, rag_s=1.0).meets_goal is False  # 4x < 10x


def test_write_results_replaces_only_its_own_section(tmp_path):
    path = tmp_path / "RESULTS.md"
    write_results([_result("alpha", "a1", 2.0, 0.5)], path, command="bench alpha")
    write_results([_result("beta", "b1", 1.0, 1.0), _result("beta", "b2", 1.0, 0.1)], path, command="bench beta")
    text = path.read_text()
    assert text.index("## alpha") < text.index("## beta")
    assert "16.0×" in text and "4.0×" in text and "40.0×" in text

    write_results([_result("alpha", "a1-new", 1.0, 0.5)], path, command="bench alpha again")
    text = path.read_text()
    assert text.count("<!-- bench:alpha -->") == 1 and text.count("<!-- /bench:alpha -->") == 1
    assert "a1-new" in text and "| a1 |" not in text and "8.0×" in text  # alpha replaced ...
    assert "| b1 |" in text and "| b2 |" in text  # ... beta untouched
    assert text.index("## alpha") < text.index("## beta")  # and kept in place
