"""Serving a ranking run (``data.protocol: rerank``, e.g. UR4Rec): ``POST /rerank`` and ``GET /healthz``.

``POST /rerank {user_id, item_ids, as_of?}`` returns the items ordered by the run's reranker, each with its
score; the scores equal the offline ones of the same user history and list. The method's
:class:`~ragrec.methods.base.ListScorer` does the scoring (the layer knows the contract, not a method). Bad
requests get a 4xx with a reason: pydantic (strict) rejects wrong types and ids outside int64 with 422, bodies
over ``max_body_bytes`` get 413, :func:`check_rerank` unknown ids (404), repeated items (422) and oversized
lists (413).
"""

# no `from __future__ import annotations`: FastAPI reads the route signatures' real types

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from .schemas import Catalog, Health, Int64, RequestError, check_request

__all__ = ["RankIngress", "RankService", "RankedItem", "RerankRequest", "RerankResponse", "check_rerank"]


class RerankRequest(BaseModel):
    """One user's candidate list, in the order the caller's first-stage ranker gave it (position-aware
    backbones such as DLCM and PRM read that order)."""

    model_config = ConfigDict(strict=True, extra="forbid")

    user_id: Int64 = Field(description="dense user id of the run (0..n_users-1)")
    item_ids: list[Int64] = Field(min_length=1, description="dense item ids to rerank, each at most once")
    as_of: Int64 | None = Field(None, description="unix timestamp; history = the user's positives before it")
    history_item_ids: list[Int64] | None = Field(
        None, description="the user's history to use instead (item ids, oldest first; the last history_len count)"
    )


class RankedItem(BaseModel):
    item_id: int
    score: float = Field(description="the reranker's score (higher = ranked first)")


class RerankResponse(BaseModel):
    user_id: int
    items: list[RankedItem] = Field(description="the requested items, best first")


def check_rerank(req: RerankRequest, catalog: Catalog) -> None:
    """:func:`~ragrec.serving.schemas.check_request` (ids, size) plus: no item twice in one list (422), known
    history items (404)."""
    check_request(req, catalog)
    hist = np.asarray(req.history_item_ids or [], dtype=np.int64)
    bad = hist[(hist < 0) | (hist >= catalog.n_items)]
    if bad.size:
        raise RequestError(404, f"unknown history_item_ids {bad[:10].tolist()}: items are 0..{catalog.n_items - 1}")
    ids = np.asarray(req.item_ids, dtype=np.int64)
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise RequestError(422, f"item_ids repeats {uniq[counts > 1][:10].tolist()}: each item may appear once")


class RankService:
    """The plain service (what the Serve deployment wraps): check, score, order."""

    def __init__(self, run_dir: str, max_items: int = 100) -> None:
        from .app import servable_run

        run, pipeline = servable_run(run_dir, "rerank", "predicts P(yes); serve it with POST /predict")
        self.scorer = pipeline.list_scorer(run)
        self.catalog = Catalog(self.scorer.n_users, self.scorer.n_items, max_items)
        self.name = run.cfg.name

    def rerank(self, req: RerankRequest) -> RerankResponse:
        check_rerank(req, self.catalog)
        scores = self.scorer.score(req.user_id, req.item_ids, req.as_of, req.history_item_ids)
        scores = np.asarray(scores, dtype=np.float64)
        order = np.argsort(-scores, kind="stable")
        items = [RankedItem(item_id=int(req.item_ids[i]), score=float(scores[i])) for i in order]
        return RerankResponse(user_id=req.user_id, items=items)


def _rank_api():
    from .app import make_api

    return make_api("ragrec ranking service")


rank_api = _rank_api()


@serve.deployment
@serve.ingress(rank_api)
class RankIngress:
    """HTTP front of a ranking run: the whole list is scored in one replica call."""

    def __init__(
        self, run_dir: str, max_items: int, torch_threads: int | None, max_body_bytes: int | None = None
    ) -> None:
        from .app import setup_replica

        setup_replica(torch_threads, max_body_bytes)
        self.service = RankService(run_dir, max_items)

    @rank_api.get("/healthz")
    async def healthz(self) -> Health:
        from .app import service_health

        return service_health(self.service)

    @rank_api.post("/rerank")
    async def rerank(self, req: RerankRequest) -> RerankResponse:
        return self.service.rerank(req)
