"""ER2ALM's cached stages (paper §3, ``docs/architecture.md`` §3): corpus -> passages -> aspects -> profiles ->
embeddings -> noise control -> augmentation picks -> the GNN. :mod:`ragrec.methods.er2alm` composes them.

* ``er2alm_descriptions`` (only without a corpus file): the LLM's item descriptions (``description`` section)
  that, with the dataset's title / year / genres, make the fallback corpus (:func:`metadata_corpus`).
* ``er2alm_corpus``: the corpus (``data.corpus_file``; ``synthetic``: the synthetic catalog's own corpus,
  :func:`ragrec.data.synthetic.write_synthetic_corpus`; none: the fallback) and its chunks.
* ``embed_er2alm_corpus`` + ``er2alm_passages``: chunks and item queries through the ``rag.encoder`` (one Ray
  Data embedding stage), exact faiss search, the top ``rag.top_r`` passages per item (Eq. 1's ``R(i)``).
* ``er2alm_aspects`` / ``er2alm_profiles`` / ``er2alm_picks``: Ray Data generation stages (``P_I``, ``P_U``,
  the liked / disliked picks among ``er2alm_candidates``, the base LightGCN's top unseen items).
* ``embed_er2alm_texts`` + ``er2alm_features``: each item aspect, each profile line and the item's basic text
  embedded separately (Eq. 4); ``basic.npy`` (I, d), ``aspects.npy`` (I, K, d), ``profile.npy`` (U, K, d) and
  ``weights.npy`` (U, K) (missing text = zero row), plus the parse statistics.
* ``er2alm_noise``: :func:`~ragrec.models.noise_control.denoise` -> ``kept.npy`` (I, K) per seed.
* ``er2alm_gnn``: :func:`~ragrec.training.er2alm.train_er2alm` under Ray Train per seed and model flags
  (BPR-MF: 0 layers; LightGCN: no side, no augmentation; ER2ALM and its ablations).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..artifacts import Artifact, ArtifactStore
from ..config import ER2ALM_ASPECTS, GNNConfig, RunConfig
from ..llm.prompts_er2alm import ASPECT_LABELS, PICK_LABELS
from .base import log
from .embed import embed_texts_stage, to_numpy
from .generate import generate_stage

VERSION = "1"
GNN_VERSION = "4"  # 2: balanced mini-batches (training.ray_train.epoch_batches); 3: symmetric_spmm backward;
# 4: Recall@20 on the validation pairs in every epoch's history (and gnn.patience's model selection)
SYNTHETIC_CORPUS = "synthetic"
"""``data.corpus_file: synthetic``: the synthetic catalog's own corpus (``data.name: synthetic`` only)."""
FALLBACK_NOTE = (
    "no knowledge corpus (data.corpus_file unset): the RAG source fell back to the dataset's own metadata (title, "
    "year, genres) and the LLM's item descriptions, so retrieval only re-reads what the dataset and the LLM already "
    "know; point data.corpus_file at a corpus (e.g. Wikipedia plots) for real retrieval"
)


# ---------------------------------------------------------------------------------------------------
# ids and histories
# ---------------------------------------------------------------------------------------------------
def sizes(ds_art: Artifact) -> tuple[int, int]:
    """``(num_users, num_items)`` of a dataset artifact."""
    m = ds_art.manifest()
    users = m.get("users") or int(pc.max(ds_art.read_table("interactions").column("user_id")).as_py()) + 1
    return int(users), int(m["items"])


def train_pairs(samples_art: Artifact, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """``(users, items)`` int64 of the ``full_ranking`` split's positives of ``split`` (train, valid, test)."""
    s = samples_art.read_table("samples")
    t = s.filter(pc.equal(s.column("split"), split))
    return t.column("user_id").to_numpy().astype(np.int64), t.column("item_id").to_numpy().astype(np.int64)


def train_histories(ds_art: Artifact, samples_art: Artifact) -> pa.ListArray:
    """Per user id ``0..U-1``, the training positives oldest first (by their latest rating time; ties by item id),
    as ``list<int64>`` (empty for users without one). Vectorised: one sort of all pairs."""
    n_users, n_items = sizes(ds_art)
    inter = ds_art.read_table("interactions")
    key = inter.column("user_id").to_numpy().astype(np.int64) * n_items + inter.column("item_id").to_numpy()
    ts = inter.column("timestamp").to_numpy()
    o = np.lexsort((ts, key))
    key, ts = key[o], ts[o]
    last = np.r_[key[1:] != key[:-1], True]  # the latest rating of each pair
    key, ts = key[last], ts[last]
    u, i = train_pairs(samples_art)
    pk = u * n_items + i
    pos = np.clip(np.searchsorted(key, pk), 0, max(len(key) - 1, 0))
    t = np.where(key[pos] == pk, ts[pos], 0) if len(key) else np.zeros(len(pk), np.int64)
    o = np.lexsort((i, t, u))
    offsets = np.zeros(n_users + 1, dtype=np.int32)
    np.cumsum(np.bincount(u, minlength=n_users), out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(i[o], pa.int64()))


def _labels(cfg: RunConfig, section: str, labels, values: str = "text", max_value: int | None = None) -> dict:
    """The sampling entry that makes the engine write ``labels`` itself (``<section>.force_format``), or nothing
    (the cache key of a free-text stage stays what it was). ValueError naming ``<section>.max_new_tokens`` when
    the labels leave no room for the values, before any LLM starts."""
    from ..llm.registry import load_tokenizer
    from ..llm.structured import FORMAT_VERSION, LabelledLines, line_budget

    sec = getattr(cfg, section)
    if not sec.force_format:
        return {}
    labels = list(labels)
    try:
        line_budget(sec.max_new_tokens, LabelledLines.fixed_token_counts(load_tokenizer(cfg.llm.model), labels, values))
    except ValueError as e:
        raise ValueError(f"{section}.max_new_tokens: {e} (or set {section}.force_format: false)") from None
    out = {"line_labels": labels, "line_format": FORMAT_VERSION}
    if values != "text":
        out["line_values"] = values
    if max_value is not None:
        out["line_max"] = int(max_value)
    return out


def _generate(store, cfg: RunConfig, name: str, rows: pa.Table, sampling: dict, block: int, inputs) -> Artifact:
    key = rows.column_names[0]
    sampling = {**sampling, "seed": cfg.seed}
    return generate_stage(
        store, name, rows, key=key, prompt="prompt", llm_cfg=cfg.llm, sampling=sampling, block_size=block, inputs=inputs
    )


# ---------------------------------------------------------------------------------------------------
# the corpus and Eq. 1 (RAG aspects)
# ---------------------------------------------------------------------------------------------------
def corpus_source(cfg: RunConfig) -> str:
    """``file``, ``synthetic`` or ``metadata`` (the fallback without a corpus)."""
    f = cfg.data.corpus_file
    if f is None:
        return "metadata"
    if f == SYNTHETIC_CORPUS:
        if cfg.data.name != "synthetic":
            raise ValueError(
                f"data.corpus_file: synthetic is the synthetic catalog's own corpus, but data.name is "
                f"'{cfg.data.name}'; point data.corpus_file at a .jsonl/.parquet corpus or leave it unset"
            )
        return "synthetic"
    return "file"


def descriptions_stage(store: ArtifactStore, cfg: RunConfig, ds_art: Artifact) -> Artifact:
    """The LLM's item descriptions (``description`` section) for the fallback corpus."""
    from ..templates import fill_template

    items = ds_art.read_table("items")
    d = cfg.description
    if d.max_items:
        items = items.slice(0, d.max_items)
    genre = pc.fill_null(pc.binary_join(items.column("genres").combine_chunks(), ", "), "")
    genre = pc.if_else(pc.equal(genre, ""), pa.scalar("unknown"), genre)
    title = pc.fill_null(items.column("title").combine_chunks().cast(pa.string()), "")
    prompts = fill_template(d.template, {"title": title, "genre": genre}, "description.template", required=("title",))
    rows = pa.table({"item_id": items.column("item_id"), "prompt": prompts})
    sampling = {"max_new_tokens": d.max_new_tokens, "temperature": d.temperature, "top_p": d.top_p}
    return _generate(store, cfg, "er2alm_descriptions", rows, sampling, d.block_size, [ds_art])


def _file_digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def corpus_stage(store: ArtifactStore, cfg: RunConfig, ds_art: Artifact, desc_art: Artifact | None) -> Artifact:
    """``corpus`` (doc_id, title, text) and ``chunks`` (doc_id, chunk_id, title, text) tables; the manifest
    names the ``source`` (file | synthetic | metadata)."""
    from ..retrieval.corpus import chunk_corpus, metadata_corpus, read_corpus

    source = corpus_source(cfg)
    r = cfg.rag
    spec: dict = {"source": source, "chunk_chars": r.chunk_chars, "chunk_overlap": r.chunk_overlap}
    if source == "file":
        path = Path(cfg.data.corpus_file).expanduser()
        if not path.is_file():
            read_corpus(path)  # the one-line DataError naming the file and the fix
        spec["file"] = {"name": path.name, "digest": _file_digest(path)}
    if source == "synthetic":
        spec["synthetic"] = cfg.data.synthetic.model_dump(mode="json")
    if source == "metadata" and r.max_items:
        spec["max_items"] = r.max_items

    def compute(art: Artifact) -> dict:
        if source == "file":
            corpus = read_corpus(path)
        elif source == "synthetic":
            from ..data.synthetic import write_synthetic_corpus

            corpus = read_corpus(write_synthetic_corpus(cfg.data.synthetic, art.staging / "corpus.jsonl"))
        else:  # the fallback: one document per item that gets aspects (rag.max_items: a prefix, for tests)
            desc = desc_art.read_table() if desc_art is not None else None
            items = ds_art.read_table("items")
            corpus = metadata_corpus(items.slice(0, r.max_items or items.num_rows), desc)
        chunks = chunk_corpus(corpus, r.chunk_chars, r.chunk_overlap)
        art.write_table(corpus, "corpus")
        art.write_table(chunks, "chunks")
        return {"rows": chunks.num_rows, "docs": corpus.num_rows, "source": source}

    inputs = [ds_art] + ([desc_art] if desc_art is not None else [])
    return store.run("er2alm_corpus", spec, inputs, compute, version=VERSION)


def passages_stage(store: ArtifactStore, cfg: RunConfig, ds_art: Artifact, corpus_art: Artifact) -> Artifact:
    """The top ``rag.top_r`` chunks of each item's query (title, year, genres) by cosine over the
    ``rag.encoder`` embeddings (exact faiss): ``(item_id, passages list<string>, scores list<float32>)``."""
    from ..retrieval.corpus import chunk_texts, item_queries

    chunks = corpus_art.read_table("chunks")
    texts = chunk_texts(chunks)
    items = ds_art.read_table("items")
    queries = item_queries(items.slice(0, cfg.rag.max_items or items.num_rows))  # the items that get aspects
    keys = pa.concat_arrays(
        [
            pa.array([f"c:{k}" for k in range(len(texts))], pa.string()),
            pa.array([f"q:{k}" for k in range(len(queries))], pa.string()),
        ]
    )
    emb = embed_texts_stage(
        store,
        "embed_er2alm_corpus",
        keys,
        [texts, queries],
        llm_cfg=cfg.llm,
        encoder=cfg.rag.encoder,
        max_tokens=256,
        inputs=[corpus_art],
    )

    def compute(art: Artifact) -> dict:
        from ..retrieval.index import ItemIndex

        m = to_numpy(emb.read_table().column("embedding"))
        m = m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)
        c, q = m[: len(texts)], m[len(texts) :]
        scores, rows = ItemIndex(c, "ip").search(q, cfg.rag.top_r)
        r = rows.shape[1]
        flat = texts.take(pa.array(rows.ravel(), pa.int64())).cast(pa.string())
        off = pa.array(np.arange(len(q) + 1, dtype=np.int32) * r)
        art.write_table(
            pa.table(
                {
                    "item_id": pa.array(np.arange(len(q), dtype=np.int64)),
                    "passages": pa.ListArray.from_arrays(off, flat),
                    "scores": pa.ListArray.from_arrays(off, pa.array(scores.ravel(), pa.float32())),
                }
            )
        )
        return {"rows": len(q), "top_r": r}

    spec = {"top_r": cfg.rag.top_r, "max_items": cfg.rag.max_items}
    return store.run("er2alm_passages", spec, [emb], compute, version=VERSION)


def aspects_stage(store: ArtifactStore, cfg: RunConfig, ds_art: Artifact, passages: Artifact | None) -> Artifact:
    """``P_I`` answers (Eq. 1) of the first ``rag.max_items`` items (all by default): ``(item_id, text)``.
    ``passages`` None (``rag.enabled: false``): the prompt holds no passage (the LLMRec-style baseline)."""
    from ..llm.chat import prompt_token_counts
    from ..llm.prompts_er2alm import fit_aspect_prompts
    from ..llm.registry import load_tokenizer

    items = ds_art.read_table("items")
    r = cfg.rag
    if r.max_items:
        items = items.slice(0, r.max_items)
    lists = passages.read_table().column("passages").to_pylist()[: items.num_rows] if passages else [[]] * len(items)
    tokenizer = load_tokenizer(cfg.llm.model)
    prompts, fit = fit_aspect_prompts(
        items, lists, lambda texts: prompt_token_counts(tokenizer, texts), cfg.llm.max_prompt_tokens
    )
    if fit["passages_dropped"]:
        log.warning(
            "er2alm aspects: dropped %d passages of %d items to fit llm.max_prompt_tokens=%d (raise it to keep them)",
            fit["passages_dropped"],
            fit["items_shortened"],
            cfg.llm.max_prompt_tokens,
        )
    rows = pa.table({"item_id": items.column("item_id"), "prompt": prompts})
    sampling = {"max_new_tokens": r.max_new_tokens, "temperature": r.temperature, "top_p": r.top_p}
    sampling |= _labels(cfg, "rag", ASPECT_LABELS.values())
    name = "er2alm_aspects" if passages is not None else "er2alm_aspects_norag"
    return _generate(store, cfg, name, rows, sampling, r.block_size, [passages or ds_art])


def item_aspects(ds_art: Artifact, aspects_art: Artifact) -> tuple[pa.Table, dict]:
    """:func:`~ragrec.llm.prompts_er2alm.parse_aspects` of the answers, one row per dense item id (items
    without an answer: nulls) and the parse counts."""
    from ..llm.prompts_er2alm import parse_aspects

    n_items = sizes(ds_art)[1]
    t = aspects_art.read_table()
    table, stats = parse_aspects(t.column("text").to_pylist())
    full = np.full(n_items, -1, dtype=np.int64)
    full[t.column("item_id").to_numpy()] = np.arange(t.num_rows)
    idx = pa.array(np.where(full >= 0, full, 0), pa.int64())
    mask = pa.array(full < 0)
    cols = {a: pc.if_else(mask, pa.scalar(None, pa.string()), table.column(a).take(idx)) for a in ER2ALM_ASPECTS}
    return pa.table(cols), {**stats, "items_without_answer": int((full < 0).sum())}


def profiles_stage(
    store: ArtifactStore, cfg: RunConfig, ds_art: Artifact, samples_art: Artifact, aspects_art: Artifact
) -> Artifact:
    """``P_U`` answers (Eq. 2-3) of every user with a training positive: ``(user_id, text)``."""
    from ..llm.prompts_er2alm import profile_prompts

    hist = train_histories(ds_art, samples_art)
    users = np.flatnonzero(np.diff(hist.offsets.to_numpy()) > 0)
    aspects, _ = item_aspects(ds_art, aspects_art)
    p = cfg.profile
    prompts = profile_prompts(ds_art.read_table("items"), aspects, hist.take(pa.array(users)), p.max_history_items)
    rows = pa.table({"user_id": pa.array(users, pa.int64()), "prompt": prompts})
    sampling = {"max_new_tokens": p.max_new_tokens, "temperature": p.temperature, "top_p": p.top_p}
    sampling |= _labels(cfg, "profile", ASPECT_LABELS.values(), "weighted" if p.force_weights else "text")
    return _generate(store, cfg, "er2alm_profiles", rows, sampling, p.block_size, [samples_art, aspects_art])


# ---------------------------------------------------------------------------------------------------
# Eq. 4-5: embeddings
# ---------------------------------------------------------------------------------------------------
def _keyed(prefix: np.ndarray, ids: np.ndarray, k: np.ndarray) -> pa.Array:
    """``"<prefix><id>:<k>"`` per row (the embedding stage's keys)."""
    s = np.char.add(np.char.add(np.char.add(prefix.astype(str), ids.astype(str)), ":"), k.astype(str))
    return pa.array(s.astype(object), pa.string())


def features_stage(
    store: ArtifactStore, cfg: RunConfig, ds_art: Artifact, aspects_art: Artifact, profiles_art: Artifact
) -> Artifact:
    """Every item's basic text (``"Heat (1995), Action, Crime"``), each of its aspects and each user's profile
    line embedded separately by ``rag.encoder`` (Eq. 4); ``weights.npy`` the parsed profile weights (Eq. 5's
    w, clipped / renormalised by :func:`~ragrec.llm.prompts_er2alm.parse_profiles`). Missing texts and users
    without a profile are zero rows. ``stats.json``: the aspect and profile parse / repair counts."""
    from ..llm.prompts_er2alm import ASPECT_LABELS, parse_profiles
    from ..retrieval.corpus import item_queries

    n_users, n_items = sizes(ds_art)
    aspects, a_stats = item_aspects(ds_art, aspects_art)
    prof = profiles_art.read_table()
    profiles, weights, p_stats = parse_profiles(prof.column("text").to_pylist(), cfg.profile.min_weight)
    p_users = prof.column("user_id").to_numpy()
    # rows: every item's basic text, then per aspect its present item aspects and profile lines; the stage's
    # output keeps this order, so (kind, id, aspect) of each row are known here (the keys only label them)
    kind, ids, asp = [np.zeros(n_items, np.int8)], [np.arange(n_items)], [np.zeros(n_items, np.int64)]
    texts = [item_queries(ds_art.read_table("items"))]
    for k, a in enumerate(ER2ALM_ASPECTS):
        for code, table, who in ((1, aspects, np.arange(n_items)), (2, profiles, p_users)):
            col = table.column(a).combine_chunks()
            ok = col.is_valid().to_numpy(zero_copy_only=False)
            kind.append(np.full(ok.sum(), code, np.int8))
            ids.append(who[ok])
            asp.append(np.full(ok.sum(), k, np.int64))
            texts.append(pc.binary_join_element_wise(ASPECT_LABELS[a], col.filter(pa.array(ok)), ": "))
    kind, ids, asp = np.concatenate(kind), np.concatenate(ids).astype(np.int64), np.concatenate(asp)
    keys = _keyed(np.array(["b:", "a:", "p:"])[kind], ids, asp)
    emb = embed_texts_stage(
        store,
        "embed_er2alm_texts",
        keys,
        texts,
        llm_cfg=cfg.llm,
        encoder=cfg.rag.encoder,
        max_tokens=128,
        inputs=[aspects_art, profiles_art],
    )

    def compute(art: Artifact) -> dict:
        m = to_numpy(emb.read_table().column("embedding"))
        if len(m) != len(kind):
            raise RuntimeError(f"embed_er2alm_texts holds {len(m)} rows for {len(kind)} texts; rerun with --force")
        d, K = m.shape[1], len(ER2ALM_ASPECTS)
        basic = np.zeros((n_items, d), np.float32)
        item_a = np.zeros((n_items, K, d), np.float32)
        user_p = np.zeros((n_users, K, d), np.float32)
        w = np.zeros((n_users, K), np.float32)
        sel = kind == 0
        basic[ids[sel]] = m[sel]
        sel = kind == 1
        item_a[ids[sel], asp[sel]] = m[sel]
        sel = kind == 2
        user_p[ids[sel], asp[sel]] = m[sel]
        w[p_users] = weights
        for name, x in (("basic", basic), ("aspects", item_a), ("profile", user_p), ("weights", w)):
            np.save(art.staging / f"{name}.npy", x)
        art.write_json({"aspects": a_stats, "profiles": p_stats}, "stats")
        return {"rows": n_items, "users": n_users, "dim": int(d)}

    return store.run("er2alm_features", {"min_weight": cfg.profile.min_weight}, [emb], compute, version=VERSION)


def load_features(art: Artifact) -> dict[str, np.ndarray]:
    return {n: np.load(art.path / f"{n}.npy") for n in ("basic", "aspects", "profile", "weights")}


# ---------------------------------------------------------------------------------------------------
# Eq. 6-12: noise control
# ---------------------------------------------------------------------------------------------------
def noise_stage(store: ArtifactStore, cfg: RunConfig, features: Artifact, seed: int) -> Artifact:
    """``kept.npy`` (I, K) bool of :func:`~ragrec.models.noise_control.denoise` (every present aspect when
    ``noise.enabled`` is false) and ``stats.json`` (kept / present per aspect, bank counters, loss)."""
    from ..models.noise_control import denoise

    spec = {"noise": cfg.noise.model_dump(mode="json"), "seed": seed}
    if not cfg.noise.enabled:
        spec = {"noise": {"enabled": False}}

    def compute(art: Artifact) -> dict:
        f = load_features(features)
        kept, stats = denoise(f["basic"], f["aspects"], cfg.noise, seed=seed)
        np.save(art.staging / "kept.npy", kept)
        art.write_json(stats, "stats")
        return {"rows": int(kept.shape[0]), "kept": int(kept.sum()), "present": int(sum(stats["present_per_aspect"]))}

    return store.run("er2alm_noise", spec, [features], compute, version=VERSION)


# ---------------------------------------------------------------------------------------------------
# LLM augmentation (§3.5): candidates of the base model, liked / disliked picks
# ---------------------------------------------------------------------------------------------------
def candidate_orders(n_users: int, n_candidates: int, rounds: int, seed: int) -> np.ndarray:
    """``(rounds, n_users, n_candidates)`` int64: row ``[r, u]`` is the permutation of user ``u``'s ranked
    candidates that round ``r`` shows (``shown = candidates[u, order[r, u]]``), seeded by ``seed``."""
    rng = np.random.default_rng([seed, n_candidates])
    return np.argsort(rng.random((rounds, n_users, n_candidates)), axis=-1).astype(np.int64)


def candidates_stage(store: ArtifactStore, cfg: RunConfig, samples_art: Artifact, base: Artifact) -> Artifact:
    """``users.npy`` (n,) every user with a training positive and ``candidates.npy`` (n, C): the base model's
    top ``augment.candidates`` items the user has no training positive of, best first."""
    from ..data.full_ranking import split_matrices
    from ..evaluation.full_ranking import top_k_items

    def compute(art: Artifact) -> dict:
        ue, ie = np.load(base.path / "user_emb.npy"), np.load(base.path / "item_emb.npy")
        train = split_matrices(samples_art.read_table("samples"), len(ue), len(ie))["train"]
        users = np.flatnonzero(np.diff(train.indptr) > 0)
        items, _ = top_k_items(ue, ie, train, users, cfg.augment.candidates)
        np.save(art.staging / "users.npy", users.astype(np.int64))
        np.save(art.staging / "candidates.npy", items)
        return {"rows": len(users)}

    return store.run("er2alm_candidates", {"candidates": cfg.augment.candidates}, [samples_art, base], compute)


def ranked_orders(n_users: int, n_candidates: int) -> np.ndarray:
    """``(1, n_users, n_candidates)``: one round showing every user's candidates in the base model's order."""
    return np.broadcast_to(np.arange(n_candidates, dtype=np.int64), (1, n_users, n_candidates))


def pick_orders(cfg: RunConfig, cands: Artifact) -> np.ndarray:
    """``(rounds, n, C)``: the candidates' prompt order of each pick round: the base model's ranking (one
    round) with ``augment.order: ranked``, else :func:`candidate_orders` seeded by ``seed`` (round r's order
    does not depend on ``augment.rounds``, so adding rounds reuses the answers of the first ones)."""
    n, c = np.load(cands.path / "candidates.npy", mmap_mode="r").shape
    if cfg.augment.order == "ranked":
        return ranked_orders(n, c)
    return candidate_orders(n, c, cfg.augment.rounds, cfg.seed)


def picks_stage(
    store: ArtifactStore, cfg: RunConfig, ds_art: Artifact, samples_art: Artifact, cands: Artifact
) -> list[Artifact]:
    """The LLM's liked / disliked pick among each user's candidates, one ``(user_id, text)`` artifact per round
    (``augment.rounds``), the candidates in the round's order (:func:`pick_orders`)."""
    from ..llm.prompts_er2alm import pick_prompts

    users, items = np.load(cands.path / "users.npy"), np.load(cands.path / "candidates.npy")
    hist = train_histories(ds_art, samples_art).take(pa.array(users))
    a = cfg.augment
    sampling = {"max_new_tokens": a.max_new_tokens, "temperature": a.temperature, "top_p": 1.0}
    sampling |= _labels(cfg, "augment", PICK_LABELS, "number", items.shape[1])
    items_table = ds_art.read_table("items")
    out = []
    for order in pick_orders(cfg, cands):
        shown = np.take_along_axis(items, order, axis=1)
        prompts = pick_prompts(items_table, hist, np.where(shown < 0, 0, shown), cfg.profile.max_history_items)
        rows = pa.table({"user_id": pa.array(users, pa.int64()), "prompt": prompts})
        out.append(_generate(store, cfg, "er2alm_picks", rows, sampling, a.block_size, [cands]))
    return out


def picked_pairs(
    cands: Artifact, picks: Sequence[Artifact], orders: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, dict]:
    """``(liked (n, 2), disliked (m, 2), parse stats)``: the (user, item) pairs the LLM picked.

    ``picks``: one artifact per round, asked with the candidates in ``orders[r]`` (:func:`pick_orders`; None =
    the ranked order, one round). With several rounds a user's pick counts only when every round names the same
    item. ``stats``: :func:`~ragrec.llm.prompts_er2alm.parse_picks`' counts summed over rounds (``*_by_position``:
    the number the LLM wrote), ``*_by_rank`` (the picked item's rank in the base model's list, 1 = best) and,
    with several rounds, ``rounds`` and ``agreed_liked`` / ``agreed_disliked``."""
    from ..llm.prompts_er2alm import parse_picks

    users, items = np.load(cands.path / "users.npy"), np.load(cands.path / "candidates.npy")
    if orders is None:
        orders = ranked_orders(*items.shape)
    if len(picks) != len(orders):
        raise ValueError(f"picked_pairs: {len(picks)} pick artifacts for {len(orders)} candidate orders")
    n, c = items.shape
    ranks = {"liked": [], "disliked": []}  # (rounds, n) base rank of each round's pick, -1 = none
    stats: dict[str, Any] = {}
    for order, art in zip(orders, picks):
        t = art.read_table()
        row = np.searchsorted(users, t.column("user_id").to_numpy())
        liked, disliked, s = parse_picks(t.column("text").to_pylist(), c)
        for k, v in s.items():  # counts and per-position lists, summed over rounds
            stats[k] = (np.asarray(v) + stats.get(k, 0)).tolist()
        for what, pos in (("liked", liked), ("disliked", disliked)):
            r = np.full(n, -1, np.int64)
            ok = pos >= 0
            r[row[ok]] = order[row[ok], pos[ok]]
            ranks[what].append(r)
    out = []
    for what in ("liked", "disliked"):
        r = np.stack(ranks[what])
        agreed = (r[0] >= 0) & (r == r[0]).all(axis=0)
        stats[f"{what}_by_rank"] = np.bincount(r[r >= 0], minlength=c).tolist()
        if len(orders) > 1:
            stats[f"agreed_{what}"] = int(agreed.sum())
        rows = np.flatnonzero(agreed)
        item = items[rows, r[0, rows]]
        good = item >= 0
        out.append(np.stack([users[rows][good], item[good]], axis=1).astype(np.int64))
    if len(orders) > 1:
        stats["rounds"] = len(orders)
    return out[0], out[1], stats


# ---------------------------------------------------------------------------------------------------
# Eq. 13-14: the GNN
# ---------------------------------------------------------------------------------------------------
def side_inputs(
    features: dict[str, np.ndarray], kept: np.ndarray | None, gnn: GNNConfig
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The GNN's side inputs (Eq. 5 and §3.5): ``user_side`` (U, d) = ``sum_k w_k e_k`` of the profile lines
    and their weights, ``item_side`` (I, d_b + K d) = ``[basic; aspect_1; ...; aspect_K]`` with the aspects that
    noise control dropped (``kept`` False) zeroed; None for a side ``gnn`` does not use."""
    from ..models.er2alm_gnn import item_side_features, user_side_features

    users = user_side_features(features["profile"], features["weights"]) if gnn.side and gnn.use_users else None
    items = None
    if gnn.side and gnn.use_items:
        if kept is None:
            raise ValueError("side_inputs: the item side needs the kept aspects of noise control")
        items = item_side_features(features["basic"], features["aspects"], kept)
    return users, items


def gnn_stage(
    store: ArtifactStore,
    cfg: RunConfig,
    ds_art: Artifact,
    samples_art: Artifact,
    seed: int,
    gnn: GNNConfig,
    *,
    features: Artifact | None = None,
    noise: Artifact | None = None,
    augment: tuple[Artifact, ...] | None = None,
) -> Artifact:
    """Train the GNN of ``gnn`` with ``seed`` on the training positives (+ ``ceil(augment.eta |E|)`` picked pairs
    when ``augment`` = (candidates, picks of each round) is given): ``user_emb.npy``, ``item_emb.npy``,
    ``history.json``. ``features`` / ``noise`` feed the side embeddings (Eq. 5 user vectors, kept aspects zeroed
    otherwise)."""
    from ..training.er2alm import augmented_pairs, train_er2alm
    from ..training.ray_train import TrainOptions

    side_users, side_items = gnn.side and gnn.use_users, gnn.side and gnn.use_items
    if (side_users or side_items) and features is None:
        raise ValueError("gnn_stage: the side embeddings need the er2alm_features artifact")
    if side_items and noise is None:
        raise ValueError("gnn_stage: the item side needs the er2alm_noise artifact (kept aspects)")
    spec: dict = {"gnn": gnn.model_dump(mode="json", exclude={"seeds"}), "seed": seed}
    if augment is not None:
        spec["eta"] = cfg.augment.eta
    inputs = [samples_art]
    for a in (features if side_users or side_items else None, noise if side_items else None, *(augment or ())):
        if a is not None:
            inputs.append(a)

    def compute(art: Artifact) -> dict:
        n_users, n_items = sizes(ds_art)
        u, i = train_pairs(samples_art)
        f = load_features(features) if side_users or side_items else {}
        kept = np.load(noise.path / "kept.npy") if side_items else None
        user_side, item_side = side_inputs(f, kept, gnn)
        pos = neg = None
        if augment is not None:
            liked, disliked, _ = picked_pairs(augment[0], augment[1:], pick_orders(cfg, augment[0]))
            if len(liked) + len(disliked):
                pos, neg = augmented_pairs(liked, disliked, len(u), cfg.augment.eta, seed=seed)
        opts = dataclasses.replace(TrainOptions.for_stage(cfg, art, out="model"), seed=seed)  # the row's seed
        res = train_er2alm(
            u,
            i,
            n_users,
            n_items,
            gnn,
            user_side=user_side,
            item_side=item_side,
            extra_pos=pos,
            extra_neg=neg,
            eval_pairs=train_pairs(samples_art, "valid"),
            opts=opts,
        )
        np.save(art.staging / "user_emb.npy", res.user_emb.astype(np.float32))
        np.save(art.staging / "item_emb.npy", res.item_emb.astype(np.float32))
        art.write_json(res.history, "history")
        extra = {"extra_pos": 0 if pos is None else len(pos), "extra_neg": 0 if neg is None else len(neg)}
        return {"rows": n_users, "edges": len(u), **extra}

    return store.run("er2alm_gnn", spec, inputs, compute, version=GNN_VERSION)
