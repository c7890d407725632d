"""RecBole atomic files (``recbole``): ``<name>.inter`` (+ ``<name>.item``, ``<name>.user``) -> canonical tables.

The format (RecBole docs, "Atomic Files"): UTF-8, tab-separated, no quoting, one header line of typed fields
``name:type`` with type ``token`` (an id or category), ``token_seq`` (space-separated tokens), ``float`` or
``float_seq``, e.g. ``user_id:token	item_id:token	rating:float	timestamp:float``. Every dataset converted by
RecBole's RecSysDatasets therefore loads as it is.

``data.path`` is the folder holding the files (the ``.inter`` found there, or ``<folder name>.inter`` when there
are several) or the ``.inter`` file itself. Fields are matched by name without the type, through ``data.columns``
(whose defaults ``user_id``, ``item_id``, ``rating``, ``timestamp`` are RecBole's):

* **ids**: ``data.columns.user_id`` / ``item_id`` (tokens, kept as strings; dense ids in ascending string order).
  Items and users are those of the ``.item`` / ``.user`` files together with any id of ``.inter`` missing there.
* **label**: the field ``data.columns.label`` or, when that is unset, a field called ``label`` (0/1, RecBole's CTR
  datasets) -> labels as given; else ``rating > data.label_threshold`` from ``data.columns.rating``; with neither,
  every interaction is a positive (implicit feedback, label 1).
* **timestamp**: ``data.columns.timestamp`` (float seconds, floored); without one, the row number of the ``.inter``
  file stands in (0, 1, 2 ... seconds), i.e. file order.
* **title**: ``data.columns.title`` or the first of ``title``, ``movie_title``, ``book_title``, ``app_name``,
  ``item_name``, ``name`` (a ``token_seq`` title is its tokens joined by spaces); without one, the item token
  stands in (logged). **genres**: ``data.columns.genres`` or the first of ``genres``, ``genre``, ``class``,
  ``categories``, ``category`` (``token_seq``: split on spaces). **year**: ``release_year`` or ``year``.
* every other ``.item`` / ``.user`` field passes through as a string column; an item or user listed twice keeps
  its first line (logged).
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from ...config import DataConfig
from .._ids import dense_index
from .._io import cast_numeric
from ..dataset import Dataset
from ..errors import DataError
from ._common import (
    dataset_folder,
    decode_text,
    first_rows,
    interactions_table,
    label_from_rating,
    nonempty_lines,
    year_from_text,
)

NAME = "recbole"
TYPES = ("token", "token_seq", "float", "float_seq")
TITLE_FIELDS = ("title", "movie_title", "book_title", "app_name", "item_name", "name")
GENRE_FIELDS = ("genres", "genre", "class", "categories", "category")
YEAR_FIELDS = ("release_year", "year")
_CANONICAL = {"item_id", "user_id", "title", "genres", "year", "raw_item_id", "raw_user_id"}
log = logging.getLogger("ragrec.data.sources.recbole")


def label_rule(cfg: DataConfig) -> str:
    c = cfg.columns
    label = c.label or "label"
    return (
        f"label = field '{label}' when the .inter has it, else {c.rating} > {cfg.label_threshold:g}, "
        "else 1 (implicit feedback)"
    )


@dataclass
class Atomic:
    """One atomic file: string columns named by field (type stripped), the types, and the line of each row."""

    path: Path
    table: pa.Table
    types: dict[str, str]
    lines: np.ndarray

    def line_of(self, row: int) -> int:
        return int(self.lines[row])

    def field(self, name: str) -> pa.Array:
        return self.table.column(name).combine_chunks()


def _fix(path: Path) -> str:
    return (
        f"{path.name} must be a RecBole atomic file: tab-separated, a header of name:type fields ({', '.join(TYPES)})"
    )


def read_atomic(path: Path) -> Atomic:
    """Read one atomic file into string columns; DataError on a bad header or a line with the wrong field count."""
    raw = path.read_bytes()
    text, _ = decode_text(raw)
    header = text.split("\n", 1)[0].rstrip("\r")
    if not header.strip():
        raise DataError("the file is empty (expected a header of name:type fields)", file=path, line=1, fix=_fix(path))
    names, types = [], {}
    for spec in header.split("\t"):
        name, sep, typ = spec.strip().rpartition(":")
        if not sep or not name:
            seen = (
                " (the header is not tab-separated)"
                if any(s in header for s in (",", ";", " ")) and "\t" not in header
                else ""
            )
            raise DataError(f"header field {spec.strip()!r} is not name:type{seen}", file=path, line=1, fix=_fix(path))
        if typ not in TYPES:
            raise DataError(
                f"header field {spec.strip()!r} has type {typ!r}, not one of {', '.join(TYPES)}",
                file=path,
                line=1,
                fix=_fix(path),
            )
        if name in types:
            raise DataError(f"field {name!r} appears twice in the header", file=path, line=1, fix=_fix(path))
        names.append(name)
        types[name] = typ
    bad: list[pacsv.InvalidRow] = []

    def _on_invalid(row: pacsv.InvalidRow) -> str:
        bad.append(row)
        return "skip"

    body = text.split("\n", 1)[1] if "\n" in text else ""
    if not body.strip():  # a header only (Arrow refuses an empty body)
        empty = pa.table({n: pa.array([], pa.string()) for n in names})
        return Atomic(path=path, table=empty, types=types, lines=np.zeros(0, dtype=np.int64))
    table = pacsv.read_csv(
        io.BytesIO(body.encode("utf-8")),
        read_options=pacsv.ReadOptions(column_names=names),
        parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False, invalid_row_handler=_on_invalid),
        convert_options=pacsv.ConvertOptions(column_types={n: pa.string() for n in names}, strings_can_be_null=False),
    )
    if bad:
        row = bad[0]
        pos = text.find("\n" + row.text)
        line = text.count("\n", 0, pos + 1) + 1 if pos >= 0 else None
        raise DataError(
            f"expected {len(names)} tab-separated fields ({header[:80]}), found {row.actual_columns}: "
            f"{row.text[:80]!r}",
            file=path,
            line=line,
            fix=_fix(path),
        )
    lines = nonempty_lines(text.encode("utf-8"))[1:]  # rows skip blank lines, as the reader does
    return Atomic(path=path, table=table, types=types, lines=lines)


def _inter_path(path: Path) -> Path:
    if path.suffix == ".inter":
        if not path.is_file():
            raise DataError("the .inter file does not exist", file=path, fix="set data.path to an existing .inter file")
        return path
    if not path.is_dir():
        raise DataError(
            "folder does not exist", file=path, fix="set data.path to the folder holding <name>.inter (or the file)"
        )
    found = sorted(path.glob("*.inter"))
    if len(found) == 1:
        return found[0]
    named = path / f"{path.name}.inter"
    if named.is_file():
        return named
    what = "no .inter file" if not found else f"{len(found)} .inter files ({', '.join(p.name for p in found)})"
    raise DataError(
        f"{what} in the folder",
        file=path,
        fix="set data.path to the .inter file itself (data.path: <folder>/<name>.inter)",
    )


def _require(f: Atomic, name: str, key: str) -> pa.Array:
    if name not in f.types:
        raise DataError(
            f"field {name!r} (data.columns.{key}) not found; fields: {', '.join(f.types)}",
            file=f.path,
            line=1,
            field=name,
            fix=f"set data.columns.{key} to the field that holds it",
        )
    return pc.utf8_trim_whitespace(f.field(name))


def _first_present(f: Atomic, declared: str | None, candidates: tuple[str, ...]) -> str | None:
    if declared is not None and declared in f.types:
        return declared
    return next((c for c in candidates if c in f.types), None)


def _entities(
    f: Atomic | None, key: str, inter_ids: pa.Array, what: str
) -> tuple[pa.Array, pa.Table | None, np.ndarray]:
    """``(sorted raw ids, the entity file's rows in that order or None, whether each id has a row)``."""
    if f is None:
        raw = pc.unique(inter_ids)
        return raw.take(pc.sort_indices(raw)), None, np.zeros(len(raw), dtype=bool)
    ids = _require(f, key, "item_id" if what == "items" else "user_id")
    first = first_rows(ids)
    if len(first) < len(ids):
        log.warning("%s: %d %s listed more than once (first line kept)", f.path, len(ids) - len(first), what)
    table = f.table.take(pa.array(first))
    ids = ids.take(pa.array(first))
    extra = pc.filter(pc.unique(inter_ids), pc.invert(pc.is_in(pc.unique(inter_ids), value_set=ids)))
    if len(extra):
        log.warning("%s: %d %s of the .inter file have no line here", f.path, len(extra), what)
    raw = pa.concat_arrays([ids, extra])
    order = pc.sort_indices(raw)
    raw = raw.take(order)
    at = dense_index(raw, ids)  # row in the entity file, -1 for ids only in .inter
    has = at >= 0
    return raw, table.take(pa.array(np.where(has, at, 0))), has


def _null_where(col: pa.Array, missing: np.ndarray) -> pa.Array:
    return pc.if_else(pa.array(missing), pa.scalar(None, col.type), col) if missing.any() else col


def load_recbole(path: str | Path, cfg: DataConfig | None = None) -> Dataset:
    """Load RecBole atomic files (see the module docstring for how fields map to the canonical tables).

    Args:
        path: the folder holding ``<name>.inter`` (+ ``.item``, ``.user``) or the ``.inter`` file.
        cfg: ``data.columns`` names and ``data.label_threshold`` (default: RecBole's field names, threshold 3).

    Raises:
        DataError: a missing file or field, a header that is not ``name:type``, a line with the wrong number of
            fields, a non-numeric rating / timestamp, a label other than 0/1, an empty ``.inter`` file.
    """
    cfg = cfg or DataConfig(name="recbole")
    c = cfg.columns
    inter_path = _inter_path(Path(path))
    base = inter_path.with_suffix("")
    inter = read_atomic(inter_path)
    if inter.table.num_rows == 0:
        raise DataError("the .inter file has a header but no interactions", file=inter_path, fix="add interactions")
    fix = f"correct or remove that line ({_fix(inter_path)})"
    u_raw = _require(inter, c.user_id, "user_id")
    i_raw = _require(inter, c.item_id, "item_id")
    n = inter.table.num_rows

    rating_field = c.rating if c.rating is not None and c.rating in inter.types else None
    label_field = c.label if c.label is not None else ("label" if "label" in inter.types else None)
    if c.label is not None and c.label not in inter.types:
        _require(inter, c.label, "label")
    rating = (
        cast_numeric(
            inter.field(rating_field), pa.float32(), file=inter_path, field=rating_field, fix=fix, line_of=inter.line_of
        )
        if rating_field
        else pa.nulls(n, pa.float32())
    )
    if rating_field and rating.null_count:
        row = int(np.flatnonzero(rating.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError(
            f"{rating_field} is empty", file=inter_path, line=inter.line_of(row), field=rating_field, fix=fix
        )
    if label_field is not None:
        lab = cast_numeric(
            inter.field(label_field), pa.float64(), file=inter_path, field=label_field, fix=fix, line_of=inter.line_of
        )
        ok = pc.fill_null(pc.is_in(lab, value_set=pa.array([0.0, 1.0])), False).to_numpy(zero_copy_only=False)
        if not ok.all():
            row = int(np.flatnonzero(~ok)[0])
            raise DataError(
                f"{label_field} {inter.field(label_field)[row].as_py()!r} is not 0 or 1",
                file=inter_path,
                line=inter.line_of(row),
                field=label_field,
                fix="labels must be 0 or 1 (or leave the label field out and give a rating)",
            )
        label, given = pc.cast(lab, pa.int8()), True
    elif rating_field:
        label, given = label_from_rating(rating, cfg.label_threshold), False
    else:
        label, given = pa.array(np.ones(n, dtype=np.int8)), True
    if c.timestamp in inter.types:
        ts_f = cast_numeric(
            inter.field(c.timestamp), pa.float64(), file=inter_path, field=c.timestamp, fix=fix, line_of=inter.line_of
        )
        if ts_f.null_count:
            row = int(np.flatnonzero(ts_f.is_null().to_numpy(zero_copy_only=False))[0])
            raise DataError(
                f"{c.timestamp} is empty", file=inter_path, line=inter.line_of(row), field=c.timestamp, fix=fix
            )
        ts = np.floor(ts_f.to_numpy()).astype(np.int64)
    else:
        log.info("%s: no %r field: the row order stands in for time", inter_path, c.timestamp)
        ts = np.arange(n, dtype=np.int64)

    item_file = read_atomic(base.with_suffix(".item")) if base.with_suffix(".item").is_file() else None
    user_file = read_atomic(base.with_suffix(".user")) if base.with_suffix(".user").is_file() else None
    item_file = item_file if item_file is not None and item_file.table.num_rows else None  # a header only: none
    user_file = user_file if user_file is not None and user_file.table.num_rows else None
    item_raw, it, has_item = _entities(item_file, c.item_id, i_raw, "items")
    user_raw, ut, has_user = _entities(user_file, c.user_id, u_raw, "users")

    n_items = len(item_raw)
    title_field = _first_present(item_file, c.title, TITLE_FIELDS) if item_file else None
    if title_field is None:
        log.warning("%s: no title field: the item tokens stand in for titles", item_file.path if item_file else base)
        title = item_raw
    else:
        t = pc.utf8_trim_whitespace(it.column(title_field).combine_chunks())
        title = pc.if_else(pa.array(has_item & pc.not_equal(t, "").to_numpy(zero_copy_only=False)), t, item_raw)
    genre_field = _first_present(item_file, c.genres, GENRE_FIELDS) if item_file else None
    if genre_field is None:
        genres = pa.array([[] for _ in range(n_items)], pa.list_(pa.string()))
    else:
        g = pc.utf8_trim_whitespace(it.column(genre_field).combine_chunks())
        g = _null_where(g, ~has_item)
        sep_split = pc.utf8_split_whitespace(pc.fill_null(g, ""))
        flat = sep_split.flatten()
        keep = pc.not_equal(flat, "").to_numpy(zero_copy_only=False)
        counts = np.bincount(pc.list_parent_indices(sep_split).to_numpy(), weights=keep, minlength=n_items)
        genres = pa.ListArray.from_arrays(
            pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)), flat.filter(pa.array(keep))
        )
    year_field = _first_present(item_file, None, YEAR_FIELDS) if item_file else None
    year = (
        _null_where(year_from_text(it.column(year_field).combine_chunks()), ~has_item)
        if year_field
        else pa.nulls(n_items, pa.int32())
    )
    items = {
        "item_id": pa.array(np.arange(n_items, dtype=np.int64)),
        "title": pc.cast(title, pa.string()),
        "genres": genres,
        "year": year,
        "raw_item_id": item_raw,
    }
    if item_file is not None:
        used = {c.item_id, title_field, genre_field, year_field}
        for name in item_file.types:
            if name not in used and name not in _CANONICAL:
                items[name] = _null_where(it.column(name).combine_chunks(), ~has_item)
    users = {"user_id": pa.array(np.arange(len(user_raw), dtype=np.int64)), "raw_user_id": user_raw}
    if user_file is not None:
        for name in user_file.types:
            if name != c.user_id and name not in _CANONICAL:
                users[name] = _null_where(ut.column(name).combine_chunks(), ~has_user)
    table = interactions_table(
        dense_index(u_raw, user_raw), dense_index(i_raw, item_raw), rating, ts, label, given=given
    )
    return Dataset(name=NAME, interactions=table, items=pa.table(items), users=pa.table(users))


def load(cfg: DataConfig) -> Dataset:
    return load_recbole(dataset_folder(cfg), cfg)


def input_files(cfg: DataConfig) -> list[Path]:
    """The ``.inter`` file and its ``.item`` / ``.user`` (their digests enter the dataset stage's cache key)."""
    try:
        inter = _inter_path(dataset_folder(cfg))
    except DataError:  # the loader reports it
        return []
    base = inter.with_suffix("")
    return [inter] + [p for p in (base.with_suffix(".item"), base.with_suffix(".user")) if p.is_file()]
