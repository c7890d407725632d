"""Embedding stage: ``(key, text)`` rows -> ``(key, embedding)`` (fixed-size list<float32>).

With ``encoder=None`` the LLM itself embeds (mean-pooled final hidden state, the input of
``lm_head``, as in RALLRec/ReLLa); otherwise a registry sentence encoder (e.g. ``minilm-l6``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pyarrow as pa

from ..artifacts import Artifact, ArtifactStore
from ..config import LLMConfig
from .base import _digest, _engine_spec, llm_table_compute

VERSION = "1"


def embed_stage(
    store: ArtifactStore,
    name: str,
    rows: pa.Table,
    *,
    key: str,
    text: str,
    llm_cfg: LLMConfig,
    encoder: str | None,
    pooling: str = "mean",
    max_tokens: int = 256,
    block_size: int = 256,
    inputs: Iterable[Artifact] = (),
) -> Artifact:
    spec = {
        "llm": _engine_spec(llm_cfg) if encoder is None else None,
        "encoder": encoder,
        "pooling": pooling,
        "max_tokens": max_tokens,
        "n": rows.num_rows,
        "texts": _digest(rows.column(text)),
    }
    params = {"pooling": pooling, "max_tokens": max_tokens}
    compute = llm_table_compute(
        name, rows, key, text, "embedding", "embed", llm_cfg, block_size, params=params, encoder=encoder
    )
    return store.run(name, spec, inputs, compute, version=VERSION)


def embed_texts_stage(
    store: ArtifactStore,
    name: str,
    keys: pa.Array,
    texts: Sequence[pa.Array | pa.ChunkedArray],
    *,
    llm_cfg: LLMConfig,
    encoder: str | None,
    max_tokens: int,
    inputs: Iterable[Artifact] = (),
) -> Artifact:
    """:func:`embed_stage` (blocks of 512) of the text arrays ``texts`` one after the other, row i labelled by
    ``keys[i]``; the artifact's table is ``(key, embedding)`` in that order."""
    flat = [t.combine_chunks() if isinstance(t, pa.ChunkedArray) else t for t in texts]
    rows = pa.table({"key": keys, "text": pa.concat_arrays([t.cast(pa.string()) for t in flat])})
    return embed_stage(
        store,
        name,
        rows,
        key="key",
        text="text",
        llm_cfg=llm_cfg,
        encoder=encoder,
        max_tokens=max_tokens,
        block_size=512,
        inputs=inputs,
    )


def to_numpy(col: pa.ChunkedArray | pa.FixedSizeListArray) -> np.ndarray:
    """A fixed-size-list<float32> column as an (n, d) float32 matrix (zero-copy where possible)."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    d = arr.type.list_size
    return arr.flatten().to_numpy(zero_copy_only=False).reshape(-1, d).astype(np.float32, copy=False)


def from_numpy(x: np.ndarray) -> pa.FixedSizeListArray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1), pa.float32()), x.shape[1])
