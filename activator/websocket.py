"""WebSocket proxying, both directions, for `http` workloads (and notebooks).

The upstream is dialled only after the workload is ready (a connect wakes it, queued like a
request; a client that leaves while it waits leaves the queue: ``connect_or_abandon``);
which messages count as activity is the caller's ``Traffic`` (every message, for ``http``;
what a user does, for notebooks: ``activator.activity``). When the workload hibernates, the
connection is closed with 1012 (service restart) so clients reconnect. A notebook's
reconnecting page does not wake it: its socket is held (``activator.parking``) and
relayed here once the user acts, with what it sent meanwhile (``pending``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fastapi import WebSocket
from starlette.websockets import WebSocketDisconnect
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from activator.access import record
from activator.edge import error_response
from activator.errors import ActivatorError, ClientGone, UpstreamError, UpstreamTimeout
from activator.lease import Connection
from activator.proxy import clean_headers
from activator.workload import Workload

__all__ = ["EVERYTHING", "Traffic", "connect_or_abandon", "proxy_websocket", "refuse"]

log = logging.getLogger("dormant.websocket")

_HOST = re.compile(r"^([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?$")
_SKIP = (
    "host",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-extensions",
    "sec-websocket-protocol",
)


@dataclass(frozen=True)
class Traffic:
    """Which relayed messages count as activity: a client's, by ``client(message)``; the
    upstream's, all or none (``upstream``)."""

    client: Callable[[bytes | str], bool]
    upstream: bool


EVERYTHING = Traffic(lambda _: True, True)
"""Every message either way is activity (``http`` workloads)."""


async def refuse(websocket: WebSocket, error: ActivatorError) -> None:
    """Refuse an upgrade: an HTTP answer in the JSON error shape where the server can
    send one (uvicorn's websocket.http.response extension), else close 1008 (policy)
    before accepting, with the message as the reason."""
    rec = record(websocket)
    rec.outcome = error.code
    rec.workload = rec.workload or (error.workload or "")
    # a client already gone (ClientGone) cannot read it; the access line still has the status
    with contextlib.suppress(OSError):
        if "websocket.http.response" in websocket.scope.get("extensions", {}):
            await websocket.send_denial_response(error_response(error))
        else:
            await websocket.close(code=1008, reason=error.message[:120])


async def _gone(websocket: WebSocket) -> None:
    """Return once the client has disconnected (before the upgrade is accepted, nothing
    else may come: a frame sent before the handshake's answer is dropped)."""
    while (await websocket.receive())["type"] != "websocket.disconnect":
        pass


async def connect_or_abandon(
    websocket: WebSocket, workload: Workload, *, wake: bool = True, activity: bool = True
) -> Connection:
    """A connection to ``workload`` (``Workload.connect(wake=, activity=)``: queued like a
    request, with its errors), but leave the queue as soon as the client disconnects:
    ClientGone. Takes the upgrade's ``websocket.connect`` message (``accept`` then does not
    wait for it)."""
    await websocket.receive()  # websocket.connect: the handshake request itself
    connecting = asyncio.ensure_future(workload.connect(wake=wake, activity=activity))
    watching = asyncio.ensure_future(_gone(websocket))
    try:
        await asyncio.wait({connecting, watching}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not watching.done():
            watching.cancel()
        if not connecting.done():
            connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await connecting
    if watching.done() and not watching.cancelled():
        watching.exception()  # a receive that failed says the same: the client is gone
        # gone, perhaps at the very moment it was admitted: hand back what it got
        if not connecting.cancelled() and connecting.exception() is None:
            connecting.result().close()
        raise ClientGone(f"client left while waiting for {workload.name}", workload=workload.name)
    return connecting.result()


async def _client_to_upstream(
    websocket: WebSocket, upstream: ClientConnection, connection: Connection, traffic: Traffic
) -> None:
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        data = message["bytes"] if message.get("bytes") is not None else message.get("text")
        if data is None:
            continue
        if traffic.client(data):
            connection.touch()
        await upstream.send(data)


async def _upstream_to_client(
    websocket: WebSocket, upstream: ClientConnection, connection: Connection, traffic: Traffic
) -> None:
    async for data in upstream:
        if traffic.upstream:
            connection.touch()
        if isinstance(data, bytes):
            await websocket.send_bytes(data)
        else:
            await websocket.send_text(data)


async def proxy_websocket(
    websocket: WebSocket,
    connection: Connection,
    path: str,
    connect_timeout: float,
    max_message_bytes: int,
    traffic: Traffic = EVERYTHING,
    pending: Sequence[bytes | str] | None = None,
    subprotocol: str | None = None,
) -> None:
    """Relay ``websocket`` to the connection's instance until either side closes.

    ``pending`` (not None) means the client's socket was accepted already, with
    ``subprotocol``, and sent these messages while it waited: the upstream is asked for
    that subprotocol alone, gets them first, and a failure to reach it (or its choice of
    another subprotocol) closes the client's socket with 1011 (an upgrade can no longer
    be refused)."""
    accepted = pending is not None
    offered = [subprotocol] if subprotocol else []
    if not accepted:
        offered = list(websocket.scope.get("subprotocols", []))
    query = websocket.url.query
    # The client's Host goes in the URI (websockets sends exactly one Host, from it;
    # Jupyter checks Origin against it); the socket always goes to the instance.
    endpoint = connection.endpoint
    host = websocket.headers.get("host", "")
    if not _HOST.match(host):
        host = endpoint.authority
    uri = f"ws://{host}{path}" + (f"?{query}" if query else "")
    headers = clean_headers(websocket.headers.items(), drop=_SKIP)
    try:
        upstream = await connect(
            uri,
            host=endpoint.host,
            port=endpoint.port,
            proxy=None,  # never an HTTP(S)_PROXY from the environment
            additional_headers=headers,
            subprotocols=offered or None,  # type: ignore[arg-type]
            open_timeout=connect_timeout,
            max_size=max_message_bytes,
            ping_interval=None,
            compression=None,
        )
    except InvalidStatus as exc:
        status = exc.response.status_code
        log.info("upstream refused websocket %s: %d", path, status)
        record(websocket).upstream = status
        refused = UpstreamError(f"the upstream refused the WebSocket with {status}")
        refused.status = status if 400 <= status < 600 else 502
        await _fail(websocket, refused, accepted)
        return
    except TimeoutError:
        await _fail(
            websocket, UpstreamTimeout("the upstream did not accept the WebSocket"), accepted
        )
        return
    except (OSError, WebSocketException) as exc:
        log.warning("cannot open upstream websocket %s: %r", path, exc)
        error = UpstreamError(f"cannot open the upstream WebSocket: {exc!r}")
        await _fail(websocket, error, accepted)
        return
    record(websocket).upstream = 101
    if accepted and upstream.subprotocol != subprotocol:
        await upstream.close()
        chose = upstream.subprotocol or "none"
        await _fail(websocket, UpstreamError(f"the upstream chose subprotocol {chose}"), True)
        return
    try:
        if not accepted:
            await websocket.accept(subprotocol=upstream.subprotocol)
        with contextlib.suppress(ConnectionClosed):  # then the relay below ends at once
            for data in pending or ():
                await upstream.send(data)
        tasks = [
            asyncio.ensure_future(_client_to_upstream(websocket, upstream, connection, traffic)),
            asyncio.ensure_future(_upstream_to_client(websocket, upstream, connection, traffic)),
            asyncio.ensure_future(connection.closing.wait()),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(
                    asyncio.CancelledError, ConnectionClosed, WebSocketDisconnect, RuntimeError
                ):
                    await task
        hibernating = tasks[2] in done
        code = 1012 if hibernating else (upstream.close_code or 1000)
        with contextlib.suppress(RuntimeError, WebSocketDisconnect):
            await websocket.close(code=code, reason="hibernating" if hibernating else "")
    finally:
        await upstream.close()


async def _fail(websocket: WebSocket, error: ActivatorError, accepted: bool) -> None:
    """Refuse the upgrade, or close an accepted socket with 1011 and the reason."""
    if not accepted:
        await refuse(websocket, error)
        return
    rec = record(websocket)
    rec.outcome = error.code
    with contextlib.suppress(RuntimeError, WebSocketDisconnect):
        await websocket.close(code=1011, reason=error.message[:120])
