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
from ragrec.llm.prompts_ctr import prompts_for
from ragrec.retrieval.context import ItemViews, with_context
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
    views = ItemViews(
        title=rng.normal(size=(N_ITEMS, 6)).astype(np.float32),
        text=rng.normal(size=(N_ITEMS, 8)).astype(np.float32),
        colla=rng.normal(size=(N_ITEMS, 5)).astype(np.float32),
        ssl=rng.normal(size=(N_ITEMS, 4)).astype(np.float32),
    )
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
    rated = int(inter.filter(pc.equal(inter.column("user_id"), 4)).column("item_id")[0].as_py())
    targets = [10, 11, 12, rated]
    w = hist.window(4, np.array(targets))
    fulls = w.to_samples().column("history_item_ids").to_pylist()
    assert rated not in fulls[3] and w.in_history[3]  # a target's own rating is never its context
    cand = Retriever(retrieval_matrices(views, rcfg), rcfg.k, margin=0).candidates(w)
    assert cand.column("in_history").to_pylist() == w.in_history.tolist()
    mixed = views.get("mixed")
    for row, target in enumerate(targets):
        full = fulls[row]
        got = cand.column("history_item_ids")[row].as_py()
        assert len(got) <= 2 * rcfg.k < len(full)
        it = iter(full)  # a subsequence of the full history: chronological order kept
        assert all(any(x == y for y in it) for x in got)
        assert got[-rcfg.k :] == full[-rcfg.k :]
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
    cfg = RunConfig(
        llm=LLMConfig(model=TINY_LLAMA, batch_size=4, max_prompt_tokens=512), retrieval=RetrievalConfig(k=5)
    )
    state = ServingState(cfg, UserHistories(inter, N_USERS), views, items, users, adapter_path=None)
    return ServingChain(state, HFEngine(cfg.llm), max_items=8)


def test_chain_prompts_and_probabilities_equal_the_offline_chain(data, chain):
    _inter, items, users, samples, views = data
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


# ---------------------------------------------------------------------------------------------------
# fusion: a run with eval.fusion (DeepFM + fusion artifacts in run.json) served through load_state
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fusion_run(data, tmp_path_factory):
    """A run folder whose run.json names dataset, samples, views, DeepFM and a fusion model fitted on the
    validation split with the offline functions (`fusion_logits`, `fusion_artifact`); no Ray anywhere."""
    from dataclasses import replace

    import torch

    from ragrec.evaluation.baselines import ItemUserBaseline
    from ragrec.evaluation.fusion import fusion_artifact
    from ragrec.llm.hf_engine import HFEngine
    from ragrec.llm.registry import TINY_LLAMA
    from ragrec.methods import rallrec_evaluate
    from ragrec.methods.common import train_interactions, write_run_file
    from ragrec.methods.rallrec import Pipeline
    from ragrec.training import deepfm as deepfm_training

    inter, items, users, samples, views = data
    root = tmp_path_factory.mktemp("fusion_run")
    cfg = RunConfig(
        data=DataConfig(name="synthetic", min_history=3),
        artifacts_dir=str(root / "artifacts"),
        output_dir=str(root / "runs"),
        name="fused",
        llm=LLMConfig(model=TINY_LLAMA, batch_size=4, max_prompt_tokens=512),
        retrieval=RetrievalConfig(k=5),
        lora={"enabled": False},
        eval={"fusion": True, "deepfm": {"epochs": 2, "embed_dim": 4, "hidden": [16], "batch_size": 256}},
    )
    pipe = Pipeline(cfg)

    def tables(**t):
        def compute(art):
            for name, table in t.items():
                art.write_table(table, name)
            return {"rows": 0, "users": users.num_rows, "items": items.num_rows}

        return compute

    def arrays(**a):
        def compute(art):
            for name, arr in a.items():
                np.save(art.staging / f"{name}.npy", arr)
            return 0

        return compute

    a = pipe.arts
    a["dataset"] = pipe.store.run(
        "dataset", {"test": "fusion"}, [], tables(interactions=inter, items=items, users=users)
    )
    a["samples"] = pipe.store.run("samples", {"test": "fusion"}, [a["dataset"]], tables(samples=samples))
    a["text_features"] = pipe.store.run("text_features", {}, [a["dataset"]], arrays(title=views.title, text=views.text))
    a["lightgcn"] = pipe.store.run("lightgcn", {}, [a["dataset"]], arrays(item_emb=views.colla))
    a["projector"] = pipe.store.run("projector", {}, [a["dataset"]], arrays(ssl_emb=views.ssl))

    real = deepfm_training.train_deepfm
    mp = pytest.MonkeyPatch()
    standalone = lambda *args, opts, **kw: real(*args, opts=replace(opts, use_ray=False), **kw)
    mp.setattr(deepfm_training, "train_deepfm", standalone)
    torch.manual_seed(0)
    engine = HFEngine(cfg.llm)
    try:
        valid = samples.filter(pc.equal(samples.column("split"), "valid"))
        prompts = prompts_for(with_context(valid, views, cfg.retrieval), items, users, cfg).to_pylist()
        vprobs = engine.score_yes_no(prompts)
        baseline = ItemUserBaseline(train_interactions(inter, samples))
        vlog = rallrec_evaluate.fusion_logits(pipe, valid, np.asarray(vprobs), baseline)  # trains DeepFM (cached stage)
    finally:
        mp.undo()
    a["fusion"] = fusion_artifact(pipe.store, vlog, valid.column("label").to_numpy(), [a["deepfm"]])
    run_dir = cfg.run_dir()
    run_dir.mkdir(parents=True)
    write_run_file(run_dir, cfg, a, cfg.model_dump(mode="json"))
    return run_dir, pipe, baseline, engine


def test_served_fused_probability_equals_the_offline_fusion(data, fusion_run):
    from ragrec.evaluation.fusion import MODEL_FILE, FusionModel
    from ragrec.methods import rallrec_evaluate
    from ragrec.serving import load_state

    _inter, items, users, samples, views = data
    run_dir, pipe, baseline, engine = fusion_run
    state = load_state(run_dir)
    assert state.fusion is not None and state.fusion.model.features == ("llm", "crm", "item_user")
    chain = ServingChain(state, engine, max_items=8)
    cfg = state.cfg
    test = samples.filter(pc.equal(samples.column("split"), "test")).slice(0, 10)
    probs = np.asarray(
        engine.score_yes_no(prompts_for(with_context(test, views, cfg.retrieval), items, users, cfg).to_pylist())
    )
    model = FusionModel.load(pipe.arts["fusion"].path / MODEL_FILE)
    want = model.predict(rallrec_evaluate.fusion_logits(pipe, test, probs, baseline))  # the evaluation's inputs
    got, got_probs = [], []
    for u, i, t in zip(*(test.column(c).to_numpy() for c in ("user_id", "item_id", "timestamp"))):
        p = chain.predict(PredictRequest(user_id=int(u), item_ids=[int(i)], as_of=int(t))).predictions[0]
        got.append(p.p_fused)
        got_probs.append(p.prob)
    np.testing.assert_allclose(got_probs, probs, atol=1e-4)
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert np.ptp(got) > 0
    # several items in one request: one fused value each, in request order
    res = chain.predict(PredictRequest(user_id=3, item_ids=[5, 9, 5]))
    fused = [p.p_fused for p in res.predictions]
    assert fused[0] == pytest.approx(fused[2], abs=1e-9) and all(0 < f < 1 for f in fused)


def test_runs_without_fusion_answer_null_p_fused(chain):
    res = chain.predict(PredictRequest(user_id=3, item_ids=[5]))
    assert res.predictions[0].p_fused is None
    assert "p_fused" in res.model_dump()["predictions"][0]
