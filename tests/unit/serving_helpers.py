"""The HTTP tests' service: a minimal FastAPI app built with ``make_api`` whose routes only run the real request
models and checks (no Ray Serve, no model)."""

# no `from __future__ import annotations`: FastAPI reads the route signatures' real types
from starlette.testclient import TestClient

from ragrec.serving.app import make_api
from ragrec.serving.rerank import RerankRequest, check_rerank
from ragrec.serving.schemas import Catalog, PredictRequest, check_request

CATALOG = Catalog(n_users=10, n_items=20, max_items=100)


def checking_client(max_body_bytes: int | None = None) -> TestClient:
    """A client of ``make_api("test", max_body_bytes)`` with ``POST /predict`` and ``POST /rerank``: the request
    is parsed and checked against :data:`CATALOG` (an error status on a bad one), else answered ``{"ok": true}``."""
    api = make_api("test", max_body_bytes=max_body_bytes)

    @api.post("/predict")
    async def predict(req: PredictRequest) -> dict:
        check_request(req, CATALOG)
        return {"ok": True}

    @api.post("/rerank")
    async def rerank(req: RerankRequest) -> dict:
        check_rerank(req, CATALOG)
        return {"ok": True}

    return TestClient(api)
