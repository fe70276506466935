"""The activator, composed in one visible place: ``create_app(settings)``.

The lifespan owns the shared HTTP client, the workloads and the idle reaper, and
shuts them down in order: stop reaping, stop admitting, drain, stop or hibernate
the instances, close the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING

import httpx
from fastapi import FastAPI, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from snapshots import SnapshotStore
from warmpool import CgroupTree, LocalRuntime, WarmpoolError, format_size, open_device
from warmpool.pool import Pool

from .access import TracedFastAPI, record
from .admin import admin_router, authorize, health_router
from .check import EngineSetup, detect_engine
from .errors import (
    ActivatorError,
    BadRequest,
    ClientGone,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    error_response,
)
from .idle import Reaper
from .lease import Lease
from .limits import BodyClock
from .metrics import Metrics
from .notebooks import ActivityProbe
from .proxy import (
    Call,
    Timeouts,
    forward,
    upstream_session,
    waking_stream,
)
from .resolve import Registry, confined
from .settings import ConfigError, Settings, WorkloadSettings, pool_problems
from .specs import spec_factory
from .websocket import proxy_websocket, refuse
from .workload import Workload

if TYPE_CHECKING:
    from .cluster import ClusterSetup, ClusterWorkloads

__all__ = ["create_admin_app", "create_app"]

log = logging.getLogger("dormant.activator")

MAX_WEBSOCKET_MESSAGE = 64 << 20


async def _read_body(request: Request, limit: int) -> bytes:
    """The whole body: at most ``limit`` bytes (413), not too slowly (408, see
    ``limits.BodyClock``); a client that leaves mid-body is ClientGone (one INFO line)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the {limit}-byte limit")
    chunks, clock = [], BodyClock()
    stream = request.stream()
    while True:
        try:
            async with asyncio.timeout(max(clock.next_wait(), 0.0)):
                chunk = await anext(stream)
        except StopAsyncIteration:
            break
        except TimeoutError:
            raise clock.error() from None
        except ClientDisconnect:
            log.info(
                "client left mid-body after %d bytes (request_id=%s)",
                clock.size,
                record(request).request_id,
            )
            raise ClientGone("client left while sending its request body") from None
        clock.received(len(chunk))
        if clock.size > limit:
            raise PayloadTooLarge(
                f"request body exceeds the {limit}-byte limit", headers={"Connection": "close"}
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_openai(body: bytes) -> tuple[str, bool]:
    """The `model` a request names, and whether it asks for a stream."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object")
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest('request body needs a "model" string naming the model to use')
    return model, data.get("stream") is True


def _timeouts(s: WorkloadSettings) -> Timeouts:
    return Timeouts(s.connect_timeout, s.first_byte_timeout, s.stream_idle_timeout)


async def _acquire_or_abandon(request: Request, workload: Workload) -> Lease:
    """Wait for a lease, but leave the queue as soon as the client disconnects."""

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    acquiring = asyncio.ensure_future(workload.acquire())
    watching = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({acquiring, watching}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watching.cancel()
        if not acquiring.done():
            acquiring.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await acquiring
            raise ClientGone(
                f"client left while waiting for {workload.name}", workload=workload.name
            )
    return acquiring.result()


def _from_http_exception(request: Request, exc: HTTPException) -> ActivatorError:
    """Starlette's own 404/405 (routes no handler matched) in the one error shape."""
    path = request.scope.get("raw_path", b"").decode("latin-1") or request.url.path
    error: ActivatorError
    if exc.status_code == 404:
        error = NotFound(f"no route for {path} here")
    elif exc.status_code == 405:
        error = MethodNotAllowed(
            f"{request.method} is not allowed on {path}", headers=dict(exc.headers or {})
        )
    else:
        error = ActivatorError(str(exc.detail), headers=dict(exc.headers or {}))
        error.status, error.code = exc.status_code, f"http_{exc.status_code}"
    return error


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ActivatorError)
    async def _activator_error(request: Request, exc: ActivatorError) -> Response:
        rec = record(request)
        rec.outcome = exc.code
        rec.workload = rec.workload or (exc.workload or "")
        return error_response(exc)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> Response:
        return await _activator_error(request, _from_http_exception(request, exc))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        return await _activator_error(request, BadRequest(f"invalid request: {exc.errors()}"))

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


def create_admin_app(app: FastAPI) -> FastAPI:
    """The admin API alone, for `admin_listen`; it serves ``app``'s workloads."""
    admin = TracedFastAPI(title="Dormant admin", docs_url=None, redoc_url=None)
    admin.state.settings = app.state.settings  # e.g. /-/snapshots reports its state dir
    _install_error_handlers(admin)
    admin.include_router(health_router(lambda: app.state.registry))
    admin.include_router(
        admin_router(lambda: app.state.registry, app.state.admin_token, app.state.engine)
    )
    return admin


def make_pool(settings: Settings, metrics: Metrics) -> Pool | None:
    """The warm pool of ``settings.device`` (None without one). Raises ConfigError when the
    device cannot be opened or a workload can never fit in its budget."""
    device_settings = settings.device
    if device_settings is None:
        return None
    try:
        device = open_device(
            device_settings.kind, device_settings.memory_budget, device_settings.index
        )
    except (ValueError, WarmpoolError) as exc:
        raise ConfigError(f"device: {exc}") from exc
    total = device_settings.memory_budget or device.total()
    budget = total - device_settings.reserve
    if budget <= 0:
        raise ConfigError(
            f"device.reserve: {format_size(device_settings.reserve)} leaves nothing of the "
            f"device's {format_size(total)}"
        )
    for problem in pool_problems(settings.workloads, budget):
        raise ConfigError(f"device: {problem}")
    metrics.pool_budget.set(budget)
    log.info("warm pool: %s, budget %s", device.kind, format_size(budget))
    return Pool(
        budget,
        device,
        kind=device.kind,
        max_defer=device_settings.max_defer,
        suspend_frees=device.kind != "cpu",
        on_thrash=lambda name: metrics.thrash.labels(name).inc(),
    )


def _pool_metrics(pool: Pool, metrics: Metrics) -> None:
    for name, member in pool.view()["members"].items():
        metrics.device_memory.labels(name).set(member["held_bytes"] or 0)
    metrics.pool_used.set(pool.used())


@contextlib.asynccontextmanager
async def _serve_local(
    settings: Settings,
    setup: EngineSetup,
    store: SnapshotStore,
    metrics: Metrics,
    pool: Pool | None,
    client: httpx.AsyncClient,
) -> AsyncIterator[Registry]:
    """runtime local: the configured workloads as process trees on this machine, their
    idle reaper, and at the end ``on_shutdown`` for each."""
    removed = store.clean_partial()
    if removed:
        log.warning("removed %d half-written snapshot(s) from an earlier crash", len(removed))
    state_dir = settings.state_path
    runtime = LocalRuntime(
        store,
        state_dir / "work",
        setup.criu,
        client,
        CgroupTree(state_dir),
        engine_why=setup.choice.reason,
    )
    await asyncio.to_thread(runtime.clean_leftovers)
    workloads = [
        Workload(w, runtime, metrics, spec_factory(w, state_dir), pool=pool)
        for w in settings.workloads
    ]
    if pool is not None:
        for workload in workloads:
            pool.join(workload, declared=workload.settings.memory or 0)
    reaper = Reaper(
        workloads,
        settings.reap_interval,
        ActivityProbe(client, state_dir),
        after_tick=(lambda: _pool_metrics(pool, metrics)) if pool is not None else None,
    )
    reaper.start()
    log.info("engine: %s (%s)", setup.choice.name, setup.choice.reason)
    if runtime.cgroups is not None and not runtime.cgroups.available():
        log.warning(
            "instances run without cgroups (%s): a killed Dormant may leave a "
            "half-restored instance running until the next start",
            runtime.cgroups.why_not,
        )
    for w in workloads:
        log.info("workload %s: %s", w.name, w.state)
    try:
        yield Registry(workloads, pool)
    finally:
        await reaper.stop()
        await asyncio.gather(*(w.shutdown(settings.on_shutdown) for w in workloads))


@contextlib.asynccontextmanager
async def _serve_cluster(
    serve: Callable[..., AbstractAsyncContextManager[ClusterWorkloads]],
    cluster_setup: ClusterSetup,
    settings: Settings,
    metrics: Metrics,
    client: httpx.AsyncClient,
) -> AsyncIterator[Registry]:
    """runtime kubernetes (``activator.cluster.serve``, imported by name): the workloads are
    the namespace's ScaleToZeroPolicies, kept current by a watch, with their idle reaper."""
    async with serve(cluster_setup, settings, metrics, client) as served:
        reaper = Reaper(served.registry, settings.reap_interval)
        reaper.start()
        try:
            yield served.registry
        finally:
            await reaper.stop()


def create_app(settings: Settings, engine: EngineSetup | None = None) -> FastAPI:
    """Build the activator for ``settings``. ``engine`` is probed when not given."""
    setup = engine or detect_engine(settings)
    state_dir = settings.state_path
    state_dir.mkdir(parents=True, exist_ok=True)
    metrics = Metrics()
    store = SnapshotStore(state_dir / "snapshots")
    started = time.time()
    # The runtime, chosen by name. kubernetes is imported only then (the `kube` extra); its
    # settings are checked and the cluster connected (or a pool's device opened) now,
    # before anything starts: a problem is a config error.
    serve_workloads: Callable[[httpx.AsyncClient], AbstractAsyncContextManager[Registry]]
    if settings.runtime == "kubernetes":
        cluster = importlib.import_module(".cluster", __package__)
        serve_workloads = functools.partial(
            _serve_cluster, cluster.serve, cluster.prepare(settings), settings, metrics
        )
    else:
        serve_workloads = functools.partial(
            _serve_local, settings, setup, store, metrics, make_pool(settings, metrics)
        )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Two clients: aiohttp carries the proxied traffic (the hot path); httpx only
        # health checks and notebook probes, so its default pool is plenty.
        async with (
            upstream_session() as session,
            httpx.AsyncClient(timeout=None, trust_env=False) as client,
            serve_workloads(client) as registry,
        ):
            app.state.registry = registry
            app.state.client = session
            yield

    app = TracedFastAPI(title="Dormant activator", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.access_metrics = metrics  # dormant_requests_total, counted with the access line
    app.state.settings = settings
    app.state.engine = setup
    app.state.admin_token = settings.resolved_admin_token()
    _install_error_handlers(app)

    def registry() -> Registry:
        reg: Registry = app.state.registry
        return reg

    async def proxy(
        request: Request, workload: Workload, body: bytes, stream: bool, path: str
    ) -> Response:
        call = Call(
            app.state.client,
            request,
            body,
            path,
            _timeouts(workload.settings),
            workload.name,
            record(request),
            metrics,
        )
        call.record.workload = workload.name
        lease = workload.try_acquire()
        if lease is None:
            every = workload.settings.wake_keepalive
            if stream and every > 0:
                return waking_stream(call, workload.acquire, every)
            lease = await _acquire_or_abandon(request, workload)
        return await forward(call, lease)

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
        path = confined(request.scope["raw_path"].decode("latin-1"), "/v1")
        body = await _read_body(request, settings.max_body_bytes)
        model, stream = _parse_openai(body)
        workload = registry().by_model(model)
        return await proxy(request, workload, body, stream, path)

    @app.api_route(
        "/v1/{path:path}",
        methods=["GET", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"],
        include_in_schema=False,
    )
    async def openai_wrong_method(request: Request, path: str) -> Response:
        allow = "GET" if path == "models" or path.startswith("models/") else "POST"
        raise MethodNotAllowed(
            f"{request.method} is not allowed on /v1/{path}; it takes {allow}",
            headers={"Allow": allow},
        )

    # -- admin, metrics ----------------------------------------------------------------

    if not settings.admin_listen:
        app.include_router(admin_router(registry, app.state.admin_token, setup))
    app.include_router(health_router(registry))

    # a metrics token if one is set, else the admin token if one is set, else open
    metrics_token = settings.resolved_metrics_token() or app.state.admin_token

    @app.get("/metrics")
    async def prometheus(request: Request) -> Response:
        authorize(request, metrics_token, "/metrics")
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    # -- `http` workloads: by Host or path prefix, HTTP and WebSocket --------------------

    def http_route(raw_path: bytes, host: str) -> tuple[Workload, str]:
        """The workload and the raw path to forward (see ``Registry.by_route``)."""
        path = raw_path.decode("latin-1")
        route = registry().by_route(path, host)
        if route is None:
            raise NotFound(
                f"no route for {path[:200]}; Dormant serves POST /v1/* (by model), "
                "GET /v1/models, /-/* (admin), /metrics and the configured path "
                "prefixes / hosts"
            )
        return route.workload, route.path

    @app.websocket("/{path:path}")
    async def websocket_route(websocket: WebSocket, path: str) -> None:
        rec = record(websocket)
        try:
            workload, upstream_path = http_route(
                websocket.scope["raw_path"], websocket.headers.get("host", "")
            )
            rec.workload = workload.name
            connection = await workload.connect()
        except ActivatorError as exc:
            await refuse(websocket, exc)
            return
        rec.wake = connection.waited
        try:
            await proxy_websocket(
                websocket,
                connection,
                upstream_path,
                workload.settings.connect_timeout,
                MAX_WEBSOCKET_MESSAGE,
            )
        finally:
            connection.close()

    @app.api_route(
        "/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
    )
    async def http_workload(request: Request, path: str) -> Response:
        workload, upstream_path = http_route(
            request.scope["raw_path"], request.headers.get("host", "")
        )
        body = await _read_body(request, settings.max_body_bytes)
        return await proxy(request, workload, body, False, upstream_path)

    return app
