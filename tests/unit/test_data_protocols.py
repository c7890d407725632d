"""The rallrec sample protocol: exact agreement with a straightforward reference, the ML-100K count,
time ordering of splits and histories, given labels, and speed on 1M ratings."""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
import pytest

from ragrec.config import DataConfig
from ragrec.data import rallrec_samples
from ragrec.data.movielens import load_ml100k
from ragrec.data.schemas import INTERACTIONS, SAMPLES, with_label_source


def _table(user, item, rating, ts, label=None) -> pa.Table:
    rating = np.asarray(rating, dtype=np.float32)
    label = (rating > 3).astype(np.int8) if label is None else np.asarray(label, dtype=np.int8)
    t = pa.Table.from_arrays(
        [
            pa.array(np.asarray(user, np.int64)),
            pa.array(np.asarray(item, np.int64)),
            pa.array(rating),
            pa.array(np.asarray(ts, np.int64)),
            pa.array(label),
        ],
        schema=INTERACTIONS,
    )
    return with_label_source(t, given=False)


def _reference(rows: list[dict], min_history: int, max_history: int | None, split, threshold: float) -> list[dict]:
    """The protocol written the obvious way: one Python pass over the sorted ratings."""
    ordered = sorted(enumerate(rows), key=lambda kv: (kv[1]["timestamp"], kv[1]["user_id"], kv[1]["item_id"], kv[0]))
    seen: dict[int, list[tuple[int, float]]] = {}
    out = []
    for _, r in ordered:
        hist = seen.setdefault(r["user_id"], [])
        if len(hist) >= min_history:
            kept = hist if max_history is None else hist[-max_history:] if max_history > 0 else []
            out.append(
                {
                    "user_id": r["user_id"],
                    "item_id": r["item_id"],
                    "rating": r["rating"],
                    "timestamp": r["timestamp"],
                    "label": int(r["rating"] > threshold),
                    "history_item_ids": [h[0] for h in kept],
                    "history_ratings": [h[1] for h in kept],
                }
            )
        hist.append((r["item_id"], r["rating"]))
    n = len(out)
    n_train = int(np.floor(split[0] * n + 1e-6))
    n_valid = int(np.floor((split[0] + split[1]) * n + 1e-6))
    for k, s in enumerate(out):
        s["sample_id"] = k
        s["split"] = "train" if k < n_train else "valid" if k < n_valid else "test"
    return out


@pytest.mark.parametrize(
    "min_history,max_history,split,threshold",
    [(1, None, (0.8, 0.1, 0.1), 3.0), (3, 4, (0.6, 0.2, 0.2), 3.0), (2, 2, (0.5, 0.25, 0.25), 2.0)],
)
def test_matches_reference_implementation(min_history, max_history, split, threshold):
    rng = np.random.default_rng(7)
    n = 400
    user = rng.integers(0, 12, n)
    item = rng.integers(0, 30, n)
    ts = rng.integers(0, 60, n)  # many timestamp ties, within and across users
    rating = rng.integers(1, 6, n).astype(np.float32)
    table = _table(user, item, rating, ts)
    cfg = DataConfig(min_history=min_history, max_history=max_history, split=split, label_threshold=threshold)
    got = rallrec_samples(table, cfg)
    assert got.schema.equals(SAMPLES)
    expected = _reference(table.to_pylist(), min_history, max_history, split, threshold)
    assert len(expected) > 100
    assert got.to_pylist() == [{k: e[k] for k in SAMPLES.names} for e in expected]


def test_given_labels_are_kept_and_rating_free_histories_are_null():
    user, item, ts = [0, 0, 0, 1, 1, 1], [0, 1, 2, 0, 1, 2], [1, 2, 3, 4, 5, 6]
    label = [1, 0, 1, 0, 1, 1]
    t = pa.Table.from_arrays(
        [
            pa.array(user, pa.int64()),
            pa.array(item, pa.int64()),
            pa.nulls(6, pa.float32()),
            pa.array(ts, pa.int64()),
            pa.array(label, pa.int8()),
        ],
        schema=INTERACTIONS,
    )
    s = rallrec_samples(with_label_source(t, given=True), DataConfig(min_history=1, split=(0.5, 0.25, 0.25)))
    assert s["label"].to_pylist() == [0, 1, 1, 1]
    assert s["history_item_ids"].to_pylist() == [[0], [0, 1], [0], [0, 1]]
    assert s["history_ratings"].to_pylist() == [[None], [None, None], [None], [None, None]]
    assert s["split"].to_pylist() == ["train", "train", "valid", "test"]


@pytest.fixture(scope="module")
def ml100k(data_dir):
    return load_ml100k(data_dir / "ml-100k")


def test_ml100k_sample_count_and_time_split(ml100k):
    user = ml100k.interactions["user_id"].to_numpy()
    counts = np.bincount(user)
    # every user has >= 20 ratings, so exactly min_history=5 ratings per user are dropped
    assert len(counts) == 943 and counts.min() >= 20
    s = rallrec_samples(ml100k.interactions, DataConfig(min_history=5))
    assert s.num_rows == 100_000 - 943 * 5
    # each user contributes all but its first 5 ratings
    np.testing.assert_array_equal(np.bincount(s["user_id"].to_numpy(), minlength=943), counts - 5)
    ts = s["timestamp"].to_numpy()
    assert np.all(np.diff(ts) >= 0)
    split = s["split"].to_numpy(zero_copy_only=False)
    n = s.num_rows
    assert (split == "train").sum() == int(0.8 * n) and (split == "test").sum() == n - int(0.9 * n)
    assert ts[split == "train"].max() <= ts[split == "valid"].min()
    assert ts[split == "valid"].max() <= ts[split == "test"].min()
    # histories are the user's earlier ratings, oldest first: lengths grow by one per sample of a user
    lengths = np.diff(s["history_item_ids"].combine_chunks().offsets.to_numpy())
    first_of_user = np.unique(s["user_id"].to_numpy(), return_index=True)[1]
    assert np.all(lengths[first_of_user] == 5)
    assert lengths.sum() == sum(c * (c - 1) // 2 - 10 for c in counts)  # sum over users of 5 + ... + (c-1)


def test_one_million_ratings_is_fast():
    rng = np.random.default_rng(0)
    n = 1_000_000
    user = rng.integers(0, 20_000, n)
    table = _table(user, rng.integers(0, 4000, n), rng.integers(1, 6, n), rng.integers(9 * 10**8, 10**9, n))
    t0 = time.perf_counter()
    s = rallrec_samples(table, DataConfig(min_history=5))
    elapsed = time.perf_counter() - t0
    counts = np.bincount(user)
    assert s.num_rows == int(np.maximum(counts - 5, 0).sum())
    assert elapsed < 20, f"rallrec_samples took {elapsed:.1f} s on 1M ratings"
    # all histories live in one flat buffer (no per-sample objects)
    assert s["history_item_ids"].num_chunks == 1
