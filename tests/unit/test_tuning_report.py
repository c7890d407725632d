"""Sweep results: best-trial selection, the sorted table and the files written."""

import csv
from pathlib import Path

import pytest

from ragrec.tuning import load_sweep
from ragrec.tuning.report import TrialRow, best_row, trials_frame, write_results

REPO = Path(__file__).resolve().parents[2]


def _rows():
    return [
        TrialRow(
            "a",
            {"retrieval.alpha": 0.5, "description.temperature": 0.8},
            {"auc": 0.61, "logloss": 0.70, "acc": 0.55, "n": 24},
        ),
        TrialRow(
            "b",
            {"retrieval.alpha": 0.8, "description.temperature": 0.8},
            {"auc": 0.66, "logloss": 0.72, "acc": 0.60, "n": 24},
        ),
        TrialRow("c", {"retrieval.alpha": 0.5, "description.temperature": 1.0}, {}, error="RuntimeError: boom"),
        TrialRow(
            "d",
            {"retrieval.alpha": 0.8, "description.temperature": 1.0},
            {"auc": 0.66, "logloss": 0.65, "acc": 0.58, "n": 24},
        ),
    ]


def test_best_row_by_mode_with_ties_to_the_first_and_failures_ignored():
    rows = _rows()
    assert best_row(rows, "auc", "max").trial_id == "b"  # b and d tie: the earlier trial wins
    assert best_row(rows, "logloss", "min").trial_id == "d"
    assert best_row(rows, "acc", "max").trial_id == "b"
    assert best_row([rows[2]], "auc", "max") is None


def test_trials_frame_sorted_by_objective_failed_last():
    df = trials_frame(_rows(), ["retrieval.alpha", "description.temperature"], "logloss", "min")
    assert df["trial_id"].tolist() == ["d", "a", "b", "c"]
    assert df["rank"].tolist() == [1, 2, 3, 4]
    assert df["best"].tolist() == [True, False, False, False]
    assert df["status"].iloc[-1] == "RuntimeError: boom"


def test_write_results_files(tmp_path):
    spec = load_sweep(REPO / "configs" / "sweep_demo.yaml", cwd=tmp_path)
    rows = _rows()
    best = best_row(rows, "auc", "max")
    test = {"auc": 0.6321, "logloss": 0.69, "acc": 0.57, "n": 24, "split": "test"}
    write_results(tmp_path, spec, rows, best, test)

    with open(tmp_path / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["trial_id"] for r in table] == ["b", "d", "a", "c"]
    assert table[0]["best"] == "True" and float(table[0]["auc"]) == pytest.approx(0.66)
    md = (tmp_path / "results.md").read_text()
    best_line = next(line for line in md.splitlines() if "★" in line)
    assert "**b**" in best_line and "0.6600" in best_line
    assert sum("★" in line for line in md.splitlines()) == 1
    assert "test: auc 0.6321" in md
    assert (tmp_path / "sweep.png").read_bytes()[:4] == b"\x89PNG"
