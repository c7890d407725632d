"""Sentence encoders: the embedded MiniLM and the registry checks."""

from __future__ import annotations

import numpy as np
import pytest

from ragrec.config import LLMConfig
from ragrec.encoders import SentenceEncoder, load_encoder


@pytest.fixture(scope="module")
def minilm() -> SentenceEncoder:
    return SentenceEncoder("minilm-l6", device="cpu")


def test_minilm_is_384d_normalised_and_semantic(minilm):
    texts = ["a comedy film", "a funny movie", "quantum chromodynamics"]
    emb = minilm.encode(texts, batch_size=2)
    assert emb.shape == (3, 384) and emb.dtype == np.float32 and minilm.dim == 384
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.3
    # batch size does not change the result
    np.testing.assert_allclose(minilm.encode(texts, batch_size=1), emb, atol=1e-5)
    assert minilm.encode([]).shape == (0, 384)


def test_load_encoder_by_name_and_wrong_kind():
    enc = load_encoder("minilm-l6", LLMConfig(device="cpu"))
    assert isinstance(enc, SentenceEncoder)
    with pytest.raises(ValueError, match="not a sentence-transformers folder"):
        SentenceEncoder("tiny-random-llama")
