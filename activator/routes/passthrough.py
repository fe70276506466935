"""``http`` and ``jupyter`` workloads: any other path, routed by path prefix or Host, over
HTTP and WebSocket. These routes match everything, so they are included last."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter, Request, Response, WebSocket

from activator.access import record
from activator.errors import ActivatorError, NotFound
from activator.registry import Registry
from activator.routes.handoff import Handoff, read_body
from activator.websocket import connect_or_abandon, proxy_websocket, refuse
from activator.workload import Workload

__all__ = ["MAX_WEBSOCKET_MESSAGE", "passthrough_router"]

MAX_WEBSOCKET_MESSAGE = 64 << 20
"""The largest WebSocket message relayed either way (bytes)."""


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

    @router.websocket("/{path:path}")
    async def websocket_route(websocket: WebSocket, path: str) -> None:
        rec = record(websocket)
        try:
            workload, upstream_path = http_route(
                websocket.scope["raw_path"], websocket.headers.get("host", "")
            )
            rec.workload = workload.name
            connection = await connect_or_abandon(websocket, workload)
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

    @router.api_route(
        "/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
    )
    async def http_workload(request: Request, path: str) -> Response:
        workload, upstream_path = http_route(
            request.scope["raw_path"], request.headers.get("host", "")
        )
        body = await read_body(request, max_body)
        return await handoff(request, workload, body, False, upstream_path)

    return router
