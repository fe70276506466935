"""A notebook's WebSocket that arrives while the notebook sleeps: held, without waking it.

An open JupyterLab tab reconnects its kernel, terminal and event sockets as soon as they
close — and hibernating a notebook closes them. Waking it for that would undo every
hibernation a few milliseconds later. So the socket is accepted and held here until one
of (it is accepted with the first subprotocol the client offers, which
a browser requires when it offered any: JupyterLab offers only the
``v1.kernel.websocket.jupyter.org`` protocol, which jupyter_server speaks; the upstream is
later asked for that one):

* the client sends a message that is a user's activity (``activator.activity``: running a
  cell, typing in a terminal): the workload wakes, and the socket is relayed with every
  message it sent meanwhile, in order;
* the workload becomes ready some other way (another tab, an admin ``wake``): relayed;
* the client goes away, or sends more than ``MAX_HELD_MESSAGES`` / ``MAX_HELD_BYTES``
  while held (closed with 1013, try again later);
* the wake fails (closed with 1011 and the reason).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

from fastapi import WebSocket
from starlette.websockets import WebSocketDisconnect

from activator.errors import ActivatorError, NotAwake
from activator.lease import Connection
from activator.workload import Workload

__all__ = ["MAX_HELD_BYTES", "MAX_HELD_MESSAGES", "Held", "hold"]

MAX_HELD_MESSAGES = 256
"""The most messages one held socket may send before the user acts."""
MAX_HELD_BYTES = 4 << 20
"""The most bytes one held socket may send before the user acts."""


@dataclass
class Held:
    """What a held socket ends with: a connection to relay it over, and what it sent."""

    connection: Connection
    subprotocol: str | None
    """The subprotocol the client's socket was accepted with (the upstream must agree)."""
    pending: list[bytes | str] = field(default_factory=list)


async def hold(
    websocket: WebSocket,
    workload: Workload,
    counts: Callable[[bytes | str], bool],
    greeting: str | None = None,
) -> Held | None:
    """Accept ``websocket`` (and send it ``greeting``, when the client waits for one
    before it says anything: ``activity.held_greeting``) and hold it until its user acts
    or the workload is ready (see the module's docstring); None when it ended meanwhile
    (closed here)."""
    offered = list(websocket.scope.get("subprotocols", []))
    subprotocol = str(offered[0]) if offered else None
    await websocket.accept(subprotocol=subprotocol)
    if greeting is not None:
        await websocket.send_text(greeting)
    pending: list[bytes | str] = []
    size = 0
    receiving = asyncio.ensure_future(websocket.receive())
    ready = asyncio.ensure_future(workload.until_ready())
    try:
        while True:
            done, _ = await asyncio.wait({receiving, ready}, return_when=asyncio.FIRST_COMPLETED)
            if receiving in done:
                message = receiving.result()
                if message["type"] == "websocket.disconnect":
                    return None
                data = message["bytes"] if message.get("bytes") is not None else message.get("text")
                if data is None:
                    receiving = asyncio.ensure_future(websocket.receive())
                    continue
                pending.append(data)
                size += len(data)
                if len(pending) > MAX_HELD_MESSAGES or size > MAX_HELD_BYTES:
                    await _close(websocket, 1013, f"{workload.name} is asleep; reconnect later")
                    return None
                if counts(data):
                    try:
                        connection = await workload.connect()  # the user acted: wake it
                    except ActivatorError as exc:
                        await _close(websocket, 1011, exc.message)
                        return None
                    connection.touch()
                    return Held(connection, subprotocol, pending)
                receiving = asyncio.ensure_future(websocket.receive())
                continue
            try:
                connection = await workload.connect(wake=False, activity=False)
            except NotAwake:  # it went back to sleep before we got there
                ready = asyncio.ensure_future(workload.until_ready())
                continue
            except ActivatorError as exc:
                await _close(websocket, 1011, exc.message)
                return None
            if receiving.done():  # a message arrived while we connected: keep it
                message = receiving.result()
                data = message.get("bytes") if message.get("bytes") is not None else None
                data = data if data is not None else message.get("text")
                if message["type"] == "websocket.disconnect":
                    connection.close()
                    return None
                if data is not None:
                    pending.append(data)
                    if counts(data):
                        connection.touch()
            return Held(connection, subprotocol, pending)
    except WebSocketDisconnect:
        return None
    finally:
        for task in (receiving, ready):
            task.cancel()
        for task in (receiving, ready):
            with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, RuntimeError):
                await task


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    with contextlib.suppress(RuntimeError, WebSocketDisconnect):
        await websocket.close(code=code, reason=reason[:120])
