"""SASRec training: learns a sequential pattern; outputs, leave-one-out metric, neighbours, Ray path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ragrec.config import SASRecConfig
from ragrec.training.ray_train import TrainOptions
from ragrec.training.sasrec import collaborative_neighbours, train_sasrec

U, I = 300, 100
EXTRA = 2  # users U (one interaction) and U + 1 (none)
CFG = SASRecConfig(dim=32, num_layers=1, num_heads=1, max_len=12, dropout=0.1, epochs=10, lr=5e-3, batch_size=64)


def cycle_data(seed: int = 0):
    """Every user walks 6-12 steps along one fixed random cycle over all items from a random start.

    The next item is a deterministic function of the current one, but every item is equally popular,
    so only a model of the sequence beats chance. Rows are shuffled (order comes from timestamps).
    Returns (users, items, timestamps, perm, start, lens); item at step s of user u is
    perm[(start[u] + s) % I].
    """
    rng = np.random.default_rng(seed)
    perm = rng.permutation(I)
    lens = rng.integers(6, 13, U)
    start = rng.integers(0, I, U)
    u = np.repeat(np.arange(U), lens)
    step = np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens)
    items = perm[(np.repeat(start, lens) + step) % I]
    ts = 1_000 + 10 * step
    u, items, ts = np.append(u, U), np.append(items, 7), np.append(ts, 5)  # a user with one interaction
    shuffle = rng.permutation(len(u))
    return u[shuffle], items[shuffle], ts[shuffle], perm, start, lens


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The test machine's 2 CPUs are shared with other jobs; 2 torch threads would contend (~50x slower)."""
    before = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAGREC_TORCH_THREADS", "1")
        yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    u, i, t, *_ = cycle_data()
    out = tmp_path_factory.mktemp("sasrec")
    res = train_sasrec(u, i, t, U + EXTRA, I, CFG, opts=TrainOptions(seed=1, out_dir=out), eval_every=2)
    return res, out


def test_learns_the_sequence_far_above_random(trained):
    res, _ = trained
    # random ranking among 101 candidates: HR@10 = 10/101 ~ 0.099, NDCG@10 ~ 0.045
    assert res.metrics["hr@10"] > 0.8
    assert res.metrics["ndcg@10"] > 0.6
    assert res.metrics["users_evaluated"] == U  # user U (one interaction) and U + 1 (none) are not evaluated
    evals = [h for h in res.history if "hr@10" in h]
    assert [h["epoch"] for h in evals] == [1, 3, 5, 7, 9]
    assert evals[-1]["hr@10"] == res.metrics["hr@10"]
    losses = [h["loss"] for h in res.history]
    assert losses[0] > 1.0 and losses[-1] < 0.75 * losses[0]  # BCE(pos)+BCE(neg) starts near 2 ln 2


def test_user_emb_comes_from_the_full_sequence_and_items_without_padding(trained):
    res, _ = trained
    _, _, _, perm, start, lens = cycle_data()
    assert res.user_emb.shape == (U + EXTRA, 32) and res.item_emb.shape == (I, 32)
    assert res.user_emb.dtype == np.float32 and res.item_emb.dtype == np.float32
    u, i, *_ = cycle_data()
    seen = np.zeros((U, I), dtype=bool)
    seen[u[u < U], i[u < U]] = True  # the full training sequences, held-out item included
    top = np.argmax(np.where(seen, -np.inf, res.user_emb[:U] @ res.item_emb.T), axis=1)
    after = perm[(start + lens) % I]  # the item following the last (held-out) item on the cycle
    before = perm[(start - 1) % I]  # the unseen item just before the first one
    # built from the full sequence, the representation predicts the item AFTER the held-out one; an
    # order-blind co-occurrence model would split between `after` and `before` (both touch the arc)
    assert np.mean(top == after) > 0.8
    assert np.mean(top == before) < 0.1
    # user U has a single interaction: its fitting sequence is empty, its full sequence is not
    assert np.all(res.user_emb[U + 1] == 0) and np.abs(res.user_emb[U]).sum() > 0
    np.testing.assert_array_equal(res.trained_users, np.arange(U + EXTRA) < U + 1)


def test_outputs_are_written(trained):
    res, out = trained
    np.testing.assert_array_equal(np.load(out / "user_emb.npy"), res.user_emb)
    np.testing.assert_array_equal(np.load(out / "item_emb.npy"), res.item_emb)
    assert json.loads((out / "metrics.json").read_text()) == res.metrics
    assert [h["epoch"] for h in json.loads((out / "history.json").read_text())] == list(range(CFG.epochs))


def test_scorer_loads_the_weights_and_scores_items_given_a_history(trained):
    import pyarrow as pa

    from ragrec.training.sasrec import SASRecScorer

    res, out = trained
    u, i, t, _, _, lens = cycle_data()
    scorer = SASRecScorer(out)
    full = int(np.flatnonzero(lens == CFG.max_len)[0])  # a user whose sequence fills max_len
    users = np.array([0, 5, full, U])
    hist = []
    for user in users:  # each user's whole training sequence, oldest first
        m = u == user
        hist.append(i[m][np.argsort(t[m], kind="stable")].tolist())
    hist[2] = [9, 8, 7] + hist[2]  # older items beyond max_len are dropped
    targets = np.array([3, 40, 99, 7])
    got = scorer(pa.array(hist, pa.list_(pa.int64())), targets)
    want = (res.user_emb[users] * res.item_emb[targets]).sum(1)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    seqs = scorer.sequences(pa.array([[], [4, 2]], pa.list_(pa.int64())).slice(0, 2))
    assert seqs.shape == (2, CFG.max_len) and seqs[0].sum() == 0 and seqs[1, -2:].tolist() == [5, 3]
    assert scorer(pa.array([[]], pa.list_(pa.int64())), np.array([1]))[0] == 0.0  # no history: zero representation
    with pytest.raises(ValueError, match="target item ids"):
        scorer(pa.array([[1]], pa.list_(pa.int64())), np.array([I]))


def test_log_line_and_input_errors(tmp_path, caplog):
    u, i, t, *_ = cycle_data()
    cfg = CFG.model_copy(update={"epochs": 1})
    with caplog.at_level("INFO", logger="ragrec.sasrec"):
        res = train_sasrec(u, i, t, U + EXTRA, I, cfg, opts=TrainOptions(seed=0, out_dir=tmp_path))
    line = f"NDCG@10={res.metrics['ndcg@10']:.4f} HR@10={res.metrics['hr@10']:.4f} over {U} users"
    assert any(
        r.getMessage().startswith("SASRec leave-one-out (100 negatives): ") and line in r.getMessage()
        for r in caplog.records
    )
    opts = TrainOptions(out_dir=tmp_path)
    with pytest.raises(ValueError, match=r"sasrec train interactions: item_id\[1\]=100 is outside 0\.\.99"):
        train_sasrec(np.array([0, 1]), np.array([0, 100]), np.array([1, 2]), 2, I, cfg, opts=opts)
    with pytest.raises(ValueError, match="timestamps has shape"):
        train_sasrec(np.array([0, 1]), np.array([0, 1]), np.array([1]), 2, I, cfg, opts=opts)
    with pytest.raises(ValueError, match="no user has 3\\+ training interactions"):
        train_sasrec(np.array([0, 0, 1]), np.array([0, 1, 2]), np.array([1, 2, 3]), 2, I, cfg, opts=opts)


def test_neighbours_match_brute_force_and_exclude_self_and_invalid():
    rng = np.random.default_rng(0)
    h = rng.normal(size=(40, 6)).astype(np.float32)
    valid = np.ones(40, dtype=bool)
    valid[[3, 17, 29]] = False
    k = 5
    got = collaborative_neighbours(h, k, valid=valid, block_elems=7 * 40)  # 7 rows per block: several blocks
    scores = h @ h.T
    np.fill_diagonal(scores, -np.inf)
    scores[:, ~valid] = -np.inf
    expect = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    assert got.shape == (40, k) and got.dtype == np.int64
    np.testing.assert_array_equal(got, expect)
    assert not np.any(got == np.arange(40)[:, None])
    assert not np.isin(got, [3, 17, 29]).any()
    np.testing.assert_array_equal(
        collaborative_neighbours(h, k),
        np.argsort(-np.where(np.eye(40, dtype=bool), -np.inf, h @ h.T), axis=1, kind="stable")[:, :k],
    )
    with pytest.raises(ValueError, match="k=37 needs 1 <= k <= valid users - 1 = 36"):
        collaborative_neighbours(h, 37, valid=valid)


def test_neighbours_of_trained_users_share_recent_items(trained):
    res, _ = trained
    _, _, _, perm, start, lens = cycle_data()
    pos = np.empty(I, dtype=np.int64)
    pos[perm] = np.arange(I)
    last_pos = (start + lens - 1) % I  # position on the cycle of each user's most recent item
    nb = collaborative_neighbours(res.user_emb[:U], 5)
    gap = np.abs(last_pos[nb] - last_pos[:, None])
    gap = np.minimum(gap, I - gap)
    # neighbours are users at the same point of the cycle (random users: mean gap ~25 of 50)
    assert np.median(gap) <= 2


@pytest.mark.ray
@pytest.mark.slow  # Ray Train worker start on 2 shared CPUs
def test_ray_path_writes_the_same_outputs_it_returns(ray_session, tmp_path):
    u, i, t, *_ = cycle_data()
    cfg = CFG.model_copy(update={"epochs": 2})
    on_ray = TrainOptions(use_ray=True, seed=1, out_dir=tmp_path / "out", storage_path=str(tmp_path / "ray"))
    res = train_sasrec(u, i, t, U + EXTRA, I, cfg, opts=on_ray)
    out = tmp_path / "out"
    for name in ("user_emb.npy", "item_emb.npy", "history.json", "metrics.json"):
        assert (out / name).exists(), name
    assert json.loads((out / "metrics.json").read_text()) == res.metrics
    assert res.metrics["users_evaluated"] == U and 0 <= res.metrics["hr@10"] <= 1
    assert [h["epoch"] for h in res.history] == [0, 1]
    np.testing.assert_array_equal(np.load(out / "user_emb.npy"), res.user_emb)
    assert res.user_emb.shape == (U + EXTRA, 32) and np.all(res.user_emb[U + 1] == 0)
    # same loop, same seeds, one worker: the in-process run gives the same result
    local = train_sasrec(u, i, t, U + EXTRA, I, cfg, opts=TrainOptions(seed=1, out_dir=tmp_path / "local"))
    np.testing.assert_allclose(res.item_emb, local.item_emb, rtol=1e-4, atol=1e-5)
    assert res.metrics == pytest.approx(local.metrics)
