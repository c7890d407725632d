"""MovieLens-10M (``ml-10m``): the GroupLens ``ml-10m.zip`` (folder ``ml-10M100K/``) -> canonical tables.

Files: ``ratings.dat`` ``UserID::MovieID::Rating::Timestamp`` (half stars 0.5 .. 5), ``movies.dat``
``MovieID::Title::Genre1|Genre2`` (``tags.dat`` is not read). There is no users file: users are the distinct
UserIDs of ``ratings.dat``, dense ids in ascending order. ``movies.dat`` is read as UTF-8 when it decodes, else
as Latin-1 (the encoding of the older MovieLens files). The genre ``(no genres listed)`` becomes an empty list.

Label: ``rating > data.label_threshold`` (default 3: 3.5 .. 5 stars are positives).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ...config import DataConfig
from .._ids import sorted_unique, year_from_title
from .._io import numeric_column, read_delimited, unique_ids
from ..dataset import Dataset
from ..errors import DataError
from ..movielens import _interactions
from ._common import dataset_folder, decode_text, fetch_fix, items_table, users_table

NAME = "ml-10m"
ARCHIVE_FOLDER = "ml-10M100K"  # the folder inside ml-10m.zip
NO_GENRES = "(no genres listed)"


def label_rule(cfg: DataConfig) -> str:
    return f"label = rating > {cfg.label_threshold:g} (half stars 0.5..5)"


def _folder(path: Path) -> Path:
    """``path``, or the ``ml-10M100K`` folder of the unzipped archive when ``path`` is its parent or a sibling."""
    if (path / "ratings.dat").is_file():
        return path
    for cand in (path / ARCHIVE_FOLDER, path.parent / ARCHIVE_FOLDER):
        if (cand / "ratings.dat").is_file():
            return cand
    return path


def _fix(fname: str) -> str:
    return f"{fname} must be the original file of the GroupLens ml-10m.zip; re-fetch with `ragrec data fetch ml-10m`"


def load_ml10m(path: str | Path, label_threshold: float = 3.0) -> Dataset:
    """Load MovieLens-10M from the folder holding ``ratings.dat`` and ``movies.dat``.

    Returns:
        Dataset ``ml-10m``: interactions ``(10000054,)``, items ``(10681,)`` (+ ``raw_item_id``), users
        with a rating (``raw_user_id``; the UserIDs are not contiguous).

    Raises:
        DataError: missing folder or file, a malformed line, a duplicated MovieID, a rating of an unknown movie.
    """
    path = _folder(Path(path))
    missing = [f for f in ("ratings.dat", "movies.dat") if not (path / f).is_file()]
    if missing:
        what = "folder does not exist" if not path.is_dir() else f"missing {', '.join(missing)}"
        raise DataError(f"{NAME} {what}", file=path, fix=fetch_fix(NAME))
    _, enc = decode_text((path / "movies.dat").read_bytes())
    movies = read_delimited(
        path / "movies.dat",
        "::",
        ["item", "title", "genres"],
        encoding=enc,
        describe="MovieID::Title::Genres",
        fix=_fix("movies.dat"),
        missing_fix=fetch_fix(NAME),
    )
    raw = unique_ids(movies, "item", what="MovieID", fix=_fix("movies.dat"))
    order = pc.sort_indices(raw)
    item_raw = raw.take(order)
    mt = movies.table.take(order)
    title = pc.utf8_trim_whitespace(mt.column("title"))
    genres = pc.split_pattern(pc.utf8_trim_whitespace(mt.column("genres")), "|").combine_chunks()
    flat = genres.flatten()
    keep = pc.not_equal(flat, NO_GENRES).to_numpy(zero_copy_only=False)
    counts = np.bincount(pc.list_parent_indices(genres).to_numpy(), weights=keep, minlength=len(genres))
    genres = pa.ListArray.from_arrays(
        pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)), flat.filter(pa.array(keep))
    )
    items = items_table(item_raw, title, genres, year_from_title(title))
    ratings = read_delimited(
        path / "ratings.dat",
        "::",
        ["user", "item", "rating", "timestamp"],
        encoding="utf-8",
        describe="UserID::MovieID::Rating::Timestamp",
        fix=_fix("ratings.dat"),
        missing_fix=fetch_fix(NAME),
    )
    user_raw = sorted_unique(numeric_column(ratings, "user", pa.int64(), fix=_fix("ratings.dat")))
    inter = _interactions(ratings, user_raw, item_raw, label_threshold, NAME, "ratings.dat", "movies.dat")
    return Dataset(name=NAME, interactions=inter, items=items, users=users_table(user_raw))


def load(cfg: DataConfig) -> Dataset:
    return load_ml10m(dataset_folder(cfg), label_threshold=cfg.label_threshold)
