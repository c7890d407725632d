"""What every method shares below its own stages: the evaluation samples, the training subset, the
interactions models may learn from, the metric row, the run file and the run's report tail.

A method module (``rallrec.py``, ``score.py``) is its stages plus a short composition; anything two methods
need lives here or lower (``ragrec.stages``, ``ragrec.evaluation``). See ``docs/architecture.md``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..artifacts import Artifact, ArtifactStore
from ..config import RunConfig

log = logging.getLogger("ragrec.methods")

RUN_FILE = "run.json"


# ---------------------------------------------------------------------------------------------------
# samples
# ---------------------------------------------------------------------------------------------------
def split(samples: pa.Table, name: str, limit: int | None = None) -> pa.Table:
    """The rows of one split (``train``, ``valid``, ``test``), at most ``limit`` of them (the first ones)."""
    part = samples.filter(pc.equal(samples.column("split"), name))
    if part.num_rows == 0:
        raise ValueError(f"the '{name}' split is empty: lower data.min_history or change data.split")
    return part.slice(0, limit) if limit else part


def eval_subset(part: pa.Table, limit: int | None, how: str, seed: int) -> pa.Table:
    """``limit`` rows of a split: the first ones (the reference's protocol) or a seeded random subset
    kept in split order (a time split's first rows come from few users; a random subset spans them all)."""
    if not limit or limit >= part.num_rows:
        return part
    if how == "first":
        return part.slice(0, limit)
    idx = np.sort(np.random.default_rng(seed).choice(part.num_rows, size=limit, replace=False))
    return part.take(pa.array(idx))


def eval_samples(samples: pa.Table, cfg: RunConfig, split_name: str = "test") -> pa.Table:
    """The samples a method scores on ``split_name``: ``eval.max_test_samples`` (test) or
    ``eval.max_valid_samples`` (other splits), chosen by ``eval.subset``."""
    e = cfg.eval
    limit = e.max_test_samples if split_name == "test" else e.max_valid_samples
    return eval_subset(split(samples, split_name), limit, e.subset, cfg.seed)


def train_subset(samples: pa.Table, n: int, seed: int) -> pa.Table:
    """A seeded random ``n`` of the training samples (all of them when there are fewer), in split order."""
    train = split(samples, "train")
    if n >= train.num_rows:
        return train
    idx = np.sort(np.random.default_rng(seed).choice(train.num_rows, size=n, replace=False))
    return train.take(pa.array(idx))


def train_lists(samples: pa.Table, cfg: RunConfig, limit: int | None):
    """A seeded random ``limit`` of the ``rerank`` protocol's training lists (all when None), in split order."""
    from ..data.lists import to_lists

    return to_lists(eval_subset(split(samples, "train"), limit, "random", cfg.seed), cfg.data.rerank.history_len)


def eval_lists(samples: pa.Table, cfg: RunConfig, split_name: str = "test"):
    """The evaluated ``rerank`` lists of ``split_name`` (``eval.max_*_samples`` by ``eval.subset``, as
    :func:`eval_samples`) as :class:`~ragrec.data.lists.Lists`."""
    from ..data.lists import to_lists

    return to_lists(eval_samples(samples, cfg, split_name), cfg.data.rerank.history_len)


def cut_timestamp(samples: pa.Table) -> int:
    """The first valid/test sample's timestamp (int64 max when there is none)."""
    held = samples.filter(pc.not_equal(samples.column("split"), "train"))
    return pc.min(held.column("timestamp")).as_py() if held.num_rows else np.iinfo(np.int64).max


def train_interactions(interactions: pa.Table, samples: pa.Table) -> pa.Table:
    """Interactions strictly before the first valid/test sample: the only ones models may learn from."""
    return interactions.filter(pc.less(interactions.column("timestamp"), cut_timestamp(samples)))


# ---------------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------------
def metric_row(
    name: str,
    labels: np.ndarray,
    probs: np.ndarray,
    n_boot: int,
    seed: int,
    user_ids: np.ndarray | None = None,
    against: np.ndarray | None = None,
) -> dict:
    """AUC with its sample-bootstrap interval (``auc_lo``, ``auc_hi``), LogLoss, ACC; with ``user_ids`` also
    the user-clustered interval (``auc_ulo``, ``auc_uhi``: users resampled with all their samples) and UAUC;
    with ``against`` (the main model's probabilities on the same samples) the paired ΔAUC = this row − main
    (``delta``, ``delta_lo/hi``, and ``delta_ulo/uhi`` user-clustered)."""
    from ..evaluation.metrics import bootstrap_ci, bootstrap_delta_ci, ctr_metrics, uauc

    m = ctr_metrics(labels, probs)
    lo, hi = bootstrap_ci(labels, probs, metric="auc", n=n_boot, seed=seed)
    row = {"name": name, **{k: float(v) for k, v in m.items()}, "auc_lo": float(lo), "auc_hi": float(hi)}
    row["n"] = len(labels)
    if user_ids is not None:
        ulo, uhi = bootstrap_ci(labels, probs, metric="auc", n=n_boot, seed=seed, groups=user_ids)
        row.update(auc_ulo=float(ulo), auc_uhi=float(uhi), uauc=float(uauc(user_ids, labels, probs)))
    if against is not None:
        d, dlo, dhi = bootstrap_delta_ci(labels, probs, against, n=n_boot, seed=seed)
        row.update(delta=float(d), delta_lo=float(dlo), delta_hi=float(dhi))
        if user_ids is not None:
            _, dulo, duhi = bootstrap_delta_ci(labels, probs, against, n=n_boot, seed=seed, groups=user_ids)
            row.update(delta_ulo=float(dulo), delta_uhi=float(duhi))
    return row


def preds_row(name: str, preds: pa.Table, probs: np.ndarray, cfg: RunConfig, against: np.ndarray | None = None) -> dict:
    """:func:`metric_row` of ``probs`` on the labels and users of ``preds`` with the config's bootstrap."""
    labels, users = preds.column("label").to_numpy(), preds.column("user_id").to_numpy()
    return metric_row(name, labels, probs, cfg.eval.bootstrap, cfg.seed, users, against)


# ---------------------------------------------------------------------------------------------------
# the run file
# ---------------------------------------------------------------------------------------------------
@dataclass
class RunResult:
    """What ``ragrec run`` returns: the report folder, ``metrics.json``'s content and the stage artifacts."""

    run_dir: Path
    metrics: dict
    artifacts: dict[str, Artifact | None] = field(default_factory=dict)


def write_run_folder(cfg: RunConfig, method, pipe, preds: pa.Table) -> tuple[Path, dict]:
    """The run folder every ``ragrec run`` writes before its report: ``predictions.parquet`` and ``run.json``;
    returns ``(run_dir, counts)`` with the samples' split sizes and the evaluated count."""
    import pyarrow.parquet as pq

    run_dir = cfg.run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    pq.write_table(preds, run_dir / "predictions.parquet")
    write_run_file(run_dir, cfg, pipe.arts, method.config_dict(cfg))
    counts = dict(pipe.arts["samples"].manifest()["splits"])
    counts["evaluated"] = preds.num_rows
    return run_dir, counts


def write_run_file(run_dir: Path, cfg: RunConfig, arts: Mapping[str, Artifact | None], config: dict) -> Path:
    """``run.json``: the method's config (``config``: its sections only) and the artifact of every stage, so
    a finished run can be served. Written atomically."""
    store_root = next(a.store.root for a in arts.values() if a is not None)
    payload = {
        "method": cfg.method,
        "name": cfg.name,
        "artifacts_dir": store_root,
        "artifacts": {k: {"stage": v.stage, "key": v.key} for k, v in arts.items() if v is not None},
        "config": config,
    }
    out = run_dir / RUN_FILE
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    tmp.replace(out)
    return out


@dataclass
class LoadedRun:
    """A finished run read back from its ``run.json``: config, store and the stage artifacts by name."""

    run_dir: Path
    cfg: RunConfig
    store: ArtifactStore
    arts: dict[str, Artifact]

    @property
    def method(self) -> str:
        return self.cfg.method


def load_run(run_dir: str | Path) -> LoadedRun:
    """Open the run that ``ragrec run`` wrote in ``run_dir`` (raises with the fix when it is not one)."""
    import re

    run_dir = Path(run_dir)
    path = run_dir / RUN_FILE
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: RUN_DIR must be the output folder of a finished "
            f"`ragrec run` (runs/<name>/); run the config first"
        )
    payload = json.loads(path.read_text())
    cfg = RunConfig.model_validate({"method": payload.get("method", "rallrec"), **payload["config"]})
    store = ArtifactStore(payload["artifacts_dir"])
    arts = {}
    safe = re.compile(r"[A-Za-z0-9_.-]+")  # stage / key become path parts under artifacts_dir: no '/', no '..'
    for name, ref in payload["artifacts"].items():
        for field_name in ("stage", "key"):
            value = ref.get(field_name)
            if not isinstance(value, str) or not safe.fullmatch(value) or ".." in value:
                raise ValueError(
                    f"{path}: artifact {name} has {field_name} {value!r}; a {field_name} must match [A-Za-z0-9_.-]+ "
                    f"without '..': the file is corrupt or was edited, rerun `ragrec run` to rewrite it"
                )
        art = Artifact(store, ref["stage"], ref["key"])
        if not art.done:
            raise FileNotFoundError(
                f"{path}: artifact {name} ({art.uri}) is missing; "
                f"rerun `ragrec run` with this run's config to rebuild it"
            )
        arts[name] = art
    return LoadedRun(run_dir, cfg, store, arts)


# ---------------------------------------------------------------------------------------------------
# the run's report tail
# ---------------------------------------------------------------------------------------------------
def loss_plots(arts: Mapping[str, Artifact | None], stages: Sequence[str]) -> dict[str, Callable[[Path], Any]]:
    """``<stage>_loss`` plots of the stages whose artifact has a ``history`` with a ``loss`` per step."""
    from ..evaluation.report import plot_curve

    def plot(hist: list[dict], stage: str) -> Callable[[Path], Any]:
        steps = list(range(1, len(hist) + 1))
        return lambda p: plot_curve(steps, {"loss": [r["loss"] for r in hist]}, p, "step", f"{stage} loss")

    plots = {}
    for stage in stages:
        art = arts.get(stage)
        hist = art.read_json("history") if art is not None else None
        if hist and "loss" in hist[0]:
            plots[f"{stage}_loss"] = plot(hist, stage)
    return plots


def trivial_note(rows: Sequence[dict], n_trivial: int) -> list[str]:
    """A warning line when the main row (``rows[0]``) does not beat the best of the ``n_trivial`` rows after it."""
    trivial = [r["auc"] for r in rows[1 : 1 + n_trivial]]
    if trivial and rows[0]["auc"] < max(trivial):
        return [f"{rows[0]['name']} does NOT beat the best trivial baseline (AUC {max(trivial):.4f})."]
    return []


def popularity_notes(rows: Sequence[dict], metric: str, label: str, popularity: str) -> list[str]:
    """Which rows beat the ``popularity`` row on ``metric`` (printed as ``label``) with a user-level interval
    above it, and which fall below it: a model below counting is a bug until shown otherwise."""
    pop = next((r for r in rows if r["name"] == popularity), None)
    if pop is None:
        return []
    others = [r for r in rows if r is not pop]
    above = [r["name"] for r in others if r[f"{metric}_lo"] > pop[metric]]
    below = [r["name"] for r in others if r[f"{metric}_hi"] < pop[metric]]
    notes = [
        f"{len(above)} of {len(others)} rows beat {popularity} ({label} {pop[metric]:.4f}) with user-level "
        "intervals above it"
    ]
    if below:
        notes.append("BELOW the popularity ranking (a bug until shown otherwise): " + ", ".join(below))
    return notes


def artifacts_note(arts: Mapping[str, Artifact | None]) -> str:
    """The report line naming every stage's artifact key."""
    return "artifacts: " + ", ".join(f"{k}={v.key}" for k, v in arts.items() if v is not None)


def finish_report(
    run_dir: Path, method, cfg: RunConfig, counts: dict, rows: list[dict], wall: float, extra: dict, **report: Any
) -> dict:
    """Write a ``ragrec run`` report (title and config from ``method``; ``report``: the rest of
    :func:`~ragrec.evaluation.report.write_report`'s arguments) and return the run's ``metrics``."""
    from ..evaluation.report import write_report

    write_report(
        run_dir,
        title=f"{method.title} on {cfg.data.name}",
        config=method.config_dict(cfg),
        counts=counts,
        rows=rows,
        extra=extra,
        **report,
    )
    return {"rows": rows, "counts": counts, "wall_seconds": round(wall, 1), **extra}
