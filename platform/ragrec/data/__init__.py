"""Datasets -> canonical Arrow tables (interactions, items, users) -> protocol samples.

Entry points: :func:`load_dataset` (by config), :func:`rallrec_samples` (CTR samples),
:func:`fetch` (explicit download of the official archives), :class:`DataError` (every input problem).
"""

from .dataset import Dataset, load_dataset
from .errors import DataError
from .fetch import fetch, verify
from .protocols import rallrec_samples

__all__ = ["Dataset", "DataError", "fetch", "load_dataset", "rallrec_samples", "verify"]
