"""``ragrec data check CONFIG``: load and validate a config's dataset and its protocol split, running no stage.

Everything a run would read first is checked the way the run reads it (:func:`~ragrec.data.load_dataset`,
then :func:`~ragrec.data.build_samples` for ``data.protocol``), in memory: nothing is written, no artifact
and no Ray. Bad input raises the loaders' one-line :class:`~ragrec.data.errors.DataError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .errors import DataError

__all__ = ["DataCheck", "check_data"]


@dataclass
class DataCheck:
    """What :func:`check_data` found: table sizes, the label balance, the time span and the split."""

    dataset: str
    protocol: str
    interactions: int
    users: int
    items: int
    positive_rate: float
    first_timestamp: int
    last_timestamp: int
    splits: dict[str, int] = field(default_factory=dict)
    note: str = ""

    def lines(self) -> list[str]:
        """The short summary ``ragrec data check`` prints."""
        import datetime as dt

        day = lambda t: dt.datetime.fromtimestamp(t, dt.timezone.utc).date().isoformat()
        unit = "pairs" if self.protocol == "full_ranking" else "samples"
        out = [
            f"dataset {self.dataset}: {self.interactions} interactions, {self.users} users, {self.items} items, "
            f"{self.positive_rate:.1%} positive, {day(self.first_timestamp)} .. {day(self.last_timestamp)}",
            f"protocol {self.protocol}: "
            + ", ".join(f"{name} {n} {unit}" for name, n in self.splits.items())
            + (f" ({self.note})" if self.note else ""),
            "ok: the config, the data files and the split are valid",
        ]
        return out


def check_data(cfg) -> DataCheck:
    """Load ``cfg.data``'s dataset (``max_users`` applied, as the ``dataset`` stage does) and build its protocol's
    split, without writing anything.

    Args:
        cfg: a :class:`~ragrec.config.RunConfig`.

    Raises:
        DataError: bad files, or a split with no training or no test rows.
    """
    from .dataset import load_dataset
    from .protocols import build_samples

    ds = load_dataset(cfg.data)
    inter = ds.interactions
    if cfg.data.max_users:
        inter = inter.filter(pc.less(inter.column("user_id"), cfg.data.max_users))
    if inter.num_rows == 0:
        raise DataError(
            "no interactions to build samples from",
            file=str(cfg.data.resolved_path() or cfg.data.interactions_file or cfg.data.name),
            fix="check data.max_users and the interactions file",
        )
    note = ""
    run_cfg = cfg
    if cfg.data.protocol == "rerank" and cfg.data.rerank.negatives == "ranker":
        # the ranker's negatives need a trained LightGCN (a stage): check the split with uniform negatives
        rerank = cfg.data.rerank.model_copy(update={"negatives": "uniform"})
        run_cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"rerank": rerank})})
        note = "candidates checked with uniform negatives; the ranker's are built by `ragrec run`"
    samples = build_samples(inter, run_cfg)
    split = samples.column("split").combine_chunks() if "split" in samples.column_names else pa.array([])
    counts = {s: int(pc.sum(pc.equal(split, s)).as_py() or 0) for s in ("train", "valid", "test")}
    for s in ("train", "test"):
        if counts[s] == 0:
            raise DataError(
                f"the {cfg.data.protocol} protocol gives no {s} rows ({counts})",
                file=str(cfg.data.resolved_path() or cfg.data.interactions_file or cfg.data.name),
                field=f"data.{'temporal' if cfg.data.protocol == 'temporal' else 'split'}",
                fix="give the dataset more interactions per user, lower data.min_history, or change data.split "
                "(data.temporal.windows for the temporal protocol)",
            )
    ts = inter.column("timestamp").to_numpy()
    labels = inter.column("label").to_numpy(zero_copy_only=False)
    users = np.unique(inter.column("user_id").to_numpy())
    return DataCheck(
        dataset=ds.name,
        protocol=cfg.data.protocol,
        interactions=inter.num_rows,
        users=len(users),
        items=ds.n_items,
        positive_rate=float(labels.mean()) if labels.size else 0.0,
        first_timestamp=int(ts.min()),
        last_timestamp=int(ts.max()),
        splits=counts,
        note=note,
    )
