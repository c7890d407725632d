"""MovieLens-100K and MovieLens-1M loaders: official raw files -> canonical tables.

* ML-100K (``u.data`` tab-separated ``user item rating timestamp``; ``u.item`` '|'-separated, latin-1,
  ``id|title|release date|video release date|IMDb URL|19 genre flags``; ``u.genre`` ``name|index``;
  ``u.user`` ``id|age|gender|occupation|zip``).
* ML-1M (``ratings.dat`` ``UserID::MovieID::Rating::Timestamp``; ``movies.dat``
  ``MovieID::Title::Genre1|Genre2``; ``users.dat`` ``UserID::Gender::Age::Occupation::Zip-code``;
  all latin-1). Age and occupation codes are mapped to readable strings.

Dense ids are the rank of the raw id (users from the users file, items from the items file); raw
ids stay in ``raw_user_id`` / ``raw_item_id``. Titles keep their year (``"Toy Story (1995)"``) and
the year is also parsed into ``year``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ._ids import dense_index, year_from_title
from ._io import Delimited, numeric_column, read_delimited, unique_ids
from .dataset import Dataset
from .errors import DataError
from .schemas import INTERACTIONS, with_label_source

ML100K_GENRE_FLAGS = 19

ML1M_AGES: dict[int, str] = {
    1: "Under 18",
    18: "18-24",
    25: "25-34",
    35: "35-44",
    45: "45-49",
    50: "50-55",
    56: "56+",
}
ML1M_OCCUPATIONS: tuple[str, ...] = (
    "other",
    "academic/educator",
    "artist",
    "clerical/admin",
    "college/grad student",
    "customer service",
    "doctor/health care",
    "executive/managerial",
    "farmer",
    "homemaker",
    "K-12 student",
    "lawyer",
    "programmer",
    "retired",
    "sales/marketing",
    "scientist",
    "self-employed",
    "technician/engineer",
    "tradesman/craftsman",
    "unemployed",
    "writer",
)


def _missing_fix(name: str) -> str:
    return (
        f"run `ragrec data fetch {name}`, or point RAGREC_DATA_DIR at the folder holding '{name}/' "
        f"(or set data.path to the '{name}' folder itself)"
    )


def _malformed_fix(name: str, fname: str) -> str:
    return (
        f"{fname} must be the original file of the GroupLens {name} archive; re-fetch with `ragrec data fetch {name}`"
    )


def _check_folder(path: Path, dataset: str, required: tuple[str, ...]) -> None:
    """Raise one DataError listing every required file missing from ``path``."""
    missing = [f for f in required if not (path / f).is_file()]
    if missing:
        what = "folder does not exist" if not path.is_dir() else f"missing {', '.join(missing)}"
        raise DataError(f"{dataset} {what}", file=path, fix=_missing_fix(dataset))


def _read(path: Path, dataset: str, fname: str, sep: str, names: list[str], describe: str) -> Delimited:
    return read_delimited(
        path / fname,
        sep,
        names,
        encoding="latin-1",
        describe=describe,
        fix=_malformed_fix(dataset, fname),
        missing_fix=_missing_fix(dataset),
    )


def _num(data: Delimited, name: str, typ: pa.DataType, dataset: str) -> pa.Array:
    return numeric_column(
        data, name, typ, fix=f"correct or remove that line ({_malformed_fix(dataset, data.path.name)})"
    )


def _raw_ids(data: Delimited, col: str, dataset: str) -> pa.Array:
    """Raw ids of an entity file, checked for duplicates, in ascending order."""
    fix = _malformed_fix(dataset, data.path.name)
    return unique_ids(data, col, what=col, fix=fix, parse_fix=f"correct or remove that line ({fix})")


def _interactions(
    ratings: Delimited,
    user_raw: pa.Array,
    item_raw: pa.Array,
    label_threshold: float,
    dataset: str,
    users_file: str,
    items_file: str,
) -> pa.Table:
    """Canonical interactions from a ratings file with columns user, item, rating, timestamp."""
    u = dense_index(_num(ratings, "user", pa.int64(), dataset), user_raw)
    i = dense_index(_num(ratings, "item", pa.int64(), dataset), item_raw)
    rating = _num(ratings, "rating", pa.float32(), dataset)
    ts = _num(ratings, "timestamp", pa.int64(), dataset)
    for dense, col, other in ((u, "user", users_file), (i, "item", items_file)):
        bad = np.flatnonzero(dense < 0)
        if len(bad):
            row = int(bad[0])
            raw = ratings.table.column(col)[row].as_py().strip()
            raise DataError(
                f"{col} id {raw} is not in {other} ({len(bad)} ratings refer to unknown {col}s)",
                file=ratings.path,
                line=ratings.line_of(row),
                field=col,
                fix=f"use the {ratings.path.name} and {other} of the same {dataset} archive",
            )
    label = pc.cast(pc.greater(rating, pa.scalar(label_threshold, pa.float32())), pa.int8())
    table = pa.Table.from_arrays([pa.array(u), pa.array(i), rating, ts, label], schema=INTERACTIONS)
    return with_label_source(table, given=False)


def _entity_order(raw: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """(sorted raw ids, row order of the file that sorts them)."""
    order = pc.sort_indices(raw).to_numpy()
    return raw.take(order), order


def _read_entities(
    path: Path, dataset: str, fname: str, sep: str, names: list[str], describe: str
) -> tuple[Delimited, pa.Array, np.ndarray, pa.Table]:
    """An entity file (items or users, raw id in column ``names[0]``) read and sorted by raw id, so that dense
    id k is row k: (the file, sorted raw ids, row order of the file that sorts them, its table in that order)."""
    data = _read(path, dataset, fname, sep, names, describe)
    raw, order = _entity_order(_raw_ids(data, names[0], dataset))
    return data, raw, order, data.table.take(order)


def load_ml100k(path: str | Path, label_threshold: float = 3.0) -> Dataset:
    """Load MovieLens-100K from the folder holding ``u.data``, ``u.item``, ``u.genre``, ``u.user``.

    Returns:
        Dataset with interactions ``(100000,)``, items ``(1682,)`` (+ ``raw_item_id``, ``release_date``,
        ``imdb_url``), users ``(943,)`` (``raw_user_id``, ``age``, ``gender``, ``occupation``, ``zip``).
    """
    path = Path(path)
    ds = "ml-100k"
    _check_folder(path, ds, ("u.data", "u.item", "u.genre", "u.user"))
    genre_file = _read(path, ds, "u.genre", "|", ["name", "index"], "genre name, genre index")
    genre_idx = _num(genre_file, "index", pa.int64(), ds).to_numpy()
    genre_names = np.empty(len(genre_idx), dtype=object)
    genre_names[genre_idx] = genre_file.table.column("name").to_numpy(zero_copy_only=False)
    if len(genre_names) != ML100K_GENRE_FLAGS:
        raise DataError(
            f"expected {ML100K_GENRE_FLAGS} genres, found {len(genre_names)}",
            file=genre_file.path,
            fix=_malformed_fix(ds, "u.genre"),
        )

    flag_names = [f"g{k}" for k in range(ML100K_GENRE_FLAGS)]
    item_file, item_raw, order, it = _read_entities(
        path,
        ds,
        "u.item",
        "|",
        ["item", "title", "release_date", "video_release_date", "imdb_url", *flag_names],
        "movie id|title|release date|video release date|IMDb URL|19 genre flags",
    )
    flags = np.stack([_num(item_file, f, pa.int8(), ds).take(order).to_numpy() for f in flag_names], axis=1)
    _rows, cols = np.nonzero(flags)  # row-major: grouped by item, genres in u.genre order
    offsets = np.concatenate([[0], np.cumsum(np.count_nonzero(flags, axis=1))]).astype(np.int32)
    genres = pa.ListArray.from_arrays(pa.array(offsets), pa.array(genre_names[cols].astype(str), pa.string()))
    title = pc.utf8_trim_whitespace(it.column("title"))
    year = year_from_title(title)
    release_year = pc.cast(
        pc.struct_field(pc.extract_regex(it.column("release_date"), r"(?P<y>\d{4})$"), "y"), pa.int32()
    )
    items = pa.table(
        {
            "item_id": pa.array(np.arange(len(item_raw), dtype=np.int64)),
            "title": title,
            "genres": genres,
            "year": pc.coalesce(year, release_year),
            "raw_item_id": item_raw,
            "release_date": it.column("release_date"),
            "imdb_url": it.column("imdb_url"),
        }
    )

    user_cols = ["user", "age", "gender", "occupation", "zip"]
    user_file, user_raw, uorder, ut = _read_entities(
        path, ds, "u.user", "|", user_cols, "user id|age|gender|occupation|zip code"
    )
    users = pa.table(
        {
            "user_id": pa.array(np.arange(len(user_raw), dtype=np.int64)),
            "raw_user_id": user_raw,
            "age": _num(user_file, "age", pa.int32(), ds).take(uorder),
            "gender": ut.column("gender"),
            "occupation": ut.column("occupation"),
            "zip": ut.column("zip"),
        }
    )

    ratings = _read(
        path, ds, "u.data", "\t", ["user", "item", "rating", "timestamp"], "user id, item id, rating, timestamp"
    )
    inter = _interactions(ratings, user_raw, item_raw, label_threshold, ds, "u.user", "u.item")
    return Dataset(name=ds, interactions=inter, items=items, users=users)


def load_ml1m(path: str | Path, label_threshold: float = 3.0) -> Dataset:
    """Load MovieLens-1M from the folder holding ``ratings.dat``, ``movies.dat``, ``users.dat``.

    Returns:
        Dataset with interactions ``(1000209,)``, items ``(3883,)`` (+ ``raw_item_id``), users
        ``(6040,)`` (``raw_user_id``, ``age`` (the code, i.e. the bracket's lower bound),
        ``age_group`` e.g. ``"25-34"``, ``gender``, ``occupation`` e.g. ``"programmer"``, ``zip``).
    """
    path = Path(path)
    ds = "ml-1m"
    _check_folder(path, ds, ("ratings.dat", "movies.dat", "users.dat"))
    _, item_raw, _, mt = _read_entities(
        path, ds, "movies.dat", "::", ["item", "title", "genres"], "MovieID::Title::Genres"
    )
    title = pc.utf8_trim_whitespace(mt.column("title"))
    items = pa.table(
        {
            "item_id": pa.array(np.arange(len(item_raw), dtype=np.int64)),
            "title": title,
            "genres": pc.split_pattern(mt.column("genres"), "|").combine_chunks(),
            "year": year_from_title(title),
            "raw_item_id": item_raw,
        }
    )

    user_cols = ["user", "gender", "age", "occupation", "zip"]
    user_file, user_raw, uorder, ut = _read_entities(
        path, ds, "users.dat", "::", user_cols, "UserID::Gender::Age::Occupation::Zip-code"
    )
    age = _num(user_file, "age", pa.int32(), ds).take(uorder)
    occ = _num(user_file, "occupation", pa.int64(), ds).take(uorder)
    age_codes = pa.array(list(ML1M_AGES), pa.int32())
    age_idx = dense_index(age, age_codes)
    occ_np = occ.to_numpy()
    for what, bad, allowed in (
        ("age", age_idx < 0, f"one of {list(ML1M_AGES)}"),
        ("occupation", (occ_np < 0) | (occ_np >= len(ML1M_OCCUPATIONS)), f"0..{len(ML1M_OCCUPATIONS) - 1}"),
    ):
        if bad.any():
            row = int(uorder[np.flatnonzero(bad)[0]])
            raise DataError(
                f"{what} code {user_file.table.column(what)[row].as_py()} is not {allowed}",
                file=user_file.path,
                line=user_file.line_of(row),
                field=what,
                fix=_malformed_fix(ds, "users.dat"),
            )
    users = pa.table(
        {
            "user_id": pa.array(np.arange(len(user_raw), dtype=np.int64)),
            "raw_user_id": user_raw,
            "age": age,
            "age_group": pa.array(np.array(list(ML1M_AGES.values()), dtype=object)[age_idx], pa.string()),
            "gender": ut.column("gender"),
            "occupation": pa.array(np.array(ML1M_OCCUPATIONS, dtype=object)[occ_np], pa.string()),
            "zip": ut.column("zip"),
        }
    )

    ratings = _read(
        path, ds, "ratings.dat", "::", ["user", "item", "rating", "timestamp"], "UserID::MovieID::Rating::Timestamp"
    )
    inter = _interactions(ratings, user_raw, item_raw, label_threshold, ds, "users.dat", "movies.dat")
    return Dataset(name=ds, interactions=inter, items=items, users=users)
