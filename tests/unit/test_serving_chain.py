"""The serving chain (no Ray) against the offline pipeline's functions on the same samples.

Offline: protocol samples -> ``with_context`` (full histories) -> ``prompts_for`` -> ``score_yes_no``.
Serving: interactions -> ``as_of`` window -> faiss candidates -> rerank -> prompts -> score.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from ragrec.config import DataConfig, LLMConfig, RetrievalConfig, RunConfig, SyntheticConfig
from ragrec.data import rallrec_samples
from ragrec.data.synthetic import make_synthetic
from ragrec.methods.rallrec import ItemViews, prompts_for, with_context
from ragrec.serving import PredictRequest, RequestError, ServingChain, ServingState, UserHistories
from ragrec.serving.chain import Reranker, Retriever, retrieval_matrices

N_USERS, N_ITEMS = 30, 80


@pytest.fixture(scope="module")
def data():
    ds = make_synthetic(SyntheticConfig(n_users=N_USERS, n_items=N_ITEMS, ratings_per_user=40, seed=5))
    inter = ds.interactions
    ts = inter.column("timestamp").to_numpy() // 3_000_000 * 3_000_000  # same-second ties
    inter = inter.set_column(inter.schema.get_field_index("timestamp"), "timestamp", pa.array(ts))
    samples = rallrec_samples(inter, DataConfig(name="synthetic", min_history=3))
    rng = np.random.default_rng(0)
    views = ItemViews(title=rng.normal(size=(N_ITEMS, 6)).astype(np.float32),
                      text=rng.normal(size=(N_ITEMS, 8)).astype(np.float32),
                      colla=rng.normal(size=(N_ITEMS, 5)).astype(np.float32),
                      ssl=rng.normal(size=(N_ITEMS, 4)).astype(np.float32))
    for v in (views.text, views.colla, views.ssl):  # exact ties: items 1..3 embed like item 0
        v[1:4] = v[0]
    return inter, ds.items, ds.users, samples, views


def _contexts(retriever, reranker, hist, samples):
    """Serving contexts of every sample (one request per sample, as_of = its timestamp)."""
    ids, rats = [], []
    for u, i, t in zip(*(samples.column(c).to_numpy() for c in ("user_id", "item_id", "timestamp"))):
        out = reranker.rerank(retriever.candidates(hist.window(int(u), np.array([i]), int(t))))
        ids.append(out.column("context_item_ids")[0].as_py())
        rats.append(out.column("context_ratings")[0].as_py())
    return ids, rats


@pytest.mark.parametrize(
    "rcfg",
    [
        RetrievalConfig(k=5, strategy="rerank", alpha=2 / 3),
        RetrievalConfig(k=3, strategy="rerank", alpha=0.5, beta=2.0, embedding="text"),
        RetrievalConfig(k=4, strategy="relevance", embedding="concat"),
        RetrievalConfig(k=4, strategy="recent"),
        RetrievalConfig(k=5, strategy="hybrid"),
    ],
    ids=lambda r: f"{r.strategy}-k{r.k}-{r.embedding}",
)
def test_retriever_and_reranker_equal_offline_with_context(data, rcfg):
    inter, _, _, samples, views = data
    sub = samples.take(pa.array(np.random.default_rng(1).choice(samples.num_rows, 60, replace=False)))
    want = with_context(sub, views, rcfg)
    hist = UserHistories(inter, N_USERS)
    retriever = Retriever(retrieval_matrices(views, rcfg), rcfg.k)
    ids, rats = _contexts(retriever, Reranker(views, rcfg), hist, sub)
    assert ids == want.column("context_item_ids").to_pylist()
    assert rats == want.column("context_ratings").to_pylist()


def test_candidates_are_a_chronological_subset_holding_the_recent_and_the_most_similar(data):
    inter, _, _, _, views = data
    rcfg = RetrievalConfig(k=3)
    hist = UserHistories(inter, N_USERS)
    w = hist.window(4, np.array([10, 11, 12]))
    full = w.to_samples().column("history_item_ids")[0].as_py()
    cand = Retriever(retrieval_matrices(views, rcfg), rcfg.k, margin=0).candidates(w)
    mixed = views.get("mixed")
    for row, target in enumerate([10, 11, 12]):
        got = cand.column("history_item_ids")[row].as_py()
        assert len(got) <= 2 * rcfg.k < len(full)
        it = iter(full)  # a subsequence of the full history: chronological order kept
        assert all(any(x == y for y in it) for x in got)
        assert got[-rcfg.k:] == full[-rcfg.k:]
        sims = mixed[np.array(full)] @ mixed[target]
        assert set(np.array(full)[np.argsort(-sims)[: rcfg.k]]) <= set(got)


def test_empty_history_gives_empty_context(data):
    inter, _, _, _, views = data
    rcfg = RetrievalConfig(k=5)
    w = UserHistories(inter, N_USERS).window(0, np.array([1, 2]), as_of=0)
    out = Reranker(views, rcfg).rerank(Retriever(retrieval_matrices(views, rcfg), rcfg.k).candidates(w))
    assert out.column("context_item_ids").to_pylist() == [[], []]


@pytest.fixture(scope="module")
def chain(data):
    from ragrec.llm.hf_engine import HFEngine
    from ragrec.llm.registry import TINY_LLAMA

    inter, items, users, _, views = data
    cfg = RunConfig(llm=LLMConfig(model=TINY_LLAMA, batch_size=4, max_prompt_tokens=512),
                    retrieval=RetrievalConfig(k=5))
    state = ServingState(cfg, UserHistories(inter, N_USERS), views, items, users, adapter_path=None)
    return ServingChain(state, HFEngine(cfg.llm), max_items=8)


def test_chain_prompts_and_probabilities_equal_the_offline_chain(data, chain):
    inter, items, users, samples, views = data
    cfg = chain.state.cfg
    test = samples.filter(pc.equal(samples.column("split"), "test")).slice(0, 12)
    offline = with_context(test, views, cfg.retrieval)
    want_prompts = prompts_for(offline, items, users, cfg).to_pylist()
    want_probs = chain.predictor.engine.score_yes_no(want_prompts)  # the offline scoring call, batched
    got_probs, got_prompts = [], []
    for u, i, t in zip(*(test.column(c).to_numpy() for c in ("user_id", "item_id", "timestamp"))):
        req = PredictRequest(user_id=int(u), item_ids=[int(i)], as_of=int(t))
        got_prompts += chain.predictor.prompts(chain.contexts(req))
        res = chain.predict(req)
        assert res.user_id == u and [p.item_id for p in res.predictions] == [i]
        got_probs.append(res.predictions[0].prob)
    assert got_prompts == want_prompts
    np.testing.assert_allclose(got_probs, want_probs, atol=1e-4)
    assert np.ptp(got_probs) > 0


def test_multi_item_request_keeps_order_and_matches_single_requests(chain):
    items = [5, 9, 5, 70]
    res = chain.predict(PredictRequest(user_id=3, item_ids=items))
    assert [p.item_id for p in res.predictions] == items
    singles = [chain.predict(PredictRequest(user_id=3, item_ids=[i])).predictions[0] for i in items]
    np.testing.assert_allclose([p.prob for p in res.predictions], [p.prob for p in singles], atol=1e-4)
    assert [p.history_item_ids for p in res.predictions] == [p.history_item_ids for p in singles]
    assert res.predictions[0].prob == pytest.approx(res.predictions[2].prob, abs=1e-6)
    assert all(len(p.history_item_ids) == 5 for p in res.predictions)


def test_chain_rejects_bad_requests_before_scoring(chain):
    with pytest.raises(RequestError, match="unknown user_id 30") as e:
        chain.predict(PredictRequest(user_id=N_USERS, item_ids=[1]))
    assert e.value.status == 404
    with pytest.raises(RequestError) as e:
        chain.predict(PredictRequest(user_id=0, item_ids=list(range(9))))
    assert e.value.status == 413
