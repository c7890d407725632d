"""Sentence-transformers encoders (the embedded ``minilm-l6`` or any local ST folder)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..llm.registry import model_path, resolve


class SentenceEncoder:
    """L2-normalised sentence embeddings; ``dim`` = output width (384 for ``minilm-l6``)."""

    def __init__(self, name: str, device: str = "auto", batch_size: int = 32) -> None:
        from sentence_transformers import SentenceTransformer

        from ..runtime import device as pick_device

        src = resolve(name)
        if src.kind != "sentence-encoder":
            raise ValueError(
                f"embedding.model '{name}' is a {src.kind}, not a sentence-transformers folder; "
                f"use embedding.model=null to embed with the LLM's hidden states"
            )
        self.name = name
        self.batch_size = batch_size
        self.model = SentenceTransformer(model_path(name), device=pick_device(device), local_files_only=True)
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(get_dim())

    def encode(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        """float32 ``(n, dim)``, each row of unit L2 norm."""
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        emb = self.model.encode(
            list(texts),
            batch_size=batch_size or self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(emb, dtype=np.float32)
