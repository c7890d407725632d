"""ER2ALM's knowledge corpus (paper §3.1, Eq. 1: ``R(i_n)``): read, chunk, index and query it.

* :func:`read_corpus` — ``data.corpus_file``: JSONL (``.jsonl`` / ``.ndjson``, one JSON object a line) or
  Parquet (``.parquet`` / ``.pq``) with the columns ``doc_id``, ``title``, ``text``. Every problem is a
  one-line :class:`~ragrec.data.errors.DataError` naming the file (and the line or column).
* :func:`metadata_corpus` — the fallback corpus when no ``data.corpus_file`` exists: one document per item
  written from the dataset's own title, year, genres and, when given, the LLM's description of the item.
  Retrieval then only re-finds what the dataset (and the LLM) already know; reports should say so.
* :func:`chunk_corpus` — fixed windows of ``rag.chunk_chars`` characters (code points, not bytes) that
  share ``rag.chunk_overlap`` characters with the previous window; computed with numpy over the UTF-8 buffer.
* :class:`CorpusIndex` — exact inner-product faiss index (:class:`~ragrec.retrieval.index.ItemIndex`) over
  the L2-normalised embeddings of each chunk's ``"<title>: <text>"`` (the title keeps later chunks of a
  document findable by the item's name).
* :func:`item_queries` — the query of each item: ``"Heat (1995), Action, Crime, Thriller"``.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..data.errors import DataError
from .index import ItemIndex

__all__ = [
    "CORPUS_COLUMNS",
    "CorpusIndex",
    "chunk_corpus",
    "chunk_texts",
    "item_queries",
    "metadata_corpus",
    "read_corpus",
]

CORPUS_COLUMNS = ("doc_id", "title", "text")
_JSONL = (".jsonl", ".ndjson")
_PARQUET = (".parquet", ".pq")
_FIX_COLUMNS = "give every record the fields doc_id, title and text (title and text may be empty strings)"
_BLOCK_BYTES = 1 << 26  # chunk_corpus works on blocks of about 64 MiB of text


# --------------------------------------------------------------------------------------------- reading


def _nonblank_lines(buf: bytes) -> list[int]:
    """1-based line numbers of the non-blank lines of ``buf`` (error path only)."""
    return [k + 1 for k, line in enumerate(buf.split(b"\n")) if line.strip()]


def _read_jsonl_python(buf: bytes, path: Path) -> tuple[pa.Table, list[int]]:
    """Line-by-line parse (error path and mixed-type files): the table and the line number of each row."""
    rows: list[dict] = []
    lines: list[int] = []
    for k, line in enumerate(buf.split(b"\n")):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(
                f"not valid JSON ({e.msg}, column {e.colno})",
                file=path,
                line=k + 1,
                fix="write one JSON object per line (JSONL), e.g. "
                '{"doc_id": "d1", "title": "Heat (1995 film)", "text": "..."}',
            ) from None
        if not isinstance(obj, dict):
            raise DataError(
                f"a line must hold one JSON object, got {type(obj).__name__}",
                file=path,
                line=k + 1,
                fix='write each record as {"doc_id": ..., "title": ..., "text": ...}',
            )
        rows.append(obj)
        lines.append(k + 1)
    cols: dict[str, list] = {}
    for c in CORPUS_COLUMNS:
        vals = []
        for obj, ln in zip(rows, lines):
            v = obj.get(c)
            if isinstance(v, (dict, list)):
                raise DataError(
                    f"{c} must be a string or number, got {type(v).__name__}",
                    file=path,
                    line=ln,
                    field=c,
                    fix=_FIX_COLUMNS,
                )
            vals.append(None if v is None else str(v))
        if rows and not any(c in obj for obj in rows):
            continue  # reported as a missing column below
        cols[c] = vals
    return pa.table({c: pa.array(v, pa.string()) for c, v in cols.items()}), lines


def _read_jsonl(path: Path) -> tuple[pa.Table, list[int] | None]:
    buf = path.read_bytes()
    if buf.startswith(b"\xef\xbb\xbf"):
        buf = buf[3:]
    try:
        buf.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"not valid UTF-8 (byte 0x{buf[e.start]:02x})",
            file=path,
            line=buf.count(b"\n", 0, e.start) + 1,
            fix="re-save the corpus file as UTF-8",
        ) from None
    import io

    import pyarrow.json as pajson

    try:
        table = pajson.read_json(io.BytesIO(buf))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        # a bad line or a field whose type changes between lines: parse line by line (names the line)
        return _read_jsonl_python(buf, path)
    return table, None


def read_corpus(path: str | Path) -> pa.Table:
    """The corpus at ``path`` as ``(doc_id, title, text)`` string columns (null title / text -> ``""``).

    Raises:
        DataError: missing file, unsupported suffix, invalid UTF-8 or JSON (with the line), a missing
            column (with the columns there are), a null or duplicate ``doc_id``.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(
            "corpus file not found", file=path, fix="set data.corpus_file to an existing .jsonl or .parquet"
        )
    suffix = path.suffix.lower()
    lines: list[int] | None = None
    if suffix in _JSONL:
        table, lines = _read_jsonl(path)
    elif suffix in _PARQUET:
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError(f"cannot read the Parquet corpus: {e}".replace("\n", " "), file=path) from None
    else:
        raise DataError(
            f"unsupported corpus file type '{suffix or path.name}'",
            file=path,
            fix="use a .jsonl / .ndjson (one JSON object a line) or a .parquet file",
        )
    for c in CORPUS_COLUMNS:
        if c not in table.column_names:
            have = ", ".join(table.column_names) or "none"
            raise DataError(f"column '{c}' not found (columns: {have})", file=path, field=c, fix=_FIX_COLUMNS)
    cols = {}
    for c in CORPUS_COLUMNS:
        col = table.column(c)
        try:
            col = col.cast(pa.string())
            col.validate(full=True)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            msg = str(e).splitlines()[0]
            problem = "not valid UTF-8" if "utf8" in msg.lower() or "utf-8" in msg.lower() else f"not text ({msg})"
            raise DataError(f"column '{c}' is {problem}", file=path, field=c, fix=_FIX_COLUMNS) from None
        cols[c] = col if c == "doc_id" else pc.fill_null(col, "")
    out = pa.table(cols)
    if out.num_rows == 0:
        raise DataError("the corpus has no documents", file=path, fix="add documents, or unset data.corpus_file")
    doc_id = out.column("doc_id")
    if doc_id.null_count:
        row = int(np.flatnonzero(pc.is_null(doc_id).to_numpy(zero_copy_only=False))[0])
        raise DataError(
            "doc_id is missing", file=path, line=_line_of(path, lines, row), field="doc_id", fix=_FIX_COLUMNS
        )
    counts = pc.value_counts(doc_id)
    dup = pc.filter(counts, pc.greater(counts.field("counts"), 1))
    if len(dup):
        first = dup[0]["values"].as_py()
        row = int(np.flatnonzero(pc.equal(doc_id, first).to_numpy(zero_copy_only=False))[1])
        raise DataError(
            f"doc_id '{first}' appears more than once",
            file=path,
            line=_line_of(path, lines, row),
            field="doc_id",
            fix="give every document its own doc_id",
        )
    return out


def _line_of(path: Path, lines: list[int] | None, row: int) -> int | None:
    """1-based line of data row ``row`` (JSONL) or the 1-based row number (Parquet)."""
    if path.suffix.lower() in _PARQUET:
        return row + 1
    if lines is None:
        lines = _nonblank_lines(path.read_bytes())
    return lines[row] if row < len(lines) else None


# ------------------------------------------------------------------------------------------- items -> text


def _item_columns(items: pa.Table) -> tuple[pa.Array, pa.Array, pa.Array]:
    """``(title, year as text or null, genres "A, B, C" or null)`` of ``items`` by dense item id."""
    from ..llm.prompts_ctr import _dense_lookup

    it = _dense_lookup(items, "item_id", "items")
    if "title" not in it.column_names:
        raise ValueError(f"items table has no 'title' column (has {it.column_names})")
    title = pc.utf8_trim_whitespace(pc.fill_null(it.column("title").cast(pa.string()), "")).combine_chunks()
    if "year" in it.column_names:
        year = it.column("year").combine_chunks()
    else:
        from ..data._ids import year_from_title

        year = year_from_title(title)
    year = pc.cast(year, pa.string())
    genres: pa.Array = pa.nulls(it.num_rows, pa.string())
    if "genres" in it.column_names:
        g = it.column("genres").combine_chunks()
        if pa.types.is_list(g.type) or pa.types.is_large_list(g.type):
            g = pc.binary_join(g, ", ")
        g = pc.utf8_trim_whitespace(g.cast(pa.string()))
        genres = pc.if_else(pc.equal(g, ""), pa.scalar(None, pa.string()), g)
    return title, year, genres


def _title_with_year(title: pa.Array, year: pa.Array) -> pa.Array:
    """``title`` with ``" (year)"`` appended unless the title already ends with ``(year)`` or the year is unknown."""
    has_year = pc.match_substring_regex(title, r"\(\d{4}\)\s*$")
    with_year = pc.binary_join_element_wise(title, " (", year, ")", "")
    return pc.if_else(pc.or_(has_year, pc.is_null(year)), title, with_year)


def item_queries(items: pa.Table) -> pa.Array:
    """``(n_items,)`` retrieval query per dense item id: ``"Heat (1995), Action, Crime, Thriller"`` (the year
    from ``year`` or the title, left out when unknown; the genres left out when there are none)."""
    title, year, genres = _item_columns(items)
    head = _title_with_year(title, year)
    return pc.if_else(pc.is_null(genres), head, pc.binary_join_element_wise(head, genres, ", "))


def metadata_corpus(items: pa.Table, descriptions: pa.Table | None = None) -> pa.Table:
    """The fallback corpus used when no ``data.corpus_file`` exists: one document per item.

    ``doc_id`` is the item id (as text), ``title`` the item's title and ``text``
    ``"Heat (1995). Genres: Action, Crime, Thriller. <description>"``. ``descriptions``: optional
    ``(item_id, description | text)`` table of LLM-written item descriptions (the generation stage's output);
    items without one keep the metadata sentence only. This corpus holds no knowledge beyond the dataset
    and the LLM, so ER2ALM's retrieval step degenerates to re-reading them; say so in any report.
    """
    title, year, genres = _item_columns(items)
    n = len(title)
    text = pc.binary_join_element_wise(_title_with_year(title, year), ".", "")
    text = pc.if_else(pc.is_null(genres), text, pc.binary_join_element_wise(text, " Genres: ", genres, ".", ""))
    if descriptions is not None:
        col = "description" if "description" in descriptions.column_names else "text"
        if "item_id" not in descriptions.column_names or col not in descriptions.column_names:
            raise ValueError(
                f"descriptions table needs item_id and description (or text) columns, has {descriptions.column_names}"
            )
        ids = descriptions.column("item_id").to_numpy()
        if ids.size and (ids.min() < 0 or ids.max() >= n):
            raise ValueError(f"descriptions: item_id {int(ids.max())} is not in the items table ({n} items)")
        desc = np.full(n, None, dtype=object)
        desc[ids] = descriptions.column(col).to_numpy(zero_copy_only=False)
        d = pc.utf8_trim_whitespace(pc.fill_null(pa.array(desc, pa.string()), ""))
        text = pc.if_else(pc.equal(d, ""), text, pc.binary_join_element_wise(text, d, " "))
    return pa.table(
        {"doc_id": pc.cast(pa.array(np.arange(n, dtype=np.int64)), pa.string()), "title": title, "text": text}
    )


# --------------------------------------------------------------------------------------------- chunking


def _chunk_block(text: pa.LargeStringArray, chunk_chars: int, stride: int) -> tuple[np.ndarray, np.ndarray, pa.Array]:
    """Windows of one block of texts: ``(doc index in the block, chunk ordinal, chunk texts)``."""
    n = len(text)
    offsets = np.frombuffer(text.buffers()[1], dtype=np.int64)[text.offset : text.offset + n + 1]
    data_buf = text.buffers()[2]
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    region = data[offsets[0] : offsets[-1]]
    offsets = offsets - offsets[0]
    char_pos = np.flatnonzero((region & 0xC0) != 0x80)  # byte position of each code point
    char2byte = np.append(char_pos, len(region))
    doc_c0 = np.searchsorted(char_pos, offsets[:-1])
    doc_len = np.searchsorted(char_pos, offsets[1:]) - doc_c0
    n_chunks = np.where(doc_len == 0, 0, 1 + np.maximum(0, -((chunk_chars - doc_len) // stride)))
    total = int(n_chunks.sum())
    doc = np.repeat(np.arange(n), n_chunks)
    first = np.cumsum(n_chunks) - n_chunks
    k = np.arange(total) - np.repeat(first, n_chunks)
    c_start = doc_c0[doc] + k * stride
    c_end = np.minimum(c_start + chunk_chars, doc_c0[doc] + doc_len[doc])
    b_start, b_end = char2byte[c_start], char2byte[c_end]
    blen = b_end - b_start
    new_off = np.zeros(total + 1, dtype=np.int64)
    np.cumsum(blen, out=new_off[1:])
    gather = np.repeat(b_start - new_off[:-1], blen) + np.arange(new_off[-1])
    chunks = pa.LargeStringArray.from_buffers(total, pa.py_buffer(new_off), pa.py_buffer(region[gather].tobytes()))
    return doc, k, chunks


def chunk_corpus(table: pa.Table, chunk_chars: int, overlap: int) -> pa.Table:
    """Split each document's (whitespace-trimmed) ``text`` into windows of ``chunk_chars`` characters, each
    starting ``chunk_chars - overlap`` characters after the previous one; the last window of a document ends
    at its end (and may be shorter). Documents with empty text have no chunks.

    Returns:
        ``(doc_id, chunk_id, title, text)``: ``chunk_id`` the 0-based ordinal of the chunk in its document
        (int32); rows are in document order. A text of ``L <= chunk_chars`` characters is one chunk.
    """
    if chunk_chars < 1:
        raise ValueError(f"rag.chunk_chars must be >= 1, got {chunk_chars}")
    if not 0 <= overlap < chunk_chars:
        raise ValueError(f"rag.chunk_overlap must be >= 0 and < rag.chunk_chars ({chunk_chars}), got {overlap}")
    for c in CORPUS_COLUMNS:
        if c not in table.column_names:
            raise ValueError(f"corpus table has no '{c}' column (has {table.column_names})")
    text = pc.utf8_trim_whitespace(pc.fill_null(table.column("text").cast(pa.large_string()), "")).combine_chunks()
    stride = chunk_chars - overlap
    sizes = pc.binary_length(text).to_numpy(zero_copy_only=False).astype(np.int64)
    # blocks of whole documents of about _BLOCK_BYTES text each (bounds the per-byte index arrays)
    bounds = np.searchsorted(np.cumsum(sizes), np.arange(_BLOCK_BYTES, max(int(sizes.sum()), 1), _BLOCK_BYTES))
    edges = np.unique(np.concatenate([[0], bounds + 1, [len(text)]]).clip(0, len(text)))
    docs, ords, parts = [], [], []
    for lo, hi in itertools.pairwise(edges):
        d, k, t = _chunk_block(text.slice(lo, hi - lo), chunk_chars, stride)
        docs.append(d + lo)
        ords.append(k)
        parts.append(t)
    doc = np.concatenate(docs) if docs else np.zeros(0, np.int64)
    idx = pa.array(doc, pa.int64())
    chunk_text = pa.concat_arrays(parts) if parts else pa.array([], pa.large_string())
    if chunk_text.nbytes < (1 << 31) - 1:
        chunk_text = chunk_text.cast(pa.string())
    return pa.table(
        {
            "doc_id": table.column("doc_id").cast(pa.string()).take(idx),
            "chunk_id": pa.array(np.concatenate(ords) if ords else np.zeros(0), pa.int32()),
            "title": pc.fill_null(table.column("title").cast(pa.string()), "").take(idx),
            "text": chunk_text,
        }
    )


def chunk_texts(chunks: pa.Table) -> pa.Array:
    """``"<title>: <text>"`` per chunk (just ``text`` when the title is empty): what is embedded and what the
    item prompt quotes as a passage."""
    title = pc.fill_null(chunks.column("title").cast(pa.string()), "")
    text = pc.fill_null(chunks.column("text").cast(pa.string()), "")
    return pc.if_else(pc.equal(title, ""), text, pc.binary_join_element_wise(title, text, ": ")).combine_chunks()


# ----------------------------------------------------------------------------------------------- index


class CorpusIndex:
    """Exact cosine search over corpus chunks.

    Args:
        chunks: :func:`chunk_corpus` output.
        encode: ``texts -> (n, d) float32`` (the registry encoder's
            :meth:`~ragrec.encoders.sentence.SentenceEncoder.encode`; tests pass a fake). Rows are
            L2-normalised here again, so inner product = cosine whatever the encoder returns.
    """

    def __init__(self, chunks: pa.Table, encode: Callable[[list[str]], np.ndarray]) -> None:
        if chunks.num_rows == 0:
            raise ValueError("the corpus has no chunks (every document's text is empty)")
        self.chunks = chunks
        self.texts = chunk_texts(chunks)
        self._encode = encode
        emb = self._embed(self.texts.to_pylist())
        if emb.shape[0] != chunks.num_rows:
            raise ValueError(f"encode returned {emb.shape[0]} rows for {chunks.num_rows} chunks")
        self._index = ItemIndex(emb, "ip")
        self.dim = self._index.dim

    @classmethod
    def from_encoder_name(cls, chunks: pa.Table, encoder: str, device: str = "auto") -> CorpusIndex:
        """Index with the registry sentence encoder ``encoder`` (``rag.encoder``)."""
        from ..encoders.sentence import SentenceEncoder

        return cls(chunks, SentenceEncoder(encoder, device=device).encode)

    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        emb = np.asarray(self._encode(list(texts)), dtype=np.float32)
        if emb.ndim != 2:
            raise ValueError(f"encode must return a (n, d) matrix, got shape {emb.shape}")
        norm = np.linalg.norm(emb, axis=1, keepdims=True)
        return np.ascontiguousarray(emb / np.maximum(norm, 1e-12))

    def __len__(self) -> int:
        return len(self._index)

    def search(self, queries: Sequence[str], top_r: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``top_r`` chunks per query, best first.

        Returns:
            ``(scores, rows)``: ``(n, r)`` float32 cosine similarities and int64 row numbers into
            :attr:`chunks` / :attr:`texts`, with ``r = min(top_r, number of chunks)``.
        """
        if top_r < 1:
            raise ValueError(f"rag.top_r must be >= 1, got {top_r}")
        r = min(top_r, len(self))
        if len(queries) == 0:
            return np.zeros((0, r), np.float32), np.zeros((0, r), np.int64)
        return self._index.search(self._embed(queries), r)

    def passages(self, queries: Sequence[str], top_r: int) -> list[list[str]]:
        """The ``"<title>: <text>"`` of each query's top-``top_r`` chunks, best first."""
        _, rows = self.search(queries, top_r)
        flat = self.texts.take(pa.array(rows.ravel(), pa.int64())).to_pylist()
        r = rows.shape[1]
        return [flat[i * r : (i + 1) * r] for i in range(rows.shape[0])]
