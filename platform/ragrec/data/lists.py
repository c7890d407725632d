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


class PositiveSequences:
    """Every user's kept positives in protocol order, rebuilt from a ``rerank`` samples table: the first
    sample's history (the positives before the first target) followed by all the user's targets.

    What serving needs to give a request the history the offline lists had: :meth:`history` returns the last
    ``length`` positives before a time (all of them without one), left-padded like :func:`left_padded`.
    """

    def __init__(self, samples: pa.Table, num_users: int):
        user = samples.column("user_id").to_numpy()
        ts = samples.column("timestamp").to_numpy()
        target = samples.column("item_id").to_numpy()
        order = np.lexsort((target, ts, user))
        user, ts, target = user[order], ts[order], target[order]
        first = np.ones(len(user), dtype=bool)
        first[1:] = user[1:] != user[:-1]
        hist = samples.column("history").combine_chunks().take(pa.array(order[first]))
        h_len = np.diff(hist.offsets.to_numpy())
        h_items = pc.list_flatten(hist).to_numpy().astype(np.int64)
        h_user = np.repeat(user[first], h_len)
        # history items come before the first target: they get the smallest timestamp
        items = np.concatenate([h_items, target])
        times = np.concatenate([np.full(len(h_items), np.iinfo(np.int64).min), ts])
        owner = np.concatenate([h_user, user])
        rank = np.concatenate([np.zeros(len(h_items), np.int8), np.ones(len(target), np.int8)])
        order = np.lexsort((np.arange(len(items)), rank, owner))  # per user: history, then targets in time order
        self.items, self.times, owner = items[order], times[order], owner[order]
        self.offsets = np.zeros(num_users + 1, dtype=np.int64)
        np.cumsum(np.bincount(owner, minlength=num_users), out=self.offsets[1:])

    def history(self, user: int, length: int, as_of: int | None = None) -> np.ndarray:
        """``(1, length)`` int64 item id + 1, left-padded: the user's last ``length`` positives (before ``as_of``)."""
        lo, hi = self.offsets[user], self.offsets[user + 1]
        if as_of is not None:
            hi = lo + int(np.searchsorted(self.times[lo:hi], as_of, side="left"))
        seq = self.items[max(lo, hi - length) : hi] + 1
        out = np.zeros((1, length), dtype=np.int64)
        if len(seq):
            out[0, length - len(seq) :] = seq
        return out
