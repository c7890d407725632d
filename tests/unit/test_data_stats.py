"""prompt.stats numbers: causal item averages (strictly before the sample) and history averages."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from ragrec.data.stats import history_stats, item_stats_before


def _inter(rows):
    u, i, r, t = zip(*rows)
    return pa.table(
        {
            "user_id": pa.array(u, pa.int64()),
            "item_id": pa.array(i, pa.int64()),
            "rating": pa.array(r, pa.float32()),
            "timestamp": pa.array(t, pa.int64()),
            "label": pa.array([int(x > 3) for x in r], pa.int8()),
        }
    )


def test_item_stats_count_only_interactions_strictly_before_the_query_time():
    inter = _inter([(0, 5, 4.0, 10), (1, 5, 2.0, 20), (2, 5, 5.0, 30), (3, 7, 1.0, 15), (4, 5, 3.0, 30)])
    mean, count, kind = item_stats_before(inter, np.array([5, 5, 5, 5, 7, 9]), np.array([10, 11, 30, 31, 16, 100]))
    assert kind == "rating"
    assert count.tolist() == [0, 1, 2, 4, 1, 0]
    assert np.isnan(mean[0]) and np.isnan(mean[5])
    assert mean[1:5].tolist() == pytest.approx([4.0, 3.0, 3.5, 1.0])


def test_item_stats_match_a_brute_force_loop_on_random_data():
    rng = np.random.default_rng(0)
    n = 500
    inter = _inter(
        list(
            zip(
                rng.integers(0, 50, n),
                rng.integers(0, 20, n),
                rng.integers(1, 6, n).astype(float),
                rng.integers(0, 1000, n),
            )
        )
    )
    q_item, q_ts = rng.integers(0, 22, 200), rng.integers(0, 1100, 200)
    mean, count, _ = item_stats_before(inter, q_item, q_ts)
    it, ts, r = (inter.column(c).to_numpy() for c in ("item_id", "timestamp", "rating"))
    for k in range(200):
        sel = (it == q_item[k]) & (ts < q_ts[k])
        assert count[k] == sel.sum()
        if sel.any():
            assert mean[k] == pytest.approx(r[sel].mean())


def test_label_only_data_averages_labels_and_history_stats_handle_empty_lists():
    inter = _inter([(0, 1, 5.0, 1), (1, 1, 1.0, 2)]).set_column(2, "rating", pa.nulls(2, pa.float32()))
    mean, count, kind = item_stats_before(inter, np.array([1]), np.array([3]))
    assert kind == "label" and mean[0] == pytest.approx(0.5) and count[0] == 2
    m, c = history_stats(pa.array([[4.0, 2.0], [], [5.0]], pa.list_(pa.float32())))
    assert c.tolist() == [2, 0, 1] and m[0] == pytest.approx(3.0) and np.isnan(m[1]) and m[2] == 5.0
