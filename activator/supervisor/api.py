"""The control endpoint of ``dormant exec``: probes for the pod, operations for the operator.

Open: ``GET /healthz`` (the supervisor is alive) and ``GET /readyz`` (200 only while the
server is up and its health path answers; else 503 with the state as the error code: waiting,
restoring, booting, checkpointing, checkpointed, suspended, failed, unhealthy, ...).

Behind a bearer token (``--token-file`` or ``$DORMANT_EXEC_TOKEN``, compared in constant
time): ``GET /status``, ``GET /activity``, ``POST /checkpoint[?wait=S]``, ``POST /restore``,
``POST /suspend``, ``POST /resume``. **Without a token** these answer only clients on
loopback (inside the pod: ``kubectl exec``, a sidecar); anyone else gets 403 saying how to
set one. Errors have the activator's one JSON shape ``{"error": {"message", "type", "code"}}``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Awaitable
from typing import Any

from fastapi import FastAPI, Request

from activator.edge import authorize, install_error_handlers
from activator.errors import ActivatorError, BadRequest
from activator.supervisor.lifecycle import Supervisor
from warmpool.kube.control import Paths

__all__ = ["Forbidden", "create_control_app"]

log = logging.getLogger("dormant.exec")

MAX_WAIT = 600.0
"""The longest ``POST /checkpoint?wait=S`` may ask for (seconds)."""


class Forbidden(ActivatorError):
    status, code, type = 403, "forbidden", "authentication_error"


class NotReady(ActivatorError):
    status, type = 503, "unavailable"

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _loopback(request: Request) -> bool:
    host = request.client.host if request.client else ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _guard(request: Request, token: str) -> None:
    if token:
        authorize(request, token, "dormant exec control API")
    elif not _loopback(request):
        raise Forbidden(
            "no control token is configured, so the control API answers only on loopback; "
            "start dormant exec with --token-file FILE or $DORMANT_EXEC_TOKEN"
        )


def _wait(request: Request) -> float:
    raw = request.query_params.get("wait", "0")
    try:
        wait = float(raw)
    except ValueError:
        wait = -1.0
    if not 0 <= wait <= MAX_WAIT:
        raise BadRequest(f"wait must be a number of seconds from 0 to {MAX_WAIT:g}, got {raw!r}")
    return wait


async def _whole(operation: Awaitable[dict[str, Any]]) -> dict[str, Any]:
    """Run a lifecycle operation to its end even if the client goes away meanwhile (a
    checkpoint cut half way would leave the supervisor not knowing what serves)."""
    return await asyncio.shield(asyncio.ensure_future(operation))


def create_control_app(supervisor: Supervisor, token: str) -> FastAPI:
    """The control API over ``supervisor``; ``token`` empty = loopback only (see above)."""
    app = FastAPI(title="dormant exec", docs_url=None, redoc_url=None, openapi_url=None)

    install_error_handlers(app)

    @app.get(Paths.HEALTHZ)
    async def healthz() -> dict[str, Any]:
        return {"status": "alive", "state": supervisor.phase.value}

    @app.get(Paths.READYZ)
    async def readyz() -> dict[str, Any]:
        ready, code, why = await supervisor.readiness()
        if not ready:
            raise NotReady(code, f"not ready: {code}" + (f" ({why})" if why else ""))
        return {"status": "ready", "state": supervisor.phase.value, "reason": why}

    @app.get(Paths.STATUS)
    async def status(request: Request) -> dict[str, Any]:
        _guard(request, token)
        return supervisor.status()

    @app.get(Paths.ACTIVITY)
    async def activity(request: Request) -> dict[str, Any]:
        _guard(request, token)
        await supervisor.watcher.read()
        return supervisor.watcher.view()

    @app.post(Paths.CHECKPOINT)
    async def checkpoint(request: Request) -> dict[str, Any]:
        _guard(request, token)
        return await _whole(supervisor.checkpoint(_wait(request)))

    @app.post(Paths.RESTORE)
    async def restore(request: Request) -> dict[str, Any]:
        _guard(request, token)
        return await _whole(supervisor.restore())

    @app.post(Paths.SUSPEND)
    async def suspend(request: Request) -> dict[str, Any]:
        _guard(request, token)
        return await _whole(supervisor.suspend())

    @app.post(Paths.RESUME)
    async def resume(request: Request) -> dict[str, Any]:
        _guard(request, token)
        return await _whole(supervisor.resume())

    return app
