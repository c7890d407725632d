"""SCoRe's texts (paper §3): behaviour documents and the prompts P^r, P^b, P^s.

* ``d(H(u))`` — a user's behaviour document: the titles of the user's most recent *liked* training
  items, e.g. ``"Heat (1995)", "Fargo (1996)"``. It is what CAR embeds, what SARE reads next to
  the query, and what goes into the prompt as collaborative information (CI).
* ``P^r`` (self-assessment) — ``rationale.template`` filled with the target user's liked history and
  the target item.
* ``P^b`` (basic)::

    The user has highly rated the following movies: "A", "B". Based on this information, predict whether
    the user would enjoy the movie titled "T". Respond with either 'Yes' or 'No'.

* ``P^s`` (CI-augmented) inserts, before "Based on", ``Other users with similar preferences have
  given high ratings to the movies: [...]; [...].`` with one bracketed list per similar user.

Lists are built column-wise: flat title buffers addressed by list offsets, joined with Arrow kernels
(no Python string assembly per sample).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "NO_HISTORY",
    "basic_prompts",
    "ci_prompts",
    "history_documents",
    "liked_lists",
    "rationale_prompts",
    "user_documents",
]

NO_HISTORY = "(no liked movies yet)"
_QUESTION = "Based on this information, predict whether the user would enjoy the movie titled "
_RESPOND = ". Respond with either 'Yes' or 'No'."
_CI_INTRO = " Other users with similar preferences have given high ratings to the movies: "


def _titles(items: pa.Table, max_title_chars: int) -> pa.Array:
    """Quoted titles indexed by dense item id: ``titles[i] == '"<title of item i>"'``."""
    from .prompts_ctr import _titles as ctr_titles

    t = ctr_titles(items, max_title_chars).combine_chunks()
    return pc.binary_join_element_wise('"', t, '"', "")


def liked_lists(item_ids: pa.ListArray, liked: pa.ListArray, max_items: int) -> pa.ListArray:
    """Per row, the liked entries of ``item_ids`` (where ``liked`` is true), keeping the last ``max_items``.

    Args:
        item_ids: ``(n,)`` list<int64>, oldest first.
        liked: ``(n,)`` list<bool> aligned with ``item_ids``.
        max_items: keep at most this many most recent liked items per row.

    Returns:
        ``(n,)`` list<int64> (oldest first), empty lists where nothing is liked.
    """
    ids = item_ids.combine_chunks() if isinstance(item_ids, pa.ChunkedArray) else item_ids
    lk = liked.combine_chunks() if isinstance(liked, pa.ChunkedArray) else liked
    n = len(ids)
    lengths = pc.list_value_length(ids).fill_null(0).to_numpy().astype(np.int64)
    flat = pc.list_flatten(ids).to_numpy()
    mask = pc.fill_null(pc.list_flatten(lk), False).to_numpy(zero_copy_only=False).astype(bool)
    if len(mask) != len(flat):
        raise ValueError(f"liked_lists: liked has {len(mask)} entries, item_ids {len(flat)}; the lists must align")
    row = np.repeat(np.arange(n), lengths)
    # rank of each liked entry counted from the end of its row: keep those with rank < max_items
    liked_per_row = np.bincount(row[mask], minlength=n)
    csum = np.cumsum(mask) - mask  # liked entries before this one (global)
    first_liked = np.concatenate([[0], np.cumsum(liked_per_row)[:-1]])
    rank_from_start = csum - first_liked[row]
    keep = mask & (rank_from_start >= (liked_per_row[row] - max_items))
    kept_per_row = np.bincount(row[keep], minlength=n)
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(kept_per_row, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat[keep], pa.int64()))


def _join_titles(lists: pa.ListArray, titles: pa.Array, sep: str = ", ") -> pa.Array:
    """``(n,)`` strings: each row's titles joined by ``sep``; NO_HISTORY for empty rows."""
    flat = pc.list_flatten(lists).to_numpy()
    if flat.size and (flat.min() < 0 or flat.max() >= len(titles)):
        raise ValueError(f"item id {int(flat.max())} is not in the items table ({len(titles)} items)")
    offsets = lists.offsets
    texts = pa.ListArray.from_arrays(offsets, titles.take(pa.array(flat, pa.int64())))
    joined = pc.binary_join(texts, sep)
    return pc.if_else(pc.equal(pc.list_value_length(lists), 0), pa.scalar(NO_HISTORY), joined)


def user_documents(
    interactions: pa.Table, items: pa.Table, num_users: int, *, max_items: int, max_title_chars: int = 80
) -> pa.Table:
    """``d(H(u))`` for every user from *training* interactions: titles of the last ``max_items`` liked items.

    Args:
        interactions: training interactions (``user_id``, ``item_id``, ``timestamp``, ``label``).
        items: the items table (dense ``item_id``, ``title``).
        num_users: number of users (dense ids ``0..num_users-1``).

    Returns:
        ``(num_users,)`` table ``user_id``, ``doc`` string, ``n_liked`` int32 (0: no document; such
        users are never retrieved).
    """
    from .prompts_ctr import _dense_lookup  # noqa: F401  (validates items below through _titles)

    u = interactions.column("user_id").to_numpy()
    it = interactions.column("item_id").to_numpy()
    ts = interactions.column("timestamp").to_numpy()
    lab = interactions.column("label").to_numpy().astype(bool)
    if u.size and (u.min() < 0 or u.max() >= num_users):
        raise ValueError(f"user_documents: user_id {int(u.max())} outside 0..{num_users - 1}")
    order = np.lexsort((it, ts, u))  # by user, then time
    u, it, lab = u[order], it[order], lab[order]
    counts = np.bincount(u, minlength=num_users)
    offsets = np.zeros(num_users + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    ids = pa.ListArray.from_arrays(pa.array(offsets), pa.array(it, pa.int64()))
    liked = pa.ListArray.from_arrays(pa.array(offsets), pa.array(lab))
    kept = liked_lists(ids, liked, max_items)
    docs = _join_titles(kept, _titles(items, max_title_chars))
    return pa.table(
        {
            "user_id": pa.array(np.arange(num_users, dtype=np.int64)),
            "doc": docs,
            "n_liked": pa.array(pc.list_value_length(kept).to_numpy().astype(np.int32)),
        }
    )


def history_documents(
    samples: pa.Table, items: pa.Table, *, max_items: int, label_threshold: float = 3.0, max_title_chars: int = 80
) -> pa.Array:
    """Each sample's own liked history (most recent ``max_items``) as a title list.

    Liked = ``history_labels`` when the samples carry them (temporal protocol, labelled data), else
    ``history_ratings > label_threshold``.
    """
    ids = samples.column("history_item_ids").combine_chunks()
    if "history_labels" in samples.column_names:
        liked = pc.cast(samples.column("history_labels").combine_chunks(), pa.list_(pa.bool_()))
    else:
        r = samples.column("history_ratings").combine_chunks()
        flat = pc.greater(pc.list_flatten(r), pa.scalar(label_threshold, pa.float32()))
        liked = pa.ListArray.from_arrays(r.offsets, flat)
    return _join_titles(liked_lists(ids, liked, max_items), _titles(items, max_title_chars))


def _target_titles(samples: pa.Table, items: pa.Table, max_title_chars: int) -> pa.Array:
    titles = _titles(items, max_title_chars)
    idx = samples.column("item_id").to_numpy()
    if idx.size and (idx.min() < 0 or idx.max() >= len(titles)):
        raise ValueError(f"samples.item_id {int(idx.max())} is not in the items table ({len(titles)} items)")
    return titles.take(pa.array(idx))


def rationale_prompts(
    samples: pa.Table, history: pa.Array, items: pa.Table, template: str, max_title_chars: int = 80
) -> list[str]:
    """``P^r`` per sample: ``template`` with ``{history}`` and ``{target}`` filled
    (:func:`ragrec.templates.fill_template`: named fields only, both required)."""
    from ..templates import fill_template

    target = _target_titles(samples, items, max_title_chars)
    values = {"history": pa.array(history) if not isinstance(history, pa.Array) else history, "target": target}
    return fill_template(template, values, "rationale.template").to_pylist()


def basic_prompts(samples: pa.Table, history: pa.Array, items: pa.Table, max_title_chars: int = 80) -> pa.Array:
    """``P^b`` per sample (the TALLRec-style prompt without CI; also SARE's query text)."""
    target = _target_titles(samples, items, max_title_chars)
    return pc.binary_join_element_wise(
        "The user has highly rated the following movies: ", history, ". ", _QUESTION, target, _RESPOND, ""
    )


def ci_prompts(
    samples: pa.Table, history: pa.Array, similar_docs: list[pa.Array], items: pa.Table, max_title_chars: int = 80
) -> pa.Array:
    """``P^s`` per sample: ``P^b`` with the similar users' documents (one ``[...]`` list per user, best first).

    Args:
        similar_docs: ``Ks`` string arrays of length n (the k-th most useful user's document per sample).
            An empty list gives ``P^b``.
    """
    if not similar_docs:
        return basic_prompts(samples, history, items, max_title_chars)
    target = _target_titles(samples, items, max_title_chars)
    lists = [pc.binary_join_element_wise("[", d, "]", "") for d in similar_docs]
    ci = pc.binary_join_element_wise(*lists, "; ")
    return pc.binary_join_element_wise(
        "The user has highly rated the following movies: ",
        history,
        ".",
        _CI_INTRO,
        ci,
        ". ",
        _QUESTION,
        target,
        _RESPOND,
        "",
    )
