"""The item-embedding views of a RALLRec run and the retrieval of each sample's history context from them
(the offline path and the Serve reranker use the same function)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from ..config import RetrievalConfig


@dataclass
class ItemViews:
    """The item embedding views of Table 4; ``get`` builds the mixtures of Eq. 7 on demand."""

    title: np.ndarray
    text: np.ndarray
    colla: np.ndarray
    ssl: np.ndarray | None = None

    @classmethod
    def from_artifacts(cls, arts) -> ItemViews:
        """The views of a RALLRec run's artifacts (``text_features``, ``lightgcn``, ``projector``)."""
        return cls(
            title=np.load(arts["text_features"].file("title.npy")),
            text=np.load(arts["text_features"].file("text.npy")),
            colla=np.load(arts["lightgcn"].file("item_emb.npy")),
            ssl=np.load(arts["projector"].file("ssl_emb.npy")),
        )

    def get(self, name: str) -> np.ndarray:
        from ..retrieval.embeddings import mix

        if name == "mixed":
            parts = [self.text, self.colla] + ([self.ssl] if self.ssl is not None else [])
            return mix(parts)
        if name == "concat":
            return mix([self.text, self.colla])
        view = getattr(self, name)
        if view is None:
            raise ValueError(f"embedding view '{name}' is not available in this run")
        return mix([view])


def with_context(samples: pa.Table, views: ItemViews, rcfg: RetrievalConfig) -> pa.Table:
    from ..retrieval.history import select_history

    if rcfg.strategy == "recent":
        return select_history(samples, rcfg, None)
    if rcfg.strategy == "hybrid":  # half text, half collaborative (Hybrid-Score baseline)
        return select_history(samples, rcfg, views.get("text"), views.get("colla"))
    return select_history(samples, rcfg, views.get(rcfg.embedding))
