"""Shared benchmark machinery (docs/architecture.md §9): timing, peak memory, matmul peak, results file.

Every benchmark compares a ragrec stage with a reference implementation run in the same process on the
same inputs and reports the *ratio* of their rates; absolute times on shared machines are noise.

What :func:`peak_memory` measures: the peak of the bytes traced by :mod:`tracemalloc` (every Python
object and every numpy buffer: numpy reports its data allocations to tracemalloc) plus the peak growth
of pyarrow's memory pool (``pa.total_allocated_bytes()``, sampled every 2 ms by a background thread;
Arrow buffers are invisible to tracemalloc). The two peaks are added, so the figure is an upper bound of
the combined peak when they happen at different moments. Not counted: torch CPU tensors, BLAS work
space, allocator slack and fragmentation (RSS high-water marks cannot be reset inside one process, so
they cannot attribute memory to one call). tracemalloc slows Python-heavy code down severalfold, so
memory is always measured in a separate run from the timings.
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import platform
import re
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[1]
RESULTS_PATH = REPO / "benchmarks" / "RESULTS.md"
_HEADER = (
    "# ragrec benchmark results\n\n"
    "Written by `benchmarks/bench_*.py` (one section per benchmark; rerunning a benchmark replaces only its\n"
    "section). Ratios = ragrec rate / reference rate, both measured in the same process on the same inputs\n"
    "(wall clock; the CPU-time ratio, this process's CPU seconds, is steadier when other jobs share the CPUs).\n"
    "Peak memory: tracemalloc (Python objects + numpy buffers) + growth of pyarrow's pool, see\n"
    "`benchmarks/common.py`.\n"
)
_SAMPLE_INTERVAL_S = 0.002


# ----------------------------------------------------------------------------------------------------
# measuring


@dataclass(frozen=True)
class Timing:
    """Seconds of one call (or the best of several): wall clock and this process's CPU time.

    CPU time (all threads of the process) does not grow when other processes share the CPUs, so the
    CPU-time ratio is the steadier figure on a shared machine; it undervalues multi-threaded speed-ups.
    """

    wall: float
    cpu: float


def timed(fn: Callable[[], T]) -> tuple[T, Timing]:
    """``(fn(), Timing)`` of one call (for slow references that are run once)."""
    gc.collect()
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, Timing(time.perf_counter() - w0, time.process_time() - c0)


def measure(fn: Callable[[], Any], repeat: int = 3, warmup: int = 1) -> Timing:
    """Best wall and best CPU seconds of ``repeat`` calls of ``fn()`` after ``warmup`` untimed calls."""
    if repeat < 1 or warmup < 0:
        raise ValueError(f"timeit needs repeat >= 1 and warmup >= 0, got repeat={repeat}, warmup={warmup}")
    for _ in range(warmup):
        fn()
    runs = [timed(fn)[1] for _ in range(repeat)]
    return Timing(min(t.wall for t in runs), min(t.cpu for t in runs))


def timeit(fn: Callable[[], Any], repeat: int = 3, warmup: int = 1) -> float:
    """Best wall-clock seconds of ``repeat`` calls of ``fn()`` after ``warmup`` untimed calls."""
    return measure(fn, repeat, warmup).wall


def _arrow_bytes() -> int:
    try:
        import pyarrow as pa
    except ImportError:  # pragma: no cover - pyarrow is a ragrec dependency
        return 0
    return int(pa.total_allocated_bytes())


def peak_memory(fn: Callable[[], T]) -> tuple[T, int]:
    """Run ``fn()`` once and return ``(result, peak_bytes)``.

    ``peak_bytes`` = peak tracemalloc-traced bytes during the call (Python objects and numpy buffers,
    counted from the start of the call) + peak growth of ``pa.total_allocated_bytes()`` over its value
    at the start (sampled every 2 ms). See the module docstring for what is not counted.
    """
    if tracemalloc.is_tracing():
        raise RuntimeError("peak_memory cannot nest inside another tracemalloc session")
    gc.collect()
    base_arrow = _arrow_bytes()
    peak_arrow = base_arrow
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak_arrow
        while not stop.wait(_SAMPLE_INTERVAL_S):
            peak_arrow = max(peak_arrow, _arrow_bytes())

    sampler = threading.Thread(target=sample, daemon=True)
    tracemalloc.start()
    sampler.start()
    try:
        result = fn()
        peak_arrow = max(peak_arrow, _arrow_bytes())
    finally:
        stop.set()
        sampler.join()
        _, py_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return result, int(py_peak) + max(0, peak_arrow - base_arrow)


def _rss_bytes() -> int | None:
    """Resident set size of this process (Linux ``/proc/self/statm``), or None where unavailable."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):  # pragma: no cover - not Linux
        return None


def _release_freed_memory() -> None:
    """``gc.collect()`` and glibc ``malloc_trim(0)``, so freed heap pages leave the RSS before a baseline."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        pass


def peak_rss_growth(fn: Callable[[], T], interval_s: float = _SAMPLE_INTERVAL_S) -> tuple[T, int | None]:
    """Run ``fn()`` once and return ``(result, peak RSS growth in bytes)`` (None where RSS is unreadable).

    For torch code, whose CPU tensors :func:`peak_memory` cannot see: the resident set size is sampled
    every ``interval_s`` by a background thread, and the figure is its peak minus its value at the start
    of the call (after releasing freed heap pages), i.e. the working memory of the call on top of what
    was already resident (model weights loaded before the call are not counted). Cheap enough (one
    small ``/proc`` read per sample) to run alongside a timing. It is an estimate: a peak shorter than
    ``interval_s`` can be missed, and memory that the allocator kept from earlier calls and reuses is
    not growth.
    """
    _release_freed_memory()
    base = _rss_bytes()
    if base is None:  # pragma: no cover - not Linux
        return fn(), None
    peak = base
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.wait(interval_s):
            peak = max(peak, _rss_bytes() or 0)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = fn()
        peak = max(peak, _rss_bytes() or 0)
    finally:
        stop.set()
        sampler.join()
    return result, peak - base


def timed_with_rss(fn: Callable[[], T], interval_s: float = _SAMPLE_INTERVAL_S) -> tuple[T, Timing, int | None]:
    """``(fn(), Timing, peak RSS growth)`` of one call: :func:`timed` inside :func:`peak_rss_growth`."""
    (out, timing), grown = peak_rss_growth(lambda: timed(fn), interval_s)
    return out, timing, grown


@functools.cache
def matmul_peak_gflops(n: int = 2048, repeat: int = 10, dtype: str = "float32") -> float:
    """Measured ``torch.mm`` throughput of this machine in ``dtype``, GFLOP/s (2·n³ FLOPs per (n, n) product).

    Uses torch's current thread count; cached per process and dtype (it is the denominator of every
    "fraction of peak" figure).
    """
    import torch

    a = torch.randn(n, n).to(getattr(torch, dtype))
    b = torch.randn(n, n).to(getattr(torch, dtype))
    seconds = timeit(lambda: torch.mm(a, b), repeat=repeat, warmup=1)
    return 2.0 * n**3 / seconds / 1e9


def lm_matmul_params(model: Any) -> int:
    """Parameters of a causal LM that every processed token multiplies through.

    All parameters minus the input embedding table (a lookup, no FLOPs); a tied output head is the same
    tensor and so is not counted either (it runs on one position per prompt when scoring). For
    SmolLM2-135M: 135M parameters, ~106M of them in the decoder layers.
    """
    total = sum(p.numel() for p in model.parameters())
    return int(total - model.get_input_embeddings().weight.numel())


def lm_peak_fraction(n_params: int, tokens: int, seconds: float, peak_gflops: float | None = None) -> float:
    """Fraction of ``peak_gflops`` (default :func:`matmul_peak_gflops`) reached by ``2 * n_params * tokens``
    FLOPs in ``seconds``."""
    return 2.0 * n_params * tokens / seconds / 1e9 / (peak_gflops or matmul_peak_gflops())


def machine() -> str:
    """One line describing the machine the numbers come from."""
    import numpy as np
    import torch

    return (
        f"{platform.machine()} {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"numpy {np.__version__}, Python {platform.python_version()}"
    )


# ----------------------------------------------------------------------------------------------------
# results


@dataclass
class Measurement:
    """One implementation's figures: ``units`` of work (ratings, samples) in ``seconds`` (wall clock).

    ``cpu_seconds``: the process CPU time of the same run(s) (see :class:`Timing`).
    """

    label: str
    units: int
    seconds: float
    peak_bytes: int | None = None
    extrapolated: bool = False
    cpu_seconds: float | None = None

    @staticmethod
    def of(
        label: str, units: int, timing: Timing, peak_bytes: int | None = None, extrapolated: bool = False
    ) -> Measurement:
        """A measurement from a :class:`Timing` (wall and CPU seconds)."""
        return Measurement(label, units, timing.wall, peak_bytes, extrapolated, timing.cpu)

    @property
    def rate(self) -> float:
        """Units per wall-clock second."""
        return self.units / self.seconds if self.seconds > 0 else float("inf")

    @property
    def cpu_rate(self) -> float | None:
        """Units per CPU second (None when not measured)."""
        if self.cpu_seconds is None:
            return None
        return self.units / self.cpu_seconds if self.cpu_seconds > 0 else float("inf")


@dataclass
class Result:
    """One comparison of a benchmark (a row of its section in RESULTS.md).

    ``bench`` keys the section (all results with the same ``bench`` share one section); ``case``
    names the row; ``unit`` is what ``Measurement.units`` counts.
    """

    bench: str
    case: str
    unit: str
    reference: Measurement
    ragrec: Measurement
    verified: bool
    goal: float | None = None
    details: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        """ragrec rate / reference rate (> 1: ragrec is faster)."""
        return self.ragrec.rate / self.reference.rate

    @property
    def cpu_ratio(self) -> float | None:
        """ragrec CPU-time rate / reference CPU-time rate (None when either was not measured)."""
        a, b = self.ragrec.cpu_rate, self.reference.cpu_rate
        return None if a is None or b is None else a / b

    @property
    def meets_goal(self) -> bool | None:
        return None if self.goal is None else self.ratio >= self.goal


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def fmt_rate(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:,.2f}"


def table(results: Sequence[Result]) -> str:
    """Markdown table of ``results`` (rates in units/s, ratio, goal, peak memory, verification)."""
    lines = [
        "| case | unit | reference rate /s | ragrec rate /s | ratio | goal | CPU-time ratio "
        "| reference peak mem | ragrec peak mem | outputs equal |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        ref_rate = fmt_rate(r.reference.rate) + (" (extrapolated)" if r.reference.extrapolated else "")
        goal = "" if r.goal is None else f"≥ {r.goal:g}× ({'met' if r.meets_goal else 'NOT met'})"
        cpu = "n/a" if r.cpu_ratio is None else f"{r.cpu_ratio:,.1f}×"
        lines.append(
            f"| {r.case} | {r.unit} | {ref_rate} | {fmt_rate(r.ragrec.rate)} | **{r.ratio:,.1f}×** | {goal} | {cpu} | "
            f"{fmt_bytes(r.reference.peak_bytes)} | {fmt_bytes(r.ragrec.peak_bytes)} | "
            f"{'yes' if r.verified else 'NO'} |"
        )
    return "\n".join(lines)


def render_section(bench: str, results: Sequence[Result], command: str) -> str:
    """The markdown section of one benchmark, between ``<!-- bench:NAME -->`` markers."""
    body = [f"<!-- bench:{bench} -->", f"## {bench}", "", f"`{command}` — {time.strftime('%Y-%m-%d %H:%M')}", ""]
    body.append(table(results))
    for r in results:
        if r.details or r.notes:
            body += ["", f"**{r.case}**", ""]
            body += [f"- {k}: {v}" for k, v in r.details.items()]
            body += [f"- {n}" for n in r.notes]
    body.append(f"<!-- /bench:{bench} -->")
    return "\n".join(body) + "\n"


def write_results(results: Sequence[Result], path: str | Path = RESULTS_PATH, command: str | None = None) -> Path:
    """Write each benchmark's section of ``path``, replacing only the sections of these results.

    Sections of other benchmarks are kept as they are, so benchmarks can be run separately and the
    file accumulates; a new benchmark's section is appended. Written to a temporary file and renamed.
    """
    path = Path(path)
    command = command or "python " + " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
    text = path.read_text() if path.exists() else _HEADER
    by_bench: dict[str, list[Result]] = {}
    for r in results:
        by_bench.setdefault(r.bench, []).append(r)
    for bench, rs in by_bench.items():
        section = render_section(bench, rs, command)
        pattern = re.compile(rf"<!-- bench:{re.escape(bench)} -->.*?<!-- /bench:{re.escape(bench)} -->\n?", re.S)
        if pattern.search(text):
            text = pattern.sub(lambda _m: section, text, count=1)  # noqa: B023 (called here)
        else:
            text = text.rstrip("\n") + "\n\n" + section
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


# ----------------------------------------------------------------------------------------------------
# command line


def parse_args(description: str, argv: Sequence[str] | None = None, **extra: dict[str, Any]) -> argparse.Namespace:
    """``--quick`` (test-sized inputs, < 20 s), ``--out PATH`` (results file), ``--no-write``.

    ``extra`` maps further option names (``"--max-history"``) to ``add_argument`` keyword dicts.
    """
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="small inputs (a smoke run well under 20 s)")
    p.add_argument("--out", default=str(RESULTS_PATH), help="markdown results file (default: %(default)s)")
    p.add_argument("--no-write", action="store_true", help="print the table only; leave the results file alone")
    for name, kwargs in extra.items():
        p.add_argument(name, **kwargs)
    return p.parse_args(argv)


def report(results: Sequence[Result], args: argparse.Namespace) -> None:
    """Print the table (+ details) and, unless ``--no-write``, update the results file.

    Raises:
        SystemExit: some result was not verified equal to its reference (nothing is written then).
    """
    for bench in dict.fromkeys(r.bench for r in results):
        print(render_section(bench, [r for r in results if r.bench == bench], "python " + " ".join(sys.argv)))
    bad = [r.case for r in results if not r.verified]
    if bad:  # a ratio between implementations that disagree means nothing: never record it
        raise SystemExit(f"outputs differ from the reference for {bad}; results file not written")
    if not args.no_write:
        print(f"wrote {write_results(results, args.out)}")
