"""Text encoders: sentence-transformers models, or the LLM's pooled hidden states."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np

from .llm_pool import LLMEncoder, llm_embed
from .sentence import SentenceEncoder

if TYPE_CHECKING:
    from ..config import LLMConfig
    from ..llm.engine import Engine


class Encoder(Protocol):
    def encode(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray: ...


def load_encoder(
    name_or_none: str | None,
    llm_cfg: LLMConfig,
    *,
    pooling: str = "mean",
    max_tokens: int = 256,
    engine: Engine | None = None,
) -> Encoder:
    """``embedding.model`` -> an encoder. ``None``: the LLM (``llm_cfg``, or the given ``engine``),
    mean-pooled final hidden state; a name / folder: a :class:`SentenceEncoder` (L2-normalised)."""
    if name_or_none is None:
        if engine is None:
            from ..llm.engine import load_engine

            engine = load_engine(llm_cfg)
        return LLMEncoder(engine, pooling=pooling, max_tokens=max_tokens)
    return SentenceEncoder(name_or_none, device=llm_cfg.device)


__all__ = ["Encoder", "LLMEncoder", "SentenceEncoder", "llm_embed", "load_encoder"]
