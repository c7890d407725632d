"""Ray Serve for a finished RALLRec run (docs/architecture.md §6): retrieve -> rerank -> predict behind FastAPI.

Plain, Serve-free logic lives in :mod:`.schemas`, :mod:`.state` and :mod:`.chain` (testable without
Ray); :mod:`.app` wraps it into deployments (imported lazily: it needs ``ray.serve`` and FastAPI).
"""

from .chain import Predictor, Reranker, Retriever, ServingChain, retrieval_matrices
from .schemas import Catalog, ItemPrediction, PredictRequest, PredictResponse, RequestError, check_request
from .state import FusionScorer, HistoryWindow, ServingState, UserHistories, load_state

__all__ = [
    "Catalog",
    "FusionScorer",
    "HistoryWindow",
    "ItemPrediction",
    "PredictRequest",
    "PredictResponse",
    "Predictor",
    "RequestError",
    "Reranker",
    "Retriever",
    "ServingChain",
    "ServingState",
    "UserHistories",
    "build_app",
    "check_request",
    "load_state",
    "retrieval_matrices",
    "serve_run",
]


_LAZY = ("build_app", "serve_run")  # in .app, which needs ray.serve and FastAPI: imported on first use


def __getattr__(name: str):
    """``build_app`` / ``serve_run`` of :mod:`ragrec.serving.app`, imported lazily (PEP 562)."""
    if name in _LAZY:
        from . import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
