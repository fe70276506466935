"""The activator, composed in one visible place: ``create_app(settings)``.

The lifespan owns the shared HTTP client, the workloads and the idle reaper, and
shuts them down in order: stop reaping, stop instances, close the client.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from snapshots import SnapshotError, SnapshotStore
from warmpool import LocalRuntime

from .check import EngineSetup, detect_engine
from .errors import (
    ActivatorError,
    BadRequest,
    NotFound,
    OperationFailed,
    PayloadTooLarge,
    Unauthorized,
    error_response,
)
from .idle import Reaper
from .metrics import Metrics
from .proxy import forward
from .resolve import Registry
from .settings import Settings
from .workload import Workload

__all__ = ["create_app"]

log = logging.getLogger("dormant.activator")


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the {limit}-byte limit")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def _model_of(body: bytes) -> str:
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object")
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest('request body needs a "model" string naming the model to use')
    return model


def create_app(settings: Settings, engine: EngineSetup | None = None) -> FastAPI:
    """Build the activator for ``settings``. ``engine`` is probed when not given."""
    setup = engine or detect_engine(settings)
    state_dir = settings.state_path
    state_dir.mkdir(parents=True, exist_ok=True)
    metrics = Metrics()
    store = SnapshotStore(state_dir / "snapshots")
    admin_token = settings.resolved_admin_token()
    started = time.time()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        removed = store.clean_partial()
        if removed:
            log.warning("removed %d half-written snapshot(s) from an earlier crash", len(removed))
        limits = httpx.Limits(max_connections=1000, max_keepalive_connections=100)
        timeout = httpx.Timeout(connect=10.0, read=600.0, write=60.0, pool=30.0)
        async with httpx.AsyncClient(limits=limits, timeout=timeout, trust_env=False) as client:
            runtime = LocalRuntime(store, state_dir / "work", setup.criu, client)
            workloads = [
                Workload(w, runtime, store, state_dir, metrics) for w in settings.workloads
            ]
            app.state.registry = Registry(workloads)
            app.state.client = client
            reaper = Reaper(workloads, settings.reap_interval)
            reaper.start()
            log.info("engine: %s (%s)", setup.choice.name, setup.choice.reason)
            for w in workloads:
                log.info(
                    "workload %s: %s, models %s", w.name, w.state, ", ".join(w.settings.models)
                )
            try:
                yield
            finally:
                await reaper.stop()
                for w in workloads:
                    await w.stop()

    app = FastAPI(title="Dormant activator", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.settings = settings
    app.state.engine = setup

    @app.exception_handler(ActivatorError)
    async def _activator_error(request: Request, exc: ActivatorError) -> Response:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        return error_response(BadRequest(f"invalid request: {exc.errors()}"))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse(
            {
                "error": {
                    "message": f"internal error: {type(exc).__name__}",
                    "type": "server_error",
                    "code": "internal_error",
                }
            },
            status_code=500,
        )

    def registry() -> Registry:
        reg: Registry = app.state.registry
        return reg

    # -- OpenAI surface ----------------------------------------------------------------

    def model_entry(model: str, workload: Workload) -> dict[str, object]:
        return {
            "id": model,
            "object": "model",
            "created": int(started),
            "owned_by": "dormant",
            "dormant": {"workload": workload.name, "state": workload.state.value},
        }

    @app.get("/v1/models")
    async def list_models() -> dict[str, object]:
        """Every configured model, whatever its workload's state: hibernated models stay listed."""
        reg = registry()
        return {"object": "list", "data": [model_entry(m, reg.by_model(m)) for m in reg.models]}

    @app.get("/v1/models/{model:path}")
    async def get_model(model: str) -> dict[str, object]:
        return model_entry(model, registry().by_model(model))

    @app.post("/v1/{path:path}")
    async def openai(request: Request, path: str) -> Response:
        body = await _read_body(request, settings.max_body_bytes)
        workload = registry().by_model(_model_of(body))
        lease = await workload.acquire()
        metrics.requests.labels(workload.name, "forwarded").inc()
        return await forward(app.state.client, request, lease, body, workload.name)

    # -- admin -------------------------------------------------------------------------

    def authorize(request: Request) -> None:
        if not admin_token:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.encode(), admin_token.encode()
        ):
            raise Unauthorized(
                "admin API: missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}
            )

    @app.get("/-/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/-/readyz")
    async def readyz() -> dict[str, object]:
        return {"status": "ok", "workloads": len(registry())}

    @app.get("/-/workloads")
    async def workloads(request: Request) -> dict[str, object]:
        authorize(request)
        return {
            "engine": {"name": setup.choice.name, "reason": setup.choice.reason},
            "workloads": [w.view() for w in registry()],
        }

    @app.get("/-/workloads/{name}")
    async def workload_detail(request: Request, name: str) -> dict[str, object]:
        authorize(request)
        return registry().by_name(name).view()

    @app.post("/-/workloads/{name}/hibernate")
    async def hibernate(request: Request, name: str) -> dict[str, object]:
        authorize(request)
        workload = registry().by_name(name)
        try:
            await workload.hibernate("admin request")
        except SnapshotError as exc:
            raise OperationFailed(
                f"hibernate failed: {exc}; {workload.name} is {workload.state}", workload=name
            ) from exc
        return workload.view()

    @app.post("/-/workloads/{name}/wake")
    async def wake(request: Request, name: str) -> dict[str, object]:
        authorize(request)
        workload = registry().by_name(name)
        await workload.wake()
        return workload.view()

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"])
    async def not_found(path: str) -> Response:
        raise NotFound(
            f"no route for /{path}; Dormant serves /v1/* (by model), /-/* (admin), /metrics"
        )

    return app
