"""Datasets -> canonical Arrow tables (interactions, items, users) -> protocol samples.

Entry points: :func:`load_dataset` (by config), :func:`build_samples` (CTR samples of
``data.protocol``: :func:`rallrec_samples` or :func:`temporal_samples`),
:func:`fetch` (explicit download of the official archives), :class:`DataError` (every input problem).
"""

from .dataset import Dataset, load_dataset
from .errors import DataError
from .fetch import fetch, verify
from .protocols import build_samples, rallrec_samples, temporal_samples

__all__ = [
    "DataError",
    "Dataset",
    "build_samples",
    "fetch",
    "load_dataset",
    "rallrec_samples",
    "temporal_samples",
    "verify",
]
