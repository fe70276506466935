"""The client's connection below ASGI, for a response body relayed byte for byte.

A streamed answer through ASGI pays, per chunk, a coroutine switch and one ``send`` through
every middleware and uvicorn's response cycle. At a few hundred paced token streams that is
most of the activator's CPU and most of the latency it adds. So the HTTP protocol
(``activator.limits.BoundedHttpToolsProtocol``) offers every request a :class:`Downstream`
in ``scope["extensions"]["dormant.downstream"]``: once the response head has gone out
through ASGI as usual (status, headers, ``X-Request-Id``), the proxy may write the body's
chunks straight to the connection (``activator.proxy``), and ends the response through
ASGI again (the final chunk, keep-alive, the access line). The protocol tells the
:class:`Sink` it was given when the client's socket fills up or drains (so the upstream is
paused and resumed: nothing is buffered without bound) and when the client goes away.

Only chunked responses are relayed this way (uvicorn frames the body: the proxy writes the
same framing); anything else goes through ASGI.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any, Protocol

__all__ = ["EXTENSION", "Downstream", "Sink", "downstream"]

EXTENSION = "dormant.downstream"


class Sink(Protocol):
    """What relays into a :class:`Downstream` hears from the client's side."""

    def pause(self) -> None:
        """The client's socket buffer is full: stop reading the upstream."""

    def resume(self) -> None:
        """It drained: read on."""

    def gone(self) -> None:
        """The client closed the connection."""


class Downstream:
    """One request's response channel on the client's connection (see the module doc)."""

    __slots__ = ("_cycle", "_protocol", "sink")

    def __init__(self, protocol: Any, cycle: Any) -> None:
        self._protocol, self._cycle = protocol, cycle
        self.sink: Sink | None = None

    def open(self, sink: Sink) -> bool:
        """Take over the body of a response whose head went out through ASGI; False (and
        nothing taken) unless the head was sent, the body is chunked, the response is not
        over and the client is still there."""
        cycle = self._cycle
        if (
            not cycle.response_started
            or cycle.response_complete
            or cycle.disconnected
            or cycle.chunked_encoding is not True
            or self._protocol.cycle is not cycle
            or cycle.transport.is_closing()
        ):
            return False
        self.sink = sink
        self._protocol.downstream = self
        if cycle.flow.write_paused:
            sink.pause()
        return True

    @property
    def paused(self) -> bool:
        """The client's socket buffer is full (reading the upstream should wait)."""
        return bool(self._cycle.flow.write_paused)

    def close(self) -> None:
        """The relay is over (the response is ended through ASGI by its owner)."""
        self.sink = None
        if self._protocol.downstream is self:
            self._protocol.downstream = None

    def chunk(self, data: bytes) -> None:
        """One piece of the body, framed as one HTTP chunk (``data`` non-empty)."""
        self._cycle.transport.write(b"%x\r\n%b\r\n" % (len(data), data))


def downstream(scope: MutableMapping[str, Any]) -> Downstream | None:
    """The request's :class:`Downstream`, when its server offers one."""
    found = scope.get("extensions", {}).get(EXTENSION)
    return found if isinstance(found, Downstream) else None
