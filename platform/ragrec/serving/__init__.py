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


def build_app(run_dir: str, batching: bool = True, **options):
    """See :func:`ragrec.serving.app.build_app` (imported lazily)."""
    from .app import build_app as _build

    return _build(run_dir, batching=batching, **options)


def serve_run(
    run_dir: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    batching: bool = True,
    blocking: bool = True,
    **options,
) -> str:
    """See :func:`ragrec.serving.app.serve_run` (imported lazily); ``options``: ``ServeOptions`` fields."""
    from .app import serve_run as _run

    return _run(run_dir, host=host, port=port, batching=batching, blocking=blocking, **options)
