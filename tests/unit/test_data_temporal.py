"""The temporal sample protocol (CoLLM / SCoRe): calendar windows (months, days) with exact boundaries,
histories reaching before the kept period, truncation and min_history, the user's own splits through
the generic loader (labelled data), clear errors, agreement with a plain Python reference, speed."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from ragrec.config import DataConfig, GenericColumns, RunConfig, TemporalConfig
from ragrec.data import DataError, build_samples, load_dataset, rallrec_samples, temporal_samples
from ragrec.data.generic import load_generic
from ragrec.data.schemas import INTERACTIONS, SAMPLES, TEMPORAL_SAMPLES, with_label_source


def _s(iso: str) -> int:
    """UTC seconds of an ISO date-time."""
    return int(datetime.fromisoformat(iso).replace(tzinfo=timezone.utc).timestamp())


def _table(user, item, rating, ts, split=None, label=None) -> pa.Table:
    rating = np.asarray(rating, dtype=np.float32)
    given = label is not None
    label = (rating > 3).astype(np.int8) if label is None else np.asarray(label, dtype=np.int8)
    t = pa.Table.from_arrays(
        [
            pa.array(np.asarray(user, np.int64)),
            pa.array(np.asarray(item, np.int64)),
            pa.array(rating) if not given else pa.nulls(len(label), pa.float32()),
            pa.array(np.asarray(ts, np.int64)),
            pa.array(label),
        ],
        schema=INTERACTIONS,
    )
    if split is not None:
        t = t.append_column("split", pa.array(split, pa.string()))
    return with_label_source(t, given=given)


def _cfg(unit="month", windows=(2, 1, 1), **kw) -> DataConfig:
    return DataConfig(protocol="temporal", temporal=TemporalConfig(unit=unit, windows=windows), **kw)


# user 0 has two ratings before the kept period; boundaries sit exactly at month starts / ends
_HAND = [  # (user, item, rating, time)
    (0, 10, 5, "1997-11-05T12:00:00"),
    (0, 11, 2, "1997-12-31T23:59:59"),  # last second before the kept period
    (0, 12, 4, "1998-01-01T00:00:00"),  # first second of train
    (1, 10, 4, "1998-01-15T08:00:00"),  # train, no history
    (0, 13, 1, "1998-02-28T23:59:59"),  # last second of train
    (0, 14, 5, "1998-03-01T00:00:00"),  # first second of valid
    (1, 11, 3, "1998-03-15T08:00:00"),  # valid
    (1, 12, 5, "1998-04-01T00:00:00"),  # first second of test
    (0, 15, 4, "1998-04-30T23:59:59"),  # last timestamp: the kept period ends with April 1998
]


def _hand_table() -> pa.Table:
    u, i, r, t = zip(*_HAND)
    return _table(u, i, r, [_s(x) for x in t])


def test_month_windows_splits_and_histories_from_before_the_period():
    s = temporal_samples(_hand_table(), _cfg(windows=(2, 1, 1), min_history=1))
    assert s.schema.equals(TEMPORAL_SAMPLES)
    assert s["sample_id"].to_pylist() == list(range(6))
    # user 1's first rating has no history and is dropped; 1997 ratings are history only
    assert s["item_id"].to_pylist() == [12, 13, 14, 11, 12, 15]
    assert s["user_id"].to_pylist() == [0, 0, 0, 1, 1, 0]
    assert s["split"].to_pylist() == ["train", "train", "valid", "valid", "test", "test"]
    assert s["label"].to_pylist() == [1, 0, 1, 0, 1, 1]
    assert s["history_item_ids"].to_pylist() == [
        [10, 11],
        [10, 11, 12],
        [10, 11, 12, 13],
        [10],
        [10, 11],
        [10, 11, 12, 13, 14],
    ]
    assert s["history_ratings"].to_pylist()[2] == [5.0, 2.0, 4.0, 1.0]
    assert s["history_labels"].to_pylist() == [[1, 0], [1, 0, 1], [1, 0, 1, 0], [1], [1, 0], [1, 0, 1, 0, 1]]
    assert np.all(np.diff(s["timestamp"].to_numpy()) >= 0)


def test_month_windows_truncation_and_min_history():
    s = temporal_samples(_hand_table(), _cfg(windows=(2, 1, 1), min_history=2, max_history=2))
    # user 1's valid rating (1 earlier) is dropped; histories keep the 2 most recent, oldest first
    assert s["item_id"].to_pylist() == [12, 13, 14, 12, 15]
    assert s["history_item_ids"].to_pylist() == [[10, 11], [11, 12], [12, 13], [10, 11], [13, 14]]
    assert s["history_labels"].to_pylist() == [[1, 0], [0, 1], [1, 0], [1, 0], [0, 1]]
    assert s["split"].to_pylist() == ["train", "train", "valid", "test", "test"]


def test_longer_windows_take_in_the_earlier_months():
    # (4, 1, 1): train = 1997-11 .. 1998-02, so 1997-12-31T23:59:59 is now a train sample
    s = temporal_samples(_hand_table(), _cfg(windows=(4, 1, 1), min_history=1))
    assert s["item_id"].to_pylist()[:3] == [11, 12, 13]
    assert s["split"].to_pylist()[:3] == ["train"] * 3
    assert s.num_rows == 7


def test_day_windows_cut_at_utc_midnight():
    times = [
        "2020-03-06T23:59:59",
        "2020-03-07T00:00:00",
        "2020-03-08T23:59:59",
        "2020-03-09T00:00:00",
        "2020-03-09T23:59:59",
        "2020-03-10T00:00:00",
        "2020-03-10T05:00:00",
    ]
    t = _table([0] * 7, range(7), [4] * 7, [_s(x) for x in times])
    s = temporal_samples(t, _cfg(unit="day", windows=(2, 1, 1), min_history=1))
    assert s["item_id"].to_pylist() == [1, 2, 3, 4, 5, 6]
    assert s["split"].to_pylist() == ["train", "train", "valid", "valid", "test", "test"]
    assert s["history_item_ids"].to_pylist()[0] == [0]
    assert s["history_item_ids"].to_pylist()[-1] == [0, 1, 2, 3, 4, 5]


def _reference(rows: list[dict], unit: str, windows, min_history: int, max_history, threshold: float) -> list[dict]:
    """The protocol written the obvious way, with Python datetimes for the calendar."""

    def unit_of(ts: int) -> int:
        d = datetime.fromtimestamp(ts, tz=timezone.utc)
        return d.year * 12 + d.month - 1 if unit == "month" else d.toordinal()

    last = max(unit_of(r["timestamp"]) for r in rows)
    start = last - sum(windows) + 1
    ordered = sorted(enumerate(rows), key=lambda kv: (kv[1]["timestamp"], kv[1]["user_id"], kv[1]["item_id"], kv[0]))
    seen: dict[int, list[dict]] = {}
    out = []
    for _, r in ordered:
        hist = seen.setdefault(r["user_id"], [])
        if "split" in r:
            split = r["split"]
        else:
            rel = unit_of(r["timestamp"]) - start
            split = (
                None
                if rel < 0
                else "train"
                if rel < windows[0]
                else "valid"
                if rel < windows[0] + windows[1]
                else "test"
            )
        if split is not None and len(hist) >= min_history:
            kept = hist if max_history is None else hist[-max_history:]
            out.append(
                {
                    "sample_id": len(out),
                    "user_id": r["user_id"],
                    "item_id": r["item_id"],
                    "label": int(r["rating"] > threshold),
                    "rating": r["rating"],
                    "timestamp": r["timestamp"],
                    "history_item_ids": [h["item_id"] for h in kept],
                    "history_ratings": [h["rating"] for h in kept],
                    "split": split,
                    "history_labels": [int(h["rating"] > threshold) for h in kept],
                }
            )
        hist.append(r)
    return out


@pytest.mark.parametrize(
    "unit,windows,min_history,max_history,own",
    [
        ("month", (10, 5, 5), 1, None, False),
        ("month", (3, 0, 2), 3, 4, False),
        ("day", (200, 60, 60), 2, 3, False),
        ("month", (1, 1, 1), 2, None, True),
    ],
)
def test_matches_reference_implementation(unit, windows, min_history, max_history, own):
    rng = np.random.default_rng(3)
    n = 600
    user = rng.integers(0, 15, n)
    item = rng.integers(0, 40, n)
    # two years of timestamps, many exactly at a UTC month start, plus ties
    ts = rng.integers(_s("1997-01-01T00:00:00"), _s("1999-01-01T00:00:00"), n)
    month_starts = [_s(f"{y}-{m:02d}-01T00:00:00") for y in (1997, 1998) for m in range(1, 13)]
    ts[: n // 5] = rng.choice(month_starts, n // 5)
    rating = rng.integers(1, 6, n)
    split = rng.choice(np.array(["train", "valid", "test", None], dtype=object), n).tolist() if own else None
    table = _table(user, item, rating, ts, split=split)
    got = temporal_samples(table, _cfg(unit=unit, windows=windows, min_history=min_history, max_history=max_history))
    want = _reference(table.to_pylist(), unit, windows, min_history, max_history, 3.0)
    assert len(want) > 100
    assert got.to_pylist() == want


def test_own_split_column_overrides_windows():
    times = [_s(f"2001-0{m}-10T00:00:00") for m in range(1, 7)]
    t = _table([0] * 6, range(6), [4] * 6, times, split=[None, "test", "train", None, "valid", "train"])
    s = temporal_samples(t, _cfg(windows=(1, 1, 1), min_history=1))
    assert s["item_id"].to_pylist() == [1, 2, 4, 5]
    assert s["split"].to_pylist() == ["test", "train", "valid", "train"]
    assert s["history_item_ids"].to_pylist()[-1] == [0, 1, 2, 3, 4]  # null-split rows are history too


def test_bad_split_value_in_table():
    t = _table([0, 0], [0, 1], [4, 4], [1, 2], split=["train", "tset"])
    with pytest.raises(DataError, match=r"'tset'.*not one of train, valid, test"):
        temporal_samples(t, _cfg(min_history=1))


# ---- generic files with labels and the user's own splits --------------------------------------------
def _write_generic(tmp_path, fold: list[str]) -> DataConfig:
    pd.DataFrame(
        {
            "uid": ["u1", "u1", "u1", "u2", "u2", "u1", "u2"],
            "iid": ["b", "a", "c", "a", "c", "d", "b"],
            "clicked": [1, 0, 1, 1, 0, 1, 1],
            "when": ["2021-05-01", "2021-05-02", "2021-05-03", "2021-05-04", "2021-05-05", "2021-05-06", "2021-05-07"],
            "fold": fold,
        }
    ).to_csv(tmp_path / "clicks.csv", index=False)
    pd.DataFrame({"iid": ["a", "b", "c", "d"], "name": ["Alpha", "Beta", "Gamma", "Delta"]}).to_csv(
        tmp_path / "items.csv", index=False
    )
    cols = GenericColumns(
        user_id="uid",
        item_id="iid",
        rating=None,
        label="clicked",
        timestamp="when",
        title="name",
        genres=None,
        split="fold",
    )
    return DataConfig(
        name="generic",
        path=str(tmp_path),
        interactions_file="clicks.csv",
        items_file="items.csv",
        columns=cols,
        protocol="temporal",
        min_history=1,
    )


def test_labelled_generic_csv_with_own_splits(tmp_path):
    cfg = _write_generic(tmp_path, ["", "", "train", "train", "valid", "test", " Test "])
    ds = load_generic(cfg)
    assert ds.interactions["split"].to_pylist() == [None, None, "train", "train", "valid", "test", "test"]
    assert ds.items["genres"].to_pylist() == [[], [], [], []] and ds.items["title"].to_pylist()[0] == "Alpha"
    s = build_samples(ds.interactions, cfg)
    # dense ids: items a,b,c,d -> 0..3, users u1,u2 -> 0,1; u2's first click (train) has no history
    assert s["user_id"].to_pylist() == [0, 1, 0, 1]
    assert s["item_id"].to_pylist() == [2, 2, 3, 1]
    assert s["split"].to_pylist() == ["train", "valid", "test", "test"]
    assert s["label"].to_pylist() == [1, 0, 1, 1]
    assert s["history_item_ids"].to_pylist() == [[1, 0], [0], [1, 0, 2], [0, 2]]
    assert s["history_labels"].to_pylist() == [[1, 0], [1], [1, 0, 1], [1, 0]]
    assert s["history_ratings"].to_pylist() == [[None, None], [None], [None] * 3, [None, None]]
    assert s["rating"].null_count == 4


def test_generic_bad_split_value_names_file_line_and_values(tmp_path):
    cfg = _write_generic(tmp_path, ["train", "train", "train", "eval", "valid", "test", "test"])
    with pytest.raises(DataError) as e:
        load_generic(cfg)
    msg = str(e.value)
    assert "clicks.csv line 5" in msg and "'eval'" in msg and "train, valid, test" in msg
    assert "data.columns.split" in msg


def test_generic_items_without_genres_column_under_default_name(tmp_path):
    cfg = _write_generic(tmp_path, ["train"] * 7)
    cols = cfg.columns.model_dump()
    del cols["genres"]  # left at its default "genres", which items.csv lacks
    ds = load_dataset(cfg.model_copy(update={"columns": GenericColumns(**cols)}))
    assert ds.items["genres"].to_pylist() == [[], [], [], []]
    # a declared genres column that is missing stays an error, as does a look-alike under the default
    with pytest.raises(DataError, match="column 'genres' .* not found"):
        load_dataset(cfg.model_copy(update={"columns": GenericColumns(**cols, genres="genres")}))
    pd.DataFrame({"iid": ["a", "b", "c", "d"], "name": list("ABCD"), "Genre": list("xyzw")}).to_csv(
        tmp_path / "items.csv", index=False
    )
    with pytest.raises(DataError, match="available columns: iid, name, Genre"):
        load_dataset(cfg.model_copy(update={"columns": GenericColumns(**cols)}))


# ---- errors and dispatch ------------------------------------------------------------------------
def test_empty_window_names_windows_and_date_range():
    # nothing in February 2005: the valid window of (1, 1, 1) months is empty
    t = _table(
        [0, 0, 0, 0],
        [0, 1, 2, 3],
        [4] * 4,
        [_s("2005-01-03T00:00:00"), _s("2005-01-20T00:00:00"), _s("2005-03-02T00:00:00"), _s("2005-03-09T00:00:00")],
    )
    with pytest.raises(DataError) as e:
        temporal_samples(t, _cfg(windows=(1, 1, 1), min_history=1))
    msg = str(e.value)
    assert "data.temporal.windows" in msg and "split 'valid' is empty" in msg
    assert "2005-02-01..2005-02-28" in msg and "data spans 2005-01-03..2005-03-09" in msg and "Fix:" in msg
    # a zero-length window is allowed to be empty
    s = temporal_samples(t, _cfg(windows=(2, 0, 1), min_history=1))
    assert s["split"].to_pylist() == ["train", "test", "test"]


def test_empty_train_window_from_min_history():
    t = _table(
        [0, 1, 2, 0],
        [0, 1, 2, 3],
        [4] * 4,
        [_s("2005-01-03T00:00:00"), _s("2005-01-20T00:00:00"), _s("2005-02-02T00:00:00"), _s("2005-03-09T00:00:00")],
    )
    with pytest.raises(
        DataError, match=r"split 'train' is empty: its window 2005-01-01\.\.2005-01-31 holds 2 interactions"
    ):
        temporal_samples(t, _cfg(windows=(1, 1, 1), min_history=1))


def test_build_samples_dispatches_on_protocol():
    t = _hand_table()
    run = RunConfig(data=_cfg(windows=(2, 1, 1), min_history=1))
    assert build_samples(t, run).equals(temporal_samples(t, run.data))
    rall = DataConfig(min_history=1, split=(0.5, 0.25, 0.25))
    got = build_samples(t, rall)
    assert got.schema.equals(SAMPLES) and got.equals(rallrec_samples(t, rall))


def test_one_million_interactions_is_fast():
    rng = np.random.default_rng(0)
    n = 1_000_000
    user = rng.integers(0, 20_000, n)
    ts = rng.integers(_s("2000-01-01T00:00:00"), _s("2003-01-01T00:00:00"), n)  # 36 months
    table = _table(user, rng.integers(0, 4000, n), rng.integers(1, 6, n), ts)
    t0 = time.perf_counter()
    s = temporal_samples(table, _cfg(windows=(10, 5, 5), min_history=5, max_history=50))
    elapsed = time.perf_counter() - t0
    assert elapsed < 20, f"temporal_samples took {elapsed:.1f} s on 1M interactions"
    # expected count via pandas: rows from 2001-05 on whose user has >= 5 earlier rows in stable order
    df = pd.DataFrame({"u": user, "i": table["item_id"].to_numpy(), "t": ts}).sort_values(
        ["t", "u", "i"], kind="stable"
    )
    pos = df.groupby("u").cumcount().to_numpy()
    in_period = df["t"].to_numpy() >= _s("2001-05-01T00:00:00")
    assert s.num_rows == int((in_period & (pos >= 5)).sum())
    split = s["split"].to_numpy(zero_copy_only=False)
    st = s["timestamp"].to_numpy()
    assert st[split == "valid"].min() >= _s("2002-03-01T00:00:00") > st[split == "train"].max()
    assert st[split == "test"].min() >= _s("2002-08-01T00:00:00") > st[split == "valid"].max()
    lengths = np.diff(s["history_item_ids"].combine_chunks().offsets.to_numpy())
    np.testing.assert_array_equal(lengths, np.minimum(pos[in_period & (pos >= 5)], 50))
    assert s["history_item_ids"].num_chunks == 1 and s["history_labels"].num_chunks == 1
