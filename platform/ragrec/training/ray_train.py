"""The one place that talks to Ray Train (V2, Ray 2.60).

Every trainable in :mod:`ragrec.training` is a plain ``train_loop(config: dict)`` that runs

* standalone: called directly in this process (a GPU box without Ray, unit tests), or
* as the ``train_loop_per_worker`` of a :class:`ray.train.torch.TorchTrainer` through :func:`fit`.

Each ``train_*`` entry point takes a :class:`TrainOptions` (where and how to run) and hands its loop to
:func:`run_loop`. The loops run their epochs through :class:`EpochLoop` (resume, progress, history,
checkpoints, the final outputs) and define only what one epoch does. They use the helpers below, which do
the right thing in both cases:

* :func:`in_train_worker`, :func:`world_rank`, :func:`world_size`, :func:`torch_device`, and
  :func:`worker_setup` (all of them at the top of a loop, with the seed)
* :func:`prepare_model` (DDP under Ray) and :func:`epoch_batches` (the rank's shard of a shuffled
  epoch as index tensors: what ``prepare_data_loader``'s DistributedSampler does, without a
  per-sample ``__getitem__``/collate for in-memory tensors)
* :func:`report` / :func:`report_state` (``ray.train.report`` with a checkpoint under Ray; a log line
  and a local history standalone)
* :func:`load_state` (resume from ``ray.train.get_checkpoint()`` after a worker failure or a rerun on the
  same storage; standalone from a ``local_dir`` state file written by :func:`report_state`)
* :func:`publish` (final outputs: written straight to ``config["out_dir"]`` standalone; reported as
  the last checkpoint under Ray, then copied into ``config["out_dir"]`` by :func:`fit`).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from ragrec.config import RunConfig

log = logging.getLogger("ragrec.training")

STATE_FILE = "train_state.pt"
"""Name of the resumable state (model/optimizer/epoch/history) inside each checkpoint."""

_LOCAL_HISTORY: list[dict] = []


# ----------------------------------------------------------------------------- where are we


def in_train_worker() -> bool:
    """True inside a function launched by ``TorchTrainer.fit()`` (a Ray Train V2 worker)."""
    try:
        import ray.train

        ray.train.get_context()
        return True
    except (RuntimeError, ImportError, DeprecationWarning):
        return False


def world_rank() -> int:
    if not in_train_worker():
        return 0
    import ray.train

    return ray.train.get_context().get_world_rank()


def world_size() -> int:
    if not in_train_worker():
        return 1
    import ray.train

    return ray.train.get_context().get_world_size()


def torch_device(preferred: str = "auto"):
    """The worker's device under Ray (``ray.train.torch.get_device``), else ``preferred`` / auto.

    On CPU it also sets torch's thread count: Ray starts a 1-CPU worker with OMP_NUM_THREADS=1,
    which would leave the other cores idle while the training loop is the only work running.
    ``RAGREC_TORCH_THREADS`` overrides (default: the cores of this machine / the world size).
    """
    if in_train_worker():
        import ray.train.torch

        dev = ray.train.torch.get_device()
    else:
        from ragrec.runtime import device

        dev = torch.device(device(preferred))
    if dev.type == "cpu":
        from ragrec.runtime import torch_threads

        torch.set_num_threads(torch_threads(world_size()))
    return dev


def worker_setup(config: dict) -> tuple[int, int, int, torch.device]:
    """The start of a ``train_loop``: seeds torch's global RNG with ``config["seed"]`` (default 0; the same on
    every rank) and returns ``(seed, rank, world size, device)`` of this worker."""
    seed = int(config.get("seed", 0))
    torch.manual_seed(seed)
    return seed, world_rank(), world_size(), torch_device()


def progress_disabled() -> bool:
    """tqdm bars only on an interactive terminal and only on rank 0."""
    return not sys.stderr.isatty() or world_rank() != 0


class LogProgress:
    """Progress for long loops when there is no terminal (Ray workers, jobs): a log line every
    ``every`` seconds on rank 0 with the step count, rate and the last postfix; a tqdm bar otherwise."""

    def __init__(self, iterable, total: int | None = None, desc: str = "", every: float = 30.0, leave: bool = True):
        import logging

        from tqdm.auto import tqdm

        from ragrec.runtime import setup_logging

        setup_logging()  # Ray workers start without ragrec's log handler

        self._tty = not progress_disabled()
        self._bar = tqdm(iterable, total=total, desc=desc, disable=not self._tty, leave=leave)
        self._log = logging.getLogger("ragrec.training")
        self._it, self._total, self._desc, self._every = iterable, total, desc, every
        self._postfix: dict = {}

    def set_postfix(self, **kw) -> None:
        self._postfix = kw
        self._bar.set_postfix(**kw)

    def __iter__(self):
        if self._tty or world_rank() != 0:
            yield from self._bar
            return
        t0 = last = time.perf_counter()
        for n, item in enumerate(self._it, 1):
            yield item
            now = time.perf_counter()
            if now - last >= self._every:
                last = now
                extra = " ".join(f"{k}={v}" for k, v in self._postfix.items())
                self._log.info(
                    "%s: %d/%s steps, %.2f steps/s %s", self._desc, n, self._total or "?", n / (now - t0), extra
                )


# ----------------------------------------------------------------------------- model / data


def prepare_model(model, device=None):
    """DDP-wrap ``model`` and move it to the worker's device under Ray; move it to ``device`` else."""
    if in_train_worker():
        import ray.train.torch

        return ray.train.torch.prepare_model(model)
    return model.to(device if device is not None else torch_device())


def unwrap(model):
    """The underlying module of a DDP-wrapped model (the model itself otherwise)."""
    return getattr(model, "module", model)


def epoch_batches(
    num_rows: int,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    rank: int = 0,
    world_size: int = 1,
    balanced: bool = False,
) -> list[torch.Tensor]:
    """This rank's shuffled mini-batches of row positions (int64 tensors) for one epoch.

    The permutation depends only on (seed, epoch) so all ranks agree; rank r takes every
    ``world_size``-th position, trimmed so that every rank gets the same number of batches (DDP).
    ``balanced``: ceil(rows / batch_size) batches of near-equal size (each at most ``batch_size``) instead of
    full batches and a remainder. With few batches per epoch a remainder of a handful of rows is a full
    optimizer step on a few rows' gradient (Adam normalises its size). On the ER2ALM demo at η = 0.02 (3,587 rows
    in batches of 512: a last batch of 3), Recall@20 was 0.647 over 3 seeds with the remainder, 0.706 balanced.
    """
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    perm = torch.randperm(num_rows, generator=g)
    per_rank = num_rows // world_size
    mine = perm[rank::world_size][:per_rank]
    if balanced:
        return list(mine.tensor_split(max(1, -(-len(mine) // batch_size))))
    return list(mine.split(batch_size))


def dataset_shard(name: str = "train"):
    """This worker's shard (a ``ray.data.DataIterator``) of the dataset passed to :func:`fit`."""
    import ray.train

    return ray.train.get_dataset_shard(name)


# ----------------------------------------------------------------------------- reporting


def report(metrics: dict[str, Any], checkpoint_dir: str | os.PathLike | None = None) -> None:
    """``ray.train.report(metrics, checkpoint)`` inside Ray Train; outside it log and keep history.

    Under Ray every worker must call this the same number of times (it is a barrier). Only rank 0
    should pass a ``checkpoint_dir`` for replicated state.
    """
    if in_train_worker():
        import ray.train

        ckpt = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        ray.train.report(dict(metrics), checkpoint=ckpt)
        return
    _LOCAL_HISTORY.append(dict(metrics))
    log.info("%s", " ".join(f"{k}={_fmt(v)}" for k, v in metrics.items()))


def local_history() -> list[dict]:
    """Every metrics dict passed to :func:`report` outside Ray Train in this process (a copy)."""
    return list(_LOCAL_HISTORY)


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def report_state(metrics: dict[str, Any], state: dict[str, Any], local_dir: str | os.PathLike | None = None) -> None:
    """Report ``metrics`` and, under Ray, a checkpoint holding ``state`` (``torch.save``-able).

    Standalone the state is written only when ``local_dir`` is given: atomically to
    ``local_dir/train_state.pt`` (replacing the previous one), where :func:`load_state` finds it after a
    kill. Under Ray ``local_dir`` is ignored: the checkpoint goes to the run's storage, and a rerun with the
    same ``storage_path`` and name resumes from it.
    """
    if not in_train_worker():
        if local_dir is not None:
            out = Path(local_dir)
            out.mkdir(parents=True, exist_ok=True)
            tmp = out / f".{STATE_FILE}.tmp"
            torch.save(state, tmp)
            os.replace(tmp, out / STATE_FILE)  # a kill mid-write leaves the previous state readable
        report(metrics)
        return
    with tempfile.TemporaryDirectory(prefix="ragrec-ckpt-") as tmp:
        if world_rank() == 0:
            torch.save(state, Path(tmp) / STATE_FILE)
            report(metrics, checkpoint_dir=tmp)
        else:
            report(metrics)


def report_due(epoch: int, epochs: int, every: int | None = None) -> bool:
    """Whether 0-based ``epoch`` ends with a :func:`report_state` (metrics + resumable checkpoint).

    Every ``every`` epochs (default ``max(1, epochs // 10)``, i.e. about ten checkpoints per run),
    never after the last epoch (:func:`publish` reports that one). Under Ray Train V2 a report
    blocks until the controller polls it (every :data:`HEALTH_CHECK_INTERVAL_S` as :func:`fit` sets it,
    2 s by Ray's default), so per-epoch reports of sub-second epochs would dominate the run time.
    Depends only on the arguments, so all ranks agree (reports are a barrier).
    """
    every = every or max(1, epochs // 10)
    return epoch < epochs - 1 and (epoch + 1) % every == 0


def _numpy_scalar_globals() -> list:
    """The numpy globals a saved state needs: metrics in ``history`` / ``best`` may be numpy scalars, which
    pickle as ``scalar(dtype, bytes)``; only numeric/bool dtypes are allowed (no object arrays, no code)."""
    import numpy as np

    core = getattr(np, "_core", None) or np.core  # numpy 2 / 1
    kinds = (np.float16, np.float32, np.float64, np.int8, np.int16, np.int32, np.int64, np.uint8, np.bool_)
    return [core.multiarray.scalar, np.dtype, *{type(np.dtype(k)) for k in kinds}]


def read_state(path: str | os.PathLike) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` of a state written by :func:`report_state` / :func:`publish`
    (tensors, optimizer/scheduler state dicts, python lists/dicts/numbers, numpy numeric scalars): a
    tampered checkpoint cannot run code."""
    with torch.serialization.safe_globals(_numpy_scalar_globals()):
        return torch.load(path, map_location="cpu", weights_only=True)


def load_state(local_dir: str | os.PathLike | None = None) -> dict[str, Any] | None:
    """The state saved by the latest :func:`report_state` / :func:`publish` of this run, if any.

    Under Ray this is ``ray.train.get_checkpoint()`` (set after a worker failure and restart, and when
    :func:`fit` is rerun with the storage of an interrupted run); standalone it is
    ``local_dir/train_state.pt`` when ``local_dir`` is given and holds one, else None.
    """
    if not in_train_worker():
        path = Path(local_dir) / STATE_FILE if local_dir is not None else None
        if path is None or not path.exists():
            return None
        state = read_state(path)
        log.info("resuming from %s (epoch %s, batch %s)", path, state.get("epoch"), state.get("batch", 0))
        return state
    import ray.train

    ckpt = ray.train.get_checkpoint()
    if ckpt is None:
        return None
    with ckpt.as_directory() as d:
        path = Path(d) / STATE_FILE
        if not path.exists():
            return None
        state = read_state(path)
    log.info("resuming from checkpoint %s (epoch %s)", ckpt.path, state.get("epoch"))
    return state


def publish(
    config: dict,
    metrics: dict[str, Any],
    write: Callable[[Path], None],
    state: dict[str, Any] | None = None,
) -> None:
    """Write the final outputs of a loop.

    ``write(dir)`` writes the output files into ``dir``. Standalone it is called with
    ``config["out_dir"]``; under Ray rank 0 calls it on a temporary folder that is reported as the
    final checkpoint (with ``state`` so that a restart after this point is a no-op) and :func:`fit`
    copies it into ``config["out_dir"]``.
    """
    if not in_train_worker():
        out = Path(config["out_dir"])
        out.mkdir(parents=True, exist_ok=True)
        write(out)
        report(metrics)
        return
    with tempfile.TemporaryDirectory(prefix="ragrec-out-") as tmp:
        if world_rank() == 0:
            write(Path(tmp))
            if state is not None:
                torch.save(state, Path(tmp) / STATE_FILE)
            report(metrics, checkpoint_dir=tmp)
        else:
            report(metrics)


# ----------------------------------------------------------------------------- driver side


HEALTH_CHECK_ENV, HEALTH_CHECK_INTERVAL_S = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2"
"""How often (s) the Ray Train controller polls its workers, set by :func:`fit` unless the user set it."""


def fit(
    train_loop: Callable[[dict], Any],
    config: dict,
    *,
    num_workers: int = 1,
    use_gpu: bool = False,
    datasets: dict | None = None,
    storage_path: str | None = None,
    name: str,
    max_failures: int = 2,
) -> dict:
    """Run ``train_loop(config)`` on ``num_workers`` Ray Train workers (``TorchTrainer``).

    Returns ``{"metrics": last reported metrics (rank 0), "return_value": what rank 0's loop
    returned, "checkpoint_dir": config["out_dir"] or None, "ray_path": run folder in storage}``.
    The latest checkpoint's files are copied into ``config["out_dir"]`` when it is set.
    ``storage_path`` None uses a temporary folder removed afterwards (pass shared storage such as
    ``s3://...`` on a multi-node cluster). Worker failures restart the loop up to ``max_failures``
    times; loops resume from :func:`load_state`. A persistent ``storage_path`` also makes a rerun after a
    killed driver resume: Ray Train finds the run's snapshot under ``storage_path/name`` and
    ``ray.train.get_checkpoint()`` returns its latest checkpoint (the two latest are kept).
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    from ..runtime import init

    init()  # the config's Ray (address, num_cpus), not the all-CPU default Ray Train would start on its own
    # Ray Train V2's controller polls the workers every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s by default),
    # and every ray.train.report blocks until it is polled: a 15-epoch projector took 46 s instead of 15 s.
    # The controller takes the driver's value (Ray propagates it); a user's own setting wins.
    os.environ.setdefault(HEALTH_CHECK_ENV, HEALTH_CHECK_INTERVAL_S)
    if num_workers < 1:
        raise ValueError(f"fit(num_workers={num_workers}): need at least one Ray Train worker")
    tmp_storage = None
    if storage_path is None:
        tmp_storage = tempfile.mkdtemp(prefix="ragrec-ray-train-")
        storage_path = tmp_storage
    check_storage_reachable(storage_path)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=config,
        scaling_config=ray.train.ScalingConfig(num_workers=num_workers, use_gpu=use_gpu),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage_path,
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),  # a resume needs the latest only
        ),
        datasets=datasets,
    )
    t0 = time.perf_counter()
    try:
        result = trainer.fit()  # raises TrainingFailedError when the run fails for good
        log.info("Ray Train fit %s: %.1f s on %d worker(s)", name, time.perf_counter() - t0, num_workers)
        out_dir = config.get("out_dir")
        if out_dir is not None and result.checkpoint is not None:
            out = Path(out_dir)
            out.mkdir(parents=True, exist_ok=True)
            with result.checkpoint.as_directory() as d:
                shutil.copytree(d, out, dirs_exist_ok=True)
        return {
            "metrics": dict(result.metrics or {}),
            "return_value": result.return_value,
            "checkpoint_dir": str(out_dir) if out_dir is not None and result.checkpoint else None,
            "ray_path": None if tmp_storage else result.path,
        }
    finally:
        if tmp_storage:
            shutil.rmtree(tmp_storage, ignore_errors=True)


@dataclass(frozen=True)
class TrainOptions:
    """How a ``train_*`` entry point runs (the same for every trainer).

    ``use_ray``: on ``num_workers`` Ray Train workers (Ray must be initialised; ``use_gpu`` gives each a
    GPU), else in this process. ``seed``: model init, batch order and sampling. ``out_dir``: where the
    outputs go (required). Resume: under Ray from the run's checkpoints in ``storage_path`` (None: a
    temporary folder, so a rerun starts over); standalone from the states in ``checkpoint_dir`` (None:
    none are written). ``report_every``: epochs between checkpoints (None: about ten per run, see
    :func:`report_due`).
    """

    use_ray: bool = False
    num_workers: int = 1
    use_gpu: bool = False
    seed: int = 42
    storage_path: str | None = None
    out_dir: str | os.PathLike | None = None
    checkpoint_dir: str | os.PathLike | None = None
    report_every: int | None = None
    keep_storage: bool = True
    """False: a finished run's checkpoints in ``storage_path`` are removed (a stage's own, see :meth:`for_stage`);
    a failed run keeps them, so the rerun resumes."""

    @classmethod
    def from_config(
        cls,
        cfg: RunConfig,
        *,
        out_dir: str | os.PathLike,
        storage_path: str | None = None,
        use_ray: bool | None = None,
        checkpoint_dir: str | os.PathLike | None = None,
        report_every: int | None = None,
    ) -> TrainOptions:
        """The options of a pipeline stage: ``cfg.ray``'s workers and GPU flag and ``cfg.seed``; on Ray unless
        ``ray.num_workers`` is 0 (the loop in this process) or ``use_ray`` says otherwise."""
        return cls(
            use_ray=cfg.ray.num_workers > 0 if use_ray is None else use_ray,
            num_workers=max(1, cfg.ray.num_workers),
            use_gpu=cfg.ray.use_gpu,
            seed=cfg.seed,
            storage_path=storage_path,
            out_dir=out_dir,
            checkpoint_dir=checkpoint_dir,
            report_every=report_every,
        )

    @classmethod
    def for_stage(
        cls, cfg: RunConfig, art: Any, *, out: str = "train", report_every: int | None = None
    ) -> TrainOptions:
        """The options of the pipeline stage that writes artifact ``art``: outputs into ``art.staging / out``,
        Ray Train checkpoints at :func:`stage_storage` (deterministic per artifact, so rerunning a crashed
        stage resumes from its latest checkpoint), removed once the stage's training has finished. In this process
        (``ray.num_workers: 0``) the loop's own state files take their place, in ``art.staging / "train_state"``."""
        opts = cls.from_config(
            cfg,
            out_dir=art.staging / out,
            storage_path=stage_storage(cfg.ray.storage_path, art),
            report_every=report_every,
        )
        if not opts.use_ray:
            opts = replace(opts, checkpoint_dir=Path(art.staging) / "train_state")
        return replace(opts, keep_storage=False)

    def loop_config(self, name: str) -> dict[str, Any]:
        """The ``train_loop`` config keys these options set: seed, out_dir, checkpoint_dir, report_every."""
        if self.out_dir is None:
            raise ValueError(f"train_{name}: TrainOptions.out_dir is required (the folder for the outputs)")
        return {
            "seed": int(self.seed),
            "out_dir": str(self.out_dir),
            "checkpoint_dir": str(self.checkpoint_dir) if self.checkpoint_dir is not None else None,
            "report_every": self.report_every,
        }


def is_uri(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a URI (``s3://``, ``gs://``, ``file://`` ...) rather than a local path."""
    return "://" in str(path)


def stage_storage(root: str | None, art: Any) -> str:
    """Where Ray Train checkpoints the stage writing artifact ``art`` (``stage`` / ``key``).

    ``root`` (``ray.storage_path``) None: ``ray_train/`` inside the artifact's ``<key>.partial/`` staging folder
    (local, single node); else ``<root>/<stage>/<key>``, a local path or a URI such as ``s3://bucket/prefix``
    that every node of the cluster reaches. The same stage and key always get the same place: a rerun finds
    the interrupted run there."""
    if root is None:
        return str(Path(art.staging) / "ray_train")
    if is_uri(root):
        return f"{str(root).rstrip('/')}/{art.stage}/{art.key}"
    return str(Path(root) / art.stage / art.key)


def drop_storage(path: str | os.PathLike) -> None:
    """Remove a finished run's checkpoints at ``path`` (a local folder, or a URI through pyarrow.fs)."""
    if not is_uri(path):
        shutil.rmtree(path, ignore_errors=True)
        return
    import pyarrow.fs as pafs

    try:
        fs, p = pafs.FileSystem.from_uri(str(path))
        fs.delete_dir(p)
    except (OSError, pafs.ArrowException) as e:  # a leftover checkpoint is harmless; say so and go on
        log.warning("could not remove the finished checkpoints at %s: %s", path, e)


def check_storage_reachable(storage_path: str) -> None:
    """A local ``storage_path`` on a Ray cluster of several alive nodes: one-line error (workers on the other
    nodes could not write their checkpoints there; Ray Train would fail at the first one)."""
    if is_uri(storage_path):
        return
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")] if ray.is_initialized() else []
    if len(nodes) > 1:
        raise ValueError(
            f"ray.storage_path {storage_path!r} is a local path, but the Ray cluster has {len(nodes)} nodes: "
            "Ray Train workers on the other nodes cannot checkpoint there; set ray.storage_path to storage every "
            "node reaches (s3://bucket/prefix, gs://..., or file:///mnt/shared/... mounted on every node)"
        )


def run_loop(
    train_loop: Callable[[dict], Any],
    config: dict,
    opts: TrainOptions,
    *,
    name: str,
    datasets: dict | None = None,
) -> Any:
    """``train_loop(config)`` on Ray Train workers (:func:`fit`, ``opts.use_ray``) or in this process; the
    loop's return value (rank 0's under Ray). Every trainer's ``train_*`` entry point ends here."""
    if opts.use_ray:
        storage = str(opts.storage_path) if opts.storage_path is not None else None
        res = fit(
            train_loop,
            config,
            num_workers=opts.num_workers,
            use_gpu=opts.use_gpu,
            datasets=datasets,
            storage_path=storage,
            name=name,
        )
        if storage is not None and not opts.keep_storage:
            drop_storage(storage)  # the outputs are in out_dir; the optimizer states are not part of them
        return res["return_value"]
    out = train_loop(config)
    if opts.checkpoint_dir is not None and not opts.keep_storage:
        shutil.rmtree(opts.checkpoint_dir, ignore_errors=True)  # a stage's own states: not part of its outputs
    return out


# ----------------------------------------------------------------------------- the epoch loop


class EpochLoop:
    """The epochs of one ``train_loop``: the model's code says what one epoch does, this does the rest.

    Built once the model and optimizer exist, it resumes from the latest state (:func:`load_state`: the
    run's Ray checkpoint, or ``config["checkpoint_dir"]`` standalone): ``start_epoch``, ``history`` and
    ``resume_batch`` (batches of ``start_epoch`` already done) are then the interrupted run's. A state
    holds ``optimizer``, ``epoch`` (the last finished one), ``batch``, ``history`` and what ``save()``
    returns (default ``{"model": state dict}``); ``load(state)`` restores that part.

    ``step_history``: the epoch body appends one row per step to ``history`` itself and the epoch rows
    are only reported (LoRA); otherwise each epoch row is appended to ``history``.

    ``select=(metric, patience)``: model selection on a validation metric of the epoch rows (higher is
    better), as RecBole's early stopping: the weights of the best epoch are kept (and restored when
    :meth:`run` ends), training stops after ``patience`` epochs without a new best (None: never early), and
    the last history row gets ``best_epoch``. The best so far is part of every saved state.
    """

    def __init__(
        self,
        name: str,
        config: dict,
        model,
        optimizer: torch.optim.Optimizer,
        epochs: int,
        *,
        save: Callable[[], dict[str, Any]] | None = None,
        load: Callable[[dict[str, Any]], None] | None = None,
        step_history: bool = False,
        select: tuple[str, int | None] | None = None,
    ):
        self.name, self.config, self.model, self.optimizer, self.epochs = name, config, model, optimizer, int(epochs)
        self.checkpoint_dir = config.get("checkpoint_dir")
        self.report_every = config.get("report_every")
        self.step_history = step_history
        self._save = save or (lambda: {"model": unwrap(model).state_dict()})
        self.start_epoch, self.resume_batch, self.history = 0, 0, []
        self.attempt = 0  # how many times this run was resumed from a checkpoint (0: a fresh start)
        self.stop = False  # an epoch body sets it to end training after its epoch (early stopping)
        self.select = select
        self.best: dict[str, Any] = {"value": -math.inf, "epoch": -1, "state": None, "bad": 0}
        state = load_state(self.checkpoint_dir)
        if state is not None:
            if load is None:
                unwrap(model).load_state_dict(state["model"])
            else:
                load(state)
            self.best.update(state.get("best", {}))
            optimizer.load_state_dict(state["optimizer"])
            self.start_epoch, self.resume_batch = state["epoch"] + 1, state.get("batch", 0)
            self.history = state["history"]
            self.attempt = int(state.get("attempt", 0)) + 1
        # the latest epoch row: the final metrics :meth:`publish` reports
        self.last_row: dict[str, Any] = (
            self.history[-1] if self.history and not step_history else {"epoch": self.start_epoch - 1}
        )

    def run(
        self,
        train_epoch: Callable[[int], dict[str, Any]],
        evaluate: Callable[[int], dict[str, Any]] | None = None,
    ) -> list[dict]:
        """Train the remaining epochs; returns ``history``.

        Each epoch: train mode, ``metrics = train_epoch(epoch)`` (timed), then ``evaluate(epoch)`` (not
        timed); its row ``{"epoch", **metrics, "seconds", **evaluated}`` goes to the progress bar, to
        ``history`` and, when :func:`report_due` (``config["report_every"]``), to :meth:`save`.
        """
        epochs = range(self.start_epoch, self.epochs)
        bar = LogProgress(epochs, total=len(epochs), desc=self.name)
        for epoch in bar:
            t0 = time.perf_counter()
            self.model.train()
            row = {"epoch": epoch, **train_epoch(epoch)}
            self.resume_batch = 0
            row["seconds"] = time.perf_counter() - t0
            if evaluate is not None:
                row |= evaluate(epoch)
            if not self.step_history:
                self.history.append(row)
            self.last_row = row
            if self.select is not None:
                self._track(row, epoch)
            bar.set_postfix(**{k: f"{v:.4f}" for k, v in row.items() if isinstance(v, float) and k != "seconds"})
            if self.stop:
                break
            if report_due(epoch, self.epochs, self.report_every):
                self.save(row, epoch)
        if self.select is not None and self.best["state"] is not None:
            unwrap(self.model).load_state_dict(self.best["state"])
            if self.history:
                self.history[-1]["best_epoch"] = self.best["epoch"]
        return self.history

    def _track(self, row: dict[str, Any], epoch: int) -> None:
        """``select``: a new best keeps a copy of the weights; ``patience`` epochs without one set :attr:`stop`."""
        metric, patience = self.select
        value = row.get(metric)
        if value is not None and value > self.best["value"]:  # NaN or missing: not an improvement
            state = {k: v.detach().clone() for k, v in unwrap(self.model).state_dict().items()}
            self.best.update(value=float(value), epoch=epoch, state=state, bad=0)
            return
        self.best["bad"] += 1
        if patience is not None and self.best["bad"] >= patience:
            self.stop = True

    def train_batches(
        self, epoch: int, batches: Sequence[Any], step: Callable[[Any], tuple[torch.Tensor, int] | None]
    ) -> float:
        """One plain optimisation pass: ``loss, weight = step(batch)`` (None skips the batch), then
        ``zero_grad``, ``backward``, ``optimizer.step``. Returns the weight-averaged loss (0.0 if none)."""
        total, count = 0.0, 0
        bar = LogProgress(batches, total=len(batches), desc=f"{self.name} epoch {epoch}", leave=False)
        for batch in bar:
            out = step(batch)
            if out is None:
                continue
            loss, weight = out
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            value = loss.item()
            total += value * weight
            count += weight
            bar.set_postfix(loss=f"{value:.4f}")
        return total / max(count, 1)

    def save(self, metrics: dict[str, Any], epoch: int, batch: int = 0) -> None:
        """:func:`report_state` of ``metrics`` with the state after ``epoch`` and ``batch`` batches of the next."""
        state = {
            **self._save(),
            **({"best": self.best} if self.select is not None else {}),
            "optimizer": self.optimizer.state_dict(),
            "epoch": epoch,
            "batch": batch,
            "history": list(self.history),
            "attempt": self.attempt,
        }
        report_state(metrics, state, self.checkpoint_dir)

    def publish(self, write: Callable[[Path], None], metrics: dict[str, Any] | None = None) -> None:
        """:func:`publish` the outputs ``write(dir)`` writes, with ``metrics`` (default :attr:`last_row`)."""
        publish(self.config, self.last_row if metrics is None else metrics, write)
