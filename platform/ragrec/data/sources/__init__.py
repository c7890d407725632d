"""Loaders of the papers' datasets from their official raw files into the canonical tables (docs/datasets.md).

One module per ``data.name`` (the module is the name with ``-`` as ``_``), each with ``load(cfg) -> Dataset`` and
``label_rule(cfg)`` (one line: how its ratings become labels); where the dataset folder may hold files ``load`` does
not read (other Amazon categories, several RecBole datasets, Netflix's probe / qualifying sets), also
``input_files(cfg)``: the files ``load`` reads, whose digests the dataset stage puts in its cache key (without it,
:func:`ragrec.stages.data.input_files` digests every file of the folder):

=================  ============================  =============================================================
``data.name``      module                        raw files
=================  ============================  =============================================================
``ml-10m``         :mod:`.ml_10m`                ``ratings.dat`` / ``movies.dat`` (``::``-separated)
``bookcrossing``   :mod:`.bookcrossing`          ``BX-Book-Ratings.csv`` / ``BX-Books.csv`` / ``BX-Users.csv``
``amazon-2018``    :mod:`.amazon_2018`           ``<Category>_5.json(.gz)`` + ``meta_<Category>.json(.gz)``
``steam``          :mod:`.steam`                 ``steam_reviews.json.gz`` + ``steam_games.json.gz``
``netflix``        :mod:`.netflix`               ``combined_data_*.txt`` (or ``training_set/mv_*.txt``) + titles
``recbole``        :mod:`.recbole`               RecBole atomic files ``<name>.inter`` / ``.item`` / ``.user``
=================  ============================  =============================================================

:func:`ragrec.data.load_dataset` dispatches here; MovieLens-100K/1M, ``generic`` and ``synthetic`` live in
:mod:`ragrec.data.movielens`, :mod:`ragrec.data.generic` and :mod:`ragrec.data.synthetic`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ...config import DataConfig
from ..dataset import Dataset

SOURCES: dict[str, str] = {
    "ml-10m": "ml_10m",
    "bookcrossing": "bookcrossing",
    "amazon-2018": "amazon_2018",
    "steam": "steam",
    "netflix": "netflix",
    "recbole": "recbole",
}

__all__ = ["SOURCES", "label_rule", "load_source", "source_module"]


def source_module(name: str) -> ModuleType:
    """The loader module of dataset ``name`` (a key of :data:`SOURCES`)."""
    return importlib.import_module(f"{__name__}.{SOURCES[name]}")


def label_rule(cfg: DataConfig) -> str:
    """One line saying how the dataset ``cfg.name`` turns its ratings into labels (for ``ragrec data stats``)."""
    if cfg.name in SOURCES:
        return source_module(cfg.name).label_rule(cfg)
    if cfg.name == "generic" and cfg.columns.label is not None:
        return f"label = column '{cfg.columns.label}' of the interactions file"
    return f"label = rating > {cfg.label_threshold:g}"


def load_source(cfg: DataConfig) -> Dataset:
    """Load dataset ``cfg.name`` (a key of :data:`SOURCES`) with its module's ``load``."""
    return source_module(cfg.name).load(cfg)
