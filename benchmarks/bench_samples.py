"""Sample building on ~1M ratings: vectorised ``ragrec.data.rallrec_samples`` vs a per-user pandas loop.

    python benchmarks/bench_samples.py [--quick] [--max-history N] [--ratings N] [--ref-budget SECONDS]

Inputs: the synthetic catalog (``make_synthetic``) sized like MovieLens-1M (6,040 users, 3,706 items,
~166 ratings per user -> ~1.0M ratings). The reference, :func:`reference_samples_pandas`, builds the
samples the way the original ReLLa / RALLRec preprocessing does: sort by time, group by user, walk each
user's rows in time order appending to history lists, copy the history into every sample, then sort
the samples by time and cut the splits. Both outputs are checked equal (every column, every history)
before a ratio is reported. When the reference is estimated to take longer than ``--ref-budget``
seconds on all ratings it is timed on a random subset of users and its time extrapolated linearly by
number of ratings; the output says so.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import Measurement, Result, machine, measure, parse_args, peak_memory, report, timed
from ragrec.config import DataConfig, SyntheticConfig
from ragrec.data import rallrec_samples
from ragrec.data.schemas import SAMPLES, label_is_given
from ragrec.data.synthetic import make_synthetic

BENCH = "samples"
GOAL = 20.0
_SPLITS = ("train", "valid", "test")


# ----------------------------------------------------------------------------------------------------
# the reference


def reference_samples_pandas(interactions: pa.Table, cfg: DataConfig) -> pa.Table:
    """The reference code's per-user loop: pandas groupby + row iteration + Python history lists.

    Same contract as :func:`ragrec.data.rallrec_samples` for unlabelled interactions (label =
    rating > ``cfg.label_threshold``): samples in time order with ``sample_id = 0..n-1``.
    """
    df = interactions.select(["user_id", "item_id", "rating", "timestamp"]).to_pandas()
    df = df.sort_values(["timestamp", "user_id", "item_id"], kind="mergesort").reset_index(drop=True)
    df["t"] = df.index  # position in time order
    records = []
    for _user, rows in df.groupby("user_id", sort=False):
        hist_items: list[int] = []
        hist_ratings: list[float] = []
        for row in rows.itertuples(index=False):
            if len(hist_items) >= cfg.min_history:
                start = 0 if cfg.max_history is None else max(0, len(hist_items) - cfg.max_history)
                records.append(
                    (
                        row.t,
                        row.user_id,
                        row.item_id,
                        row.rating,
                        row.timestamp,
                        hist_items[start:],
                        hist_ratings[start:],
                    )
                )
            hist_items.append(row.item_id)
            hist_ratings.append(row.rating)
    records.sort(key=lambda r: r[0])

    n = len(records)
    cut_train, cut_valid = (int(np.floor(c * n + 1e-6)) for c in np.cumsum(cfg.split)[:2])
    _t, user, item, rating, ts, h_items, h_ratings = zip(*records) if records else ([],) * 7
    split = ["train"] * cut_train + ["valid"] * (cut_valid - cut_train) + ["test"] * (n - cut_valid)
    return pa.Table.from_arrays(
        [
            pa.array(range(n), pa.int64()),
            pa.array(user, pa.int64()),
            pa.array(item, pa.int64()),
            pa.array([int(r > cfg.label_threshold) for r in rating], pa.int8()),
            pa.array(rating, pa.float32()),
            pa.array(ts, pa.int64()),
            pa.array(h_items, pa.list_(pa.int64())),
            pa.array(h_ratings, pa.list_(pa.float32())),
            pa.array(split, pa.string()),
        ],
        schema=SAMPLES,
    )


# ----------------------------------------------------------------------------------------------------
# verification


def compare_samples(got: pa.Table, want: pa.Table, n_check: int = 1000, seed: int = 0) -> list[str]:
    """Differences between two samples tables (empty list: equal).

    Checks the row count, every scalar column, every history length, the flat history values, and a
    random subset of ``n_check`` rows compared as Python lists.
    """
    if got.num_rows != want.num_rows:
        return [f"sample count {got.num_rows:,} != reference {want.num_rows:,}"]
    problems = []
    for name in ("sample_id", "user_id", "item_id", "label", "rating", "timestamp", "split"):
        if not got.column(name).equals(want.column(name).cast(got.schema.field(name).type)):
            problems.append(f"column {name} differs")
    for name in ("history_item_ids", "history_ratings"):
        g, w = got.column(name).combine_chunks(), want.column(name).combine_chunks()
        if not pc.list_value_length(g).equals(pc.list_value_length(w)):
            problems.append(f"{name}: history lengths differ")
        elif not np.array_equal(g.flatten().to_numpy(), w.flatten().to_numpy()):
            problems.append(f"{name}: history values differ")
    rows = np.random.default_rng(seed).choice(got.num_rows, min(n_check, got.num_rows), replace=False)
    sub_g, sub_w = got.take(rows), want.take(rows)
    for name in ("history_item_ids", "history_ratings"):
        if sub_g.column(name).to_pylist() != sub_w.column(name).to_pylist():
            problems.append(f"{name}: random subset of {len(rows)} histories differs")
    return problems


# ----------------------------------------------------------------------------------------------------
# the benchmark


@dataclass(frozen=True)
class Sizes:
    """Input sizes: the synthetic catalog and the reference's pilot / memory subset (fraction of users)."""

    synthetic: SyntheticConfig
    pilot_fraction: float

    @staticmethod
    def for_run(quick: bool, ratings: int) -> Sizes:
        if quick:
            return Sizes(SyntheticConfig(n_users=300, n_items=400, n_genres=12, ratings_per_user=100), 1.0)
        per_user = max(ratings // 6040, 10)
        return Sizes(SyntheticConfig(n_users=6040, n_items=3706, n_genres=18, ratings_per_user=per_user), 0.05)


def _user_subset(interactions: pa.Table, fraction: float, seed: int = 0) -> pa.Table:
    """Interactions of a random ``fraction`` of the users (all of them when ``fraction >= 1``)."""
    if fraction >= 1.0:
        return interactions
    users = np.unique(interactions.column("user_id").to_numpy())
    rng = np.random.default_rng(seed)
    keep = rng.choice(users, max(1, round(fraction * len(users))), replace=False)
    return interactions.filter(pa.array(np.isin(interactions.column("user_id").to_numpy(), keep)))


def run(
    quick: bool = False, max_history: int | None = None, ratings: int = 1_000_000, ref_budget_s: float = 180.0
) -> list[Result]:
    """Build the inputs, time both implementations, verify equal outputs; one :class:`Result`."""
    sizes = Sizes.for_run(quick, ratings)
    inter = make_synthetic(sizes.synthetic).interactions
    if label_is_given(inter):  # the reference derives labels from ratings
        raise RuntimeError("the benchmark needs interactions labelled by rating threshold")
    cfg = DataConfig(name="synthetic", max_history=max_history)
    n = inter.num_rows
    label = "pandas per-user loop"
    notes: list[str] = []

    t_ragrec = measure(lambda: rallrec_samples(inter, cfg), repeat=3, warmup=1)
    pilot = _user_subset(inter, sizes.pilot_fraction)
    ref_inter = pilot
    ref_out, t_ref = timed(lambda: reference_samples_pandas(pilot, cfg))
    estimate = t_ref.wall * n / pilot.num_rows
    if pilot.num_rows == n or estimate <= ref_budget_s:
        if pilot.num_rows < n:
            ref_inter = inter
            ref_out, t_ref = timed(lambda: reference_samples_pandas(inter, cfg))
        notes.append(f"reference timed once on all {n:,} ratings (ragrec: best of 3 after a warm-up)")
    else:
        notes.append(
            f"EXTRAPOLATED: the reference would take ~{estimate:.0f} s > {ref_budget_s:.0f} s on all ratings; it was "
            f"timed on a random {sizes.pilot_fraction:.0%} of the users ({pilot.num_rows:,} ratings, "
            f"{t_ref.wall:.1f} s) and its rate extrapolated linearly by number of ratings"
        )
    full = rallrec_samples(inter, cfg)
    got = full if ref_inter is inter else rallrec_samples(ref_inter, cfg)
    problems = compare_samples(got, ref_out)
    notes += [f"MISMATCH: {p}" for p in problems]

    # memory: both on the same (pilot) inputs, separate runs (tracemalloc slows Python code down)
    _, mem_ref = peak_memory(lambda: reference_samples_pandas(pilot, cfg))
    _, mem_rag = peak_memory(lambda: rallrec_samples(pilot, cfg))
    _, mem_rag_full = peak_memory(lambda: rallrec_samples(inter, cfg))
    hist_len = pc.list_value_length(full.column("history_item_ids")).to_numpy()
    syn = sizes.synthetic
    return [
        Result(
            bench=BENCH,
            case=f"rallrec samples (max_history={max_history})",
            unit="ratings",
            reference=Measurement.of(label, ref_inter.num_rows, t_ref, mem_ref, extrapolated=ref_inter is not inter),
            ragrec=Measurement.of("ragrec.data.rallrec_samples", n, t_ragrec, mem_rag),
            verified=not problems,
            goal=GOAL,
            details={
                "inputs": (
                    f"synthetic {syn.n_users:,} users x {syn.n_items:,} items, {n:,} ratings -> {full.num_rows:,} "
                    f"samples, {int(hist_len.sum()):,} history entries "
                    f"(mean {hist_len.mean():.0f}, max {hist_len.max()})"
                ),
                "times": (
                    f"ragrec {t_ragrec.wall:.2f} s wall / {t_ragrec.cpu:.2f} s CPU on {n:,} ratings; reference "
                    f"{t_ref.wall:.2f} s wall / {t_ref.cpu:.2f} s CPU on {ref_inter.num_rows:,} ratings"
                ),
                "verified": (
                    f"all columns and all histories equal on {ref_out.num_rows:,} samples "
                    f"({ref_inter.num_rows:,} ratings)"
                ),
                "peak memory": (
                    f"both columns measured on the same {pilot.num_rows:,} ratings; ragrec on all {n:,} ratings: "
                    f"{mem_rag_full / 2**20:,.0f} MiB"
                ),
                "machine": machine(),
            },
            notes=notes,
        )
    ]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(
        __doc__.splitlines()[0],
        argv,
        **{
            "--max-history": {"type": int, "default": None, "help": "data.max_history (default: all)"},
            "--ratings": {"type": int, "default": 1_000_000, "help": "target number of ratings (full run)"},
            "--ref-budget": {
                "type": float,
                "default": 180.0,
                "help": "seconds above which the reference is extrapolated",
            },
        },
    )
    report(run(args.quick, args.max_history, args.ratings, args.ref_budget), args)


if __name__ == "__main__":
    main()
