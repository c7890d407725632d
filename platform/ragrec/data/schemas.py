"""Arrow schemas of the canonical tables (docs/architecture.md §2) and a validator.

All ids are dense ``int64`` in ``0..n-1``; the raw ids of the source files are kept in
``raw_user_id`` / ``raw_item_id`` columns of ``users`` / ``items``. The schemas below list the *base*
columns every dataset has; loaders may append dataset-specific columns (e.g. ``release_date``).

The ``interactions`` table records in its schema metadata whether ``label`` was derived from the
rating (``{LABEL_SOURCE_KEY: "rating"}``) or given by the user's data (``"given"``); the sample
protocols recompute labels from ratings in the first case and keep them in the second.
"""

from __future__ import annotations

import pyarrow as pa

from .errors import DataError

LABEL_SOURCE_KEY = b"ragrec.label_source"
LABEL_FROM_RATING = b"rating"
LABEL_GIVEN = b"given"

INTERACTIONS = pa.schema(
    [
        pa.field("user_id", pa.int64(), nullable=False),
        pa.field("item_id", pa.int64(), nullable=False),
        pa.field("rating", pa.float32()),  # null when the data came with labels only
        pa.field("timestamp", pa.int64(), nullable=False),  # seconds since the epoch
        pa.field("label", pa.int8(), nullable=False),  # 1 = liked / clicked
    ]
)

ITEMS = pa.schema(
    [
        pa.field("item_id", pa.int64(), nullable=False),
        pa.field("title", pa.string()),
        pa.field("genres", pa.list_(pa.string())),
        pa.field("year", pa.int32()),  # null when unknown
    ]
)

USERS = pa.schema([pa.field("user_id", pa.int64(), nullable=False)])

SAMPLES = pa.schema(
    [
        pa.field("sample_id", pa.int64(), nullable=False),
        pa.field("user_id", pa.int64(), nullable=False),
        pa.field("item_id", pa.int64(), nullable=False),
        pa.field("label", pa.int8(), nullable=False),
        pa.field("rating", pa.float32()),
        pa.field("timestamp", pa.int64(), nullable=False),
        pa.field("history_item_ids", pa.list_(pa.int64())),  # oldest first
        pa.field("history_ratings", pa.list_(pa.float32())),  # aligned with history_item_ids
        pa.field("split", pa.string()),  # 'train' | 'valid' | 'test'
    ]
)

# the ``temporal`` protocol appends the label of every history interaction (labelled data has null
# ratings, and SCoRe's prompt lists the user's liked items)
TEMPORAL_SAMPLES = pa.schema(
    list(SAMPLES) + [pa.field("history_labels", pa.list_(pa.int8()))]  # aligned with history_item_ids
)

# the ``rerank`` protocol (UR4Rec / KAR / LibRerank, :mod:`ragrec.data.rerank`): one row per positive target
# with its candidate list; ``candidates`` always holds ``data.rerank.num_candidates`` distinct items
RERANK_SAMPLES = pa.schema(
    [
        pa.field("sample_id", pa.int64(), nullable=False),
        pa.field("user_id", pa.int64(), nullable=False),
        pa.field("item_id", pa.int64(), nullable=False),  # the target (a positive of the user)
        pa.field("timestamp", pa.int64(), nullable=False),  # of the target interaction
        pa.field("history", pa.list_(pa.int64())),  # last history_len positives before the target, oldest first
        pa.field("candidates", pa.list_(pa.int64())),  # the target + never-interacted negatives, length C
        pa.field("target_index", pa.int32(), nullable=False),  # candidates[target_index] == item_id
        pa.field("split", pa.string()),  # 'train' | 'valid' | 'test'
    ]
)

# the ``full_ranking`` protocol (ER2ALM, :mod:`ragrec.data.full_ranking`): one row per distinct positive
# (user, item) pair with the split it falls in (a per-user random 8:1:1 cut); every unseen item is ranked
FULL_RANKING = pa.schema(
    [
        pa.field("user_id", pa.int64(), nullable=False),
        pa.field("item_id", pa.int64(), nullable=False),
        pa.field("split", pa.string(), nullable=False),  # 'train' | 'valid' | 'test'
    ]
)

SPLITS = ("train", "valid", "test")


def validate(table: pa.Table, schema: pa.Schema, name: str) -> pa.Table:
    """Check that ``table`` has every column of ``schema`` with exactly that type.

    Extra columns are allowed (dataset extras). Returns ``table`` unchanged so calls can be chained.

    Raises:
        DataError: naming the table, every missing column and every mistyped column.
    """
    problems = []
    have = set(table.schema.names)
    for f in schema:
        if f.name not in have:
            problems.append(f"missing column '{f.name}' ({f.type})")
            continue
        got = table.schema.field(f.name).type
        if not got.equals(f.type):
            problems.append(f"column '{f.name}' has type {got}, expected {f.type}")
        elif not f.nullable and table.column(f.name).null_count:
            problems.append(f"column '{f.name}' has {table.column(f.name).null_count} nulls, expected none")
    if problems:
        raise DataError(
            "; ".join(problems) + f" (columns present: {', '.join(table.schema.names)})",
            file=f"{name} table",
            fix=f"build the '{name}' table with ragrec.data.schemas.{name.upper()} (cast the columns listed)",
        )
    return table


def label_is_given(interactions: pa.Table) -> bool:
    """True when the interactions' labels came with the data rather than from ratings."""
    meta = interactions.schema.metadata or {}
    return meta.get(LABEL_SOURCE_KEY) == LABEL_GIVEN


def with_label_source(interactions: pa.Table, given: bool) -> pa.Table:
    """Return ``interactions`` with the label-source marker set in its schema metadata."""
    meta = dict(interactions.schema.metadata or {})
    meta[LABEL_SOURCE_KEY] = LABEL_GIVEN if given else LABEL_FROM_RATING
    return interactions.replace_schema_metadata(meta)
