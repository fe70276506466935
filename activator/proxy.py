"""How bytes move: forward one request to a leased instance and stream the answer back.

The request target is forwarded exactly as the client wrote it (ASGI ``raw_path`` and
the raw query string), never decoded and re-encoded. Timeouts fit LLM streams: connect,
time to the response headers (first byte), and the longest silence inside a body;
deliberately no total-duration limit.

A response body that does not end as the upstream promised (the upstream died, closed
its socket mid-body, or fell silent past ``stream_idle_timeout``) is aborted: the
client's connection is dropped without the final chunk, so it cannot mistake a
truncated answer for a complete one. An SSE stream (``text/event-stream``) first gets
an error event that OpenAI clients raise on::

    event: error
    data: {"error": {"message": "...", "type": "server_error", "code": "upstream_error", ...}}
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import resource
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp
from fastapi import Request
from starlette.background import BackgroundTask
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send
from yarl import URL

from activator.access import AccessRecord, wake_header
from activator.downstream import Downstream, downstream
from activator.errors import ActivatorError, UpstreamError, UpstreamTimeout
from activator.lease import Lease
from activator.metrics import Metrics

__all__ = [
    "HOP_BY_HOP",
    "Call",
    "Session",
    "Timeouts",
    "clean_headers",
    "forward",
    "sse_error",
    "upstream_session",
    "waking_stream",
]

log = logging.getLogger("dormant.proxy")

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "proxy-connection",
    }
)


@dataclass(frozen=True)
class Timeouts:
    """Seconds: to connect, to the response headers, and between body chunks."""

    connect: float
    first_byte: float
    stream_idle: float


def clean_headers(
    headers: Iterable[tuple[str, str]], drop: Iterable[str] = ()
) -> list[tuple[str, str]]:
    """Without hop-by-hop headers, those named in ``Connection``, and ``drop``."""
    pairs = [(k.lower(), v) for k, v in headers]
    named = {t.strip().lower() for k, v in pairs if k == "connection" for t in v.split(",")}
    banned = HOP_BY_HOP | named | {d.lower() for d in drop}
    return [(k, v) for k, v in pairs if k not in banned]


def _upstream_headers(request: Request, rid: str) -> list[tuple[str, str]]:
    # Host is kept (servers such as Jupyter check it against Origin); the address we
    # connect to never comes from the request. Expect is dropped: the body has been
    # read already, and an upstream that never answers "100 Continue" (Python's
    # http.server) would leave the request hanging.
    headers = clean_headers(
        request.headers.items(),
        drop=(
            "content-length",
            "expect",
            "x-request-id",
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
        ),
    )
    client = request.client.host if request.client else ""
    prior = request.headers.get("x-forwarded-for")
    return [
        *headers,
        ("x-forwarded-for", f"{prior}, {client}" if prior else client),
        ("x-forwarded-proto", request.url.scheme),
        ("x-forwarded-host", request.headers.get("host", "")),
        ("x-request-id", rid),
    ]


@dataclass(frozen=True)
class Call:
    """One request to forward: what was asked, where it goes, and under which limits.
    ``path`` is the raw path to send (the client's bytes, less a stripped prefix);
    the raw query string is added from the request."""

    client: aiohttp.ClientSession
    request: Request
    body: bytes
    path: str
    timeouts: Timeouts
    workload: str
    record: AccessRecord
    metrics: Metrics


Session = aiohttp.ClientSession
"""The one upstream session the activator forwards through (``upstream_session``)."""


def connection_limit() -> int:
    """Upstream connections the proxy may hold open at once: half the open-file limit
    (each proxied request also holds the client's socket), at least 100."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 32768
    return max(100, soft // 2 - 64)


def upstream_session(max_connections: int | None = None) -> aiohttp.ClientSession:
    """The one client the proxy forwards with (at most ``max_connections`` upstream
    connections, default :func:`connection_limit`; more requests wait for one).
    aiohttp, not httpx, on this hot path: measured side by side (make bench-proxy),
    httpx's pure-Python connection handling cost about 2x the latency and half the
    throughput. Raw bytes (no decompression), no cookie jar (clients must never share
    cookies), no default headers added."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(
            limit=max_connections or connection_limit(),
            limit_per_host=0,
            keepalive_timeout=30,
            force_close=False,
        ),
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        trust_env=False,
    )


def _target(call: Call, lease: Lease) -> URL:
    """The instance's endpoint plus the raw path and query: ``encoded=True`` keeps
    every byte as the client sent it (no re-quoting, no dot-segment folding)."""
    query = call.request.scope.get("query_string", b"").decode("latin-1")
    return URL(lease.endpoint.url + call.path + (f"?{query}" if query else ""), encoded=True)


async def _open(call: Call, lease: Lease) -> aiohttp.ClientResponse:
    request, timeouts, workload = call.request, call.timeouts, call.workload
    try:
        async with asyncio.timeout(timeouts.first_byte):
            return await call.client.request(
                request.method,
                _target(call, lease),
                headers=_upstream_headers(request, call.record.request_id),
                data=call.body or None,
                allow_redirects=False,
                compress=None,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeouts.connect),
            )
    except TimeoutError as exc:
        raise UpstreamTimeout(
            f"{workload} sent no response within {timeouts.first_byte:.0f}s", workload=workload
        ) from exc
    except aiohttp.ClientConnectorError as exc:
        raise UpstreamError(f"{workload} is unreachable: {exc!r}", workload=workload) from exc
    except aiohttp.ClientError as exc:  # it took the request, then the connection went
        raise UpstreamError(
            f"{workload} closed the connection before answering ({type(exc).__name__}): "
            "its process may have died; `dormant status` says what became of it",
            workload=workload,
        ) from exc


class _Broken(Exception):
    """The upstream's body ended before it was complete (or fell silent)."""

    def __init__(self, error: ActivatorError, outcome: str) -> None:
        super().__init__(error.message)
        self.error, self.outcome = error, outcome


def _silent(workload: str, idle: float) -> _Broken:
    log.warning("%s: response body silent for %.0fs; aborting it", workload, idle)
    return _Broken(
        UpstreamTimeout(
            f"{workload} sent nothing for {idle:.0f}s in the middle of its response "
            "(stream_idle_timeout); the response is incomplete",
            workload=workload,
        ),
        "upstream_timeout",
    )


def _broke(workload: str, exc: BaseException) -> _Broken:
    log.warning("%s: upstream broke mid-response: %r", workload, exc)
    return _Broken(
        UpstreamError(
            f"{workload} broke off its response ({type(exc).__name__}); the response is incomplete",
            workload=workload,
        ),
        "upstream_broke",
    )


async def _relay(
    upstream: aiohttp.ClientResponse, idle: float, workload: str
) -> AsyncIterator[bytes]:
    while True:
        try:
            async with asyncio.timeout(idle):
                chunk = await upstream.content.readany()
        except TimeoutError:
            raise _silent(workload, idle) from None
        except aiohttp.ClientError as exc:
            raise _broke(workload, exc) from None
        if not chunk:
            return
        yield chunk


def sse_error(exc: ActivatorError) -> bytes:
    """An SSE error event OpenAI clients raise on (``event: error`` + ``data: {"error"...}``)."""
    return f"event: error\ndata: {json.dumps(exc.body())}\n\n".encode()


def _at_event_boundary(tail: bytes) -> bool:
    return tail.endswith((b"\n\n", b"\r\r", b"\r\n\r\n"))


class _Exchange:
    """One proxied request: times it, fills its access record, releases the lease once."""

    def __init__(self, call: Call, lease: Lease) -> None:
        self.call, self.lease = call, lease
        self.started = time.monotonic()
        self.upstream: aiohttp.ClientResponse | None = None
        self._done = False
        call.record.wake = lease.waited

    async def open(self) -> aiohttp.ClientResponse:
        try:
            self.upstream = await _open(self.call, self.lease)
        except BaseException:
            self.finish()
            raise
        ttfb = time.monotonic() - self.started
        rec = self.call.record
        rec.ttfb, rec.upstream = ttfb, self.upstream.status
        rec.outcome = "ok" if self.upstream.status < 500 else "upstream_error"
        self.call.metrics.ttfb_seconds.labels(self.call.workload).observe(ttfb)
        return self.upstream

    async def afinish(self) -> None:
        """``finish`` as a coroutine: a BackgroundTask would run a plain function in a
        worker thread, away from the event loop the lease and the connection live on."""
        self.finish()

    def finish(self) -> None:
        if self._done:
            return
        self._done = True
        if self.upstream is not None:
            # a body read to the end goes back to the pool; anything else is closed
            if self.upstream.content.at_eof():
                self.upstream.release()
            else:
                self.upstream.close()
        self.lease.release()

    async def body(self, sse: bool) -> AsyncIterator[bytes]:
        assert self.upstream is not None
        tail = b"\n\n"
        try:
            async for chunk in _relay(
                self.upstream, self.call.timeouts.stream_idle, self.call.workload
            ):
                tail = (tail + chunk)[-4:]
                yield chunk
        except _Broken as broken:
            self.call.record.outcome = broken.outcome
            self.finish()
            if sse:  # end a half-written event first: the error must be an event of its own
                yield (b"" if _at_event_boundary(tail) else b"\n\n") + sse_error(broken.error)
            self.call.record.aborted = True
        finally:
            self.finish()


def _is_sse(upstream: aiohttp.ClientResponse) -> bool:
    return upstream.headers.get("content-type", "").lower().startswith("text/event-stream")


_TAPS: dict[int, _BodyRelay] = {}
"""The relay each tapped upstream body reader (by id) feeds: the reader's class has no
room for one more attribute, and must keep its layout to be switched."""


class _Tap(aiohttp.StreamReader):
    """An upstream body reader that hands every piece to its :class:`_BodyRelay` at once
    instead of buffering it for a coroutine to read. A response's reader is switched to
    this class (same layout: no new slots) for the relay, and back when it ends."""

    __slots__ = ()

    def feed_data(self, data: bytes, size: int = 0) -> bool:
        if data:
            self.total_bytes += len(data)
            _TAPS[id(self)].data(data)
        return False

    def begin_http_chunk_receiving(self) -> None:
        pass  # chunk boundaries are not kept: the relay re-frames what it gets

    def end_http_chunk_receiving(self) -> None:
        pass

    def feed_eof(self) -> None:
        super().feed_eof()  # the response's own callbacks give the connection back
        relay = _TAPS.get(id(self))
        if relay is not None:
            relay.end(None)

    def set_exception(self, exc: BaseException, *cause: Any) -> None:
        super().set_exception(exc, *cause)
        relay = _TAPS.get(id(self))
        if relay is not None:
            relay.end(_broke(relay.workload, exc))


def _tap_fits() -> bool:
    """Whether this aiohttp's body reader can become a :class:`_Tap` (same layout, the
    methods the tap replaces): else every body goes through ASGI, as before the relay."""
    loop = asyncio.new_event_loop()
    try:
        reader = aiohttp.StreamReader(_NoProtocol(), 2**16, loop=loop)  # type: ignore[arg-type]
        reader.__class__ = _Tap
        reader.__class__ = aiohttp.StreamReader
    except (TypeError, AttributeError):
        return False
    finally:
        loop.close()
    needed = ("feed_data", "feed_eof", "set_exception", "read_nowait", "is_eof", "exception")
    return all(callable(getattr(aiohttp.StreamReader, name, None)) for name in needed)


class _NoProtocol:
    """Stands in for a connection while ``_tap_fits`` builds a reader."""

    _reading_paused = False


_TAP_FITS = _tap_fits()


class _BodyRelay:
    """One upstream body to the client, below ASGI (``activator.downstream``): each piece
    the upstream's parser delivers is written to the client's socket as one chunk, in the
    same callback, without a coroutine switch or a buffer. The client's socket filling up
    pauses the upstream's; silence longer than ``stream_idle`` ends it as ``_relay`` does.
    ``finished`` resolves with None (the body ended as promised), a ``_Broken``, or
    ``"gone"`` (the client left)."""

    def __init__(self, exchange: _Exchange, out: Downstream, sse: bool) -> None:
        assert exchange.upstream is not None
        self.upstream, self.out, self.sse = exchange.upstream, out, sse
        self.workload = exchange.call.workload
        self.idle = exchange.call.timeouts.stream_idle
        self.loop = asyncio.get_running_loop()
        self.finished: asyncio.Future[_Broken | str | None] = self.loop.create_future()
        self.sent = 0
        self.tail = b"\n\n"
        """The body's last bytes so far (SSE: is an error event due a blank line first?)."""
        self.last = self.loop.time()
        self._timer: asyncio.TimerHandle | None = None
        self._tapped: aiohttp.StreamReader | None = None
        self.chunk = out.chunk  # bound once: called for every piece

    @staticmethod
    def possible(upstream: aiohttp.ClientResponse, method: str) -> bool:
        """Whether the body can be relayed (else it goes through ASGI): chunked on the
        client's side (no Content-Length), a plain reader on a live connection."""
        return (
            _TAP_FITS
            and type(upstream.content) is aiohttp.StreamReader
            and upstream.connection is not None
            and "content-length" not in upstream.headers
            and method != "HEAD"
            and upstream.status not in (204, 304)
            and upstream.status >= 200
        )

    def start(self) -> bool:
        """Take the body over (False: the client's side cannot be relayed to)."""
        content = self.upstream.content
        if not self.out.open(self):
            return False
        # What the reader holds already goes first. Draining it may make aiohttp resume
        # reading the socket, which refills it: drain until it stays empty.
        while True:
            problem = content.exception()
            if problem is not None:
                self.end(_broke(self.workload, problem))
                return True
            buffered = content.read_nowait(-1)
            if not buffered:
                break
            self.data(buffered)
        if content.is_eof():
            self.end(None)
            return True
        _TAPS[id(content)] = self
        content.__class__ = _Tap
        self._tapped = content
        if self.out.paused:  # draining resumed the upstream while the client was full
            self.pause()
        self._timer = self.loop.call_at(self.last + self.idle, self._check)
        return True

    def data(self, data: bytes) -> None:  # the hot path: once per piece of every stream
        self.last = self.loop.time()
        size = len(data)
        self.sent += size
        self.tail = data if size >= 4 else (self.tail + data)[-4:]
        self.chunk(data)

    def _check(self) -> None:
        silent = self.loop.time() - self.last
        if silent >= self.idle:
            self._timer = None
            self.end(_silent(self.workload, self.idle))
        else:
            self._timer = self.loop.call_at(self.last + self.idle, self._check)

    def pause(self) -> None:
        if self.upstream.connection is not None and not self.finished.done():
            self.upstream.connection.protocol.pause_reading()  # type: ignore[union-attr]

    def resume(self) -> None:
        if self.upstream.connection is not None and not self.finished.done():
            self.upstream.connection.protocol.resume_reading()  # type: ignore[union-attr]

    def gone(self) -> None:
        self.end("gone")

    def end(self, result: _Broken | str | None) -> None:
        if self.finished.done():
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._tapped is not None:
            _TAPS.pop(id(self._tapped), None)
            self._tapped.__class__ = aiohttp.StreamReader
            self._tapped = None
        if isinstance(result, _Broken) and self.sse:  # as Exchange.body: its own event
            self.out.chunk(
                (b"" if _at_event_boundary(self.tail[-4:]) else b"\n\n") + sse_error(result.error)
            )
        self.out.close()
        self.finished.set_result(result)


class _Relayed(StreamingResponse):
    """The proxied response: the head through ASGI, then the body relayed below it
    (``_BodyRelay``) when the server offers the client's connection, else through ASGI
    as any StreamingResponse."""

    def __init__(self, exchange: _Exchange, sse: bool, raw: list[tuple[bytes, bytes]]) -> None:
        assert exchange.upstream is not None
        super().__init__(
            exchange.body(sse),
            status_code=exchange.upstream.status,
            background=BackgroundTask(exchange.afinish),
        )
        self.raw_headers = raw
        self.exchange, self.sse = exchange, sse

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        out = downstream(scope)
        upstream = self.exchange.upstream
        assert upstream is not None
        if out is None or not _BodyRelay.possible(upstream, scope.get("method", "GET")):
            await super().__call__(scope, receive, send)
            return
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            relay = _BodyRelay(self.exchange, out, self.sse)
            if not relay.start():  # the client left, or the server chose another framing
                async for chunk in self.body_iterator:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            try:
                result = await relay.finished
            finally:
                relay.end("gone")  # cancelled: let go of the upstream's reader
                self.exchange.call.record.relayed += relay.sent
            if result == "gone":
                return
            if isinstance(result, _Broken):
                self.exchange.call.record.outcome = result.outcome
                self.exchange.call.record.aborted = True
            self.exchange.finish()
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            self.exchange.finish()
            if isinstance(self.body_iterator, AsyncGenerator):
                await self.body_iterator.aclose()


async def forward(call: Call, lease: Lease) -> StreamingResponse:
    """Send the call (body already read) to the leased instance's endpoint and stream
    the answer. The lease is released when the body is finished or abandoned (a client
    disconnect ends the relay, or cancels the stream, and the upstream connection is
    closed)."""
    exchange = _Exchange(call, lease)
    upstream = await exchange.open()
    raw = [
        (k.encode("latin-1"), v.encode("latin-1"))
        for k, v in clean_headers(
            ((k.decode("latin-1"), v.decode("latin-1")) for k, v in upstream.raw_headers),
            drop=("x-request-id",),
        )
    ]
    if lease.waited is not None:
        raw.append((b"x-dormant-wake", wake_header(lease.waited).encode()))
    return _Relayed(exchange, _is_sse(upstream), raw)  # X-Request-Id is added by AccessLog


def waking_stream(
    call: Call, acquire: Callable[[], Awaitable[Lease]], every: float
) -> StreamingResponse:
    """For a `stream: true` request that must wait for a wake: answer at once (200,
    ``text/event-stream``) and send an SSE comment every ``every`` seconds until the
    upstream's first chunk. Once the headers are out they cannot change, so:

    * the wake is announced as a comment, ``: dormant-wake restore; 0.412``, in the
      ``X-Dormant-Wake`` form (the upstream's own response headers are not sent);
    * a failure (wake failed or timed out, queue full, upstream unreachable or not
      200) is one ``event: error`` with the usual JSON error body, and the stream then
      ends normally (the answer is complete: it is an error);
    * an upstream that breaks off mid-stream gets the error event and the connection is
      dropped, as for any proxied stream.

    The access line records the real outcome (``wake_failed``, ``upstream_broke``, ...)."""
    workload, rec = call.workload, call.record

    async def events() -> AsyncIterator[bytes]:
        started = time.monotonic()
        task = asyncio.ensure_future(acquire())
        lease: Lease | None = None
        try:
            while not task.done():
                await asyncio.wait({task}, timeout=every)
                if not task.done():
                    yield f": waking {workload} ({time.monotonic() - started:.0f}s)\n\n".encode()
            lease = task.result()
        except ActivatorError as exc:
            rec.outcome = exc.code
            yield sse_error(exc)
            return
        finally:
            if lease is None:  # the client went away (or the wake failed): leave the queue
                task.cancel()
                if task.done() and not task.cancelled() and task.exception() is None:
                    task.result().release()  # won the race with the cancellation
        if lease.waited is not None:
            yield f": dormant-wake {wake_header(lease.waited)}\n\n".encode()
        exchange = _Exchange(call, lease)
        try:
            upstream = await exchange.open()
        except ActivatorError as exc:
            rec.outcome = exc.code
            yield sse_error(exc)
            return
        if upstream.status != 200:
            detail = ""
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with asyncio.timeout(call.timeouts.stream_idle):
                    detail = (await upstream.content.read(2000)).decode(errors="replace")
            exchange.finish()
            yield sse_error(
                UpstreamError(
                    f"{workload} answered {upstream.status}: {detail}",
                    workload=workload,
                    extra={"status": upstream.status},
                )
            )
            return
        async for chunk in exchange.body(sse=True):
            yield chunk

    return StreamingResponse(
        events(), media_type="text/event-stream", headers={"cache-control": "no-cache"}
    )
