"""The :class:`Dataset` bundle of canonical tables and :func:`load_dataset`, the one entry point."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..config import DataConfig
from .errors import DataError
from .schemas import INTERACTIONS, ITEMS, USERS, validate


@dataclass
class Dataset:
    """Canonical tables of one dataset (docs/architecture.md §2), validated on construction.

    Attributes:
        name: dataset name (``"ml-100k"``, ``"ml-1m"``, a key of :data:`ragrec.data.sources.SOURCES`,
            ``"generic"``, ``"synthetic"``).
        interactions: ``(n_ratings,)`` rows of :data:`~ragrec.data.schemas.INTERACTIONS`.
        items: ``(n_items,)`` rows of :data:`~ragrec.data.schemas.ITEMS` (+ extras), row k has item_id k.
        users: ``(n_users,)`` rows of :data:`~ragrec.data.schemas.USERS` (+ profile), row k has user_id k;
            None when the dataset has no user file.
    """

    name: str
    interactions: pa.Table
    items: pa.Table
    users: pa.Table | None = None

    def __post_init__(self) -> None:
        validate(self.interactions, INTERACTIONS, "interactions")
        validate(self.items, ITEMS, "items")
        if self.users is not None:
            validate(self.users, USERS, "users")
        check_dense(self.items, "item_id", "items")
        if self.users is not None:
            check_dense(self.users, "user_id", "users")
        for col, n in (("item_id", self.n_items), ("user_id", self.n_users)):
            ids = self.interactions.column(col)
            if len(ids) and (pc.min(ids).as_py() < 0 or pc.max(ids).as_py() >= n):
                raise DataError(
                    f"{col} outside 0..{n - 1}",
                    file="interactions table",
                    field=col,
                    fix="map raw ids to the dense ids of the items/users tables",
                )

    @property
    def n_items(self) -> int:
        return self.items.num_rows

    @property
    def n_users(self) -> int:
        if self.users is not None:
            return self.users.num_rows
        ids = self.interactions.column("user_id")
        return int(pc.max(ids).as_py()) + 1 if len(ids) else 0


def check_dense(table: pa.Table, col: str, name: str, fix: str | None = None) -> None:
    """Row k of the ``name`` table must hold id k in ``col`` (dense ids in row order); else a DataError with
    ``fix`` (default: sort and number them)."""
    ids = table.column(col).to_numpy()
    if not np.array_equal(ids, np.arange(len(ids))):
        raise DataError(
            f"{col} is not 0..{len(ids) - 1} in row order",
            file=f"{name} table",
            field=col,
            fix=fix or f"sort the {name} by dense id and number them 0..n-1",
        )


def load_dataset(cfg: DataConfig) -> Dataset:
    """Load the dataset ``cfg.name`` from ``cfg.resolved_path()`` (or generate it, for ``synthetic``); the papers'
    datasets and RecBole atomic files are read by :mod:`ragrec.data.sources` (docs/datasets.md).

    Raises:
        DataError: the data folder cannot be resolved, a file is missing or malformed.
    """
    if cfg.name == "synthetic":
        from .synthetic import make_synthetic

        return make_synthetic(cfg.synthetic, label_threshold=cfg.label_threshold)
    if cfg.name == "generic":
        from .generic import load_generic

        return load_generic(cfg)
    from .sources import SOURCES, load_source

    if cfg.name in SOURCES:  # the papers' datasets and RecBole atomic files: one module each (docs/datasets.md)
        return load_source(cfg)
    try:
        path = cfg.resolved_path()
    except ValueError as e:
        raise DataError(str(e), file=cfg.name) from None
    if cfg.name == "ml-100k":
        from .movielens import load_ml100k

        return load_ml100k(path, label_threshold=cfg.label_threshold)
    if cfg.name == "ml-1m":
        from .movielens import load_ml1m

        return load_ml1m(path, label_threshold=cfg.label_threshold)
    raise DataError(
        f"unknown dataset '{cfg.name}'",
        field="data.name",
        fix=f"use ml-100k, ml-1m, {', '.join(SOURCES)}, generic or synthetic",
    )
