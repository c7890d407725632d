"""The ``full_ranking`` data protocol (ER2ALM §4.1, after LightGCN / LLMRec): a per-user random split of positives.

Steps of :func:`full_ranking_split`:

1. **Positives.** Only interactions with label 1 (``rating > data.label_threshold`` unless the table came
   labelled) count; negatives (label 0) are dropped. A (user, item) pair that is positive more than once is
   kept once (distinct pairs), so an item can never sit in two splits of the same user.
2. **Per-user random split.** Each user's distinct positives, in item-id order, get one random key each
   from ``np.random.default_rng(seed)`` (one draw for all pairs, ordered by (user_id, item_id)); sorting by
   (user, key) shuffles every user's positives once, and the shuffled list is cut by the ``data.split``
   fractions with the rounding of :func:`~ragrec.data.protocols.split_bounds`: a user with ``n`` positives
   has train = the first ``floor(s0 n + 1e-6)``, valid up to ``floor((s0 + s1) n + 1e-6)``, test the rest.
   With 8:1:1 a user with 10 positives gets 8 / 1 / 1, with 9: 7 / 1 / 1, with 5: 4 / 0 / 1, with 1: 0 / 0 / 1
   (every user with a positive keeps at least one test positive while ``s2 > 0``). The split does not depend
   on the row order of the interactions table, only on the set of positive pairs and the seed.
3. **Output.** One row per distinct positive pair, :data:`~ragrec.data.schemas.FULL_RANKING` (``user_id``,
   ``item_id``, ``split``), ordered by (user_id, split train/valid/test, item_id).

:func:`split_matrices` turns the table into ``(num_users, num_items)`` CSR matrices, the input of
:func:`ragrec.evaluation.full_ranking.full_ranking_metrics` (all-ranking: every item the user has no TRAIN
positive of is ranked). Everything is numpy-vectorised: no loop per user.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from ..config import DataConfig
from .errors import DataError
from .protocols import _interaction_ids, _labels, _split_strings, per_user_split
from .schemas import FULL_RANKING, SPLITS, validate

__all__ = ["full_ranking_split", "split_matrices"]


def _id_space(ids: np.ndarray, given: int | None, column: str, table: str) -> int:
    """Size of a dense id space: ``given`` (checked to cover ``ids``) or ``max(ids) + 1``."""
    if len(ids) and int(ids.min()) < 0:
        raise DataError(
            f"{column} {int(ids.min())} is negative",
            file=f"{table} table",
            field=column,
            fix="use dense ids 0..n-1 (the loaders map raw ids to dense ones)",
        )
    top = int(ids.max()) + 1 if len(ids) else 0
    if given is None:
        return top
    if given < top:
        noun = "num_users" if column == "user_id" else "num_items"
        raise DataError(
            f"{noun}={given} but the {table} hold {column} {top - 1}",
            file=f"{table} table",
            field=column,
            fix=f"pass the size of the {column.split('_')[0]}s table as {noun} (ids are dense 0..{noun}-1)",
        )
    return int(given)


def full_ranking_split(
    interactions: pa.Table,
    cfg: DataConfig,
    *,
    seed: int,
    num_users: int | None = None,
    num_items: int | None = None,
) -> pa.Table:
    """ER2ALM's all-ranking data: distinct positive (user, item) pairs cut per user at random by ``data.split``.

    See the module docstring for the steps and the rounding.

    Args:
        interactions: ``(n,)`` :data:`~ragrec.data.schemas.INTERACTIONS` table.
        cfg: the data config (``label_threshold``, ``split``).
        seed: seed of the ``np.random.default_rng`` that shuffles each user's positives.
        num_users: size of the user id space, checked to cover the ids (default: max user_id + 1).
        num_items: size of the item id space, checked to cover the ids (default: max item_id + 1).

    Returns:
        ``(p,)`` table with schema :data:`~ragrec.data.schemas.FULL_RANKING` (``p`` = distinct positive
        pairs), ordered by (user_id, split train/valid/test, item_id).

    Raises:
        DataError: an empty table, ids outside ``num_users`` / ``num_items``, or an empty test split (no
            positives, or ``data.split`` leaves no test positive to any user).
    """
    user_all, item_all = _interaction_ids(interactions)
    _id_space(user_all, num_users, "user_id", "interactions")
    n_items = max(_id_space(item_all, num_items, "item_id", "interactions"), 1)
    label = _labels(interactions, cfg.label_threshold)

    is_pos = label == 1
    keys = np.unique(user_all[is_pos].astype(np.int64) * n_items + item_all[is_pos])  # sorted (user, item)
    user, item = keys // n_items, keys % n_items

    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(len(keys)), user))  # grouped by user, shuffled inside each user
    user, item = user[order], item[order]
    _, split = per_user_split(user, cfg.split)

    if not (split == 2).any():
        raise DataError(
            f"split 'test' is empty: {int(is_pos.sum())} of {len(label)} interactions are positives "
            f"(label_threshold={cfg.label_threshold}), {len(keys)} distinct positive pairs of "
            f"{len(np.unique(user))} users, split={tuple(cfg.split)}",
            field="data.split",
            fix="give the test split a positive fraction (e.g. data.split: [0.8, 0.1, 0.1]), lower "
            "data.label_threshold, or use data with positive interactions",
        )

    out = np.lexsort((item, split, user))
    return pa.Table.from_arrays(
        [pa.array(user[out], pa.int64()), pa.array(item[out], pa.int64()), _split_strings(split[out])],
        schema=FULL_RANKING,
    )


def split_matrices(table: pa.Table, num_users: int, num_items: int) -> dict[str, sp.csr_matrix]:
    """The splits of a :data:`~ragrec.data.schemas.FULL_RANKING` table as user x item 0/1 matrices.

    Args:
        table: ``(p,)`` :func:`full_ranking_split` output.
        num_users: ``U``, rows of every matrix (user ids must be ``< U``).
        num_items: ``I``, columns of every matrix (item ids must be ``< I``).

    Returns:
        ``{"train", "valid", "test"}`` -> ``(U, I)`` ``scipy.sparse.csr_matrix`` of float32 ones at the
        split's (user, item) pairs, canonical (sorted indices, no duplicates).

    Raises:
        DataError: a missing / mistyped column, an id outside ``U`` / ``I``, or a split value other than
            train / valid / test.
    """
    validate(table, FULL_RANKING, "full_ranking")
    user = table.column("user_id").to_numpy()
    item = table.column("item_id").to_numpy()
    _id_space(user, num_users, "user_id", "full_ranking")
    _id_space(item, num_items, "item_id", "full_ranking")
    col = table.column("split").combine_chunks()
    code = pc.index_in(col, value_set=pa.array(SPLITS, col.type))
    if code.null_count:
        row = int(np.flatnonzero(code.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError(
            f"split {col[row].as_py()!r} in row {row} is not one of {', '.join(SPLITS)}",
            file="full_ranking table",
            field="split",
            fix="build the table with ragrec.data.full_ranking.full_ranking_split",
        )
    code = code.to_numpy(zero_copy_only=False)
    out = {}
    for k, name in enumerate(SPLITS):
        m = code == k
        mat = sp.csr_matrix((np.ones(int(m.sum()), dtype=np.float32), (user[m], item[m])), shape=(num_users, num_items))
        mat.sum_duplicates()
        mat.data[:] = 1.0  # a pair listed twice is still one positive
        out[name] = mat
    return out
