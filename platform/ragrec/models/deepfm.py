"""DeepFM (Guo et al., IJCAI 2017): the ID-based CTR baseline of RALLRec Table 1.

Fields (one embedding each): ``user_id``, ``item_id`` and the side features of the canonical
``users`` / ``items`` tables. Defaults: user ``gender``, ``age`` (bucketed, ML-1M brackets),
``occupation``; item ``genres`` (multi-hot, an ``EmbeddingBag`` with mode ``"mean"``). The target's
history is not used (an ID-based model).

Logit = bias + first order (a scalar weight per active feature) + FM second order
``0.5 * sum_d[(sum_f e_f)^2 - sum_f e_f^2]`` + DNN(concat_f e_f).

Feature encoding (:func:`build_spec`, :func:`encode_features`) is vectorised: each side-feature
column is encoded once per user / item row with Arrow compute (``index_in`` against the vocabulary,
``np.digitize`` against bucket edges), then gathered by the samples' ids with one numpy take.
Index 0 of every non-id field is "unknown / null / padding" (a zero vector, excluded from bag means).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from pydantic import BaseModel, ConfigDict
from pydantic import Field as PField
from torch import nn

from ragrec.data.dataset import check_dense
from ragrec.data.errors import DataError, require_column

Kind = Literal["id", "cat", "bucket", "bag"]

DEFAULT_USER_FIELDS = ("gender", "age", "occupation")
DEFAULT_ITEM_FIELDS = ("genres",)
ML1M_AGE_EDGES = (18.0, 25.0, 35.0, 45.0, 50.0, 56.0)
"""MovieLens-1M age brackets (<18, 18-24, 25-34, 35-44, 45-49, 50-55, 56+); ML-1M's codes fall in the right bins."""


class DeepFMConfig(BaseModel):
    """Hyper-parameters of the DeepFM baseline (unknown keys are an error)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    user_fields: list[str] | None = PField(
        None, description=f"users columns used as fields; None = those of {DEFAULT_USER_FIELDS} present"
    )
    item_fields: list[str] | None = PField(
        None, description=f"items columns used as fields; None = those of {DEFAULT_ITEM_FIELDS} present"
    )
    bins: dict[str, list[float]] = PField(
        default_factory=lambda: {"age": list(ML1M_AGE_EDGES)},
        description="bucket edges of numeric columns (np.digitize); numeric columns without edges are categorical",
    )
    embed_dim: int = PField(16, ge=1)
    hidden: list[int] = PField(default_factory=lambda: [256, 256])
    dropout: float = PField(0.2, ge=0.0, lt=1.0)
    lr: float = PField(1e-3, gt=0.0)
    weight_decay: float = PField(0.0, ge=0.0)
    batch_size: int = PField(1024, ge=1)
    epochs: int = PField(10, ge=1)
    patience: int = PField(2, ge=1, description="stop after this many epochs without a better valid AUC")
    eval_batch_size: int = PField(16384, ge=1)


@dataclass(frozen=True)
class FieldSpec:
    """One DeepFM field.

    ``name``: ``"user_id"``, ``"item_id"`` or ``"{user|item}_{column}"``; ``source``: ``"users"`` /
    ``"items"`` (side features) or ``"samples"`` (the two ids); ``size``: embedding rows (index 0 =
    unknown for non-id fields); ``vocab``: values of ``cat`` / ``bag`` fields (index = position + 1);
    ``edges``: bucket edges of ``bucket`` fields (index = ``np.digitize(value, edges) + 1``).
    """

    name: str
    source: str
    column: str
    kind: Kind
    size: int
    vocab: tuple = ()
    edges: tuple[float, ...] = ()


@dataclass(frozen=True)
class FeatureSpec:
    """All fields of a DeepFM model, in model order, plus the catalog sizes."""

    fields: tuple[FieldSpec, ...]
    n_users: int
    n_items: int
    bag_len: dict[str, int] = field(default_factory=dict)  # padded width of each bag field

    def to_json(self) -> str:
        return json.dumps(
            {
                "fields": [asdict(f) for f in self.fields],
                "n_users": self.n_users,
                "n_items": self.n_items,
                "bag_len": self.bag_len,
            }
        )

    @staticmethod
    def from_json(text: str) -> FeatureSpec:
        d = json.loads(text)
        fields = tuple(FieldSpec(**{**f, "vocab": tuple(f["vocab"]), "edges": tuple(f["edges"])}) for f in d["fields"])
        return FeatureSpec(fields, int(d["n_users"]), int(d["n_items"]), {k: int(v) for k, v in d["bag_len"].items()})


# ----------------------------------------------------------------------------------------------------
# feature spec and encoding


def _check_dense(table: pa.Table, id_col: str, what: str) -> None:
    require_column(
        table, id_col, what, f"no '{id_col}' column", f"pass the canonical {what} table (ragrec.data.load_dataset)"
    )
    check_dense(table, id_col, what, fix=f"sort the {what} table by dense id (row k must hold {id_col} k)")


def _column_spec(table: pa.Table, what: str, column: str, prefix: str, bins: dict[str, list[float]]) -> FieldSpec:
    """The field of one side-feature column; its kind follows the Arrow type."""
    fix = f"list only existing {what} columns in deepfm {prefix}_fields (or leave it None for the defaults)"
    require_column(table, column, what, f"unknown column '{column}'", fix)
    col = table.column(column)
    typ = col.type
    name = f"{prefix}_{column}"
    if pa.types.is_list(typ) or pa.types.is_large_list(typ):
        vocab = _vocab(pc.list_flatten(col))
        return FieldSpec(name, what, column, "bag", len(vocab) + 1, vocab)
    if column in bins:
        if not (pa.types.is_integer(typ) or pa.types.is_floating(typ)):
            raise DataError(
                f"bins given for non-numeric column '{column}' ({typ})",
                file=f"{what} table",
                field=column,
                fix=f"remove deepfm bins.{column}",
            )
        edges = tuple(float(e) for e in bins[column])
        if list(edges) != sorted(set(edges)):
            raise ValueError(f"deepfm bins.{column} must be strictly increasing, got {list(edges)}")
        return FieldSpec(name, what, column, "bucket", len(edges) + 2, (), edges)
    if pa.types.is_floating(typ):
        raise DataError(
            f"float column '{column}' has no bucket edges",
            file=f"{what} table",
            field=column,
            fix=f"set deepfm bins.{column} = [edges...] or leave the column out",
        )
    if pa.types.is_integer(typ) or pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_boolean(typ):
        vocab = _vocab(col)
        return FieldSpec(name, what, column, "cat", len(vocab) + 1, vocab)
    raise DataError(
        f"column '{column}' has unsupported type {typ}",
        file=f"{what} table",
        field=column,
        fix="use string / integer / list<string> columns, or numeric ones with deepfm bins",
    )


def _vocab(values: pa.Array | pa.ChunkedArray) -> tuple:
    """Sorted distinct non-null values (as Python scalars)."""
    uniq = pc.unique(pc.drop_null(values))
    return tuple(uniq.take(pc.sort_indices(uniq)).to_pylist())


def build_spec(
    items: pa.Table, users: pa.Table | None, cfg: DeepFMConfig | None = None, *, n_users: int | None = None
) -> FeatureSpec:
    """Fields of a DeepFM over ``items`` (I rows) and ``users`` (U rows).

    Without a users table the user side is the id alone and ``n_users`` (ids ``0..n_users-1``) is
    required.

    Raises:
        DataError: a configured column does not exist / has an unusable type, or a table is not
            indexed by its dense id.
    """
    cfg = cfg or DeepFMConfig()
    _check_dense(items, "item_id", "items")
    user_cols: list[str] = []
    if users is None and n_users is None:
        raise DataError(
            "no users table and no n_users",
            file="users table",
            fix="pass the users table, or n_users = number of dense user ids",
        )
    if users is not None:
        _check_dense(users, "user_id", "users")
        n_users = users.num_rows
        names = users.schema.names
        user_cols = [c for c in DEFAULT_USER_FIELDS if c in names] if cfg.user_fields is None else cfg.user_fields
    elif cfg.user_fields:
        raise DataError(
            f"user_fields {cfg.user_fields} given but there is no users table",
            file="users table",
            fix="pass the users table or set deepfm user_fields to []",
        )
    item_names = items.schema.names
    item_cols = [c for c in DEFAULT_ITEM_FIELDS if c in item_names] if cfg.item_fields is None else cfg.item_fields
    fields = [
        FieldSpec("user_id", "samples", "user_id", "id", n_users),
        FieldSpec("item_id", "samples", "item_id", "id", items.num_rows),
    ]
    fields += [_column_spec(users, "users", c, "user", cfg.bins) for c in user_cols]
    fields += [_column_spec(items, "items", c, "item", cfg.bins) for c in item_cols]
    bag_len = {}
    for f in fields:
        if f.kind == "bag":
            table = users if f.source == "users" else items
            lengths = pc.fill_null(pc.list_value_length(table.column(f.column)), 0).to_numpy()
            bag_len[f.name] = max(int(lengths.max(initial=0)), 1)
    return FeatureSpec(tuple(fields), n_users, items.num_rows, bag_len)


def _index_in(values: pa.Array | pa.ChunkedArray, vocab: tuple) -> np.ndarray:
    """``(n,) int64``: position + 1 of each value in ``vocab``; 0 for null / unknown."""
    if not vocab:
        return np.zeros(len(values), dtype=np.int64)
    pos = pc.index_in(values, value_set=pa.array(list(vocab), type=values.type))
    return pc.fill_null(pos, -1).to_numpy(zero_copy_only=False).astype(np.int64) + 1


def _encode_rows(table: pa.Table, f: FieldSpec, bag_len: int) -> np.ndarray:
    """Field ``f`` for every row of ``table``: (n,) int64, or (n, bag_len) for bags (0-padded)."""
    fix = "pass the same users/items tables the DeepFM model was trained with"
    require_column(table, f.column, f.source, f"unknown column '{f.column}'", fix)
    col = table.column(f.column)
    if f.kind == "cat":
        return _index_in(col, f.vocab)
    if f.kind == "bucket":
        vals = col.to_numpy(zero_copy_only=False).astype(np.float64)  # nulls -> NaN
        idx = np.digitize(vals, np.asarray(f.edges)) + 1
        return np.where(np.isnan(vals), 0, idx).astype(np.int64)
    # bag: flat values -> vocab positions, scattered into a padded (n, bag_len) matrix
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    flat = pc.list_flatten(col)
    rows = pc.list_parent_indices(col).to_numpy()
    lengths = pc.fill_null(pc.list_value_length(col), 0).to_numpy().astype(np.int64)
    starts = np.cumsum(lengths) - lengths
    slot = np.arange(len(flat)) - np.repeat(starts, lengths)
    out = np.zeros((table.num_rows, bag_len), dtype=np.int64)
    keep = slot < bag_len  # longer lists than seen at training time are truncated
    out[rows[keep], slot[keep]] = _index_in(flat, f.vocab)[keep]
    return out


def _ids(samples: pa.Table, col: str, n: int, what: str) -> np.ndarray:
    require_column(samples, col, "samples", f"no '{col}' column", "pass a samples table (ragrec.data.rallrec_samples)")
    arr = samples.column(col)
    if not pa.types.is_integer(arr.type) or arr.null_count:
        raise DataError(
            f"'{col}' must be non-null integer dense ids, got {arr.type} with {arr.null_count} nulls",
            file="samples table",
            field=col,
            fix="use the dense ids of the canonical tables",
        )
    ids = arr.to_numpy().astype(np.int64)
    bad = np.flatnonzero((ids < 0) | (ids >= n))
    if len(bad):
        raise DataError(
            f"{col}={int(ids[bad[0]])} is outside 0..{n - 1} ({what} has {n} rows)",
            file="samples table",
            line=int(bad[0]),
            line_word="row",
            field=col,
            fix=f"use the {what} table the samples were built from",
        )
    return ids


def encode_features(
    samples: pa.Table, items: pa.Table, users: pa.Table | None, spec: FeatureSpec | None = None
) -> dict[str, torch.Tensor]:
    """Index tensors of every field for ``samples`` (N rows).

    Returns ``{field name: LongTensor}``: (N,) for single-valued fields, (N, L) for bag fields
    (0-padded). ``spec`` None builds it from ``items`` / ``users`` with the default config; pass the
    trained model's spec at prediction time so that vocabularies match.

    Raises:
        DataError: a missing column, non-integer ids or ids outside the tables.
    """
    if spec is None:
        n_users = None if users is not None else int(pc.max(samples["user_id"]).as_py() or 0) + 1
        spec = build_spec(items, users, n_users=n_users)
    uid = _ids(samples, "user_id", spec.n_users, "users")
    iid = _ids(samples, "item_id", spec.n_items, "items")
    if users is not None and users.num_rows != spec.n_users:
        raise DataError(
            f"users table has {users.num_rows} rows, the model was built for {spec.n_users}",
            file="users table",
            fix="pass the users table the model was trained with",
        )
    if items.num_rows != spec.n_items:
        raise DataError(
            f"items table has {items.num_rows} rows, the model was built for {spec.n_items}",
            file="items table",
            fix="pass the items table the model was trained with",
        )
    out: dict[str, torch.Tensor] = {}
    for f in spec.fields:
        if f.kind == "id":
            out[f.name] = torch.from_numpy(uid if f.column == "user_id" else iid)
            continue
        table = users if f.source == "users" else items
        if table is None:
            raise DataError(
                f"field {f.name} needs the users table",
                file="users table",
                fix="pass the users table the model was trained with",
            )
        per_row = _encode_rows(table, f, spec.bag_len.get(f.name, 1))
        out[f.name] = torch.from_numpy(per_row[uid if f.source == "users" else iid])
    return out


# ----------------------------------------------------------------------------------------------------
# model


class DeepFM(nn.Module):
    """DeepFM over the fields of ``spec``: ``forward(x) -> (B,)`` logits for a dict of index tensors.

    Embeddings are N(0, 0.01) (row 0 of non-id fields stays zero: unknown / padding); bag fields are
    the mean of their non-padding members (``EmbeddingBag(mode="mean", padding_idx=0)``).
    """

    def __init__(
        self,
        spec: FeatureSpec,
        embed_dim: int = 16,
        hidden: list[int] | tuple[int, ...] = (256, 256),
        dropout: float = 0.2,
    ):
        super().__init__()
        self.names = [f.name for f in spec.fields]
        self.bags = {f.name for f in spec.fields if f.kind == "bag"}
        self.first = nn.ModuleDict({f.name: self._table(f, 1) for f in spec.fields})
        self.second = nn.ModuleDict({f.name: self._table(f, embed_dim) for f in spec.fields})
        self.bias = nn.Parameter(torch.zeros(1))
        layers: list[nn.Module] = []
        width = len(spec.fields) * embed_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        layers.append(nn.Linear(width, 1))
        self.dnn = nn.Sequential(*layers)

    @staticmethod
    def _table(f: FieldSpec, dim: int) -> nn.Module:
        pad = None if f.kind == "id" else 0
        emb = (
            nn.EmbeddingBag(f.size, dim, mode="mean", padding_idx=0)
            if f.kind == "bag"
            else nn.Embedding(f.size, dim, padding_idx=pad)
        )
        nn.init.normal_(emb.weight, std=0.01)
        if pad is not None:
            with torch.no_grad():
                emb.weight[pad].zero_()
        return emb

    def forward(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        missing = [n for n in self.names if n not in x]
        if missing:
            raise KeyError(f"DeepFM.forward: missing fields {missing} (have {sorted(x)})")
        first = torch.stack([self.first[n](x[n]).squeeze(-1) for n in self.names], dim=1).sum(1)  # (B,)
        emb = torch.stack([self.second[n](x[n]) for n in self.names], dim=1)  # (B, F, d)
        fm = 0.5 * (emb.sum(1).pow(2) - emb.pow(2).sum(1)).sum(1)  # (B,)
        deep = self.dnn(emb.flatten(1)).squeeze(-1)  # (B,)
        return self.bias + first + fm + deep


def build_model(spec: FeatureSpec, cfg: DeepFMConfig) -> DeepFM:
    return DeepFM(spec, cfg.embed_dim, cfg.hidden, cfg.dropout)


def config_from(cfg: dict[str, Any] | DeepFMConfig | None) -> DeepFMConfig:
    """Validated :class:`DeepFMConfig` (pydantic ValidationError names an unknown / bad key)."""
    if isinstance(cfg, DeepFMConfig):
        return cfg
    return DeepFMConfig.model_validate(cfg or {})
