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
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass

import aiohttp
from fastapi import Request
from starlette.background import BackgroundTask
from starlette.responses import StreamingResponse
from yarl import URL

from activator.access import AccessRecord, wake_header
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


def upstream_session(max_connections: int = 1000) -> aiohttp.ClientSession:
    """The one client the proxy forwards with. aiohttp, not httpx, on this hot path:
    measured side by side (make bench-proxy), httpx's pure-Python connection handling
    cost about 2x the latency and half the throughput. Raw bytes (no decompression),
    no cookie jar (clients must never share cookies), no default headers added."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(
            limit=max_connections, limit_per_host=0, keepalive_timeout=30, force_close=False
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


async def _relay(
    upstream: aiohttp.ClientResponse, idle: float, workload: str
) -> AsyncIterator[bytes]:
    while True:
        try:
            async with asyncio.timeout(idle):
                chunk = await upstream.content.readany()
        except TimeoutError:
            log.warning("%s: response body silent for %.0fs; aborting it", workload, idle)
            raise _Broken(
                UpstreamTimeout(
                    f"{workload} sent nothing for {idle:.0f}s in the middle of its response "
                    "(stream_idle_timeout); the response is incomplete",
                    workload=workload,
                ),
                "upstream_timeout",
            ) from None
        except aiohttp.ClientError as exc:
            log.warning("%s: upstream broke mid-response: %r", workload, exc)
            raise _Broken(
                UpstreamError(
                    f"{workload} broke off its response ({type(exc).__name__}); "
                    "the response is incomplete",
                    workload=workload,
                ),
                "upstream_broke",
            ) from None
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


async def forward(call: Call, lease: Lease) -> StreamingResponse:
    """Send the call (body already read) to the leased instance's endpoint and stream
    the answer. The lease is released when the body is finished or abandoned (a client
    disconnect cancels the stream, which closes the upstream connection)."""
    exchange = _Exchange(call, lease)
    upstream = await exchange.open()
    response = StreamingResponse(
        exchange.body(_is_sse(upstream)),
        status_code=upstream.status,
        background=BackgroundTask(exchange.afinish),
    )
    raw = [
        (k.encode("latin-1"), v.encode("latin-1"))
        for k, v in clean_headers(
            ((k.decode("latin-1"), v.decode("latin-1")) for k, v in upstream.raw_headers),
            drop=("x-request-id",),
        )
    ]
    if lease.waited is not None:
        raw.append((b"x-dormant-wake", wake_header(lease.waited).encode()))
    response.raw_headers = raw  # X-Request-Id is added by AccessLog
    return response


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
