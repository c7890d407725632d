"""The rerank sample protocol (UR4Rec): per-user chronological 8:1:1 split of positives, histories, candidate
lists (distinct, target at target_index, never-interacted negatives), seeding, k-core, ranker negatives."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

import ragrec.data.rerank as rerank_mod
from ragrec.config import DataConfig, RunConfig
from ragrec.data.errors import DataError
from ragrec.data.protocols import build_samples
from ragrec.data.rerank import rerank_samples, train_positive_counts
from ragrec.data.schemas import INTERACTIONS, RERANK_SAMPLES, with_label_source


def _table(rows: list[tuple[int, int, float, int]]) -> pa.Table:
    """rows of (user, item, rating, timestamp); label = rating > 3."""
    user, item, rating, ts = (np.asarray(c) for c in zip(*rows))
    rating = rating.astype(np.float32)
    t = pa.Table.from_arrays(
        [
            pa.array(user.astype(np.int64)),
            pa.array(item.astype(np.int64)),
            pa.array(rating),
            pa.array(ts.astype(np.int64)),
            pa.array((rating > 3).astype(np.int8)),
        ],
        schema=INTERACTIONS,
    )
    return with_label_source(t, given=False)


# user 0: 10 positives (8/1/1) + two non-positive interactions (items 20, 21);
# user 1: 5 positives (4/0/1) with a timestamp tie (items 11, 12 at t=7 -> item order), rows shuffled;
# user 2: 2 positives (1/0/1); user 3: a negative only
U0_ITEMS = [3, 1, 4, 15, 9, 2, 6, 5, 8, 7]
HAND_ROWS = (
    [(0, it, 5.0, 100 + k) for k, it in enumerate(U0_ITEMS)]
    + [(0, 20, 1.0, 50), (0, 21, 3.0, 200)]
    + [(1, 13, 4.0, 9), (1, 12, 5.0, 7), (1, 10, 4.0, 5), (1, 14, 4.0, 12), (1, 11, 4.0, 7)]
    + [(2, 1, 4.0, 2), (2, 0, 5.0, 1), (3, 0, 2.0, 3)]
)


def _cfg(**rerank) -> DataConfig:
    rr = {"history_len": 3, "num_candidates": 5} | rerank
    return DataConfig(protocol="rerank", min_history=1, rerank=rr)


def _seen(rows) -> dict[int, set[int]]:
    seen: dict[int, set[int]] = {}
    for u, i, _, _ in rows:
        seen.setdefault(u, set()).add(i)
    return seen


def _check_lists(t: pa.Table, rows, C: int, pool: set[int] | None = None) -> None:
    """Every list: C distinct items, the target at target_index, negatives never interacted (raw rows)."""
    seen = _seen(rows)
    for r in t.to_pylist():
        c = r["candidates"]
        assert len(c) == C and len(set(c)) == C
        assert c[r["target_index"]] == r["item_id"] and c.count(r["item_id"]) == 1
        negs = set(c) - {r["item_id"]}
        assert not negs & seen[r["user_id"]]
        if pool is not None:
            assert negs <= pool


def test_split_and_histories_match_hand_computation():
    t = rerank_samples(_table(HAND_ROWS), _cfg(), seed=0, num_items=30)
    assert t.schema.equals(RERANK_SAMPLES)
    h = U0_ITEMS
    expected = (
        # train: (split, user, time) order
        [(0, h[p], "train", h[max(0, p - 3) : p]) for p in range(1, 8)]
        + [(1, 11, "train", [10]), (1, 12, "train", [10, 11]), (1, 13, "train", [10, 11, 12])]
        + [(0, h[8], "valid", h[5:8])]
        + [(0, h[9], "test", h[6:9]), (1, 14, "test", [11, 12, 13]), (2, 1, "test", [0])]
    )
    got = [(r["user_id"], r["item_id"], r["split"], r["history"]) for r in t.to_pylist()]
    assert got == expected
    assert t.column("sample_id").to_pylist() == list(range(len(expected)))
    ts = {(u, i): s for u, i, _, s in HAND_ROWS}
    assert t.column("timestamp").to_pylist() == [ts[(u, i)] for u, i, _, _ in expected]
    _check_lists(t, HAND_ROWS, 5)
    assert max(max(c) for c in t.column("candidates").to_pylist()) < 30


def test_history_len_and_min_history():
    t = rerank_samples(_table(HAND_ROWS), _cfg(history_len=1).model_copy(update={"min_history": 4}), seed=0)
    got = [(r["user_id"], r["item_id"], r["history"]) for r in t.to_pylist()]
    # user 0: targets at positions 4..9 (train 4..7, valid 8, test 9); user 1: position 4 (test)
    assert got == [(0, U0_ITEMS[p], [U0_ITEMS[p - 1]]) for p in range(4, 8)] + [
        (0, U0_ITEMS[8], [U0_ITEMS[7]]),
        (0, U0_ITEMS[9], [U0_ITEMS[8]]),
        (1, 14, [13]),
    ]


def _random_rows(n_users=60, n_items=120, per_user=30, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        items = rng.choice(n_items, per_user, replace=False)
        for i in items:
            rows.append((u, int(i), float(rng.integers(1, 6)), int(rng.integers(0, 50))))
    return rows


def test_lists_valid_seeded_and_spread(monkeypatch):
    rows = _random_rows()
    cfg = _cfg(num_candidates=20, history_len=5)
    a = rerank_samples(_table(rows), cfg, seed=1)
    _check_lists(a, rows, 20)
    assert a.equals(rerank_samples(_table(rows), cfg, seed=1))
    b = rerank_samples(_table(rows), cfg, seed=2)
    assert a.column("item_id").equals(b.column("item_id"))
    assert a.column("candidates") != b.column("candidates")
    # target positions spread over the list
    pos = a.column("target_index").to_numpy()
    counts = np.bincount(pos, minlength=20)
    assert (counts > 0).all() and counts.max() < 3 * len(pos) / 20
    # negatives cover the unseen items roughly uniformly
    negs = np.concatenate([np.delete(c, i) for c, i in zip(a.column("candidates").to_pylist(), pos)])
    freq = np.bincount(negs, minlength=120)
    assert freq.min() > 0.3 * freq.mean() and freq.max() < 2 * freq.mean()
    # tiny work blocks (many row blocks and rejection rounds) still give valid lists
    monkeypatch.setattr(rerank_mod, "_BLOCK_VALUES", 300)
    _check_lists(rerank_samples(_table(rows), cfg, seed=1), rows, 20)


def test_kcore_removes_the_right_users_and_items():
    # users 0,1 like items 0-4, users 2,3 items 5-9; user 4 likes 0 and 10 (item 10 has 1 user -> dropped,
    # then user 4 has 1 -> dropped); user 5 likes only 11 -> both dropped. Core: users 0-3, items 0-9.
    rows = [(u, i, 5.0, 10 * u + i) for u in (0, 1) for i in range(5)]
    rows += [(u, i, 5.0, 10 * u + i) for u in (2, 3) for i in range(5, 10)]
    rows += [(4, 0, 5.0, 1), (4, 10, 5.0, 2), (5, 11, 5.0, 3)]
    user = np.array([r[0] for r in rows])
    item = np.array([r[1] for r in rows])
    keep = rerank_mod._kcore(user, item, 2)
    assert set(zip(user[~keep].tolist(), item[~keep].tolist())) == {(4, 0), (4, 10), (5, 11)}
    assert rerank_mod._kcore(user, item, 0).all()

    cfg = DataConfig(
        protocol="rerank",
        min_history=1,
        split=(0.6, 0.2, 0.2),
        rerank={"history_len": 2, "num_candidates": 6, "kcore": 2},
    )
    t = rerank_samples(_table(rows), cfg, seed=0)
    assert set(t.column("user_id").to_pylist()) == {0, 1, 2, 3}
    # the pool is the core's items: user 0's 5 negatives are exactly its 5 unseen core items (never 10, 11)
    _check_lists(t, rows, 6, pool=set(range(10)))
    for r in t.to_pylist():
        expect = set(range(5, 10)) if r["user_id"] < 2 else set(range(5))
        assert set(r["candidates"]) - {r["item_id"]} == expect
    # popularity: train positives per item after the k-core (3 of each user's 5 positives)
    counts = train_positive_counts(_table(rows), cfg, num_items=12)
    assert counts.tolist() == [2, 2, 2, 0, 0, 2, 2, 2, 0, 0, 0, 0]


def test_train_positive_counts_hand():
    counts = train_positive_counts(_table(HAND_ROWS), _cfg())
    expect = np.zeros(22, dtype=np.int64)
    for i in U0_ITEMS[:8] + [10, 11, 12, 13] + [0]:
        expect[i] += 1
    assert counts.tolist() == expect.tolist()


def _score_fn(num_items):
    def scores(users):
        i = np.arange(num_items)
        return ((i[None, :] * 7 + users[:, None] * 3) % num_items).astype(np.float64)

    return scores


@pytest.mark.parametrize("block", [None, 40])
def test_ranker_negatives_are_top_unseen(monkeypatch, block):
    if block:
        monkeypatch.setattr(rerank_mod, "_BLOCK_VALUES", block)  # one or two users per block
    rows = _random_rows(n_users=8, n_items=40, per_user=12, seed=3)
    C, I = 6, 40
    f = _score_fn(I)
    t = rerank_samples(_table(rows), _cfg(num_candidates=C, negatives="ranker"), seed=0, ranker_scores=f)
    _check_lists(t, rows, C)
    seen = _seen(rows)
    for r in t.to_pylist():
        s = f(np.array([r["user_id"]]))[0]
        unseen = [i for i in range(I) if i not in seen[r["user_id"]]]
        top = sorted(unseen, key=lambda i: (-s[i], i))[: C - 1]
        c = list(r["candidates"])
        ti = r["target_index"]
        assert c[:ti] + c[ti + 1 :] == top  # ranker order, descending
        assert ti == sum(s[i] >= s[r["item_id"]] for i in top)


def test_ranker_ties_put_target_last():
    rows = _random_rows(n_users=5, n_items=40, per_user=12, seed=4)
    seen = _seen(rows)
    t = rerank_samples(
        _table(rows),
        _cfg(num_candidates=6, negatives="ranker"),
        seed=0,
        ranker_scores=lambda u: np.zeros((len(u), 40)),
    )
    for r in t.to_pylist():
        assert r["target_index"] == 5
        assert r["candidates"][:5] == [i for i in range(40) if i not in seen[r["user_id"]]][:5]


def test_errors():
    tab = _table(HAND_ROWS)
    with pytest.raises(DataError, match="num_candidates") as e:
        rerank_samples(tab, _cfg(num_candidates=15), seed=0)  # user 0 saw 12 of 22 items
    assert e.value.field == "data.rerank.num_candidates"
    with pytest.raises(DataError, match="initial ranker"):
        rerank_samples(tab, _cfg(negatives="ranker"), seed=0)
    with pytest.raises(DataError, match="is empty") as e:
        rerank_samples(tab, _cfg().model_copy(update={"min_history": 50}), seed=0)
    assert e.value.field == "data.split"
    with pytest.raises(DataError, match="num_items"):
        rerank_samples(tab, _cfg(), seed=0, num_items=5)
    with pytest.raises(DataError, match="no positive"):
        rerank_samples(_table([(0, 0, 1.0, 0), (0, 1, 2.0, 1)]), _cfg(), seed=0)


def test_build_samples_dispatch():
    tab = _table(HAND_ROWS)
    cfg = _cfg()
    assert build_samples(tab, cfg).equals(rerank_samples(tab, cfg, seed=0))
    run = RunConfig(data=cfg, seed=7)
    assert build_samples(tab, run).equals(rerank_samples(tab, cfg, seed=7))
    with pytest.raises(DataError, match="initial ranker") as e:
        build_samples(tab, _cfg(negatives="ranker"))
    assert e.value.field == "data.rerank.negatives"


def test_ml1m_and_generic_data_give_the_same_lists_by_config(tmp_path):
    """UR4Rec on another dataset is a config change: the same ratings written as MovieLens-1M files and as a
    generic CSV load to the same interactions, and the rerank protocol builds the same lists from both."""
    import pandas as pd

    from ragrec.config import GenericColumns
    from ragrec.data.dataset import load_dataset

    rows = _random_rows(n_users=30, n_items=60, per_user=20, seed=3)
    raw = [(u + 1, i + 1, int(r), 978300000 + t) for u, i, r, t in rows]  # ML-1M ids start at 1
    d = tmp_path / "ml-1m"
    d.mkdir()
    (d / "ratings.dat").write_text("".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in raw))
    (d / "movies.dat").write_text("".join(f"{i}::Movie {i} (1990)::Drama\n" for i in range(1, 61)))
    (d / "users.dat").write_text("".join(f"{u}::F::25::1::00000\n" for u in range(1, 31)))
    pd.DataFrame(raw, columns=["u", "i", "r", "t"]).to_csv(tmp_path / "ratings.csv", index=False)
    movies = pd.DataFrame({"i": range(1, 61), "title": [f"Movie {i} (1990)" for i in range(1, 61)]})
    movies.to_csv(tmp_path / "movies.csv", index=False)
    rerank = {"history_len": 5, "num_candidates": 20}
    cfgs = [
        DataConfig(name="ml-1m", path=str(d), protocol="rerank", min_history=2, rerank=rerank),
        DataConfig(
            name="generic",
            path=str(tmp_path),
            interactions_file="ratings.csv",
            items_file="movies.csv",
            columns=GenericColumns(user_id="u", item_id="i", rating="r", timestamp="t", title="title"),
            protocol="rerank",
            min_history=2,
            rerank=rerank,
        ),
    ]
    tables = [load_dataset(c).interactions for c in cfgs]
    samples = [build_samples(t, RunConfig(data=c, seed=5)) for t, c in zip(tables, cfgs)]
    assert samples[0].num_rows > 100 and samples[0].equals(samples[1])
    dense = [(u - 1, i - 1, float(r), t) for u, i, r, t in raw]  # both loaders keep the raw id order
    _check_lists(samples[0], dense, 20)
    assert set(samples[0].column("split").to_pylist()) == {"train", "valid", "test"}
