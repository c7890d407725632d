"""DeepFM CTR baseline: feature encoding, the FM term, learning a known rule, ml-100k AUC, Ray path."""

from __future__ import annotations

import itertools

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch
from pydantic import ValidationError

from ragrec.data.errors import DataError
from ragrec.evaluation.metrics import ctr_metrics
from ragrec.models.deepfm import DeepFM, DeepFMConfig, build_spec, encode_features
from ragrec.training.deepfm import predict_deepfm, train_deepfm
from ragrec.training.ray_train import TrainOptions

GENRES = pa.list_(pa.string())


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Small models: one intra-op thread is as fast alone and 5x faster when other jobs share the 2 CPUs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_tables():
    users = pa.table(
        {
            "user_id": pa.array([0, 1, 2], pa.int64()),
            "age": pa.array([17, 30, None], pa.int32()),
            "gender": pa.array(["M", "F", None]),
            "occupation": pa.array(["writer", "artist", "writer"]),
        }
    )
    items = pa.table(
        {
            "item_id": pa.array([0, 1], pa.int64()),
            "title": ["a", "b"],
            "genres": pa.array([["Drama", "Action"], []], GENRES),
            "year": pa.array([1990, None], pa.int32()),
        }
    )
    samples = pa.table(
        {
            "user_id": pa.array([2, 0, 1], pa.int64()),
            "item_id": pa.array([0, 1, 0], pa.int64()),
            "label": pa.array([1, 0, 1], pa.int8()),
        }
    )
    return samples, items, users


# ----------------------------------------------------------------------------------------------------
# encoding


def test_encode_features_maps_values_buckets_and_bags():
    samples, items, users = tiny_tables()
    x = encode_features(samples, items, users)
    assert list(x) == ["user_id", "item_id", "user_gender", "user_age", "user_occupation", "item_genres"]
    assert x["user_id"].tolist() == [2, 0, 1] and x["item_id"].tolist() == [0, 1, 0]
    # vocab is sorted, index 0 = unknown/null: F=1, M=2
    assert x["user_gender"].tolist() == [0, 2, 1]
    # ML-1M brackets [18, 25, 35, ...]: 17 -> bucket 0 -> index 1; 30 -> bucket 2 -> index 3; null -> 0
    assert x["user_age"].tolist() == [0, 1, 3]
    assert x["user_occupation"].tolist() == [2, 2, 1]  # artist=1, writer=2
    # genres vocab [Action, Drama]: item 0 -> [2, 1] (list order kept), item 1 (empty) -> padding
    assert x["item_genres"].shape == (3, 2)
    assert x["item_genres"].tolist() == [[2, 1], [0, 0], [2, 1]]
    assert all(v.dtype == torch.int64 for v in x.values())


def test_encoding_with_a_saved_spec_keeps_the_training_vocabulary_and_handles_slices():
    samples, items, users = tiny_tables()
    spec = build_spec(items, users)
    # a users table whose gender values differ: unseen 'X' must map to unknown (0), 'M' still to 2
    users2 = users.set_column(2, "gender", pa.array(["X", "M", "F"]))
    x = encode_features(samples, items, users2, spec)
    assert x["user_gender"].tolist() == [1, 0, 2]
    # a sliced items table (non-zero list offsets) encodes the same bags
    items2 = pa.concat_tables([items.slice(1), items]).slice(1)  # chunked, offset
    np.testing.assert_array_equal(
        encode_features(samples, items2, users, spec)["item_genres"],
        encode_features(samples, items, users, spec)["item_genres"],
    )


def test_unknown_columns_bad_ids_and_bad_config_raise_clear_errors():
    samples, items, users = tiny_tables()
    with pytest.raises(DataError, match=r"users table: unknown column 'zodiac' \(columns: user_id, age"):
        build_spec(items, users, DeepFMConfig(user_fields=["zodiac"]))
    with pytest.raises(DataError, match=r"items table: .*unknown column 'studio'.*Fix: list only existing items"):
        build_spec(items, users, DeepFMConfig(item_fields=["studio"]))
    bad = samples.set_column(1, "item_id", pa.array([0, 5, 1], pa.int64()))
    with pytest.raises(DataError, match=r"samples table row 1: item_id=5 is outside 0\.\.1"):
        encode_features(bad, items, users)
    with pytest.raises(ValidationError, match="embed_size"):
        DeepFMConfig.model_validate({"embed_size": 8})
    with pytest.raises(DataError, match="float column 'score' has no bucket edges"):
        build_spec(items.append_column("score", pa.array([0.5, 1.0])), users, DeepFMConfig(item_fields=["score"]))


def test_missing_or_non_binary_labels_are_rejected(tmp_path):
    samples, items, users = tiny_tables()
    with pytest.raises(DataError, match=r"train samples row 1: label=2 is not 0/1"):
        train_deepfm(
            samples.set_column(2, "label", pa.array([1, 2, 0], pa.int8())),
            None,
            items,
            users,
            opts=TrainOptions(out_dir=tmp_path),
        )
    with pytest.raises(DataError, match=r"valid samples: label: all 3 labels are 1"):
        train_deepfm(
            samples,
            samples.set_column(2, "label", pa.array([1, 1, 1], pa.int8())),
            items,
            users,
            opts=TrainOptions(out_dir=tmp_path),
        )


# ----------------------------------------------------------------------------------------------------
# model


def test_fm_term_equals_the_sum_of_pairwise_inner_products_and_bags_average_members():
    samples, items, users = tiny_tables()
    spec = build_spec(items, users)
    torch.manual_seed(0)
    model = DeepFM(spec, embed_dim=4, hidden=[8])
    with torch.no_grad():  # switch off first order and DNN: the logit is bias + FM
        for emb in model.first.values():
            emb.weight.zero_()
        model.dnn[-1].weight.zero_()
        model.dnn[-1].bias.zero_()
        model.bias.fill_(0.25)
        for n, emb in model.second.items():
            emb.weight.normal_()
            if n != "user_id" and n != "item_id":
                emb.weight[0].zero_()
    x = encode_features(samples, items, users, spec)
    model.eval()
    got = model(x)
    # explicit field vectors: bags = mean of non-padding members
    vecs = []
    for n in model.names:
        w = model.second[n].weight.detach()
        if n == "item_genres":
            idx = x[n]
            mask = (idx > 0).float().unsqueeze(-1)
            vecs.append((w[idx] * mask).sum(1) / mask.sum(1).clamp(min=1))
        else:
            vecs.append(w[x[n]])
    want = 0.25 + sum((a * b).sum(1) for a, b in itertools.combinations(vecs, 2))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------------
# learning


def rule_tables(seed: int = 0, n_users: int = 240, n_items: int = 60, per_user: int = 25):
    """Label = user likes the item's main genre: men like Action, women like Romance (5% flipped).

    Every item has exactly one of Action / Romance (+ a random filler genre), so no item or user is
    liked more than others on average: only the gender x genre interaction predicts the label.
    """
    rng = np.random.default_rng(seed)
    gender = rng.choice(["M", "F"], n_users)
    users = pa.table(
        {
            "user_id": np.arange(n_users, dtype=np.int64),
            "age": pa.array(rng.integers(15, 65, n_users), pa.int32()),
            "gender": gender,
            "occupation": rng.choice(["a", "b", "c", "d"], n_users),
        }
    )
    main = rng.choice(["Action", "Romance"], n_items)
    filler = rng.choice(["Comedy", "Drama", "Horror"], n_items)
    items = pa.table(
        {
            "item_id": np.arange(n_items, dtype=np.int64),
            "genres": pa.array([[m, f] for m, f in zip(main, filler)], GENRES),
        }
    )
    u = np.repeat(np.arange(n_users), per_user)
    i = np.concatenate([rng.choice(n_items, per_user, replace=False) for _ in range(n_users)])
    like = (gender[u] == "M") == (main[i] == "Action")
    label = np.where(rng.random(len(u)) < 0.05, ~like, like).astype(np.int8)
    samples = pa.table({"user_id": u.astype(np.int64), "item_id": i.astype(np.int64), "label": label})
    return samples, items, users


def _cold_start_split(samples: pa.Table, n_train_users: int):
    """Train on users < n_train_users, evaluate on the others (their ID embeddings never train)."""
    cold = pc.greater_equal(samples["user_id"], n_train_users)
    return samples.filter(pc.invert(cold)), samples.filter(cold)


FAST = {"epochs": 12, "batch_size": 128, "lr": 3e-3, "patience": 12}


def test_learns_the_feature_rule_and_shuffled_features_do_not(tmp_path):
    samples, items, users = rule_tables()
    train, test = _cold_start_split(samples, 180)
    y = test["label"].to_numpy()
    res = train_deepfm(train, None, items, users, FAST, opts=TrainOptions(seed=0, out_dir=tmp_path / "real"))
    auc_real = ctr_metrics(y, res.predict_fn(test))["auc"]
    perm = np.random.default_rng(1).permutation(users.num_rows)
    shuffled = users.set_column(2, "gender", users["gender"].take(perm))
    res_s = train_deepfm(train, None, items, shuffled, FAST, opts=TrainOptions(seed=0, out_dir=tmp_path / "shuf"))
    auc_shuf = ctr_metrics(y, res_s.predict_fn(test))["auc"]
    # the rule is 95% deterministic given (gender, genre); without the true gender nothing predicts it
    assert auc_real > 0.85
    assert auc_shuf < 0.65
    assert len(res.history) == FAST["epochs"] and res.history[-1]["loss"] < res.history[0]["loss"]
    np.testing.assert_array_equal(predict_deepfm(res.model_dir, test, items, users), res.predict_fn(test))


def test_ml100k_test_auc_and_best_epoch_is_kept(data_dir, tmp_path):
    from ragrec.config import DataConfig
    from ragrec.data import load_dataset, rallrec_samples

    cfg = DataConfig(name="ml-100k", path=str(data_dir / "ml-100k"))
    ds = load_dataset(cfg)
    s = rallrec_samples(ds.interactions, cfg)
    split = {k: s.filter(pc.equal(s["split"], k)) for k in ("train", "valid", "test")}
    res = train_deepfm(
        split["train"],
        split["valid"],
        ds.items,
        ds.users,
        {"epochs": 10, "patience": 1},
        opts=TrainOptions(seed=0, out_dir=tmp_path),
    )
    test = ctr_metrics(split["test"]["label"].to_numpy(), res.predict_fn(split["test"]))
    assert test["auc"] > 0.6
    assert 0.5 < test["acc"] and test["logloss"] < 0.69  # better than a constant 0.5 prediction
    # the saved weights are the best epoch's: predicting valid reproduces the best valid AUC
    best = max(h["valid_auc"] for h in res.history)
    assert res.history[-1]["best_epoch"] == int(np.argmax([h["valid_auc"] for h in res.history]))
    valid_auc = ctr_metrics(split["valid"]["label"].to_numpy(), res.predict_fn(split["valid"]))["auc"]
    assert valid_auc == pytest.approx(best, abs=1e-6)


@pytest.mark.ray
@pytest.mark.slow  # Ray Train worker start-up + reports: ~30-40 s on 2 shared CPUs
def test_ray_path_agrees_with_standalone(ray_session, tmp_path):
    samples, items, users = rule_tables(n_users=60, per_user=10)
    train, test = _cold_start_split(samples, 50)
    cfg = {"epochs": 2, "batch_size": 64}
    local = train_deepfm(train, test, items, users, cfg, opts=TrainOptions(seed=0, out_dir=tmp_path / "local"))
    on_ray = TrainOptions(use_ray=True, seed=0, out_dir=tmp_path / "ray", storage_path=str(tmp_path / "ray_storage"))
    remote = train_deepfm(train, test, items, users, cfg, opts=on_ray)
    p_local, p_remote = local.predict_fn(test), remote.predict_fn(test)
    assert p_remote.shape == p_local.shape == (test.num_rows,)
    assert [h["epoch"] for h in remote.history] == [h["epoch"] for h in local.history]
    # same loop, seed and data on one worker: the same model up to float summation order
    np.testing.assert_allclose(p_remote, p_local, rtol=1e-3, atol=1e-4)


def test_without_users_table_the_user_side_is_the_id(tmp_path):
    samples, items, _ = rule_tables(n_users=40, per_user=10)
    res = train_deepfm(samples, None, items, None, {"epochs": 1}, opts=TrainOptions(seed=0, out_dir=tmp_path))
    x = encode_features(samples, items, None, build_spec(items, None, n_users=40))
    assert list(x) == ["user_id", "item_id", "item_genres"]
    assert res.predict_fn(samples).shape == (samples.num_rows,)
    unseen = samples.slice(0, 2).set_column(0, "user_id", pa.array([3, 40], pa.int64()))
    with pytest.raises(DataError, match=r"row 1: user_id=40 is outside 0\.\.39"):
        res.predict_fn(unseen)
    with pytest.raises(DataError, match="no users table and no n_users"):
        build_spec(items, None)
