"""Bad input gives a DataError that names the file, the line, the field and the fix; fetch handles
offline machines and corrupt archives and never leaves half-written folders."""

from __future__ import annotations

import hashlib
import importlib
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from ragrec.config import DataConfig, GenericColumns
from ragrec.data import DataError, fetch, load_dataset, rallrec_samples, verify
from ragrec.data.movielens import load_ml100k
from ragrec.data.schemas import INTERACTIONS, ITEMS, validate, with_label_source

fetch_mod = importlib.import_module("ragrec.data.fetch")  # the package attribute `fetch` is the function

_FLAGS = "|".join(["0"] * 19)
_U_DATA = "1\t1\t5\t881250949\n2\t2\t3\t881250950\n1\t2\t4\t881250951\n"


def _write_ml100k(root: Path, u_data: str = _U_DATA, skip: str | None = None) -> Path:
    """A two-user, two-item folder in the official ML-100K format."""
    d = root / "ml-100k"
    d.mkdir(parents=True)
    files = {
        "u.genre": "".join(f"g{k}|{k}\n" for k in range(19)) + "\n",
        "u.item": f"1|Toy Story (1995)|01-Jan-1995||url|{_FLAGS}\n2|Heat (1995)|01-Jan-1995||url|{_FLAGS}\n",
        "u.user": "1|24|M|technician|85711\n2|53|F|other|94043\n",
        "u.data": u_data,
    }
    for name, text in files.items():
        if name != skip:
            (d / name).write_text(text, encoding="latin-1")
    return d


def test_tiny_ml100k_folder_loads(tmp_path):
    ds = load_ml100k(_write_ml100k(tmp_path))
    assert ds.interactions["rating"].to_pylist() == [5.0, 3.0, 4.0]


def test_missing_file_names_it_and_suggests_fetch(tmp_path):
    d = _write_ml100k(tmp_path, skip="u.data")
    with pytest.raises(DataError) as e:
        load_ml100k(d)
    msg = str(e.value)
    assert f"{d}: ml-100k missing u.data." in msg
    assert "ragrec data fetch ml-100k" in msg and "RAGREC_DATA_DIR" in msg
    with pytest.raises(
        DataError, match=r"nowhere: ml-100k folder does not exist. Fix: run `ragrec data fetch ml-100k`"
    ):
        load_ml100k(tmp_path / "nowhere")


def test_unset_data_dir_suggests_fetch(monkeypatch):
    monkeypatch.delenv("RAGREC_DATA_DIR", raising=False)
    with pytest.raises(DataError, match=r"RAGREC_DATA_DIR.*ragrec data fetch ml-1m"):
        load_dataset(DataConfig(name="ml-1m"))


def test_comma_separated_u_data_says_tab_expected(tmp_path):
    d = _write_ml100k(tmp_path, u_data=_U_DATA.replace("\t", ","))
    with pytest.raises(DataError) as e:
        load_ml100k(d)
    msg = str(e.value)
    assert "u.data line 1" in msg
    assert "expected 4 tab-separated fields" in msg and "found 1" in msg and "comma-separated" in msg


def test_short_line_later_in_file_names_its_line(tmp_path):
    d = _write_ml100k(tmp_path, u_data=_U_DATA + "\n2\t1\t4\n")  # empty line 4, short line 5
    with pytest.raises(DataError, match=r"u\.data line 5: expected 4 tab-separated fields .* found 3"):
        load_ml100k(d)


def test_non_numeric_rating_names_line_and_value(tmp_path):
    lines = _U_DATA.splitlines()
    u_data = "\n".join(lines[:2] + ["\n2\t1\tx\t881250952"] + lines[2:]) + "\n"  # blank line 3, bad line 4
    d = _write_ml100k(tmp_path, u_data=u_data)
    with pytest.raises(DataError) as e:
        load_ml100k(d)
    msg = str(e.value)
    assert "u.data line 4: rating 'x' is not a number" in msg
    assert e.value.line == 4 and e.value.field == "rating" and "Fix:" in msg


def test_rating_of_unknown_item_names_line(tmp_path):
    d = _write_ml100k(tmp_path, u_data=_U_DATA + "2\t9\t4\t881250960\n")
    with pytest.raises(DataError, match=r"u\.data line 4: item id 9 is not in u\.item"):
        load_ml100k(d)


def _generic(tmp_path: Path, **cols) -> DataConfig:
    pd.DataFrame({"user": [1, 2], "item": ["a", "b"], "rating": [4, 2], "timestamp": [10, 20]}).to_csv(
        tmp_path / "r.csv", index=False
    )
    pd.DataFrame({"item": ["a", "b"], "title": ["A (2001)", "B (2002)"], "genres": ["X", "Y"]}).to_csv(
        tmp_path / "i.csv", index=False
    )
    return DataConfig(
        name="generic",
        path=str(tmp_path),
        interactions_file="r.csv",
        items_file="i.csv",
        columns=GenericColumns(**cols),
    )


def test_generic_unknown_column_lists_available_ones(tmp_path):
    cfg = _generic(tmp_path, user_id="user", item_id="item", rating="stars")
    with pytest.raises(DataError) as e:
        load_dataset(cfg)
    msg = str(e.value)
    assert "r.csv" in msg and "column 'stars' (data.columns.rating) not found" in msg
    assert "available columns: user, item, rating, timestamp" in msg and "set data.columns.rating" in msg


def test_generic_non_numeric_rating_names_csv_line(tmp_path):
    cfg = _generic(tmp_path, user_id="user", item_id="item")
    (tmp_path / "r.csv").write_text("user,item,rating,timestamp\n1,a,4,10\n2,b,good,20\n")
    with pytest.raises(DataError, match=r"r\.csv line 3: rating 'good' is not a number"):
        load_dataset(cfg)


def test_generic_interaction_with_unknown_item(tmp_path):
    cfg = _generic(tmp_path, user_id="user", item_id="item")
    (tmp_path / "r.csv").write_text("user,item,rating,timestamp\n1,a,4,10\n2,zz,3,20\n")
    with pytest.raises(DataError, match=r"r\.csv line 3: item 'zz' is not in .*i\.csv"):
        load_dataset(cfg)


def test_empty_split_names_split_and_fix():
    user = np.repeat(np.arange(3), 4)
    t = pa.Table.from_arrays(
        [
            pa.array(user, pa.int64()),
            pa.array(np.tile(np.arange(4), 3), pa.int64()),
            pa.array(np.full(12, 4.0, np.float32)),
            pa.array(np.arange(12), pa.int64()),
            pa.array(np.ones(12, np.int8)),
        ],
        schema=INTERACTIONS,
    )
    t = with_label_source(t, given=False)
    # min_history=3 keeps one sample per user: 3 samples, 80/10/10 leaves valid empty
    with pytest.raises(DataError) as e:
        rallrec_samples(t, DataConfig(min_history=3))
    msg = str(e.value)
    assert "split 'valid' is empty" in msg and "3 of 12" in msg and "lower data.min_history" in msg
    # a split configured as 0 may be empty
    s = rallrec_samples(t, DataConfig(min_history=3, split=(0.67, 0.0, 0.33)))
    assert s["split"].to_pylist() == ["train", "train", "test"]


def test_validate_names_missing_and_mistyped_columns():
    items = pa.table({"item_id": pa.array([0], pa.int32()), "title": ["x"]})
    with pytest.raises(DataError) as e:
        validate(items, ITEMS, "items")
    msg = str(e.value)
    assert "column 'item_id' has type int32, expected int64" in msg
    assert "missing column 'genres'" in msg and "missing column 'year'" in msg


# ---- fetch -----------------------------------------------------------------------------------
def test_fetch_offline_fails_fast_with_instructions(tmp_path):
    t0 = time.perf_counter()
    with pytest.raises(DataError) as e:
        fetch("ml-100k", tmp_path, base_url="http://127.0.0.1:9/", timeout=3)
    assert time.perf_counter() - t0 < 10
    msg = str(e.value)
    assert "appears to be offline" in msg and "http://127.0.0.1:9/ml-100k.zip" in msg
    assert "https://files.grouplens.org/datasets/movielens/ml-100k.zip" in msg
    assert f"RAGREC_DATA_DIR={tmp_path}" in msg and "u.data" in msg
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def _zip_ml100k(tmp_path: Path) -> Path:
    src = _write_ml100k(tmp_path / "src")
    served = tmp_path / "served"
    served.mkdir()
    with zipfile.ZipFile(served / "ml-100k.zip", "w") as zf:
        for f in sorted(src.iterdir()):
            zf.write(f, f"ml-100k/{f.name}")
    return served


def test_fetch_rejects_archive_with_wrong_md5(tmp_path):
    served = _zip_ml100k(tmp_path)
    dest = tmp_path / "data"
    with pytest.raises(DataError, match=r"md5 of the downloaded archive is [0-9a-f]{32}, expected 0e33842e"):
        fetch("ml-100k", dest, base_url=served.as_uri())
    assert list(dest.iterdir()) == []


def test_fetch_extracts_verified_archive_atomically(tmp_path, monkeypatch):
    served = _zip_ml100k(tmp_path)
    zmd5 = hashlib.md5((served / "ml-100k.zip").read_bytes()).hexdigest()
    data_md5 = hashlib.md5(_U_DATA.encode()).hexdigest()
    monkeypatch.setitem(
        fetch_mod.ARCHIVES, "ml-100k", fetch_mod.Archive(zmd5, ("u.data", "u.item"), {"u.data": data_md5})
    )
    dest = tmp_path / "data"
    out = fetch("ml-100k", dest, base_url=served.as_uri())
    assert out == dest / "ml-100k" and [p.name for p in dest.iterdir()] == ["ml-100k"]
    assert (out / "u.data").read_text() == _U_DATA
    # a second call finds the verified folder and does not download (the URL is dead)
    assert fetch("ml-100k", dest, base_url="http://127.0.0.1:9/") == out
    # an extracted file with the wrong content is caught
    monkeypatch.setitem(fetch_mod.ARCHIVES, "ml-100k", fetch_mod.Archive(zmd5, ("u.data",), {"u.data": "0" * 32}))
    with pytest.raises(DataError, match=r"u\.data: md5 [0-9a-f]{32} does not match the official 0{32}"):
        fetch("ml-100k", tmp_path / "other", base_url=served.as_uri())
    assert list((tmp_path / "other").iterdir()) == []


def test_verify_real_and_tampered_folders(data_dir, tmp_path):
    assert verify("ml-100k", data_dir / "ml-100k") == data_dir / "ml-100k"
    d = _write_ml100k(tmp_path)
    with pytest.raises(
        DataError, match=r"u\.data: md5 .* does not match the official 6e47046882bad158b0efbb84cd5cb987"
    ):
        verify("ml-100k", d)
    (d / "u.user").unlink()
    with pytest.raises(DataError, match=r"u\.user: ml-100k file missing"):
        verify("ml-100k", d)
