"""Text embeddings from the LLM's final hidden state (RALLRec: the mean-pooled input of ``lm_head``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ..llm.engine import Engine


def llm_embed(engine: Engine, texts: Sequence[str], *, pooling: str = "mean", max_tokens: int = 256) -> np.ndarray:
    """float32 ``(n, hidden)`` pooled hidden states (not normalised: PCA / the caller decides)."""
    return np.asarray(engine.embed(list(texts), pooling=pooling, max_tokens=max_tokens), dtype=np.float32)


class LLMEncoder:
    """``.encode(texts)`` over an engine's :meth:`embed` (the ``embedding.model = None`` encoder)."""

    def __init__(self, engine: Engine, pooling: str = "mean", max_tokens: int = 256) -> None:
        self.engine = engine
        self.pooling = pooling
        self.max_tokens = max_tokens

    def encode(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        """float32 ``(n, hidden)``; batching follows the engine's ``llm.batch_size``."""
        return llm_embed(self.engine, texts, pooling=self.pooling, max_tokens=self.max_tokens)
