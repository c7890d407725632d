"""Item embedding utilities for RALLRec retrieval (paper §2.2.4).

* :func:`normalize` — row-wise L2 normalisation.
* :func:`mix` — the embedding mixture of Eq. 7, ``e_item = [ē_text || ē_colla || ē_ssl]``.
* :func:`pca` — PCA reduction of text embeddings (reference dimension 128), via scikit-learn.
"""

from __future__ import annotations

import numpy as np

__all__ = ["mix", "normalize", "pca"]


def _as_matrix(x: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (n_items, dim) array, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    if not np.isfinite(arr).all():
        bad = int(np.argwhere(~np.isfinite(arr))[0, 0])
        raise ValueError(f"{name} has NaN/inf values (first in row {bad}); fix the embedding stage output")
    return arr


def normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Row-wise L2 normalisation.

    Args:
        x: (n, d) array.
        eps: rows with norm below ``eps`` are left as zeros instead of being divided by ~0.

    Returns:
        (n, d) float32 array whose non-zero rows have unit L2 norm.
    """
    arr = _as_matrix(x, "x").astype(np.float32, copy=False)
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    return (arr / np.maximum(norms, eps)).astype(np.float32, copy=False)


def mix(parts: list[np.ndarray]) -> np.ndarray:
    """Eq. 7: concatenate row-normalised embeddings of the same items.

    Args:
        parts: list of (n_items, d_j) arrays, e.g. ``[e_text, e_colla, e_ssl]``.

    Returns:
        (n_items, sum_j d_j) float32 array; each part contributes a unit-norm block, so the dot product
        of two mixed rows is the sum of the per-part cosine similarities.
    """
    if not parts:
        raise ValueError("mix() needs at least one embedding matrix")
    mats = [_as_matrix(p, f"parts[{i}]") for i, p in enumerate(parts)]
    rows = {m.shape[0] for m in mats}
    if len(rows) != 1:
        shapes = [m.shape for m in mats]
        raise ValueError(f"mix(): all parts must describe the same items (same row count), got shapes {shapes}")
    return np.concatenate([normalize(m) for m in mats], axis=1)


def pca(x: np.ndarray, dim: int, seed: int = 0) -> np.ndarray:
    """Project ``x`` onto its first ``dim`` principal components (sklearn ``PCA``).

    Args:
        x: (n, d) array.
        dim: requested output dimension; capped at ``min(n, d)``.
        seed: ``random_state`` for the randomized solver.

    Returns:
        (n, min(dim, n, d)) float32 array.
    """
    arr = _as_matrix(x, "x")
    if dim < 1:
        raise ValueError(f"pca dim must be >= 1, got {dim} (set embedding.pca_dim to null to keep all dims)")
    from sklearn.decomposition import PCA  # lazy: keeps `import ragrec.retrieval` light

    n, d = arr.shape
    k = min(dim, n, d)
    return PCA(n_components=k, random_state=seed).fit_transform(arr.astype(np.float64)).astype(np.float32)
