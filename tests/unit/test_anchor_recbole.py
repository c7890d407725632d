"""benchmarks/anchor_lightgcn_recbole.py without RecBole: the atomic-file writer, the split round trip, the
early-stopping rule and the missing-RecBole exit."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root holds `benchmarks`

from benchmarks import anchor_lightgcn_recbole as A
from ragrec.config import DataConfig
from ragrec.data.full_ranking import full_ranking_split, split_matrices

N_USERS, N_ITEMS = 30, 25


def _split() -> pa.Table:
    rng = np.random.default_rng(0)
    n = 400
    inter = pa.table(
        {
            "user_id": pa.array(rng.integers(0, N_USERS, n), pa.int64()),
            "item_id": pa.array(rng.integers(0, N_ITEMS - 3, n), pa.int64()),  # the last 3 items: no interaction
            "rating": pa.array(rng.integers(1, 6, n).astype(np.float32)),
            "timestamp": pa.array(np.arange(n), pa.int64()),
            "label": pa.array(np.zeros(n, np.int8)),  # unused: labels come from rating > 3
        }
    )
    return full_ranking_split(
        inter, DataConfig(name="synthetic", label_threshold=3), seed=7, num_users=N_USERS, num_items=N_ITEMS
    )


def test_atomic_files_round_trip_the_split(tmp_path):
    table = _split()
    folder = A.write_atomic(table, N_ITEMS, tmp_path, name="ds")
    assert folder == tmp_path / "ds"
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["ds.item", "ds.test.inter", "ds.train.inter", "ds.valid.inter"]
    for s in A.SPLIT_NAMES:
        lines = (folder / f"ds.{s}.inter").read_text().splitlines()
        assert lines[0] == "user_id:token\titem_id:token"
        assert len(lines) - 1 == sum(x == s for x in table.column("split").to_pylist())
    back, items = A.read_atomic(folder, name="ds")
    # same (user, item, split) rows; the files are grouped by split, each in the table's order
    rows = lambda t: list(zip(*(t.column(c).to_pylist() for c in ("user_id", "item_id", "split"))))
    key = lambda r: A.SPLIT_NAMES.index(r[2])
    assert rows(back) == sorted(rows(table), key=key)
    assert back.schema.equals(table.schema)
    np.testing.assert_array_equal(items, np.arange(N_ITEMS))  # every item, also those without a positive
    a, b = split_matrices(table, N_USERS, N_ITEMS), split_matrices(back, N_USERS, N_ITEMS)
    for s in A.SPLIT_NAMES:
        assert (a[s] != b[s]).nnz == 0


def test_early_stopping_matches_recboles_rule():
    # RecBole: value >= best improves (ties too); stop once more than `patience` epochs in a row did not
    best, bad, stops = -np.inf, 0, []
    for v in [0.1, 0.2, 0.2, 0.1, 0.15, 0.19]:
        best, bad, stop, improved = A.early_stopping(v, best, bad, patience=2)
        stops.append((stop, improved))
    assert stops == [(False, True)] * 3 + [(False, False)] * 2 + [(True, False)]
    assert (best, bad) == (0.2, 3)
    assert A.early_stopping(0.1, 0.2, 0, patience=0)[2]


def test_missing_recbole_exits_2(monkeypatch, capsys):
    monkeypatch.setattr(A, "recbole_available", lambda: "ModuleNotFoundError: No module named 'recbole'")
    assert A.main(["--quick"]) == 2
    err = capsys.readouterr().err
    assert "pip install --no-deps recbole==1.2.1" in err and "\n" == err[-1] and err.count("\n") == 1


def test_metric_names_and_args():
    assert A.metric_names()[:3] == ["recall@10", "recall@20", "recall@50"]
    args = A.parse_args(["--quick"])
    assert args.epochs == A.QUICK_EPOCHS and args.patience == A.DEFAULT_PATIENCE and args.threads == 1
    assert A.parse_args([]).epochs == A.DEFAULT_EPOCHS
    with pytest.raises(SystemExit):
        A.parse_args(["--epochs", "0"])
