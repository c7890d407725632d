"""LLM hidden-state encoder (embedding.model = None)."""

from __future__ import annotations

import numpy as np

from ragrec.config import LLMConfig
from ragrec.encoders import LLMEncoder, llm_embed, load_encoder


class _FakeEngine:
    """Records the call and returns a deterministic embedding per text."""

    def __init__(self):
        self.calls = []

    def embed(self, texts, *, pooling="mean", max_tokens=256):
        self.calls.append((list(texts), pooling, max_tokens))
        return np.array([[len(t), ord(t[0])] for t in texts], dtype=np.float64)


def test_llm_embed_forwards_options_and_returns_float32():
    eng = _FakeEngine()
    out = llm_embed(eng, ("ab", "c"), pooling="last", max_tokens=9)
    assert out.dtype == np.float32 and out.tolist() == [[2, 97], [1, 99]]
    assert eng.calls == [(["ab", "c"], "last", 9)]


def test_load_encoder_none_uses_the_engine():
    eng = _FakeEngine()
    enc = load_encoder(None, LLMConfig(), pooling="mean", max_tokens=32, engine=eng)
    assert isinstance(enc, LLMEncoder)
    assert enc.encode(["xyz"]).tolist() == [[3, 120]]
    assert eng.calls == [(["xyz"], "mean", 32)]


def test_load_encoder_none_builds_the_hf_engine():
    enc = load_encoder(None, LLMConfig(model="tiny-random-llama", batch_size=2), max_tokens=16)
    texts = ["Toy Story", "Heat", "Fargo"]
    emb = enc.encode(texts)
    assert emb.shape == (3, 64) and emb.dtype == np.float32
    np.testing.assert_allclose(emb, enc.engine.embed(texts, pooling="mean", max_tokens=16), atol=1e-6)
    assert not np.allclose(emb[0], emb[1])
