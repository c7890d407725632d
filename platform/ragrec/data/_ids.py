"""Raw id -> dense id mapping (vectorised with ``pyarrow.compute``)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def _same_type(a: pa.Array, b: pa.Array) -> tuple[pa.Array, pa.Array]:
    if a.type.equals(b.type):
        return a, b
    if pa.types.is_integer(a.type) and pa.types.is_integer(b.type):
        return pc.cast(a, pa.int64()), pc.cast(b, pa.int64())
    return pc.cast(a, pa.string()), pc.cast(b, pa.string())


def sorted_unique(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """The distinct values of ``values`` in ascending order: ``(n_unique,)``; dense id = position."""
    uniq = pc.unique(values)
    if isinstance(uniq, pa.ChunkedArray):
        uniq = uniq.combine_chunks()
    return uniq.take(pc.sort_indices(uniq))


def dense_index(keys: pa.Array | pa.ChunkedArray, universe: pa.Array) -> np.ndarray:
    """Position of each key in ``universe``: ``(len(keys),) int64``, ``-1`` where absent."""
    if isinstance(keys, pa.ChunkedArray):
        keys = keys.combine_chunks()
    keys, universe = _same_type(keys, universe)
    idx = pc.index_in(keys, value_set=universe)
    return idx.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)


def first_duplicate(values: pa.Array | pa.ChunkedArray) -> int | None:
    """Row index of the first value that already occurred earlier, or None."""
    import pandas as pd

    dup = pd.Series(values.to_numpy(zero_copy_only=False)).duplicated().to_numpy()
    idx = np.flatnonzero(dup)
    return int(idx[0]) if len(idx) else None


def year_from_title(titles: pa.Array | pa.ChunkedArray) -> pa.Array:
    """``(n,) int32`` year from a trailing ``"(1995)"`` in each title; null where there is none."""
    m = pc.extract_regex(titles, r"\((?P<year>\d{4})\)\s*$")
    return pc.cast(pc.struct_field(m, "year"), pa.int32())
