"""Embedding mixture (Eq. 7), PCA and the faiss item index."""

from __future__ import annotations

import numpy as np
import pytest

from ragrec.retrieval.embeddings import mix, normalize, pca
from ragrec.retrieval.index import ItemIndex


def test_normalize_rows():
    x = np.array([[3.0, 4.0], [0.0, 0.0], [-1.0, 0.0]])
    out = normalize(x)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0], [-1.0, 0.0]], rtol=1e-6)


def test_mix_is_sum_of_cosines():
    rng = np.random.default_rng(0)
    a, b, c = rng.normal(size=(6, 5)) * 10, rng.normal(size=(6, 3)), rng.normal(size=(6, 4)) * 0.01
    m = mix([a, b, c])
    assert m.shape == (6, 12)
    cos = lambda x: (x @ x.T) / np.outer(np.linalg.norm(x, axis=1), np.linalg.norm(x, axis=1))
    np.testing.assert_allclose(m @ m.T, cos(a) + cos(b) + cos(c), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(m[:, 5:8], axis=1), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="same row count"):
        mix([a, b[:5]])
    with pytest.raises(ValueError, match="NaN"):
        mix([np.full((2, 2), np.nan)])


def test_pca_caps_dim_and_keeps_the_main_direction():
    rng = np.random.default_rng(1)
    direction = rng.normal(size=20)
    x = np.outer(rng.normal(size=50) * 10, direction) + rng.normal(size=(50, 20)) * 0.1
    out = pca(x, 128, seed=0)
    assert out.shape == (50, 20) and out.dtype == np.float32  # capped at min(n, d)
    out3 = pca(x, 3, seed=0)
    assert out3.shape == (50, 3)
    # the first component carries (almost) all the variance
    assert out3[:, 0].var() > 100 * out3[:, 1:].var(axis=0).max()
    assert pca(x[:4], 128).shape == (4, 4)


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_item_index_matches_brute_force(metric):
    rng = np.random.default_rng(2)
    emb = rng.normal(size=(200, 16)).astype(np.float32)
    q = rng.normal(size=(7, 16)).astype(np.float32)
    _scores, ids = ItemIndex(emb, metric).search(q, 5)
    assert ids.shape == (7, 5) and ids.dtype == np.int64
    full = q @ emb.T if metric == "ip" else -((q[:, None, :] - emb[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(ids, np.argsort(-full, axis=1)[:, :5])
    idx = ItemIndex(emb, metric)
    assert idx.search(q[0], 1000)[1].shape == (1, 200)  # k capped at the catalog size
    with pytest.raises(ValueError, match=r"shape \(m, 16\)"):
        idx.search(np.zeros((2, 3)), 3)
