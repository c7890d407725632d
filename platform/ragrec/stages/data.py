"""The data stages every method starts from: ``dataset`` (the raw files, normalised) and ``samples`` (the
CTR samples of the configured protocol with their split), plus reading the optional users table.

The ``dataset`` key holds the size and sha256 of every file the loader reads (:func:`input_files`), so an
in-place edit of a data file gives a new key (and, through the content-derived keys, new downstream keys)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from ..artifacts import Artifact, ArtifactStore, spec_fields
from ..config import DataConfig, RunConfig

_MOVIELENS_FILES = {
    "ml-100k": ("u.data", "u.item", "u.genre", "u.user"),
    "ml-1m": ("ratings.dat", "movies.dat", "users.dat"),
}


def input_files(data: DataConfig) -> list[tuple[str, Path]]:
    """``(label, path)`` of every raw file the dataset's loader reads: MovieLens-100K/1M their files, ``generic``
    its ``*_file`` fields (label: the field), ``synthetic`` none; another dataset (``ragrec.data.sources``) the
    files its module's ``input_files(cfg)`` names when it has one, else every file under ``data.path`` (a file
    path: it and its siblings of the same stem, RecBole's ``.inter`` / ``.item`` / ``.user``), labelled by their
    path relative to it. The corpus is read by its own stage."""
    if data.name == "synthetic":
        return []
    if data.name == "generic":
        from ..data.generic import _resolve  # the loader's own resolution: relative to data.path when set

        fields = ("interactions_file", "items_file", "users_file")
        return [(f, _resolve(data, getattr(data, f))) for f in fields if getattr(data, f) is not None]
    path = data.resolved_path()
    if path is None:
        return []
    if data.name in _MOVIELENS_FILES:
        return [(name, path / name) for name in _MOVIELENS_FILES[data.name]]
    from ..data.sources import SOURCES, source_module

    if data.name in SOURCES and hasattr(source_module(data.name), "input_files"):
        files = [Path(f) for f in source_module(data.name).input_files(data)]
        return [(f.name, f) for f in files]
    if path.is_file():
        return [(f.name, f) for f in sorted(path.parent.glob(f"{path.stem}.*")) if f.is_file()]
    files = sorted(f for f in path.rglob("*") if f.is_file() and not f.name.startswith("."))
    return [(f.relative_to(path).as_posix(), f) for f in files]


def dataset_stage(store: ArtifactStore, cfg: RunConfig) -> Artifact:
    from ..data import load_dataset

    # the protocol's fields and the corpus (read by its own stage) do not change the loaded tables
    protocol_fields = {"min_history", "max_history", "split", "protocol", "temporal", "rerank", "corpus_file"}
    # the text-file and range options enter only away from their defaults (keys computed before them hold)
    late = (
        "encoding",
        "separator",
        "rating_range",
        "timestamp_unit",
        "on_duplicate",
        "on_out_of_range",
        "category",  # amazon-2018 (docs/datasets.md)
        "implicit_zero",  # bookcrossing
    )
    data_cfg = {k: v for k, v in spec_fields(cfg.data, late=late).items() if k not in protocol_fields}
    data_cfg["columns"] = spec_fields(cfg.data.columns, late=("split",))
    present = [(label, p) for label, p in input_files(cfg.data) if p.is_file()]  # missing: the loader says so
    if present:
        digests = store.files_sha256([p for _, p in present])
        data_cfg["files"] = [[label, p.stat().st_size, d] for (label, p), d in zip(present, digests)]

    def compute(art: Artifact):
        ds = load_dataset(cfg.data)
        if cfg.data.max_users:
            ds.interactions = ds.interactions.filter(pc.less(ds.interactions.column("user_id"), cfg.data.max_users))
            if ds.users is not None:
                ds.users = ds.users.filter(pc.less(ds.users.column("user_id"), cfg.data.max_users))
        art.write_table(ds.interactions, "interactions")
        art.write_table(ds.items, "items")
        if ds.users is not None:
            art.write_table(ds.users, "users")
        return {
            "rows": ds.interactions.num_rows,
            "items": ds.items.num_rows,
            "users": ds.users.num_rows if ds.users is not None else None,
        }

    return store.run("dataset", data_cfg, [], compute)


def samples_stage(store: ArtifactStore, cfg: RunConfig, ds_art: Artifact, ranker: Artifact | None = None) -> Artifact:
    """The samples of ``data.protocol``; the spec holds only the fields that protocol reads.

    ``rerank``: the candidate lists are seeded by ``cfg.seed``; ``data.rerank.negatives: ranker`` needs
    ``ranker``, an artifact with ``user_emb.npy`` / ``item_emb.npy`` whose inner products score the items
    (the method's initial ranker, e.g. LightGCN)."""
    spec = cfg.data.model_dump(
        mode="json", include={"protocol", "min_history", "max_history", "split", "label_threshold"}
    )
    if cfg.data.protocol == "temporal":  # the calendar windows and the file's own split column
        spec["temporal"] = cfg.data.temporal.model_dump(mode="json")
        spec["own_split_column"] = cfg.data.columns.split
    if cfg.data.protocol == "rerank":
        # the ranker's settings reach the samples through the ranker artifact (an input): not in the spec
        spec["rerank"] = cfg.data.rerank.model_dump(mode="json", exclude={"ranker"})
        spec["seed"] = cfg.seed
        spec.pop("max_history")
    if cfg.data.protocol == "full_ranking":  # a seeded per-user random split; no histories
        spec["seed"] = cfg.seed
        spec.pop("max_history")
        spec.pop("min_history")

    def compute(art: Artifact):
        from ..data import build_samples

        if cfg.data.protocol == "rerank":
            samples = _rerank_samples(cfg, ds_art, ranker)
        else:
            samples = build_samples(ds_art.read_table("interactions"), cfg.data)
        art.write_table(samples, "samples")
        counts = {s: int(pc.sum(pc.equal(samples.column("split"), s)).as_py() or 0) for s in ("train", "valid", "test")}
        return {"rows": samples.num_rows, "splits": counts}

    inputs = [ds_art] + ([ranker] if ranker is not None and cfg.data.rerank.negatives == "ranker" else [])
    return store.run("samples", spec, inputs, compute)


def _rerank_samples(cfg: RunConfig, ds_art: Artifact, ranker: Artifact | None) -> pa.Table:
    import numpy as np

    from ..data.rerank import rerank_samples

    scores = None
    if cfg.data.rerank.negatives == "ranker":
        if ranker is None:
            raise ValueError("data.rerank.negatives: ranker needs the method's initial ranker (none was built)")
        user_emb, item_emb = np.load(ranker.path / "user_emb.npy"), np.load(ranker.path / "item_emb.npy")
        scores = lambda users: user_emb[users] @ item_emb.T
    return rerank_samples(
        ds_art.read_table("interactions"),
        cfg.data,
        seed=cfg.seed,
        ranker_scores=scores,
        num_items=ds_art.manifest()["items"],
    )


def read_users(ds_art: Artifact) -> pa.Table | None:
    return ds_art.read_table("users") if (ds_art.path / "users.parquet").exists() else None
