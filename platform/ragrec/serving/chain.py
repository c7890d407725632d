"""The retrieve -> rerank -> predict chain as plain classes (the Serve deployments wrap them).

* :class:`Retriever` — faiss (``IndexFlatIP`` over the run's retrieval embedding, e.g. the Eq. 7 mixture)
  restricted to the user's history items (``IDSelectorBatch``): for each target the ``K + margin`` most
  similar history items, plus the K most recent history positions. The result is each target's history
  cut down to these candidate positions, still in chronological order.
* :class:`Reranker` — :func:`ragrec.retrieval.context.with_context` (the offline retrieval: alpha/beta
  rerank of Eq. 8, or the run's other strategy) on the candidates. Because the candidates hold the
  relevance top-K and the K most recent positions of the full history in their original order, the
  selection equals the one over the full history; the similarities are recomputed exactly from the
  item views (only the rows of the items involved), so faiss only has to find a superset.
* :class:`Predictor` — the ReLLa prompt (:func:`ragrec.llm.prompts_ctr.prompts_for`) and the engine's
  ``score_yes_no`` (the LoRA-tuned LLM), for many requests at once; with the run's fusion model
  (:class:`~ragrec.serving.state.FusionScorer`) also ``p_fused`` from those probabilities, DeepFM and the
  item+user baseline.

:class:`ServingChain` runs the three in-process; for the same (user, item, history) it gives the same
context and probability as the offline pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from ..config import RetrievalConfig, RunConfig
from ..retrieval.history import CONTEXT_ITEMS, CONTEXT_RATINGS
from .schemas import Catalog, ItemPrediction, PredictRequest, PredictResponse, check_request
from .state import HistoryWindow, ServingState, samples_table

if TYPE_CHECKING:
    from ..llm.engine import Engine
    from ..retrieval.context import ItemViews
    from .state import FusionScorer

__all__ = ["Predictor", "Reranker", "Retriever", "ServingChain", "retrieval_matrices"]


def retrieval_matrices(views: ItemViews, rcfg: RetrievalConfig) -> list[np.ndarray]:
    """The (n_items, d) embeddings ``with_context`` ranks by for ``rcfg``: none (recent), two (hybrid), or one."""
    if rcfg.strategy == "recent":
        return []
    if rcfg.strategy == "hybrid":
        return [views.get("text"), views.get("colla")]
    return [views.get(rcfg.embedding)]


class Retriever:
    """Candidate history positions per target by faiss similarity + recency (module docstring).

    Args:
        matrices: :func:`retrieval_matrices` of the run (one faiss index each).
        k: ``retrieval.k``; margin: extra similar items kept beyond K (guards float rounding between
            faiss and the reranker's exact scores).
    """

    def __init__(self, matrices: Sequence[np.ndarray], k: int, margin: int | None = None) -> None:
        import faiss

        self.k = k
        self.margin = k if margin is None else margin
        self.indexes = []
        for m in matrices:
            index = faiss.IndexFlatIP(m.shape[1])
            index.add(np.ascontiguousarray(m, dtype=np.float32))
            self.indexes.append((index, m))

    def _similar(self, w: HistoryWindow, inv: np.ndarray, uniq: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """(n, u) bool: target j keeps unique history item c (one of its K + margin most similar)."""
        import faiss

        n, u = len(w.item_ids), len(uniq)
        present = np.zeros((n, u), dtype=bool)
        rows, pos = np.nonzero(valid)
        present[rows, inv[pos]] = True
        lengths = valid.sum(axis=1)
        want = self.k + self.margin
        # a target misses the items seen only outside its own range: search that many more
        kk = int(min(u, want + (len(inv) - lengths.min())))
        keep = np.zeros((n, u), dtype=bool)
        params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(uniq))
        for index, m in self.indexes:
            _, found = index.search(np.ascontiguousarray(m[w.item_ids]), kk, params=params)
            ok = found >= 0
            col = np.searchsorted(uniq, np.where(ok, found, uniq[0]))
            r = np.broadcast_to(np.arange(n)[:, None], found.shape)
            ok &= present[r, col]
            ok &= np.cumsum(ok, axis=1) <= want
            keep[r[ok], col[ok]] = True
        return keep

    def candidates(self, w: HistoryWindow) -> pa.Table:
        """n rows (user_id, item_id, history_item_ids, history_ratings, in_history): histories (never holding
        the target itself) cut to the candidates."""
        n = len(w.item_ids)
        lo, hi = int(w.start.min()) if n else 0, int(w.stop.max()) if n else 0
        hi = max(hi, lo)
        valid = w.mask[:, lo:hi]  # (n, hi - lo)
        cand = valid & (np.cumsum(valid[:, ::-1], axis=1)[:, ::-1] <= self.k)  # the K most recent
        if self.indexes and hi > lo:
            uniq, inv = np.unique(w.items[lo:hi], return_inverse=True)
            cand |= self._similar(w, inv, uniq, valid)[:, inv] & valid
        rows, cols = np.nonzero(cand)  # row-major: positions ascending = chronological
        offsets = np.zeros(n + 1, dtype=np.int32)
        np.cumsum(np.bincount(rows, minlength=n), out=offsets[1:])
        at = lo + cols
        out = samples_table(w.user_id, w.item_ids, w.items[at], w.ratings[at], offsets)
        return out.append_column("in_history", pa.array(w.in_history, pa.bool_()))


class Reranker:
    """The run's history selection (``with_context``) on candidate histories; ids stay the run's ids."""

    def __init__(self, views: ItemViews, rcfg: RetrievalConfig) -> None:
        self.views = views
        self.rcfg = rcfg

    def rerank(self, candidates: pa.Table) -> pa.Table:
        """``candidates`` + ``context_item_ids`` / ``context_ratings`` (K items each, prompt order)."""
        from ..retrieval.context import ItemViews, with_context

        hist = candidates.column("history_item_ids").combine_chunks()
        targets = candidates.column("item_id").to_numpy()
        flat = hist.flatten().to_numpy()
        uniq, inv = np.unique(np.concatenate([targets, flat]), return_inverse=True)
        v = self.views
        sub = ItemViews(
            title=v.title[uniq], text=v.text[uniq], colla=v.colla[uniq], ssl=v.ssl[uniq] if v.ssl is not None else None
        )
        compact = candidates.set_column(
            candidates.schema.get_field_index("item_id"), "item_id", pa.array(inv[: len(targets)].astype(np.int64))
        )
        compact = compact.set_column(
            compact.schema.get_field_index("history_item_ids"),
            "history_item_ids",
            pa.ListArray.from_arrays(hist.offsets, pa.array(inv[len(targets) :].astype(np.int64))),
        )
        out = with_context(compact, sub, self.rcfg)
        ctx = out.column(CONTEXT_ITEMS).combine_chunks()
        ids = pa.ListArray.from_arrays(ctx.offsets, pa.array(uniq[ctx.flatten().to_numpy()].astype(np.int64)))
        return candidates.append_column(CONTEXT_ITEMS, ids).append_column(CONTEXT_RATINGS, out.column(CONTEXT_RATINGS))


class Predictor:
    """ReLLa prompts + yes/no scoring for a batch of requests' contexts (one engine call); ``fusion``: the
    run's :class:`~ragrec.serving.state.FusionScorer` or None."""

    def __init__(
        self,
        cfg: RunConfig,
        items: pa.Table,
        users: pa.Table | None,
        engine: Engine,
        fusion: FusionScorer | None = None,
    ) -> None:
        self.cfg, self.items, self.users, self.engine = cfg, items, users, engine
        self.fusion = fusion

    def prompts(self, contexts: pa.Table) -> list[str]:
        from ..llm.prompts_ctr import prompts_for

        return prompts_for(contexts, self.items, self.users, self.cfg).to_pylist()

    def score(self, batch: Sequence[pa.Table]) -> list[np.ndarray]:
        """P(yes) float32 arrays, one per table of ``batch`` (its rows in order)."""
        cols = ["user_id", "item_id", CONTEXT_ITEMS, CONTEXT_RATINGS]
        table = pa.concat_tables([t.select(cols) for t in batch])
        probs = np.asarray(self.engine.score_yes_no(self.prompts(table)), dtype=np.float32)
        return np.split(probs, np.cumsum([t.num_rows for t in batch])[:-1])

    def fuse(self, contexts: pa.Table, probs: np.ndarray) -> np.ndarray | None:
        """(n,) ``p_fused`` of the contexts' (user, item) rows given their LLM ``probs``; None without fusion."""
        if self.fusion is None:
            return None
        return self.fusion(contexts.column("user_id").to_numpy(), contexts.column("item_id").to_numpy(), probs)


def response(
    req: PredictRequest, contexts: pa.Table, probs: np.ndarray, fused: np.ndarray | None = None
) -> PredictResponse:
    """The API answer for ``req`` from its reranked contexts, probabilities and fused probabilities (request
    order; ``p_fused`` is null without a fusion model)."""
    ids = contexts.column(CONTEXT_ITEMS).to_pylist()
    rats = contexts.column(CONTEXT_RATINGS).to_pylist()
    pf = [None] * len(req.item_ids) if fused is None else [float(x) for x in np.asarray(fused).tolist()]
    seen = contexts.column("in_history").to_pylist() if "in_history" in contexts.column_names else [False] * len(ids)
    preds = [
        ItemPrediction(item_id=i, prob=float(p), history_item_ids=h, history_ratings=r, p_fused=f, in_history=s)
        for i, p, h, r, f, s in zip(req.item_ids, probs.tolist(), ids, rats, pf, seen)
    ]
    return PredictResponse(user_id=req.user_id, predictions=preds)


class ServingChain:
    """Retriever -> Reranker -> Predictor in one process (tests, ``serve_load`` references)."""

    def __init__(self, state: ServingState, engine: Engine, max_items: int = 100, margin: int | None = None):
        rcfg = state.cfg.retrieval
        self.state = state
        self.catalog = Catalog(state.n_users, state.n_items, max_items)
        self.retriever = Retriever(retrieval_matrices(state.views, rcfg), rcfg.k, margin)
        self.reranker = Reranker(state.views, rcfg)
        self.predictor = Predictor(state.cfg, state.items, state.users, engine, fusion=state.fusion)

    def contexts(self, req: PredictRequest) -> pa.Table:
        check_request(req, self.catalog)
        w = self.state.histories.window(req.user_id, np.asarray(req.item_ids), req.as_of)
        return self.reranker.rerank(self.retriever.candidates(w))

    def predict(self, req: PredictRequest) -> PredictResponse:
        ctx = self.contexts(req)
        probs = self.predictor.score([ctx])[0]
        return response(req, ctx, probs, self.predictor.fuse(ctx, probs))
