"""Loaders: MovieLens-100K (real files), MovieLens-1M (tiny files in the official format), generic
CSV/Parquet round trips, the synthetic generator (determinism and signal), load_dataset dispatch."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from sklearn.metrics import roc_auc_score

from ragrec.config import DataConfig, GenericColumns, SyntheticConfig
from ragrec.data import Dataset, load_dataset, rallrec_samples
from ragrec.data.generic import load_generic
from ragrec.data.movielens import load_ml1m, load_ml100k
from ragrec.data.schemas import INTERACTIONS, ITEMS, USERS, label_is_given
from ragrec.data.synthetic import make_synthetic


# ---- MovieLens-100K (real data) ------------------------------------------------------------
@pytest.fixture(scope="module")
def ml100k(data_dir) -> Dataset:
    return load_ml100k(data_dir / "ml-100k")


def test_ml100k_sizes_and_schemas(ml100k):
    assert ml100k.interactions.num_rows == 100_000
    assert ml100k.items.num_rows == 1682
    assert ml100k.users.num_rows == 943
    for table, schema in ((ml100k.interactions, INTERACTIONS), (ml100k.items, ITEMS), (ml100k.users, USERS)):
        for f in schema:
            assert table.schema.field(f.name).type == f.type
    # dense ids 0..n-1, row k holds id k
    assert ml100k.items["item_id"].to_pylist() == list(range(1682))
    assert ml100k.users["user_id"].to_pylist() == list(range(943))
    assert pc.min(ml100k.interactions["user_id"]).as_py() == 0
    assert pc.max(ml100k.interactions["item_id"]).as_py() == 1681


def test_ml100k_known_row_and_toy_story(ml100k):
    users, items, inter = ml100k.users, ml100k.items, ml100k.interactions
    u = users["raw_user_id"].to_pylist().index(196)
    i = items["raw_item_id"].to_pylist().index(242)
    rows = inter.filter(pc.and_(pc.equal(inter["user_id"], u), pc.equal(inter["item_id"], i))).to_pylist()
    assert len(rows) == 1
    assert rows[0]["rating"] == 3.0 and rows[0]["timestamp"] == 881250949 and rows[0]["label"] == 0
    toy = items.filter(pc.equal(items["raw_item_id"], 1)).to_pylist()[0]
    assert toy["title"] == "Toy Story (1995)"
    assert toy["year"] == 1995
    assert toy["genres"] == ["Animation", "Children's", "Comedy"]
    assert users.to_pylist()[0] == {
        "user_id": 0,
        "raw_user_id": 1,
        "age": 24,
        "gender": "M",
        "occupation": "technician",
        "zip": "85711",
    }


def test_ml100k_matches_an_independent_pandas_read(ml100k, data_dir):
    ref = pd.read_csv(data_dir / "ml-100k" / "u.data", sep="\t", header=None, names=["u", "i", "r", "t"])
    raw_u = ml100k.users["raw_user_id"].to_numpy()[ml100k.interactions["user_id"].to_numpy()]
    raw_i = ml100k.items["raw_item_id"].to_numpy()[ml100k.interactions["item_id"].to_numpy()]
    np.testing.assert_array_equal(raw_u, ref["u"].to_numpy())
    np.testing.assert_array_equal(raw_i, ref["i"].to_numpy())
    np.testing.assert_array_equal(ml100k.interactions["rating"].to_numpy(), ref["r"].to_numpy(np.float32))
    np.testing.assert_array_equal(ml100k.interactions["timestamp"].to_numpy(), ref["t"].to_numpy())
    np.testing.assert_array_equal(ml100k.interactions["label"].to_numpy(), (ref["r"] > 3).to_numpy().astype(np.int8))


def test_load_dataset_uses_ragrec_data_dir(data_dir, monkeypatch):
    monkeypatch.setenv("RAGREC_DATA_DIR", str(data_dir))
    ds = load_dataset(DataConfig(name="ml-100k", label_threshold=4.0))
    assert ds.name == "ml-100k"
    rating = ds.interactions["rating"].to_numpy()
    np.testing.assert_array_equal(ds.interactions["label"].to_numpy(), (rating > 4).astype(np.int8))


# ---- MovieLens-1M (format) ---------------------------------------------------------------
def _write_ml1m(root):
    d = root / "ml-1m"
    d.mkdir()
    (d / "movies.dat").write_bytes(
        "10::Misérables, Les (1995)::Drama|Musical\n"
        "2::Star Wars: Episode IV - A New Hope (1977)::Action|Adventure|Fantasy|Sci-Fi\n"
        "7::Toy Story (1995)::Animation|Children's|Comedy\n".encode("latin-1")
    )
    (d / "users.dat").write_text("5::F::1::10::48067\n3::M::56::16::70072\n")
    (d / "ratings.dat").write_text("3::7::5::978300760\n3::10::3::978302109\n5::2::4::978301968\n5::7::2::978300275\n")
    return d


def test_ml1m_format(tmp_path):
    ds = load_ml1m(_write_ml1m(tmp_path))
    items = ds.items.to_pylist()
    assert [r["raw_item_id"] for r in items] == [2, 7, 10]  # dense ids follow raw id order
    assert items[0]["title"] == "Star Wars: Episode IV - A New Hope (1977)" and items[0]["year"] == 1977
    assert items[0]["genres"] == ["Action", "Adventure", "Fantasy", "Sci-Fi"]
    assert items[2]["title"] == "Misérables, Les (1995)"
    users = ds.users.to_pylist()
    assert users[0] == {
        "user_id": 0,
        "raw_user_id": 3,
        "age": 56,
        "age_group": "56+",
        "gender": "M",
        "occupation": "self-employed",
        "zip": "70072",
    }
    assert users[1]["age_group"] == "Under 18" and users[1]["occupation"] == "K-12 student"
    inter = ds.interactions.to_pydict()
    assert inter["user_id"] == [0, 0, 1, 1]
    assert inter["item_id"] == [1, 2, 0, 1]
    assert inter["rating"] == [5.0, 3.0, 4.0, 2.0]
    assert inter["label"] == [1, 0, 1, 0]


# ---- generic ---------------------------------------------------------------------------------
def _generic_frames():
    inter = pd.DataFrame(
        {
            "uid": ["bob", "alice", "bob", "carol", "alice", "bob"],
            "movie": [30, 10, 10, 20, 30, 20],
            "stars": [5.0, 2.0, 4.0, 3.5, 1.0, 3.0],
            "when": [100, 50, 120, 80, 60, 200],
        }
    )
    items = pd.DataFrame(
        {
            "movie": [20, 10, 30],
            "name": ["Heat (1995)", "Alien (1979)", "Memento"],
            "tags": ["Crime|Thriller", "Horror|Sci-Fi", ""],
            "director": ["Mann", "Scott", "Nolan"],
        }
    )
    return inter, items


_COLUMNS = GenericColumns(user_id="uid", item_id="movie", rating="stars", timestamp="when", title="name", genres="tags")


def _check_generic(ds: Dataset) -> None:
    items = ds.items.to_pylist()
    assert [r["raw_item_id"] for r in items] == [10, 20, 30]
    assert items[0] == {
        "item_id": 0,
        "title": "Alien (1979)",
        "genres": ["Horror", "Sci-Fi"],
        "year": 1979,
        "raw_item_id": 10,
        "director": "Scott",
    }
    assert items[2]["genres"] == [] and items[2]["year"] is None
    inter = ds.interactions.to_pydict()
    # users: alice=0, bob=1, carol=2 (sorted raw ids)
    assert inter["user_id"] == [1, 0, 1, 2, 0, 1]
    assert inter["item_id"] == [2, 0, 0, 1, 2, 1]
    assert inter["label"] == [1, 0, 1, 1, 0, 0]  # stars > 3.0
    assert inter["timestamp"] == [100, 50, 120, 80, 60, 200]
    assert not label_is_given(ds.interactions)


def test_generic_csv_and_parquet_round_trip(tmp_path):
    inter, items = _generic_frames()
    inter.to_csv(tmp_path / "ratings.csv", index=False)
    items.to_csv(tmp_path / "movies.csv", index=False)
    inter.to_parquet(tmp_path / "ratings.parquet")
    items.to_parquet(tmp_path / "movies.parquet")
    for ext in ("csv", "parquet"):
        cfg = DataConfig(
            name="generic",
            path=str(tmp_path),
            interactions_file=f"ratings.{ext}",
            items_file=f"movies.{ext}",
            columns=_COLUMNS,
        )
        ds = load_dataset(cfg)
        assert ds.users is None and ds.n_users == 3
        _check_generic(ds)


def test_generic_with_users_file_and_given_labels(tmp_path):
    inter, items = _generic_frames()
    inter = inter.drop(columns=["stars"]).assign(clicked=[True, False, True, False, False, True])
    users = pd.DataFrame({"uid": ["carol", "bob", "alice", "dave"], "city": ["Oslo", "Rome", "Lima", "Kyiv"]})
    inter.to_parquet(tmp_path / "i.parquet")
    items.to_parquet(tmp_path / "m.parquet")
    users.to_parquet(tmp_path / "u.parquet")
    cols = _COLUMNS.model_copy(update={"rating": None, "label": "clicked"})
    ds = load_generic(
        DataConfig(
            name="generic",
            path=str(tmp_path),
            interactions_file="i.parquet",
            items_file="m.parquet",
            users_file="u.parquet",
            columns=cols,
        )
    )
    assert ds.users.to_pydict() == {
        "user_id": [0, 1, 2, 3],
        "raw_user_id": ["alice", "bob", "carol", "dave"],
        "city": ["Lima", "Rome", "Oslo", "Kyiv"],
    }
    assert ds.interactions["label"].to_pylist() == [1, 0, 1, 0, 0, 1]
    assert ds.interactions["rating"].null_count == 6
    assert label_is_given(ds.interactions)


# ---- synthetic -------------------------------------------------------------------------------
def _tables(ds: Dataset) -> list[pa.Table]:
    return [ds.interactions, ds.items, ds.users]


def test_synthetic_is_deterministic_per_seed():
    a = make_synthetic(SyntheticConfig(seed=3))
    b = make_synthetic(SyntheticConfig(seed=3))
    c = make_synthetic(SyntheticConfig(seed=4))
    assert all(x.equals(y) for x, y in zip(_tables(a), _tables(b)))
    assert not a.interactions.equals(c.interactions)
    assert a.items["title"].to_pylist() != c.items["title"].to_pylist()


def test_synthetic_shapes_and_plausibility():
    cfg = SyntheticConfig(n_users=120, n_items=150, n_genres=8, ratings_per_user=30, seed=1)
    ds = load_dataset(DataConfig(name="synthetic", synthetic=cfg))
    assert ds.items.num_rows == 150 and ds.users.num_rows == 120
    titles = ds.items["title"].to_pylist()
    assert len(set(titles)) == len(titles)
    assert all(t.endswith(f"({y})") for t, y in zip(titles, ds.items["year"].to_pylist()))
    assert all(
        1 <= len(g) and set(g) <= set(ds.items["genres"].combine_chunks().values.unique().to_pylist())
        for g in ds.items["genres"].to_pylist()
    )
    inter = ds.interactions.to_pandas()
    assert set(inter["rating"].unique()) == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert not inter.duplicated(["user_id", "item_id"]).any()
    assert inter.groupby("user_id").size().min() >= 15  # at least ratings_per_user // 2
    # timestamps strictly increase within each user
    assert (inter.sort_values(["user_id", "timestamp"]).groupby("user_id")["timestamp"].diff().dropna() > 0).all()
    assert set(ds.users["gender"].to_pylist()) == {"M", "F"}
    assert all(len(z) == 5 and z.isdigit() for z in ds.users["zip"].to_pylist())


def _genre_matrix(ds: Dataset) -> np.ndarray:
    g = ds.items["genres"].combine_chunks()
    names = sorted(set(g.values.to_pylist()))
    col = np.searchsorted(names, np.array(g.values.to_pylist()))
    m = np.zeros((ds.items.num_rows, len(names)))
    m[pc.list_parent_indices(g).to_numpy(), col] = 1.0
    return m / m.sum(axis=1, keepdims=True)


def _taste_score(
    samples: pa.Table, genre: np.ndarray, rows: np.ndarray, last: int | None, first: int | None
) -> np.ndarray:
    """Liking of the target's genres by a user profile built from (part of) each sample's history."""
    hist = samples["history_item_ids"].combine_chunks()
    rat = samples["history_ratings"].combine_chunks().values.to_numpy()
    off = hist.offsets.to_numpy()
    lo, hi = off[rows], off[rows + 1]
    if last is not None:
        lo = np.maximum(lo, hi - last)
    if first is not None:
        hi = np.minimum(hi, lo + first)
    lengths = hi - lo
    idx = np.repeat(lo - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths) + np.arange(lengths.sum())
    contrib = genre[hist.values.to_numpy()[idx]] * (rat[idx] - 3.0)[:, None]
    profile = np.add.reduceat(contrib, np.concatenate([[0], np.cumsum(lengths)[:-1]]), axis=0)
    target = samples["item_id"].to_numpy()[rows]
    return (genre[target] * profile).sum(axis=1) / lengths


def test_synthetic_carries_popularity_collaborative_and_temporal_signal():
    ds = make_synthetic(SyntheticConfig(seed=0))
    s = rallrec_samples(ds.interactions, DataConfig(name="synthetic", min_history=10))
    split = s["split"].to_numpy(zero_copy_only=False)
    y, item, user = s["label"].to_numpy(), s["item_id"].to_numpy(), s["user_id"].to_numpy()
    train, test = np.flatnonzero(split == "train"), np.flatnonzero(split == "test")
    assert len(test) > 500 and 0.3 < y.mean() < 0.7

    # popularity: the item's smoothed positive rate on train predicts later labels
    pos = np.bincount(item[train], weights=y[train], minlength=ds.n_items)
    cnt = np.bincount(item[train], minlength=ds.n_items)
    assert roc_auc_score(y[test], ((pos + 1) / (cnt + 2))[item[test]]) > 0.6

    # collaborative: user-kNN on all ratings before the test period (cosine of mean-centred vectors)
    inter = ds.interactions.to_pandas()
    past = inter[inter["timestamp"] < s["timestamp"].to_numpy()[test].min()]
    r = np.zeros((ds.n_users, ds.n_items))
    seen = np.zeros_like(r, dtype=bool)
    r[past["user_id"], past["item_id"]] = past["rating"]
    seen[past["user_id"], past["item_id"]] = True
    mean = np.where(seen.any(1), r.sum(1) / np.maximum(seen.sum(1), 1), 0.0)
    rc = np.where(seen, r - mean[:, None], 0.0)
    unit = rc / np.maximum(np.linalg.norm(rc, axis=1, keepdims=True), 1e-9)
    sim = unit @ unit.T
    np.fill_diagonal(sim, 0.0)
    knn = (sim @ rc)[user[test], item[test]] / np.maximum(np.abs(sim) @ seen, 1e-9)[user[test], item[test]]
    assert roc_auc_score(y[test], knn) > 0.6

    # temporal: tastes drift, so a profile from the 10 most recent ratings beats the 10 oldest
    genre = _genre_matrix(ds)
    recent = roc_auc_score(y[test], _taste_score(s, genre, test, last=10, first=None))
    oldest = roc_auc_score(y[test], _taste_score(s, genre, test, last=None, first=10))
    assert recent > 0.6 and recent > oldest + 0.05
