"""``data.rerank.negatives: ranker`` end to end: the protocol's training positives, the LightGCN ``ranker``
stage trained on them, and the samples whose negatives are the top unseen items of its embeddings."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from ragrec.artifacts import ArtifactStore
from ragrec.config import DataConfig, load_config
from ragrec.data.rerank import train_positive_counts, train_positive_interactions
from ragrec.data.schemas import INTERACTIONS, with_label_source
from ragrec.methods import ur4rec
from ragrec.stages.data import dataset_stage, samples_stage
from ragrec.stages.lightgcn import rerank_ranker_stage

REPO = Path(__file__).resolve().parents[2]
C = 6


def _random_table(seed: int, n_users: int = 25, n_items: int = 40, per_user: int = 14) -> pa.Table:
    rng = np.random.default_rng(seed)
    user = np.repeat(np.arange(n_users), per_user)
    item = np.concatenate([rng.choice(n_items, per_user, replace=False) for _ in range(n_users)])
    rating = rng.integers(1, 6, len(user)).astype(np.float32)
    ts = rng.integers(0, 50, len(user))  # ties: the protocol orders them by item id
    cols = [user, item, rating, ts, (rating > 3).astype(np.int8)]
    t = pa.Table.from_arrays([pa.array(c, f.type) for c, f in zip(cols, INTERACTIONS)], schema=INTERACTIONS)
    return with_label_source(t, given=False)


@pytest.mark.parametrize(("seed", "kcore"), [(0, 0), (1, 0), (2, 3)])
def test_train_positive_interactions_are_the_counted_train_positives(seed, kcore):
    inter = _random_table(seed)
    cfg = DataConfig(protocol="rerank", min_history=2, rerank={"kcore": kcore})
    t = train_positive_interactions(inter, cfg, num_items=45)
    assert t.column_names == ["user_id", "item_id", "rating", "timestamp"]
    counts = train_positive_counts(inter, cfg, num_items=45)
    assert np.array_equal(np.bincount(t.column("item_id").to_numpy(), minlength=45), counts)
    assert (t.column("rating").to_numpy() > cfg.label_threshold).all()
    got = t.to_pandas()
    assert got.user_id.is_monotonic_increasing
    if kcore:
        return
    # per user: the first floor(0.8 n + 1e-6) of its n positives in (timestamp, item_id) order
    pos = inter.to_pandas().query("label == 1")
    for u, mine in pos.groupby("user_id"):
        mine = mine.sort_values(["timestamp", "item_id"], kind="stable")
        g = got[got.user_id == u]
        assert len(g) == int(np.floor(0.8 * len(mine) + 1e-6))
        assert g.item_id.tolist() == mine.item_id.tolist()[: len(g)]
        assert g.timestamp.tolist() == mine.timestamp.tolist()[: len(g)]


def _cfg(tmp_path, negatives: str):
    return load_config(
        None,
        [
            "method=ur4rec",
            f"artifacts_dir={tmp_path / 'artifacts'}",
            "data.name=synthetic",
            "data.protocol=rerank",
            "data.min_history=2",
            "data.synthetic.n_users=20",
            "data.synthetic.n_items=40",
            "data.synthetic.ratings_per_user=15",
            f"data.rerank.num_candidates={C}",
            f"data.rerank.negatives={negatives}",
            "data.rerank.ranker.dim=8",
            "data.rerank.ranker.epochs=2",
        ],
    )


@pytest.fixture()
def no_ray(monkeypatch):
    """Train in this process: ``TrainOptions.from_config`` with ``use_ray=False`` (the stages' code unchanged)."""
    from ragrec.training.ray_train import TrainOptions

    orig = TrainOptions.from_config.__func__
    monkeypatch.setattr(
        TrainOptions, "from_config", classmethod(lambda cls, cfg, **kw: orig(cls, cfg, **{**kw, "use_ray": False}))
    )


@pytest.fixture()
def no_llm(monkeypatch):
    """UR4Rec's LLM / encoder stages after the samples are replaced by markers."""
    for name in ("preferences_stage", "knowledge_stage", "texts_stage"):
        monkeypatch.setattr(ur4rec, name, lambda *a, _n=name, **k: _n)


def _check_ranker_negatives(ds, ranker, samples_art) -> None:
    """Every list = the user's top C-1 never-interacted items by user_emb @ item_emb (descending), with the
    target inserted after the negatives scoring at least as high."""
    inter = ds.read_table("interactions")
    seen: dict[int, set[int]] = {}
    for u, i in zip(inter.column("user_id").to_pylist(), inter.column("item_id").to_pylist()):
        seen.setdefault(u, set()).add(i)
    U, I = np.load(ranker.path / "user_emb.npy"), np.load(ranker.path / "item_emb.npy")
    samples = samples_art.read_table("samples")
    assert samples.num_rows > 0
    for row in samples.to_pylist():
        u, target, cands = row["user_id"], row["item_id"], row["candidates"]
        scores = (U[u] @ I.T).astype(np.float64)
        unseen = np.array(sorted(set(range(len(I))) - seen[u]))
        top = unseen[np.lexsort((unseen, -scores[unseen]))][: C - 1]
        assert cands[row["target_index"]] == target
        assert [c for c in cands if c != target] == top.tolist()
        assert row["target_index"] == int((scores[top] >= scores[target]).sum())


def test_ur4rec_upstream_builds_the_ranker_and_its_hard_negatives(tmp_path, no_ray, no_llm):
    cfg = _cfg(tmp_path, "ranker")
    pipe = ur4rec.Pipeline(cfg)
    pipe.upstream()
    a = pipe.arts
    ds, ranker, samples = a["dataset"], a["ranker"], a["samples"]
    assert ranker.spec["stage"] == "ranker" and [i["key"] for i in ranker.inputs] == [ds.key]
    assert [i["key"] for i in samples.inputs] == [ds.key, ranker.key]  # keys derive from their contents
    assert "ranker" not in samples.spec["config"]["rerank"]  # it enters through the ranker artifact
    # LightGCN learned from the training positives only
    train = train_positive_interactions(ds.read_table("interactions"), cfg.data, num_items=ds.manifest()["items"])
    assert ranker.manifest()["edges"] == train.num_rows
    assert np.load(ranker.path / "user_emb.npy").shape == (20, 8)
    assert np.load(ranker.path / "item_emb.npy").shape == (40, 8)
    assert ranker.spec["config"]["lightgcn"]["dim"] == 8 and ranker.spec["config"]["lightgcn"]["epochs"] == 2
    _check_ranker_negatives(ds, ranker, samples)
    assert a["ur4rec_texts"] == "texts_stage"


def test_uniform_negatives_build_no_ranker_and_keep_their_keys(tmp_path, no_llm):
    cfg = _cfg(tmp_path, "uniform")
    pipe = ur4rec.Pipeline(cfg)
    pipe.upstream()
    assert "ranker" not in pipe.arts
    assert [i["key"] for i in pipe.arts["samples"].inputs] == [pipe.arts["dataset"].key]
    # ranker settings do not touch the uniform samples
    store = ArtifactStore(tmp_path / "keys")
    store.run = lambda stage, spec, inputs, compute, version="1": store.artifact(stage, spec, inputs, version)
    changed = cfg.model_copy(deep=True)
    changed.data.rerank.ranker.dim = 32
    ds = pipe.arts["dataset"]  # finished: a downstream key derives from its content
    assert samples_stage(store, changed, ds).key == samples_stage(store, cfg, ds).key == pipe.arts["samples"].key


def _data_dir(monkeypatch) -> None:
    root = os.environ.get("RAGREC_DATA_DIR") or str(REPO.parent / "shared" / "data")
    if not (Path(root) / "ml-100k" / "u.data").exists():
        pytest.skip("no ml-100k under RAGREC_DATA_DIR or ../shared/data")
    monkeypatch.setenv("RAGREC_DATA_DIR", root)


def test_ur4rec_ml100k_uniform_samples_key_is_unchanged(tmp_path, monkeypatch):
    """The key of the UR4Rec ML-100K samples: unchanged by the ranker (given the dataset's content)."""
    _data_dir(monkeypatch)
    cfg = load_config(str(REPO / "configs" / "ur4rec_ml100k.yaml"))
    store = ArtifactStore(tmp_path)
    store.run = lambda stage, spec, inputs, compute, version="1": store.artifact(stage, spec, inputs, version)
    ds = dataset_stage(store, cfg)
    ds._content = "c0ffee" * 10 + "0000"  # keys derive from the dataset's content: pin the spec part (2026-12)
    assert samples_stage(store, cfg, ds).key == "5611725747529fb7"


@pytest.mark.ray
def test_ranker_stage_trains_under_ray_train(tmp_path, ray_session):
    cfg = _cfg(tmp_path, "ranker")
    store = ArtifactStore(tmp_path / "artifacts")
    ds = dataset_stage(store, cfg)
    ranker = rerank_ranker_stage(store, cfg, ds)
    assert np.load(ranker.path / "item_emb.npy").shape == (40, 8)
    assert (ranker.path / "history.json").exists()
    _check_ranker_negatives(ds, ranker, samples_stage(store, cfg, ds, ranker=ranker))
