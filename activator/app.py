"""The activator, composed in one visible place: ``create_app(settings)``.

Nothing here does work; it wires the parts:

- the workloads' source, chosen by ``runtime:`` name (``activator.sources``), with its
  idle reaper;
- the lifespan, which owns the upstream session (aiohttp: the proxied traffic), the httpx
  client (health checks, notebook probes) and the served workloads, and shuts them down in
  order: stop reaping, stop admitting, drain, stop or hibernate the instances, close the
  clients;
- the routes (``activator.routes``): OpenAI, admin and health, metrics, then the
  pass-through routes that match everything else;
- the one error shape (``activator.edge``).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator

import httpx
from fastapi import FastAPI, Request

from activator.access import TracedFastAPI, record
from activator.check import detect_engine
from activator.config.settings import ConfigError, Settings
from activator.edge import install_error_handlers
from activator.errors import ActivatorError
from activator.metrics import Metrics
from activator.proxy import upstream_session
from activator.registry import Registry
from activator.routes.admin import admin_router, health_router, metrics_router
from activator.routes.handoff import Handoff
from activator.routes.openai import OpenAIPosts, openai_router
from activator.routes.passthrough import passthrough_router
from activator.sources import open_source, serve_workloads
from activator.tracing import RequestTracer, TracingUnavailable, make_tracer
from warmpool.system import EngineSetup

__all__ = ["create_admin_app", "create_app"]

log = logging.getLogger("dormant.activator")


def _record_error(request: Request, exc: ActivatorError) -> None:
    """An error's outcome and workload go on the request's access line."""
    rec = record(request)
    rec.outcome = exc.code
    rec.workload = rec.workload or (exc.workload or "")


def _tracer(settings: Settings) -> RequestTracer | None:
    """The request tracer ``tracing:`` asks for (None: off); ConfigError without the extra."""
    try:
        return make_tracer(settings.tracing)
    except TracingUnavailable as exc:
        raise ConfigError(str(exc)) from exc


def create_admin_app(app: FastAPI) -> FastAPI:
    """The admin API alone, for `admin_listen`; it serves ``app``'s workloads."""
    admin = TracedFastAPI(title="Dormant admin", docs_url=None, redoc_url=None)
    admin.state.settings = app.state.settings  # e.g. /-/snapshots reports its state dir
    admin.access_tracer = getattr(app, "access_tracer", None)  # traced like the app
    install_error_handlers(admin, _record_error)
    admin.include_router(health_router(lambda: app.state.registry))
    admin.include_router(
        admin_router(lambda: app.state.registry, app.state.admin_token, app.state.engine)
    )
    return admin


def create_app(settings: Settings, engine: EngineSetup | None = None) -> FastAPI:
    """Build the activator for ``settings``. ``engine`` is probed when not given. The
    source's settings are checked (and a cluster connected, or a pool's device opened)
    now, before anything starts: a problem is a ConfigError."""
    setup = engine or detect_engine(settings)
    settings.state_path.mkdir(parents=True, exist_ok=True)
    metrics = Metrics()
    tracer = _tracer(settings)
    source = open_source(settings, setup, metrics)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with (
            upstream_session() as session,
            httpx.AsyncClient(timeout=None, trust_env=False) as client,
            serve_workloads(source, settings, client) as served,
        ):
            app.state.registry = served.registry
            app.state.hand_over = served.hand_over
            app.state.client = session
            try:
                yield
            finally:
                if tracer is not None:
                    tracer.shutdown()  # send the spans still buffered

    app = TracedFastAPI(title="Dormant activator", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.access_metrics = metrics  # dormant_requests_total, counted with the access line
    app.access_tracer = tracer  # a span per request when `tracing:` is on
    app.state.settings = settings
    app.state.engine = setup
    app.state.admin_token = settings.resolved_admin_token()
    install_error_handlers(app, _record_error)

    def registry() -> Registry:
        reg: Registry = app.state.registry
        return reg

    handoff = Handoff(lambda: app.state.client, metrics)
    app.front = lambda inner: OpenAIPosts(
        inner, registry, handoff, settings.max_body_bytes, _record_error
    )
    app.include_router(openai_router(registry, time.time()))
    if not settings.admin_listen:
        app.include_router(admin_router(registry, app.state.admin_token, setup))
    app.include_router(health_router(registry))
    # a metrics token if one is set, else the admin token if one is set, else open
    metrics_token = settings.resolved_metrics_token() or app.state.admin_token
    app.include_router(metrics_router(metrics, metrics_token))
    app.include_router(passthrough_router(registry, handoff, settings.max_body_bytes))
    return app
