"""A 4-trial Ray Tune sweep on the tiny synthetic config, inside the shared 2-CPU Ray session.

Checks that trials share the artifact cache (upstream stages computed once; a new temperature makes a
new descriptions artifact), that the best trial is the argmax of the trials table on validation and
that it is reported on test; finishing at all shows the trial resources do not deadlock on 2 CPUs.
"""

import csv
import json
from pathlib import Path

import pytest

from ragrec.tuning import run_sweep

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.ray]


def _published(root: Path, stage: str) -> list[Path]:
    d = root / stage
    return [p for p in d.iterdir() if (p / "manifest.json").exists()] if d.exists() else []


def test_sweep_reuses_cache_and_reports_best_on_test(ray_session, tmp_path):
    art = tmp_path / "artifacts"
    # lora off keeps the test to minutes on 2 shared CPUs: each trial then differs only in what it searches
    result = run_sweep(
        str(REPO / "configs" / "sweep_demo.yaml"),
        [f"artifacts_dir={art}", f"output_dir={tmp_path / 'runs'}", "lora.enabled=false"],
    )

    # trials and the final test evaluation share one store: upstream stages exist once
    counts = {
        s: len(_published(art, s))
        for s in (
            "dataset",
            "samples",
            "embed_title",
            "lightgcn",
            "descriptions",
            "embed_desc",
            "text_features",
            "projector",
            "scores",
        )
    }
    assert counts == {
        "dataset": 1,
        "samples": 1,
        "embed_title": 1,
        "lightgcn": 1,
        "descriptions": 2,
        "embed_desc": 2,
        "text_features": 2,
        "projector": 2,
        "scores": 4 + 1,
    }  # 4 trials on valid (alpha x temperature) + the best one on test
    temps = sorted(
        json.loads((p / "manifest.json").read_text())["spec"]["config"]["sampling"]["temperature"]
        for p in _published(art, "descriptions")
    )
    assert temps == [0.8, 1.0]

    # the results table: every trial, sorted by valid AUC, the selected one is its argmax
    out = tmp_path / "runs" / "sweep_demo"
    assert result.out_dir == out
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and all(r["status"] == "ok" for r in rows)
    assert {(float(r["retrieval.alpha"]), float(r["description.temperature"])) for r in rows} == {
        (0.5, 0.8),
        (0.5, 1.0),
        (0.8, 0.8),
        (0.8, 1.0),
    }
    aucs = [float(r["auc"]) for r in rows]
    assert aucs == sorted(aucs, reverse=True)
    top = max(rows, key=lambda r: float(r["auc"]))
    assert top["best"] == "True" and sum(r["best"] == "True" for r in rows) == 1
    assert result.best_config == {
        "retrieval.alpha": float(top["retrieval.alpha"]),
        "description.temperature": float(top["description.temperature"]),
    }
    assert result.valid["auc"] == pytest.approx(float(top["auc"]))

    # the best config evaluated once more, on test
    assert result.test["split"] == "test" and result.test["n"] == 24
    assert 0.0 <= result.test["auc"] <= 1.0
    md = (out / "results.md").read_text()
    assert f"test: auc {result.test['auc']:.4f}" in md
    assert (out / "sweep.png").read_bytes()[:4] == b"\x89PNG"
