"""Netflix Prize (``netflix``; ER2ALM's Netflix) -> canonical tables.

Two layouts of the same data are read:

* **Kaggle** (``netflix-inc/netflix-prize-data``, the copy ER2ALM cites): ``combined_data_1.txt`` ..
  ``combined_data_4.txt`` + ``movie_titles.csv``;
* **the original prize archive** (``nf_prize_dataset.tar.gz``, what ``ragrec data fetch netflix`` downloads):
  ``training_set/mv_0000001.txt`` .. ``mv_0017770.txt`` + ``movie_titles.txt``.

Rating files: a ``MovieID:`` header line, then one ``CustomerID,Rating,Date`` line (rating 1..5, date
``YYYY-MM-DD``) per rating of that movie, until the next header. They are read with Arrow as one text column
(rows = lines), the header lines give each following rating its movie (a forward fill), and the rating lines
are split on their commas: no Python loop over the 100M lines.

``movie_titles``: ``MovieID,YearOfRelease,Title`` in Latin-1 (read as UTF-8 when it decodes), ``NULL`` for an
unknown year; titles contain commas (``Crouching Tiger, Hidden Dragon``), so each line is split on its first two
commas only (a CSV reader would see four fields there).

Items are the movies of the titles file (ascending MovieID; ``year`` from YearOfRelease; no genres); users the
CustomerIDs that rated (ascending; they are not contiguous). Timestamps: the rating date at 00:00 UTC.
Label: ``rating > data.label_threshold`` (default 3: 4 and 5 stars are positives).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from ...config import DataConfig
from .._ids import dense_index, first_duplicate, sorted_unique
from .._io import cast_numeric
from ..dataset import Dataset
from ..errors import DataError
from ._common import (
    dataset_folder,
    date_seconds,
    decode_text,
    empty_lists,
    fetch_fix,
    find_file,
    first_existing,
    items_table,
    rated_dataset,
    users_table,
)

NAME = "netflix"
TITLE_FILES = ("movie_titles.csv", "movie_titles.txt")
_BATCH_BYTES = 256 << 20  # mv_*.txt files are concatenated into batches of about this size


def label_rule(cfg: DataConfig) -> str:
    return f"label = rating > {cfg.label_threshold:g} (1..5 stars)"


def _fix(fname: str) -> str:
    return f"{fname} must be an original Netflix Prize file (Kaggle's or the prize archive's); re-fetch it"


def rating_files(folder: Path) -> list[Path]:
    """``combined_data_*.txt`` (Kaggle) or ``training_set/mv_*.txt`` (the prize archive), sorted by name."""
    combined = sorted(folder.glob("combined_data_*.txt"))
    if combined:
        return combined
    mv = sorted((folder / "training_set").glob("mv_*.txt")) if (folder / "training_set").is_dir() else []
    if mv:
        return mv
    if (folder / "training_set.tar").is_file():
        raise DataError(
            "training_set.tar is not extracted",
            file=folder / "training_set.tar",
            fix=f"extract it in place (tar -xf training_set.tar -C {folder}), or run `ragrec data fetch {NAME}`",
        )
    raise DataError(
        "no rating files: expected combined_data_1.txt .. combined_data_4.txt (Kaggle) or training_set/mv_*.txt "
        "(the prize archive)",
        file=folder,
        fix=fetch_fix(NAME),
    )


def read_titles(path: Path) -> tuple[pa.Array, pa.Array, pa.Array]:
    """``(movie ids, years, titles)`` of ``movie_titles`` in file order; DataError naming a bad line."""
    text, _ = decode_text(path.read_bytes())
    ids, years, titles, lines = [], [], [], []
    for k, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        parts = line.split(",", 2)  # titles hold commas: split on the first two only
        if len(parts) != 3:
            raise DataError(
                f"expected MovieID,YearOfRelease,Title, found {line[:80]!r}", file=path, line=k, fix=_fix(path.name)
            )
        mid, year, title = parts[0].strip(), parts[1].strip(), parts[2].strip()
        if not mid.isdigit():
            raise DataError(
                f"MovieID {mid!r} is not an integer", file=path, line=k, field="MovieID", fix=_fix(path.name)
            )
        if year.upper() == "NULL" or year == "":
            year = None
        elif year.isdigit():
            year = int(year)
        else:
            raise DataError(
                f"YearOfRelease {year!r} is neither a year nor NULL",
                file=path,
                line=k,
                field="YearOfRelease",
                fix=_fix(path.name),
            )
        ids.append(int(mid))
        years.append(year)
        titles.append(title)
        lines.append(k)
    id_arr = pa.array(ids, pa.int64())
    dup = first_duplicate(id_arr)
    if dup is not None:
        raise DataError(
            f"MovieID {ids[dup]} appears twice", file=path, line=lines[dup], field="MovieID", fix=_fix(path.name)
        )
    return id_arr, pa.array(years, pa.int32()), pa.array(titles, pa.string())


def _batches(files: list[Path]) -> list[list[Path]]:
    """The rating files grouped into batches of about ``_BATCH_BYTES`` (each combined_data file alone)."""
    out: list[list[Path]] = []
    size = 0
    for f in files:
        s = f.stat().st_size
        if not out or size + s > _BATCH_BYTES:
            out.append([])
            size = 0
        out[-1].append(f)
        size += s
    return out


def _parse_batch(files: list[Path]) -> tuple[np.ndarray, pa.Array, pa.Array, pa.Array]:
    """``(movie, user, rating, timestamp)`` of the ratings in ``files`` (each starting with a ``MovieID:`` line).

    Fast path: the header lines are found in the bytes with numpy (a line whose last character is ``:``), and the
    rating lines are parsed by Arrow's multi-threaded CSV reader into typed columns, skipping the headers; a
    rating's movie is the last header before it. Anything unexpected (a malformed line, a value of the wrong
    type) falls back to :func:`_parse_batch_slow`, which names the file and line.
    """
    blobs = []
    for f in files:
        b = f.read_bytes()
        blobs.append(b if not b or b.endswith(b"\n") else b + b"\n")
    buf = b"".join(blobs)
    if not buf.strip():
        raise DataError("the rating files are empty", file=files[0], fix=_fix(files[0].name))
    arr = np.frombuffer(buf, dtype=np.uint8)
    ends = np.flatnonzero(arr == ord("\n"))
    starts = np.concatenate([[0], ends[:-1] + 1])
    last = ends - 1  # last character of each line, before a '\r'
    if len(last):
        last = np.where((last >= starts) & (arr[np.maximum(last, 0)] == ord("\r")), last - 1, last)
    nonempty = last >= starts
    is_header = np.zeros(len(ends), dtype=bool)
    is_header[nonempty] = arr[last[nonempty]] == ord(":")
    is_header = is_header[nonempty]  # per row of the reader, which skips empty lines
    file_start = np.cumsum([0] + [len(b) for b in blobs[:-1]])
    file_of_line = np.searchsorted(file_start, starts[nonempty], side="right") - 1
    seen_bad: list[str] = []

    def _on_invalid(row: pacsv.InvalidRow) -> str:
        if not row.text.rstrip().endswith(":"):
            seen_bad.append(row.text)
        return "skip"

    try:
        table = pacsv.read_csv(
            io.BytesIO(buf),
            read_options=pacsv.ReadOptions(column_names=["user", "rating", "date"], block_size=64 << 20),
            parse_options=pacsv.ParseOptions(quote_char=False, invalid_row_handler=_on_invalid),
            convert_options=pacsv.ConvertOptions(
                column_types={"user": pa.int64(), "rating": pa.float32(), "date": pa.date32()}
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # a value of the wrong type: find its line
        return _parse_batch_slow(files)
    data = ~is_header
    if seen_bad or table.num_rows != int(data.sum()) or any(table.column(c).null_count for c in table.column_names):
        return _parse_batch_slow(files)
    group = np.cumsum(is_header)[data] - 1
    hdr = np.flatnonzero(is_header)
    orphan = group < 0
    if len(hdr):
        orphan |= file_of_line[hdr[np.maximum(group, 0)]] != file_of_line[data]
    rating = table.column("rating").combine_chunks()
    r = rating.to_numpy(zero_copy_only=False)
    if orphan.any() or not ((r >= 1) & (r <= 5)).all():
        return _parse_batch_slow(files)
    header_text = [buf[starts[k] : last[k] + 1] for k in np.flatnonzero(nonempty)[hdr]]
    try:
        movie_of_header = np.asarray([int(h[:-1]) for h in header_text], dtype=np.int64)
    except ValueError:
        return _parse_batch_slow(files)
    days = pc.cast(table.column("date").combine_chunks(), pa.int32()).to_numpy().astype(np.int64)
    return movie_of_header[group], table.column("user").combine_chunks(), rating, pa.array(days * 86400)


def _parse_batch_slow(files: list[Path]) -> tuple[np.ndarray, pa.Array, pa.Array, pa.Array]:
    """:func:`_parse_batch` on one text column (rows = lines), splitting each rating line on its commas: slower,
    and every malformed value is reported with its file and line."""
    blobs, starts = [], []
    row = 0
    for f in files:
        b = f.read_bytes()
        if b and not b.endswith(b"\n"):
            b += b"\n"
        blobs.append(b)
        starts.append(row)
        row += b.count(b"\n")
    starts_np = np.asarray(starts, dtype=np.int64)

    def where(r: int) -> tuple[Path, int]:
        k = int(np.searchsorted(starts_np, r, side="right")) - 1
        return files[k], r - starts[k] + 1

    table = pacsv.read_csv(
        io.BytesIO(b"".join(blobs)),
        read_options=pacsv.ReadOptions(column_names=["line"], block_size=64 << 20),
        parse_options=pacsv.ParseOptions(delimiter="\x1f", quote_char=False, ignore_empty_lines=False),
        convert_options=pacsv.ConvertOptions(column_types={"line": pa.string()}, strings_can_be_null=False),
    )
    lines = pc.utf8_trim_whitespace(table.column("line").combine_chunks())
    is_header = pc.ends_with(lines, ":").to_numpy(zero_copy_only=False)
    is_empty = pc.equal(lines, "").to_numpy(zero_copy_only=False)
    hdr = np.flatnonzero(is_header)
    movie_of_header = cast_numeric(
        pc.utf8_slice_codeunits(lines.take(pa.array(hdr)), 0, -1),
        pa.int64(),
        file=files[0],
        field="MovieID",
        fix=_fix(files[0].name),
        line_of=lambda r: where(int(hdr[r]))[1],
    ).to_numpy()
    data = np.flatnonzero(~is_header & ~is_empty)
    group = np.cumsum(is_header)[data] - 1
    # a rating belongs to the last header before it IN ITS OWN FILE (the files are concatenated)
    file_of = np.searchsorted(starts_np, np.arange(len(lines)), side="right") - 1
    orphan = (group < 0) | (file_of[hdr[np.maximum(group, 0)]] != file_of[data]) if len(hdr) else group < 0
    if orphan.any():
        f, line = where(int(data[np.flatnonzero(orphan)[0]]))
        raise DataError("a rating line before any 'MovieID:' line", file=f, line=line, fix=_fix(f.name))

    def line_of(r: int) -> int:
        return where(int(data[r]))[1]

    def error_at(r: int, problem: str, field: str | None = None) -> DataError:
        """The DataError of rating row ``r``, naming its file and line."""
        f, line = where(int(data[r]))
        return DataError(problem, file=f, line=line, field=field, fix=_fix(f.name))

    parts = pc.split_pattern(lines.take(pa.array(data)), ",")
    n_parts = pc.list_value_length(parts).to_numpy(zero_copy_only=False)
    bad = np.flatnonzero(n_parts != 3)
    if len(bad):
        r = int(bad[0])
        raise error_at(r, f"expected CustomerID,Rating,Date, found {lines[int(data[r])].as_py()[:80]!r}")
    first = files[0] if len(files) == 1 else files[0].parent

    def column(k: int, typ: pa.DataType, field: str) -> pa.Array:
        return cast_numeric(
            pc.list_element(parts, k), typ, file=first, field=field, fix=_fix("the rating file"), line_of=line_of
        )

    user = column(0, pa.int64(), "CustomerID")
    rating = column(1, pa.float32(), "Rating")
    r = rating.to_numpy(zero_copy_only=False)
    out = np.flatnonzero(~((r >= 1) & (r <= 5)))
    if len(out):
        k = int(out[0])
        raise error_at(k, f"Rating {r[k]:g} is outside 1..5", "Rating")
    ts = date_seconds(pc.list_element(parts, 2), file=first, field="Date", fix=_fix("the rating file"), line_of=line_of)
    return movie_of_header[group], user, rating, ts


def load_netflix(path: str | Path, label_threshold: float = 3.0) -> Dataset:
    """Load the Netflix Prize ratings and movie titles from the folder ``path`` (either layout).

    Returns:
        Dataset ``netflix``: interactions ``(100480507,)`` for the full data, items ``(17770,)`` (``title``, no
        genres, ``year``, ``raw_item_id`` = MovieID), users ``(480189,)`` (``raw_user_id`` = CustomerID).

    Raises:
        DataError: missing files, a malformed line (file and line named), a rating of a movie missing from the
            titles file.
    """
    path = Path(path)
    tpath = find_file(path, TITLE_FILES, NAME, "movie titles")
    files = rating_files(path)
    movie_raw, year, title = read_titles(tpath)
    order = pc.sort_indices(movie_raw)
    movie_raw, year, title = movie_raw.take(order), year.take(order), title.take(order)

    parts = [_parse_batch(batch) for batch in _batches(files)]
    movie = np.concatenate([p[0] for p in parts])
    user = pa.concat_arrays([p[1] for p in parts])
    rating = pa.concat_arrays([p[2] for p in parts])
    ts = pa.concat_arrays([p[3] for p in parts])
    item = dense_index(pa.array(movie), movie_raw)
    unknown = np.flatnonzero(item < 0)
    if len(unknown):
        raise DataError(
            f"MovieID {movie[unknown[0]]} has ratings but is not in {tpath.name} ({len(unknown)} ratings refer to "
            "unknown movies)",
            file=tpath,
            field="MovieID",
            fix=f"use the rating files and {tpath.name} of the same release",
        )
    user_raw = sorted_unique(user)
    items = items_table(movie_raw, title, empty_lists(len(movie_raw)), year)
    return rated_dataset(
        NAME, items, users_table(user_raw), dense_index(user, user_raw), item, rating, ts, label_threshold
    )


def load(cfg: DataConfig) -> Dataset:
    return load_netflix(dataset_folder(cfg), label_threshold=cfg.label_threshold)


def input_files(cfg: DataConfig) -> list[Path]:
    """The titles file and every rating file :func:`load` reads (their digests enter the cache key)."""
    folder = dataset_folder(cfg)
    try:
        ratings = rating_files(folder)
    except DataError:  # the loader reports what is missing
        ratings = []
    return first_existing(folder, TITLE_FILES) + ratings
