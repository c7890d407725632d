"""Amazon Review Data 2018 (``amazon-2018``, Ni, Li & McAuley 2019), one category (``data.category``) -> canonical
tables.

Files, in the dataset folder (several categories may share it):

* ``<Category>_5.json.gz`` (or the unpacked ``.json``): the 5-core reviews, one JSON object per line with
  ``reviewerID``, ``asin``, ``overall`` (1..5 stars) and ``unixReviewTime`` (seconds); the other keys (text,
  votes, style, images) are not read.
* ``meta_<Category>.json.gz`` (or ``.json``): the product metadata, one object per line with ``asin``, ``title``,
  ``brand``, ``category`` (a list, top level first), ``main_cat``, ``date``.

Both are read with Arrow's JSON reader; a file it cannot read (e.g. the 2014 release's Python-literal lines, or a
key with two types) is read line by line instead (JSON, else :func:`ast.literal_eval`), and a bad line is a
DataError naming it. Traps handled: products listed twice in the metadata keep their first line; titles carry
HTML entities and tags (unescaped / removed); reviews of products without metadata or with an empty title are
dropped with a logged count (items need a title); reviews repeating (reviewer, product, time) keep the first.

Items are the reviewed products with a title (dense ids in ascending ASIN order; ``genres`` = the ``category``
list, ``year`` = the first year in ``date``, extras ``brand`` and ``main_cat``); users the reviewers (ascending
reviewerID). Label: ``overall > data.label_threshold`` (default 3: 4 and 5 stars are positives).
"""

from __future__ import annotations

import html
import logging
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from ...config import DataConfig
from .._ids import dense_index, sorted_unique
from ..dataset import Dataset
from ._common import (
    check_range,
    dataset_folder,
    drop_exact_duplicates,
    find_file,
    first_existing,
    first_rows,
    items_table,
    list_array,
    parse_records,
    rated_dataset,
    reviews_with_metadata,
    users_table,
    year_from_text,
)

NAME = "amazon-2018"
REVIEW_SCHEMA = pa.schema(
    [("reviewerID", pa.string()), ("asin", pa.string()), ("overall", pa.float64()), ("unixReviewTime", pa.int64())]
)
META_SCHEMA = pa.schema(
    [
        ("asin", pa.string()),
        ("title", pa.string()),
        ("brand", pa.string()),
        ("category", pa.list_(pa.string())),
        ("main_cat", pa.string()),
        ("date", pa.string()),
    ]
)
_TAG = re.compile(r"<[^>]*>")
_SPACE = re.compile(r"\s+")
log = logging.getLogger("ragrec.data.sources.amazon_2018")


def label_rule(cfg: DataConfig) -> str:
    return f"label = overall > {cfg.label_threshold:g} (1..5 stars)"


def review_files(category: str) -> tuple[str, ...]:
    return (f"{category}_5.json.gz", f"{category}_5.json")


def meta_files(category: str) -> tuple[str, ...]:
    return (f"meta_{category}.json.gz", f"meta_{category}.json")


def _fix(fname: str, category: str) -> str:
    return (
        f"{fname} must be the original file of the Amazon 2018 release; re-fetch with "
        f"`ragrec data fetch {NAME} --category {category}`"
    )


def _text(v: object) -> str | None:
    return None if v is None else str(v)


def _extract_review(rec: dict) -> tuple:
    """(reviewerID, asin, overall, unixReviewTime) of one review; ValueError naming a missing key."""
    missing = [k for k in REVIEW_SCHEMA.names if rec.get(k) is None]
    if missing:
        raise ValueError(f"the review has no {', '.join(repr(k) for k in missing)}")
    return str(rec["reviewerID"]), str(rec["asin"]), float(rec["overall"]), int(rec["unixReviewTime"])


def _extract_meta(rec: dict) -> tuple | None:
    """(asin, title, brand, category list, main_cat, date) of one product; None without an asin."""
    asin = rec.get("asin")
    if not asin:
        return None
    cats = rec.get("category") or rec.get("categories") or []
    if isinstance(cats, str):
        cats = [cats]
    elif cats and isinstance(cats[0], list | tuple):  # 2014: a list of category paths
        cats = list(cats[0])
    return (
        str(asin),
        _text(rec.get("title")),
        _text(rec.get("brand")),
        [str(c) for c in cats],
        _text(rec.get("main_cat")),
        _text(rec.get("date")),
    )


def _read_json(path: Path, schema: pa.Schema, required: list[str]) -> pa.Table | None:
    """Arrow's fast JSON-lines read of ``schema``'s keys; None when it cannot (the caller reads line by line)."""
    try:
        t = pajson.read_json(
            path, parse_options=pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError, EOFError):
        return None
    if any(t.column(c).null_count for c in required):
        return None  # the line-by-line read names the line
    return t


def _reviews(path: Path, category: str) -> tuple[pa.Table, np.ndarray]:
    """The review columns of ``REVIEW_SCHEMA`` and the 1-based line of each row."""
    t = _read_json(path, REVIEW_SCHEMA, REVIEW_SCHEMA.names)
    if t is not None:
        return t, np.arange(1, t.num_rows + 1, dtype=np.int64)
    recs, lines = parse_records(path, _extract_review, kind="json", dataset=NAME, fix=_fix(path.name, category))
    cols = list(zip(*recs)) if recs else [[]] * 4
    return pa.Table.from_arrays([pa.array(c, f.type) for c, f in zip(cols, REVIEW_SCHEMA)], schema=REVIEW_SCHEMA), lines


def _metadata(path: Path, category: str) -> pa.Table:
    t = _read_json(path, META_SCHEMA, ["asin"])
    if t is not None:
        return t.filter(pc.fill_null(pc.not_equal(t.column("asin"), ""), False))
    recs, _ = parse_records(path, _extract_meta, kind="json", dataset=NAME, fix=_fix(path.name, category))
    cols = list(zip(*recs)) if recs else [[]] * len(META_SCHEMA)
    return pa.Table.from_arrays([pa.array(c, f.type) for c, f in zip(cols, META_SCHEMA)], schema=META_SCHEMA)


def clean_text(values: list[str | None]) -> list[str | None]:
    """HTML entities unescaped, tags removed, whitespace collapsed; None stays None."""
    out = []
    for v in values:
        if v is None:
            out.append(None)
            continue
        out.append(_SPACE.sub(" ", _TAG.sub(" ", html.unescape(v))).strip())
    return out


def load_amazon(path: str | Path, category: str, label_threshold: float = 3.0) -> Dataset:
    """Load one category of the Amazon 2018 reviews (5-core) with its metadata from the folder ``path``.

    Returns:
        Dataset ``amazon-2018``: interactions (reviewer, product, overall, unixReviewTime, label), items
        (``title``, ``genres`` = categories, ``year``, ``raw_item_id`` = ASIN, ``brand``, ``main_cat``), users
        (``raw_user_id`` = reviewerID).

    Raises:
        DataError: a missing file, a line that is neither JSON nor a Python literal, a review without reviewerID /
            asin / overall / unixReviewTime, a rating outside 1..5, no review with metadata.
    """
    path = Path(path)
    extra = f" --category {category}"
    rpath = find_file(path, review_files(category), NAME, f"{category} 5-core reviews", extra)
    mpath = find_file(path, meta_files(category), NAME, f"{category} metadata", extra)
    reviews, lines = _reviews(rpath, category)
    rating = pc.cast(reviews.column("overall"), pa.float32()).combine_chunks()
    check_range(
        rating.to_numpy(zero_copy_only=False),
        1,
        5,
        file=rpath,
        field="overall",
        fix=_fix(rpath.name, category),
        line_of=lambda row: int(lines[row]),
    )
    user = reviews.column("reviewerID").combine_chunks()
    asin = reviews.column("asin").combine_chunks()
    ts = reviews.column("unixReviewTime").combine_chunks()

    meta = _metadata(mpath, category)
    meta = meta.filter(pc.is_in(meta.column("asin"), value_set=pc.unique(asin)))
    first = first_rows(meta.column("asin").combine_chunks())
    if len(first) < meta.num_rows:
        log.warning("%s: %d products listed more than once (first line kept)", mpath, meta.num_rows - len(first))
    meta = meta.take(pa.array(first))
    title = pa.array(clean_text(meta.column("title").to_pylist()), pa.string())
    has_title = pc.fill_null(pc.not_equal(title, ""), False)
    meta, title = meta.filter(has_title), title.filter(has_title)

    known = pc.is_in(asin, value_set=meta.column("asin")).to_numpy(zero_copy_only=False)
    sel = reviews_with_metadata(
        known,
        rpath,
        mpath,
        "products",
        none_left=f"no reviewed product has metadata with a title in {mpath.name}",
        fix=f"use the reviews and metadata files of the same category ({category})",
        logger=log,
    )
    user, asin, rating, ts, lines = user.take(sel), asin.take(sel), rating.take(sel), ts.take(sel), lines[known]
    keep = drop_exact_duplicates({"u": user, "i": asin, "t": ts}, "reviews (same reviewer, product and time)", rpath)
    if not keep.all():
        sel = pa.array(np.flatnonzero(keep))
        user, asin, rating, ts = user.take(sel), asin.take(sel), rating.take(sel), ts.take(sel)

    order = pc.sort_indices(meta.column("asin"))
    meta, title = meta.take(order), title.take(order)
    item_raw = meta.column("asin").combine_chunks()  # every one has a review (meta was cut to reviewed products)
    items = items_table(
        item_raw,
        title,
        list_array([clean_text(c or []) for c in meta.column("category").to_pylist()]),
        year_from_text(meta.column("date").combine_chunks()),
        brand=pa.array(clean_text(meta.column("brand").to_pylist()), pa.string()),
        main_cat=pa.array(clean_text(meta.column("main_cat").to_pylist()), pa.string()),
    )
    user_raw = sorted_unique(user)
    return rated_dataset(
        NAME,
        items,
        users_table(user_raw),
        dense_index(user, user_raw),
        dense_index(asin, item_raw),
        rating,
        ts,
        label_threshold,
    )


def load(cfg: DataConfig) -> Dataset:
    assert cfg.category is not None  # DataConfig requires it for amazon-2018
    return load_amazon(dataset_folder(cfg), cfg.category, label_threshold=cfg.label_threshold)


def input_files(cfg: DataConfig) -> list[Path]:
    """The category's two files (the folder may hold other categories; their digests enter the cache key)."""
    folder = dataset_folder(cfg)
    return first_existing(folder, review_files(cfg.category)) + first_existing(folder, meta_files(cfg.category))
