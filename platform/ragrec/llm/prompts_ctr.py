"""CTR prompts of ReLLa / RALLRec for MovieLens (paper §2.3) and the "mixed" views.

A prompt (``{...}`` filled per sample; the profile line is omitted when nothing is known)::

    The user is a female. Her job is educator. Her age is 25.
    She watched the following movies in the past, and rated them:
    0. Toy Story (1995) (4 stars)
    1. Heat (1995) (1 star)
    Note that more stars the user rated the movie, the user liked the movie more.
    Based on the movies she has watched, deduce if she will like the movie ***Jumanji (1995)***.
    You should ONLY tell me yes or no.

Pronouns follow ``users.gender`` ('F' -> she/her, 'M' -> he/his); without a known gender the text
says "the user" / "the user's". History lines are numbered from 0 in the order of ``context_item_ids``
(the retrieval's order). Everything is assembled column-wise with Arrow compute kernels.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ragrec.retrieval.history import CONTEXT_ITEMS, CONTEXT_RATINGS, reorder_by_time

__all__ = ["INSTRUCTION", "NOTE", "VIEWS", "augment_views", "build_ctr_prompts"]

NOTE = "Note that more stars the user rated the movie, the user liked the movie more."
INSTRUCTION = "You should ONLY tell me yes or no."
VIEWS = ("retrieved", "time_ordered", "recent")


def _dense_lookup(table: pa.Table, id_col: str, name: str) -> pa.Table:
    """Rows of ``table`` ordered so that row i is id i; raises unless ids are exactly 0..n-1."""
    if id_col not in table.column_names:
        raise ValueError(f"{name} table has no '{id_col}' column (has {table.column_names})")
    order = pc.sort_indices(table.column(id_col))
    out = table.take(order)
    ids = out.column(id_col).to_numpy()
    if not np.array_equal(ids, np.arange(len(ids))):
        raise ValueError(f"{name}.{id_col} must be the dense ids 0..n-1 (canonical tables); got gaps or duplicates")
    return out


def _take(col: pa.ChunkedArray, idx: np.ndarray, what: str) -> pa.Array:
    if idx.size and (idx.min() < 0 or idx.max() >= len(col)):
        raise ValueError(f"{what}: id {int(idx.max() if idx.max() >= len(col) else idx.min())} is not in the table")
    return col.combine_chunks().take(pa.array(idx, pa.int64()))


def _pronouns(gender: pa.Array | None, n: int) -> tuple[pa.Array, pa.Array, pa.Array, pa.Array]:
    """(Subject, Possessive, subject lower-case, noun) string arrays of length n from 'M'/'F' genders."""
    g = np.full(n, "", dtype=object)
    if gender is not None:
        low = pc.utf8_trim_whitespace(pc.utf8_lower(gender.cast(pa.string())))
        g = np.where(pc.is_in(low, pa.array(["f", "female"])).to_numpy(zero_copy_only=False), "f", g)
        g = np.where(pc.is_in(low, pa.array(["m", "male"])).to_numpy(zero_copy_only=False), "m", g)
    subj = np.select([g == "f", g == "m"], ["She", "He"], "The user")
    poss = np.select([g == "f", g == "m"], ["Her", "His"], "The user's")
    lower = np.select([g == "f", g == "m"], ["she", "he"], "the user")
    noun = np.select([g == "f", g == "m"], ["female", "male"], None)
    return pa.array(subj), pa.array(poss), pa.array(lower), pa.array(noun, pa.string())


def _profile(users: pa.Table | None, user_ids: np.ndarray) -> tuple[pa.Array, tuple[pa.Array, ...]]:
    """Profile sentence (null when nothing is known) and pronoun arrays, one per sample."""
    n = len(user_ids)
    if users is None:
        return pa.nulls(n, pa.string()), _pronouns(None, n)
    u = _dense_lookup(users, "user_id", "users")
    col = lambda name: _take(u.column(name), user_ids, "samples.user_id") if name in u.column_names else None
    gender, occupation, age = col("gender"), col("occupation"), col("age")
    pron = _pronouns(gender, n)
    _, poss, _, noun = pron
    # each sentence carries its trailing space; a null sentence (unknown field) becomes "" when joined.
    # (binary_join_element_wise(null_handling="skip") is not used: pyarrow 26 drops all-null rows.)
    is_a = pc.binary_join_element_wise("The user is a ", noun, ". ", "")
    job = pc.binary_join_element_wise(poss, " job is ", occupation, ". ", "") if occupation is not None else None
    age_s = (
        pc.binary_join_element_wise(poss, " age is ", pc.cast(age, pa.string()), ". ", "") if age is not None else None
    )
    parts = [x for x in (is_a, job, age_s) if x is not None]
    text = pc.utf8_rtrim_whitespace(_join(parts, ""))
    return pc.if_else(pc.equal(text, ""), pa.scalar(None, pa.string()), text), pron


def _join(parts: list, sep: str) -> pa.Array:
    """Element-wise concatenation with ``sep``; null parts count as empty strings."""
    return pc.binary_join_element_wise(*parts, sep, null_handling="replace", null_replacement="")


def _titles(items: pa.Table, max_title_chars: int, genres: bool = False) -> pa.ChunkedArray:
    """Each item's name in the prompt: its title cut to ``max_title_chars``; with ``genres`` followed by
    ``" [Comedy, Drama]"`` (``prompt.genres``; items without genres keep the bare title)."""
    it = _dense_lookup(items, "item_id", "items")
    if "title" not in it.column_names:
        raise ValueError("items table has no 'title' column; the CTR prompt lists item titles")
    title = it.column("title")
    if title.null_count:
        bad = int(np.flatnonzero(pc.is_null(title).to_numpy(zero_copy_only=False))[0])
        raise ValueError(f"items: item_id {bad} has no title; fill items.title before building prompts")
    title = pc.utf8_rtrim_whitespace(pc.utf8_slice_codeunits(title, 0, max_title_chars))
    if not genres:
        return title
    if "genres" not in it.column_names:
        raise ValueError(
            "prompt.genres: the items table has no 'genres' column; map one in data.columns.genres "
            "or set prompt.genres: false"
        )
    g = it.column("genres")
    names = pc.binary_join(g, ", ") if pa.types.is_list(g.type) else g.cast(pa.string())
    names = pc.if_else(pc.equal(pc.fill_null(names, ""), ""), pa.scalar(None, pa.string()), names)
    with_genres = pc.binary_join_element_wise(title, " [", names, "]", "")
    return pc.coalesce(with_genres, title)


def stats_sentence(
    lower: pa.Array,
    user_mean: np.ndarray,
    user_count: np.ndarray,
    item_mean: np.ndarray,
    item_count: np.ndarray,
    kind: str = "rating",
) -> pa.Array:
    """``prompt.stats``: the user's average past rating and the target's average rating so far, in words.

    ``"On average the user rated past movies 3.9 stars (120 ratings). Other users rated this movie 4.2 stars
    on average (85 ratings)."``; ``kind="label"`` (no star ratings) states shares liked instead.
    """

    def fmt(mean: np.ndarray, count: np.ndarray) -> np.ndarray:
        if kind == "rating":
            txt = np.char.add(np.char.mod("%.1f", np.nan_to_num(mean)), " stars")
        else:
            txt = np.char.add(np.char.mod("%.0f", 100 * np.nan_to_num(mean)), "% liked")
        return np.char.add(np.char.add(np.char.add(txt, " ("), np.char.mod("%d", count)), " ratings)")

    user = np.where(user_count > 0, fmt(user_mean, user_count), "")
    item = np.where(
        item_count > 0,
        np.char.add(np.char.add("Other users rated this movie ", fmt(item_mean, item_count)), "."),
        "No other user has rated this movie yet.",
    )
    verb = "rated past movies " if kind == "rating" else "liked past movies: "
    u_sent = pc.binary_join_element_wise("On average ", lower, " " + verb, pa.array(user.tolist()), ". ", "")
    u_sent = pc.if_else(pa.array(user_count > 0), u_sent, pa.scalar("", pa.string()))
    return pc.binary_join_element_wise(u_sent, pa.array(item.tolist()), "")


def build_ctr_prompts(
    samples: pa.Table,
    items: pa.Table,
    users: pa.Table | None,
    *,
    max_title_chars: int = 80,
    stats: dict | None = None,
    genres: bool = False,
) -> list[str]:
    """One ReLLa-style yes/no prompt per sample (template in the module docstring).

    Args:
        samples: n rows with ``user_id``, ``item_id``, ``context_item_ids`` list<int64> and
            ``context_ratings`` list<float32> (see :func:`ragrec.retrieval.history.select_history`).
        items: canonical items (dense ``item_id``, ``title``).
        users: canonical users (dense ``user_id``; optional ``gender`` 'M'/'F', ``occupation``, ``age``),
            or None for no profile sentence.
        max_title_chars: titles are cut to this many characters.
        stats: ``prompt.stats`` numbers (``user_mean``, ``user_count``, ``item_mean``, ``item_count`` arrays of
            length n, ``kind``): a :func:`stats_sentence` line before the question; None: no such line.
        genres: name every movie with its genres ("Heat (1995) [Action, Crime, Thriller]").

    Returns:
        n prompt strings, in the samples' order.
    """
    need = ["user_id", "item_id", CONTEXT_ITEMS, CONTEXT_RATINGS]
    missing = [c for c in need if c not in samples.column_names]
    if missing:
        raise ValueError(f"samples lack {missing}; run ragrec.retrieval.select_history first")
    if max_title_chars < 1:
        raise ValueError(f"prompt.max_title_chars must be >= 1, got {max_title_chars}")
    n = samples.num_rows
    titles = _titles(items, max_title_chars, genres)
    ctx = samples.column(CONTEXT_ITEMS).combine_chunks()
    rat = samples.column(CONTEXT_RATINGS).combine_chunks()
    lengths = pc.fill_null(pc.list_value_length(ctx), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    if not np.array_equal(lengths, pc.fill_null(pc.list_value_length(rat), 0).to_numpy(zero_copy_only=False)):
        raise ValueError(f"{CONTEXT_ITEMS} and {CONTEXT_RATINGS} have different lengths; rerun select_history")
    flat_ids = ctx.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
    flat_rat = rat.flatten()
    starts = np.cumsum(lengths) - lengths
    number = pc.cast(pa.array(np.arange(len(flat_ids)) - np.repeat(starts, lengths)), pa.string())
    stars = pc.if_else(pc.equal(flat_rat, 1.0), " star)", " stars)")
    lines = pc.binary_join_element_wise(
        number,
        ". ",
        _take(titles, flat_ids, f"samples.{CONTEXT_ITEMS}"),
        " (",
        pc.cast(flat_rat, pa.string()),
        stars,
        "",
    )
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    history = pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets), lines), "\n")
    history = pc.if_else(pa.array(lengths > 0), history, pa.scalar(None, pa.string()))  # no empty line

    profile, (subj, _, lower, _) = _profile(users, samples.column("user_id").to_numpy().astype(np.int64))
    target = _take(titles, samples.column("item_id").to_numpy().astype(np.int64), "samples.item_id")
    header = pc.binary_join_element_wise(subj, " watched the following movies in the past, and rated them:", "")
    question = pc.binary_join_element_wise(
        "Based on the movies ", lower, " has watched, deduce if ", lower, " will like the movie ***", target, "***.", ""
    )
    line = lambda x: pc.binary_join_element_wise(x, "\n", "")  # null stays null -> no line at all
    facts = line(stats_sentence(lower, **stats)) if stats is not None else pa.nulls(n, pa.string())
    prompt = _join([line(profile), line(header), line(history), NOTE + "\n", facts, line(question), INSTRUCTION], "")
    return prompt.to_pylist()


def augment_views(
    samples_with_context: pa.Table, samples_recent_context: pa.Table, rng: np.random.Generator
) -> pa.Table:
    """The "mixed" instruction-tuning set: three views of every training sample, shuffled.

    For each of the n input rows the output holds exactly three rows (3n in all), each with the input's
    columns plus ``view`` (string):

    * ``"retrieved"`` — the row as given (context in retrieval order);
    * ``"time_ordered"`` — the same context items and ratings in chronological order
      (:func:`ragrec.retrieval.history.reorder_by_time`);
    * ``"recent"`` — the context of the same sample from ``samples_recent_context`` (the plain K most
      recent items, i.e. ``select_history`` with ``strategy="recent"``).

    The 3n rows are shuffled with ``rng.permutation`` so that a training batch mixes views.

    Args:
        samples_with_context: n training samples with ``context_item_ids`` / ``context_ratings``.
        samples_recent_context: the same n samples in the same order with the recent-K context.
        rng: numpy Generator for the shuffle.

    Returns:
        3n-row table: the columns of ``samples_with_context`` + ``view``.
    """
    a, r = samples_with_context, samples_recent_context
    for name, t in (("samples_with_context", a), ("samples_recent_context", r)):
        missing = [c for c in (CONTEXT_ITEMS, CONTEXT_RATINGS) if c not in t.column_names]
        if missing:
            raise ValueError(f"{name} lacks {missing}; run select_history first")
        if "split" in t.column_names and not pc.all(pc.equal(t.column("split"), "train")).as_py():
            raise ValueError(f"{name} has non-training rows: augment_views is for split == 'train' only (leakage)")
    if a.num_rows != r.num_rows:
        raise ValueError(f"the two tables must hold the same samples: {a.num_rows} vs {r.num_rows} rows")
    key = "sample_id" if "sample_id" in a.column_names and "sample_id" in r.column_names else "item_id"
    if not a.column(key).equals(r.column(key)):
        raise ValueError(f"the two tables must list the same samples in the same order ('{key}' differs)")
    recent = a
    for c in (CONTEXT_ITEMS, CONTEXT_RATINGS):
        recent = recent.set_column(
            recent.schema.get_field_index(c), a.schema.field(c), r.column(c).cast(a.schema.field(c).type)
        )
    views = []
    for name, t in zip(VIEWS, (a, reorder_by_time(a), recent)):
        views.append(t.append_column(pa.field("view", pa.string()), pa.array([name] * t.num_rows, pa.string())))
    out = pa.concat_tables(views)
    return out.take(pa.array(rng.permutation(out.num_rows), pa.int64()))


def prompts_for(
    samples: pa.Table, items: pa.Table, users: pa.Table | None, cfg: Any, interactions: pa.Table | None = None
) -> pa.Array:
    """The CTR prompt of every sample; ``prompt.stats`` also needs the ``interactions`` (item averages so far)."""
    stats = None
    if cfg.prompt.stats:
        if interactions is None:
            raise ValueError("prompt.stats needs the interactions table (the target's ratings before each sample)")
        stats = prompt_stats(samples, interactions)
    return pa.array(
        build_ctr_prompts(
            samples, items, users, max_title_chars=cfg.prompt.max_title_chars, stats=stats, genres=cfg.prompt.genres
        ),
        pa.string(),
    )


def prompt_stats(samples: pa.Table, interactions: pa.Table) -> dict:
    """``prompt.stats`` numbers of each sample: its user's past ratings (``history_ratings``) and its target's
    ratings strictly before the sample's ``timestamp``."""
    from ..data.stats import history_stats, item_stats_before

    missing = [c for c in ("history_ratings", "timestamp") if c not in samples.column_names]
    if missing:
        raise ValueError(f"prompt.stats: samples lack {missing}")
    im, ic, kind = item_stats_before(
        interactions, samples.column("item_id").to_numpy(), samples.column("timestamp").to_numpy()
    )
    um, uc = history_stats(samples.column("history_ratings"))
    return {"user_mean": um, "user_count": uc, "item_mean": im, "item_count": ic, "kind": kind}
