"""Book-Crossing (``bookcrossing``, Ziegler et al. 2005): the ``BX-CSV-Dump.zip`` CSVs -> canonical tables.

Files (all ``;``-separated, every field in double quotes, Latin-1, a header line):

* ``BX-Book-Ratings.csv``: ``"User-ID";"ISBN";"Book-Rating"``; ratings 1..10 are explicit, 0 is implicit (the
  user interacted with the book without rating it).
* ``BX-Books.csv``: ``"ISBN";"Book-Title";"Book-Author";"Year-Of-Publication";"Publisher";"Image-URL-S";
  "Image-URL-M";"Image-URL-L"``.
* ``BX-Users.csv`` (optional): ``"User-ID";"Location";"Age"``, Age an unquoted ``NULL`` when unknown.

Traps handled:

* quotes inside fields are escaped with a backslash (``"The \\"Secret\\" Garden"``); a few BX-Books lines end
  a title in ``\\";`` followed by an unquoted author (``...Readers)\\";James Buckley";"2000"``): such a line is
  repaired by reading ``\\";`` as the end of the field, and a line that still has the wrong number of fields is
  an error in the ratings file and skipped with a warning (naming the first line) in the books / users files;
* HTML entities in titles, authors and publishers (``&amp;``) are unescaped;
* ISBNs are compared trimmed and upper-cased (``034545104x`` = ``034545104X``); a book listed twice keeps its
  first line, a (user, ISBN) pair rated twice keeps its first rating (both logged);
* roughly one rating in ten names an ISBN that is not in BX-Books (missing metadata): such ratings are dropped, with a
  logged count, because every item needs a title; a book with an empty title counts as missing too.

Items are the books with at least one kept rating (dense ids in ascending ISBN order), users the users with at
least one (ascending User-ID), with Location and Age from BX-Users when it is there.

Labels: ``data.implicit_zero: drop`` (default) leaves the implicit 0s out; ``negative`` keeps them as negatives
(rating 0). Then ``label = rating > data.label_threshold``, whose default for this dataset is 4: ratings 5..10
are positives; set ``data.label_threshold`` to match another paper's cut (e.g. 6 for 7..10).

Timestamps: the dump has none, and BX-Book-Ratings.csv is sorted by User-ID, so its row order would turn every
time-ordered split into a split by user. The rating lines are instead put in a fixed random order (a permutation
``perm`` of the file's n rating lines drawn from ``numpy.random.default_rng(0)``) and spread evenly over the four
weeks of the crawl: line k gets the pseudo-timestamp ``2004-08-01 00:00 UTC + perm[k] * 28 days // n``. The
time-ordered protocols then see a random order (the random split usual for this dataset), the same for every load
of the same file and for either ``implicit_zero`` setting; ``temporal`` needs ``data.temporal.unit: day`` with
windows inside the 28 days (e.g. ``windows: [20, 4, 4]``).
"""

from __future__ import annotations

import csv
import html
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ...config import DataConfig
from .._ids import dense_index, sorted_unique
from .._io import cast_numeric, read_string_columns
from ..dataset import Dataset
from ..errors import DataError
from ._common import (
    check_range,
    dataset_folder,
    empty_lists,
    fetch_fix,
    first_rows,
    items_table,
    nonempty_lines,
    rated_dataset,
    users_table,
)

NAME = "bookcrossing"
RATINGS_FILE = "BX-Book-Ratings.csv"
BOOKS_FILE = "BX-Books.csv"
USERS_FILE = "BX-Users.csv"
RATING_FIELDS = ("User-ID", "ISBN", "Book-Rating")
BOOK_FIELDS = (
    "ISBN",
    "Book-Title",
    "Book-Author",
    "Year-Of-Publication",
    "Publisher",
    "Image-URL-S",
    "Image-URL-M",
    "Image-URL-L",
)
USER_FIELDS = ("User-ID", "Location", "Age")
PSEUDO_TIME_SEED = 0
PSEUDO_TIME_START = 1090627200  # 2004-08-01 00:00:00 UTC: the crawl ran in August / September 2004
PSEUDO_TIME_SPAN = 28 * 86400  # its four weeks
_BROKEN_ESCAPE = re.compile(r'\\";(?!")')  # `\";` ending a field whose successor is unquoted
log = logging.getLogger("ragrec.data.sources.bookcrossing")


def label_rule(cfg: DataConfig) -> str:
    implicit = "implicit 0s dropped" if cfg.implicit_zero == "drop" else "implicit 0s kept as negatives"
    return f"label = rating > {cfg.label_threshold:g} on the 1..10 scale ({implicit})"


def _fix(fname: str) -> str:
    return f"{fname} must be the original file of BX-CSV-Dump.zip; re-fetch with `ragrec data fetch {NAME}`"


@dataclass
class _BX:
    """A BX CSV read into string columns; ``lines[k]`` is the 1-based line of row k (repaired rows last)."""

    path: Path
    table: pa.Table
    lines: np.ndarray

    def line_of(self, row: int) -> int:
        return int(self.lines[row])


def _split_line(text: str) -> list[str]:
    return next(csv.reader([text], delimiter=";", quotechar='"', escapechar="\\", doublequote=False), [])


def _read_bx(path: Path, fields: tuple[str, ...], *, strict: bool) -> _BX:
    """Read one BX CSV: header checked against ``fields``; fields with backslash-escaped quotes; lines with the
    ``\\";`` defect repaired; other malformed lines an error (``strict``) or skipped with a warning."""
    if not path.is_file():
        raise DataError(f"{NAME} file missing", file=path, fix=fetch_fix(NAME))
    text = path.read_bytes().decode("latin-1")  # every byte is a Latin-1 character: never fails
    header = text.split("\n", 1)[0].rstrip("\r")
    got = [h.strip() for h in _split_line(header)]
    if [g.lower() for g in got] != [f.lower() for f in fields]:
        seen = " (the header is comma-separated: a re-saved copy, not the original dump)" if "," in header else ""
        raise DataError(
            f"expected the header {';'.join(repr(f) for f in fields)}, found {header[:120]!r}{seen}",
            file=path,
            line=1,
            fix=_fix(path.name),
        )
    buf = text.encode("utf-8")
    names = [f"f{k}" for k in range(len(fields))]
    if not text.split("\n", 1)[-1].strip() or "\n" not in text:  # a header only (Arrow refuses an empty body)
        empty = pa.table({f: pa.array([], pa.string()) for f in fields})
        return _BX(path=path, table=empty, lines=np.zeros(0, dtype=np.int64))
    table, bad = read_string_columns(
        buf, names, skip_rows=1, delimiter=";", quote_char='"', escape_char="\\", double_quote=False
    )
    lines = nonempty_lines(buf)[1:]  # without the header
    if bad:
        bad_lines, repaired, broken = [], [], []
        for row in bad:
            pos = text.find("\n" + row.text)
            line = text.count("\n", 0, pos + 1) + 1 if pos >= 0 else -1
            bad_lines.append(line)
            fixed = _split_line(_BROKEN_ESCAPE.sub('";"', row.text.rstrip("\r")))
            if len(fixed) == len(fields):
                repaired.append((line, fixed))
            else:
                broken.append((line, row.actual_columns, row.text))
        if broken:
            line, n, shown = broken[0]
            problem = f"expected {len(fields)} ';'-separated fields, found {n}: {shown[:80]!r}"
            if strict:
                raise DataError(problem, file=path, line=line, fix=_fix(path.name))
            log.warning("%s line %d: %s; %d such line(s) skipped", path, line, problem, len(broken))
        lines = lines[~np.isin(lines, bad_lines)]
        if repaired:
            log.info("%s: repaired %d line(s) with a '\\\";' field ending", path, len(repaired))
            extra = pa.table({n: pa.array([r[1][k] for r in repaired], pa.string()) for k, n in enumerate(names)})
            table = pa.concat_tables([table, extra])
            lines = np.concatenate([lines, [r[0] for r in repaired]])
    if len(lines) != table.num_rows:  # cannot happen for one-line records; keep messages honest if it does
        lines = np.arange(table.num_rows, dtype=np.int64) + 2
    return _BX(path=path, table=table.rename_columns(list(fields)), lines=lines.astype(np.int64))


def _isbn(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    return pc.utf8_upper(pc.utf8_trim_whitespace(col))


def _unescape(col: pa.Array | pa.ChunkedArray) -> pa.Array:
    values = col.to_pylist()
    return pa.array([html.unescape(v).strip() if v is not None else None for v in values], pa.string())


def _number(data: _BX, field: str, typ: pa.DataType) -> pa.Array:
    return cast_numeric(
        data.table.column(field),
        typ,
        file=data.path,
        field=field,
        fix=f"correct or remove that line ({_fix(data.path.name)})",
        line_of=data.line_of,
    )


def load_bookcrossing(path: str | Path, *, label_threshold: float = 4.0, implicit_zero: str = "drop") -> Dataset:
    """Load Book-Crossing from the folder holding ``BX-Book-Ratings.csv``, ``BX-Books.csv`` (``BX-Users.csv``).

    Args:
        path: the folder.
        label_threshold: label = rating > threshold (the config's default for this dataset: 4).
        implicit_zero: ``"drop"`` the implicit 0 ratings or keep them as ``"negative"`` s.

    Returns:
        Dataset ``bookcrossing``: interactions (user, book, rating 1..10 or 0, pseudo-timestamp, label), items
        (``title``, empty ``genres``, ``year`` of publication, ``raw_item_id`` = ISBN, ``author``, ``publisher``,
        ``image_url``), users (``raw_user_id``, ``location``, ``age``).

    Raises:
        DataError: missing file, a header that is not the dump's, a malformed ratings line, a rating outside 0..10.
    """
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"{NAME} folder does not exist", file=path, fix=fetch_fix(NAME))
    ratings = _read_bx(path / RATINGS_FILE, RATING_FIELDS, strict=True)
    if ratings.table.num_rows == 0:
        raise DataError("the file has a header but no ratings", file=ratings.path, fix=_fix(RATINGS_FILE))
    books = _read_bx(path / BOOKS_FILE, BOOK_FIELDS, strict=False)

    user_raw = _number(ratings, "User-ID", pa.int64())
    isbn = _isbn(ratings.table.column("ISBN"))
    rating = _number(ratings, "Book-Rating", pa.float32())
    r = rating.to_numpy(zero_copy_only=False)
    check_range(r, 0, 10, file=ratings.path, field="Book-Rating", fix=_fix(RATINGS_FILE), line_of=ratings.line_of)
    # pseudo-timestamps: a fixed random order of the file's rating lines (see the module docstring)
    order_of_line = np.argsort(ratings.lines, kind="stable")  # row of each line, in file order
    n_lines = len(order_of_line)
    perm = np.random.default_rng(PSEUDO_TIME_SEED).permutation(n_lines).astype(np.int64)
    ts = np.empty(n_lines, dtype=np.int64)
    ts[order_of_line] = PSEUDO_TIME_START + perm * PSEUDO_TIME_SPAN // max(n_lines, 1)

    # books: first line per ISBN, a title required
    book_isbn = _isbn(books.table.column("ISBN"))
    first = first_rows(book_isbn)
    if len(first) < len(book_isbn):
        log.warning("%s: %d ISBNs listed more than once (first line kept)", books.path, len(book_isbn) - len(first))
    bt = books.table.take(pa.array(first))
    book_isbn = book_isbn.take(pa.array(first))
    title = _unescape(bt.column("Book-Title"))
    has_title = pc.fill_null(pc.not_equal(title, ""), False)
    book_isbn, bt, title = book_isbn.filter(has_title), bt.filter(has_title), title.filter(has_title)

    keep = np.ones(len(r), dtype=bool)
    if implicit_zero == "drop":
        keep &= r != 0
    known = dense_index(isbn, book_isbn) >= 0
    n_unknown = int((keep & ~known).sum())
    if n_unknown:
        log.warning(
            "%s: dropped %d ratings of ISBNs without a title in %s (missing metadata)",
            ratings.path,
            n_unknown,
            BOOKS_FILE,
        )
    keep &= known
    # a (user, ISBN) pair rated twice (e.g. ISBNs differing in case): the first line wins
    rows = np.flatnonzero(keep)
    pair = pc.binary_join_element_wise(
        pc.cast(user_raw.take(pa.array(rows)), pa.string()), isbn.take(pa.array(rows)), "|"
    )
    firsts = rows[first_rows(pair)]
    if len(firsts) < len(rows):
        log.warning("%s: %d repeated (user, ISBN) ratings dropped (first kept)", ratings.path, len(rows) - len(firsts))
    rows = np.sort(firsts)
    if len(rows) == 0:
        raise DataError(
            "no rating is left (implicit 0s dropped, ratings of books missing from BX-Books.csv dropped)",
            file=ratings.path,
            fix="check that BX-Book-Ratings.csv and BX-Books.csv come from the same dump, or set "
            "data.implicit_zero: negative",
        )
    sel = pa.array(rows)
    u_raw, i_raw, rating, ts = user_raw.take(sel), isbn.take(sel), rating.take(sel), ts[rows]

    item_ids = sorted_unique(i_raw)
    meta_rows = pa.array(dense_index(item_ids, book_isbn))
    bt, title = bt.take(meta_rows), title.take(meta_rows)
    year = cast_numeric(
        pc.if_else(
            pc.match_substring_regex(pc.utf8_trim_whitespace(bt.column("Year-Of-Publication")), r"^\d{1,4}$"),
            bt.column("Year-Of-Publication"),
            pa.scalar(None, pa.string()),
        ),
        pa.int32(),
        file=books.path,
        field="Year-Of-Publication",
        fix=_fix(BOOKS_FILE),
        line_of=books.line_of,
    )
    year = pc.if_else(pc.equal(year, 0), pa.scalar(None, pa.int32()), year)  # 0 = unknown
    items = items_table(
        item_ids,
        title,
        empty_lists(len(item_ids)),
        year,
        author=_unescape(bt.column("Book-Author")),
        publisher=_unescape(bt.column("Publisher")),
        image_url=bt.column("Image-URL-L"),
    )

    users_raw = sorted_unique(u_raw)
    location = pa.nulls(len(users_raw), pa.string())
    age = pa.nulls(len(users_raw), pa.int32())
    if (path / USERS_FILE).is_file():
        ufile = _read_bx(path / USERS_FILE, USER_FIELDS, strict=False)
        uid = _number(ufile, "User-ID", pa.int64())
        at = dense_index(users_raw, uid)
        found = at >= 0
        take = pa.array(np.where(found, at, 0))
        age_str = pc.utf8_trim_whitespace(ufile.table.column("Age"))
        age_str = pc.if_else(pc.match_substring_regex(age_str, r"^\d{1,3}$"), age_str, pa.scalar(None, pa.string()))
        if len(uid):
            mask = pa.array(~found)
            location = pc.if_else(
                mask, pa.scalar(None, pa.string()), _unescape(ufile.table.column("Location").take(take))
            )
            age = pc.if_else(mask, pa.scalar(None, pa.int32()), pc.cast(age_str, pa.int32()).take(take))
    return rated_dataset(
        NAME,
        items,
        users_table(users_raw, location=location, age=age),
        dense_index(u_raw, users_raw),
        dense_index(i_raw, item_ids),
        rating,
        ts,
        label_threshold,
    )


def load(cfg: DataConfig) -> Dataset:
    return load_bookcrossing(dataset_folder(cfg), label_threshold=cfg.label_threshold, implicit_zero=cfg.implicit_zero)
