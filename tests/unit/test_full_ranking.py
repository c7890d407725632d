"""ER2ALM's full_ranking protocol (per-user random 8:1:1 split of distinct positives, CSR matrices) and the
all-ranking metrics (Recall / NDCG / Precision @k, train items excluded, pessimistic ties, multi-seed summary)."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
import scipy.sparse as sp

from ragrec.config import DataConfig, RunConfig
from ragrec.data.errors import DataError
from ragrec.data.full_ranking import full_ranking_split, split_matrices
from ragrec.data.protocols import build_samples
from ragrec.data.schemas import FULL_RANKING, INTERACTIONS, with_label_source
from ragrec.evaluation.full_ranking import full_ranking_metrics, multi_seed_summary, per_user_full_ranking


def _table(rows, given: bool = False) -> pa.Table:
    """rows of (user, item, rating, timestamp); label = rating > 3 (or rows' 5th entry when ``given``)."""
    cols = list(zip(*rows))
    user, item, rating, ts = (np.asarray(c) for c in cols[:4])
    rating = rating.astype(np.float32)
    label = np.asarray(cols[4]) if given else (rating > 3)
    t = pa.Table.from_arrays(
        [
            pa.array(user.astype(np.int64)),
            pa.array(item.astype(np.int64)),
            pa.array(rating),
            pa.array(ts.astype(np.int64)),
            pa.array(label.astype(np.int8)),
        ],
        schema=INTERACTIONS,
    )
    return with_label_source(t, given=given)


# user 0: 10 positives (8/1/1) + 2 non-positives (items 20, 21); user 1: 5 positives (4/0/1), item 12 positive
# twice (one pair); user 2: 1 positive (0/0/1); user 3: 9 positives (7/1/1); user 4: negatives only (absent)
HAND_ROWS = (
    [(0, it, 5.0, 100 + k) for k, it in enumerate([3, 1, 4, 15, 9, 2, 6, 5, 8, 7])]
    + [(0, 20, 1.0, 50), (0, 21, 3.0, 200)]
    + [(1, 13, 4.0, 9), (1, 12, 5.0, 7), (1, 10, 4.0, 5), (1, 14, 4.0, 12), (1, 11, 4.0, 7), (1, 12, 4.0, 30)]
    + [(2, 0, 5.0, 1)]
    + [(3, it, 4.5, it) for it in range(10, 19)]
    + [(4, 0, 2.0, 3), (4, 1, 1.0, 4)]
)
HAND_SIZES = {0: (8, 1, 1), 1: (4, 0, 1), 2: (0, 0, 1), 3: (7, 1, 1)}  # floor(.8n+1e-6), floor(.9n+1e-6)


def _positive_pairs(rows) -> set[tuple[int, int]]:
    return {(u, i) for u, i, r, _ in rows if r > 3}


def _by_user(t: pa.Table) -> dict[int, dict[str, set[int]]]:
    out: dict[int, dict[str, set[int]]] = {}
    for u, i, s in zip(*(t.column(c).to_pylist() for c in ("user_id", "item_id", "split"))):
        out.setdefault(u, {"train": set(), "valid": set(), "test": set()})[s].add(i)
    return out


def _random_rows(rng, n_users=40, n_items=60, n=900):
    user = rng.integers(0, n_users, n)
    item = rng.integers(0, n_items, n)
    rating = rng.integers(1, 6, n).astype(float)
    return list(zip(user.tolist(), item.tolist(), rating.tolist(), range(n)))


# ---------------------------------------------------------------- the split


def test_split_sizes_and_coverage_by_hand():
    t = full_ranking_split(_table(HAND_ROWS), DataConfig(protocol="full_ranking"), seed=3)
    assert t.schema.equals(FULL_RANKING)
    per = _by_user(t)
    assert set(per) == set(HAND_SIZES)  # user 4 (negatives only) has no row
    for u, sizes in HAND_SIZES.items():
        assert tuple(len(per[u][s]) for s in ("train", "valid", "test")) == sizes, u
    pairs = list(zip(t.column("user_id").to_pylist(), t.column("item_id").to_pylist()))
    assert len(pairs) == len(set(pairs))  # every positive pair in exactly one split (dup pair (1, 12) once)
    assert set(pairs) == _positive_pairs(HAND_ROWS)  # and negatives (0,20), (0,21), user 4 excluded
    assert (0, 20) not in set(pairs) and (0, 21) not in set(pairs)
    # ordered by (user, split train/valid/test, item)
    code = {"train": 0, "valid": 1, "test": 2}
    keys = [(u, code[s], i) for (u, i), s in zip(pairs, t.column("split").to_pylist())]
    assert keys == sorted(keys)


def test_split_is_random_per_user_not_chronological():
    test_items = {
        next(iter(_by_user(full_ranking_split(_table(HAND_ROWS), DataConfig(), seed=s))[0]["test"])) for s in range(30)
    }
    assert len(test_items) >= 5  # a chronological cut would always give user 0's last item (7)


def test_split_seeded_reproducible_and_order_independent():
    rng = np.random.default_rng(0)
    rows = _random_rows(rng)
    cfg = DataConfig(protocol="full_ranking")
    a = full_ranking_split(_table(rows), cfg, seed=11)
    b = full_ranking_split(_table(rows), cfg, seed=11)
    assert a.equals(b)
    shuffled = [rows[i] for i in rng.permutation(len(rows))]
    assert full_ranking_split(_table(shuffled), cfg, seed=11).equals(a)
    c = full_ranking_split(_table(rows), cfg, seed=12)
    assert not c.equals(a)
    # same pairs and per-user sizes, different assignment
    assert _positive_pairs(rows) == set(zip(c.column("user_id").to_pylist(), c.column("item_id").to_pylist()))
    pa_, pc_ = _by_user(a), _by_user(c)
    assert {u: [len(v[s]) for s in v] for u, v in pa_.items()} == {u: [len(v[s]) for s in v] for u, v in pc_.items()}


def test_split_per_user_sizes_match_split_bounds_formula():
    rows = _random_rows(np.random.default_rng(1), n=1500)
    cfg = DataConfig(split=(0.7, 0.2, 0.1))
    per = _by_user(full_ranking_split(_table(rows), cfg, seed=0))
    n_pos: dict[int, set[int]] = {}
    for u, i in _positive_pairs(rows):
        n_pos.setdefault(u, set()).add(i)
    for u, items in n_pos.items():
        n = len(items)
        b0, b1 = math.floor(0.7 * n + 1e-6), math.floor(0.9 * n + 1e-6)
        assert (len(per[u]["train"]), len(per[u]["valid"]), len(per[u]["test"])) == (b0, b1 - b0, n - b1)


def test_split_given_labels_and_threshold():
    rows = [(0, i, float("nan"), i, int(i % 2 == 0)) for i in range(10)]
    t = full_ranking_split(_table(rows, given=True), DataConfig(), seed=0)
    assert set(t.column("item_id").to_pylist()) == {0, 2, 4, 6, 8}
    t4 = full_ranking_split(_table(HAND_ROWS), DataConfig(label_threshold=4.0), seed=0)
    assert set(zip(t4.column("user_id").to_pylist(), t4.column("item_id").to_pylist())) == {
        (u, i) for u, i, r, _ in HAND_ROWS if r > 4
    }


def test_split_errors():
    with pytest.raises(DataError) as e:
        full_ranking_split(_table(HAND_ROWS), DataConfig(split=(0.9, 0.1, 0.0)), seed=0)
    assert e.value.field == "data.split" and "test" in str(e.value)
    with pytest.raises(DataError) as e:
        full_ranking_split(_table([(0, 1, 1.0, 0), (1, 2, 2.0, 0)]), DataConfig(), seed=0)  # no positive
    assert e.value.field == "data.split"
    with pytest.raises(DataError) as e:
        full_ranking_split(_table(HAND_ROWS), DataConfig(), seed=0, num_items=10)
    assert e.value.field == "item_id"
    with pytest.raises(DataError) as e:
        full_ranking_split(_table(HAND_ROWS), DataConfig(), seed=0, num_users=3)
    assert e.value.field == "user_id"
    with pytest.raises(DataError):
        full_ranking_split(_table(HAND_ROWS).slice(0, 0), DataConfig(), seed=0)


def test_build_samples_dispatch_uses_run_seed():
    cfg = DataConfig(protocol="full_ranking")
    inter = _table(HAND_ROWS)
    assert build_samples(inter, RunConfig(data=cfg, seed=7)).equals(full_ranking_split(inter, cfg, seed=7))
    assert build_samples(inter, cfg).equals(full_ranking_split(inter, cfg, seed=0))


def test_split_matrices():
    t = full_ranking_split(_table(HAND_ROWS), DataConfig(), seed=5)
    mats = split_matrices(t, 6, 25)
    assert set(mats) == {"train", "valid", "test"}
    total = sp.csr_matrix((6, 25), dtype=np.float32)
    for name, m in mats.items():
        assert sp.isspmatrix_csr(m) and m.shape == (6, 25) and m.dtype == np.float32
        assert np.all(m.data == 1.0)
        assert m.nnz == sum(s == name for s in t.column("split").to_pylist())
        total = total + m
    assert total.max() == 1.0  # disjoint
    assert {tuple(x) for x in np.argwhere(total.toarray() > 0)} == _positive_pairs(HAND_ROWS)
    assert [mats["test"][u].nnz for u in range(6)] == [1, 1, 1, 1, 0, 0]
    with pytest.raises(DataError):
        split_matrices(t, 6, 10)


# ---------------------------------------------------------------- the metrics

# 3 users, 6 items; item_emb = I so scores = user_emb rows.
# user 0: train {0} (its top item), test {1, 4}: ranking 1, 2, 3, 4, 5 -> hits at ranks 1 and 4
# user 1: train {1} (scored highest), test {0}: ranking 2, 3, 5, 4, 0 -> hit at rank 5
# user 2: no test positive -> skipped
SCORES = np.array(
    [
        [6.0, 5.0, 4.0, 3.0, 2.0, 1.0],
        [0.1, 0.9, 0.8, 0.7, 0.2, 0.3],
        [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
    ]
)
ITEM_EMB = np.eye(6)


def _csr(pairs, shape=(3, 6)) -> sp.csr_matrix:
    u, i = zip(*pairs)
    return sp.csr_matrix((np.ones(len(u), dtype=np.float32), (u, i)), shape=shape)


TRAIN = _csr([(0, 0), (1, 1), (2, 2)])
TEST = _csr([(0, 1), (0, 4), (1, 0)])


def _d(r: int) -> float:
    return 1.0 / math.log2(r + 1)


def test_metrics_hand_computed():
    ks = (1, 2, 3, 5, 10)
    m = full_ranking_metrics(SCORES, ITEM_EMB, TRAIN, TEST, ks)
    idcg2 = _d(1) + _d(2)
    u0 = {
        "recall": [0.5, 0.5, 0.5, 1.0, 1.0],
        "precision": [1.0, 0.5, 1 / 3, 2 / 5, 2 / 10],
        "ndcg": [1.0, 1 / idcg2, 1 / idcg2, (1 + _d(4)) / idcg2, (1 + _d(4)) / idcg2],
    }
    u1 = {
        "recall": [0, 0, 0, 1.0, 1.0],
        "precision": [0, 0, 0, 1 / 5, 1 / 10],
        "ndcg": [0, 0, 0, _d(5), _d(5)],
    }
    assert set(m) == {f"{n}@{k}" for n in ("recall", "precision", "ndcg") for k in ks}
    for name in ("recall", "precision", "ndcg"):
        for j, k in enumerate(ks):
            assert m[f"{name}@{k}"] == pytest.approx((u0[name][j] + u1[name][j]) / 2, abs=1e-12), (name, k)
    per = per_user_full_ranking(SCORES, ITEM_EMB, TRAIN, TEST, ks)
    np.testing.assert_array_equal(per["user_id"], [0, 1])  # user 2 (no test positive) skipped
    np.testing.assert_array_equal(per["num_test"], [2, 1])
    np.testing.assert_allclose(per["ndcg@5"], [(1 + _d(4)) / idcg2, _d(5)])


def test_train_items_excluded():
    # without exclusion user 1's top item (1, train) takes rank 1 and its test item 0 drops to rank 6
    plain = per_user_full_ranking(SCORES, ITEM_EMB, TRAIN, TEST, (5,), exclude=[])
    masked = per_user_full_ranking(SCORES, ITEM_EMB, TRAIN, TEST, (5,))
    assert plain["recall@5"][1] == 0.0 and masked["recall@5"][1] == 1.0
    # an item both in train and test, scored highest: never a hit, though it still counts in |T_u|
    test = _csr([(0, 1), (0, 4), (1, 0), (1, 1)])
    per = per_user_full_ranking(SCORES, ITEM_EMB, TRAIN, test, (1, 5, 6))
    assert per["recall@1"][1] == 0.0 and per["recall@5"][1] == 0.5 and per["recall@6"][1] == 0.5
    # the masked item fills the list when fewer than k items are left, but is no hit
    assert per["precision@6"][1] == pytest.approx(1 / 6)
    # exclude=[train, valid] masks the valid items as well
    valid = _csr([(0, 2), (0, 3)])
    two = per_user_full_ranking(SCORES, ITEM_EMB, TRAIN, TEST, (2,), exclude=[TRAIN, valid])
    assert two["recall@2"][0] == 1.0  # ranking 1, 4, 5


def test_perfect_scorer_and_constant_scorer():
    rng = np.random.default_rng(3)
    U, I = 30, 25
    dense = rng.random((U, I))
    train = sp.csr_matrix((dense < 0.3).astype(np.float32))
    test = sp.csr_matrix(((dense >= 0.3) & (dense < 0.45)).astype(np.float32))
    perfect = test.toarray() * 10 + rng.random((U, I))  # test items on top (train ones excluded)
    per = per_user_full_ranking(perfect, np.eye(I), train, test, (5, 10, 50))
    n = per["num_test"]
    assert n.max() > 5
    np.testing.assert_allclose(per["recall@10"][n <= 10], 1.0)
    np.testing.assert_allclose(per["recall@5"][n > 5], 5 / n[n > 5])
    np.testing.assert_allclose(per["ndcg@5"], 1.0)
    np.testing.assert_allclose(per["ndcg@50"], 1.0)
    # pessimistic ties: a constant scorer ranks every non-test item first
    const = np.zeros((3, 6))
    c = per_user_full_ranking(const, np.eye(6), TRAIN, TEST, (3, 4, 5))
    np.testing.assert_allclose(c["recall@3"], [0.0, 0.0])  # user 0: 2, 3, 5 then 1, 4
    np.testing.assert_allclose(c["recall@4"], [0.5, 0.0])  # user 1: 2, 3, 4, 5 then 0
    np.testing.assert_allclose(c["recall@5"], [1.0, 1.0])
    # also when the cut-off splits the tied items (the list holds max(ks) = 3 of 5)
    np.testing.assert_allclose(per_user_full_ranking(const, np.eye(6), TRAIN, TEST, (3,))["recall@3"], [0.0, 0.0])


def _reference(scores, train, test, ks):
    """Per-user loop: sort by (score desc, non-test first, item id) over non-train items."""
    S, tr, te = np.asarray(scores, float), train.toarray() > 0, test.toarray() > 0
    out = {f"{n}@{k}": [] for n in ("recall", "precision", "ndcg") for k in ks}
    for u in range(len(S)):
        t = set(np.flatnonzero(te[u]))
        if not t:
            continue
        cand = [i for i in range(S.shape[1]) if not tr[u, i]]
        ranked = sorted(cand, key=lambda i: (-S[u, i], i in t, i))
        for k in ks:
            h = [i in t for i in ranked[:k]]
            out[f"recall@{k}"].append(sum(h) / len(t))
            out[f"precision@{k}"].append(sum(h) / k)
            idcg = sum(_d(r) for r in range(1, min(len(t), k) + 1))
            out[f"ndcg@{k}"].append(sum(_d(r + 1) for r, x in enumerate(h) if x) / idcg)
    return {k: float(np.mean(v)) for k, v in out.items()}


def _integer_problem(seed: int, U=50, I=40, d=3):
    rng = np.random.default_rng(seed)
    ue = rng.integers(0, 3, (U, d)).astype(np.float64)  # small integers: exact scores, many ties
    ie = rng.integers(0, 3, (I, d)).astype(np.float64)
    dense = rng.random((U, I))
    train = sp.csr_matrix((dense < 0.4).astype(np.float32))
    is_test = (dense >= 0.4) & (dense < 0.55)
    is_test[0] = False  # user 0 without test positives
    return ue, ie, train, sp.csr_matrix(is_test.astype(np.float32))


def test_metrics_match_per_user_reference_with_ties():
    ue, ie, train, test = _integer_problem(0)
    for ks in [(1, 10, 20, 50), (3, 7)]:  # max(ks) beyond / inside the 40 items (the cut splits ties)
        got = full_ranking_metrics(ue, ie, train, test, ks)
        want = _reference(ue @ ie.T, train, test, ks)
        assert got.keys() == want.keys()
        for k in want:
            assert got[k] == pytest.approx(want[k], abs=1e-12), (ks, k)


def test_block_size_and_score_fn_independence():
    ue, ie, train, test = _integer_problem(1)
    ks = (1, 5, 20)
    ref = per_user_full_ranking(ue, ie, train, test, ks, block=1024)
    assert 0 not in ref["user_id"]
    for block in (1, 7):
        got = per_user_full_ranking(ue, ie, train, test, ks, block=block)
        for k in ref:
            np.testing.assert_array_equal(got[k], ref[k], err_msg=f"{k} block={block}")
    calls = []

    def score_fn(users):
        calls.append(len(users))
        return ue[users] @ ie.T

    via_fn = per_user_full_ranking(None, None, train, test, ks, block=16, score_fn=score_fn)
    for k in ref:
        np.testing.assert_array_equal(via_fn[k], ref[k], err_msg=k)
    assert max(calls) <= 16 and sum(calls) == len(ref["user_id"])
    sub = per_user_full_ranking(ue, ie, train, test, ks, users=[5, 0, 3])
    np.testing.assert_array_equal(sub["user_id"], [5, 3])
    np.testing.assert_array_equal(sub["ndcg@5"], ref["ndcg@5"][np.searchsorted(ref["user_id"], [5, 3])])


def test_metrics_from_the_split_end_to_end():
    rows = _random_rows(np.random.default_rng(2))
    t = full_ranking_split(_table(rows), DataConfig(), seed=0)
    mats = split_matrices(t, 40, 60)
    perfect = mats["test"].toarray() + 0.0
    m = full_ranking_metrics(perfect, np.eye(60), mats["train"], mats["test"], (20,))
    assert m["ndcg@20"] == pytest.approx(1.0)


def test_metric_errors():
    with pytest.raises(ValueError, match="NaN"):
        full_ranking_metrics(np.full((3, 6), np.nan), ITEM_EMB, TRAIN, TEST)
    with pytest.raises(ValueError, match="no evaluated user"):
        full_ranking_metrics(SCORES, ITEM_EMB, TRAIN, TEST, users=[2])
    with pytest.raises(ValueError):
        full_ranking_metrics(SCORES[:2], ITEM_EMB, TRAIN, TEST)
    with pytest.raises(ValueError):
        full_ranking_metrics(SCORES, ITEM_EMB, TRAIN, TEST, ks=(0,))
    with pytest.raises(ValueError):
        full_ranking_metrics(None, None, TRAIN, TEST, score_fn=lambda u: SCORES[u][:, :5])
    with pytest.raises(TypeError):
        full_ranking_metrics(SCORES, ITEM_EMB, TRAIN.toarray(), TEST)


def test_multi_seed_summary():
    s = multi_seed_summary([{"recall@10": 0.1, "ndcg@10": 0.3}, {"recall@10": 0.2, "ndcg@10": 0.5}])
    assert s["recall@10"]["mean"] == pytest.approx(0.15)
    assert s["recall@10"]["std"] == pytest.approx(math.sqrt(0.005))  # ddof=1
    assert s["ndcg@10"] == pytest.approx({"mean": 0.4, "std": math.sqrt(0.02), "n": 2})
    assert math.isnan(multi_seed_summary([{"a": 1.0}])["a"]["std"])
    with pytest.raises(ValueError):
        multi_seed_summary([{"a": 1.0}, {"b": 1.0}])
    with pytest.raises(ValueError):
        multi_seed_summary([])
