"""ER2ALM's composition on the method contract: side inputs (Eq. 5 user vectors, kept aspects), the corpus source
and its fallback, the synthetic corpus, the augmentation prompt and parser, the full-ranking rows, and
``POST /recommend`` (the offline lists, 4xx on bad input). No Ray, no model: tiny hand-made artifacts."""

import json
import re

import numpy as np
import pyarrow as pa
import pytest
import scipy.sparse as sp
from pydantic import ValidationError

from ragrec.artifacts import ArtifactStore
from ragrec.config import ER2ALM_ASPECTS, ConfigError, GNNConfig, SyntheticConfig, load_config
from ragrec.data.schemas import FULL_RANKING
from ragrec.evaluation.full_ranking import top_k_items
from ragrec.llm.prompts_er2alm import parse_picks, pick_prompts
from ragrec.methods import get_method
from ragrec.methods.common import write_run_file
from ragrec.methods.er2alm import picks_notes, plot_picks
from ragrec.methods.er2alm_evaluate import _versus_table, gain_note, versus_lightgcn
from ragrec.methods.full_ranking import format_full_rows, full_row
from ragrec.serving.recommend import RecommendRequest, RecommendService
from ragrec.serving.schemas import RequestError
from ragrec.stages.er2alm import (
    FALLBACK_NOTE,
    candidate_orders,
    corpus_source,
    corpus_stage,
    picked_pairs,
    side_inputs,
)

K = len(ER2ALM_ASPECTS)


def _cfg(tmp_path, *extra):
    return load_config(
        None,
        [
            "method=er2alm",
            "data.protocol=full_ranking",
            f"artifacts_dir={tmp_path / 'a'}",
            f"output_dir={tmp_path}",
            *extra,
        ],
    )


# ------------------------------------------------------------------------------------- side inputs
def test_user_vector_is_the_profile_lines_weighted_by_the_llm_weights():
    rng = np.random.default_rng(0)
    profile = rng.normal(size=(2, K, 3)).astype(np.float32)
    profile[1, 2] = 0.0  # a missing profile line: a zero row, whatever its weight
    weights = np.array([[0.9, 0.1, 0.5, 0.5, 0.2, 0.3], [0.5, 0.5, 0.95, 0.05, 0.5, 0.5]], np.float32)
    f = {"profile": profile, "weights": weights, "basic": np.zeros((4, 2)), "aspects": np.zeros((4, K, 3))}
    users, items = side_inputs(f, np.ones((4, K), bool), GNNConfig())
    expected = np.stack([sum(weights[u, k] * profile[u, k] for k in range(K)) for u in range(2)])
    np.testing.assert_allclose(users, expected, rtol=1e-6)
    # a large weight on the missing line adds nothing
    np.testing.assert_allclose(users[1], expected[1] - 0.95 * profile[1, 2], rtol=1e-6)
    assert items.shape == (4, 2 + K * 3)
    assert side_inputs(f, None, GNNConfig(use_items=False))[1] is None
    assert side_inputs(f, None, GNNConfig(side=False)) == (None, None)
    assert side_inputs(f, np.ones((4, K), bool), GNNConfig(use_users=False))[0] is None


def test_aspects_dropped_by_noise_control_are_zeroed_and_the_rest_kept():
    rng = np.random.default_rng(1)
    basic = rng.normal(size=(3, 2)).astype(np.float32)
    aspects = rng.normal(size=(3, K, 4)).astype(np.float32)
    kept = np.ones((3, K), bool)
    kept[0, 1] = kept[2, 5] = False
    f = {"basic": basic, "aspects": aspects, "profile": np.zeros((1, K, 4)), "weights": np.zeros((1, K))}
    _, items = side_inputs(f, kept, GNNConfig(use_users=False))
    blocks = items[:, 2:].reshape(3, K, 4)
    np.testing.assert_array_equal(items[:, :2], basic)
    assert not blocks[0, 1].any() and not blocks[2, 5].any()
    np.testing.assert_array_equal(blocks[kept], aspects[kept])
    with pytest.raises(ValueError, match="kept aspects of noise control"):
        side_inputs(f, None, GNNConfig())


# -------------------------------------------------------------------------------- corpus + fallback
def _dataset(store: ArtifactStore, n_users: int = 3, n_items: int = 6):
    items = pa.table(
        {
            "item_id": pa.array(np.arange(n_items, dtype=np.int64)),
            "title": [f"Movie {i} (199{i})" for i in range(n_items)],
            "genres": [["Drama"] if i % 2 else ["Comedy", "Crime"] for i in range(n_items)],
        }
    )
    inter = pa.table({"user_id": pa.array([0], pa.int64()), "item_id": pa.array([0], pa.int64())})

    def compute(art):
        art.write_table(inter, "interactions")
        art.write_table(items, "items")
        return {"rows": 1, "items": n_items, "users": n_users}

    return store.run("dataset", {"fake": n_items}, [], compute)


def test_without_a_corpus_file_the_rag_source_is_metadata_plus_llm_descriptions(tmp_path):
    cfg = _cfg(tmp_path, "rag.max_items=4")
    assert corpus_source(cfg) == "metadata"
    store = ArtifactStore(cfg.artifacts_dir)
    ds = _dataset(store)

    def desc(art):
        art.write_table(pa.table({"item_id": pa.array([1, 3], pa.int64()), "text": ["A tale of two cities.", "x"]}))
        return {"rows": 2}

    desc_art = store.run("er2alm_descriptions", {"fake": 1}, [ds], desc)
    art = corpus_stage(store, cfg, ds, desc_art)
    corpus = art.read_table("corpus")
    assert art.manifest()["source"] == "metadata"
    assert corpus.num_rows == 4  # rag.max_items: the documents of the items that get aspects
    text = dict(zip(corpus.column("doc_id").to_pylist(), corpus.column("text").to_pylist()))
    assert text["1"] == "Movie 1 (1991). Genres: Drama. A tale of two cities."
    assert text["0"] == "Movie 0 (1990). Genres: Comedy, Crime."
    assert art.read_table("chunks").num_rows >= 4


def test_corpus_source_names_the_fix_for_a_synthetic_corpus_outside_the_synthetic_catalog(tmp_path):
    assert corpus_source(_cfg(tmp_path, "data.corpus_file=/x/wiki.jsonl")) == "file"
    assert corpus_source(_cfg(tmp_path, "data.name=synthetic", "data.corpus_file=synthetic")) == "synthetic"
    with pytest.raises(ValueError, match="data.corpus_file: synthetic is the synthetic catalog's own corpus"):
        corpus_source(_cfg(tmp_path, "data.corpus_file=synthetic"))


def test_the_report_says_when_the_rag_source_fell_back(tmp_path):
    cfg = _cfg(tmp_path)
    pipe = get_method("er2alm").pipeline(cfg)
    store = pipe.store
    pipe.arts["corpus"] = store.run(
        "er2alm_corpus", {"f": 1}, [], lambda a: {"rows": 3, "docs": 3, "source": "metadata"}
    )
    stats = {
        "aspects": {"parsed": 5, "partial": 2, "failed": 1, "items_without_answer": 0, "missing_per_aspect": {}},
        "profiles": {"parsed": 2, "partial": 0, "failed": 0, "weight_clipped": 3, "uniform_rows": 1},
    }

    def feats(art):
        art.write_json(stats, "stats")
        return {"rows": 3}

    pipe.arts["features"] = store.run("er2alm_features", {"f": 1}, [], feats)
    notes = pipe.report_notes()
    assert notes[0] == "RAG source: " + FALLBACK_NOTE
    assert "5 complete, 2 partial, 1 unparsable" in notes[1]
    assert "'weight_clipped': 3" in notes[2] and "'uniform_rows': 1" in notes[2]


def test_the_synthetic_corpus_carries_the_quality_that_drives_ratings_and_the_titles_do_not(tmp_path):
    from ragrec.data.synthetic import RECEPTION, make_synthetic, write_synthetic_corpus
    from ragrec.retrieval.corpus import read_corpus

    cfg = SyntheticConfig(n_users=200, n_items=150, seed=3)
    corpus = read_corpus(write_synthetic_corpus(cfg, tmp_path / "c.jsonl"))
    ds = make_synthetic(cfg)
    assert corpus.column("title").to_pylist() == ds.items.column("title").to_pylist()
    tier = np.array([next(k for k, r in enumerate(RECEPTION) if r in t) for t in corpus.column("text").to_pylist()])
    assert np.bincount(tier, minlength=5).min() >= 25  # quintiles
    inter = ds.interactions
    item, label = inter.column("item_id").to_numpy(), inter.column("label").to_numpy()
    rate = np.bincount(item, weights=label, minlength=150) / np.maximum(np.bincount(item, minlength=150), 1)
    assert rate[tier == 4].mean() > rate[tier == 0].mean() + 0.2  # real signal for RAG to find
    titles = " ".join(corpus.column("title").to_pylist()).lower()
    assert "masterpiece" not in titles and "panned" not in titles


# ------------------------------------------------------------------------------------ augmentation
def test_pick_prompts_number_the_candidates_and_parse_picks_maps_them_back():
    items = pa.table(
        {"item_id": [0, 1, 2], "title": ["A (1990)", "B (1991)", "C (1992)"], "genres": [["X"], [], ["Y"]]}
    )
    p = pick_prompts(items, pa.array([[0]]), np.array([[2, 1]]), 5).to_pylist()[0]
    assert '1. "A (1990)" (X)' in p and '[1] "C (1992)" (Y)' in p and '[2] "B (1991)" (unknown)' in p
    liked, disliked, stats = parse_picks(
        ["Liked: [2]\nDisliked: 1", "liked: 9\ndisliked: 2", "I would pick 2, then 1", "liked: 1\ndisliked: 1", ""], 2
    )
    assert liked.tolist() == [1, -1, 1, 0, -1] and disliked.tolist() == [0, 1, 0, -1, -1]
    assert stats["out_of_range"] == 1 and stats["unlabelled"] == 1 and stats["same"] == 1 and stats["parsed"] == 2
    # per candidate number, usable picks only: liked 2, 2, 1 (row 2's 9 is out of range), disliked 1, 2, 1
    assert stats["liked_by_position"] == [1, 2] and stats["disliked_by_position"] == [2, 1]


def _cands(store, users, items):
    def compute(art):
        np.save(art.staging / "users.npy", np.asarray(users, np.int64))
        np.save(art.staging / "candidates.npy", np.asarray(items, np.int64))
        return len(users)

    return store.run("er2alm_candidates", {}, [], compute)


def _picks(store, users, texts, r):
    def compute(art):
        art.write_table(pa.table({"user_id": pa.array(users, pa.int64()), "text": texts}))
        return len(users)

    return store.run("er2alm_picks", {"round": r}, [], compute)


def test_candidate_orders_are_seeded_permutations_per_round_and_user():
    o = candidate_orders(50, 6, 3, seed=7)
    assert o.shape == (3, 50, 6) and (np.sort(o, axis=-1) == np.arange(6)).all()
    assert (o == candidate_orders(50, 6, 3, seed=7)).all() and not (o == candidate_orders(50, 6, 3, seed=8)).all()
    assert not (o[0] == o[1]).all()  # rounds differ; round r does not depend on how many rounds are asked
    assert (candidate_orders(50, 6, 1, seed=7)[0] == o[0]).all()
    first = np.bincount(o[0, :, 0], minlength=6)  # which rank each user sees as candidate 1: spread, not fixed
    assert (first > 0).sum() >= 5


def test_picked_pairs_map_numbers_through_the_shown_order_and_keep_only_agreed_picks(tmp_path):
    store = ArtifactStore(tmp_path)
    users, items = [3, 5], [[30, 31, 32], [50, 51, 52]]  # base-model ranks 1, 2, 3
    ranked = _cands(store, users, items)
    liked, disliked, st = picked_pairs(ranked, [_picks(store, [5, 3], ["liked: 3\ndisliked: 1", "liked: 1"], 0)])
    assert liked.tolist() == [[3, 30], [5, 52]] and disliked.tolist() == [[5, 50]]
    assert st["liked_by_position"] == st["liked_by_rank"] == [1, 0, 1] and "rounds" not in st
    # two shuffled rounds: user 3 sees (32, 30, 31) then (31, 32, 30); user 5 sees (51, 52, 50) then (50, 51, 52)
    shown = np.array([[[2, 0, 1], [1, 2, 0]], [[1, 2, 0], [0, 1, 2]]])
    r1 = _picks(store, [3, 5], ["liked: 2\ndisliked: 1", "liked: 1\ndisliked: 3"], 1)  # 3: 30 / 32; 5: 51 / 50
    r2 = _picks(store, [3, 5], ["liked: 3\ndisliked: 1", "liked: 1\ndisliked: 1"], 2)  # 3: 30 / 31; 5: 50 / -
    liked, disliked, st = picked_pairs(ranked, [r1, r2], shown)
    assert liked.tolist() == [[3, 30]] and disliked.tolist() == [] and disliked.shape == (0, 2)
    assert st["rounds"] == 2 and st["agreed_liked"] == 1 and st["agreed_disliked"] == 0 and st["same"] == 1
    assert st["liked_by_position"] == [2, 1, 1] and st["liked_by_rank"] == [3, 1, 0]  # 30, 51, 30, 50
    assert st["disliked_by_rank"] == [1, 1, 1]  # 32, 50, 31
    with pytest.raises(ValueError, match="2 pick artifacts for 1 candidate orders"):
        picked_pairs(ranked, [r1, r2])


def test_picks_stage_shows_each_round_its_own_permutation_and_round_one_is_the_same_for_any_rounds(
    tmp_path, monkeypatch
):
    import ragrec.stages.er2alm as st

    store = ArtifactStore(tmp_path / "s")
    titles = [f"T{i} (1990)" for i in range(8)]
    items = pa.table({"item_id": list(range(8)), "title": titles, "genres": [["G"]] * 8})
    ds = store.run("dataset", {}, [], lambda art: (art.write_table(items, "items"), 8)[1])
    ranked = [[4, 5, 6, 7], [7, 6, 5, 4]]
    cands = _cands(store, [0, 1], ranked)
    monkeypatch.setattr(st, "train_histories", lambda *_: pa.array([[0], [1]], pa.list_(pa.int64())))
    asked = []
    monkeypatch.setattr(st, "_generate", lambda store, cfg, name, rows, *a: asked.append(rows) or len(asked))

    def shown(rows):  # the item ids in each prompt's candidate list, in the order shown
        return [[int(t) for t in re.findall(r'\[\d+\] "T(\d+)', p)] for p in rows.column("prompt").to_pylist()]

    base = ["augment.candidates=4", "augment.force_format=false"]
    cfg = _cfg(tmp_path, *base, "augment.order=shuffled", "augment.rounds=3")
    assert st.picks_stage(store, cfg, ds, None, cands) == [1, 2, 3]
    orders = st.pick_orders(cfg, cands)
    for r, rows in enumerate(asked):
        assert rows.column("user_id").to_pylist() == [0, 1]
        assert shown(rows) == np.take_along_axis(np.array(ranked), orders[r], axis=1).tolist()
    assert shown(asked[0]) != shown(asked[1])
    one = _cfg(tmp_path, *base, "augment.order=shuffled")
    st.picks_stage(store, one, ds, None, cands)
    assert shown(asked[3]) == shown(asked[0])  # the same prompts: a cached first round is reused
    st.picks_stage(store, _cfg(tmp_path, *base), ds, None, cands)
    assert shown(asked[4]) == ranked and st.pick_orders(_cfg(tmp_path, *base), cands).shape == (1, 2, 4)


def test_augment_rounds_need_shuffled_candidates_and_the_report_flags_answers_by_position(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="augment.rounds.*augment.order: shuffled"):
        _cfg(tmp_path, "augment.rounds=2")
    assert _cfg(tmp_path, "augment.order=shuffled", "augment.rounds=2").augment.rounds == 2
    st = {"parsed": 10, "liked_by_position": [8, 1, 1], "disliked_by_position": [2, 4, 4]}
    notes = picks_notes(st, "ranked")
    warn = [n for n in notes if n.startswith("warning")]
    assert len(warn) == 1 and "candidate 1 is 80% of its liked picks" in warn[0] and "rank-1" in warn[0]
    assert "augmentation picks: {'parsed': 10}" in notes
    st |= {"liked_by_rank": [3, 3, 4], "disliked_by_rank": [4, 3, 3]}
    notes = picks_notes(st, "shuffled")
    assert any("per base-model rank (1 = best): liked [3, 3, 4]" in n for n in notes)
    assert any("augment.rounds: 2 or more" in n for n in notes if n.startswith("warning"))
    notes = picks_notes(st | {"rounds": 2, "agreed_liked": 1, "agreed_disliked": 0}, "shuffled")
    assert any("1 users' liked picks agreed across the 2 orders (about 1 in 3 by chance)" in n for n in notes)
    # the report's picks.png: one panel ranked, two (by number, by rank) shuffled; the bars are the counts
    import matplotlib.pyplot as plt

    drawn, bar = [], plt.Axes.bar
    monkeypatch.setattr(plt.Axes, "bar", lambda ax, x, h, **kw: drawn.append(list(h)) or bar(ax, x, h, **kw))
    plot_picks(st, "ranked", tmp_path / "ranked.png")
    assert drawn == [[8, 1, 1], [2, 4, 4]]
    plot_picks(st, "shuffled", tmp_path / "shuffled.png")
    assert drawn[2:] == [[8, 1, 1], [2, 4, 4], [3, 3, 4], [4, 3, 3]]
    assert (tmp_path / "ranked.png").read_bytes()[:4] == b"\x89PNG" and (tmp_path / "shuffled.png").stat().st_size


# --------------------------------------------------------------------------------------- the rows
def _per_user(values):
    v = np.asarray(values, float)
    return {f"{m}@{k}": v for m in ("recall", "ndcg", "precision") for k in (10, 20, 50)}


def test_full_rows_carry_the_seed_interval_the_user_interval_and_the_paired_difference(tmp_path):
    cfg = _cfg(tmp_path, "eval.bootstrap=200")
    a = [_per_user([0.5, 0.0, 1.0, 0.5]), _per_user([0.7, 0.1, 0.9, 0.3])]
    b = [_per_user([0.25, 0.0, 0.5, 0.25]), _per_user([0.25, 0.1, 0.5, 0.05])]
    ref = full_row("LightGCN", b, cfg)
    row = full_row("ER2ALM", a, cfg, b, "LightGCN")
    assert row["recall@20"] == pytest.approx(0.5) and ref["recall@20"] == pytest.approx(0.2375)
    assert row["recall@20_sd"] == pytest.approx(0.0)  # both seeds average 0.5
    assert row["delta"] == pytest.approx(0.5 - 0.2375)
    d = np.array([0.5 - 0.25, 0.5 - 0.225])
    half = 12.7062047 * d.std(ddof=1) / np.sqrt(2)  # t(0.975, 1 df)
    assert row["delta_slo"] == pytest.approx(d.mean() - half, rel=1e-5)
    assert row["recall@20_lo"] <= row["recall@20"] <= row["recall@20_hi"] and row["n"] == 4 and row["seeds"] == 2
    assert row["delta_lo"] > 0  # every user gains or ties
    table = format_full_rows([row, ref])
    assert "| ER2ALM | 0.5000 |" in table and "vs LightGCN" in table and " * " in table
    assert gain_note({"er2alm": row, "lightgcn": full_row("LightGCN", b, cfg, a, "ER2ALM")})[0].endswith(
        "a measured gain"
    )
    # every row but LightGCN against LightGCN: the same paired figures as the main table's ER2ALM pairing
    worse = [_per_user([0.0, 0.0, 0.5, 0.25]), _per_user([0.25, 0.0, 0.25, 0.0])]
    vs = versus_lightgcn({"er2alm": a, "lightgcn": b, "no_item": worse}, cfg, ["lightgcn", "er2alm", "no_item"])
    assert [r["key"] for r in vs] == ["er2alm", "no_item"] and all(r["reference"] == "LightGCN" for r in vs)
    assert vs[0]["delta"] == pytest.approx(row["delta"]) and vs[0]["delta_lo"] == pytest.approx(row["delta_lo"])
    assert vs[1]["delta"] == pytest.approx(0.15625 - 0.2375) and vs[1]["delta_hi"] <= 0
    table = _versus_table(vs)
    assert "| ER2ALM | 0.5000 | +0.2625 [" in table and "| w/o item information | 0.1562 | -0.0812 [" in table


# ------------------------------------------------------------------------------------ serving
def _served_run(tmp_path):
    """A finished full-ranking run: 3 users, 6 items, hand-made embeddings with a tie (items 2 and 4)."""
    cfg = _cfg(tmp_path)
    store = ArtifactStore(cfg.artifacts_dir)
    ds = _dataset(store)
    pairs = [(0, 0, "train"), (0, 1, "train"), (0, 3, "test"), (1, 5, "train"), (1, 2, "test"), (2, 4, "test")]
    split = pa.Table.from_arrays(
        [
            pa.array([p[0] for p in pairs], pa.int64()),
            pa.array([p[1] for p in pairs], pa.int64()),
            [p[2] for p in pairs],
        ],
        schema=FULL_RANKING,
    )
    samples = store.run("samples", {"f": 1}, [ds], lambda a: (a.write_table(split, "samples"), {"rows": 6})[1])
    ue = np.array([[1.0, 0.2], [0.3, 1.0], [-1.0, 0.5]], np.float32)
    ie = np.array([[2, 0], [1, 1], [0.5, 0.5], [0, 2], [0.5, 0.5], [-1, 1]], np.float32)

    def gnn(art):
        np.save(art.staging / "user_emb.npy", ue)
        np.save(art.staging / "item_emb.npy", ie)
        return {"rows": 3}

    arts = {"dataset": ds, "samples": samples, "gnn": store.run("er2alm_gnn", {"f": 1}, [samples], gnn)}
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_run_file(run_dir, cfg, arts, get_method("er2alm").config_dict(cfg))
    train = sp.csr_matrix((np.ones(3), ([0, 0, 1], [0, 1, 5])), shape=(3, 6))
    return run_dir, ue, ie, train


def test_recommend_returns_the_offline_top_k_of_unseen_items(tmp_path):
    run_dir, ue, ie, train = _served_run(tmp_path)
    svc = RecommendService(str(run_dir))
    assert (svc.catalog.n_users, svc.catalog.n_items) == (3, 6)
    offline_items, offline_scores = top_k_items(ue, ie, train, [0, 1, 2], 4)  # what predictions.parquet holds
    for u in range(3):
        resp = svc.recommend(RecommendRequest(user_id=u, k=4))
        got = [it.item_id for it in resp.items]
        assert got == offline_items[u].tolist()
        np.testing.assert_allclose([it.score for it in resp.items], offline_scores[u], rtol=1e-12)
        # independent brute force: unseen items by score, ties by item id
        s = ue[u].astype(float) @ ie.T.astype(float)
        unseen = [i for i in range(6) if not train[u, i]]
        assert got == sorted(unseen, key=lambda i: (-s[i], i))[:4]
    # user 0: items 0, 1 are training positives and never served; items 2 and 4 tie at 0.6 (smaller id first)
    resp = svc.recommend(RecommendRequest(user_id=0, k=4))
    assert [it.item_id for it in resp.items] == [2, 4, 3, 5]
    np.testing.assert_allclose([it.score for it in resp.items], [0.6, 0.6, 0.4, -0.8], rtol=1e-6)


@pytest.mark.parametrize(
    ("user", "k", "status", "words"),
    [
        (0, 0, 422, "k must be >= 1"),
        (0, -3, 422, "k must be >= 1"),
        (3, 2, 404, "unknown user_id 3"),
        (-1, 2, 404, "unknown user_id -1"),
        (0, 101, 413, "at most 100 items per request"),
        (0, 5, 413, "user 0 has 4 items without a training positive"),
    ],
)
def test_recommend_rejects_bad_requests_with_a_4xx_and_a_reason(tmp_path, user, k, status, words):
    run_dir, *_ = _served_run(tmp_path)
    svc = RecommendService(str(run_dir))
    with pytest.raises(RequestError) as e:
        svc.recommend(RecommendRequest(user_id=user, k=k))
    assert e.value.status == status and words in e.value.message


def test_recommend_request_is_strict():
    with pytest.raises(ValidationError):
        RecommendRequest.model_validate({"user_id": "3", "k": 2})
    with pytest.raises(ValidationError):
        RecommendRequest.model_validate({"user_id": 3, "k": 2.5})
    with pytest.raises(ValidationError):
        RecommendRequest.model_validate({"user_id": 3, "k": 2, "items": [1]})
    assert json.loads(RecommendRequest(user_id=1).model_dump_json()) == {"user_id": 1, "k": 10}


def test_train_histories_list_each_users_training_positives_oldest_first(tmp_path):
    from ragrec.stages.er2alm import train_histories

    store = ArtifactStore(tmp_path / "a")
    inter = pa.table(
        {
            "user_id": pa.array([0, 0, 0, 0, 2, 2], pa.int64()),
            "item_id": pa.array([3, 1, 4, 1, 0, 5], pa.int64()),
            "timestamp": pa.array([30, 50, 10, 5, 7, 7], pa.int64()),  # item 1 rated twice: its latest time counts
        }
    )

    def ds(art):
        art.write_table(inter, "interactions")
        art.write_table(pa.table({"item_id": pa.array(range(6), pa.int64()), "title": ["t"] * 6}), "items")
        return {"rows": 6, "items": 6, "users": 3}

    ds_art = store.run("dataset", {"f": 2}, [], ds)
    pairs = [(0, 1, "train"), (0, 3, "train"), (0, 4, "train"), (2, 0, "train"), (2, 5, "train"), (0, 2, "test")]
    split = pa.Table.from_arrays(
        [
            pa.array([p[0] for p in pairs], pa.int64()),
            pa.array([p[1] for p in pairs], pa.int64()),
            [p[2] for p in pairs],
        ],
        schema=FULL_RANKING,
    )
    samples = store.run("samples", {"f": 2}, [ds_art], lambda a: (a.write_table(split, "samples"), {"rows": 6})[1])
    # user 0: item 4 at 10, item 3 at 30, item 1 at 50 (not 5); user 1: none; user 2: a tie at 7 -> item id order
    assert train_histories(ds_art, samples).to_pylist() == [[4, 3, 1], [], [0, 5]]


def test_bpr_mf_is_the_gnn_without_propagation():
    """The BPR-MF row: ``gnn.num_layers: 0`` scores with the ID embeddings themselves (no neighbour averaging)."""
    import torch

    from ragrec.models.er2alm_gnn import ER2ALMGNN
    from ragrec.models.lightgcn import bipartite_edge_index, normalized_adjacency

    u, i = torch.tensor([0, 0, 1, 2]), torch.tensor([0, 1, 1, 3])
    adj = normalized_adjacency(bipartite_edge_index(u, i, 3), 3 + 4)
    mf = ER2ALMGNN(3, 4, 8, 0, side=False)
    assert torch.equal(mf.get_embedding(adj), mf.embedding.weight)
    gcn = ER2ALMGNN(3, 4, 8, 2, side=False)
    assert not torch.allclose(gcn.get_embedding(adj), gcn.embedding.weight)


def test_the_er2alm_sweep_optimises_validation_recall_at_20():
    from pathlib import Path

    from ragrec.tuning.report import columns
    from ragrec.tuning.spec import load_sweep

    spec = load_sweep(Path(__file__).resolve().parents[2] / "configs" / "sweep_er2alm_ml100k.yaml")
    assert spec.config.metric == "recall@20" and spec.config.mode == "max"
    assert set(spec.params) == {"noise.tau", "noise.theta", "augment.eta", "gnn.lr"}
    assert columns("recall@20") == ("recall@20", "ndcg@20", "precision@20", "n")
    assert columns("ndcg@10") == ("ndcg@10", "ndcg@5", "map@5", "map@10", "n")  # rerank objectives unchanged


def test_baseline_models_do_not_depend_on_the_er2alm_ablation_flags(tmp_path, monkeypatch):
    """LightGCN / BPR-MF take no side input: an ablation's gnn.use_items / use_users must not retrain them (nor,
    through the candidates, regenerate the LLM's picks)."""
    from ragrec.methods import er2alm

    seen = []
    monkeypatch.setattr(er2alm, "gnn_stage", lambda store, cfg, ds, s, seed, g, **kw: seen.append((seed, g)) or g)
    pipe = get_method("er2alm").pipeline(_cfg(tmp_path))
    monkeypatch.setattr(pipe, "_data", lambda cfg: ("dataset", "samples"))
    for flags in ([], ["gnn.use_items=false"], ["gnn.use_users=false", "gnn.side=false"]):
        cfg = _cfg(tmp_path, *flags)
        pipe.gnn(cfg, 7, er2alm.LIGHTGCN)
        pipe.gnn(cfg, 7, er2alm.BPR_MF)
    lightgcn, bpr = {repr(g) for _, g in seen[0::2]}, {repr(g) for _, g in seen[1::2]}
    assert len(lightgcn) == 1 and len(bpr) == 1 and lightgcn != bpr
    assert seen[1][1].num_layers == 0 and not seen[0][1].side and seen[0][1].num_layers == 3


def test_evaluation_runs_rows_with_their_own_llm_generations_last():
    """ER2ALM first (the rows are paired against it), then the rows that only retrain the GNN, then (after the
    sweeps) LLMRec-style, whose no-RAG aspects and profiles are hours on a CPU: an interrupted evaluation has
    every cheap row."""
    from ragrec.methods.er2alm_evaluate import VARIANTS, evaluation_order

    names = list(VARIANTS)
    first, cheap, last = evaluation_order(names)
    assert first == ["er2alm"] and last == ["llmrec"]
    assert sorted(first + cheap + last) == sorted(names) and "llmrec" not in cheap
    assert evaluation_order(["lightgcn", "no_aug"]) == ([], ["lightgcn", "no_aug"], [])
    # the rows kept in `cheap` share ER2ALM's LLM stages: none of them turns retrieval (rag.enabled) off
    assert all("rag.enabled" not in VARIANTS[n].overrides for n in cheap)


def test_the_report_lists_the_epochs_each_row_kept_and_plots_the_validation_curves(tmp_path):
    """gnn.patience: a row's models keep their best validation epoch; the notes say how many epochs each seed's
    kept weights trained (best_epoch + 1, or every epoch without patience) and the plot draws the curves."""
    from ragrec.evaluation.report import plot_histories
    from ragrec.methods.er2alm_evaluate import epochs_note, kept_epochs

    class Art:  # what kept_epochs reads of a GNN artifact: its history
        def __init__(self, history):
            self.history = history

        def read_json(self, name):
            assert name == "history"
            return self.history

    curve = [{"epoch": e, "loss": 1.0 / (e + 1), "recall@20": r} for e, r in enumerate([0.1, 0.3, 0.2, 0.25])]
    selected = [*curve[:-1], {**curve[-1], "best_epoch": 1}]
    assert kept_epochs([Art(selected), Art(curve)]) == [2, 4]  # with patience: up to the best; without: all
    cfg = load_config("configs/er2alm_ml100k_slice.yaml", ["gnn.patience=3", "gnn.epochs=4"])
    rows = [{"name": "ER2ALM", "epochs": [2, 4]}, {"name": "LightGCN", "epochs": [4]}]
    note = epochs_note(cfg, rows)
    assert "best validation Recall@20 of at most 4 (gnn.patience=3)" in note and note.endswith("ER2ALM 2/4; LightGCN 4")
    plain = epochs_note(load_config("configs/er2alm_ml100k_slice.yaml", ["gnn.patience=null"]), rows)
    assert "the last kept (gnn.patience: null)" in plain
    png = tmp_path / "curves.png"
    plot_histories({"ER2ALM": selected, "no metric": [{"epoch": 0, "loss": 1.0}]}, "recall@20", png)
    assert png.read_bytes()[:4] == b"\x89PNG"
