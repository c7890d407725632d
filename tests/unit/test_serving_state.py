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
    assert w.in_history.tolist() == [False] * 5  # each target's own rating is not before it
    # later, item 5's own rating is before the cut: left out of its history, flagged in_history
    late = hist.window(0, np.array([5, 4]), as_of=101).to_samples()
    assert late.column("history_item_ids").to_pylist() == [[7, 2, 9], [7, 2, 5, 9]]
    assert late.column("in_history").to_pylist() == [True, False]
    assert hist.window(0, np.array([5]), as_of=50).to_samples().column("history_item_ids").to_pylist() == [[]]


def test_a_target_never_sees_its_own_rating_and_is_flagged_in_history():
    """Without as_of the whole history is the context, minus the target's own ratings (the leak of issue 14:
    a live request for an item the user rated 5 stars must not show the LLM that rating)."""
    inter = pa.table(
        {
            "user_id": pa.array([0, 0, 0, 0, 0], pa.int64()),
            "item_id": pa.array([119, 3, 8, 119, 4], pa.int64()),  # 119 rated twice
            "rating": pa.array([5, 1, 2, 4, 3], pa.float32()),
            "timestamp": pa.array([10, 20, 30, 40, 50], pa.int64()),
        }
    )
    hist = UserHistories(inter, n_users=1, max_history=3)
    s = hist.window(0, np.array([119, 8, 500])).to_samples()
    # the last max_history=3 ratings of items other than the target
    assert s.column("history_item_ids").to_pylist() == [[3, 8, 4], [3, 119, 4], [8, 119, 4]]
    assert s.column("history_ratings").to_pylist() == [[1.0, 2.0, 3.0], [1.0, 4.0, 3.0], [2.0, 4.0, 3.0]]
    assert s.column("in_history").to_pylist() == [True, True, False]


def test_default_window_is_the_whole_history_in_protocol_order():
    inter = _interactions()
    hist = UserHistories(inter, n_users=25)
    df = inter.to_pandas().sort_values(["timestamp", "item_id"], kind="stable")
    for u in (0, 7, 24):
        mine = df[df.user_id == u]
        targets = [int(mine.item_id.iloc[3]), 10_000]  # one the user rated, one not
        s = hist.window(u, np.array(targets)).to_samples()
        for row, t in enumerate(targets):  # everything but the target's own ratings
            want = mine[mine.item_id != t]
            assert s.column("history_item_ids")[row].as_py() == want.item_id.tolist()
            assert s.column("history_ratings")[row].as_py() == want.rating.astype(float).tolist()
        assert len(s.column("history_item_ids")[1].as_py()) == len(mine)
        assert s.column("in_history").to_pylist() == [True, False]
        assert s.column("user_id").to_pylist() == [u, u] and s.column("item_id").to_pylist() == targets


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
