"""What a client may send, and how slowly: bounds enforced where the bytes arrive.

uvicorn's httptools protocol, as shipped, accepts a request head of any size and waits
forever for one that trickles in. ``BoundedHttpToolsProtocol`` adds:

* ``MAX_HEAD_BYTES`` (64 KiB): a request line plus headers larger than this is answered
  ``431`` and the connection closed; never more than this (plus one socket read) is
  buffered for it.
* ``HEAD_TIMEOUT`` (30 s): the whole head must arrive within this long of the
  connection opening (or of the request's first byte, on a kept-alive connection);
  else ``408``.
* A body the application did not read (its answer is already out) may not keep the
  connection open: uvicorn's keep-alive timeout keeps running while it trickles in.
* Framing that two parsers could read differently (``activator.framing``: two ``Host``
  fields, a ``Transfer-Encoding`` other than ``chunked``, an absolute-form target naming
  another host, ...) is answered ``400`` before any application sees the request; so is
  what llhttp itself refuses in a head (obs-fold, a bare LF, two ``Content-Length``).
* A chunked body that turns out malformed (a chunk size with junk, an overflow, a bare LF)
  after the application took the request: the body ends there, nothing more is read, and
  ``broken_body`` hands the reason to whoever reads it (``routes.handoff.read_body``),
  which answers ``400`` instead of forwarding a body cut short.

A body the activator reads (``activator.app``) is bounded by ``BodyClock``: no silence
longer than ``BODY_IDLE_TIMEOUT`` (30 s), and the whole body within ``BODY_IDLE_TIMEOUT``
plus one second per ``MIN_BODY_RATE`` bytes received (1 KiB), so a steady trickle is
cut off too; else ``408``.

Every refusal here has the JSON error shape, an ``X-Request-Id`` and one access line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Mapping
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from activator.access import AccessRecord, access_line, fresh_request_id
from activator.downstream import EXTENSION, Downstream
from activator.errors import ActivatorError, BadRequest, HeadersTooLarge, RequestTimeout
from activator.framing import framing_error

__all__ = [
    "BODY_IDLE_TIMEOUT",
    "HEAD_TIMEOUT",
    "MAX_HEAD_BYTES",
    "MIN_BODY_RATE",
    "BodyClock",
    "BoundedHttpToolsProtocol",
    "broken_body",
]

MAX_HEAD_BYTES = 64 * 1024
HEAD_TIMEOUT = 30.0
BODY_IDLE_TIMEOUT = 30.0
MIN_BODY_RATE = 1024
"""Bytes per second a request body must keep up, on average, after BODY_IDLE_TIMEOUT."""
_LINGER = 2.0
"""Seconds a refused connection keeps reading (and dropping) what the client still
sends, so that it can read the answer before the socket is closed."""
_BROKEN_BODY = "dormant.broken_body"


def broken_body(scope: Mapping[str, Any]) -> ActivatorError | None:
    """Why the request's body ended early (it could not be parsed: see the module
    docstring), or None. A reader that got to the end of the body asks this before using
    it: the body it has is cut short."""
    error = scope.get(_BROKEN_BODY)
    return error if isinstance(error, ActivatorError) else None


class BodyClock:
    """How long the next read of a request body may wait (see the module docstring)."""

    def __init__(self, now: float | None = None) -> None:
        self.started = time.monotonic() if now is None else now
        self.deadline = self.started + BODY_IDLE_TIMEOUT
        self.size = 0

    def next_wait(self, now: float | None = None) -> float:
        """Seconds the next chunk may take (0 or less: too slow already)."""
        now = time.monotonic() if now is None else now
        return min(BODY_IDLE_TIMEOUT, self.deadline - now)

    def received(self, size: int) -> None:
        self.size += size
        self.deadline += size / MIN_BODY_RATE

    def error(self, now: float | None = None) -> RequestTimeout:
        elapsed = (time.monotonic() if now is None else now) - self.started
        return RequestTimeout(
            f"the request body arrived too slowly: {self.size} bytes in {elapsed:.0f}s "
            f"(allowed: {BODY_IDLE_TIMEOUT:.0f}s without a byte at most, and "
            f"{BODY_IDLE_TIMEOUT:.0f}s plus 1s per {MIN_BODY_RATE} bytes in all)",
            headers={"Connection": "close"},
        )


class _Refusal(Exception):
    def __init__(self, error: ActivatorError) -> None:
        super().__init__(error.message)
        self.error = error


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a bounded request head (size and time)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True
        self._head_bytes = 0
        self._head_started = time.monotonic()
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_done = True
        self._refused = False
        self.downstream: Downstream | None = None
        """The relay writing the current response's body below ASGI (activator.downstream)."""

    # -- the head: size and time ---------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_started = time.monotonic()
            self._head_timer = self.loop.call_later(HEAD_TIMEOUT, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._in_head and not self._refused and not self.transport.is_closing():
            self._refuse(
                RequestTimeout(
                    f"the request head did not arrive within {HEAD_TIMEOUT:.0f}s",
                    headers={"Connection": "close"},
                )
            )

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._body_done = True, False
        self._arm_head_timer()

    def on_headers_complete(self) -> None:
        size = len(self.url) + sum(len(k) + len(v) + 4 for k, v in self.headers)
        if size > MAX_HEAD_BYTES:
            raise _Refusal(self._too_large(size))
        if not self.url.isascii():
            raise _Refusal(
                BadRequest(
                    "the request target has bytes outside ASCII; percent-encode them "
                    "(RFC 3986: UTF-8, then %XX)",
                    headers={"Connection": "close"},
                )
            )
        problem = framing_error(
            self.parser.get_method(), self.url, self.parser.get_http_version(), self.headers
        )
        if problem is not None:
            raise _Refusal(BadRequest(problem, headers={"Connection": "close"}))
        self._in_head, self._head_bytes = False, 0
        self._disarm_head_timer()
        scope = self.scope
        super().on_headers_complete()
        if self.cycle is not None and self.cycle.scope is scope:
            extensions: dict[str, Any] = scope.setdefault("extensions", {})  # type: ignore[assignment]
            extensions[EXTENSION] = Downstream(self, self.cycle)

    def on_message_complete(self) -> None:
        self._body_done = True
        super().on_message_complete()

    def _too_large(self, size: int) -> HeadersTooLarge:
        return HeadersTooLarge(
            f"request line and headers exceed {MAX_HEAD_BYTES} bytes ({size} so far)",
            headers={"Connection": "close"},
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)
        if self.downstream is not None and self.downstream.sink is not None:
            self.downstream.sink.gone()

    def pause_writing(self) -> None:
        super().pause_writing()
        if self.downstream is not None and self.downstream.sink is not None:
            self.downstream.sink.pause()

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.downstream is not None and self.downstream.sink is not None:
            self.downstream.sink.resume()

    # -- bytes in ------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # lingering: read and drop until the socket closes
        cycle = self.cycle
        if not (cycle is not None and cycle.response_complete and not self._body_done):
            # a body nobody reads (its answer is out) does not hold the connection open:
            # the keep-alive timeout keeps running
            self._unset_keepalive_if_required()
        if self._in_head:
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError as exc:
            refusal = exc.__context__
            if isinstance(refusal, _Refusal):
                self._refuse(refusal.error)
            elif self._in_head or not self._end_body(exc):
                self._refuse(BadRequest(f"invalid HTTP request: {exc}"))
            return
        if self._in_head and self._head_bytes > MAX_HEAD_BYTES:
            self._refuse(self._too_large(self._head_bytes))

    # -- refusing ------------------------------------------------------------------------

    def _end_body(self, exc: httptools.HttpParserError) -> bool:
        """The body being read cannot be parsed: end it here, read nothing more, and leave
        the answer (400, connection closed) to the application through ``broken_body``.
        False when no application is reading a body (then ``_refuse`` answers)."""
        cycle = self.cycle
        if cycle is None or cycle.response_started or self._body_done:
            return False
        self._refused = True  # the parser is past use: drop what follows
        cycle.scope[_BROKEN_BODY] = BadRequest(  # type: ignore[literal-required]
            f"invalid HTTP request body: {exc}; send a valid chunked body or Content-Length",
            headers={"Connection": "close"},
        )
        cycle.body, cycle.more_body, cycle.keep_alive = bytearray(), False, False
        cycle.message_event.set()
        return True

    def _refuse(self, error: ActivatorError) -> None:
        """Answer ``error`` (if no request is being answered), then close: the client's
        remaining bytes are read and dropped for a moment so it can read the answer."""
        self._refused = True
        self._disarm_head_timer()
        self._unset_keepalive_if_required()
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # an application is answering this request: it sees a disconnect
            cycle.disconnected = True
            cycle.message_event.set()
            self.transport.close()
            return
        headers = dict(self.headers or ()) if self._in_head else {}
        rec = AccessRecord(
            fresh_request_id(headers.get(b"x-request-id", b"").decode("latin-1")),
            outcome=error.code,
        )
        body = json.dumps(error.body()).encode()
        head = [
            STATUS_LINE[error.status],
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"x-request-id: " + rec.request_id.encode() + b"\r\n",
            *(
                f"{k}: {v}\r\n".encode("latin-1")
                for k, v in error.headers.items()
                if k.lower() != "connection"
            ),
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)
        method = ""
        with contextlib.suppress(httptools.HttpParserError, AttributeError):
            method = self.parser.get_method().decode("ascii", "replace")
        url = getattr(self, "url", b"") if self._in_head else b""
        access_line(
            rec,
            method or "-",
            url.split(b"?", 1)[0] or b"-",
            error.status,
            time.monotonic() - self._head_started,
            len(body),
        )
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(_LINGER, self.transport.close)
