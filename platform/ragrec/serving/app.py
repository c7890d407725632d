"""Ray Serve application of a finished RALLRec run: FastAPI ingress -> Retriever -> Reranker -> Predictor.
(A ranking run, e.g. UR4Rec, gets :mod:`ragrec.serving.rerank`'s ``POST /rerank`` instead.)

Routes: ``POST /predict`` (:class:`~ragrec.serving.schemas.PredictRequest` ->
:class:`~ragrec.serving.schemas.PredictResponse`) and ``GET /healthz``. Bad requests never reach the
model: pydantic (strict) rejects malformed JSON and wrong types with 422, :func:`check_request` unknown
ids (404) and oversized lists (413); bodies over ``max_body_bytes`` get 413 before they are parsed
(:class:`BodySizeLimit`); every error body is ``{"detail": "<what is wrong>"}``.

The Predictor scores with ``@serve.batch`` (requests arriving within ``batch_wait_timeout_s`` share one
engine call of up to ``max_batch_size`` requests) or, with ``batching=False``, one request at a time.
Each replica reads the run from ``run_dir`` itself (the folder must be visible to every node).

Overload is Ray Serve's own backpressure: the ingress deployment runs ``max_ongoing_requests`` requests per
replica, the proxy queues ``max_queued_requests`` more, and every request beyond gets 503 with a
``Retry-After: retry_after_s`` header (``BackpressureConfig``); the deployments behind the ingress never see
more than it lets through. :func:`serve_run` stops Serve and the Ray it started on Ctrl-C or SIGTERM.
"""

# no `from __future__ import annotations`: FastAPI reads the route signatures' real types
import logging
import os
import signal
import threading
from dataclasses import asdict

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve.config import BackpressureConfig

from ..config import ServeConfig
from .schemas import Catalog, Health, PredictRequest, PredictResponse, RequestError, check_request

__all__ = ["APP_NAME", "DEFAULT_MAX_BODY_BYTES", "BodySizeLimit", "ServeOptions", "build_app", "serve_run"]

log = logging.getLogger("ragrec.serving")
APP_NAME = "ragrec"
DEFAULT_MAX_BODY_BYTES = 1 << 20  # 1 MiB: 100 int64 ids are ~2 KB of JSON


ServeOptions = ServeConfig
"""Deployment knobs (:class:`ragrec.config.ServeConfig`, validated): batching, resources, overload limits, body
size. CPUs are fractional so that all replicas fit next to other Ray work."""


def ingress_options(opts: ServeConfig) -> dict:
    """``.options(...)`` of an ingress deployment: Serve's own concurrency limit, queue bound and 503 answer."""
    return {
        "max_ongoing_requests": opts.max_ongoing_requests,
        "max_queued_requests": opts.max_queued_requests,
        "backpressure_config": BackpressureConfig(status_code=503, retry_after_s=opts.retry_after_s),
    }


class BodySizeLimit:
    """ASGI middleware: 413 ``{"detail": ...}`` for an HTTP request whose body exceeds ``max_bytes`` (default:
    :func:`set_body_limit`'s), judged from ``Content-Length`` and from the bytes actually received (chunked
    bodies, lying headers). The body is read here (at most ``max_bytes``) and replayed to the app."""

    process_max_bytes = DEFAULT_MAX_BODY_BYTES
    """The limit of middlewares made without one, in this process (:func:`set_body_limit`)."""

    def __init__(self, app, max_bytes: int | None = None) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.max_bytes if self.max_bytes is not None else BodySizeLimit.process_max_bytes
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > limit:
            return await self._too_large(scope, receive, send, limit, f"Content-Length {int(declared)}")
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # client went away: nothing to answer
                return None
            body += message.get("body", b"")
            if len(body) > limit:
                return await self._too_large(scope, receive, send, limit, f"more than {limit} bytes received")
            more = message.get("more_body", False)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    @staticmethod
    async def _too_large(scope, receive, send, limit: int, seen: str) -> None:
        await JSONResponse(
            status_code=413,
            content={
                "detail": f"request body too large ({seen}): at most {limit} bytes (max_body_bytes); "
                "send fewer items per request"
            },
        )(scope, receive, send)


def bind_single_ingress(
    ingress_cls,
    run_dir: str,
    limit: int,
    *,
    cpus: float,
    torch_threads: int | None,
    max_body_bytes: int | None,
    ingress: dict | None,
):
    """A one-deployment app (a ranking or full-ranking run) bound with its CPUs and the overload options
    ``ingress`` (:func:`ingress_options`); ``limit`` is the run kind's largest list or k."""
    return ingress_cls.options(ray_actor_options={"num_cpus": cpus}, **(ingress or {})).bind(
        run_dir, limit, torch_threads, max_body_bytes
    )


def setup_replica(torch_threads: int | None, max_body_bytes: int | None) -> None:
    """What every replica of a single-service app (``/rerank``, ``/recommend``) does first: the request-body
    limit and torch's thread count (default: the machine's CPUs)."""
    import torch

    set_body_limit(max_body_bytes or DEFAULT_MAX_BODY_BYTES)
    torch.set_num_threads(torch_threads or os.cpu_count() or 1)


def service_health(service) -> Health:
    """``GET /healthz`` of a single-service app: the run's name and catalog size (no batching)."""
    c = service.catalog
    return Health(status="ok", run=service.name, n_users=c.n_users, n_items=c.n_items, batching=False)


def set_body_limit(max_body_bytes: int) -> None:
    """The limit of :class:`BodySizeLimit` middlewares made without one, in this process (a Serve replica:
    ``@serve.ingress`` serves a frozen copy of the module's app, so the limit cannot be set on ``api`` itself)."""
    BodySizeLimit.process_max_bytes = int(max_body_bytes)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or "body"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)


def make_api(title: str = "ragrec RALLRec service", max_body_bytes: int | None = None) -> FastAPI:
    """The FastAPI app with error handlers turning bad input into 4xx ``{"detail": message}`` and a
    :class:`BodySizeLimit` of ``max_body_bytes`` (None: the process's :func:`set_body_limit`, default 1 MiB)."""
    api = FastAPI(title=title)
    api.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)

    @api.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": _validation_message(exc)})

    @api.exception_handler(RequestError)
    async def _rejected(_: Request, exc: RequestError) -> JSONResponse:
        return JSONResponse(status_code=exc.status, content={"detail": exc.message})

    return api


api = make_api()


@serve.deployment
class RetrieverDeployment:
    """User histories + faiss: the candidate histories of a request's targets."""

    def __init__(self, run_dir: str) -> None:
        from .chain import Retriever, retrieval_matrices
        from .state import load_state

        state = load_state(run_dir)
        self.histories = state.histories
        self.retriever = Retriever(retrieval_matrices(state.views, state.cfg.retrieval), state.cfg.retrieval.k)

    def __call__(self, user_id: int, item_ids: list[int], as_of: int | None):
        w = self.histories.window(user_id, np.asarray(item_ids, dtype=np.int64), as_of)
        return self.retriever.candidates(w)


@serve.deployment
class RerankerDeployment:
    """The alpha/beta reranker (the run's ``retrieval`` config) over the candidates."""

    def __init__(self, run_dir: str) -> None:
        from .chain import Reranker
        from .state import load_state

        state = load_state(run_dir)
        self.reranker = Reranker(state.views, state.cfg.retrieval)

    def __call__(self, candidates):
        return self.reranker.rerank(candidates)


@serve.deployment
class PredictorDeployment:
    """The LoRA-tuned LLM: prompts + yes/no scoring, batched across requests with ``@serve.batch``; with the
    run's fusion model also ``p_fused`` (DeepFM + item/user table loaded once per replica)."""

    def __init__(self, run_dir: str, options: dict) -> None:
        import torch

        from ..llm import load_engine
        from .chain import Predictor
        from .state import load_state

        opts = ServeOptions.model_validate(options)
        torch.set_num_threads(opts.torch_threads or os.cpu_count() or 1)
        state = load_state(run_dir)
        self.predictor = Predictor(
            state.cfg,
            state.items,
            state.users,
            load_engine(state.cfg.llm, adapter_path=state.adapter_path),
            fusion=state.fusion,
        )
        self.batching = opts.batching
        self._batched.set_max_batch_size(opts.max_batch_size)
        self._batched.set_batch_wait_timeout_s(opts.batch_wait_timeout_s)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def _batched(self, contexts: list) -> list[np.ndarray]:
        return self.predictor.score(contexts)

    async def __call__(self, contexts) -> tuple:
        """``(probs, p_fused or None)`` of the contexts' rows."""
        if self.batching:
            probs = await self._batched(contexts)
        else:
            probs = self.predictor.score([contexts])[0]
        return probs, self.predictor.fuse(contexts, probs)


@serve.deployment
@serve.ingress(api)
class Ingress:
    """HTTP front: validates, then retrieve -> rerank -> predict through deployment handles."""

    def __init__(
        self,
        retriever,
        reranker,
        predictor,
        catalog: dict,
        run: str,
        batching: bool,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        set_body_limit(max_body_bytes)
        self.retriever, self.reranker, self.predictor = retriever, reranker, predictor
        self.catalog = Catalog(**catalog)
        self.run, self.batching = run, batching

    @api.get("/healthz")
    async def healthz(self) -> Health:
        return Health(
            status="ok",
            run=self.run,
            n_users=self.catalog.n_users,
            n_items=self.catalog.n_items,
            batching=self.batching,
        )

    @api.post("/predict")
    async def predict(self, req: PredictRequest) -> PredictResponse:
        from .chain import response

        check_request(req, self.catalog)
        candidates = self.retriever.remote(req.user_id, req.item_ids, req.as_of)
        contexts = await self.reranker.remote(candidates)
        probs, fused = await self.predictor.remote(contexts)
        return response(req, contexts, probs, fused)


def catalog_of(run_dir: str, max_items: int) -> tuple[Catalog, str]:
    """Id ranges of the run (from its dataset tables) and the run's name."""
    from ..methods import load_run
    from ..stages.data import read_users
    from .state import n_users_of

    run = load_run(run_dir)
    ds = run.arts["dataset"]
    n_users = n_users_of(ds.read_table("interactions"), read_users(ds))
    return Catalog(n_users, ds.read_table("items").num_rows, max_items), run.cfg.name


def run_task(run_dir: str) -> str:
    """``ctr``, ``rerank`` or ``full_ranking``: what the method of the run in ``run_dir`` predicts."""
    from ..methods import get_method, load_run

    return get_method(load_run(run_dir).method).task


def servable_run(run_dir: str, task: str, refusal: str):
    """``(run, its method's pipeline class)`` of the run in ``run_dir``, whose method must be servable
    (:meth:`~ragrec.methods.base.Method.require_servable`) and predict ``task``; ValueError
    ``"<run_dir>: a <title> run <refusal>"`` for another task."""
    from ..methods import get_method, load_run

    run = load_run(run_dir)
    method = get_method(run.method)
    method.require_servable()
    if method.task != task:
        raise ValueError(f"{run_dir}: a {method.title} run {refusal}")
    return run, method.pipeline_class()


def predictor_resources(opts: ServeOptions) -> dict[str, float]:
    """``ray_actor_options`` of the Predictor: its CPUs, plus ``num_gpus`` when it asks for GPUs."""
    out = {"num_cpus": opts.predictor_cpus}
    if opts.predictor_gpus > 0:
        out["num_gpus"] = opts.predictor_gpus
    return out


def build_app(run_dir: str, batching: bool = True, **options) -> serve.Application:
    """The bound Serve application for the run in ``run_dir``; ``options``: :class:`ServeOptions` fields.

    Raises:
        FileNotFoundError: ``run_dir`` holds no finished run (no ``run.json`` / missing artifacts).
    """
    opts = serve_options(batching=batching, **options)
    run_dir = str(os.path.abspath(run_dir))
    task = run_task(run_dir)
    if task in ("full_ranking", "rerank"):  # one deployment behind POST /recommend or POST /rerank
        if task == "full_ranking":
            from .recommend import DEFAULT_MAX_K
            from .recommend import RecommendIngress as ingress_cls

            limit = DEFAULT_MAX_K
        else:
            from .rerank import RankIngress as ingress_cls

            limit = opts.max_items
        return bind_single_ingress(
            ingress_cls,
            run_dir,
            limit,
            cpus=opts.predictor_cpus,
            torch_threads=opts.torch_threads,
            max_body_bytes=opts.max_body_bytes,
            ingress=ingress_options(opts),
        )
    catalog, name = catalog_of(run_dir, opts.max_items)
    light = {"num_cpus": opts.light_cpus}
    ongoing = opts.max_ongoing_requests
    retriever = RetrieverDeployment.options(ray_actor_options=light, max_ongoing_requests=ongoing).bind(run_dir)
    reranker = RerankerDeployment.options(ray_actor_options=light, max_ongoing_requests=ongoing).bind(run_dir)
    predictor = PredictorDeployment.options(
        ray_actor_options=predictor_resources(opts), max_ongoing_requests=max(ongoing, 2 * opts.max_batch_size)
    ).bind(run_dir, opts.model_dump())
    return Ingress.options(ray_actor_options=light, **ingress_options(opts)).bind(
        retriever, reranker, predictor, asdict(catalog), name, batching, opts.max_body_bytes
    )


def serve_options(**options) -> ServeConfig:
    """:class:`ServeOptions` from keyword options; a ValueError on one line naming the option and the fix."""
    from pydantic import ValidationError

    try:
        return ServeOptions(**options)
    except ValidationError as e:
        err = e.errors()[0]
        name = ".".join(str(x) for x in err["loc"]) or "options"
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = f"unknown serve option; the options are {', '.join(ServeOptions.model_fields)}"
        raise ValueError(f"serve option {name}={err.get('input')!r}: {msg}") from None


def serve_run(
    run_dir: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    batching: bool = True,
    blocking: bool = True,
    **options,
) -> str:
    """Start the service for ``run_dir`` on ``http://host:port`` and return that URL; ``options``:
    :class:`ServeOptions` fields (overload limits, body size, resources).

    Connects to ``RAY_ADDRESS`` or starts a local Ray (``ragrec.runtime.init``). ``blocking=True`` serves until
    Ctrl-C (SIGINT) or SIGTERM, then deletes the app, shuts Serve down and disconnects from Ray (stopping the
    local Ray it started) and returns; ``blocking=False`` returns once the app is up.
    """
    import ray

    from ..methods import load_run
    from ..runtime import init

    opts = serve_options(batching=batching, **options)  # bad options fail before Ray starts
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning(
            "serving on %s: the API has no authentication; expose it only behind an authenticating reverse "
            "proxy or on a private network (default 127.0.0.1 + an SSH tunnel)",
            host,
        )
    ray_cfg = load_run(run_dir).cfg.ray
    stop = None
    try:
        init(ray_cfg.address, ray_cfg.num_cpus)
        if blocking:  # after ray.init, which sets its own SIGTERM handler: a signal now stops the service cleanly
            stop = _StopSignals()
        app = build_app(run_dir, **opts.model_dump())
        serve.start(http_options={"host": host, "port": port})
        serve.run(app, name=APP_NAME, route_prefix="/")
        url = f"http://{host}:{port}"
        route = {"rerank": "POST /rerank", "full_ranking": "POST /recommend"}.get(run_task(run_dir), "POST /predict")
        log.info("serving %s at %s (%s, GET /healthz)", run_dir, url, route)
        if stop is None:
            return url
        print(f"ragrec serve: {url}  ({route}, GET /healthz); Ctrl-C stops", flush=True)
        stop.wait()
        log.info("%s: stopping the service", stop.name)
    finally:
        if blocking:
            if stop is not None:
                stop.restore()
            _shutdown(ray)
    return url


class _StopSignals:
    """SIGINT / SIGTERM set an event (instead of raising inside Ray's calls) until :meth:`restore`."""

    def __init__(self) -> None:
        self.event, self.name = threading.Event(), "signal"
        main = threading.current_thread() is threading.main_thread()  # signal handlers live in the main thread
        sigs = (signal.SIGINT, signal.SIGTERM) if main else ()
        self.previous = {sig: signal.signal(sig, self._handle) for sig in sigs}

    def _handle(self, signum, _frame) -> None:
        self.name = signal.Signals(signum).name
        self.event.set()

    def wait(self) -> None:
        while not self.event.wait(0.5):  # a timed wait lets the handler run promptly
            pass

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def _shutdown(ray) -> None:
    """Delete the app, stop Serve, disconnect from Ray (which stops a local Ray started here); never raises."""
    for step in (lambda: serve.delete(APP_NAME), serve.shutdown, ray.shutdown):
        try:
            if ray.is_initialized():
                step()
        except Exception as e:
            log.warning("while stopping: %s: %s", type(e).__name__, e)
