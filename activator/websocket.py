"""WebSocket proxying, both directions, for `http` workloads (and notebooks).

The upstream is dialled only after the workload is ready (a connect wakes it, queued like a
request; a client that leaves while it waits leaves the queue: ``connect_or_abandon``);
messages in either direction count as activity. When the workload hibernates, the
connection is closed with 1012 (service restart) so clients reconnect, which wakes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re

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

__all__ = ["connect_or_abandon", "proxy_websocket", "refuse"]

log = logging.getLogger("dormant.websocket")

_HOST = re.compile(r"^([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?$")
_SKIP = (
    "host",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-extensions",
    "sec-websocket-protocol",
)


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


async def connect_or_abandon(websocket: WebSocket, workload: Workload) -> Connection:
    """A connection to ``workload`` (waking it: queued like a request, with its errors),
    but leave the queue as soon as the client disconnects: ClientGone. Takes the upgrade's
    ``websocket.connect`` message (``accept`` then does not wait for it)."""
    await websocket.receive()  # websocket.connect: the handshake request itself
    connecting = asyncio.ensure_future(workload.connect())
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
    websocket: WebSocket, upstream: ClientConnection, connection: Connection
) -> None:
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        connection.touch()
        if message.get("bytes") is not None:
            await upstream.send(message["bytes"])
        elif message.get("text") is not None:
            await upstream.send(message["text"])


async def _upstream_to_client(
    websocket: WebSocket, upstream: ClientConnection, connection: Connection
) -> None:
    async for data in upstream:
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
) -> None:
    """Relay ``websocket`` to the connection's instance until either side closes."""
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
            subprotocols=list(websocket.scope.get("subprotocols", [])) or None,  # type: ignore[arg-type]
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
        await refuse(websocket, refused)
        return
    except TimeoutError:
        await refuse(websocket, UpstreamTimeout("the upstream did not accept the WebSocket"))
        return
    except (OSError, WebSocketException) as exc:
        log.warning("cannot open upstream websocket %s: %r", path, exc)
        await refuse(websocket, UpstreamError(f"cannot open the upstream WebSocket: {exc!r}"))
        return
    record(websocket).upstream = 101
    try:
        await websocket.accept(subprotocol=upstream.subprotocol)
        tasks = [
            asyncio.ensure_future(_client_to_upstream(websocket, upstream, connection)),
            asyncio.ensure_future(_upstream_to_client(websocket, upstream, connection)),
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
