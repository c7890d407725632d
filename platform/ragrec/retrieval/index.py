"""A thin faiss wrapper for nearest-item search.

``faiss`` is imported lazily; when the installed faiss has GPU support and sees a GPU
(``faiss-gpu-cu12`` in the ``gpu`` extra) the flat index is moved to GPU 0 automatically.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

__all__ = ["ItemIndex"]


def _faiss():
    try:
        import faiss
    except ImportError as e:  # pragma: no cover - faiss-cpu is a declared dependency
        raise ImportError("faiss is not installed: pip install faiss-cpu (or the gpu extra: faiss-gpu-cu12)") from e
    return faiss


class ItemIndex:
    """Exact (flat) faiss index over item embeddings.

    Args:
        emb: (n_items, d) embeddings; row i is item id i.
        metric: ``"ip"`` (inner product: use normalised rows for cosine) or ``"l2"``.
    """

    def __init__(self, emb: np.ndarray, metric: Literal["ip", "l2"] = "ip") -> None:
        arr = np.ascontiguousarray(np.asarray(emb, dtype=np.float32))
        if arr.ndim != 2 or arr.shape[0] == 0:
            raise ValueError(f"ItemIndex needs a non-empty (n_items, d) matrix, got shape {arr.shape}")
        if metric not in ("ip", "l2"):
            raise ValueError(f"ItemIndex metric must be 'ip' or 'l2', got {metric!r}")
        faiss = _faiss()
        self.metric = metric
        self.dim = int(arr.shape[1])
        index = faiss.IndexFlatIP(self.dim) if metric == "ip" else faiss.IndexFlatL2(self.dim)
        self.on_gpu = False
        if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:  # pragma: no cover - GPU only
            self._res = faiss.StandardGpuResources()
            index = faiss.index_cpu_to_gpu(self._res, 0, index)
            self.on_gpu = True
        index.add(arr)
        self._index = index

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` items per query.

        Args:
            queries: (m, d) or (d,) array.
            k: neighbours per query; capped at the number of indexed items.

        Returns:
            ``(scores, ids)``, both (m, min(k, n_items)); scores float32 (inner product, or squared L2
            distance for ``"l2"``), ids int64, best first.
        """
        q = np.asarray(queries, dtype=np.float32)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"queries must have shape (m, {self.dim}), got {np.asarray(queries).shape}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        scores, ids = self._index.search(np.ascontiguousarray(q), min(k, len(self)))
        return scores, ids.astype(np.int64, copy=False)
