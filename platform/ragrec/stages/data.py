"""The data stages every method starts from: ``dataset`` (the raw files, normalised) and ``samples`` (the
CTR samples of the configured protocol with their split), plus reading the optional users table."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from ..artifacts import Artifact, ArtifactStore, spec_fields
from ..config import RunConfig


def dataset_stage(store: ArtifactStore, cfg: RunConfig) -> Artifact:
    from ..data import load_dataset

    # the protocol's fields and the corpus (read by its own stage) do not change the loaded tables
    protocol_fields = {"min_history", "max_history", "split", "protocol", "temporal", "rerank", "corpus_file"}
    # the text-file and range options enter only away from their defaults (keys computed before them hold)
    late = ("encoding", "separator", "rating_range", "timestamp_unit")
    data_cfg = {k: v for k, v in spec_fields(cfg.data, late=late).items() if k not in protocol_fields}
    data_cfg["columns"] = spec_fields(cfg.data.columns, late=("split",))
    path = cfg.data.resolved_path()
    if path is not None:
        data_cfg["files"] = sorted((p.name, p.stat().st_size) for p in Path(path).glob("*") if p.is_file())

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
