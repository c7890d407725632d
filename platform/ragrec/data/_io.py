"""Vectorised readers for delimited text files that still report errors by line number.

Files are read with ``pyarrow.csv`` into string columns (one pass, multi-threaded); numeric
conversion happens column-wise with ``pyarrow.compute``. Only on the error path do we look for the
first offending row and translate its row index into a physical line number of the file.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from ._ids import first_duplicate
from .errors import DataError

_SEP_NAMES = {"\t": "tab", ",": "comma", ";": "semicolon", "|": "'|'", "::": "'::'", " ": "space"}
_MULTI_CHAR_SUBSTITUTE = "\x1f"  # ASCII unit separator: stands in for '::' (pyarrow needs 1 char)
_INT_RE = r"^\s*[+-]?\d+\s*$"
_FLOAT_RE = r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$"


def sep_name(sep: str) -> str:
    """Human name of a separator, e.g. ``'\\t' -> 'tab'``."""
    return _SEP_NAMES.get(sep, repr(sep))


@dataclass
class Delimited:
    """A delimited file read into all-string columns, remembering how to find line numbers.

    Attributes:
        path: the file.
        table: ``(n_rows,)`` columns of ``pa.string()``, one per declared field name.
        buf: the file's bytes as parsed (UTF-8, multi-char separators substituted).
    """

    path: Path
    table: pa.Table
    buf: bytes

    def line_of(self, row: int) -> int:
        """1-based physical line number of data row ``row`` (empty lines are skipped by the reader)."""
        arr = np.frombuffer(self.buf, dtype=np.uint8)
        ends = np.flatnonzero(arr == ord("\n"))
        starts = np.concatenate([[0], ends + 1])
        stops = np.concatenate([ends, [len(arr)]])
        # a line is empty when it has no bytes (or only '\r')
        length = stops - starts
        cr_only = (length == 1) & (arr[np.minimum(starts, max(len(arr) - 1, 0))] == ord("\r"))
        nonempty = np.flatnonzero((length > 0) & ~cr_only)
        return int(nonempty[row]) + 1 if row < len(nonempty) else len(starts)


def _line_of_text(buf: bytes, text: str) -> int | None:
    needle = text.encode("utf-8")
    if buf.startswith((needle + b"\n", needle + b"\r")) or buf == needle:
        return 1
    pos = buf.find(b"\n" + needle + b"\n")
    if pos < 0:
        pos = buf.find(b"\n" + needle)
    if pos < 0:
        return None
    return buf.count(b"\n", 0, pos + 1) + 1


def read_string_columns(
    buf: bytes, names: Sequence[str], *, skip_rows: int = 0, **parse: Any
) -> tuple[pa.Table, list[pacsv.InvalidRow]]:
    """``buf`` read by ``pyarrow.csv`` into one non-null ``pa.string()`` column per field, and the rows it skipped.

    Args:
        buf: UTF-8 text, one record per line (empty lines skipped).
        names: the column names, one per field.
        skip_rows: leading lines not read (a header).
        **parse: :class:`pyarrow.csv.ParseOptions` fields (``delimiter``, ``quote_char``, ...).

    Returns:
        ``(table, bad)``: the ``(n_rows,)`` table of the well-formed rows, and the rows with a number of fields
        other than ``len(names)`` (left out of the table) as :class:`pyarrow.csv.InvalidRow`.
    """
    bad: list[pacsv.InvalidRow] = []

    def _on_invalid(row: pacsv.InvalidRow) -> str:
        bad.append(row)
        return "skip"

    table = pacsv.read_csv(
        io.BytesIO(buf),
        read_options=pacsv.ReadOptions(column_names=list(names), skip_rows=skip_rows),
        parse_options=pacsv.ParseOptions(invalid_row_handler=_on_invalid, **parse),
        convert_options=pacsv.ConvertOptions(
            column_types={n: pa.string() for n in names}, strings_can_be_null=False, quoted_strings_can_be_null=False
        ),
    )
    return table, bad


def _guess_sep(line: str, n_fields: int) -> str | None:
    """The separator among the usual ones that splits ``line`` into ``n_fields`` (or most) fields."""
    best, best_n = None, 1
    for cand in ("::", "\t", "|", ",", ";", " "):
        k = len(line.split(cand))
        if k == n_fields:
            return cand
        if k > best_n:
            best, best_n = cand, k
    return best


def read_delimited(
    path: Path,
    sep: str,
    names: list[str],
    *,
    encoding: str = "latin-1",
    describe: str,
    fix: str,
    missing_fix: str,
) -> Delimited:
    """Read a header-less delimited file into string columns named ``names``.

    Args:
        path: the file.
        sep: its field separator (``"\\t"``, ``"|"``, ``"::"`` ...).
        names: the field names, in order; every line must have exactly ``len(names)`` fields.
        encoding: the file's text encoding (MovieLens files are latin-1).
        describe: what the fields are, for messages (e.g. ``"user id, item id, rating, timestamp"``).
        fix: what to do when the file is malformed.
        missing_fix: what to do when the file does not exist.

    Raises:
        DataError: missing file; first line not split into ``len(names)`` fields by ``sep`` (with
            the separator the line seems to use); any later line with the wrong number of fields.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"file not found (expected {describe})", file=path, fix=missing_fix)
    raw = path.read_bytes()
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"not valid {encoding} text (byte {e.start})", file=path, line=line, fix=fix) from None
    first = next((ln.rstrip("\r") for ln in text.split("\n", 20)[:20] if ln.strip()), None)
    if first is None:
        raise DataError(f"file is empty (expected lines of {describe})", file=path, fix=fix)
    n_first = len(first.split(sep))
    if n_first != len(names):
        guess = _guess_sep(first, len(names))
        seen = f"; the line looks {sep_name(guess)}-separated" if guess and guess != sep else ""
        raise DataError(
            f"expected {len(names)} {sep_name(sep)}-separated fields ({describe}), found {n_first}{seen}",
            file=path,
            line=text[: text.find(first)].count("\n") + 1,
            fix=fix,
        )
    if len(sep) > 1:
        text = text.replace(sep, _MULTI_CHAR_SUBSTITUTE)
        sep = _MULTI_CHAR_SUBSTITUTE
    buf = text.encode("utf-8")
    table, bad = read_string_columns(buf, names, delimiter=sep, quote_char=False)
    if bad:
        row = bad[0]
        line = row.number if row.number is not None else _line_of_text(buf, row.text)
        shown = row.text.replace(_MULTI_CHAR_SUBSTITUTE, "::")[:80]
        raise DataError(
            f"expected {len(names)} {sep_name(sep if sep != _MULTI_CHAR_SUBSTITUTE else '::')}-separated "
            f"fields ({describe}), found {row.actual_columns}: {shown!r}"
            + (f" ({len(bad)} malformed lines in all)" if len(bad) > 1 else ""),
            file=path,
            line=line,
            fix=fix,
        )
    return Delimited(path=path, table=table, buf=buf)


def cast_numeric(
    col: pa.Array | pa.ChunkedArray,
    typ: pa.DataType,
    *,
    file: Path | str,
    field: str,
    fix: str,
    line_of: Callable[[int], int],
    line_word: str = "line",
) -> pa.Array:
    """Convert a string or numeric column ``(n,)`` to the numeric type ``typ`` (nulls stay null).

    Raises:
        DataError: ``"<file> line N: <field> 'x' is not a number"`` (or "an integer") for the first
            offending row, ``line_of(row)`` giving its line number.
    """
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    is_int = pa.types.is_integer(typ)
    what = "an integer" if is_int else "a number"
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        col = pc.utf8_trim_whitespace(col)
    try:
        return pc.cast(col, typ)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        ok = pc.fill_null(pc.match_substring_regex(col, _INT_RE if is_int else _FLOAT_RE), True)
    elif pa.types.is_floating(col.type) and is_int:
        ok = pc.fill_null(pc.equal(pc.floor(col), col), True)
    else:
        ok = pa.array(np.zeros(len(col), dtype=bool))
    bad_rows = np.flatnonzero(~ok.to_numpy(zero_copy_only=False))
    if len(bad_rows) == 0:  # parses but does not fit (e.g. overflow)
        raise DataError(f"{field} values ({col.type}) do not fit {typ}", file=file, field=field, fix=fix)
    row = int(bad_rows[0])
    value = col[row].as_py()
    problem = f"{field} is empty" if value == "" else f"{field} {value!r} is not {what}"
    raise DataError(problem, file=file, line=line_of(row), field=field, fix=fix, line_word=line_word)


def numeric_column(data: Delimited, name: str, typ: pa.DataType, *, fix: str) -> pa.Array:
    """Column ``name`` of a :class:`Delimited` file converted to ``typ``; errors name the line."""
    return cast_numeric(data.table.column(name), typ, file=data.path, field=name, fix=fix, line_of=data.line_of)


def unique_ids(data: Delimited, name: str, *, what: str, fix: str, parse_fix: str | None = None) -> pa.Array:
    """Column ``name`` of an entity file as ``(n,) int64`` ids, each listed once, in file order.

    Args:
        data: the file.
        name: the id column.
        what: the id's name in messages (e.g. ``"MovieID"``).
        fix: the fix of an id listed twice.
        parse_fix: the fix of a value that is not an integer (default: ``fix``).

    Raises:
        DataError: a value that is not an integer, or ``"<file> line N: <what> 7 appears twice"`` naming the
            second line of the first id listed twice.
    """
    ids = numeric_column(data, name, pa.int64(), fix=fix if parse_fix is None else parse_fix)
    dup = first_duplicate(ids)
    if dup is not None:
        raise DataError(
            f"{what} {ids[dup].as_py()} appears twice", file=data.path, line=data.line_of(dup), field=name, fix=fix
        )
    return ids


def first_true(mask: np.ndarray) -> int | None:
    """Index of the first True in a boolean array, or None."""
    idx = np.flatnonzero(mask)
    return int(idx[0]) if len(idx) else None
