"""The ``generic`` dataset: a user's own interactions + items (+ users) files with declared columns.

Files are ``.parquet`` or ``.csv`` (``.tsv`` tab-separated; ``data.separator`` and ``data.encoding`` override
the ',' / UTF-8 defaults of text files); column names come from
``cfg.columns`` (:class:`ragrec.config.GenericColumns`). Labels are either derived from a rating
column (``label = rating > cfg.label_threshold``) or read from a 0/1 label column. Raw ids (strings
or integers) become dense ids ``0..n-1`` in ascending raw-id order; the raw ids are kept in
``raw_item_id`` / ``raw_user_id``. Item columns other than the declared ones pass through as extras.

Checks beyond parsing: every item needs a title; ratings must lie in ``data.rating_range`` (default 0 .. 1000)
and numeric timestamps must be seconds (above 1e11 is the year 5000+); what happens to the rows that do not is
``data.on_out_of_range``: ``error`` (default, naming the first line), ``drop`` (with a logged count) or ``keep``.
A file whose timestamps are mostly above 1e11 holds milliseconds: an error under every policy unless
``data.timestamp_unit: ms``. Interactions repeating (user, item, timestamp) follow ``data.on_duplicate``:
``drop`` (default: exact duplicates, equal in rating/label and split too, are dropped with a logged count,
while rows differing otherwise are an error naming both lines), ``error`` (any repeat is an error naming both
lines) or ``keep`` (every row stays, each its own sample).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from ..config import DataConfig
from ._ids import dense_index, first_duplicate, sorted_unique, year_from_title
from ._io import cast_numeric, sep_name
from .dataset import Dataset
from .errors import DataError
from .schemas import INTERACTIONS, with_label_source

_CANONICAL = {"item_id", "user_id", "title", "genres", "year", "raw_item_id", "raw_user_id"}
_DEFAULT_RATING_RANGE = (0.0, 1000.0)
_MAX_SECONDS = 1e11  # seconds since the epoch beyond this are the year 5138+: milliseconds read as seconds
log = logging.getLogger("ragrec.data.generic")


class _File:
    """A generic input file read into Arrow, with row -> line translation for messages."""

    def __init__(self, path: Path, role: str, encoding: str = "utf-8", separator: str | None = None):
        self.path = path
        self.role = role
        self.is_csv = path.suffix.lower() in (".csv", ".tsv")
        self.encoding = encoding
        self.delim = separator or ("\t" if path.suffix.lower() == ".tsv" else ",")
        self.table = self._read()
        if self.is_csv:
            self._check_text()
        if self.table.num_rows == 0:
            raise DataError(
                f"the {role} file has {'a header but no rows' if self.is_csv else 'no rows'}",
                file=self.path,
                fix=f"add the {role} to it, or point data.{role}_file at the file that holds them",
            )

    def _check_text(self) -> None:
        """A column pyarrow could not decode as text (it falls back to binary): DataError naming the encoding."""
        for name, col in zip(self.table.schema.names, self.table.columns):
            if not (pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type)):
                continue
            row = None
            for k, v in enumerate(col.to_pylist()):
                try:
                    if v is not None:
                        v.decode("utf-8")
                except UnicodeDecodeError:
                    row = k
                    break
            other = "latin-1" if self.encoding.lower().replace("_", "-") in ("utf-8", "utf8") else "utf-8"
            raise self.error(
                f"column '{name}' is not valid {self.encoding} text",
                row,
                name,
                f"set data.encoding to the file's encoding (e.g. {other} or cp1252), or save the file as UTF-8",
            )

    def _read(self) -> pa.Table:
        if not self.path.is_file():
            raise DataError(
                f"{self.role} file not found",
                file=self.path,
                fix=f"set data.{self.role}_file to an existing .parquet or .csv file "
                "(relative paths resolve against data.path)",
            )
        suffix = self.path.suffix.lower()
        try:
            if suffix in (".parquet", ".pq"):
                return pq.read_table(self.path)
            if self.is_csv:
                return pacsv.read_csv(
                    self.path,
                    read_options=pacsv.ReadOptions(encoding=self.encoding),
                    parse_options=pacsv.ParseOptions(delimiter=self.delim),
                )
        except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as e:
            problem = str(e).splitlines()[0] if str(e) else type(e).__name__
            fix = "write it as Parquet, or as CSV with a header line and ',' separators (or set data.separator)"
            if isinstance(e, UnicodeDecodeError):
                fix = f"set data.encoding to the file's encoding (it is not {self.encoding}), or save it as UTF-8"
            raise DataError(f"cannot read {self.role} file: {problem}", file=self.path, fix=fix) from None
        raise DataError(
            f"unsupported {self.role} file type '{suffix}'",
            file=self.path,
            fix="use a .parquet, .csv or .tsv file",
        )

    @property
    def line_word(self) -> str:
        return "line" if self.is_csv else "row"

    def line_of(self, row: int) -> int:
        """CSV: physical line (header is line 1); Parquet: 1-based row number."""
        return row + 2 if self.is_csv else row + 1

    def column(self, name: str, key: str, *, optional: bool = False) -> pa.Array:
        """Declared column ``name`` (config field ``data.columns.<key>``), as one array."""
        if name not in self.table.schema.names:
            alt = " or null" if optional else ""
            fix = f"set data.columns.{key} to one of the available columns{alt}"
            seps = [
                s for s in (";", "\t", "|", ",") if s != self.delim and any(s in n for n in self.table.schema.names)
            ]
            if self.is_csv and seps:
                fix = (
                    f"the header looks {sep_name(seps[0])}-separated, not {sep_name(self.delim)}-separated: "
                    f"set data.separator: {seps[0]!r}"
                )
            raise DataError(
                f"column '{name}' (data.columns.{key}) not found; available columns: "
                + ", ".join(self.table.schema.names),
                file=self.path,
                field=name,
                fix=fix,
            )
        return self.table.column(name).combine_chunks()

    def error(self, problem: str, row: int | None, field: str | None, fix: str) -> DataError:
        return DataError(
            problem,
            file=self.path,
            line=None if row is None else self.line_of(row),
            field=field,
            fix=fix,
            line_word=self.line_word,
        )

    def numeric(self, col: pa.Array, typ: pa.DataType, field: str) -> pa.Array:
        return cast_numeric(
            col,
            typ,
            file=self.path,
            field=field,
            line_of=self.line_of,
            line_word=self.line_word,
            fix=f"make every value of column '{field}' numeric",
        )

    def ids(self, name: str, key: str) -> pa.Array:
        col = self.column(name, key)
        if col.null_count:
            row = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
            raise self.error(f"{name} is empty", row, name, f"give every row of {self.path.name} a {name}")
        if pa.types.is_floating(col.type):
            col = self.numeric(col, pa.int64(), name)
        return col


def _resolve(cfg: DataConfig, name: str | None) -> Path | None:
    if name is None:
        return None
    p = Path(name).expanduser()
    if not p.is_absolute() and cfg.path:
        p = (cfg.resolved_path() or Path(".")) / p
    return p


def _epoch_seconds(f: _File, ts: pa.Array, field: str, unit: str, policy: str = "error") -> pa.Array:
    """Numeric timestamps in ``unit`` (``data.timestamp_unit``) -> seconds; seconds above 1e11 are an error,
    unless ``policy`` (``data.on_out_of_range``) is drop / keep and they are a minority (the caller drops them)."""
    if unit == "ms":
        return pc.cast(pc.floor(pc.divide(pc.cast(ts, pa.float64()), 1000.0)), pa.int64())
    big = np.flatnonzero(pc.fill_null(pc.greater(ts, _MAX_SECONDS), False).to_numpy(zero_copy_only=False))
    if len(big) and (policy == "error" or 2 * len(big) >= len(ts)):
        row = int(big[0])
        raise f.error(
            f"{field} {ts[row].as_py()} is not seconds since the epoch (it would be after the year 5000; "
            f"{len(big)} timestamps are): it looks like milliseconds",
            row,
            field,
            f"set data.timestamp_unit: ms, or divide column '{field}' by 1000"
            + ("" if 2 * len(big) >= len(ts) else "; or set data.on_out_of_range: drop to drop those rows"),
        )
    return ts


def _timestamps(f: _File, col: pa.Array, field: str, unit: str = "s", policy: str = "error") -> pa.Array:
    """``(n,) int64`` seconds since the epoch from integer, float (both in ``unit``), timestamp, date or
    ISO-string columns."""
    if pa.types.is_timestamp(col.type) or pa.types.is_date(col.type):
        return pc.cast(pc.cast(col, pa.timestamp("s")), pa.int64())
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        try:
            return _epoch_seconds(f, f.numeric(col, pa.int64(), field), field, unit, policy)
        except DataError as e:
            if "timestamp_unit" in (e.fix or ""):
                raise
        try:
            return pc.cast(pc.cast(col, pa.timestamp("s")), pa.int64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            import pandas as pd

            bad = pd.to_datetime(
                pd.Series(col.to_numpy(zero_copy_only=False)), errors="coerce", format="ISO8601"
            ).isna()
            numeric = pc.fill_null(pc.match_substring_regex(col, r"^\s*[+-]?\d+(\.\d*)?\s*$"), False)
            bad &= ~numeric.to_numpy(zero_copy_only=False)  # the first value that is neither
            row = int(np.flatnonzero(bad.to_numpy())[0]) if bad.any() else None
            shown = f" {col[row].as_py()!r}" if row is not None else ""
            raise f.error(
                f"{field}{shown} is neither seconds since the epoch nor an ISO date/time",
                row,
                field,
                f"write column '{field}' as integer seconds or ISO 8601 (2020-01-31T12:00:00)",
            ) from None
    if unit == "ms":  # keep sub-second precision until the division
        return _epoch_seconds(f, f.numeric(col, pa.float64(), field), field, unit)
    return _epoch_seconds(f, f.numeric(col, pa.int64(), field), field, unit, policy)


def _genres(col: pa.Array | None, sep: str, n: int) -> pa.ListArray:
    """``(n,) list<string>`` genres from a separated string column or a list column; empties dropped."""
    if col is None:
        return pa.ListArray.from_arrays(pa.array(np.zeros(n + 1, dtype=np.int32)), pa.array([], pa.string()))
    lists = col if pa.types.is_list(col.type) else pc.split_pattern(pc.fill_null(pc.cast(col, pa.string()), ""), sep)
    lists = pc.fill_null(lists, pa.scalar([], lists.type))
    flat = pc.utf8_trim_whitespace(pc.cast(pc.list_flatten(lists), pa.string()))
    parents = pc.list_parent_indices(lists).to_numpy()
    keep = pc.fill_null(pc.not_equal(flat, ""), False).to_numpy(zero_copy_only=False)
    counts = np.bincount(parents[keep], minlength=n)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), flat.filter(pa.array(keep)))


def _has_genres(f: _File, cfg: DataConfig) -> bool:
    """Whether to read a genres column: ``data.columns.genres`` is set and, when it is only the default
    name ``genres``, the file has that column. A file with no genres column at all (e.g. item_id, title)
    then gets empty genre lists; an explicitly declared column, or one whose name looks like a genre
    column, that is missing stays an error (see :meth:`_File.column`)."""
    c = cfg.columns
    if c.genres is None:
        return False
    names = f.table.schema.names
    if c.genres in names or "genres" in c.model_fields_set:
        return True
    return any("genre" in n.lower() for n in names)


def _titles(f: _File, name: str, raw: pa.Array) -> pa.Array:
    """``(n,) string`` titles in file order; DataError naming the items without one (descriptions need them)."""
    col = f.column(name, "title")
    try:
        title = pc.cast(col, pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise f.error(
            f"column '{name}' is not text ({e})", None, name, "set data.encoding, or write the titles as UTF-8 text"
        ) from None
    empty = pc.fill_null(pc.equal(pc.utf8_trim_whitespace(title), ""), True).to_numpy(zero_copy_only=False)
    bad = np.flatnonzero(empty)
    if len(bad):
        ids = ", ".join(repr(raw[int(k)].as_py()) for k in bad[:5]) + (", ..." if len(bad) > 5 else "")
        raise f.error(
            f"{name} is empty for {len(bad)} item(s) (item ids {ids})",
            int(bad[0]),
            name,
            f"give every item a title in column '{name}' (data.columns.title), or remove those items and their "
            "interactions",
        )
    return title


def _items(f: _File, cfg: DataConfig) -> tuple[pa.Table, pa.Array]:
    c = cfg.columns
    raw = f.ids(c.item_id, "item_id")
    dup = first_duplicate(raw)
    if dup is not None:
        raise f.error(
            f"item id {raw[dup].as_py()!r} appears twice", dup, c.item_id, "give each item one row in the items file"
        )
    title = _titles(f, c.title, raw)
    order = pc.sort_indices(raw)
    t = f.table.take(order)
    raw = raw.take(order)
    title = title.take(order)
    genres_col = f.column(c.genres, "genres", optional=True).take(order) if _has_genres(f, cfg) else None
    genres = _genres(genres_col, c.genres_sep, len(raw))
    if "year" in t.schema.names and c.title != "year":
        year = f.numeric(f.table.column("year"), pa.int32(), "year").take(order)
    else:
        year = year_from_title(title)
    cols = {
        "item_id": pa.array(np.arange(len(raw), dtype=np.int64)),
        "title": title,
        "genres": genres,
        "year": year,
        "raw_item_id": raw,
    }
    used = {c.item_id, c.title, c.genres, "year"}
    for name in t.schema.names:
        if name not in used and name not in _CANONICAL:
            cols[name] = t.column(name)
    return pa.table(cols), raw


def _users(f: _File, cfg: DataConfig) -> tuple[pa.Table, pa.Array]:
    key = cfg.columns.user_id
    raw = f.ids(key, "user_id")
    dup = first_duplicate(raw)
    if dup is not None:
        raise f.error(
            f"user id {raw[dup].as_py()!r} appears twice", dup, key, "give each user one row in the users file"
        )
    order = pc.sort_indices(raw)
    t = f.table.take(order)
    cols = {"user_id": pa.array(np.arange(len(raw), dtype=np.int64)), "raw_user_id": raw.take(order)}
    for name in t.schema.names:
        if name != key and name not in _CANONICAL:
            cols[name] = t.column(name)
    return pa.table(cols), raw.take(order)


def _check_known(f: _File, dense: np.ndarray, raw: pa.Array, field: str, other: Path) -> None:
    bad = np.flatnonzero(dense < 0)
    if len(bad):
        row = int(bad[0])
        raise f.error(
            f"{field} {raw[row].as_py()!r} is not in {other} ({len(bad)} interactions refer to unknown ids)",
            row,
            field,
            f"add the missing rows to {other.name} or drop those interactions",
        )


def _labels(f: _File, cfg: DataConfig, rating: pa.Array | None) -> pa.Array:
    """``(n,) int8`` labels: the declared 0/1 label column, else ``rating > cfg.label_threshold``."""
    c = cfg.columns
    if c.label is None:
        assert rating is not None
        if rating.null_count:
            row = int(np.flatnonzero(rating.is_null().to_numpy(zero_copy_only=False))[0])
            raise f.error(
                f"{c.rating} is empty", row, c.rating, "give every interaction a rating, or declare data.columns.label"
            )
        return pc.cast(pc.greater(rating, pa.scalar(cfg.label_threshold, pa.float32())), pa.int8())
    col = f.column(c.label, "label")
    if pa.types.is_boolean(col.type):
        col = pc.cast(col, pa.int8())
    col = f.numeric(col, pa.float64(), c.label)
    ok = pc.fill_null(pc.is_in(col, value_set=pa.array([0.0, 1.0])), False).to_numpy(zero_copy_only=False)
    if not ok.all():
        row = int(np.flatnonzero(~ok)[0])
        raise f.error(
            f"{c.label} {col[row].as_py()!r} is not 0 or 1", row, c.label, "labels must be 0/1 (or true/false)"
        )
    return pc.cast(col, pa.int8())


def _rating_outliers(f: _File, cfg: DataConfig, rating: pa.Array) -> np.ndarray:
    """``(n,) bool``: ratings outside ``data.rating_range`` (default 0 .. 1000), NaN included; with
    ``data.on_out_of_range: error`` (the default) a DataError naming the first one instead, ``keep``: none."""
    lo, hi = cfg.rating_range or _DEFAULT_RATING_RANGE
    if cfg.on_out_of_range == "keep":
        return np.zeros(len(rating), dtype=bool)
    r = rating.to_numpy(zero_copy_only=False).astype(np.float64)  # nulls -> NaN
    out = ~((r >= lo) & (r <= hi)) & ~rating.is_null().to_numpy(zero_copy_only=False)
    bad = np.flatnonzero(out)
    if len(bad) and cfg.on_out_of_range == "error":
        row = int(bad[0])
        name = cfg.columns.rating
        fix = (
            f"correct the {name} values, or set data.rating_range: [min, max] to your rating scale"
            if cfg.rating_range is None
            else f"correct the {name} values, or widen data.rating_range"
        ) + " (data.on_out_of_range: drop drops those rows)"
        raise f.error(
            f"{name} {rating[row].as_py()} is outside the plausible range [{lo:g}, {hi:g}] "
            f"({len(bad)} of {len(r)} ratings)",
            row,
            name,
            fix,
        )
    return out


def _drop_duplicates(
    f: _File, inter: pa.Table, u_raw: pa.Array, i_raw: pa.Array, policy: str = "drop", rows: np.ndarray | None = None
) -> pa.Table:
    """Interactions repeating (user, item, timestamp) per ``policy`` (``data.on_duplicate``, module docstring).

    ``rows`` (n,): the file row of each interaction (default: 0..n-1), for the line numbers of messages;
    ``u_raw`` / ``i_raw`` are indexed by file row."""
    if policy == "keep":
        return inter
    rows = np.arange(inter.num_rows) if rows is None else rows
    user, item, ts = (inter.column(n).to_numpy() for n in ("user_id", "item_id", "timestamp"))
    order = np.lexsort((ts, item, user))  # stable: file order within equal keys
    a, b = order[:-1], order[1:]
    same = (user[a] == user[b]) & (item[a] == item[b]) & (ts[a] == ts[b])
    if not same.any():
        return inter
    a, b = a[same], b[same]
    if policy == "error":
        first, second = sorted((int(rows[a[0]]), int(rows[b[0]])))
        raise f.error(
            f"user {u_raw[first].as_py()!r} and item {i_raw[first].as_py()!r} appear twice with timestamp "
            f"{ts[a[0]]} (also {f.line_word} {f.line_of(second)}; {len(a)} repeated rows in all)",
            first,
            None,
            "keep one row per (user, item, timestamp) in the interactions file, or set data.on_duplicate: drop "
            "(drop exact duplicates) or keep (keep every row)",
        )
    equal = np.ones(len(a), dtype=bool)
    for name in inter.schema.names:
        if name in ("user_id", "item_id", "timestamp"):
            continue
        col = inter.column(name).combine_chunks()
        v = np.asarray(col.to_pylist(), dtype=object) if col.null_count else col.to_numpy(zero_copy_only=False)
        equal &= np.asarray(v[a] == v[b], dtype=bool)
    if not equal.all():
        k = int(np.flatnonzero(~equal)[0])
        first, second = sorted((int(rows[a[k]]), int(rows[b[k]])))
        raise f.error(
            f"user {u_raw[first].as_py()!r} and item {i_raw[first].as_py()!r} appear twice with timestamp "
            f"{ts[a[k]]} but different values (also {f.line_word} {f.line_of(second)})",
            first,
            None,
            "keep one row per (user, item, timestamp) in the interactions file, or set data.on_duplicate: keep "
            "(every row becomes a sample)",
        )
    keep = np.ones(inter.num_rows, dtype=bool)
    keep[b] = False
    log.warning(
        "%s: dropped %d exact duplicate interactions (same user, item, timestamp and values)",
        f.path,
        int((~keep).sum()),
    )
    return inter.filter(pa.array(keep))


_SPLIT_VALUES = ("train", "valid", "test")


def _split(f: _File, cfg: DataConfig) -> pa.Array:
    """``(n,) string`` train / valid / test from the declared split column (trimmed, lower-cased).

    Empty cells become null: such interactions only serve as history, they are no samples.

    Raises:
        DataError: any other value, with the file, line and the allowed values.
    """
    name = cfg.columns.split
    col = f.column(name, "split")
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        col = pc.cast(col, pa.string())
    col = pc.utf8_lower(pc.utf8_trim_whitespace(col))
    col = pc.if_else(pc.equal(col, ""), pa.scalar(None, col.type), col)
    ok = pc.or_kleene(pc.is_null(col), pc.is_in(col, value_set=pa.array(_SPLIT_VALUES, col.type)))
    bad = np.flatnonzero(~ok.to_numpy(zero_copy_only=False))
    if len(bad):
        row = int(bad[0])
        raw = f.table.column(name).combine_chunks()[row].as_py()
        raise f.error(
            f"{name} {raw!r} is not one of {', '.join(_SPLIT_VALUES)} ({len(bad)} rows have other values)",
            row,
            name,
            f"write train, valid or test in column '{name}' (data.columns.split); leave it empty for "
            "interactions that only serve as history",
        )
    return pc.cast(col, pa.string())


def load_generic(cfg: DataConfig) -> Dataset:
    """Load the user's own files named by ``cfg.interactions_file``, ``items_file``, ``users_file``.

    Returns:
        Dataset ``generic``: interactions ``(n_ratings,)`` with ``rating`` null where only labels
        were given, plus a ``split`` string column (train / valid / test / null) when
        ``data.columns.split`` is set (the ``temporal`` protocol then uses it); items ``(n_items,)``
        with ``raw_item_id`` and extras (empty genre lists when the file has no genres column);
        users ``(n_users,)`` with ``raw_user_id`` (+ profile columns) when a users file is given,
        else None.

    Raises:
        DataError: missing file or declared column (listing the available columns), non-numeric
            rating/label/timestamp (with its line), a split value other than train/valid/test,
            duplicate ids, interactions with unknown items.
    """
    c = cfg.columns
    if cfg.interactions_file is None or cfg.items_file is None:
        raise DataError(
            "the generic dataset needs an interactions file and an items file",
            field="data.interactions_file / data.items_file",
            fix="set data.interactions_file and data.items_file (.parquet or .csv)",
        )
    if c.rating is None and c.label is None:
        raise DataError(
            "neither a rating nor a label column is declared",
            field="data.columns",
            fix="set data.columns.rating or data.columns.label",
        )
    text = {"encoding": cfg.encoding, "separator": cfg.separator}
    inter_f = _File(_resolve(cfg, cfg.interactions_file), "interactions", **text)
    items_f = _File(_resolve(cfg, cfg.items_file), "items", **text)
    items, item_raw = _items(items_f, cfg)
    users, user_raw = None, None
    if cfg.users_file is not None:
        users_f = _File(_resolve(cfg, cfg.users_file), "users", **text)
        users, user_raw = _users(users_f, cfg)

    u_raw = inter_f.ids(c.user_id, "user_id")
    i_raw = inter_f.ids(c.item_id, "item_id")
    item_dense = dense_index(i_raw, item_raw)
    _check_known(inter_f, item_dense, i_raw, c.item_id, items_f.path)
    if user_raw is None:
        user_raw = sorted_unique(u_raw)
    user_dense = dense_index(u_raw, user_raw)
    if users is not None:
        _check_known(inter_f, user_dense, u_raw, c.user_id, users_f.path)
    ts = _timestamps(
        inter_f, inter_f.column(c.timestamp, "timestamp"), c.timestamp, cfg.timestamp_unit, cfg.on_out_of_range
    )
    if ts.null_count:
        row = int(np.flatnonzero(ts.is_null().to_numpy(zero_copy_only=False))[0])
        raise inter_f.error(f"{c.timestamp} is empty", row, c.timestamp, "give every interaction a timestamp")
    rating = None
    drop = np.zeros(len(ts), dtype=bool)
    if c.rating is not None:
        rating = inter_f.numeric(
            inter_f.column(c.rating, "rating", optional=c.label is not None), pa.float32(), c.rating
        )
        drop = _rating_outliers(inter_f, cfg, rating)
    label = _labels(inter_f, cfg, rating)
    if rating is None:
        rating = pa.nulls(len(label), pa.float32())
    inter = pa.Table.from_arrays([pa.array(user_dense), pa.array(item_dense), rating, ts, label], schema=INTERACTIONS)
    if c.split is not None:
        inter = inter.append_column(pa.field("split", pa.string()), _split(inter_f, cfg))
    rows = np.arange(inter.num_rows)
    late = pc.fill_null(pc.greater(ts, _MAX_SECONDS), False).to_numpy(zero_copy_only=False)
    if cfg.on_out_of_range == "drop" and (drop.any() or late.any()):
        keep = ~(drop | late)
        if not keep.any():
            raise DataError(
                f"every interaction is out of range ({int(drop.sum())} ratings outside "
                f"{list(cfg.rating_range or _DEFAULT_RATING_RANGE)}, {int(late.sum())} timestamps after the year 5000)",
                file=inter_f.path,
                fix="set data.rating_range to your rating scale and data.timestamp_unit to the timestamps' unit",
            )
        log.warning(
            "%s: dropped %d interactions out of range (data.on_out_of_range: drop): %d ratings outside %s, "
            "%d timestamps after the year 5000",
            inter_f.path,
            int((~keep).sum()),
            int(drop.sum()),
            list(cfg.rating_range or _DEFAULT_RATING_RANGE),
            int(late.sum()),
        )
        inter, rows = inter.filter(pa.array(keep)), rows[keep]
    inter = _drop_duplicates(inter_f, inter, u_raw, i_raw, cfg.on_duplicate, rows)
    return Dataset(
        name="generic", interactions=with_label_source(inter, given=c.label is not None), items=items, users=users
    )
