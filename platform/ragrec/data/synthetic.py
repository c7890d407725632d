"""A deterministic synthetic movie catalog for the offline demo and tests.

Generative story (all numpy-vectorised, one ``numpy.random.Generator`` seeded by ``cfg.seed``):

* items: a primary genre (+ occasional extra genres), a latent quality, a popularity, a release
  year and a movie-like title built from word lists that depend on the primary genre
  (``"The Silent Harbor (1994)"``), so titles carry some genre signal for text encoders;
* users: a taste over genres that starts near one of a few shared *archetypes* and drifts towards
  another one over the user's rating sequence (collaborative signal: users of the same archetype
  like the same items; temporal signal: recent ratings predict the next ones better than old ones);
* each user rates a popularity- and taste-driven subset of items; items closer to the user's later
  taste come later; the rating is ``affinity(taste at that time, item genres) + quality + user bias
  + noise`` mapped to 1-5 stars with MovieLens-like proportions;
* timestamps increase per user; profiles have age, gender, occupation and zip code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..config import SyntheticConfig
from .dataset import Dataset
from .schemas import INTERACTIONS, with_label_source

GENRES: tuple[str, ...] = (
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
GENRE_NOUNS: tuple[tuple[str, ...], ...] = (
    ("Strike", "Fury", "Mission", "Target", "Blast", "Vendetta"),
    ("Voyage", "Quest", "Island", "Expedition", "Treasure", "Frontier"),
    ("Toybox", "Dragonfly", "Kingdom", "Robot", "Bunny", "Lantern"),
    ("Puppy", "Treehouse", "Playground", "Birthday", "Pony", "Snowman"),
    ("Wedding", "Roommates", "Vacation", "Neighbors", "Party", "Blunder"),
    ("Heist", "Syndicate", "Alibi", "Informant", "Getaway", "Racket"),
    ("Chronicle", "Portrait", "Record", "Witness", "Journey", "Archive"),
    ("Harbor", "Promise", "Silence", "Inheritance", "Letters", "River"),
    ("Sorcerer", "Amulet", "Realm", "Prophecy", "Wand", "Unicorn"),
    ("Shadow", "Dame", "Rain", "Detour", "Nightfall", "Double-Cross"),
    ("Crypt", "Haunting", "Curse", "Asylum", "Nightmare", "Ritual"),
    ("Melody", "Ballroom", "Chorus", "Serenade", "Rhythm", "Stage"),
    ("Riddle", "Cipher", "Disappearance", "Clue", "Locket", "Manor"),
    ("Heart", "Kiss", "Summer", "Romance", "Sweetheart", "Rendezvous"),
    ("Galaxy", "Android", "Starship", "Colony", "Signal", "Nebula"),
    ("Pursuit", "Trap", "Witness", "Conspiracy", "Deadline", "Hostage"),
    ("Battalion", "Trenches", "Front", "Regiment", "Siege", "Armistice"),
    ("Outlaw", "Saloon", "Canyon", "Sheriff", "Stagecoach", "Ranch"),
)
_ADJECTIVES: tuple[str, ...] = (
    "Silent",
    "Last",
    "Golden",
    "Broken",
    "Hidden",
    "Midnight",
    "Crimson",
    "Lonely",
    "Wild",
    "Lost",
    "Final",
    "Secret",
    "Frozen",
    "Burning",
    "Distant",
    "Electric",
    "Forgotten",
    "Savage",
    "Gentle",
    "Dark",
    "Eternal",
    "Velvet",
    "Iron",
    "Restless",
)
_PATTERNS: tuple[str, ...] = ("The {a} {n}", "{a} {n}", "Return of the {a} {n}", "The {n}")  # see _titles
OCCUPATIONS: tuple[str, ...] = (
    "administrator",
    "artist",
    "doctor",
    "educator",
    "engineer",
    "entertainment",
    "executive",
    "healthcare",
    "homemaker",
    "lawyer",
    "librarian",
    "marketing",
    "none",
    "other",
    "programmer",
    "retired",
    "salesman",
    "scientist",
    "student",
    "technician",
    "writer",
)
# MovieLens-100K star proportions (1..5), used as quantile cut points of the latent score
_STAR_SHARES = np.array([0.06, 0.11, 0.27, 0.34, 0.22])
_T0 = 946_684_800  # 2000-01-01 UTC
_DAY = 86_400


def _genre_names(n: int) -> list[str]:
    return list(GENRES[:n]) + [f"Genre {k + 1}" for k in range(len(GENRES), n)]


def _titles(rng: np.random.Generator, primary: np.ndarray, year: np.ndarray) -> np.ndarray:
    """``(n_items,)`` distinct titles "Pattern words (year)"; nouns come from the primary genre."""
    import pandas as pd

    n = len(primary)
    nouns = np.array(GENRE_NOUNS, dtype=object)[primary % len(GENRE_NOUNS), rng.integers(0, 6, n)]
    adjs = np.array(_ADJECTIVES, dtype=object)[rng.integers(0, len(_ADJECTIVES), n)]
    pat = rng.integers(0, len(_PATTERNS), n)
    prefix = np.array(["The ", "", "Return of the ", "The "], dtype=object)[pat]
    adj_part = np.where(pat == 3, "", adjs + " ").astype(object)
    base = prefix + adj_part + nouns
    # sequels for repeated base titles: "The Last Heist 2 (1999)"
    k = pd.Series(base).groupby(base).cumcount().to_numpy()
    sequel = np.where(k == 0, "", " " + (k + 1).astype(str)).astype(object)
    return base + sequel + " (" + year.astype(str).astype(object) + ")"


def _rank_top(logits: np.ndarray, n_take: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Sample ``n_take[u]`` distinct columns per row without replacement, P ∝ softmax(logits) (Gumbel top-k).

    Args:
        logits: ``(n_rows, n_cols)``.
        n_take: ``(n_rows,)`` how many columns to draw per row, each ``<= n_cols``.

    Returns:
        ``(rows, cols)``, each ``(n_take.sum(),)``, grouped by row, best Gumbel score first.
    """
    g = logits - np.log(-np.log(rng.random(logits.shape)))
    k = int(n_take.max()) if len(n_take) else 0
    if 0 < k < logits.shape[1]:
        top = np.argpartition(-g, k - 1, axis=1)[:, :k]  # the k best columns per row, unordered
    else:
        top = np.broadcast_to(np.arange(logits.shape[1]), g.shape)
    order = np.take_along_axis(top, np.argsort(-np.take_along_axis(g, top, axis=1), axis=1, kind="stable"), axis=1)
    take = np.arange(order.shape[1])[None, :] < n_take[:, None]
    rows = np.repeat(np.arange(logits.shape[0]), n_take)
    return rows, order[take]


def _item_latents(rng: np.random.Generator, n_i: int, n_g: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The first draws of :func:`make_synthetic`: ``(primary genre (n_i,), genre membership (n_i, n_g) bool,
    latent quality (n_i,))``."""
    primary = rng.integers(0, n_g, n_i)
    member = rng.random((n_i, n_g)) < 0.08
    member[np.arange(n_i), primary] = True
    return primary, member, rng.normal(0.0, 0.6, n_i)


def make_synthetic(cfg: SyntheticConfig, label_threshold: float = 3.0) -> Dataset:
    """Generate the synthetic dataset described in the module docstring.

    Returns:
        Dataset ``synthetic``: items ``(cfg.n_items,)`` (+ ``raw_item_id``), users
        ``(cfg.n_users,)`` (``raw_user_id``, ``age``, ``gender``, ``occupation``, ``zip``),
        interactions ``(~cfg.n_users * cfg.ratings_per_user,)`` sorted by timestamp. Identical for
        identical ``cfg``.
    """
    rng = np.random.default_rng(cfg.seed)
    n_u, n_i, n_g = cfg.n_users, cfg.n_items, cfg.n_genres

    # ---- items ------------------------------------------------------------------------------
    primary, member, quality = _item_latents(rng, n_i, n_g)
    popularity = 0.8 * quality + rng.normal(0.0, 1.0, n_i)
    year = np.clip(2020 - np.floor(rng.exponential(14.0, n_i)), 1920, 2020).astype(np.int32)
    titles = _titles(rng, primary, year)
    names = np.array(_genre_names(n_g), dtype=object)
    _rows, cols = np.nonzero(member)
    offsets = np.concatenate([[0], np.cumsum(member.sum(axis=1))]).astype(np.int32)
    items = pa.table(
        {
            "item_id": pa.array(np.arange(n_i, dtype=np.int64)),
            "title": pa.array(titles.astype(str), pa.string()),
            "genres": pa.ListArray.from_arrays(pa.array(offsets), pa.array(names[cols].astype(str), pa.string())),
            "year": pa.array(year, pa.int32()),
            "raw_item_id": pa.array(np.arange(n_i, dtype=np.int64)),
        }
    )
    genre_mix = member / member.sum(axis=1, keepdims=True)  # (n_i, n_g), rows sum to 1

    # ---- users: archetype tastes that drift --------------------------------------------------
    n_arch = int(np.clip(n_g // 2, 2, 8))
    archetypes = rng.dirichlet(np.full(n_g, 0.3), n_arch)  # (n_arch, n_g)
    z0, z1 = rng.integers(0, n_arch, n_u), rng.integers(0, n_arch, n_u)
    own = rng.dirichlet(np.full(n_g, 0.5), (2, n_u))
    taste0 = 0.75 * archetypes[z0] + 0.25 * own[0]  # (n_u, n_g)
    taste1 = 0.3 * taste0 + 0.55 * archetypes[z1] + 0.15 * own[1]
    bias = rng.normal(0.0, 0.35, n_u)

    def affinity(taste: np.ndarray, item: np.ndarray) -> np.ndarray:
        """Standardised taste·genre affinity of aligned (taste row, item) pairs."""
        return np.einsum("kg,kg->k", taste, genre_mix[item]) * n_g - 1.0

    # ---- which items, in which order --------------------------------------------------------
    half = max(cfg.ratings_per_user // 2, 1)
    n_take = np.minimum(half + rng.poisson(cfg.ratings_per_user - half, n_u), n_i)
    mid_taste = 0.5 * (taste0 + taste1)
    logits = 0.7 * popularity[None, :] + 1.5 * (mid_taste @ genre_mix.T) * n_g
    user, item = _rank_top(logits, n_take, rng)
    aff0, aff1 = affinity(taste0[user], item), affinity(taste1[user], item)
    drift_key = aff1 - aff0 + rng.normal(0.0, 0.5, len(item))
    order = np.lexsort((drift_key, user))  # grouped by user, early-taste items first
    user, item, aff0, aff1 = user[order], item[order], aff0[order], aff1[order]
    starts = np.concatenate([[0], np.cumsum(n_take)[:-1]])
    pos = np.arange(len(user)) - np.repeat(starts, n_take)
    frac = pos / np.maximum(np.repeat(n_take, n_take) - 1, 1)

    # ---- ratings and timestamps -------------------------------------------------------------
    score = 1.2 * ((1 - frac) * aff0 + frac * aff1) + quality[item] + bias[user] + rng.normal(0.0, 0.7, len(item))
    cuts = np.quantile(score, np.cumsum(_STAR_SHARES)[:-1])
    rating = (1 + np.searchsorted(cuts, score)).astype(np.float32)
    # users are active over ~300 days each, starting within the first year: their periods overlap
    gaps = 1 + np.floor(rng.exponential(300 * _DAY / max(cfg.ratings_per_user, 1), len(item))).astype(np.int64)
    csum = np.cumsum(gaps)
    start_t = _T0 + rng.integers(0, 365 * _DAY, n_u)
    ts = np.repeat(start_t, n_take) + csum - np.repeat(csum[starts] - gaps[starts], n_take)
    by_time = np.lexsort((item, user, ts))
    inter = pa.Table.from_arrays(
        [
            pa.array(user[by_time].astype(np.int64)),
            pa.array(item[by_time].astype(np.int64)),
            pa.array(rating[by_time]),
            pa.array(ts[by_time]),
            pa.array((rating[by_time] > label_threshold).astype(np.int8)),
        ],
        schema=INTERACTIONS,
    )

    # ---- profiles ---------------------------------------------------------------------------
    zips = np.char.zfill(rng.integers(0, 100_000, n_u).astype(str), 5)
    users = pa.table(
        {
            "user_id": pa.array(np.arange(n_u, dtype=np.int64)),
            "raw_user_id": pa.array(np.arange(n_u, dtype=np.int64)),
            "age": pa.array(rng.integers(18, 66, n_u).astype(np.int32)),
            "gender": pa.array(np.where(rng.random(n_u) < 0.7, "M", "F").astype(str), pa.string()),
            "occupation": pa.array(np.array(OCCUPATIONS)[rng.integers(0, len(OCCUPATIONS), n_u)], pa.string()),
            "zip": pa.array(zips, pa.string()),
        }
    )
    return Dataset(name="synthetic", interactions=with_label_source(inter, given=False), items=items, users=users)


# ---- the catalog's knowledge corpus (ER2ALM's RAG source in configs/er2alm_demo.yaml) ------------------------
GENRE_THEMES: tuple[str, ...] = (
    "explosive fights and car chases",
    "a perilous journey to far-off lands",
    "hand-drawn animated characters",
    "a gentle story for young children",
    "jokes and comic misunderstandings",
    "gangsters, heists and police investigations",
    "real events told by the people who lived them",
    "family conflicts and personal struggles",
    "magic spells and mythical creatures",
    "a cynical detective in a shadowy city",
    "terrifying monsters and gruesome deaths",
    "song-and-dance numbers",
    "a puzzling disappearance and hidden clues",
    "two lovers kept apart",
    "spaceships, robots and future technology",
    "a race against time and mounting suspense",
    "soldiers on the battlefield",
    "cowboys and outlaws on the frontier",
)
RECEPTION: tuple[str, ...] = (
    "It was a critical and popular disaster: badly made, widely panned, and most viewers walked out.",
    "Critics and audiences found it weak and disappointing.",
    "It drew mixed reviews: competent but unremarkable.",
    "Critics and audiences enjoyed it; a well-made, satisfying film.",
    "It is a masterpiece, acclaimed by critics and loved by audiences, one of the best films of its year.",
)


def synthetic_corpus(cfg: SyntheticConfig) -> pa.Table:
    """One encyclopedia-style document per item of :func:`make_synthetic` (``doc_id``, ``title``, ``text``).

    The text states what drives the synthetic ratings and is not in the titles: the item's latent quality as
    a critical reception (five tiers by quintile) and every genre it belongs to as its themes
    (:data:`GENRE_THEMES`). Identical for identical ``cfg``.
    """
    items = make_synthetic(cfg).items
    _, member, quality = _item_latents(np.random.default_rng(cfg.seed), cfg.n_items, cfg.n_genres)
    tier = np.searchsorted(np.quantile(quality, [0.2, 0.4, 0.6, 0.8]), quality)
    themes = np.array(
        [GENRE_THEMES[g] if g < len(GENRE_THEMES) else f"the themes of genre {g + 1}" for g in range(cfg.n_genres)],
        dtype=object,
    )
    rows, cols = np.nonzero(member)
    joined = _join_words(rows, themes[cols], cfg.n_items)
    titles = np.array(items.column("title").to_pylist(), dtype=object)
    years = np.array(items.column("year").to_pylist()).astype(str).astype(object)
    text = titles + " is a film released in " + years + ". Its story is about " + joined + ". "
    text = text + np.array(RECEPTION, dtype=object)[tier]
    return pa.table(
        {
            "doc_id": pa.array([f"item-{i}" for i in range(cfg.n_items)], pa.string()),
            "title": pa.array(titles.astype(str), pa.string()),
            "text": pa.array(text.astype(str), pa.string()),
        }
    )


def _join_words(rows: np.ndarray, words: np.ndarray, n: int) -> np.ndarray:
    """``(n,)`` per row id, its ``words`` as "a, b and c" (``rows`` ascending, every row id at least once)."""
    counts = np.bincount(rows, minlength=n)
    ends = np.cumsum(counts)
    last = words[ends - 1]
    is_head = np.ones(len(words), dtype=bool)
    is_head[ends - 1] = False
    off = np.concatenate([[0], np.cumsum(counts - 1)]).astype(np.int32)
    head = pc.binary_join(pa.ListArray.from_arrays(pa.array(off), pa.array(words[is_head].astype(str))), ", ")
    head = head.to_numpy(zero_copy_only=False).astype(object)
    return np.where(counts > 1, head + " and " + last, last)


def write_synthetic_corpus(cfg: SyntheticConfig, path) -> Path:
    """Write :func:`synthetic_corpus` as JSONL (one document a line) to ``path``; returns the path."""
    import json

    t = synthetic_corpus(cfg)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        for rec in t.to_pylist():
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return out
