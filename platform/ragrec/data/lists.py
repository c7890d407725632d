"""The ``rerank`` protocol's samples as arrays: what rerankers, retrievers and ranking reports read.

A sample is a user, the last L positives before the target (``history``) and a candidate list holding the
target at ``target_index`` (:func:`ragrec.data.rerank.rerank_samples`). :class:`Lists` holds N of them as
numpy arrays, histories left-padded with item id + 1 (0 = padding), as the rerankers' embeddings expect.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


# ---------------------------------------------------------------------------------------------------
@dataclass
class Lists:
    """The candidate lists of some samples as arrays (what the rerankers and the retriever read)."""

    sample_id: np.ndarray  # (N,) int64
    users: np.ndarray  # (N,) int64
    history: np.ndarray  # (N, L) int64 item id + 1, 0 = padding, left-padded (most recent last)
    candidates: np.ndarray  # (N, C) int64
    target_index: np.ndarray  # (N,) int64
    targets: np.ndarray  # (N,) int64 item id of the positive

    def arrays(self, aug: np.ndarray | None = None) -> dict[str, np.ndarray]:
        out = {
            "users": self.users,
            "history": self.history,
            "candidates": self.candidates,
            "target_index": self.target_index,
        }
        return out | ({"aug": aug} if aug is not None else {})

    def __len__(self) -> int:
        return len(self.sample_id)


def left_padded(lists: pa.ListArray, length: int) -> np.ndarray:
    """``(n, length)`` int64: each row's last ``length`` values + 1, left-padded with 0 (vectorised)."""
    lists = lists.combine_chunks() if isinstance(lists, pa.ChunkedArray) else lists
    offsets = lists.offsets.to_numpy().astype(np.int64)
    values = pc.list_flatten(lists).to_numpy().astype(np.int64) + 1
    n = len(offsets) - 1
    lengths = np.minimum(np.diff(offsets), length)
    out = np.zeros((n, length), dtype=np.int64)
    rows = np.repeat(np.arange(n), lengths)
    within = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)  # 0..len-1 per row
    src = np.repeat(offsets[1:] - lengths, lengths) + within
    out[rows, length - np.repeat(lengths, lengths) + within] = values[src]
    return out


def to_lists(samples: pa.Table, history_len: int) -> Lists:
    cands = samples.column("candidates").combine_chunks()
    c = len(cands[0]) if len(cands) else 0
    return Lists(
        sample_id=samples.column("sample_id").to_numpy(),
        users=samples.column("user_id").to_numpy(),
        history=left_padded(samples.column("history"), history_len),
        candidates=pc.list_flatten(cands).to_numpy().astype(np.int64).reshape(-1, c),
        target_index=samples.column("target_index").to_numpy().astype(np.int64),
        targets=samples.column("item_id").to_numpy(),
    )
