"""``http`` and ``jupyter`` workloads: any other path, routed by path prefix or Host, over
HTTP and WebSocket. These routes match everything, so they are included last.

For a ``jupyter`` workload, what counts as activity is what its user does
(``activator.activity``): the page's own polling neither keeps it awake nor wakes it, and
a WebSocket that (re)connects while it sleeps is held (``activator.parking``) until the
user acts."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter, Request, Response, WebSocket

from activator.access import record
from activator.activity import (
    held_greeting,
    message_is_activity,
    relative_path,
    request_is_activity,
    upstream_messages_count,
)
from activator.config.jupyter import base_path
from activator.errors import ActivatorError, NotAwake, NotFound, QueueFull
from activator.lease import Connection
from activator.parking import hold
from activator.registry import Registry
from activator.routes.handoff import Handoff, read_body
from activator.websocket import Traffic, connect_or_abandon, proxy_websocket, refuse
from activator.workload import Workload

__all__ = ["MAX_HELD_SOCKETS", "MAX_WEBSOCKET_MESSAGE", "passthrough_router"]

MAX_WEBSOCKET_MESSAGE = 64 << 20
"""The largest WebSocket message relayed either way (bytes)."""
MAX_HELD_SOCKETS = 64
"""The most WebSockets held for one sleeping notebook (more are refused: 503 queue_full)."""


def _relative(workload: Workload, path: str) -> str:
    """The path below the workload's own base (``/notebooks/NAME`` for a notebook)."""
    base = base_path(workload.name) if workload.settings.kind == "jupyter" else ""
    return relative_path(path, base)


def passthrough_router(
    registry: Callable[[], Registry], handoff: Handoff, max_body: int
) -> APIRouter:
    router = APIRouter()

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

    held: dict[str, int] = {}  # sockets held per sleeping workload

    @router.websocket("/{path:path}")
    async def websocket_route(websocket: WebSocket, path: str) -> None:
        rec = record(websocket)
        pending: list[bytes | str] | None = None
        subprotocol: str | None = None
        try:
            workload, upstream_path = http_route(
                websocket.scope["raw_path"], websocket.headers.get("host", "")
            )
            rec.workload = workload.name
            kind, relative = workload.settings.kind, _relative(workload, upstream_path)
            traffic = Traffic(
                lambda data: message_is_activity(kind, relative, data),
                upstream_messages_count(kind),
            )
            quiet = not upstream_messages_count(kind)  # its page reconnects by itself
            connection: Connection | None = None
            try:
                connection = await connect_or_abandon(
                    websocket, workload, wake=not quiet, activity=not quiet
                )
            except NotAwake:
                if held.get(workload.name, 0) >= MAX_HELD_SOCKETS:
                    raise QueueFull(  # 503: JupyterLab retries a kernel socket in 10-30 s
                        f"{workload.name} sleeps and {MAX_HELD_SOCKETS} WebSockets already "
                        "wait for it; retry later",
                        workload=workload.name,
                        headers={"Retry-After": "10"},
                    ) from None
        except ActivatorError as exc:
            await refuse(websocket, exc)
            return
        if connection is None:  # a notebook that sleeps: hold the socket, do not wake it
            held[workload.name] = held.get(workload.name, 0) + 1
            try:
                greeting = held_greeting(kind, relative)
                kept = await hold(websocket, workload, traffic.client, greeting)
            finally:
                held[workload.name] -= 1
            if kept is None:
                return
            connection, pending, subprotocol = kept.connection, kept.pending, kept.subprotocol
        rec.wake = connection.waited
        try:
            await proxy_websocket(
                websocket,
                connection,
                upstream_path,
                workload.settings.connect_timeout,
                MAX_WEBSOCKET_MESSAGE,
                traffic,
                pending,
                subprotocol,
            )
        finally:
            connection.close()

    @router.api_route(
        "/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
    )
    async def http_workload(request: Request, path: str) -> Response:
        workload, upstream_path = http_route(
            request.scope["raw_path"], request.headers.get("host", "")
        )
        body = await read_body(request, max_body)
        activity = request_is_activity(
            workload.settings.kind,
            request.method,
            _relative(workload, upstream_path),
            request.url.query,
        )
        return await handoff(request, workload, body, False, upstream_path, activity)

    return router
