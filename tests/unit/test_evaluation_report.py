"""report.md / metrics.json / PNG plots."""

from __future__ import annotations

import json

from ragrec.evaluation.report import plot_auc_bars, plot_curve, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_write_report(tmp_path):
    rows = [
        {"name": "RALLRec", "auc": 0.7772, "auc_lo": 0.7701, "auc_hi": 0.7843, "logloss": 0.6102, "acc": 0.6904, "n": 10000},
        {"name": "item_rate", "auc": 0.7012, "auc_lo": 0.69, "auc_hi": 0.71, "logloss": 0.64, "acc": 0.65, "n": 10000},
        {"name": "zero-shot", "auc": float("nan"), "auc_lo": None, "auc_hi": None, "logloss": 0.7, "acc": 0.5, "n": 3},
    ]
    path = write_report(
        tmp_path / "run",
        title="RALLRec on ml-100k",
        config={"retrieval": {"k": 30, "alpha": 2 / 3}},
        counts={"train": 8192, "test": 10000},
        rows=rows,
        notes=["RALLRec beats the item-rate baseline by 0.076 AUC."],
        plots={
            "auc": lambda p: plot_auc_bars(rows[:2], p),
            "auc_vs_k": lambda p: plot_curve([5, 10, 30], {"rerank": [0.7, 0.72, 0.75]}, p, "K", "AUC"),
        },
    )
    text = path.read_text()
    assert "| RALLRec | 0.7772 [0.7701, 0.7843] | 0.6102 | 0.6904 | 10000 |" in text
    assert "| item_rate | 0.7012 [0.6900, 0.7100] | 0.6400 | 0.6500 | 10000 |" in text
    assert "| zero-shot | — | 0.7000 | 0.5000 | 3 |" in text
    assert "- test: 10000" in text and "beats the item-rate baseline" in text
    assert '"k": 30' in text and "![auc](auc.png)" in text
    for name in ("auc.png", "auc_vs_k.png"):
        data = (tmp_path / "run" / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 1000
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [r["name"] for r in metrics["rows"]] == ["RALLRec", "item_rate", "zero-shot"]
    assert metrics["rows"][2]["auc"] is None  # NaN -> null, valid JSON
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["auc.png", "auc_vs_k.png", "metrics.json", "report.md"]


def test_failed_plot_leaves_no_partial_file(tmp_path):
    def boom(p):
        p.write_bytes(b"partial")
        raise RuntimeError("plot failed")

    try:
        write_report(tmp_path, title="t", config={}, counts={}, rows=[], notes=[], plots={"bad": boom})
    except RuntimeError:
        pass
    assert list(tmp_path.iterdir()) == []


def test_uauc_column_appears_only_when_rows_carry_it():
    from ragrec.evaluation.report import format_rows

    base = {"name": "a", "auc": 0.7, "auc_lo": 0.6, "auc_hi": 0.8, "logloss": 0.5, "acc": 0.6, "n": 10}
    assert "UAUC" not in format_rows([base])
    table = format_rows([{**base, "uauc": 0.6512}, {**base, "name": "b"}])
    lines = table.splitlines()
    assert lines[0].startswith("| variant | AUC [95% CI] | UAUC |")
    assert "| 0.6512 |" in lines[2] and lines[3].split("|")[3].strip() == "—"
