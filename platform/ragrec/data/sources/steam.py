"""Steam (``steam``, Kang & McAuley 2018, the "Version 2" review data used by SASRec and UR4Rec) -> canonical tables.

Files:

* ``steam_reviews.json.gz`` (also read: ``steam_reviews.json``, SASRec's ``steam_new.json(.gz)``): one review per
  line with ``username``, ``product_id``, ``date`` (``YYYY-MM-DD``) and ``hours`` (played; may be missing), plus
  text and page fields that are not read.
* ``steam_games.json.gz`` (or ``steam_games.json``): one game per line with ``id``, ``title`` / ``app_name``,
  ``genres``, ``tags``, ``developer``, ``publisher``, ``release_date``.

Despite the ``.json`` name every line is a **Python literal** (single quotes, ``True``/``False``/``None``, ``u''``
strings): lines are parsed with :func:`ast.literal_eval`, never ``eval`` (files over 32 MB in parallel processes).
Traps handled: games without ``id`` are skipped, a game listed twice keeps its first line, a game without
``title`` uses ``app_name``; reviews of games with no title in the metadata are dropped with a logged count (items
need a title); a user reviewing the same game twice on the same date keeps the first review.

Users are keyed by ``username`` (as in SASRec's preprocessing; ``user_id`` is missing from most lines), dense ids
in ascending order; items are the reviewed games (ascending ``product_id`` as a string). Timestamps: the review
date at 00:00 UTC, so a user's reviews of one day keep their file order only through the stable sorts.

Label: a review is implicit positive feedback, so every interaction has label 1 (given, not derived: ``rating`` is
null) and the hours played ride along in an ``hours`` column. The CTR protocols (``rallrec``, ``temporal``) thus see
only positives; Steam is a ranking dataset (UR4Rec's ``rerank`` protocol, ``full_ranking``), whose negatives are
the games a user never reviewed.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ...config import DataConfig
from .._ids import dense_index, sorted_unique
from ..dataset import Dataset
from ..errors import DataError
from ._common import (
    dataset_folder,
    date_seconds,
    drop_exact_duplicates,
    find_file,
    first_rows,
    interactions_table,
    items_table,
    list_array,
    parse_records,
    reviews_with_metadata,
    users_table,
    year_from_text,
)

NAME = "steam"
REVIEW_FILES = ("steam_reviews.json.gz", "steam_reviews.json", "steam_new.json.gz", "steam_new.json")
GAME_FILES = ("steam_games.json.gz", "steam_games.json")
log = logging.getLogger("ragrec.data.sources.steam")


def label_rule(cfg: DataConfig) -> str:
    return "label = 1 for every review (implicit feedback; negatives are the games a user never reviewed)"


def _fix(fname: str) -> str:
    return f"{fname} must be the original Steam file of Kang & McAuley; re-fetch with `ragrec data fetch {NAME}`"


def _extract_review(rec: dict) -> tuple:
    """(username, product_id, date, hours) of one review; ValueError naming a missing key."""
    missing = [k for k in ("username", "product_id", "date") if rec.get(k) in (None, "")]
    if missing:
        raise ValueError(f"the review has no {', '.join(repr(k) for k in missing)}")
    hours = rec.get("hours")
    try:
        hours = float(hours) if hours is not None else None
    except (TypeError, ValueError):
        hours = None
    return str(rec["username"]), str(rec["product_id"]).strip(), str(rec["date"]), hours


def _extract_game(rec: dict) -> tuple | None:
    """(id, title, genres, tags, developer, publisher, release_date) of one game; None without an id."""
    gid = rec.get("id")
    if gid in (None, ""):
        return None
    title = rec.get("title") or rec.get("app_name")

    def text(key: str) -> str | None:
        v = rec.get(key)
        return None if v is None else str(v)

    def strings(key: str) -> list[str]:
        v = rec.get(key) or []
        return [v] if isinstance(v, str) else [str(x) for x in v]

    return (
        str(gid).strip(),
        None if title is None else str(title).strip(),
        strings("genres"),
        strings("tags"),
        text("developer"),
        text("publisher"),
        text("release_date"),
    )


def load_steam(path: str | Path, workers: int | None = None) -> Dataset:
    """Load the Steam reviews and game metadata from the folder ``path``.

    Args:
        path: the folder holding the two files.
        workers: processes parsing the literal lines (None: 1 for small files, up to 8 for big ones).

    Returns:
        Dataset ``steam``: interactions (user, game, rating null, date, label 1, ``hours``), items (``title``,
        ``genres``, ``year`` of release, ``raw_item_id`` = product id, ``tags``, ``developer``, ``publisher``,
        ``release_date``), users (``raw_user_id`` = username).

    Raises:
        DataError: a missing file, a line that is not a Python literal, a review without username / product_id /
            date, a date that is not YYYY-MM-DD, no reviewed game with metadata.
    """
    path = Path(path)
    rpath = find_file(path, REVIEW_FILES, NAME, "reviews")
    gpath = find_file(path, GAME_FILES, NAME, "game metadata")
    reviews, lines = parse_records(
        rpath, _extract_review, kind="literal", dataset=NAME, fix=_fix(rpath.name), workers=workers
    )
    if not reviews:
        raise DataError("the reviews file holds no review", file=rpath, fix=_fix(rpath.name))
    user, product, date, hours = (list(c) for c in zip(*reviews))
    user, product = pa.array(user, pa.string()), pa.array(product, pa.string())
    ts = date_seconds(
        pa.array(date, pa.string()), file=rpath, field="date", fix=_fix(rpath.name), line_of=lambda r: int(lines[r])
    )
    hours = pa.array(hours, pa.float32())

    games, _ = parse_records(gpath, _extract_game, kind="literal", dataset=NAME, fix=_fix(gpath.name), workers=workers)
    gcols = list(zip(*games)) if games else [[]] * 7
    gid = pa.array(gcols[0], pa.string())
    first = first_rows(gid)
    if len(first) < len(gid):
        log.warning("%s: %d game ids listed more than once (first line kept)", gpath, len(gid) - len(first))
    gcols = [[col[k] for k in first] for col in gcols]
    gid = pa.array(gcols[0], pa.string())
    title = pa.array(gcols[1], pa.string())
    titled = pc.fill_null(pc.not_equal(title, ""), False).to_numpy(zero_copy_only=False)

    known_games = gid.filter(pa.array(titled))
    known = pc.is_in(product, value_set=known_games).to_numpy(zero_copy_only=False)
    sel = reviews_with_metadata(
        known,
        rpath,
        gpath,
        "games",
        none_left=f"no reviewed game has a title in {gpath.name}",
        fix="use steam_games.json.gz of the same release as the reviews",
        logger=log,
    )
    user, product, ts, hours = user.take(sel), product.take(sel), ts.take(sel), hours.take(sel)
    keep = drop_exact_duplicates({"u": user, "i": product, "t": ts}, "reviews (same user, game and date)", rpath)
    if not keep.all():
        sel = pa.array(np.flatnonzero(keep))
        user, product, ts, hours = user.take(sel), product.take(sel), ts.take(sel), hours.take(sel)

    item_raw = sorted_unique(product)
    meta = pa.array(dense_index(item_raw, gid))  # every reviewed game kept has a metadata row
    items = items_table(
        item_raw,
        title.take(meta),
        list_array(gcols[2]).take(meta),
        year_from_text(pa.array(gcols[6], pa.string())).take(meta),
        tags=list_array(gcols[3]).take(meta),
        developer=pa.array(gcols[4], pa.string()).take(meta),
        publisher=pa.array(gcols[5], pa.string()).take(meta),
        release_date=pa.array(gcols[6], pa.string()).take(meta),
    )
    user_raw = sorted_unique(user)
    users = users_table(user_raw)
    n = len(user)
    inter = interactions_table(
        dense_index(user, user_raw),
        dense_index(product, item_raw),
        pa.nulls(n, pa.float32()),
        ts,
        pa.array(np.ones(n, dtype=np.int8)),
        given=True,
        extras={"hours": hours},
    )
    return Dataset(name=NAME, interactions=inter, items=items, users=users)


def load(cfg: DataConfig) -> Dataset:
    return load_steam(dataset_folder(cfg))
