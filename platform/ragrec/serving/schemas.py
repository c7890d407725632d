"""Request / response models of the serving API and the semantic checks of a request.

``POST /predict`` takes :class:`PredictRequest` and answers :class:`PredictResponse`. Type errors
(strings for ids, floats, missing fields, unknown fields, malformed JSON) are rejected by pydantic in
strict mode (HTTP 422), as are ids and timestamps outside int64 (:data:`Int64`); :func:`check_request`
then rejects what only the run can judge: ids outside the run's catalog (404) and more items than the
service allows (413). Every rejection carries a message naming the field and what is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "INT64_MAX",
    "INT64_MIN",
    "Catalog",
    "Health",
    "Int64",
    "ItemPrediction",
    "PredictRequest",
    "PredictResponse",
    "RequestError",
    "check_request",
]

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
Int64 = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]
"""An int that fits numpy's int64 (ids and timestamps become int64 arrays): larger values are a 422 naming the
field, not an OverflowError (500) in the handler."""


class PredictRequest(BaseModel):
    """One user and the items to score for them.

    ``as_of`` (optional, a unix timestamp): score as if each rating happened at that time, i.e. the
    history is what the ``rallrec`` protocol gives a rating of the item at ``as_of`` (earlier ratings,
    same-second ratings of smaller item ids). Without it, the user's whole known history is used. Either
    way an item's own ratings are left out of its history (``ItemPrediction.in_history`` says the user
    had rated it).
    """

    model_config = ConfigDict(strict=True, extra="forbid")

    user_id: Int64 = Field(description="dense user id of the run (0..n_users-1)")
    item_ids: list[Int64] = Field(min_length=1, description="dense item ids to score (at least one)")
    as_of: Int64 | None = Field(None, description="unix timestamp; history = ratings before it (protocol order)")


class ItemPrediction(BaseModel):
    item_id: int
    prob: float = Field(description="P(the user likes the item) = softmax([yes, no])[0]")
    history_item_ids: list[int] = Field(description="the history items shown to the LLM, in prompt order")
    history_ratings: list[float]
    in_history: bool = Field(
        False,
        description="the user had already rated this item (before as_of when given); its own rating is never "
        "part of history_item_ids",
    )
    p_fused: float | None = Field(
        None,
        description="the run's fusion (LLM + DeepFM + item/user baseline, fitted on "
        "validation) of this item; null when the run has no fusion model",
    )


class PredictResponse(BaseModel):
    user_id: int
    predictions: list[ItemPrediction] = Field(description="one per requested item, in request order")


class Health(BaseModel):
    status: str
    run: str
    n_users: int
    n_items: int
    batching: bool


class RequestError(ValueError):
    """A request the service rejects: ``status`` (4xx) and a message saying what is wrong."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Catalog:
    """What the ingress needs to judge a request: id ranges and the per-request item limit."""

    n_users: int
    n_items: int
    max_items: int = 100


def check_request(req: PredictRequest, catalog: Catalog) -> None:
    """Raise :class:`RequestError` when ``req`` names unknown ids (404) or too many items (413)."""
    n = len(req.item_ids)
    if n > catalog.max_items:
        raise RequestError(
            413,
            f"item_ids holds {n} items; at most {catalog.max_items} per request: split the list into several requests",
        )
    if not 0 <= req.user_id < catalog.n_users:
        raise RequestError(404, f"unknown user_id {req.user_id}: this run knows users 0..{catalog.n_users - 1}")
    ids = np.asarray(req.item_ids, dtype=np.int64)
    bad = ids[(ids < 0) | (ids >= catalog.n_items)]
    if bad.size:
        shown = ", ".join(str(x) for x in bad[:10].tolist()) + (", ..." if bad.size > 10 else "")
        raise RequestError(404, f"unknown item_ids [{shown}]: this run knows items 0..{catalog.n_items - 1}")
