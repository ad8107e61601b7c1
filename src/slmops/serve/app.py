"""The FastAPI application: wiring (catalog, pool, service, metrics, request log), middleware and error shapes.

:func:`create_app` builds an app from a :class:`~slmops.serve.config.ServeConfig`; :func:`serve`
runs it with uvicorn (what ``slmops serve`` calls). Every error leaves in OpenAI's shape: bad
input is 400 (malformed JSON, wrong types, out-of-range values, unsupported parameters), an unknown
model 404, a body over ``--max-body`` 413, a full queue 503 with Retry-After, a timeout 504; a fault
of the server's own (a model that fails to load, a broken chat template) is a 500 with its own code,
and an unexpected bug a 500 ``internal``. Metric labels come only from route templates and served
model ids, so no request can grow ``/metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

from slmops import __version__
from slmops._optional import require
from slmops.serve.config import ServeConfig
from slmops.store.registry import Store

log = logging.getLogger(__name__)


def create_app(config: ServeConfig | None = None, *, store: Store | None = None, opener: Callable[..., Any] | None = None) -> Any:
    """A FastAPI app serving ``config.models`` from ``store`` (default: the store in ``$SLMOPS_HOME``).

    ``opener(artifact, runtime=...)`` replaces :func:`slmops.runtimes.open_runtime` (tests wrap runtimes with it).
    """
    fastapi = require("fastapi", extra="serve", purpose="slmops serve")
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    from slmops.monitor.requestlog import RequestLog, default_path
    from slmops.serve.metrics import Metrics
    from slmops.serve.pool import ModelPool
    from slmops.serve.protocol import APIError
    from slmops.serve.resolve import Catalog
    from slmops.serve.routes import chat, completions, manage, models
    from slmops.serve.service import Service

    config = config or ServeConfig()
    own_store = store is None
    store = store or Store()
    metrics = Metrics()
    catalog = Catalog(store, config)
    pool: ModelPool = ModelPool(config, opener=opener, on_change=lambda: metrics.observe_pool(pool))
    rlog = RequestLog(config.request_log or default_path(store.home), log_content=config.log_content) if config.log_requests else None
    service = Service(config, catalog, pool, metrics, rlog)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        reaper = asyncio.create_task(pool.reaper())
        drift = None
        if config.drift_baseline and rlog is not None:
            from slmops.monitor.drift_run import drift_loop

            drift = asyncio.create_task(drift_loop(store=store, catalog=catalog, config=config, metrics=metrics,
                                                   log_path=rlog.path, state=app.state.drift))
        judge = None
        if config.judge_url and rlog is not None:
            from slmops.monitor.sample import judge_loop

            judge = asyncio.create_task(judge_loop(store=store, catalog=catalog, config=config, metrics=metrics,
                                                   log_path=rlog.path, state=app.state.quality))
        if config.preload:
            for model_id in config.models:
                await pool.ensure(catalog.resolve(model_id))
        try:
            yield
        finally:
            reaper.cancel()
            for task in (drift, judge):
                if task is not None:
                    task.cancel()
            await pool.close()
            service.close()
            if rlog is not None:
                rlog.close()
            if own_store:
                store.close()

    app = fastapi.FastAPI(
        title="slmops",
        version=__version__,
        description="OpenAI-compatible server for small language models from the slmops registry.",
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.config = config
    app.state.drift = {}  # model id -> latest drift report (serve --drift-baseline)
    app.state.quality = {}  # model id -> latest judge totals (serve --judge)

    templates: list[tuple[Any, str]] = []  # (path regex, route template), filled once the routes are in

    def route_label(scope: Any) -> str:
        """The route template a request's path matches (``/v1/models/{model_id:path}``), else ``other``: never the raw path."""
        path = scope.get("path", "")
        return next((template for regex, template in templates if regex.match(path)), "other")

    def reject(status: int, kind: str, scope: Any) -> None:
        metrics.requests.labels("", "", route_label(scope), str(status)).inc()
        metrics.errors.labels(kind).inc()

    @app.exception_handler(APIError)
    async def _api_error(request: Any, exc: APIError) -> Any:
        if not exc.counted:  # chat and completions count their own (with the model); other routes are counted here
            reject(exc.status, exc.kind, request.scope)
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Any, exc: RequestValidationError) -> Any:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": "invalid"}
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        if first.get("type") == "json_invalid":
            err = APIError(400, f"the request body is not valid JSON: {first.get('msg')}", code="invalid_json")
        else:
            where = ".".join(loc) or "body"
            err = APIError(400, f"{where}: {first.get('msg')}", param=loc[0] if loc else None, code="invalid_value")
        reject(400, err.kind, request.scope)
        return JSONResponse(err.body(), status_code=400)

    @app.exception_handler(HTTPException)
    async def _http(request: Any, exc: HTTPException) -> Any:
        kind = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(exc.status_code, "http_error")
        reject(exc.status_code, kind, request.scope)
        err = APIError(exc.status_code, str(exc.detail), type="invalid_request_error", code=kind)
        return JSONResponse(err.body(), status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _bug(request: Any, exc: Exception) -> Any:
        log.exception("unexpected error on %s", request.url.path)
        reject(500, "internal", request.scope)
        return JSONResponse(APIError(500, "internal server error", type="server_error", code="internal").body(), status_code=500)

    from slmops.serve.dashboard import OPEN_PATHS as dashboard_paths
    from slmops.serve.dashboard import router as dashboard_router

    for r in (chat.router, completions.router, models.router, manage.router, dashboard_router):
        app.include_router(r)
        templates.extend((route.path_regex, route.path) for route in r.routes if hasattr(route, "path_regex"))
    templates.extend((route.path_regex, route.path) for route in app.router.routes if hasattr(route, "path_regex"))
    _document_served_models(app, config)

    if config.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=config.cors_origins, allow_methods=["GET", "POST", "OPTIONS"],
                           allow_headers=["Authorization", "Content-Type"])
    from slmops.serve.guards import BodyLimit, LocalOnly, local_hosts

    app.add_middleware(BodyLimit, limit=config.max_body_bytes, on_reject=lambda scope, status, kind: reject(status, kind, scope))
    if config.api_key is not None:  # outside the body limit: an unauthenticated body is never read
        from slmops.serve.auth import BearerAuth

        open_paths = frozenset({"/health"} | dashboard_paths | (set() if config.metrics_auth else {"/metrics"}))
        app.add_middleware(BearerAuth, key=config.api_key.get_secret_value(), open_paths=open_paths,
                           on_reject=lambda scope: reject(401, "invalid_api_key", scope))
    else:  # keyless: outermost, a request for another host name (or from another site) is refused first
        app.add_middleware(LocalOnly, hosts=local_hosts(config.host, config.allowed_hosts), origins=config.cors_origins,
                           on_reject=lambda scope, status, kind: reject(status, kind, scope))
    return app


def _document_served_models(app: Any, config: ServeConfig) -> None:
    """Show the served model ids as examples in the OpenAPI schema (Swagger's "try it out", schema fuzzers)."""
    served = [*config.models, *config.canary]
    if not served:
        return
    plain_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = plain_openapi()
            for name, extra in (("ChatCompletionRequest", {"messages": [[{"role": "user", "content": "Hello!"}]]}),
                                ("CompletionRequest", {"prompt": ["Once upon a time"]})):
                props = schema.get("components", {}).get("schemas", {}).get(name, {}).get("properties", {})
                if "model" in props:
                    props["model"]["examples"] = served[:1]
                for field, examples in extra.items():
                    if field in props:
                        props[field]["examples"] = examples
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi


def serve(config: ServeConfig, *, store: Store | None = None, log_level: str = "info") -> None:
    """Run the server in the foreground until interrupted (``slmops serve``)."""
    uvicorn = require("uvicorn", extra="serve", purpose="slmops serve")
    app = create_app(config, store=store)
    service = app.state.service
    threading.Thread(target=service.warm, name="slmops-render-warm", daemon=True).start()  # ready before the first chat

    class Server(uvicorn.Server):  # type: ignore[misc,name-defined]
        def handle_exit(self, sig: int, frame: Any) -> None:
            service.stop_rendering()  # SIGTERM/Ctrl-C: a render under way ends now, not after its budget
            super().handle_exit(sig, frame)

    cfg = uvicorn.Config(app, host=config.host, port=config.port, log_level=log_level, access_log=log_level == "debug",
                         timeout_graceful_shutdown=10)
    Server(cfg).run()
