"""The papers' datasets (ragrec.data.sources): each loader on small files written here in the exact official format,
traps included (Latin-1 bytes, ';' and escaped quotes, commas in titles, Python-literal lines, duplicated ids,
missing metadata, gzip); every data.name through every protocol; `ragrec data fetch` (offline error, extraction)
and `ragrec data stats`. No raw data of any dataset is in the repository, and nothing is downloaded."""

from __future__ import annotations

import gzip
import hashlib
import importlib
import io
import json
import logging
import tarfile
import urllib.error
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest

from ragrec.cli import main
from ragrec.config import DataConfig
from ragrec.data import DataError, build_samples, load_dataset
from ragrec.data.sources import SOURCES, label_rule, source_module
from ragrec.data.stats import dataset_stats
from ragrec.stages.data import input_files

fetch_mod = importlib.import_module("ragrec.data.fetch")  # the package attribute `fetch` is the function
DAY = 86400
T0 = 1104537600  # 2005-01-01 00:00:00 UTC


def _epoch(date: str) -> int:
    return int(datetime.strptime(date, "%Y-%m-%d").replace(tzinfo=timezone.utc).timestamp())


def _rows(table, *cols):
    return list(zip(*(table.column(c).to_pylist() for c in cols)))


def _load_fails(match: str, **cfg) -> None:
    """``load_dataset(DataConfig(**cfg))`` raises a DataError whose message matches ``match``."""
    with pytest.raises(DataError, match=match):
        load_dataset(DataConfig(**cfg))


# ---- a toy rating set written in every format (for the protocol matrix) ------------------------------------------
def _gz_lines(path: Path, records: list, fmt=json.dumps) -> None:
    """``path`` gzip-compressed (UTF-8): one ``fmt(record)`` per line (JSON lines by default)."""
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for r in records:
            f.write(fmt(r) + "\n")


def _toy() -> list[tuple[int, int, int, int]]:
    """(user 0..7, item 0..11, stars 1..5, day 0..29): 8 distinct items per user, days spread over 30 days."""
    return [(u, (u + k) % 12, 1 + (u + 2 * k) % 5, (u + 4 * k) % 30) for u in range(8) for k in range(8)]


def _day(d: int) -> str:
    return datetime.fromtimestamp(T0 + d * DAY, timezone.utc).strftime("%Y-%m-%d")


def _toy_ml10m(root: Path) -> Path:
    d = root / "ml-10m" / "ml-10M100K"  # as the zip unpacks; data.path may name its parent
    d.mkdir(parents=True)
    (d / "movies.dat").write_text("".join(f"{i + 1}::Movie {i} ({1990 + i})::Drama|Comedy\n" for i in range(12)))
    (d / "ratings.dat").write_text(
        "".join(f"{u + 1}::{i + 1}::{s - 0.5 if u % 2 else s}::{T0 + t * DAY + u}\n" for u, i, s, t in _toy())
    )
    return root / "ml-10m"


def _toy_bookcrossing(root: Path) -> Path:
    d = root / "bookcrossing"
    d.mkdir(parents=True)
    isbn = [f"03451{k:04d}X" for k in range(12)]
    (d / "BX-Book-Ratings.csv").write_bytes(
        (
            '"User-ID";"ISBN";"Book-Rating"\n' + "".join(f'"{u + 1}";"{isbn[i]}";"{2 * s}"\n' for u, i, s, _ in _toy())
        ).encode("latin-1")
    )
    head = (
        '"ISBN";"Book-Title";"Book-Author";"Year-Of-Publication";"Publisher";"Image-URL-S";"Image-URL-M";"Image-URL-L"'
    )
    (d / "BX-Books.csv").write_bytes(
        (
            head + "\n" + "".join(f'"{b}";"Book {k}";"Author";"2001";"Pub";"s";"m";"l"\n' for k, b in enumerate(isbn))
        ).encode("latin-1")
    )
    return d


def _toy_amazon(root: Path) -> Path:
    d = root / "amazon-2018"
    d.mkdir(parents=True)
    _gz_lines(
        d / "Video_Games_5.json.gz",
        [
            {"overall": float(s), "reviewerID": f"A{u}", "asin": f"B{i:03d}", "unixReviewTime": T0 + t * DAY}
            for u, i, s, t in _toy()
        ],
    )
    _gz_lines(
        d / "meta_Video_Games.json.gz",
        [{"asin": f"B{i:03d}", "title": f"Game {i}", "category": ["Video Games", "PC"]} for i in range(12)],
    )
    return d


def _toy_steam(root: Path) -> Path:
    d = root / "steam"
    d.mkdir(parents=True)
    _gz_lines(
        d / "steam_reviews.json.gz",
        [{"username": f"user{u}", "hours": 1.5, "product_id": str(700 + i), "date": _day(t)} for u, i, _s, t in _toy()],
        repr,
    )
    _gz_lines(
        d / "steam_games.json.gz",
        [{"id": str(700 + i), "title": f"Game {i}", "genres": ["Indie"]} for i in range(12)],
        repr,
    )
    return d


def _toy_netflix(root: Path) -> Path:
    d = root / "netflix"
    d.mkdir(parents=True)
    rows = sorted(_toy(), key=lambda r: r[1])
    parts = {0: [], 1: []}
    for i in range(12):
        part = parts[i % 2]
        part.append(f"{i + 1}:\n")
        part += [f"{1000 + u},{s},{_day(t)}\n" for u, it, s, t in rows if it == i]
    (d / "combined_data_1.txt").write_text("".join(parts[0]))
    (d / "combined_data_2.txt").write_text("".join(parts[1]))
    (d / "movie_titles.csv").write_bytes("".join(f"{i + 1},2000,Movie {i}\n" for i in range(12)).encode("latin-1"))
    return d


def _toy_recbole(root: Path) -> Path:
    d = root / "toy"
    d.mkdir(parents=True)
    (d / "toy.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        + "".join(f"{u + 1}\t{i + 1}\t{s}\t{T0 + t * DAY}\n" for u, i, s, t in _toy())
    )
    (d / "toy.item").write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tgenre:token_seq\n"
        + "".join(f"{i + 1}\tMovie {i}\t{1990 + i}\tDrama Comedy\n" for i in range(12))
    )
    return d


TOYS = {
    "ml-10m": (_toy_ml10m, {}),
    "bookcrossing": (_toy_bookcrossing, {"temporal": {"unit": "day", "windows": (20, 4, 4)}}),
    "amazon-2018": (_toy_amazon, {"category": "Video_Games"}),
    "steam": (_toy_steam, {}),
    "netflix": (_toy_netflix, {}),
    "recbole": (_toy_recbole, {}),
}


def _toy_cfg(name: str, root: Path, protocol: str) -> DataConfig:
    write, extra = TOYS[name]
    kw = {"temporal": {"unit": "day", "windows": (20, 5, 5)}, **extra}
    return DataConfig(
        name=name,
        path=str(write(root)),
        protocol=protocol,
        min_history=1,
        rerank={"num_candidates": 3, "history_len": 3},
        split=(0.6, 0.2, 0.2),  # every split gets positives per user (rerank, full_ranking) on 8 ratings a user
        **kw,
    )


def test_every_source_has_a_module_found_by_its_name():
    assert set(SOURCES) == {"ml-10m", "bookcrossing", "amazon-2018", "steam", "netflix", "recbole"}
    for name in SOURCES:
        mod = source_module(name)
        assert mod.__name__.endswith(name.replace("-", "_"))
        assert callable(mod.load) and callable(mod.label_rule)
        assert mod.__doc__ and "label" in mod.__doc__.lower()


@pytest.mark.parametrize("protocol", ["rallrec", "temporal", "rerank", "full_ranking"])
@pytest.mark.parametrize("name", sorted(TOYS))
def test_every_dataset_goes_through_every_protocol_into_samples(tmp_path, name, protocol):
    cfg = _toy_cfg(name, tmp_path, protocol)
    files = [p for _, p in input_files(cfg)]  # what the dataset stage hashes into its cache key
    assert files and all(f.is_file() for f in files)
    ds = load_dataset(cfg)
    assert ds.name == name and ds.interactions.num_rows == 64 and ds.n_items == 12 and ds.n_users == 8
    samples = build_samples(ds.interactions, cfg)
    assert samples.num_rows > 0
    splits = set(samples.column("split").to_pylist())
    assert {"train", "test"} <= splits
    if protocol in ("rallrec", "temporal"):
        labels = samples.column("label").to_numpy()
        # labels follow the dataset's rule: Steam is implicit (all positive), the others mix
        assert labels.all() if name == "steam" else 0 < labels.mean() < 1
    if protocol == "rerank":
        assert all(len(c) == 3 for c in samples.column("candidates").to_pylist())


# ---- ml-10m ------------------------------------------------------------------------------------------------------
def test_ml10m_half_stars_utf8_titles_no_genres_and_users_from_ratings(tmp_path):
    d = tmp_path / "ml-10M100K"
    d.mkdir()
    (d / "movies.dat").write_bytes(
        "1::Toy Story (1995)::Adventure|Animation\n"
        "8606::Pull My Daisy (1958)::(no genres listed)\n"
        "4973::Amélie (Fabuleux destin d'Amélie Poulain, Le) (2001)::Comedy|Romance\n".encode()
    )
    (d / "ratings.dat").write_text("5::1::3.5::838985046\n71567::4973::5::1112486027\n5::8606::0.5::838983653\n")
    ds = load_dataset(DataConfig(name="ml-10m", path=str(tmp_path)))  # the parent of ml-10M100K/ works too
    items = ds.items
    assert items.column("raw_item_id").to_pylist() == [1, 4973, 8606]
    assert items.column("title").to_pylist()[1].startswith("Amélie (Fabuleux")
    assert items.column("genres").to_pylist() == [["Adventure", "Animation"], ["Comedy", "Romance"], []]
    assert items.column("year").to_pylist() == [1995, 2001, 1958]
    assert ds.users.column("raw_user_id").to_pylist() == [5, 71567]
    assert _rows(ds.interactions, "user_id", "item_id", "rating", "label") == [
        (0, 0, 3.5, 1),
        (1, 1, 5.0, 1),
        (0, 2, 0.5, 0),
    ]
    assert "half stars" in label_rule(DataConfig(name="ml-10m"))


def test_ml10m_latin1_titles_and_duplicate_movie_ids(tmp_path):
    (tmp_path / "movies.dat").write_bytes("1::Am\xe9lie (2001)::Comedy\n".encode("latin-1"))
    (tmp_path / "ratings.dat").write_text("1::1::4::1\n")
    ds = load_dataset(DataConfig(name="ml-10m", path=str(tmp_path)))
    assert ds.items.column("title").to_pylist() == ["Amélie (2001)"]
    (tmp_path / "movies.dat").write_text("1::A (2001)::Comedy\n2::B (2002)::Drama\n1::C (2003)::Drama\n")
    _load_fails(r"movies\.dat line 3: .*MovieID 1 appears twice", name="ml-10m", path=str(tmp_path))
    (tmp_path / "movies.dat").write_text("1::A (2001)::Comedy\n")
    (tmp_path / "ratings.dat").write_text("1::1::4::1\n1::7::4::2\n")
    _load_fails(r"ratings\.dat line 2: .*item id 7 is not in movies\.dat", name="ml-10m", path=str(tmp_path))


def test_ml10m_missing_folder_suggests_fetch(tmp_path, monkeypatch):
    monkeypatch.setenv("RAGREC_DATA_DIR", str(tmp_path))
    _load_fails(r"ml-10m folder does not exist.*ragrec data fetch ml-10m", name="ml-10m")


# ---- bookcrossing ------------------------------------------------------------------------------------------------
_BX_RATINGS = (
    '"User-ID";"ISBN";"Book-Rating"\r\n'
    '"276725";"034545104X";"0"\r\n'  # implicit
    '"276726";"0155061224";"5"\r\n'
    '"276727";"0446520802";"0"\r\n'  # implicit, and its book has no title
    '"276729";"052165615X";"3"\r\n'
    '"276729";"0521795028";"6"\r\n'
    '"276729";"0521795028";"9"\r\n'  # the same pair again: the first rating wins
    '"276733";"2080674722";"10"\r\n'
    '"276733";"9999999999";"8"\r\n'  # ISBN missing from BX-Books
    '"276744";"034545104x";"7"\r\n'  # lower-case x: the same book as 034545104X
    '"276745";"0789466953";"9"\r\n'  # the book with the broken \"; line
)
_BX_BOOKS = (
    '"ISBN";"Book-Title";"Book-Author";"Year-Of-Publication";"Publisher";"Image-URL-S";"Image-URL-M";"Image-URL-L"\r\n'
    '"034545104X";"Flesh Tones: A Novel";"M. J. Rose";"2002";"Ballantine Books";"s1";"m1";"l1"\r\n'
    '"0155061224";"Rites of Passage";"Judith Rae";"2001";"Heinle";"s2";"m2";"l2"\r\n'
    '"0446520802";"";"Nicholas Sparks";"1996";"Warner Books";"s3";"m3";"l3"\r\n'
    '"052165615X";"Help!: Level 1";"Philip Prowse";"1999";"Cambridge University Press";"s4";"m4";"l4"\r\n'
    '"0521795028";"The Amsterdam Connection : Level 4 (Cambridge English Readers)";"Sue Leather";"2001";'
    '"Cambridge University Press";"s5";"m5";"l5"\r\n'
    '"2080674722";"Les Particules \xe9l\xe9mentaires";"Michel Houellebecq";"1998";"Flammarion";"s6";"m6";"l6"\r\n'
    '"0789466953";"DK Readers: Creating the X-Men, How Comic Books Come to Life (Level 4: Proficient Readers)\\";'
    'James Buckley";"2000";"DK Publishing Inc";"s7";"m7";"l7"\r\n'
    '"034545104X";"Flesh Tones (again)";"M. J. Rose";"2002";"Ballantine Books";"s8";"m8";"l8"\r\n'  # duplicate ISBN
    '"1234567890";"The \\"Secret\\" Garden; &amp; More";"A";"0";"P";"s9";"m9";"l9"\r\n'
)
_BX_USERS = (
    '"User-ID";"Location";"Age"\r\n'
    '"276725";"tyler, texas, usa";NULL\r\n'
    '"276726";"seattle, washington, usa";"18"\r\n'
    '"276729";"rijeka, n/a, croatia";"16"\r\n'
    '"276744";"torrance, california, usa";NULL\r\n'
    '"276745";"m\xfcnchen, bayern, germany";"34"\r\n'
)


def _write_bx(d: Path, ratings: str = _BX_RATINGS, books: str = _BX_BOOKS, users: str | None = _BX_USERS) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "BX-Book-Ratings.csv").write_bytes(ratings.encode("latin-1"))
    (d / "BX-Books.csv").write_bytes(books.encode("latin-1"))
    if users is not None:
        (d / "BX-Users.csv").write_bytes(users.encode("latin-1"))
    return d


def test_bookcrossing_drops_implicit_zeros_and_ratings_without_metadata(tmp_path):
    d = _write_bx(tmp_path / "bx")
    ds = load_dataset(DataConfig(name="bookcrossing", path=str(d)))
    items, users, inter = ds.items, ds.users, ds.interactions
    assert items.column("raw_item_id").to_pylist() == [
        "0155061224",
        "034545104X",
        "052165615X",
        "0521795028",
        "0789466953",
        "2080674722",
    ]
    titles = dict(zip(items.column("raw_item_id").to_pylist(), items.column("title").to_pylist()))
    assert titles["034545104X"] == "Flesh Tones: A Novel"  # the first of the duplicated ISBN
    assert titles["2080674722"] == "Les Particules élémentaires"  # Latin-1
    assert (
        titles["0789466953"]
        == "DK Readers: Creating the X-Men, How Comic Books Come to Life (Level 4: Proficient Readers)"
    )
    authors = dict(zip(items.column("raw_item_id").to_pylist(), items.column("author").to_pylist()))
    assert authors["0789466953"] == "James Buckley"  # repaired: the title no longer swallows the author
    assert items.column("year").to_pylist() == [2001, 2002, 1999, 2001, 2000, 1998]
    assert items.column("genres").to_pylist() == [[]] * 6
    assert users.column("raw_user_id").to_pylist() == [276726, 276729, 276733, 276744, 276745]
    assert users.column("age").to_pylist() == [18, 16, None, None, 34]
    assert users.column("location").to_pylist()[4] == "münchen, bayern, germany"
    raw_u = users.column("raw_user_id").to_pylist()
    raw_i = items.column("raw_item_id").to_pylist()
    got = sorted((raw_u[u], raw_i[i], r, lab) for u, i, r, lab in _rows(inter, "user_id", "item_id", "rating", "label"))
    assert got == [
        (276726, "0155061224", 5.0, 1),
        (276729, "052165615X", 3.0, 0),
        (276729, "0521795028", 6.0, 1),  # the repeated pair kept its first rating
        (276733, "2080674722", 10.0, 1),
        (276744, "034545104X", 7.0, 1),  # lower-case x matched
        (276745, "0789466953", 9.0, 1),
    ]
    # pseudo-timestamps: distinct, inside the crawl's four weeks, the same on every load
    ts = inter.column("timestamp").to_numpy()
    assert len(set(ts)) == len(ts) and ts.min() >= 1090627200 and ts.max() < 1090627200 + 28 * DAY
    again = load_dataset(DataConfig(name="bookcrossing", path=str(d))).interactions.column("timestamp").to_numpy()
    assert np.array_equal(ts, again)


def test_bookcrossing_implicit_zero_negative_keeps_them_as_negatives(tmp_path):
    d = _write_bx(tmp_path / "bx", users=None)  # BX-Users.csv is optional
    drop = load_dataset(DataConfig(name="bookcrossing", path=str(d)))
    ds = load_dataset(DataConfig(name="bookcrossing", path=str(d), implicit_zero="negative"))
    assert ds.interactions.num_rows == 7  # + 276725's implicit 0 (276727's book has no title)
    zero = ds.interactions.filter(pc.equal(ds.interactions.column("rating"), 0.0))
    assert zero.num_rows == 1 and zero.column("label").to_pylist() == [0]
    assert ds.users.column("age").null_count == ds.n_users

    # a kept rating has the same pseudo-timestamp either way
    def stamps(d):
        u = d.users.column("raw_user_id").to_pylist()
        i = d.items.column("raw_item_id").to_pylist()
        return {(u[a], i[b]): t for a, b, t in _rows(d.interactions, "user_id", "item_id", "timestamp")}

    kept = stamps(drop)
    assert kept == {k: v for k, v in stamps(ds).items() if k in kept} and len(stamps(ds)) == len(kept) + 1
    assert DataConfig(name="bookcrossing").label_threshold == 4.0


def test_bookcrossing_errors_name_file_and_line(tmp_path):
    d = _write_bx(tmp_path / "bx", ratings=_BX_RATINGS + '"276746";"0155061224";"11"\r\n')
    _load_fails(r"BX-Book-Ratings\.csv line 12: .*Book-Rating 11 is outside 0\.\.10", name="bookcrossing", path=str(d))
    d = _write_bx(tmp_path / "bx2", ratings=_BX_RATINGS.replace(";", ",", 3))
    _load_fails(r"BX-Book-Ratings\.csv line 1: expected the header .*comma-separated", name="bookcrossing", path=str(d))
    d = _write_bx(tmp_path / "bx3", ratings=_BX_RATINGS + '"276746";"0155061224"\r\n')
    _load_fails(
        r"BX-Book-Ratings\.csv line 12: expected 3 ';'-separated fields, found 2", name="bookcrossing", path=str(d)
    )
    d = _write_bx(tmp_path / "bx4", ratings='"User-ID";"ISBN";"Book-Rating"\r\n')
    _load_fails(r"BX-Book-Ratings\.csv: the file has a header but no ratings", name="bookcrossing", path=str(d))
    _load_fails(
        r"bookcrossing folder does not exist.*ragrec data fetch bookcrossing",
        name="bookcrossing",
        path=str(tmp_path / "nowhere"),
    )


# ---- amazon-2018 -------------------------------------------------------------------------------------------------


_REVIEWS = [
    {"overall": 5.0, "verified": True, "reviewTime": "09 13, 2009", "reviewerID": "A1", "asin": "0700026657",
     "style": {"Format:": " Hardcover"}, "reviewerName": "X", "reviewText": "Great", "unixReviewTime": 1252800000},
    {"overall": 2.0, "reviewerID": "A2", "asin": "0700026657", "unixReviewTime": 1252886400, "vote": "3"},
    {"overall": 4.0, "reviewerID": "A1", "asin": "0700099867", "unixReviewTime": 1253000000, "image": ["u"]},
    {"overall": 4.0, "reviewerID": "A1", "asin": "0700099867", "unixReviewTime": 1253000000, "image": ["u"]},
    {"overall": 3.0, "reviewerID": "A2", "asin": "B00NOMETA1", "unixReviewTime": 1253100000},  # no metadata
    {"overall": 1.0, "reviewerID": "A3", "asin": "B00EMPTY01", "unixReviewTime": 1253200000},  # empty title
]  # fmt: skip
_META = [
    {"category": ["Video Games", "PC", "Games"], "title": "Anno 2070", "brand": "by\n Ubisoft", "asin": "0700026657",
     "main_cat": "Video Games", "date": "November 17, 2011", "also_buy": ["B1"], "price": "$9.99"},
    {"category": ["Video Games", "Xbox"], "title": "Dungeon &amp; <b>Dragons</b>  Online", "asin": "0700099867",
     "main_cat": "Video Games"},
    {"category": ["Video Games"], "title": "Anno 2070 (listed twice)", "asin": "0700026657"},
    {"category": [], "title": "", "asin": "B00EMPTY01"},
    {"category": ["Video Games"], "title": "Never reviewed", "asin": "B00UNUSED1"},
]  # fmt: skip


def test_amazon_reads_gzip_reviews_and_metadata_with_its_traps(tmp_path):
    _gz_lines(tmp_path / "Video_Games_5.json.gz", _REVIEWS)
    _gz_lines(tmp_path / "meta_Video_Games.json.gz", _META)
    ds = load_dataset(DataConfig(name="amazon-2018", category="Video_Games", path=str(tmp_path)))
    items = ds.items
    assert items.column("raw_item_id").to_pylist() == ["0700026657", "0700099867"]
    assert items.column("title").to_pylist() == ["Anno 2070", "Dungeon & Dragons Online"]
    assert items.column("genres").to_pylist() == [["Video Games", "PC", "Games"], ["Video Games", "Xbox"]]
    assert items.column("brand").to_pylist() == ["by Ubisoft", None]
    assert items.column("year").to_pylist() == [2011, None]
    assert ds.users.column("raw_user_id").to_pylist() == ["A1", "A2"]
    assert _rows(ds.interactions, "user_id", "item_id", "rating", "timestamp", "label") == [
        (0, 0, 5.0, 1252800000, 1),
        (1, 0, 2.0, 1252886400, 0),
        (0, 1, 4.0, 1253000000, 1),  # the duplicated review once
    ]


def test_amazon_plain_json_and_python_literal_metadata(tmp_path):
    (tmp_path / "Books_5.json").write_text("\n".join(json.dumps(r) for r in _REVIEWS[:3]) + "\n")
    # the 2014 release wrote metadata as Python literals: read with ast.literal_eval, never eval
    (tmp_path / "meta_Books.json").write_text(
        "{'asin': '0700026657', 'title': \"Anno's 2070\", 'categories': [['Books', 'Fiction']], 'salesRank': None}\n"
        "{'asin': '0700099867', 'title': u'Dragons', 'related': {'also_bought': ['X']}, 'imUrl': 'http://x'}\n"
    )
    ds = load_dataset(DataConfig(name="amazon-2018", category="Books", path=str(tmp_path)))
    assert ds.items.column("title").to_pylist() == ["Anno's 2070", "Dragons"]
    assert ds.items.column("genres").to_pylist() == [["Books", "Fiction"], []]
    # a line that is neither: the file and line are named
    (tmp_path / "meta_Books.json").write_text("{'asin': '0700026657', 'title': 'A'}\n{'asin': __import__('os')}\n")
    _load_fails(
        r"meta_Books\.json line 2: not a JSON object or a Python literal",
        name="amazon-2018",
        category="Books",
        path=str(tmp_path),
    )


def test_amazon_missing_files_and_bad_reviews(tmp_path, monkeypatch):
    monkeypatch.setenv("RAGREC_DATA_DIR", str(tmp_path))
    (tmp_path / "amazon-2018").mkdir()
    _gz_lines(tmp_path / "amazon-2018" / "Books_5.json.gz", _REVIEWS[:2])
    _load_fails(
        r"meta_Books\.json\.gz or meta_Books\.json.*amazon-2018 --category Books", name="amazon-2018", category="Books"
    )
    _gz_lines(tmp_path / "amazon-2018" / "meta_Books.json.gz", _META)
    _gz_lines(tmp_path / "amazon-2018" / "Books_5.json.gz", [*_REVIEWS[:2], {"overall": 5.0, "asin": "0700026657"}])
    _load_fails(
        r"Books_5\.json\.gz line 3: the review has no 'reviewerID', 'unixReviewTime'",
        name="amazon-2018",
        category="Books",
    )
    with pytest.raises(ValueError, match=r"amazon-2018 needs data\.category"):
        DataConfig(name="amazon-2018")
    with pytest.raises(ValueError, match=r"did you mean 'Movies_and_TV'"):
        DataConfig(name="amazon-2018", category="Movies & TV")


# ---- steam -------------------------------------------------------------------------------------------------------
_STEAM_REVIEWS = [
    "{'username': 'Chaos Syren', 'hours': 0.1, 'products': 41, 'product_id': '725280', 'page_order': 0, "
    "'date': '2017-12-17', 'text': \"It's a hidden object game, don't expect much\", 'early_access': False, 'page': 1}",
    "{'username': 'freakfantom', 'hours': 0.1, 'products': 579, 'product_id': '328100', 'page_order': 0, "
    "'date': '2017-12-27', 'text': 'Better than Minecraft', 'early_access': False, 'page': 1, "
    "'found_funny': 1, 'compensation': 'Product received for free', 'user_id': '76561198024234127'}",
    "{'username': 'Chaos Syren', 'product_id': '328100', 'date': '2018-01-02', 'text': u'caf\\xe9 \\u2764', "
    "'early_access': True, 'page': 2, 'hours': None}",
    "{'username': 'Chaos Syren', 'product_id': '328100', 'date': '2018-01-02', 'text': 'twice', 'hours': 2.0}",
    "{'username': 'Ghost', 'hours': 3.0, 'product_id': '999999', 'date': '2016-05-01', 'text': 'no metadata'}",
]
_STEAM_GAMES = [
    "{'publisher': 'Kotoshiro', 'genres': ['Action', 'Casual', 'Indie'], 'app_name': 'Lost Summoner Kitty', "
    "'title': 'Lost Summoner Kitty', 'url': 'http://store.steampowered.com/app/761140/', 'release_date': '2018-01-04',"
    " 'tags': ['Strategy', 'Indie'], 'discount_price': 4.49, 'price': 4.99, 'early_access': False, 'id': '761140', "
    "'developer': 'Kotoshiro', 'sentiment': 'Mostly Positive', 'metascore': 80}",
    "{'genres': ['Casual', 'Simulation'], 'app_name': 'Gunspell - Steam Edition', 'release_date': '2015-03-12', "
    "'tags': ['Match 3'], 'price': 'Free To Play', 'id': '328100', 'developer': 'Ino-Co Plus'}",
    "{'publisher': 'Boomzap', 'title': 'Carmen Sandiego', 'release_date': 'Oct 2007', 'id': '725280', "
    "'early_access': False, 'specs': ['Single-player']}",
    "{'title': 'Duplicate id', 'id': '725280'}",
    "{'title': 'No id at all', 'app_name': 'x', 'genres': ['Indie']}",
]


def _write_steam(d: Path, reviews=_STEAM_REVIEWS, games=_STEAM_GAMES) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    _gz_lines(d / "steam_reviews.json.gz", reviews, str)
    _gz_lines(d / "steam_games.json.gz", games, str)
    return d


def test_steam_parses_python_literal_lines_safely(tmp_path):
    d = _write_steam(tmp_path / "steam")
    ds = load_dataset(DataConfig(name="steam", path=str(d)))
    items, users, inter = ds.items, ds.users, ds.interactions
    assert items.column("raw_item_id").to_pylist() == ["328100", "725280"]  # 999999 has no metadata
    assert items.column("title").to_pylist() == ["Gunspell - Steam Edition", "Carmen Sandiego"]  # app_name; first line
    assert items.column("genres").to_pylist() == [["Casual", "Simulation"], []]
    assert items.column("year").to_pylist() == [2015, 2007]
    assert items.column("developer").to_pylist() == ["Ino-Co Plus", None]
    assert users.column("raw_user_id").to_pylist() == ["Chaos Syren", "freakfantom"]
    assert _rows(inter, "user_id", "item_id", "timestamp", "label", "hours") == [
        (0, 1, _epoch("2017-12-17"), 1, pytest.approx(0.1)),
        (1, 0, _epoch("2017-12-27"), 1, pytest.approx(0.1)),
        (0, 0, _epoch("2018-01-02"), 1, None),  # the same user, game and date again: dropped
    ]
    assert inter.column("rating").null_count == 3
    assert "label = 1" in label_rule(DataConfig(name="steam"))


def test_steam_never_evaluates_code_and_names_the_bad_line(tmp_path):
    marker = tmp_path / "pwned"
    evil = f"{{'username': 'x', 'product_id': '1', 'date': __import__('pathlib').Path({str(marker)!r}).touch()}}"
    d = _write_steam(tmp_path / "steam", reviews=[*_STEAM_REVIEWS[:2], evil])
    _load_fails(r"steam_reviews\.json\.gz line 3: not a Python literal", name="steam", path=str(d))
    assert not marker.exists()
    d = _write_steam(tmp_path / "steam2", reviews=[_STEAM_REVIEWS[0], "{'username': 'x', 'date': '2017-01-01'}"])
    _load_fails(r"line 2: the review has no 'product_id'", name="steam", path=str(d))
    d = _write_steam(tmp_path / "steam3", reviews=[_STEAM_REVIEWS[0].replace("2017-12-17", "Dec 17, 2017")])
    _load_fails(r"steam_reviews\.json\.gz line 1: date 'Dec 17, 2017' is not a date", name="steam", path=str(d))


def test_steam_parallel_parse_matches_the_serial_one(tmp_path):
    from ragrec.data.sources.steam import load_steam

    many = [
        repr(
            {
                "username": f"u{k % 7}",
                "product_id": "725280" if k % 2 else "328100",
                "date": f"2017-01-{1 + k % 28:02d}",
            }
        )
        for k in range(60)
    ]
    d = _write_steam(tmp_path / "steam", reviews=many)
    serial, parallel = load_steam(d, workers=1), load_steam(d, workers=2)
    assert serial.interactions.equals(parallel.interactions) and serial.items.equals(parallel.items)


# ---- netflix -----------------------------------------------------------------------------------------------------
_TITLES = (
    "1,2003,Dinosaur Planet\r\n"
    "2,2004,Isle of Man TT 2004 Review\r\n"
    "3,NULL,Crouching Tiger, Hidden Dragon, Special Edition\r\n"
    "4,2001,Am\xe9lie\r\n"
)


def test_netflix_kaggle_layout_with_latin1_titles_and_commas(tmp_path, monkeypatch):
    from ragrec.data.sources import netflix

    def no_slow_path(files):
        raise AssertionError(f"well-formed files took the slow path: {files}")

    monkeypatch.setattr(netflix, "_parse_batch_slow", no_slow_path)
    (tmp_path / "movie_titles.csv").write_bytes(_TITLES.encode("latin-1"))
    (tmp_path / "combined_data_1.txt").write_text(
        "1:\n1488844,3,2005-09-06\n822109,5,2005-05-13\n2:\n2059652,4,2005-09-05\n"
    )
    (tmp_path / "combined_data_2.txt").write_text(
        "3:\n1488844,1,2004-01-02\n4:\n822109,4,2003-12-31"
    )  # no final newline
    ds = load_dataset(DataConfig(name="netflix", path=str(tmp_path)))
    assert ds.items.column("title").to_pylist() == [
        "Dinosaur Planet",
        "Isle of Man TT 2004 Review",
        "Crouching Tiger, Hidden Dragon, Special Edition",
        "Amélie",
    ]
    assert ds.items.column("year").to_pylist() == [2003, 2004, None, 2001]
    assert ds.users.column("raw_user_id").to_pylist() == [822109, 1488844, 2059652]
    assert _rows(ds.interactions, "user_id", "item_id", "rating", "timestamp", "label") == [
        (1, 0, 3.0, _epoch("2005-09-06"), 0),
        (0, 0, 5.0, _epoch("2005-05-13"), 1),
        (2, 1, 4.0, _epoch("2005-09-05"), 1),
        (1, 2, 1.0, _epoch("2004-01-02"), 0),
        (0, 3, 4.0, _epoch("2003-12-31"), 1),
    ]


def test_netflix_prize_archive_layout_and_errors(tmp_path):
    (tmp_path / "movie_titles.txt").write_bytes(_TITLES.encode("latin-1"))
    ts = tmp_path / "training_set"
    ts.mkdir()
    (ts / "mv_0000001.txt").write_text("1:\n1488844,3,2005-09-06\n")
    (ts / "mv_0000004.txt").write_text("4:\n822109,4,2003-12-31\n1488844,2,2004-02-01\n")
    ds = load_dataset(DataConfig(name="netflix", path=str(tmp_path)))
    assert _rows(ds.interactions, "item_id", "rating") == [(0, 3.0), (3, 4.0), (3, 2.0)]
    (ts / "mv_0000004.txt").write_text("4:\n822109,4,2003-12-31\n1488844;2;2004-02-01\n")
    _load_fails(r"mv_0000004\.txt line 3: expected CustomerID,Rating,Date", name="netflix", path=str(tmp_path))
    (ts / "mv_0000004.txt").write_text("822109,4,2003-12-31\n")
    _load_fails(r"mv_0000004\.txt line 1: a rating line before any 'MovieID:' line", name="netflix", path=str(tmp_path))
    (ts / "mv_0000004.txt").write_text("9:\n822109,4,2003-12-31\n")
    _load_fails(r"MovieID 9 has ratings but is not in movie_titles\.txt", name="netflix", path=str(tmp_path))
    (tmp_path / "movie_titles.txt").write_bytes((_TITLES + "4,2002,Dup\n").encode("latin-1"))
    _load_fails(r"movie_titles\.txt line 5: .*MovieID 4 appears twice", name="netflix", path=str(tmp_path))


# ---- recbole -----------------------------------------------------------------------------------------------------
def test_recbole_typed_headers_item_and_user_files(tmp_path):
    d = tmp_path / "ml-1m"
    d.mkdir()
    (d / "ml-1m.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        "1\t1193\t5\t978300760\n1\t661\t3\t978302109\n\n2\t1193\t4\t978298413.7\n2\t3408\t4\t978300275\n"
    )
    (d / "ml-1m.item").write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tgenre:token_seq\n"
        "1193\tOne Flew Over the Cuckoo's Nest\t1975\tDrama\n"
        "661\tJames and the Giant Peach\t1996\tAnimation Children's Musical\n"
        "1193\tduplicate\t1999\tDrama\n"
    )
    (d / "ml-1m.user").write_text("user_id:token\tage:token\tgender:token\n1\t1\tF\n2\t56\tM\n")
    ds = load_dataset(DataConfig(name="recbole", path=str(d)))
    items = ds.items
    assert items.column("raw_item_id").to_pylist() == ["1193", "3408", "661"]  # tokens, string order
    assert items.column("title").to_pylist() == ["One Flew Over the Cuckoo's Nest", "3408", "James and the Giant Peach"]
    assert items.column("genres").to_pylist() == [["Drama"], [], ["Animation", "Children's", "Musical"]]
    assert items.column("year").to_pylist() == [1975, None, 1996]
    assert ds.users.column("gender").to_pylist() == ["F", "M"]
    assert _rows(ds.interactions, "user_id", "item_id", "rating", "timestamp", "label") == [
        (0, 0, 5.0, 978300760, 1),
        (0, 2, 3.0, 978302109, 0),
        (1, 0, 4.0, 978298413, 1),
        (1, 1, 4.0, 978300275, 1),
    ]


def test_recbole_label_field_implicit_data_and_errors(tmp_path):
    (tmp_path / "ctr.inter").write_text("user_id:token\titem_id:token\tlabel:float\n7\ta\t1\n7\tb\t0\n8\ta\t1\n")
    ds = load_dataset(DataConfig(name="recbole", path=str(tmp_path / "ctr.inter")))
    assert _rows(ds.interactions, "label", "timestamp") == [(1, 0), (0, 1), (1, 2)]  # row order stands in for time
    assert ds.interactions.column("rating").null_count == 3
    (tmp_path / "ctr.inter").write_text("user_id:token\titem_id:token\n7\ta\n8\tb\n")
    (tmp_path / "ctr.item").write_text("item_id:token\ttitle:token_seq\n")  # a header only
    ds = load_dataset(DataConfig(name="recbole", path=str(tmp_path)))
    assert ds.interactions.column("label").to_pylist() == [1, 1]  # implicit feedback
    assert ds.items.column("title").to_pylist() == ["a", "b"]  # no titles: the tokens stand in
    (tmp_path / "ctr.item").unlink()
    (tmp_path / "ctr.inter").write_text("user_id:token\titem_id:token\tlabel:float\n7\ta\t2\n")
    _load_fails(r"ctr\.inter line 2: .*label '2' is not 0 or 1", name="recbole", path=str(tmp_path))
    (tmp_path / "ctr.inter").write_text("user_id:token\titem_id:int\n7\ta\n")
    _load_fails(r"ctr\.inter line 1: header field 'item_id:int' has type 'int'", name="recbole", path=str(tmp_path))
    (tmp_path / "ctr.inter").write_text("uid:token\titem_id:token\n7\ta\n")
    _load_fails(
        r"field 'user_id' \(data.columns.user_id\) not found; fields: uid, item_id", name="recbole", path=str(tmp_path)
    )
    ds = load_dataset(DataConfig(name="recbole", path=str(tmp_path), columns={"user_id": "uid"}))
    assert ds.users.column("raw_user_id").to_pylist() == ["7"]
    (tmp_path / "ctr.inter").write_text("user_id:token\titem_id:token\n7\ta\n8\n")
    _load_fails(r"ctr\.inter line 3: expected 2 tab-separated fields", name="recbole", path=str(tmp_path))
    _load_fails(r"data\.path is not set", name="recbole")


# ---- fetch -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["ml-10m", "bookcrossing", "netflix", "steam", "amazon-2018"])
def test_fetch_offline_error_is_one_clear_line(tmp_path, monkeypatch, name):
    calls = []

    def offline(url, timeout=None):
        calls.append(url)
        raise urllib.error.URLError(OSError(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(fetch_mod.urllib.request, "urlopen", offline)
    category = "Movies_and_TV" if name == "amazon-2018" else None
    with pytest.raises(DataError) as e:
        fetch_mod.fetch(name, tmp_path, category=category)
    msg = str(e.value)
    assert "\n" not in msg and "appears to be offline" in msg and calls[0] in msg
    official = fetch_mod.archives(name, category)[0]
    assert official.url == calls[0] and f"RAGREC_DATA_DIR={tmp_path}" in msg
    assert ("md5 " + official.zip_md5 if official.zip_md5 else "no checksum is published") in msg
    leftovers = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert leftovers == []  # nothing half-written


def _serve_zip(tmp_path: Path, name: str, members: dict[str, bytes]) -> tuple[Path, str]:
    served = tmp_path / "served"
    served.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for arc, data in members.items():
            zf.writestr(arc, data)
    (served / name).write_bytes(buf.getvalue())
    return served, hashlib.md5(buf.getvalue()).hexdigest()


def test_fetch_ml10m_extracts_the_inner_folder_and_checks_the_md5(tmp_path, monkeypatch):
    members = {"ml-10M100K/ratings.dat": b"1::1::5::1\n", "ml-10M100K/movies.dat": b"1::A (2000)::Drama\n"}
    served, md5 = _serve_zip(tmp_path, "ml-10m.zip", members)
    with pytest.raises(DataError, match=r"md5 of the downloaded archive is [0-9a-f]{32}, expected ce571fd5"):
        fetch_mod.fetch("ml-10m", tmp_path / "data", base_url=served.as_uri())
    assert list((tmp_path / "data").iterdir()) == []
    spec = fetch_mod.ARCHIVES["ml-10m"]
    monkeypatch.setitem(
        fetch_mod.ARCHIVES, "ml-10m", fetch_mod.Archive(md5, spec.required, url=spec.url, inner=spec.inner)
    )
    out = fetch_mod.fetch("ml-10m", tmp_path / "data", base_url=served.as_uri())
    assert out == tmp_path / "data" / "ml-10m" and sorted(p.name for p in out.iterdir()) == [
        "movies.dat",
        "ratings.dat",
    ]
    assert load_dataset(DataConfig(name="ml-10m", path=str(out))).interactions.num_rows == 1
    # a second call verifies the folder and downloads nothing
    assert fetch_mod.fetch("ml-10m", tmp_path / "data", base_url="http://127.0.0.1:9/") == out


def test_fetch_bookcrossing_without_a_published_checksum_verifies_the_files(tmp_path, caplog):
    src = _write_bx(tmp_path / "src")
    members = {p.name: p.read_bytes() for p in src.iterdir()}
    served, _ = _serve_zip(tmp_path, "BX-CSV-Dump.zip", members)
    assert fetch_mod.ARCHIVES["bookcrossing"].zip_md5 is None  # none was ever published
    out = fetch_mod.fetch("bookcrossing", tmp_path / "data", base_url=served.as_uri())
    assert "no checksum is published" in caplog.text and "sha256" in caplog.text
    assert load_dataset(DataConfig(name="bookcrossing", path=str(out))).interactions.num_rows == 6
    # an archive without BX-Users.csv is not the official one: nothing is left behind
    served2, _ = _serve_zip(tmp_path / "b", "BX-CSV-Dump.zip", {"BX-Book-Ratings.csv": b"x", "BX-Books.csv": b"y"})
    with pytest.raises(DataError, match=r"BX-Users\.csv: bookcrossing file missing"):
        fetch_mod.fetch("bookcrossing", tmp_path / "data2", base_url=served2.as_uri())
    assert list((tmp_path / "data2").iterdir()) == []


def test_fetch_netflix_unpacks_the_tar_inside_the_tar(tmp_path):
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w") as tf:
        data = b"1:\n1488844,3,2005-09-06\n"
        info = tarfile.TarInfo("training_set/mv_0000001.txt")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    served = tmp_path / "served"
    served.mkdir()
    with tarfile.open(served / "nf_prize_dataset.tar.gz", "w:gz") as tf:
        for arc, blob in (
            ("download/training_set.tar", inner.getvalue()),
            ("download/movie_titles.txt", b"1,2003,Dinosaur Planet\n"),
        ):
            info = tarfile.TarInfo(arc)
            info.size = len(blob)
            tf.addfile(info, io.BytesIO(blob))
    out = fetch_mod.fetch("netflix", tmp_path / "data", base_url=served.as_uri())
    assert sorted(p.name for p in out.iterdir()) == ["movie_titles.txt", "training_set"]
    assert load_dataset(DataConfig(name="netflix", path=str(out))).interactions.num_rows == 1
    # a member escaping the folder is refused
    with tarfile.open(served / "nf_prize_dataset.tar.gz", "w:gz") as tf:
        info = tarfile.TarInfo("../evil.txt")
        info.size = 1
        tf.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(DataError, match=r"escapes the target folder"):
        fetch_mod.fetch("netflix", tmp_path / "data3", base_url=served.as_uri())
    assert not (tmp_path / "evil.txt").exists()


def test_fetch_amazon_places_each_category_file_in_the_shared_folder(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    _gz_lines(served / "Books_5.json.gz", _REVIEWS[:3])
    _gz_lines(served / "meta_Books.json.gz", _META[:2])
    out = fetch_mod.fetch("amazon-2018", tmp_path / "data", base_url=served.as_uri(), category="Books")
    assert sorted(p.name for p in out.iterdir()) == ["Books_5.json.gz", "meta_Books.json.gz"]
    _gz_lines(out / "Video_Games_5.json.gz", _REVIEWS[:1])  # another category in the same folder
    books = DataConfig(name="amazon-2018", category="Books", path=str(out))
    assert [p.name for p in source_module("amazon-2018").input_files(books)] == [
        "Books_5.json.gz",
        "meta_Books.json.gz",
    ]
    assert load_dataset(DataConfig(name="amazon-2018", category="Books", path=str(out))).n_items == 2
    with pytest.raises(DataError, match=r"--category"):
        fetch_mod.fetch("amazon-2018", tmp_path / "data")


# ---- stats -------------------------------------------------------------------------------------------------------
def test_dataset_stats_counts_under_each_protocol(tmp_path):
    cfg = _toy_cfg("netflix", tmp_path, "rallrec")
    ds = load_dataset(cfg)
    st = dataset_stats(ds, cfg)
    assert (st["users"], st["items"], st["interactions"]) == (8, 12, 64)
    assert st["sparsity"] == pytest.approx(1 - 64 / 96)
    labels = ds.interactions.column("label").to_numpy()
    assert st["positive_rate"] == pytest.approx(labels.mean())
    assert sum(st["samples"].values()) == 64 - 8  # every rating after the user's first (min_history=1)
    rr = dataset_stats(ds, cfg.model_copy(update={"protocol": "rerank"}), seed=1)
    assert rr["sample_positive_rate"] is None and "candidate lists of 3" in rr["unit"]
    fr = dataset_stats(ds, cfg.model_copy(update={"protocol": "full_ranking"}))
    assert sum(fr["samples"].values()) == int(labels.sum())


@pytest.fixture
def restore_ragrec_logging():
    """`main` gives the ragrec logger a handler on the current stderr, here pytest's capture, which is closed after
    the test: put the logger back as it was, so later tests do not log into a closed stream."""
    logger = logging.getLogger("ragrec")
    handlers, level = list(logger.handlers), logger.level
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)


def test_cli_data_stats_by_name_and_by_config(tmp_path, monkeypatch, capsys, restore_ragrec_logging):
    _toy_steam(tmp_path)
    monkeypatch.setenv("RAGREC_DATA_DIR", str(tmp_path))
    assert main(["data", "stats", "steam", "--set", "data.min_history=1"]) == 0
    out = capsys.readouterr().out
    assert "users          8" in out and "items          12" in out and "interactions   64" in out
    assert "sparsity       33.3333%" in out and "positive rate  100.00% of interactions; label = 1" in out
    assert "protocol       rallrec: 56 CTR samples" in out
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data:\n  name: steam\n  protocol: full_ranking\n")
    assert main(["data", "stats", str(cfg)]) == 0
    assert "full_ranking: 64 positive (user, item) pairs" in capsys.readouterr().out
    assert main(["data", "stats", "netflix"]) == 2  # no files: one line naming what is missing
    assert "netflix" in capsys.readouterr().err
