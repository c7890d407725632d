"""Helpers shared by the loaders of :mod:`ragrec.data.sources`: finding files, reading gzip or plain text, parsing
one record per line (JSON or Python literals, in parallel processes for big files), and assembling the canonical
tables (dense ids in ascending raw-id order, labels from ratings or given)."""

from __future__ import annotations

import ast
import gzip
import json
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path
from typing import IO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..dataset import Dataset
from ..errors import DataError
from ..schemas import INTERACTIONS, with_label_source

log = logging.getLogger("ragrec.data.sources")

PARALLEL_BYTES = 32 << 20  # files larger than this are parsed line by line in worker processes
_CHUNK_LINES = 20_000


def fetch_fix(dataset: str, extra: str = "") -> str:
    """The usual fix for a missing dataset file: fetch it, or point the config at the folder that holds it."""
    return (
        f"run `ragrec data fetch {dataset}{extra}`, or point RAGREC_DATA_DIR at the folder holding '{dataset}/' "
        f"(or set data.path to the {dataset} folder itself)"
    )


def check_folder(folder: Path, dataset: str, extra: str = "") -> None:
    """DataError when the dataset folder does not exist."""
    if not folder.is_dir():
        raise DataError(f"{dataset} folder does not exist", file=folder, fix=fetch_fix(dataset, extra=extra))


def find_file(folder: Path, names: Sequence[str], dataset: str, what: str, extra: str = "") -> Path:
    """The first of ``names`` that exists in ``folder``; else a DataError listing them all.

    Args:
        folder: the dataset folder.
        names: accepted file names, preferred first (e.g. ``Books_5.json.gz``, ``Books_5.json``).
        dataset: the dataset name (for the fetch command in the fix).
        what: what the file holds (for the message).
        extra: extra arguments of the fetch command (e.g. ``" --category Books"``).
    """
    check_folder(folder, dataset, extra)
    for name in names:
        if (folder / name).is_file():
            return folder / name
    present = sorted(p.name for p in folder.iterdir())[:12]
    raise DataError(
        f"{dataset} {what} not found: expected {' or '.join(names)} "
        f"(the folder holds: {', '.join(present) or 'nothing'})",
        file=folder,
        fix=fetch_fix(dataset, extra=extra),
    )


def open_binary(path: Path) -> IO[bytes]:
    """``path`` opened for reading bytes, decompressed on the fly when it ends in ``.gz``."""
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def decode_text(raw: bytes, encodings: Sequence[str] = ("utf-8", "latin-1")) -> tuple[str, str]:
    """``(text, encoding)``: ``raw`` decoded with the first of ``encodings`` that fits (latin-1 always does)."""
    for enc in encodings[:-1]:
        try:
            return raw.decode(enc), enc
        except UnicodeDecodeError:
            continue
    return raw.decode(encodings[-1]), encodings[-1]


def nonempty_lines(buf: bytes) -> np.ndarray:
    """``(k,) int64`` 1-based numbers of the lines of ``buf`` that hold more than a line ending (the rows a CSV
    reader that skips empty lines returns, in order)."""
    arr = np.frombuffer(buf, dtype=np.uint8)
    ends = np.flatnonzero(arr == ord("\n"))
    starts = np.concatenate([[0], ends + 1])
    stops = np.concatenate([ends, [len(arr)]])
    length = stops - starts
    cr_only = (length == 1) & (arr[np.minimum(starts, max(len(arr) - 1, 0))] == ord("\r")) if len(arr) else length > 1
    return (np.flatnonzero((length > 0) & ~cr_only) + 1).astype(np.int64)


# ---- one record per line ------------------------------------------------------------------------------------
def _parse_one(text: str, kind: str) -> object:
    """One line as a Python value: ``literal`` = :func:`ast.literal_eval` (never eval), ``json`` = JSON with a
    Python-literal fallback (the 2014 Amazon files are literals)."""
    if kind == "json":
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            pass
    return ast.literal_eval(text)


def _parse_chunk(
    first_line: int, lines: list[bytes], kind: str, extract: Callable[[dict], tuple | None]
) -> tuple[list[tuple], list[int], tuple[int, str] | None]:
    """Parse lines ``first_line, first_line + 1, ...``: ``(records, their line numbers, first error)``, the error
    being ``(line, problem)``; blank lines are skipped, ``extract`` returning None drops a record."""
    out, where = [], []
    for k, raw in enumerate(lines):
        line = first_line + k
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")
        try:
            value = _parse_one(text.strip(), kind)
        except (ValueError, SyntaxError, MemoryError, RecursionError) as e:
            shown = text.strip()[:60]
            what = "a JSON object or a Python literal" if kind == "json" else "a Python literal"
            return out, where, (line, f"not {what} ({type(e).__name__}: {e}): {shown!r}...")
        if not isinstance(value, dict):
            return out, where, (line, f"expected one {{...}} record per line, found a {type(value).__name__}")
        try:
            rec = extract(value)
        except (KeyError, TypeError, ValueError) as e:
            return out, where, (line, f"{e}; the record has the keys {', '.join(map(str, value))}")
        if rec is not None:
            out.append(rec)
            where.append(line)
    return out, where, None


def _chunks(path: Path) -> Iterator[tuple[int, list[bytes]]]:
    with open_binary(path) as f:
        line, buf = 1, []
        for raw in f:
            buf.append(raw)
            if len(buf) == _CHUNK_LINES:
                yield line, buf
                line, buf = line + len(buf), []
        if buf:
            yield line, buf


def parse_records(
    path: Path,
    extract: Callable[[dict], tuple | None],
    *,
    kind: str,
    dataset: str,
    fix: str,
    workers: int | None = None,
) -> tuple[list[tuple], np.ndarray]:
    """Every non-blank line of ``path`` (gzip or plain) parsed as one record, passed through ``extract``.

    Args:
        path: the file.
        extract: a module-level function (it may run in a worker process) taking the record's dict and returning
            the tuple of values to keep, or None to leave the record out; a KeyError / TypeError / ValueError it
            raises becomes a DataError naming the line.
        kind: ``"literal"`` (Python literals, parsed with :func:`ast.literal_eval`, never ``eval``) or ``"json"``
            (JSON, falling back to a Python literal per line).
        dataset: the dataset name (for messages).
        fix: the fix of a malformed line.
        workers: processes; None = one for files up to :data:`PARALLEL_BYTES`, else up to 8. Workers are forked
            (Linux only; elsewhere the parse stays in this process): a spawned worker would re-run the caller's
            ``__main__``, which a script without a ``__name__`` guard does not survive. The children only parse
            text, so the parent's threads (Arrow, Ray) are never needed in them.

    Returns:
        ``(records, lines)``: the kept tuples in file order and ``(n,) int64`` their 1-based line numbers.

    Raises:
        DataError: the first malformed line (file, line, what is wrong), or an unreadable (truncated) file.
    """
    if workers is None:
        workers = 1 if path.stat().st_size <= PARALLEL_BYTES else max(1, min(8, os.cpu_count() or 1))
    if sys.platform != "linux" or "fork" not in get_all_start_methods():
        workers = 1
    records: list[tuple] = []
    lines: list[int] = []

    def take(result: tuple[list[tuple], list[int], tuple[int, str] | None]) -> None:
        recs, where, err = result
        if err is not None:
            raise DataError(err[1], file=path, line=err[0], fix=fix)
        records.extend(recs)
        lines.extend(where)

    try:
        if workers <= 1:
            for first, chunk in _chunks(path):
                take(_parse_chunk(first, chunk, kind, extract))
        else:
            # Python 3.12+ warns at each fork that the parent has threads (harmless here: see above)
            with warnings.catch_warnings(), ProcessPoolExecutor(workers, mp_context=get_context("fork")) as pool:
                warnings.simplefilter("ignore", DeprecationWarning)
                pending = []
                for first, chunk in _chunks(path):
                    pending.append(pool.submit(_parse_chunk, first, chunk, kind, extract))
                    if len(pending) >= 2 * workers:
                        take(pending.pop(0).result())
                for fut in pending:
                    take(fut.result())
    except (OSError, EOFError) as e:
        raise DataError(
            f"cannot read the file ({e})", file=path, fix=f"the download is incomplete: fetch {dataset} again"
        ) from None
    return records, np.asarray(lines, dtype=np.int64)


# ---- canonical tables ---------------------------------------------------------------------------------------
def list_array(lists: Sequence[Sequence[str] | None]) -> pa.ListArray:
    """``(n,) list<string>`` from Python lists (None -> empty list), values stripped, empty values dropped."""
    clean = [[str(v).strip() for v in (x or ()) if v is not None and str(v).strip()] for x in lists]
    return pa.array(clean, pa.list_(pa.string()))


def empty_lists(n: int) -> pa.ListArray:
    """``(n,) list<string>`` of empty lists (a dataset without genres)."""
    return pa.ListArray.from_arrays(pa.array(np.zeros(n + 1, dtype=np.int32)), pa.array([], pa.string()))


def first_rows(keys: pa.Array) -> np.ndarray:
    """``(k,) int64`` row of the first occurrence of each distinct key, in row order."""
    import pandas as pd

    dup = pd.Series(keys.to_numpy(zero_copy_only=False)).duplicated().to_numpy()
    return np.flatnonzero(~dup)


def label_from_rating(rating: pa.Array, threshold: float) -> pa.Array:
    """``(n,) int8`` label = rating > threshold."""
    return pc.cast(pc.greater(rating, pa.scalar(threshold, pa.float32())), pa.int8())


def interactions_table(
    user: np.ndarray,
    item: np.ndarray,
    rating: pa.Array,
    timestamp: np.ndarray | pa.Array,
    label: pa.Array,
    *,
    given: bool,
    extras: dict[str, pa.Array] | None = None,
) -> pa.Table:
    """The canonical interactions ``(n,)``: dense ``user`` / ``item`` ids, ``rating`` (float32, null for implicit
    data), ``timestamp`` (int64 seconds), ``label`` (int8); ``given`` marks labels that protocols must keep
    (else they recompute ``rating > data.label_threshold``); ``extras`` are appended columns."""
    table = pa.Table.from_arrays(
        [
            pa.array(np.asarray(user, dtype=np.int64)),
            pa.array(np.asarray(item, dtype=np.int64)),
            pc.cast(rating, pa.float32()),
            pc.cast(timestamp if isinstance(timestamp, pa.Array) else pa.array(timestamp), pa.int64()),
            pc.cast(label, pa.int8()),
        ],
        schema=INTERACTIONS,
    )
    for name, col in (extras or {}).items():
        table = table.append_column(name, col)
    return with_label_source(table, given=given)


def items_table(raw_ids: pa.Array, title: pa.Array, genres: pa.Array, year: pa.Array, **extras: pa.Array) -> pa.Table:
    """The canonical items ``(n,)``: dense ``item_id`` 0..n-1 in the order of ``raw_ids``, ``title``, ``genres``
    (``list<string>``), ``year`` (int32, null when unknown), ``raw_item_id`` = ``raw_ids``, then the ``extras``."""
    return pa.table(
        {
            "item_id": pa.array(np.arange(len(raw_ids), dtype=np.int64)),
            "title": title,
            "genres": genres,
            "year": year,
            "raw_item_id": raw_ids,
            **extras,
        }
    )


def users_table(raw_ids: pa.Array, **extras: pa.Array) -> pa.Table:
    """The canonical users ``(n,)``: dense ``user_id`` 0..n-1 in the order of ``raw_ids``, ``raw_user_id`` =
    ``raw_ids``, then the ``extras``."""
    return pa.table({"user_id": pa.array(np.arange(len(raw_ids), dtype=np.int64)), "raw_user_id": raw_ids, **extras})


def rated_dataset(
    name: str,
    items: pa.Table,
    users: pa.Table,
    user: np.ndarray,
    item: np.ndarray,
    rating: pa.Array,
    timestamp: np.ndarray | pa.Array,
    label_threshold: float,
) -> Dataset:
    """Dataset ``name`` of explicit ratings: :func:`interactions_table` of the dense ``user`` / ``item`` ids with
    ``label = rating > label_threshold`` (derived, so protocols recompute it from ``data.label_threshold``)."""
    inter = interactions_table(user, item, rating, timestamp, label_from_rating(rating, label_threshold), given=False)
    return Dataset(name=name, interactions=inter, items=items, users=users)


def reviews_with_metadata(
    known: np.ndarray, reviews: Path, metadata: Path, what: str, *, none_left: str, fix: str, logger: logging.Logger
) -> pa.Array:
    """Rows of the reviews whose item has metadata with a title (``known``); the others are dropped with a logged
    count (items need a title).

    Args:
        known: ``(n,) bool`` per review: its item has a title in ``metadata``.
        reviews: the reviews file (named in the log line and the error).
        metadata: the metadata file.
        what: the reviewed things, plural (``"products"``).
        none_left: the problem when no review has one.
        fix: its fix.
        logger: the loader's logger.

    Returns:
        ``(k,) int64`` rows of the kept reviews, ascending.

    Raises:
        DataError: ``none_left`` when no review is left.
    """
    if not known.all():
        logger.warning(
            "%s: dropped %d of %d reviews of %s without a title in %s (missing metadata)",
            reviews,
            int((~known).sum()),
            len(known),
            what,
            metadata.name,
        )
    if not known.any():
        raise DataError(none_left, file=reviews, fix=fix)
    return pa.array(np.flatnonzero(known))


def check_range(
    values: np.ndarray, lo: float, hi: float, *, file: Path, field: str, fix: str, line_of: Callable[[int], int]
) -> None:
    """DataError ``"<field> 11 is outside 0..10"`` naming the line (``line_of(row)``) of the first of ``values``
    ``(n,)`` outside ``[lo, hi]`` (NaN included); nothing when all are inside."""
    bad = np.flatnonzero(~((values >= lo) & (values <= hi)))
    if len(bad):
        row = int(bad[0])
        raise DataError(
            f"{field} {values[row]:g} is outside {lo:g}..{hi:g}", file=file, line=line_of(row), field=field, fix=fix
        )


def drop_exact_duplicates(columns: dict[str, np.ndarray | pa.Array], what: str, path: Path) -> np.ndarray:
    """``(n,) bool`` keep-mask dropping rows equal to an earlier row in every one of ``columns``; logs the count."""
    import pandas as pd

    frame = pd.DataFrame(
        {
            k: (v.to_numpy(zero_copy_only=False) if isinstance(v, pa.Array | pa.ChunkedArray) else v)
            for k, v in columns.items()
        }
    )
    keep = ~frame.duplicated().to_numpy()
    dropped = int((~keep).sum())
    if dropped:
        log.warning("%s: dropped %d exact duplicate %s (first kept)", path, dropped, what)
    return keep


def date_seconds(col: pa.Array, *, file: Path, field: str, fix: str, line_of: Callable[[int], int]) -> pa.Array:
    """``(n,) int64`` seconds since the epoch (UTC midnight) of ISO dates ``YYYY-MM-DD``; DataError naming the first
    value that is not one."""
    col = pc.utf8_trim_whitespace(pc.cast(col, pa.string()))
    try:
        return pc.cast(pc.strptime(col, format="%Y-%m-%d", unit="s"), pa.int64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    ok = pc.fill_null(pc.match_substring_regex(col, r"^\d{4}-\d{2}-\d{2}$"), False).to_numpy(zero_copy_only=False)
    parsed = pc.strptime(col, format="%Y-%m-%d", unit="s", error_is_null=True)
    ok &= parsed.is_valid().to_numpy(zero_copy_only=False)
    row = int(np.flatnonzero(~ok)[0]) if not ok.all() else 0
    raise DataError(
        f"{field} {col[row].as_py()!r} is not a date YYYY-MM-DD", file=file, line=line_of(row), field=field, fix=fix
    )


def year_from_text(text: pa.Array) -> pa.Array:
    """``(n,) int32`` the first 4-digit year (1000..2999) in each string; null where there is none."""
    m = pc.extract_regex(pc.fill_null(pc.cast(text, pa.string()), ""), r"(?P<y>\b[12]\d{3}\b)")
    return pc.cast(pc.struct_field(m, "y"), pa.int32())


def dataset_folder(cfg) -> Path:
    """``cfg.resolved_path()`` (data.path, else $RAGREC_DATA_DIR/<name>) with its error as a DataError."""
    try:
        path = cfg.resolved_path()
    except ValueError as e:
        raise DataError(str(e), file=cfg.name) from None
    if path is None:
        raise DataError(
            "data.path is not set", file=cfg.name, field="data.path", fix=f"set data.path to the {cfg.name} folder"
        )
    return path


def first_existing(folder: Path, names: Sequence[str]) -> list[Path]:
    """``[folder / name]`` for the first of ``names`` that exists, else ``[]`` (for ``input_files``)."""
    return next(([folder / n] for n in names if (folder / n).is_file()), [])
