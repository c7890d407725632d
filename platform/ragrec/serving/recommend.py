"""Serving a full-ranking run (``data.protocol: full_ranking``, e.g. ER2ALM): ``POST /recommend`` and ``GET /healthz``.

``POST /recommend {user_id, k}`` returns the user's top-``k`` items among those without a training positive of
theirs, best first, each with its score: the list and the scores of the run's offline ranking
(``predictions.parquet``). The method's :class:`~ragrec.methods.base.Recommender` does the ranking (this layer
knows the contract, not a method). Bad requests get a 4xx with a reason: pydantic (strict) rejects wrong types
with 422, ``k <= 0`` is a 422, an unknown user a 404 and ``k`` above ``max_k`` (or above the user's unseen items)
a 413; bodies over ``max_body_bytes`` get 413.
"""

# no `from __future__ import annotations`: FastAPI reads the route signatures' real types

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from .schemas import Catalog, Health, Int64, RequestError

__all__ = [
    "DEFAULT_MAX_K",
    "RecommendIngress",
    "RecommendRequest",
    "RecommendResponse",
    "RecommendService",
    "ScoredItem",
    "check_recommend",
]

DEFAULT_MAX_K = 100


class RecommendRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    user_id: Int64 = Field(description="dense user id of the run (0..n_users-1)")
    k: Int64 = Field(10, description="how many items to return (1..max_k)")


class ScoredItem(BaseModel):
    item_id: int
    score: float = Field(description="the model's score (inner product of the user and item embeddings)")


class RecommendResponse(BaseModel):
    user_id: int
    items: list[ScoredItem] = Field(description="the top-k unseen items, best first")


def check_recommend(req: RecommendRequest, catalog: Catalog, unseen) -> None:
    """Raise :class:`RequestError`: ``k <= 0`` (422), unknown user (404), ``k`` above ``catalog.max_items`` or
    above the user's unseen items (``unseen(user_id)``) (413)."""
    if req.k <= 0:
        raise RequestError(422, f"k must be >= 1, got {req.k}")
    if not 0 <= req.user_id < catalog.n_users:
        raise RequestError(404, f"unknown user_id {req.user_id}: this run knows users 0..{catalog.n_users - 1}")
    if req.k > catalog.max_items:
        raise RequestError(413, f"k={req.k} is too large: at most {catalog.max_items} items per request")
    n = unseen(req.user_id)
    if req.k > n:
        raise RequestError(413, f"k={req.k} is too large: user {req.user_id} has {n} items without a training positive")


class RecommendService:
    """The plain service (what the Serve deployment wraps): check, rank, answer."""

    def __init__(self, run_dir: str, max_k: int = DEFAULT_MAX_K) -> None:
        from .app import servable_run

        run, pipeline = servable_run(run_dir, "full_ranking", "is not a full-ranking run; POST /recommend needs one")
        self.recommender = pipeline.recommender(run)
        self.catalog = Catalog(self.recommender.n_users, self.recommender.n_items, max_k)
        self.name = run.cfg.name

    def recommend(self, req: RecommendRequest) -> RecommendResponse:
        check_recommend(req, self.catalog, self.recommender.unseen)
        items, scores = self.recommender.recommend(req.user_id, req.k)
        out = [ScoredItem(item_id=int(i), score=float(s)) for i, s in zip(np.asarray(items), np.asarray(scores))]
        return RecommendResponse(user_id=req.user_id, items=out)


def _recommend_api():
    from .app import make_api

    return make_api("ragrec full-ranking service")


recommend_api = _recommend_api()


@serve.deployment
@serve.ingress(recommend_api)
class RecommendIngress:
    """HTTP front of a full-ranking run: one replica holds the embeddings and ranks in-process."""

    def __init__(self, run_dir: str, max_k: int, torch_threads: int | None, max_body_bytes: int | None = None):
        from .app import setup_replica

        setup_replica(torch_threads, max_body_bytes)
        self.service = RecommendService(run_dir, max_k)

    @recommend_api.get("/healthz")
    async def healthz(self) -> Health:
        from .app import service_health

        return service_health(self.service)

    @recommend_api.post("/recommend")
    async def recommend(self, req: RecommendRequest) -> RecommendResponse:
        return self.service.recommend(req)
