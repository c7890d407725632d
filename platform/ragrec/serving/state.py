"""What the service holds in memory, read from a finished run: user histories, item views, tables.

:class:`UserHistories` keeps every user's ratings in the ``rallrec`` protocol's order (stable sort by
(timestamp, user_id, item_id), :func:`ragrec.data.protocols.time_order`) as flat arrays with per-user
offsets. :meth:`UserHistories.window` gives, for one user and a list of target items, the ratings of
that user each target sees as its history: the whole list by default, or with ``as_of`` what the
protocol gives a rating of the target at ``as_of`` — ratings earlier in protocol order, i.e. with
``timestamp < as_of``, or ``timestamp == as_of`` and a smaller item id — truncated to the last
``data.max_history`` like the samples. A target's own ratings are never in its history (a live request
without ``as_of`` would otherwise show the LLM the very rating it predicts); ``in_history`` says which
targets the user had already rated (before ``as_of`` when given).

:class:`FusionScorer` (runs with ``eval.fusion: true``): the run's fusion model over the LLM's P(yes),
DeepFM's P(click) (its artifact, loaded once) and the item+user baseline's log-odds (a table computed once
at startup from the run's training interactions), i.e. the offline fusion's inputs for the same samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from ..config import RunConfig
from ..data.protocols import time_order

if TYPE_CHECKING:
    from ..evaluation.baselines import ItemUserBaseline
    from ..evaluation.fusion import FusionModel
    from ..training.deepfm import DeepFMPredictor

__all__ = ["FusionScorer", "HistoryWindow", "ServingState", "UserHistories", "load_fusion", "load_state"]


@dataclass(frozen=True)
class HistoryWindow:
    """The histories of n targets of one user, as masks over that user's L ratings (protocol order).

    items (L,) int64, ratings (L,) float32, timestamps (L,) int64: the user's ratings, oldest first;
    mask (n, L) bool: target j's history is ``items[mask[j]]`` (never a rating of item j itself), all inside
    ``[start[j], stop[j])`` (n,) int64; in_history (n,) bool: the user rated target j before the cut.
    """

    user_id: int
    item_ids: np.ndarray
    items: np.ndarray
    ratings: np.ndarray
    timestamps: np.ndarray
    start: np.ndarray
    stop: np.ndarray
    mask: np.ndarray
    in_history: np.ndarray

    def to_samples(self) -> pa.Table:
        """n rows (user_id, item_id, history_item_ids, history_ratings, in_history): the full histories."""
        rows, cols = np.nonzero(self.mask)  # row-major: positions ascending = chronological
        offsets = np.zeros(len(self.item_ids) + 1, dtype=np.int32)
        np.cumsum(np.bincount(rows, minlength=len(self.item_ids)), out=offsets[1:])
        out = samples_table(self.user_id, self.item_ids, self.items[cols], self.ratings[cols], offsets)
        return out.append_column("in_history", pa.array(self.in_history, pa.bool_()))


def samples_table(
    user_id: int, item_ids: np.ndarray, items: np.ndarray, ratings: np.ndarray, offsets: np.ndarray
) -> pa.Table:
    """Samples-like table of n targets: ``offsets`` (n + 1,) int32 cut the flat ``items`` / ``ratings``."""
    off = pa.array(np.asarray(offsets, dtype=np.int32))
    return pa.table(
        {
            "user_id": pa.array(np.full(len(item_ids), user_id, dtype=np.int64)),
            "item_id": pa.array(np.asarray(item_ids, dtype=np.int64)),
            "history_item_ids": pa.ListArray.from_arrays(off, pa.array(np.asarray(items, dtype=np.int64))),
            "history_ratings": pa.ListArray.from_arrays(off, pa.array(np.asarray(ratings, dtype=np.float32))),
        }
    )


class UserHistories:
    """Every user's ratings in protocol order, flat: user u owns ``[offsets[u], offsets[u + 1])``.

    Args:
        interactions: canonical interactions (user_id, item_id, rating, timestamp).
        n_users: number of dense user ids (users without ratings have empty histories).
        max_history: keep at most this many most recent ratings per history (``data.max_history``).
    """

    def __init__(self, interactions: pa.Table, n_users: int, max_history: int | None = None) -> None:
        user = interactions.column("user_id").to_numpy().astype(np.int64)
        item = interactions.column("item_id").to_numpy().astype(np.int64)
        ts = interactions.column("timestamp").to_numpy().astype(np.int64)
        rating = interactions.column("rating").to_numpy(zero_copy_only=False).astype(np.float32)
        if user.size and (user.min() < 0 or user.max() >= n_users):
            raise ValueError(
                f"interactions hold user ids outside [0, {n_users}); the users table and the "
                f"interactions of the run disagree"
            )
        order = time_order(user, item, ts)
        order = order[np.argsort(user[order], kind="stable")]  # user by user, protocol order inside
        self.items, self.ratings, self.timestamps = item[order], rating[order], ts[order]
        self.offsets = np.zeros(n_users + 1, dtype=np.int64)
        np.cumsum(np.bincount(user, minlength=n_users), out=self.offsets[1:])
        self.n_users = n_users
        self.max_history = max_history

    def window(self, user_id: int, item_ids: np.ndarray, as_of: int | None = None) -> HistoryWindow:
        """The histories of ``item_ids`` (n,) for ``user_id`` (see the module docstring): the ratings before
        the cut (all of them, or those before ``as_of`` in protocol order) except the target's own, the last
        ``max_history`` of them."""
        if not 0 <= user_id < self.n_users:
            raise ValueError(f"unknown user_id {user_id}: users are 0..{self.n_users - 1}")
        item_ids = np.asarray(item_ids, dtype=np.int64)
        a, b = self.offsets[user_id], self.offsets[user_id + 1]
        items, ts = self.items[a:b], self.timestamps[a:b]
        if as_of is None:
            stop = np.full(len(item_ids), b - a, dtype=np.int64)
        else:
            lo, hi = np.searchsorted(ts, as_of, "left"), np.searchsorted(ts, as_of, "right")
            stop = lo + np.searchsorted(items[lo:hi], item_ids, "left")  # same second: smaller item ids first
        before = np.arange(b - a)[None, :] < stop[:, None]  # (n, L)
        own = items[None, :] == item_ids[:, None]
        mask = before & ~own
        if self.max_history is not None:  # the last max_history of each history
            mask &= np.cumsum(mask[:, ::-1], axis=1)[:, ::-1] <= self.max_history
        first = mask.argmax(axis=1) if mask.shape[1] else np.zeros(len(item_ids), dtype=np.int64)
        start = np.where(mask.any(axis=1), first, stop).astype(np.int64)
        in_history = (before & own).any(axis=1)
        return HistoryWindow(int(user_id), item_ids, items, self.ratings[a:b], ts, start, stop, mask, in_history)


@dataclass
class FusionScorer:
    """``p_fused`` of (user, item, LLM P(yes)) triples: the fusion model of the run on the offline inputs.

    ``model``: the run's :class:`~ragrec.evaluation.fusion.FusionModel` (inputs llm, crm, item_user);
    ``deepfm``: the run's DeepFM; ``baseline``: item+user table of the run's training interactions.
    """

    model: FusionModel
    deepfm: DeepFMPredictor
    baseline: ItemUserBaseline
    items: pa.Table
    users: pa.Table | None

    def inputs(self, user_ids: np.ndarray, item_ids: np.ndarray, llm_probs: np.ndarray) -> dict[str, np.ndarray]:
        """The fusion inputs, computed as the offline evaluation does (``rallrec_evaluate.fusion_logits``)."""
        from ..evaluation.fusion import logit

        u = np.asarray(user_ids, dtype=np.int64)
        i = np.asarray(item_ids, dtype=np.int64)
        pairs = pa.table({"user_id": pa.array(u), "item_id": pa.array(i)})
        return {
            "llm": logit(llm_probs),
            "crm": logit(self.deepfm(pairs, self.items, self.users)),
            "item_user": self.baseline.logit(u, i),
        }

    def __call__(self, user_ids: np.ndarray, item_ids: np.ndarray, llm_probs: np.ndarray) -> np.ndarray:
        """(n,) float64 fused probabilities."""
        return self.model.predict(self.inputs(user_ids, item_ids, llm_probs))


@dataclass
class ServingState:
    """A finished run in memory: config, histories, item views, items/users tables, adapter folder, and the
    :class:`FusionScorer` when the run fitted a fusion model (``eval.fusion: true``)."""

    cfg: RunConfig
    histories: UserHistories
    views: ItemViews  # noqa: F821  (ragrec.retrieval.context.ItemViews)
    items: pa.Table
    users: pa.Table | None
    adapter_path: str | None
    name: str = "run"
    fusion: FusionScorer | None = None

    @property
    def n_users(self) -> int:
        return self.histories.n_users

    @property
    def n_items(self) -> int:
        return self.items.num_rows


def n_users_of(interactions: pa.Table, users: pa.Table | None) -> int:
    """Dense user count: the users table's rows, or max user id + 1 without one."""
    if users is not None:
        return users.num_rows
    ids = interactions.column("user_id").to_numpy()
    return int(ids.max()) + 1 if ids.size else 0


def load_state(run_dir: str | Path) -> ServingState:
    """Read the run written by ``ragrec run`` in ``run_dir`` (its ``run.json``) into memory."""
    from ..methods import get_method, load_run
    from ..retrieval.context import ItemViews
    from ..stages.data import read_users

    run = load_run(run_dir)
    get_method(run.method).require_servable()
    if run.cfg.prompt.stats:
        raise ValueError(
            f"{run_dir}: the run was tuned with prompt.stats, which serving does not build yet (the "
            f"prompts would differ from the offline ones); serve a run made with prompt.stats: false"
        )
    ds = run.arts["dataset"]
    interactions, items, users = ds.read_table("interactions"), ds.read_table("items"), read_users(ds)
    lora = run.arts.get("lora")
    adapter = str(lora.path / "adapter") if lora is not None and run.cfg.lora.enabled else None
    histories = UserHistories(interactions, n_users_of(interactions, users), run.cfg.data.max_history)
    return ServingState(
        run.cfg,
        histories,
        ItemViews.from_artifacts(run.arts),
        items,
        users,
        adapter,
        name=run.cfg.name,
        fusion=load_fusion(run, interactions, items, users),
    )


def load_fusion(run, interactions: pa.Table, items: pa.Table, users: pa.Table | None) -> FusionScorer | None:
    """The run's :class:`FusionScorer` (None when its run.json names no ``fusion`` artifact)."""
    from ..evaluation.baselines import ItemUserBaseline
    from ..evaluation.fusion import FEATURES, MODEL_FILE, FusionModel
    from ..methods.common import train_interactions
    from ..training.deepfm import DeepFMPredictor

    arts = run.arts
    if "fusion" not in arts:
        return None
    if "deepfm" not in arts:
        raise FileNotFoundError(
            f"{run.run_dir}: run.json names a fusion model but no deepfm artifact; rerun "
            f"`ragrec run` with eval.fusion=true"
        )
    model = FusionModel.load(arts["fusion"].path / MODEL_FILE)
    if set(model.features) != set(FEATURES):
        raise ValueError(f"{run.run_dir}: the fusion model's inputs {list(model.features)} are not {list(FEATURES)}")
    baseline = ItemUserBaseline(train_interactions(interactions, arts["samples"].read_table("samples")))
    return FusionScorer(model, DeepFMPredictor(arts["deepfm"].path / "model"), baseline, items, users)
