"""Serving histories (no Ray): `as_of` windows reproduce the rallrec protocol's sample histories exactly."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from ragrec.config import DataConfig, SyntheticConfig
from ragrec.data import rallrec_samples
from ragrec.data.synthetic import make_synthetic
from ragrec.serving.state import UserHistories


def _interactions(tie_seconds: int = 2_000_000) -> pa.Table:
    """Synthetic ratings with timestamps coarsened so that many ratings of a user share a second."""
    inter = make_synthetic(SyntheticConfig(n_users=25, n_items=60, ratings_per_user=24, seed=3)).interactions
    ts = inter.column("timestamp").to_numpy() // tie_seconds * tie_seconds
    out = inter.set_column(inter.schema.get_field_index("timestamp"), inter.schema.field("timestamp"), pa.array(ts))
    # shuffle the rows: the protocol order must come from the sort, not from the input order
    return out.take(pa.array(np.random.default_rng(0).permutation(out.num_rows)))


@pytest.mark.parametrize("max_history", [None, 7])
def test_as_of_window_equals_protocol_history_for_every_sample(max_history):
    inter = _interactions()
    ts = inter.column("timestamp").to_numpy()
    assert len(np.unique(ts)) < inter.num_rows / 2, "the fixture must hold same-second ties"
    samples = rallrec_samples(inter, DataConfig(name="synthetic", min_history=1, max_history=max_history))
    hist = UserHistories(inter, n_users=25, max_history=max_history)
    got_items, got_ratings = [], []
    for u, i, t in zip(*(samples.column(c).to_numpy() for c in ("user_id", "item_id", "timestamp"))):
        row = hist.window(int(u), np.array([i]), int(t)).to_samples()
        got_items.append(row.column("history_item_ids")[0].as_py())
        got_ratings.append(row.column("history_ratings")[0].as_py())
    assert got_items == samples.column("history_item_ids").to_pylist()
    assert got_ratings == samples.column("history_ratings").to_pylist()


def test_same_second_targets_get_different_histories_by_item_order():
    # user 0 rated items 5, 2, 9 in the same second t=100, after item 7 at t=50
    inter = pa.table(
        {
            "user_id": pa.array([0, 0, 0, 0], pa.int64()),
            "item_id": pa.array([5, 2, 9, 7], pa.int64()),
            "rating": pa.array([5, 4, 3, 2], pa.float32()),
            "timestamp": pa.array([100, 100, 100, 50], pa.int64()),
        }
    )
    hist = UserHistories(inter, n_users=2)
    w = hist.window(0, np.array([2, 5, 9, 3, 1000]), as_of=100)
    lists = w.to_samples().column("history_item_ids").to_pylist()
    assert lists == [[7], [7, 2], [7, 2, 5], [7, 2], [7, 2, 5, 9]]
    assert hist.window(0, np.array([5]), as_of=101).to_samples().column("history_item_ids").to_pylist() == [
        [7, 2, 5, 9]
    ]
    assert hist.window(0, np.array([5]), as_of=50).to_samples().column("history_item_ids").to_pylist() == [[]]


def test_default_window_is_the_whole_history_in_protocol_order():
    inter = _interactions()
    hist = UserHistories(inter, n_users=25)
    df = inter.to_pandas().sort_values(["timestamp", "item_id"], kind="stable")
    for u in (0, 7, 24):
        want = df[df.user_id == u]
        s = hist.window(u, np.array([1, 2])).to_samples()
        assert s.column("history_item_ids").to_pylist() == [want.item_id.tolist()] * 2
        assert s.column("history_ratings").to_pylist() == [want.rating.astype(float).tolist()] * 2
        assert s.column("user_id").to_pylist() == [u, u] and s.column("item_id").to_pylist() == [1, 2]


def test_user_without_ratings_has_empty_history_and_unknown_user_raises():
    inter = pa.table(
        {
            "user_id": pa.array([1], pa.int64()),
            "item_id": pa.array([3], pa.int64()),
            "rating": pa.array([4], pa.float32()),
            "timestamp": pa.array([10], pa.int64()),
        }
    )
    hist = UserHistories(inter, n_users=3)
    assert hist.window(2, np.array([3])).to_samples().column("history_item_ids").to_pylist() == [[]]
    with pytest.raises(ValueError, match="unknown user_id 3"):
        hist.window(3, np.array([3]))
    with pytest.raises(ValueError, match="outside"):
        UserHistories(inter, n_users=1)
