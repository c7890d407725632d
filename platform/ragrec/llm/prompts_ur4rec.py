"""UR4Rec's generation prompts (paper §3.1) and the raw texts of its ``+text`` row.

* ``p_u`` (Eq. 1) — ``ur4rec.user_template`` with ``{history}`` = the user's most recent rated training
  items, oldest first, each written ``"Heat (1995)", an Action, Crime and Thriller movie, 4 stars`` as in
  the paper's Steam example (``"Windsill", an Adventure and Casual and Indie game, 2 stars``).
* ``p_i`` (Eq. 3) — ``ur4rec.item_template`` with ``{title}`` and ``{genre}``.
* The ``+text`` row (the paper's +BERT) encodes the same facts without the LLM: a user's history list as
  above and each item's ``"Heat (1995)", an Action, Crime and Thriller movie``.

Texts are assembled column-wise with Arrow kernels over flat buffers addressed by list offsets (no Python
string assembly per user or item). Templates are filled by :func:`ragrec.templates.fill_template` (named
fields only, checked when the config loads), so a title holding braces is never interpreted.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..templates import fill_template
from .prompts_ctr import _dense_lookup

__all__ = [
    "NO_HISTORY",
    "fill_template",
    "history_texts",
    "item_phrases",
    "item_prompts",
    "user_histories",
    "user_prompts",
]

NO_HISTORY = "(no rated movies yet)"


def _genre_words(items: pa.Table) -> pa.Array:
    """``"Action, Crime and Thriller"`` per dense item id (``"unknown genre"`` without genres)."""
    it = _dense_lookup(items, "item_id", "items")
    n = it.num_rows
    if "genres" not in it.column_names:
        return pa.array(["unknown genre"] * n, pa.string())
    g = it.column("genres").combine_chunks()
    if not pa.types.is_list(g.type):
        words = pc.fill_null(g.cast(pa.string()), "")
        return pc.if_else(pc.equal(words, ""), pa.scalar("unknown genre"), words)
    lengths = pc.fill_null(pc.list_value_length(g), 0).to_numpy()
    flat = pc.list_flatten(g).to_numpy(zero_copy_only=False).astype(object)
    offsets = g.offsets.to_numpy()
    # the last genre of each non-empty row, and the rows without it
    nonempty = lengths > 0
    last_idx = offsets[1:] - 1
    is_last = np.zeros(len(flat), dtype=bool)
    is_last[last_idx[nonempty]] = True
    head_lists = pa.ListArray.from_arrays(
        pa.array(np.concatenate([[0], np.cumsum(np.maximum(lengths - 1, 0))]).astype(np.int32)),
        pa.array(flat[~is_last], pa.string()),
    )
    head = pc.binary_join(head_lists, ", ")
    tail = np.full(n, "", dtype=object)
    tail[nonempty] = flat[last_idx[nonempty]]
    tail = pa.array(tail, pa.string())
    joined = pc.if_else(pc.greater(pa.array(lengths), 1), pc.binary_join_element_wise(head, tail, " and "), tail)
    return pc.if_else(pc.equal(joined, ""), pa.scalar("unknown genre"), joined)


def item_phrases(items: pa.Table, max_title_chars: int = 80) -> pa.Array:
    """``(n_items,)`` ``"Heat (1995)", an Action, Crime and Thriller movie`` by dense item id (the ``+text``
    item text, and each history entry of ``p_u`` before its stars)."""
    it = _dense_lookup(items, "item_id", "items")
    title = it.column("title")
    if title.null_count:
        bad = int(np.flatnonzero(pc.is_null(title).to_numpy(zero_copy_only=False))[0])
        raise ValueError(f"items: item_id {bad} has no title; fill items.title before building UR4Rec prompts")
    title = pc.utf8_rtrim_whitespace(pc.utf8_slice_codeunits(title, 0, max_title_chars)).combine_chunks()
    genres = _genre_words(items)
    vowel = pc.match_substring_regex(genres, "^[AEIOUaeiou]")
    article = pc.if_else(vowel, pa.scalar("an "), pa.scalar("a "))
    return pc.binary_join_element_wise('"', title, '", ', article, genres, " movie", "")


def user_histories(
    interactions: pa.Table, cut: np.ndarray, num_users: int, max_items: int
) -> tuple[pa.ListArray, pa.ListArray]:
    """Each user's rated interactions strictly before ``cut[user]``, the last ``max_items`` in time order.

    Args:
        interactions: ``user_id``, ``item_id``, ``rating``, ``timestamp``.
        cut: ``(num_users,)`` int64 timestamps (the user's first valid/test target; ``iinfo.max`` = all).
        num_users: users are ``0..num_users-1``.
        max_items: most recent interactions kept per user.

    Returns:
        ``(item_ids, ratings)``: ``(num_users,)`` list<int64> and list<float32>, oldest first.
    """
    u = interactions.column("user_id").to_numpy()
    i = interactions.column("item_id").to_numpy()
    r = interactions.column("rating").to_numpy(zero_copy_only=False).astype(np.float32)
    t = interactions.column("timestamp").to_numpy()
    keep = t < cut[u]
    u, i, r, t = u[keep], i[keep], r[keep], t[keep]
    order = np.lexsort((i, t, u))
    u, i, r = u[order], i[order], r[order]
    counts = np.bincount(u, minlength=num_users)
    ends = np.cumsum(counts)
    from_end = ends[u] - np.arange(len(u))  # 1 = the user's most recent
    last = from_end <= max_items
    u, i, r = u[last], i[last], r[last]
    offsets = np.zeros(num_users + 1, dtype=np.int32)
    np.cumsum(np.bincount(u, minlength=num_users), out=offsets[1:])
    return (
        pa.ListArray.from_arrays(pa.array(offsets), pa.array(i, pa.int64())),
        pa.ListArray.from_arrays(pa.array(offsets), pa.array(r, pa.float32())),
    )


def history_texts(items: pa.Table, item_ids: pa.ListArray, ratings: pa.ListArray | None) -> pa.Array:
    """Per row, ``[<phrase>, N stars; <phrase>, N stars; ...]`` (without stars when ``ratings`` is None);
    :data:`NO_HISTORY` for empty rows."""
    phrases = item_phrases(items)
    item_ids = item_ids.combine_chunks() if isinstance(item_ids, pa.ChunkedArray) else item_ids
    if isinstance(ratings, pa.ChunkedArray):
        ratings = ratings.combine_chunks()
    flat = pc.list_flatten(item_ids).to_numpy()
    if flat.size and (flat.min() < 0 or flat.max() >= len(phrases)):
        raise ValueError(f"item id {int(flat.max())} is not in the items table ({len(phrases)} items)")
    entries = phrases.take(pa.array(flat, pa.int64()))
    if ratings is not None:
        stars = pc.cast(pc.round(pc.list_flatten(ratings)), pa.int64()).cast(pa.string())
        entries = pc.binary_join_element_wise(entries, ", ", stars, " stars", "")
    joined = pc.binary_join(pa.ListArray.from_arrays(item_ids.offsets, entries), "; ")
    joined = pc.binary_join_element_wise("[", joined, "]", "")
    return pc.if_else(pc.equal(pc.list_value_length(item_ids), 0), pa.scalar(NO_HISTORY), joined)


def user_prompts(template: str, items: pa.Table, item_ids: pa.ListArray, ratings: pa.ListArray) -> pa.Array:
    """``p_u`` (Eq. 1) per row of the user histories (:func:`user_histories`)."""
    return fill_template(template, {"history": history_texts(items, item_ids, ratings)}, "ur4rec.user_template")


def item_prompts(template: str, items: pa.Table, max_title_chars: int = 80) -> pa.Array:
    """``p_i`` (Eq. 3) per dense item id: ``{title}`` and ``{genre}`` (``"Action, Crime and Thriller"``)."""
    it = _dense_lookup(items, "item_id", "items")
    title = pc.utf8_rtrim_whitespace(pc.utf8_slice_codeunits(it.column("title"), 0, max_title_chars)).combine_chunks()
    values = {"title": pc.fill_null(title, ""), "genre": _genre_words(items)}
    return fill_template(template, values, "ur4rec.item_template")
