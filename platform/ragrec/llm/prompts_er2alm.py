"""ER2ALM's two LLM steps: the item prompt ``P_I`` (§3.1, Eq. 1) and the user-analysis hard prompt ``P_U``
(§3.2, Eq. 2-3, Fig. 3), and the tolerant parsers of their answers.

Both prompts follow Table 1 / Eq. 3, ``Temp = {(T_data), Des, Ins, Det, Out, Emp}``: the data first (so that
the engine's left truncation cuts the oldest data, never the instructions), then the task description,
instructions, detail requirements, output format and emphasis.

The answers use one FIXED line per aspect of :data:`~ragrec.config.ER2ALM_ASPECTS`, labelled by
:data:`ASPECT_LABELS`::

    plot/theme: <text>                      (item aspects, P_I)
    genre: <text>
    visual/sound: <text>
    culture/language: <text>
    duration: <text>
    director: <text>

    plot/theme: <preference> [weight: 0.7]  (user profile, P_U; one weight in (0, 1) per aspect)
    ...

The parsers never raise on malformed text: labels match case-insensitively after bullets (``-``, ``*``,
``•``), numbering (``1.``, ``2)``), headings (``#``) and markdown bold/italics, with variants such as
``Plot / Theme``, ``Plot and theme``, ``plot_theme``, ``Themes``, ``Visual & Sound``, ``Sound``,
``Language``, ``Running time`` or ``Directors``. The first line of an aspect wins; a label line with an empty
value takes the next unlabelled line. Empty values and placeholders (``unknown``, ``n/a``, ``none``,
``<text>``) are missing (null). Prompts are assembled column-wise with Arrow kernels and filled by
:func:`~ragrec.llm.prompts_ur4rec.fill_template` (named fields only: braces in titles stay literal).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..config import ER2ALM_ASPECTS
from .prompts_ctr import _dense_lookup
from .prompts_ur4rec import fill_template

__all__ = [
    "ASPECT_LABELS",
    "ASPECT_TEMPLATE",
    "NO_HISTORY",
    "NO_PASSAGES",
    "PICK_LABELS",
    "PICK_TEMPLATE",
    "PROFILE_TEMPLATE",
    "UNIFORM_WEIGHT",
    "aspect_prompts",
    "parse_aspects",
    "parse_picks",
    "parse_profiles",
    "pick_prompts",
    "profile_prompts",
]

ASPECT_LABELS = {
    "plot_theme": "plot/theme",
    "genre": "genre",
    "visual_sound": "visual/sound",
    "culture_language": "culture/language",
    "duration": "duration",
    "director": "director",
}
assert tuple(ASPECT_LABELS) == ER2ALM_ASPECTS
NO_PASSAGES = "(no passages were retrieved)"
NO_HISTORY = "(no liked movies yet)"
UNIFORM_WEIGHT = 0.5  # every aspect's weight when a profile answer gives no usable weight at all

_FORMAT_LINES = "\n".join(f"{ASPECT_LABELS[a]}: <text>" for a in ER2ALM_ASPECTS)
_WEIGHT_LINES = "\n".join(
    f"{ASPECT_LABELS[a]}: <preference> [weight: <number between 0 and 1>]" for a in ER2ALM_ASPECTS
)

ASPECT_TEMPLATE = (
    "Movie data:\n"
    "Title: {title}\n"
    "Year: {year}\n"
    "Genres: {genre}\n"
    "Retrieved passages (some may be about other movies):\n"
    "{passages}\n\n"
    "Task description: You are a film expert. Write the auxiliary information of the movie above from six "
    "aspects: plot and theme, genre, visual style and sound, culture and language, duration, and director.\n"
    "Task instructions: Read the movie data and the retrieved passages. Use a passage only when it is about "
    "this movie (same title and year); ignore passages about other movies. Where the passages say nothing "
    "about an aspect, use what you reliably know about the movie.\n"
    "Specific detail requirements: The plot/theme line gives the story without spoilers and its main themes. "
    "The genre line gives the genres and sub-genres and the tone. The visual/sound line describes the "
    "cinematography, visual style, special effects, music and sound. The culture/language line gives the "
    "country, language and cultural setting. The duration line gives the running time and pacing. The director "
    "line names the director and the main cast.\n"
    "Output format: exactly six lines, in this order, each made of the aspect's label, a colon and your text:\n"
    f"{_FORMAT_LINES}\n"
    "Emphasis on details: Write only these six lines, with no text before or after them and no line breaks "
    "inside a line. Keep each line under 40 words. Do not invent facts: write unknown when neither the "
    "passages nor your knowledge tell."
)

PROFILE_TEMPLATE = (
    "Movies the user liked most recently, oldest first, each with its auxiliary information:\n"
    "{history}\n\n"
    "Task description: Analyse this user's movie preferences and write the user's profile from six "
    "perspectives (plot and theme, genre, visual style and sound, culture and language, duration, director), "
    "with a weight for how much each perspective matters to the user.\n"
    "Task instructions: Read every movie above and its auxiliary information. For each perspective, find what "
    "the movies have in common and infer the user's preference; then judge how strongly that perspective "
    "drives the user's choices.\n"
    "Specific detail requirements: Describe preferences, not single movies (e.g. prefers dark crime dramas). "
    "A weight is a decimal number strictly between 0 and 1: close to 1 when the perspective decides what "
    "the user watches, close to 0 when it does not matter to the user.\n"
    "Output format: exactly six lines, in this order; each line is the perspective's label, a colon, the "
    "user's preference and the weight in square brackets:\n"
    f"{_WEIGHT_LINES}\n"
    "Emphasis on details: Write only these six lines, with no text before or after them. Every line must end "
    "with its weight as [weight: w], w a decimal between 0 and 1 (not a percentage) that differs between "
    "perspectives as much as their importance to this user does. Base "
    "every statement on the movies listed."
)

# ------------------------------------------------------------------------------------------------ prompts


def _item_texts(items: pa.Table, max_title_chars: int) -> tuple[pa.Array, pa.Array, pa.Array]:
    """``(title, year or "unknown", "A, B, C" genres or "unknown")`` by dense item id."""
    from ..data._ids import year_from_title

    it = _dense_lookup(items, "item_id", "items")
    title = pc.fill_null(it.column("title").cast(pa.string()), "")
    title = pc.utf8_rtrim_whitespace(pc.utf8_slice_codeunits(title, 0, max_title_chars)).combine_chunks()
    year = it.column("year").combine_chunks() if "year" in it.column_names else year_from_title(title)
    year = pc.fill_null(pc.cast(year, pa.string()), "unknown")
    genre = pa.array(["unknown"] * it.num_rows, pa.string())
    if "genres" in it.column_names:
        g = it.column("genres").combine_chunks()
        if pa.types.is_list(g.type) or pa.types.is_large_list(g.type):
            g = pc.binary_join(g, ", ")
        g = pc.fill_null(pc.utf8_trim_whitespace(g.cast(pa.string())), "")
        genre = pc.if_else(pc.equal(g, ""), pa.scalar("unknown"), g)
    return title, year, genre


def _one_line(arr: pa.Array, max_chars: int) -> pa.Array:
    """Whitespace runs (line breaks included) collapsed to one space, then cut to ``max_chars``."""
    flat = pc.replace_substring_regex(pc.fill_null(arr, ""), r"\s+", " ")
    return pc.utf8_trim_whitespace(pc.utf8_slice_codeunits(flat, 0, max_chars))


def _numbered(values: pa.Array, offsets: np.ndarray, before: str, after: str, empty: str) -> pa.Array:
    """Per list row (``offsets``), its ``values`` as ``before + k + after + value`` (k = 1, 2, ...), one a line;
    ``empty`` for empty rows."""
    offsets = np.asarray(offsets, dtype=np.int64)
    lengths = np.diff(offsets)
    k = np.arange(offsets[-1] - offsets[0]) - np.repeat(offsets[:-1] - offsets[0], lengths) + 1
    entries = pc.binary_join_element_wise(before, pa.array(k, pa.int64()).cast(pa.string()), after, values, "")
    joined = pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets - offsets[0], pa.int32()), entries), "\n")
    return pc.if_else(pa.array(lengths == 0), pa.scalar(empty), joined)


def aspect_prompts(
    items: pa.Table,
    passages: Sequence[Sequence[str]],
    template: str = ASPECT_TEMPLATE,
    max_passage_chars: int = 700,
    max_title_chars: int = 120,
) -> pa.Array:
    """``P_I`` (Eq. 1) per dense item id: the item's data and its retrieved passages (``passages[i]``, best
    first, each on one line as ``[k] <passage>`` cut to ``max_passage_chars``; :data:`NO_PASSAGES` when
    empty), then the Table 1 sections asking for the six aspect lines.

    ``template`` fields: ``{title}``, ``{year}`` (``unknown`` when not known), ``{genre}``
    (``"Action, Crime, Thriller"`` or ``unknown``) and ``{passages}``.
    """
    title, year, genre = _item_texts(items, max_title_chars)
    if len(passages) != len(title):
        raise ValueError(f"passages: {len(passages)} lists for {len(title)} items (one list per dense item id)")
    lists = pa.array([list(p) for p in passages], pa.list_(pa.string()))
    flat = _one_line(pc.list_flatten(lists), max_passage_chars)
    text = _numbered(flat, lists.offsets.to_numpy(), "[", "] ", NO_PASSAGES)
    values = {"title": title, "year": year, "genre": genre, "passages": text}
    return fill_template(template, values, "er2alm item prompt")


def fit_aspect_prompts(
    items: pa.Table,
    passages: Sequence[Sequence[str]],
    count_tokens: Callable[[list[str]], Sequence[int]],
    max_prompt_tokens: int,
    **kwargs: Any,
) -> tuple[pa.Array, dict[str, int]]:
    """:func:`aspect_prompts` that fit in ``max_prompt_tokens``, and what was dropped to get there.

    The engine cuts over-long prompts from the left, which here would drop the item's own title, year and
    genres first (they open the prompt). Instead, an item whose prompt is too long loses its least relevant
    passages (the last ones) one at a time until it fits; ``count_tokens`` gives the model-input token count
    of each prompt text (:func:`~ragrec.llm.chat.prompt_token_counts`).

    Raises ValueError naming ``llm.max_prompt_tokens`` when an item does not fit even without passages.
    """
    items = _dense_lookup(items, "item_id", "items")  # row i = dense item id i, like passages and the output
    lists = [list(p) for p in passages]
    prompts = aspect_prompts(items, lists, **kwargs).to_pylist()
    lengths = np.asarray(count_tokens(prompts), dtype=np.int64)
    over = np.flatnonzero(lengths > max_prompt_tokens)
    dropped, shortened = 0, set()
    while over.size:
        stuck = [int(i) for i in over if not lists[i]]
        if stuck:
            i = stuck[0]
            raise ValueError(
                f"llm.max_prompt_tokens={max_prompt_tokens} is too small for ER2ALM's item prompt: item "
                f"{i} needs {int(lengths[i])} tokens without any passage "
                f"(the instructions alone are ~350); raise llm.max_prompt_tokens to at least {int(lengths[i]) + 16}"
            )
        for i in over:
            lists[i].pop()
        dropped += len(over)
        shortened.update(int(i) for i in over)
        sub_items = items.take(pa.array(over)).set_column(
            items.column_names.index("item_id"), "item_id", pa.array(np.arange(len(over)), pa.int64())
        )
        sub = aspect_prompts(sub_items, [lists[i] for i in over], **kwargs).to_pylist()
        lengths[over] = np.asarray(count_tokens(sub), dtype=np.int64)
        for i, text in zip(over, sub):
            prompts[i] = text
        over = over[lengths[over] > max_prompt_tokens]
    return pa.array(prompts, pa.string()), {"passages_dropped": dropped, "items_shortened": len(shortened)}


def profile_prompts(
    items: pa.Table,
    aspects: pa.Table,
    histories: pa.ListArray | pa.ChunkedArray,
    max_items: int,
    template: str = PROFILE_TEMPLATE,
    max_aspect_chars: int = 160,
    max_title_chars: int = 120,
) -> pa.Array:
    """``P_U`` (Eq. 2-3, Fig. 3) per row of ``histories``.

    Args:
        items: canonical items (dense ``item_id``, ``title``, optional ``genres`` / ``year``).
        aspects: :func:`parse_aspects` table, row i = dense item id i (nulls are left out of the prompt).
        histories: per user, the liked (training) item ids, oldest first; the last ``max_items`` are shown
            (``profile.max_history_items``), numbered from 1, one line each:
            ``1. "Heat (1995)" (Action, Crime, Thriller) - plot/theme: ...; genre: ...; director: ...``.
        max_items: most recent items kept per user.
        template: its one field is ``{history}`` (:data:`NO_HISTORY` for users without liked items).
    """
    if max_items < 1:
        raise ValueError(f"profile.max_history_items must be >= 1, got {max_items}")
    title, _, genre = _item_texts(items, max_title_chars)
    n_items = len(title)
    if aspects.num_rows != n_items:
        raise ValueError(f"aspects: {aspects.num_rows} rows for {n_items} items (one row per dense item id)")
    parts = []
    for a in ER2ALM_ASPECTS:
        if a not in aspects.column_names:
            raise ValueError(f"aspects table has no '{a}' column (has {aspects.column_names})")
        v = pc.utf8_rtrim(_one_line(aspects.column(a).combine_chunks().cast(pa.string()), max_aspect_chars), ".;, ")
        part = pc.binary_join_element_wise(ASPECT_LABELS[a], ": ", v, "; ", "")
        parts.append(pc.if_else(pc.equal(v, ""), pa.scalar(""), part))
    facts = pc.utf8_rtrim(pc.binary_join_element_wise(*parts, ""), "; ")
    head = pc.binary_join_element_wise('"', title, '" (', genre, ")", "")
    item_line = pc.if_else(pc.equal(facts, ""), head, pc.binary_join_element_wise(head, facts, " - "))

    h = histories.combine_chunks() if isinstance(histories, pa.ChunkedArray) else histories
    offsets = h.offsets.to_numpy().astype(np.int64)
    ids = h.values.to_numpy(zero_copy_only=False)[offsets[0] : offsets[-1]]
    pos = np.arange(offsets[0], offsets[-1])
    ends = np.repeat(offsets[1:], np.diff(offsets))
    keep = ends - pos <= max_items  # the last max_items of each list
    kept_per_row = np.bincount(np.repeat(np.arange(len(h)), np.diff(offsets))[keep], minlength=len(h))
    new_off = np.zeros(len(h) + 1, dtype=np.int64)
    np.cumsum(kept_per_row, out=new_off[1:])
    ids = ids[keep]
    if ids.size and (ids.min() < 0 or ids.max() >= n_items):
        raise ValueError(f"histories: item id {int(ids.max())} is not in the items table ({n_items} items)")
    lines = item_line.take(pa.array(ids, pa.int64()))
    history = _numbered(lines, new_off, "", ". ", NO_HISTORY)
    return fill_template(template, {"history": history}, "er2alm profile prompt")


# ------------------------------------------------------------------------------------------------ parsing

_SEP = r"\s*(?:[/&,+_|-]|and)\s*"
_SOUND = r"(?:sound|audio|music)(?:track)?"
_LABEL_RES = {
    "plot_theme": rf"(?:plot|story(?:line)?)(?:{_SEP}themes?)?|themes?",
    "genre": r"genres?",
    "visual_sound": rf"visuals?(?:\s*(?:style|effects))?(?:{_SEP}{_SOUND})?|{_SOUND}",
    "culture_language": rf"cultur(?:e|al)(?:\s*(?:context|background|setting))?(?:{_SEP}languages?)?|languages?",
    "duration": r"duration|run(?:ning)?\s*time|length",
    "director": r"directors?|direction|directed\s+by",
}
_LABEL = "|".join(f"(?P<{a}>{_LABEL_RES[a]})" for a in ER2ALM_ASPECTS)
_LINE = re.compile(
    r"^[\s>#*+\-•·]*(?:\(?\d{1,2}[.)][\s*_]*)?[\s*_\"'`]*(?:" + _LABEL + r")[\s*_\"'`]*[:：][\s*_]*(?P<value>.*)$",
    re.IGNORECASE,
)
_MISSING = re.compile(
    r"^(?:unknown|n/?a|none|null|nil|not\s+(?:available|known|specified|mentioned|applicable)|[-–—.?]+|<[^>]*>)\.?$",
    re.IGNORECASE,
)


def _clean(value: str) -> str | None:
    v = value.strip().strip("*_`").strip()
    return None if not v or _MISSING.match(v) else v


def _label_lines(text: Any) -> dict[str, str]:
    """Raw value of each aspect found in ``text`` (first occurrence; empty value -> the next unlabelled line)."""
    found: dict[str, str] = {}
    if not isinstance(text, str):
        return found
    pending: str | None = None  # aspect whose label line had an empty value
    for line in text.splitlines():
        if not line.strip():
            continue
        m = _LINE.match(line)
        if m is None:
            if pending is not None:
                found[pending] = line
                pending = None
            continue
        aspect = next(a for a in ER2ALM_ASPECTS if m.group(a) is not None)
        pending = None
        if aspect in found:
            continue
        value = m.group("value")
        found[aspect] = value
        if not value.strip().strip("*_`").strip():
            pending = aspect
    return found


def _text_stats(cols: dict[str, list[str | None]], n: int) -> dict[str, Any]:
    present = np.zeros(n, dtype=np.int64)
    for a in ER2ALM_ASPECTS:
        present += np.array([v is not None for v in cols[a]], dtype=np.int64)
    k = len(ER2ALM_ASPECTS)
    return {
        "parsed": int((present == k).sum()),
        "partial": int(((present > 0) & (present < k)).sum()),
        "failed": int((present == 0).sum()),
        "missing_per_aspect": {a: sum(v is None for v in cols[a]) for a in ER2ALM_ASPECTS},
    }


def parse_aspects(texts: Sequence[str | None]) -> tuple[pa.Table, dict[str, Any]]:
    """The six aspects of each ``P_I`` answer.

    Returns:
        ``(table, stats)``: one ``string`` column per :data:`~ragrec.config.ER2ALM_ASPECTS` (null when missing)
        in the order of ``texts``; ``stats`` = ``{"parsed": all six found, "partial": some, "failed": none,
        "missing_per_aspect": {aspect: rows without it}}``.
    """
    texts = list(texts)
    cols: dict[str, list[str | None]] = {a: [] for a in ER2ALM_ASPECTS}
    for t in texts:
        found = _label_lines(t)
        for a in ER2ALM_ASPECTS:
            cols[a].append(_clean(found[a]) if a in found else None)
    table = pa.table({a: pa.array(cols[a], pa.string()) for a in ER2ALM_ASPECTS})
    return table, _text_stats(cols, len(texts))


_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:e[-+]?\d+)?(?:\s*%|\s*/\s*\d+(?:\.\d+)?)?"
_NUM_FULL = re.compile(_NUM, re.IGNORECASE)
_WEIGHT = re.compile(
    r"(?P<open>[\[(])?[\s*_]*\bweights?\b[\s*_]*(?P<colon>[:=])?[\s*_]*(?P<w>" + _NUM + r"|[^\s\])*_,;]+)?"
    r"[\s*_]*[\])]?",
    re.IGNORECASE,
)
# a bare weight at the end of the line: [0.7], (0.7), (70%) or 7/10; never a year such as (1995)
_BARE = re.compile(
    r"(?:[\[(]\s*(?P<w>0?\.\d+|[01](?:\.0*)?|\d{1,3}(?:\.\d+)?\s*%|\d+(?:\.\d+)?\s*/\s*\d+)\s*[\])]"
    r"|(?<![\w/.])(?P<f>\d+(?:\.\d+)?\s*/\s*\d+))\s*\.?\s*$"
)


def _find_weight(value: str) -> tuple[re.Match, str | None] | None:
    """``(match, token)`` of the last ``weight`` marker of ``value`` that is a weight (bracketed, followed by
    ':' / '=', or by a number; not the word in prose such as "the weight of grief"), else of a bare weight at
    the end of the line; None when there is none."""
    marks = [
        m
        for m in _WEIGHT.finditer(value)
        if m.group("open") or m.group("colon") or (m.group("w") and _NUM_FULL.fullmatch(m.group("w").strip()))
    ]
    if marks:
        return marks[-1], marks[-1].group("w")
    m = _BARE.search(value)
    return None if m is None else (m, m.group("w") or m.group("f"))


def _weight_value(token: str | None) -> tuple[float | None, str]:
    """``(weight, repair)`` of a weight token: repair ``"percent"`` (``80%``, or a number above 10 such as
    ``80``: divided by 100), ``"fraction"`` (``8/10``) or ``""``; weight None unless a finite number >= 0."""
    if token is None:
        return None, ""
    t = token.strip().rstrip(".").strip()
    kind = ""
    try:
        if "/" in t:
            num, den = (float(x) for x in t.split("/", 1))
            v, kind = (num / den if den > 0 else math.nan), "fraction"
        elif t.endswith("%"):
            v, kind = float(t[:-1].strip()) / 100.0, "percent"
        else:
            v = float(t)
            if v > 10:
                v, kind = v / 100.0, "percent"
    except ValueError:
        return None, ""
    if not math.isfinite(v) or v < 0:
        return None, ""
    return v, kind


def parse_profiles(
    texts: Sequence[str | None], min_weight: float = 0.05
) -> tuple[pa.Table, np.ndarray, dict[str, Any]]:
    """The profile lines and weights of each ``P_U`` answer (``plot/theme: <preference> [weight: 0.7]``).

    A line's weight is ``weight: x`` / ``weight = x`` / ``(weight x)`` (anywhere in the line; the last one
    wins) or a bare ``[0.7]`` / ``(70%)`` / ``7/10`` at its end; it is removed from the profile text. Numbers
    in (1, 10] are out of range (clipped), not percentages. Repairs, each counted:

    * ``weight_missing``: no weight for the aspect (no line, or a line without weight);
    * ``weight_invalid``: a weight that is not a number, NaN, infinite or negative (then treated as missing);
    * ``weight_percent``: ``80%`` or a number above 10 (``80``) is a percentage: divided by 100;
    * ``weight_fraction``: ``8/10`` is read as the fraction 0.8;
    * ``weight_clipped``: weights outside ``[min_weight, 1 - min_weight]`` are clipped into it;
    * ``weight_filled``: a missing weight of a row with some valid weights gets the mean of those;
    * ``uniform_rows``: rows without any valid weight get :data:`UNIFORM_WEIGHT` for every aspect.

    Returns:
        ``(profiles, weights, stats)``: one ``string`` column per aspect (null when missing), ``(n, 6)`` float32
        weights in ``[min_weight, 1 - min_weight]``, and the :func:`parse_aspects` counts plus the repairs.
    """
    if not 0 < min_weight < UNIFORM_WEIGHT:
        raise ValueError(f"profile.min_weight must be in (0, {UNIFORM_WEIGHT}), got {min_weight}")
    texts = list(texts)
    n, k = len(texts), len(ER2ALM_ASPECTS)
    cols: dict[str, list[str | None]] = {a: [] for a in ER2ALM_ASPECTS}
    w = np.full((n, k), np.nan, dtype=np.float64)
    repairs = dict.fromkeys(
        ("weight_missing", "weight_invalid", "weight_percent", "weight_fraction", "weight_clipped"), 0
    )
    for i, t in enumerate(texts):
        found = _label_lines(t)
        for j, a in enumerate(ER2ALM_ASPECTS):
            if a not in found:
                cols[a].append(None)
                repairs["weight_missing"] += 1
                continue
            value = found[a]
            hit = _find_weight(value)
            if hit is None:
                repairs["weight_missing"] += 1
            else:
                m, token = hit
                v, kind = _weight_value(token)
                value = value[: m.start()] + " " + value[m.end() :]
                if v is None:
                    repairs["weight_invalid"] += 1
                else:
                    if kind:
                        repairs[f"weight_{kind}"] += 1
                    w[i, j] = v
            cols[a].append(_clean(value.strip().rstrip(" -–—,;:|")))
    valid = ~np.isnan(w)
    lo, hi = min_weight, 1.0 - min_weight
    repairs["weight_clipped"] = int((valid & ((w < lo) | (w > hi))).sum())
    w = np.where(valid, np.clip(w, lo, hi), np.nan)
    n_valid = valid.sum(axis=1)
    any_valid = n_valid > 0
    row_mean = np.where(any_valid, np.where(valid, w, 0.0).sum(axis=1) / np.maximum(n_valid, 1), UNIFORM_WEIGHT)
    filled = np.where(valid, w, row_mean[:, None])
    stats = _text_stats(cols, n)
    stats.update(repairs)
    stats["weight_filled"] = int((~valid & any_valid[:, None]).sum())
    stats["uniform_rows"] = int((~any_valid).sum())
    profiles = pa.table({a: pa.array(cols[a], pa.string()) for a in ER2ALM_ASPECTS})
    return profiles, filled.astype(np.float32), stats


# --------------------------------------------------------------------------------------- augmentation

PICK_LABELS = ("liked", "disliked")
PICK_TEMPLATE = (
    "Movies the user liked, oldest first:\n"
    "{history}\n\n"
    "Candidate movies:\n"
    "{candidates}\n\n"
    "Task description: You are a movie recommender. From the candidate movies, pick the one this user is most "
    "likely to enjoy and the one this user is least likely to enjoy.\n"
    "Task instructions: Compare every candidate with the movies the user liked (genres, themes, era).\n"
    "Output format: exactly two lines, each a label, a colon and the number of a candidate:\n"
    "liked: <candidate number>\n"
    "disliked: <candidate number>\n"
    "Emphasis on details: Write only these two lines. Use the numbers in square brackets of the candidate list; "
    "the two numbers must differ."
)
_PICK_LINE = re.compile(
    r"^[\s>#*+\-•·]*[\s*_\"'`]*(?P<label>(?:most\s+)?(?:dis|un)?lik(?:ed?|ing)|(?:least|not)\s+lik(?:ed?|ely)"
    r"|positive|negative|best|worst)[\s*_\"'`]*[:：=]?[\s*_]*(?P<value>.*)$",
    re.IGNORECASE,
)
_INT = re.compile(r"\d+")


def pick_prompts(
    items: pa.Table,
    histories: pa.ListArray | pa.ChunkedArray,
    candidates: np.ndarray,
    max_items: int,
    template: str = PICK_TEMPLATE,
    max_title_chars: int = 80,
) -> pa.Array:
    """The augmentation prompt per user (ER2ALM §3.5, after LLMRec): the last ``max_items`` liked items of
    ``histories`` (oldest first, ``1. "Heat (1995)" (Action, Crime)``) and the user's ``candidates`` row
    ``(U, C)`` of item ids (``[k] "Title" (genres)``, k = 1..C); the answer names one liked and one disliked
    candidate by number (:func:`parse_picks`). ``template`` fields: ``{history}``, ``{candidates}``."""
    if max_items < 1:
        raise ValueError(f"profile.max_history_items must be >= 1, got {max_items}")
    title, _, genre = _item_texts(items, max_title_chars)
    n_items = len(title)
    line = pc.binary_join_element_wise('"', title, '" (', genre, ")", "")
    h = histories.combine_chunks() if isinstance(histories, pa.ChunkedArray) else histories
    if len(h) != len(candidates):
        raise ValueError(f"pick_prompts: {len(h)} histories for {len(candidates)} candidate rows")
    offsets = h.offsets.to_numpy().astype(np.int64)
    ids = h.values.to_numpy(zero_copy_only=False)[offsets[0] : offsets[-1]]
    ends = np.repeat(offsets[1:], np.diff(offsets))
    keep = ends - np.arange(offsets[0], offsets[-1]) <= max_items
    kept = np.bincount(np.repeat(np.arange(len(h)), np.diff(offsets))[keep], minlength=len(h))
    new_off = np.concatenate([[0], np.cumsum(kept)]).astype(np.int64)
    cand = np.asarray(candidates, dtype=np.int64)
    for what, x in (("histories", ids[keep]), ("candidates", cand.ravel())):
        if x.size and (x.min() < 0 or x.max() >= n_items):
            raise ValueError(f"pick_prompts: {what} hold item id {int(x.max())}, not in the items table ({n_items})")
    history = _numbered(line.take(pa.array(ids[keep], pa.int64())), new_off, "", ". ", NO_HISTORY)
    c_off = np.arange(len(cand) + 1, dtype=np.int64) * cand.shape[1]
    cands = _numbered(line.take(pa.array(cand.ravel(), pa.int64())), c_off, "[", "] ", "(none)")
    return fill_template(template, {"history": history, "candidates": cands}, "er2alm pick prompt")


def parse_picks(texts: Sequence[str | None], n_candidates: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The liked / disliked candidate of each :func:`pick_prompts` answer, as 0-based candidate positions.

    A labelled line (``liked: 3``, ``Disliked - [7]``, ``most likely to enjoy: 2``...) gives its first
    number; numbers are 1-based candidate numbers. Repairs, each counted in ``stats``:

    * ``unlabelled``: no labelled line at all; the first two numbers in range are read as liked, disliked;
    * ``out_of_range``: a number outside 1..C (treated as missing);
    * ``same``: liked == disliked (the disliked pick is dropped);
    * ``missing_liked`` / ``missing_disliked``: no usable pick (-1 in the output).

    ``stats`` also holds ``liked_by_position`` / ``disliked_by_position``: how many answers picked each candidate
    number (1..C; the candidates come in the base model's order, best first). A small LLM that answers by
    position shows as one dominant count: SmolLM2-135M on ML-100K picked liked = 1 for 861 and disliked = 2 for
    880 of 942 users, so its "disliked" pairs are the base model's second-best items (README, ER2ALM).

    Returns:
        ``(liked, disliked, stats)``: ``(n,)`` int64 positions in ``0..C-1`` or -1.
    """
    n = len(texts)
    liked = np.full(n, -1, dtype=np.int64)
    disliked = np.full(n, -1, dtype=np.int64)
    stats = dict.fromkeys(("parsed", "unlabelled", "out_of_range", "same", "missing_liked", "missing_disliked"), 0)

    def number(s: str) -> int:
        m = _INT.search(s)
        if m is None:
            return -1
        v = int(m.group()) - 1
        if not 0 <= v < n_candidates:
            stats["out_of_range"] += 1
            return -1
        return v

    for i, t in enumerate(texts):
        got: dict[str, int] = {}
        for line in (t or "").splitlines() if isinstance(t, str) else ():
            m = _PICK_LINE.match(line)
            if m is None:
                continue
            lab = m.group("label").lower()
            neg = any(w in lab for w in ("dis", "un", "least", "not", "negative", "worst"))
            key = "disliked" if neg else "liked"
            if key not in got:
                got[key] = number(m.group("value"))
        if not got and isinstance(t, str):
            nums = [int(x) - 1 for x in _INT.findall(t)]
            nums = [x for x in nums if 0 <= x < n_candidates]
            if nums:
                stats["unlabelled"] += 1
                got = {"liked": nums[0], "disliked": nums[1] if len(nums) > 1 else -1}
        liked[i], disliked[i] = got.get("liked", -1), got.get("disliked", -1)
        if liked[i] >= 0 and liked[i] == disliked[i]:
            stats["same"] += 1
            disliked[i] = -1
    stats["missing_liked"] = int((liked < 0).sum())
    stats["missing_disliked"] = int((disliked < 0).sum())
    stats["parsed"] = int(((liked >= 0) & (disliked >= 0)).sum())
    stats["liked_by_position"] = np.bincount(liked[liked >= 0], minlength=n_candidates).tolist()
    stats["disliked_by_position"] = np.bincount(disliked[disliked >= 0], minlength=n_candidates).tolist()
    return liked, disliked, stats
