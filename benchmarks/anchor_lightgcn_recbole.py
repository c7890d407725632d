"""Sanity anchor for ragrec's LightGCN on the ``full_ranking`` protocol: RecBole's LightGCN on exactly our split.

    RAGREC_DATA_DIR=/work/shared/data python benchmarks/anchor_lightgcn_recbole.py --out anchor.json
        [--epochs 300] [--patience 50] [--seed 42] [--threads 1] [--config configs/er2alm_ml100k.yaml] [--quick]

No published LightGCN figure exists for MovieLens-100K under this protocol (README, "Sanity anchor"), so this
trains an independent reference implementation, RecBole 1.2.1's ``LightGCN`` (the standard benchmarking
library), on the same samples and compares it with ragrec's LightGCN.

**The split.** Built by ragrec's own data code, as the ``samples`` stage does (:func:`ragrec.data.load_dataset`
then :func:`ragrec.data.build_samples`, i.e. :func:`ragrec.data.full_ranking.full_ranking_split` with the
config's ``seed``): positives rating > 3, distinct pairs, per-user random 8:1:1. It is written as RecBole
benchmark atomic files (``benchmark_filename: [train, valid, test]``; ``<name>.<split>.inter`` with
``user_id:token item_id:token``; ragrec's dense ids are the tokens) plus ``<name>.item`` listing every item,
so that RecBole ranks the same item set (items with no positive at all would otherwise not exist in RecBole).

**RecBole.** ``LightGCN`` with embedding_size = ``gnn.dim``, n_layers = ``gnn.num_layers``, learning_rate =
``gnn.lr``, train_batch_size = ``gnn.batch_size``, its defaults otherwise (reg_weight 1e-5, Adam, one uniform
negative per positive), full-sort evaluation, metrics Recall / NDCG / Precision @ 10, 20, 50, early stopping on
valid Recall@20 (``stopping_step`` = ``--patience``, evaluated every epoch), device cpu, ``seed``. The test
metrics are those of the best-valid checkpoint.

**ragrec.** The LightGCN row of the ER2ALM evaluation: :func:`ragrec.training.er2alm.train_er2alm` in this process
(``TrainOptions(use_ray=False)``) with ``gnn`` = the config's ``gnn`` with ``side=False`` (what
``methods/er2alm.py``'s ``Pipeline.gnn(kind="LightGCN")`` trains), same dim / layers / lr / batch size / seed.
That function trains a fixed number of epochs; the same early stopping as RecBole's (``recbole.utils.
early_stopping``: improvement = valid Recall@20 >= best, stop after ``patience + 1`` epochs without one; both
scores rounded to ``metric_decimal_place`` = 6 decimals) is added by swapping, for the duration of the call,
the per-epoch evaluator that :func:`ragrec.training.lightgcn.train_graph_epochs` builds
(``ragrec.training.lightgcn.recall_evaluator``) for one that computes valid Recall@20 with ragrec's
full-ranking metrics, keeps the best epoch's embeddings and ends training. Training itself (batches, negatives,
loss) is untouched: the evaluator draws no random numbers. Test metrics are those of the best-valid epoch.

**Patience** (default 50, the same for both; RecBole's default ``stopping_step`` is 10). Measured on this split
(seed 42, lr 9.5e-4, batch 1024; 2026-12-01): both models first sit on a popularity-like plateau (ragrec's valid
Recall@20 0.1874 after epoch 0, 0.183-0.187 through epoch 19, first better at epoch 20), so patience 10 would end
ragrec at epoch 11 with its epoch-0 model. Later plateaus are long too: the longest stretch without a better
valid Recall@20 within 300 epochs was 37 epochs for ragrec (epochs 144-180) and 28 for RecBole (212-239). With
patience 30 ragrec stopped at epoch 174 (best epoch 143, test Recall@20 0.3267), while trained through 300 epochs
it reached 0.3575 (best epoch 299); neither model has converged by epoch 300 at this learning rate, so the anchor
is a 300-epoch-budget figure. Patience 50 lets both use the whole budget unless they really stall.

**Metric definitions (checked against the source of both).** ``recbole/evaluator/metrics.py`` and
``ragrec/evaluation/full_ranking.py`` agree: Recall@k = hits in the top k / |test items of the user| (no
``min(k, |T_u|)`` denominator in either); NDCG@k with binary relevance, DCG = sum hit_j / log2(j + 1) and the
ideal DCG of ``min(|T_u|, k)`` hits; Precision@k = hits / k; the mean over users with at least one positive in
the evaluated split. Ties: RecBole takes ``torch.topk`` order, ragrec is pessimistic (a test item loses a tie);
with continuous scores this does not matter. **One difference in what is ranked:** RecBole's test ranking masks
the user's train AND valid items (its ``FullSortEvalDataLoader`` history = ``used_ids[test] - test positives``),
while the ``full_ranking`` protocol masks only the train items (validation items stay in the test ranking and
count as misses). The script therefore scores both models with ragrec's evaluator under both conventions: the
main table is the protocol's (train masked), both models' embeddings scored by ragrec's evaluator; the check
table puts RecBole's own reported test metrics next to ragrec's evaluator on RecBole's embeddings with train +
valid masked (they must agree up to ties; the max difference is printed) and ragrec's model under that
convention.

**Known differences between the two trainings** (both are "LightGCN with BPR", not bit-identical):

* negatives: RecBole draws a uniform item the user has no training positive of; ragrec a uniform item over all
  items (a positive is drawn with probability ~ |train_u| / I, ~3 % on ML-100K);
* L2 term: RecBole ``reg_weight`` 1e-5 x (sum of the Frobenius norms, not squared, of the batch's layer-0 user,
  positive and negative embeddings) / batch; ragrec (PyG ``recommendation_loss``) ``gnn.weight_decay`` 1e-4 x
  (squared norm of the layer-0 embeddings of the batch's distinct nodes) / batch;
* initialisation: both Xavier-uniform, RecBole per table (users, items), PyG over the joint node table;
* RecBole evaluates valid every epoch inside ``Trainer.fit``; ragrec inside ``train_graph_epochs`` (same rule).

**Threads.** Both run with ``--threads`` torch and BLAS threads (default 1). On a 2-CPU machine shared with other
jobs, two OpenMP threads spin-wait on each other: one ragrec BPR step measured 4.4 s with 2 threads against 0.03 s
with 1 (nice 10, load average ~6), and RecBole's steps are the same kind of sparse propagation. ragrec's trainers
set torch's thread count themselves (``ray_train.torch_device``: ``RAGREC_TORCH_THREADS``, else all cores), so
the script sets ``RAGREC_TORCH_THREADS`` for its call.

**Compatibility shims for RecBole 1.2.1 on this environment** (set in this process only, nothing in
site-packages is edited):

* ``np.float_`` / ``np.complex_`` / ``np.unicode_`` aliases (removed in NumPy 2; RecBole's
  ``Config.compatibility_settings`` reads them);
* ``scipy.sparse.dok_matrix._update`` (private, removed in recent SciPy; RecBole's LightGCN builds its
  adjacency with it) bound to the public, checked ``dok_matrix.update``;
* a no-op ``torch.utils.tensorboard.SummaryWriter`` when the ``tensorboard`` package is absent (RecBole imports
  it at module level, only for logging);
* the best checkpoint is loaded here with ``torch.load(weights_only=False)`` (it pickles RecBole's Config, which
  torch >= 2.6 refuses by default; the file is this run's own) and RecBole's ``evaluate`` runs with
  ``load_best_model=False``;
* ``sys.argv`` is emptied while RecBole's ``Config`` parses it (it reads ``--key=value`` arguments), and RecBole
  writes its ``log/`` and ``saved/`` under a temporary working directory;
* pandas 3 warns (``ChainedAssignmentError``) that RecBole's in-place ``fillna`` of token columns has no effect;
  the atomic files hold no missing value, so nothing is lost.

Install (the deps RecBole really imports on this path; the rest of its declared deps are already there or
unused: thop, plotly, tabulate, tensorboard)::

    pip install --no-deps recbole==1.2.1 colorlog colorama texttable
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
import types
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "configs" / "er2alm_ml100k.yaml"
KS = (10, 20, 50)
VALID_METRIC = "recall@20"
DEFAULT_EPOCHS = 300
DEFAULT_PATIENCE = 50  # RecBole's default stopping_step is 10: see the module docstring, "Patience"
QUICK_EPOCHS = 3
DECIMALS = 6  # RecBole metric_decimal_place here (its default 4 makes many valid scores tie)
DATASET_NAME = "ragrec_fr"
SPLIT_NAMES = ("train", "valid", "test")
INSTALL_HINT = (
    "recbole is not importable: install it with `pip install --no-deps recbole==1.2.1 colorlog colorama texttable`"
)

__all__ = [
    "early_stopping",
    "read_atomic",
    "write_atomic",
]


# ---------------------------------------------------------------------------------------------- the split


@dataclass
class Split:
    """Our ``full_ranking`` split: the FULL_RANKING table, id-space sizes, CSR matrices and the config."""

    table: pa.Table
    num_users: int
    num_items: int
    mats: dict[str, sp.csr_matrix]
    cfg: object  # ragrec.config.RunConfig


def build_split(config_path: Path, seed: int | None = None) -> Split:
    """The split of ``config_path`` exactly as the pipeline's ``dataset`` and ``samples`` stages build it
    (``seed`` overrides the config's seed, which seeds the per-user shuffle)."""
    import pyarrow.compute as pc

    from ragrec.config import load_config
    from ragrec.data import build_samples, load_dataset
    from ragrec.data.full_ranking import split_matrices

    cfg = load_config(config_path)
    if seed is not None:
        cfg = cfg.model_copy(update={"seed": int(seed)})
    if cfg.data.protocol != "full_ranking":
        raise SystemExit(f"{config_path}: data.protocol is {cfg.data.protocol!r}, this anchor needs full_ranking")
    ds = load_dataset(cfg.data)
    inter, users = ds.interactions, ds.users
    if cfg.data.max_users:  # as dataset_stage
        inter = inter.filter(pc.less(inter.column("user_id"), cfg.data.max_users))
        if users is not None:
            users = users.filter(pc.less(users.column("user_id"), cfg.data.max_users))
    num_users = users.num_rows if users is not None else int(pc.max(inter.column("user_id")).as_py()) + 1
    num_items = ds.items.num_rows
    table = build_samples(inter, cfg)
    return Split(table, int(num_users), int(num_items), split_matrices(table, num_users, num_items), cfg)


# ------------------------------------------------------------------------------------- RecBole atomic files


def write_atomic(table: pa.Table, num_items: int, out_dir: Path, name: str = DATASET_NAME) -> Path:
    """Write a FULL_RANKING ``table`` as RecBole benchmark atomic files into ``out_dir / name``.

    Files: ``<name>.train.inter``, ``<name>.valid.inter``, ``<name>.test.inter`` (tab-separated, header
    ``user_id:token<TAB>item_id:token``, one row per pair in table order; the tokens are ragrec's dense ids) and
    ``<name>.item`` (header ``item_id:token``, every item ``0..num_items-1``, so RecBole's item set is ragrec's).

    Returns:
        the dataset folder ``out_dir / name`` (RecBole: ``data_path = out_dir``, ``dataset = name``).
    """
    folder = Path(out_dir) / name
    folder.mkdir(parents=True, exist_ok=True)
    user = table.column("user_id").to_numpy()
    item = table.column("item_id").to_numpy()
    split = np.asarray(table.column("split").to_pylist(), dtype=object)
    for s in SPLIT_NAMES:
        m = split == s
        rows = "".join(f"{u}\t{i}\n" for u, i in zip(user[m].tolist(), item[m].tolist()))
        (folder / f"{name}.{s}.inter").write_text("user_id:token\titem_id:token\n" + rows)
    (folder / f"{name}.item").write_text("item_id:token\n" + "".join(f"{i}\n" for i in range(num_items)))
    return folder


def read_atomic(folder: Path, name: str = DATASET_NAME) -> tuple[pa.Table, np.ndarray]:
    """Read :func:`write_atomic`'s files back: ``(FULL_RANKING table, item ids of <name>.item)``; the table's rows
    come in file order (the train file, then valid, then test)."""
    from ragrec.data.schemas import FULL_RANKING

    users, items, splits = [], [], []
    for s in SPLIT_NAMES:
        lines = (Path(folder) / f"{name}.{s}.inter").read_text().splitlines()
        if lines[0] != "user_id:token\titem_id:token":
            raise ValueError(f"{name}.{s}.inter: unexpected header {lines[0]!r}")
        for line in lines[1:]:
            u, i = line.split("\t")
            users.append(int(u))
            items.append(int(i))
            splits.append(s)
    item_lines = (Path(folder) / f"{name}.item").read_text().splitlines()
    if item_lines[0] != "item_id:token":
        raise ValueError(f"{name}.item: unexpected header {item_lines[0]!r}")
    table = pa.Table.from_arrays(
        [pa.array(users, pa.int64()), pa.array(items, pa.int64()), pa.array(splits, pa.string())], schema=FULL_RANKING
    )
    return table, np.array([int(x) for x in item_lines[1:]], dtype=np.int64)


# ------------------------------------------------------------------------------------- shared helpers


def early_stopping(value: float, best: float, bad: int, patience: int) -> tuple[float, int, bool, bool]:
    """RecBole's ``early_stopping`` (bigger is better): ``(best, bad, stop, improved)`` after ``value``.
    ``value >= best`` is an improvement (bad = 0); otherwise ``bad + 1``, and training stops once it exceeds
    ``patience``."""
    if value >= best:
        return value, 0, False, True
    bad += 1
    return best, bad, bad > patience, False


def score(user_emb: np.ndarray, item_emb: np.ndarray, split: Split, target: str, exclude: Sequence[str]) -> dict:
    """ragrec's full-ranking metrics @ KS of ``target`` with the splits ``exclude`` masked."""
    from ragrec.evaluation.full_ranking import full_ranking_metrics

    m = split.mats
    return full_ranking_metrics(user_emb, item_emb, m["train"], m[target], KS, exclude=[m[e] for e in exclude])


def _valid_score(user_emb: np.ndarray, item_emb: np.ndarray, split: Split) -> float:
    from ragrec.evaluation.full_ranking import full_ranking_metrics

    m = split.mats
    r = full_ranking_metrics(user_emb, item_emb, m["train"], m["valid"], (20,))[VALID_METRIC]
    return round(float(r), DECIMALS)


# ------------------------------------------------------------------------------------- RecBole


def _recbole_shims() -> None:
    """Make RecBole 1.2.1 importable on NumPy 2 / without tensorboard (module docstring)."""
    for alias, target in (("float_", "float64"), ("complex_", "complex128"), ("unicode_", "str_")):
        if alias not in np.__dict__:
            setattr(np, alias, getattr(np, target))
    if not hasattr(sp.dok_matrix, "_update"):  # private, gone in recent SciPy; update() is the checked version
        sp.dok_matrix._update = sp.dok_matrix.update
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        stub = types.ModuleType("torch.utils.tensorboard")

        class SummaryWriter:  # RecBole only logs scalars / hparams to it
            def __init__(self, *args, **kwargs):
                pass

            def __getattr__(self, name):
                return lambda *args, **kwargs: None

        stub.SummaryWriter = SummaryWriter
        sys.modules["torch.utils.tensorboard"] = stub


def recbole_available() -> str | None:
    """None when RecBole (with the shims) imports; else the error text."""
    try:
        _recbole_shims()
        from recbole.config import Config  # noqa: F401
        from recbole.data import create_dataset, data_preparation  # noqa: F401
        from recbole.model.general_recommender import LightGCN  # noqa: F401
        from recbole.trainer import Trainer  # noqa: F401
    except ImportError as e:
        return f"{type(e).__name__}: {e}"
    return None


@contextlib.contextmanager
def _recbole_process_state(workdir: Path) -> Iterator[None]:
    """cwd = ``workdir`` (RecBole's log/ and saved/), sys.argv without our flags (RecBole's Config parses it)."""
    cwd, argv = os.getcwd(), sys.argv
    os.chdir(workdir)
    sys.argv = argv[:1]
    try:
        yield
    finally:
        os.chdir(cwd)
        sys.argv = argv


def run_recbole(split: Split, workdir: Path, *, epochs: int, patience: int, seed: int) -> dict:
    """Train and test RecBole's LightGCN on ``split`` (atomic files in ``workdir``); returns its results."""
    import logging

    import torch

    _recbole_shims()
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.general_recommender import LightGCN
    from recbole.trainer import Trainer
    from recbole.utils import init_logger, init_seed

    gnn = split.cfg.gnn
    write_atomic(split.table, split.num_items, workdir)
    params = {
        "data_path": str(workdir),
        "checkpoint_dir": str(workdir / "saved"),
        "benchmark_filename": list(SPLIT_NAMES),
        "USER_ID_FIELD": "user_id",
        "ITEM_ID_FIELD": "item_id",
        "load_col": {"inter": ["user_id", "item_id"], "item": ["item_id"]},
        "embedding_size": gnn.dim,
        "n_layers": gnn.num_layers,
        "learning_rate": gnn.lr,
        "train_batch_size": gnn.batch_size,
        "epochs": epochs,
        "stopping_step": patience,
        "eval_step": 1,
        "eval_args": {"group_by": "user", "order": "RO", "mode": {"valid": "full", "test": "full"}},
        "metrics": ["Recall", "NDCG", "Precision"],
        "topk": list(KS),
        "valid_metric": "Recall@20",
        "metric_decimal_place": DECIMALS,
        "seed": seed,
        "reproducibility": True,
        "use_gpu": False,
        "device": "cpu",
        "show_progress": False,
        "state": "INFO",
    }
    with _recbole_process_state(workdir), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="A value is being set on a copy")  # docstring: fillna
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        config = Config(model="LightGCN", dataset=DATASET_NAME, config_dict=params)
        init_seed(config["seed"], config["reproducibility"])
        init_logger(config)
        logging.getLogger().setLevel(logging.WARNING)  # the dataset summary; epochs are logged below
        dataset = create_dataset(config)
        train_data, valid_data, test_data = data_preparation(config, dataset)
        init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
        model = LightGCN(config, train_data._dataset).to(config["device"])
        trainer = Trainer(config, model)
        curve: list[float] = []

        def progress(epoch: int, value: float) -> None:
            curve.append(float(value))
            if (epoch + 1) % 10 == 0 or epoch == 0:
                best = max(curve)
                print(f"  RecBole epoch {epoch}: valid recall@20 {value:.4f} (best {best:.4f})", flush=True)

        t0 = time.perf_counter()
        trainer.fit(train_data, valid_data, saved=True, show_progress=False, callback_fn=progress)
        wall = time.perf_counter() - t0
        ckpt = torch.load(trainer.saved_model_file, map_location="cpu", weights_only=False)  # our own file
        model.load_state_dict(ckpt["state_dict"])
        model.load_other_parameter(ckpt.get("other_parameter"))
        own = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
        model.eval()
        with torch.no_grad():
            ue_rb, ie_rb = (t.cpu().numpy() for t in model.forward())
    # RecBole's internal ids -> ragrec's dense ids (token = ragrec id; row 0 is [PAD])
    utok, itok = dataset.field2id_token["user_id"], dataset.field2id_token["item_id"]
    ue = np.zeros((split.num_users, ue_rb.shape[1]), np.float32)
    ie = np.full((split.num_items, ie_rb.shape[1]), np.nan, np.float32)
    ue[[int(t) for t in utok[1:]]] = ue_rb[1:]
    ie[[int(t) for t in itok[1:]]] = ie_rb[1:]
    if np.isnan(ie).any():
        raise RuntimeError("RecBole's item set misses some of ragrec's items (the .item file was not loaded?)")
    return {
        "wall_s": wall,
        "epochs_run": len(trainer.train_loss_dict),
        "best_epoch": int(ckpt["epoch"]),
        "best_valid_recall@20": float(trainer.best_valid_score),
        "valid_curve": [float(x) for x in curve],
        "own_test": {k.lower(): float(v) for k, v in own.items()},
        "protocol": score(ue, ie, split, "test", ["train"]),
        "recbole_convention": score(ue, ie, split, "test", ["train", "valid"]),
        "users": int(dataset.user_num - 1),
        "items": int(dataset.item_num - 1),
        "train_pairs": len(train_data._dataset),
    }


# ------------------------------------------------------------------------------------- ragrec


class _Stop(Exception):
    """Raised by the early-stopping evaluator to end ragrec's training loop."""


def run_ragrec(split: Split, workdir: Path, *, epochs: int, patience: int, seed: int, threads: int = 1) -> dict:
    """Train ragrec's LightGCN (the ER2ALM evaluation's LightGCN row) on ``split`` with early stopping, on
    ``threads`` torch threads (``RAGREC_TORCH_THREADS``: ragrec's trainers set the thread count themselves)."""
    from unittest import mock

    import pyarrow.compute as pc

    import ragrec.training.lightgcn as lg
    from ragrec.training import ray_train as rt
    from ragrec.training.er2alm import train_er2alm

    gnn = split.cfg.gnn.model_copy(update={"side": False, "use_users": True, "use_items": True, "epochs": epochs})
    t = split.table.filter(pc.equal(split.table.column("split"), "train"))
    u, i = t.column("user_id").to_numpy().astype(np.int64), t.column("item_id").to_numpy().astype(np.int64)
    state = {"best": -np.inf, "bad": 0, "epoch": -1, "emb": None, "curve": [], "calls": 0}

    def evaluator(config, model, adj, users, items, num_users):
        state["calls"] += 1

        def evaluate(epoch: int) -> dict:
            ue, ie = lg.split_embeddings(rt.unwrap(model), adj, num_users)
            ue, ie = ue.cpu().numpy().copy(), ie.cpu().numpy().copy()
            value = _valid_score(ue, ie, split)
            state["curve"].append(value)
            state["best"], state["bad"], stop, improved = early_stopping(value, state["best"], state["bad"], patience)
            if improved:
                state["epoch"], state["emb"] = epoch, (ue, ie)
            if (epoch + 1) % 10 == 0 or stop or epoch == 0:
                print(f"  ragrec epoch {epoch}: valid recall@20 {value:.4f} (best {state['best']:.4f})", flush=True)
            if stop:
                raise _Stop
            return {"valid_recall@20": value}

        return evaluate

    opts = rt.TrainOptions(use_ray=False, seed=seed, out_dir=workdir / "ragrec_out")
    t0 = time.perf_counter()
    with (
        mock.patch.object(lg, "recall_evaluator", evaluator),
        mock.patch.dict(os.environ, {"RAGREC_TORCH_THREADS": str(threads)}),
    ):
        try:
            train_er2alm(u, i, split.num_users, split.num_items, gnn, opts=opts)
        except _Stop:
            pass
    wall = time.perf_counter() - t0
    if state["calls"] != 1 or state["emb"] is None:
        raise RuntimeError("ragrec's training loop did not use the early-stopping evaluator (library changed?)")
    ue, ie = state["emb"]
    return {
        "wall_s": wall,
        "epochs_run": len(state["curve"]),
        "best_epoch": int(state["epoch"]),
        "best_valid_recall@20": float(state["best"]),
        "valid_curve": state["curve"],
        "protocol": score(ue, ie, split, "test", ["train"]),
        "recbole_convention": score(ue, ie, split, "test", ["train", "valid"]),
        "gnn": gnn.model_dump(mode="json"),
    }


# ------------------------------------------------------------------------------------- report


def metric_names() -> list[str]:
    return [f"{m}@{k}" for m in ("recall", "ndcg", "precision") for k in KS]


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def report(split: Split, rb: dict, ours: dict, args: argparse.Namespace) -> tuple[str, dict]:
    """The printed tables and the JSON document."""
    names = metric_names()
    n = {s: split.mats[s].nnz for s in SPLIT_NAMES}
    lines = [
        f"LightGCN on {split.cfg.data.name} full_ranking, split seed {split.cfg.seed}: {split.num_users} users x "
        f"{split.num_items} items, train / valid / test pairs {n['train']} / {n['valid']} / {n['test']}",
        f"dim {split.cfg.gnn.dim}, layers {split.cfg.gnn.num_layers}, lr {split.cfg.gnn.lr}, batch "
        f"{split.cfg.gnn.batch_size}, up to {args.epochs} epochs, early stopping on valid Recall@20 "
        f"(patience {args.patience}), training seed {args.seed}, {args.threads} torch thread(s)",
        "",
        "Test, full_ranking protocol (train items masked, valid items count as misses); both models scored by "
        "ragrec's evaluator:",
        f"{'metric':<14}{'RecBole':>10}{'ragrec':>10}{'ragrec/RecBole':>16}",
    ]
    for m in names:
        a, b = rb["protocol"][m], ours["protocol"][m]
        lines.append(f"{m:<14}{a:>10.4f}{b:>10.4f}{_ratio(b, a):>16.3f}")
    diff = max(abs(rb["own_test"][m] - rb["recbole_convention"][m]) for m in names)
    lines += [
        "",
        "Check, RecBole's test convention (train + valid masked): RecBole's own evaluator vs ragrec's evaluator on "
        "the same RecBole model, and ragrec's model:",
        f"{'metric':<14}{'RecBole own':>12}{'ragrec eval':>12}{'ragrec model':>14}{'ratio':>8}",
    ]
    for m in names:
        a, c, b = rb["own_test"][m], rb["recbole_convention"][m], ours["recbole_convention"][m]
        lines.append(f"{m:<14}{a:>12.4f}{c:>12.4f}{b:>14.4f}{_ratio(b, a):>8.3f}")
    lines += [
        f"max |RecBole own - ragrec eval| on RecBole's model: {diff:.2e}",
        "",
    ]
    for label, r in (("RecBole", rb), ("ragrec", ours)):
        per = r["wall_s"] / max(r["epochs_run"], 1)
        lines.append(
            f"{label:<8} wall {r['wall_s']:8.1f} s ({per:.2f} s/epoch incl. valid eval), {r['epochs_run']} epochs "
            f"run, best valid Recall@20 {r['best_valid_recall@20']:.4f} at epoch {r['best_epoch']}"
        )
    doc = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "config": str(args.config),
        "split": {
            "dataset": split.cfg.data.name,
            "seed": split.cfg.seed,
            "users": split.num_users,
            "items": split.num_items,
            "pairs": n,
        },
        "settings": {
            "epochs": args.epochs,
            "patience": args.patience,
            "seed": args.seed,
            "quick": args.quick,
            "threads": args.threads,
            "ks": list(KS),
            "valid_metric": VALID_METRIC,
        },
        "recbole": rb,
        "ragrec": ours,
        "ratio_protocol": {m: _ratio(ours["protocol"][m], rb["protocol"][m]) for m in names},
        "ratio_recbole_convention": {m: _ratio(ours["recbole_convention"][m], rb["own_test"][m]) for m in names},
        "max_abs_diff_recbole_own_vs_ragrec_eval": diff,
        "versions": _versions(),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, load average {os.getloadavg()}",
    }
    return "\n".join(lines), doc


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for p in ("recbole", "torch", "torch_geometric", "numpy", "pandas", "scipy", "ragrec"):
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = "absent"
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="a full_ranking config (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=None, help=f"max epochs of both (default {DEFAULT_EPOCHS})")
    p.add_argument(
        "--patience",
        type=int,
        default=DEFAULT_PATIENCE,
        help=f"epochs without a better valid Recall@20 before both stop (default {DEFAULT_PATIENCE})",
    )
    p.add_argument("--seed", type=int, default=None, help="training seed of both (default: the config's seed)")
    p.add_argument("--quick", action="store_true", help=f"{QUICK_EPOCHS} epochs: a smoke check")
    p.add_argument("--threads", type=int, default=1, help="torch / BLAS threads of both (default 1, see docstring)")
    p.add_argument("--out", type=Path, default=None, help="write the JSON results here")
    args = p.parse_args(argv)
    if args.epochs is None:
        args.epochs = QUICK_EPOCHS if args.quick else DEFAULT_EPOCHS
    if args.epochs < 1 or args.patience < 0 or args.threads < 1:
        p.error("--epochs and --threads must be >= 1, --patience >= 0")
    args.config = args.config.resolve()
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    problem = recbole_available()
    if problem is not None:
        print(f"{INSTALL_HINT} ({problem})", file=sys.stderr)
        return 2
    if args.out is not None:
        args.out = args.out.resolve()
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(args.threads)
    split = build_split(args.config)
    if args.seed is None:
        args.seed = int(split.cfg.seed)
    with threadpool_limits(args.threads), tempfile.TemporaryDirectory(prefix="anchor-lightgcn-") as tmp:
        tmp = Path(tmp)
        print(f"RecBole LightGCN: up to {args.epochs} epochs ...", flush=True)
        rb = run_recbole(split, tmp / "recbole", epochs=args.epochs, patience=args.patience, seed=args.seed)
        print(f"  RecBole: {rb['epochs_run']} epochs, best epoch {rb['best_epoch']}, {rb['wall_s']:.1f} s", flush=True)
        print(f"ragrec LightGCN: up to {args.epochs} epochs ...", flush=True)
        ours = run_ragrec(split, tmp, epochs=args.epochs, patience=args.patience, seed=args.seed, threads=args.threads)
    text, doc = report(split, rb, ours, args)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=1))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
