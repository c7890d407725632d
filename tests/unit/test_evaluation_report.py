"""report.md / metrics.json / PNG plots."""

from __future__ import annotations

import json

from ragrec.evaluation.report import plot_auc_bars, plot_curve, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_write_report(tmp_path):
    rows = [
        {
            "name": "RALLRec",
            "auc": 0.7772,
            "auc_lo": 0.7701,
            "auc_hi": 0.7843,
            "logloss": 0.6102,
            "acc": 0.6904,
            "n": 10000,
        },
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
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "auc.png",
        "auc_vs_k.png",
        "metrics.json",
        "report.md",
    ]


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


def _urow(name, auc, ulo, uhi, delta=None):
    r = {
        "name": name,
        "auc": auc,
        "auc_lo": auc - 0.01,
        "auc_hi": auc + 0.01,
        "auc_ulo": ulo,
        "auc_uhi": uhi,
        "logloss": 0.69,
        "acc": 0.5,
        "n": 1000,
    }
    if delta is not None:
        r.update(zip(("delta", "delta_lo", "delta_hi", "delta_ulo", "delta_uhi"), delta))
    return r


def test_table_shows_sample_and_user_intervals_and_stars_on_the_user_one(tmp_path):
    from ragrec.evaluation.report import USER_CI_NOTE, format_rows

    rows = [
        _urow("RALLRec", 0.70, 0.62, 0.78) | {"delta": None},
        # sample interval excludes 0, user interval does not: no star
        _urow("A", 0.66, 0.58, 0.74, (-0.04, -0.06, -0.02, -0.09, 0.01)),
        # both exclude 0: star
        _urow("B", 0.60, 0.50, 0.70, (-0.10, -0.12, -0.08, -0.16, -0.04)),
    ]
    table = format_rows(rows, "RALLRec")
    head, _, ref, a, b = table.splitlines()
    cols = [c.strip() for c in head.strip("|").split("|")]
    assert cols[:5] == [
        "variant",
        "AUC [95% CI, samples]",
        "[95% CI, users]",
        "ΔAUC vs RALLRec [95% CI, samples]",
        "[95% CI, users]",
    ]
    assert "| RALLRec | 0.7000 [0.6900, 0.7100] | [0.6200, 0.7800] | — | — |" in ref
    assert "| -0.0400 [-0.0600, -0.0200] | [-0.0900, +0.0100] |" in a and "*" not in a
    assert "| -0.1000 [-0.1200, -0.0800] | [-0.1600, -0.0400] * |" in b and b.count("*") == 1
    text = write_report(
        tmp_path, title="t", config={}, counts={}, rows=rows, notes=[], plots={}, reference="RALLRec"
    ).read_text()
    assert USER_CI_NOTE in text and "resamples users" in USER_CI_NOTE and "the one to read" in USER_CI_NOTE
    assert "* = the user-clustered 95% interval excludes 0" in text
    # rows without user intervals keep the old single-interval layout and judge * on the sample interval
    plain = {k: v for k, v in rows[1].items() if k not in ("auc_ulo", "auc_uhi", "delta_ulo", "delta_uhi")}
    line = format_rows([plain], "RALLRec").splitlines()
    assert "[95% CI, users]" not in line[0]
    assert line[2].endswith("-0.0400 [-0.0600, -0.0200] * | 0.6900 | 0.5000 | 1000 |")


def test_decomposition_note_is_one_line():
    from ragrec.evaluation.report import decomposition_note

    d = {
        "auc": 0.4309,
        "auc_within": 0.551,
        "auc_between": 0.412,
        "w_within": 0.934,
        "w_between": 0.066,
        "users": 18,
        "users_both_labels": 17,
        "auc_user_only": 0.3988,
    }
    line = decomposition_note("RALLRec", d)
    assert line.startswith(
        "RALLRec: AUC 0.4309 = 0.93 × within-user AUC 0.55 + 0.07 × between-user AUC 0.41 "
        "on 18 users (17 with both labels)"
    )
    assert "AUC 0.3988" in line and "\n" not in line
    assert "within-user AUC —" in decomposition_note("x", d | {"auc_within": float("nan")})
