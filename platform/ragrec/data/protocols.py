"""Sample protocols: canonical interactions -> ``samples`` tables (docs/architecture.md §2).

* :func:`rallrec_samples` (ReLLa / RALLRec): every rating is a sample, global 80/10/10 time split.
* :func:`temporal_samples` (CoLLM / SCoRe): the last calendar windows (months or days) are
  train / valid / test, or the user's own ``split`` column decides.
* :func:`~ragrec.data.rerank.rerank_samples` (UR4Rec / KAR / LibRerank): candidate lists of positives.
* :func:`~ragrec.data.full_ranking.full_ranking_split` (ER2ALM): per-user random split of positives.
* :func:`build_samples` dispatches on ``data.protocol``.

Everything is numpy-vectorised: one stable sort, per-user positions from a second stable sort, and
histories gathered into one flat values buffer addressed by list offsets (no Python object per
sample).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..config import DataConfig
from .errors import DataError
from .schemas import INTERACTIONS, SAMPLES, SPLITS, TEMPORAL_SAMPLES, label_is_given, validate

_MAX_LIST_VALUES = 2**31 - 1  # list<...> offsets are int32


def time_order(user: np.ndarray, item: np.ndarray, timestamp: np.ndarray) -> np.ndarray:
    """Stable order by (timestamp, user_id, item_id): ``(n,) int64`` row indices."""
    return np.lexsort((item, user, timestamp))


def user_positions(user_sorted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Group time-ordered rows by user, keeping time order inside each user.

    Args:
        user_sorted: ``(n,)`` user ids of rows already in time order.

    Returns:
        ``(grouped, pos)``: ``grouped`` ``(n,)`` is a permutation of ``0..n-1`` listing the rows user
        by user (each user's rows in time order); ``pos`` ``(n,)`` is, for every row (in time order),
        the number of earlier rows of the same user.
    """
    grouped = np.argsort(user_sorted, kind="stable")
    u = user_sorted[grouped]
    is_start = np.ones(len(u), dtype=bool)
    is_start[1:] = u[1:] != u[:-1]
    start_idx = np.flatnonzero(is_start)
    group_start = np.repeat(start_idx, np.diff(np.append(start_idx, len(u))))
    pos = np.empty(len(u), dtype=np.int64)
    pos[grouped] = np.arange(len(u)) - group_start
    return grouped, pos


def split_bounds(n: int, split: tuple[float, float, float]) -> tuple[int, int]:
    """End indices of train and valid when ``n`` time-ordered samples are cut by ``split`` fractions."""
    cum = np.cumsum(split)[:2]
    b = np.floor(cum * n + 1e-6).astype(np.int64)
    return int(b[0]), int(b[1])


def per_user_split(user_grouped: np.ndarray, split: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Cut each user's rows by ``split`` fractions, in the order given (the ``rerank`` and ``full_ranking``
    protocols): the rounding of :func:`split_bounds` per user, train = the first floor(0.8 n), valid up to
    floor(0.9 n), test the rest.

    Args:
        user_grouped: ``(n,)`` user ids with each user's rows contiguous, in the order to cut them.
        split: train / valid / test fractions.

    Returns:
        ``(pos, codes)``: ``(n,) int64`` rows of the same user before each row, ``(n,) int8`` 0/1/2.
    """
    is_start = np.ones(len(user_grouped), dtype=bool)
    is_start[1:] = user_grouped[1:] != user_grouped[:-1]
    start = np.flatnonzero(is_start)
    lengths = np.diff(np.append(start, len(user_grouped)))
    pos = np.arange(len(user_grouped)) - np.repeat(start, lengths)
    n_user = np.repeat(lengths, lengths)
    cum = np.cumsum(split)[:2]
    cut_train = np.floor(cum[0] * n_user + 1e-6).astype(np.int64)
    cut_valid = np.floor(cum[1] * n_user + 1e-6).astype(np.int64)
    return pos, ((pos >= cut_train).astype(np.int8) + (pos >= cut_valid)).astype(np.int8)


def _labels(interactions: pa.Table, threshold: float) -> np.ndarray:
    """``(n,) int8``: the given labels when the table came labelled, else ``rating > threshold``."""
    if label_is_given(interactions):
        return interactions.column("label").to_numpy().astype(np.int8)
    rating = interactions.column("rating")
    if rating.null_count:
        row = int(np.flatnonzero(rating.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError(
            f"rating is null in row {row} and the table is not marked as labelled",
            file="interactions table",
            field="rating",
            fix="give every interaction a rating, or load labelled data through data.columns.label",
        )
    return (rating.to_numpy() > threshold).astype(np.int8)


def _interaction_ids(interactions: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """``(user_id, item_id)``, each ``(n,) int64``, of an interactions table checked against
    :data:`~ragrec.data.schemas.INTERACTIONS`; DataError when a column is missing / mistyped or the table is empty."""
    validate(interactions, INTERACTIONS, "interactions")
    if interactions.num_rows == 0:
        raise DataError(
            "the interactions table is empty", file="interactions table", fix="load a dataset with interactions"
        )
    return interactions.column("user_id").to_numpy(), interactions.column("item_id").to_numpy()


def _take(values: pa.Array, rows: np.ndarray) -> pa.Array:
    """``values[rows]``; numpy gather when there are no nulls (several times faster than Arrow take)."""
    if values.null_count == 0:
        return pa.array(values.to_numpy()[rows], values.type)
    return values.take(pa.array(rows))


def _history_lengths(pos: np.ndarray, max_history: int | None) -> np.ndarray:
    """History length of each sample, truncated to the most recent ``max_history``."""
    return pos if max_history is None else np.minimum(pos, max_history)


def _check_history_bounds(cfg: DataConfig) -> None:
    if cfg.max_history is not None and cfg.max_history < cfg.min_history:
        raise DataError(
            f"max_history={cfg.max_history} is smaller than min_history={cfg.min_history}",
            field="data.max_history",
            fix="raise data.max_history or lower data.min_history",
        )


@dataclass(frozen=True)
class _Timeline:
    """Interactions in stable (timestamp, user, item) order, with each row's place in its user's list.

    Attributes (``n`` = number of interactions; a *time position* indexes the time-ordered rows):
        order: ``(n,)`` time position -> original row.
        pos: ``(n,)`` per time position, the number of earlier interactions of the same user.
        where_grouped: ``(n,)`` time position -> index in the user-by-user list.
        row_of_grouped: ``(n,)`` index in the user-by-user list -> original row.
    """

    order: np.ndarray
    pos: np.ndarray
    where_grouped: np.ndarray
    row_of_grouped: np.ndarray


def _timeline(user: np.ndarray, item: np.ndarray, ts: np.ndarray) -> _Timeline:
    order = time_order(user, item, ts)
    grouped, pos = user_positions(user[order])
    where_grouped = np.empty(len(order), dtype=np.int64)
    where_grouped[grouped] = np.arange(len(order))
    return _Timeline(order=order, pos=pos, where_grouped=where_grouped, row_of_grouped=order[grouped])


def _flat_history(tl: _Timeline, keep: np.ndarray, max_history: int | None) -> tuple[pa.Array, np.ndarray]:
    """List offsets and the flat user-by-user indices of the histories of the samples ``keep``.

    Args:
        tl: the timeline of all interactions.
        keep: ``(n_samples,)`` time positions of the samples, in output order.
        max_history: keep at most this many most recent earlier interactions (None = all).

    Returns:
        ``(offsets, flat)``: ``offsets`` ``(n_samples + 1,) int32`` Arrow array; ``flat`` ``(total,)``
        indices into the user-by-user list (gather ``values[tl.row_of_grouped][flat]``), oldest first.

    Raises:
        DataError: the histories hold more entries than int32 list offsets can address.
    """
    lengths = _history_lengths(tl.pos[keep], max_history)
    offsets = np.zeros(len(keep) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    total = int(offsets[-1])
    if total > _MAX_LIST_VALUES:
        raise DataError(
            f"the histories hold {total:,} entries, more than a list column can address",
            field="data.max_history",
            fix="set data.max_history (e.g. 100) to keep only the most recent ratings",
        )
    # sample k's history: grouped positions [g_k - len_k, g_k) in the user-by-user list
    end = tl.where_grouped[keep]
    flat = np.repeat(end - lengths - offsets[:-1], lengths) + np.arange(total)
    return pa.array(offsets.astype(np.int32)), flat


def _split_strings(codes: np.ndarray) -> pa.Array:
    """``(n,) int8`` codes 0/1/2 -> ``string`` train/valid/test."""
    return pa.DictionaryArray.from_arrays(pa.array(codes.astype(np.int8)), pa.array(SPLITS)).cast(pa.string())


def _samples_table(
    rows: np.ndarray,
    user: np.ndarray,
    item: np.ndarray,
    label: np.ndarray,
    rating: pa.Array,
    ts: np.ndarray,
    history: list[pa.Array],
    split_codes: np.ndarray,
    schema: pa.Schema,
    extra: list[pa.Array] = (),
) -> pa.Table:
    """The samples table of both protocols: ``rows`` (time order) are the sampled interactions."""
    return pa.Table.from_arrays(
        [
            pa.array(np.arange(len(rows), dtype=np.int64)),
            pa.array(user[rows], pa.int64()),
            pa.array(item[rows], pa.int64()),
            pa.array(label[rows], pa.int8()),
            _take(rating, rows),
            pa.array(ts[rows], pa.int64()),
            *history,
            _split_strings(split_codes),
            *extra,
        ],
        schema=schema,
    )


def rallrec_samples(interactions: pa.Table, cfg: DataConfig) -> pa.Table:
    """ReLLa / RALLRec CTR samples: every rating with all earlier ratings of its user as history.

    Steps: stable sort by (timestamp, user_id, item_id); history of a rating = that user's earlier
    ratings in this order (oldest first), truncated to the last ``cfg.max_history``; samples with fewer
    than ``cfg.min_history`` earlier ratings are dropped; the kept samples, in time order, are cut
    into train / valid / test by ``cfg.split``; ``label = rating > cfg.label_threshold`` unless the
    interactions came labelled.

    Args:
        interactions: ``(n,)`` table with the :data:`~ragrec.data.schemas.INTERACTIONS` columns.
        cfg: the data config (``min_history``, ``max_history``, ``split``, ``label_threshold``).

    Returns:
        ``(n_samples,)`` table with schema :data:`~ragrec.data.schemas.SAMPLES`, rows in time order,
        ``sample_id = 0..n_samples-1``; the history lists share one flat values buffer.

    Raises:
        DataError: a split with a non-zero fraction is empty, or the histories do not fit list offsets.
    """
    validate(interactions, INTERACTIONS, "interactions")
    _check_history_bounds(cfg)
    user = interactions.column("user_id").to_numpy()
    item = interactions.column("item_id").to_numpy()
    ts = interactions.column("timestamp").to_numpy()
    label = _labels(interactions, cfg.label_threshold)
    rating = interactions.column("rating").combine_chunks()

    tl = _timeline(user, item, ts)
    keep = np.flatnonzero(tl.pos >= cfg.min_history)  # time positions of kept samples, in time order
    n = len(keep)
    offsets32, flat = _flat_history(tl, keep, cfg.max_history)
    hist_items = pa.ListArray.from_arrays(offsets32, pa.array(item[tl.row_of_grouped][flat], pa.int64()))
    hist_ratings = pa.ListArray.from_arrays(offsets32, _take(_take(rating, tl.row_of_grouped), flat))

    cut_train, cut_valid = split_bounds(n, cfg.split)
    split_codes = np.zeros(n, dtype=np.int8)
    split_codes[cut_train:cut_valid] = 1
    split_codes[cut_valid:] = 2
    for k, name in enumerate(SPLITS):
        if cfg.split[k] > 0 and not np.any(split_codes == k):
            raise DataError(
                f"split '{name}' is empty: {n} of {len(tl.order)} interactions have at least "
                f"min_history={cfg.min_history} earlier ratings, split={tuple(cfg.split)}",
                field="data.split",
                fix="lower data.min_history, change data.split, or use more data",
            )

    return _samples_table(
        tl.order[keep], user, item, label, rating, ts, [hist_items, hist_ratings], split_codes, SAMPLES
    )


# ---- temporal ---------------------------------------------------------------------------------
_NUMPY_UNIT = {"month": "M", "day": "D"}


def _units(ts: np.ndarray, unit: str) -> np.ndarray:
    """``(n,) int64`` UTC calendar unit index of each timestamp: months or days since 1970-01(-01)."""
    return ts.astype("datetime64[s]").astype(f"datetime64[{_NUMPY_UNIT[unit]}]").astype(np.int64)


def _iso_day(unit_index: int, unit: str) -> str:
    """ISO date of the first day of calendar unit ``unit_index``."""
    return str(np.datetime64(int(unit_index), _NUMPY_UNIT[unit]).astype("datetime64[D]"))


def _iso_range(first: int, stop: int, unit: str) -> str:
    """``'YYYY-MM-DD..YYYY-MM-DD'`` covering units ``first .. stop-1`` (inclusive last day)."""
    last_day = np.datetime64(int(stop), _NUMPY_UNIT[unit]).astype("datetime64[D]") - np.timedelta64(1, "D")
    return f"{_iso_day(first, unit)}..{last_day}"


def _data_span(ts: np.ndarray) -> str:
    days = ts.astype("datetime64[s]").astype("datetime64[D]")
    return f"{days.min()}..{days.max()}"


def _window_codes(ts: np.ndarray, cfg: DataConfig) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Split code of every interaction by calendar window: 0/1/2, or -1 before the kept period.

    Returns:
        ``(codes, bounds)``: ``codes`` ``(n,) int8``; ``bounds`` the ``[first, stop)`` unit indices of
        the train / valid / test windows (for messages).
    """
    t = cfg.temporal
    windows = tuple(int(w) for w in t.windows)
    if min(windows) < 0 or sum(windows) == 0:
        raise DataError(
            f"windows={windows} must be three non-negative lengths with a positive sum",
            field="data.temporal.windows",
            fix="give (train, valid, test) window lengths in data.temporal.unit, e.g. (10, 5, 5)",
        )
    units = _units(ts, t.unit)
    start = int(units.max()) - sum(windows) + 1  # first unit of the kept period
    cuts = start + np.cumsum(windows)  # stop unit of each window
    rel = units - start
    codes = np.searchsorted(cuts - start, rel, side="right").astype(np.int8)
    codes[rel < 0] = -1
    firsts = [start, int(cuts[0]), int(cuts[1])]
    return codes, [(firsts[k], int(cuts[k])) for k in range(3)]


def _own_split_codes(interactions: pa.Table) -> np.ndarray:
    """``(n,) int8`` codes 0/1/2 of the table's ``split`` column (train/valid/test); -1 where null.

    Raises:
        DataError: a value other than train / valid / test (naming the row).
    """
    col = interactions.column("split").combine_chunks()
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        col = pc.cast(col, pa.string())
    idx = pc.index_in(col, value_set=pa.array(SPLITS, col.type))
    bad = np.flatnonzero(
        (pc.is_null(idx).to_numpy(zero_copy_only=False)) & col.is_valid().to_numpy(zero_copy_only=False)
    )
    if len(bad):
        row = int(bad[0])
        raise DataError(
            f"split {col[row].as_py()!r} in row {row} is not one of {', '.join(SPLITS)} "
            f"({len(bad)} rows have other values)",
            file="interactions table",
            field="split",
            fix="use train, valid or test (null: the interaction only serves as history)",
        )
    return pc.fill_null(idx, -1).to_numpy(zero_copy_only=False).astype(np.int8)


def temporal_samples(interactions: pa.Table, cfg: DataConfig) -> pa.Table:
    """CoLLM / SCoRe temporal CTR samples: calendar windows (or the user's own splits) as splits.

    The kept period is the last ``sum(cfg.temporal.windows)`` UTC calendar units (months or days)
    ending with the unit of the last timestamp; its units are cut, oldest first, into train / valid /
    test windows of ``windows[0] / [1] / [2]`` units. Every interaction inside the kept period is a
    sample of its window's split. When ``interactions`` has a ``split`` string column (train / valid /
    test / null; the generic loader appends it from ``data.columns.split``) that column decides
    instead: every interaction with a non-null split is a sample of that split.

    The history of a sample is ALL earlier interactions of its user (including those before the kept
    period and those of other splits) in stable (timestamp, user_id, item_id) order, oldest first,
    truncated to the last ``cfg.max_history``; samples with fewer than ``cfg.min_history`` earlier
    interactions are dropped. ``label = rating > cfg.label_threshold`` unless the interactions came
    labelled.

    Args:
        interactions: ``(n,)`` table with the :data:`~ragrec.data.schemas.INTERACTIONS` columns
            (+ optional ``split``).
        cfg: the data config (``temporal.unit``, ``temporal.windows``, ``min_history``,
            ``max_history``, ``label_threshold``).

    Returns:
        ``(n_samples,)`` table with schema :data:`~ragrec.data.schemas.TEMPORAL_SAMPLES` (SAMPLES +
        ``history_labels list<int8>`` aligned with ``history_item_ids``), rows in time order,
        ``sample_id = 0..n_samples-1``; the history lists share one flat offsets buffer.

    Raises:
        DataError: empty interactions, bad windows, a bad ``split`` value, an empty split (naming
            ``data.temporal.windows`` and the data's date range), or histories too long for list offsets.
    """
    validate(interactions, INTERACTIONS, "interactions")
    _check_history_bounds(cfg)
    if interactions.num_rows == 0:
        raise DataError(
            "the interactions table is empty", file="interactions table", fix="load a dataset with interactions"
        )
    user = interactions.column("user_id").to_numpy()
    item = interactions.column("item_id").to_numpy()
    ts = interactions.column("timestamp").to_numpy()
    label = _labels(interactions, cfg.label_threshold)
    rating = interactions.column("rating").combine_chunks()

    own = "split" in interactions.schema.names
    if own:
        codes, bounds = _own_split_codes(interactions), None
    else:
        codes, bounds = _window_codes(ts, cfg)

    tl = _timeline(user, item, ts)
    codes_t = codes[tl.order]  # per time position
    keep = np.flatnonzero((codes_t >= 0) & (tl.pos >= cfg.min_history))
    split_codes = codes_t[keep]
    counts = np.bincount(split_codes, minlength=3)
    for k, name in enumerate(SPLITS):
        if counts[k]:
            continue
        n_in = int((codes == k).sum())
        span = _data_span(ts)
        if own:
            if k == 1 and n_in == 0:
                continue  # no validation split declared: allowed
            raise DataError(
                f"split '{name}' is empty: {n_in} interactions are marked '{name}' and none has at least "
                f"min_history={cfg.min_history} earlier interactions of its user (data spans {span})",
                field="data.columns.split",
                fix=f"mark more interactions '{name}' in the split column, or lower data.min_history",
            )
        if cfg.temporal.windows[k] == 0:
            continue
        t = cfg.temporal
        raise DataError(
            f"split '{name}' is empty: its window {_iso_range(*bounds[k], t.unit)} holds {n_in} interactions, "
            f"none with at least min_history={cfg.min_history} earlier interactions of its user; "
            f"the data spans {span}, windows={tuple(t.windows)} {t.unit}s keep "
            f"{_iso_range(bounds[0][0], bounds[2][1], t.unit)}",
            field="data.temporal.windows",
            fix=f"choose data.temporal.windows (train, valid, test in {t.unit}s) so that every window covers "
            f"dates with data inside {span}, lower data.min_history, or change data.temporal.unit",
        )

    offsets32, flat = _flat_history(tl, keep, cfg.max_history)
    hist_items = pa.ListArray.from_arrays(offsets32, pa.array(item[tl.row_of_grouped][flat], pa.int64()))
    hist_ratings = pa.ListArray.from_arrays(offsets32, _take(_take(rating, tl.row_of_grouped), flat))
    hist_labels = pa.ListArray.from_arrays(offsets32, pa.array(label[tl.row_of_grouped][flat], pa.int8()))

    return _samples_table(
        tl.order[keep],
        user,
        item,
        label,
        rating,
        ts,
        [hist_items, hist_ratings],
        split_codes,
        TEMPORAL_SAMPLES,
        [hist_labels],
    )


def build_samples(interactions: pa.Table, cfg) -> pa.Table:
    """Samples of the protocol ``data.protocol`` (``rallrec`` | ``temporal`` | ``rerank`` | ``full_ranking``).

    ``rerank`` (:func:`~ragrec.data.rerank.rerank_samples`) and ``full_ranking``
    (:func:`~ragrec.data.full_ranking.full_ranking_split`) are seeded with ``cfg.seed`` when ``cfg`` is a
    RunConfig (0 for a bare DataConfig); ``rerank``'s ``negatives: ranker`` lists need the method's initial
    ranker and are built by the method, not here. ``full_ranking`` returns its
    :data:`~ragrec.data.schemas.FULL_RANKING` table (user_id, item_id, split), not per-sample rows.

    Args:
        interactions: ``(n,)`` :data:`~ragrec.data.schemas.INTERACTIONS` table.
        cfg: a :class:`~ragrec.config.RunConfig` (uses ``cfg.data``) or a :class:`DataConfig`.

    Raises:
        DataError: an unknown protocol, ``rerank`` with ``negatives: ranker``, or any problem of the protocol.
    """
    data: DataConfig = getattr(cfg, "data", cfg)
    if data.protocol == "rallrec":
        return rallrec_samples(interactions, data)
    if data.protocol == "temporal":
        return temporal_samples(interactions, data)
    if data.protocol == "rerank":
        from .rerank import rerank_samples  # rerank imports this module's helpers

        if data.rerank.negatives == "ranker":
            raise DataError(
                "negatives: ranker needs the scores of the method's initial ranker (e.g. LightGCN), which "
                "build_samples does not have",
                field="data.rerank.negatives",
                fix="let the method build its samples with its initial ranker "
                "(ragrec.data.rerank.rerank_samples(..., ranker_scores=)), or use data.rerank.negatives: uniform",
            )
        return rerank_samples(interactions, data, seed=getattr(cfg, "seed", 0))
    if data.protocol == "full_ranking":
        from .full_ranking import full_ranking_split  # full_ranking imports this module's helpers

        return full_ranking_split(interactions, data, seed=getattr(cfg, "seed", 0))
    raise DataError(
        f"unknown protocol '{data.protocol}'",
        field="data.protocol",
        fix="use rallrec, temporal, rerank or full_ranking",
    )
