"""How bytes move: forward one request to a leased instance and stream the answer back.

Timeouts fit LLM streams: connect, time to the response headers (first byte), and
the longest silence inside a body. There is deliberately no total-duration limit.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass

import aiohttp
from fastapi import Request
from starlette.background import BackgroundTask
from starlette.responses import StreamingResponse

from .errors import ActivatorError, UpstreamError, UpstreamTimeout
from .metrics import Metrics
from .workload import Lease

__all__ = [
    "HOP_BY_HOP",
    "Call",
    "Timeouts",
    "clean_headers",
    "forward",
    "request_id",
    "upstream_session",
    "waking_stream",
]

log = logging.getLogger("dormant.proxy")
access = logging.getLogger("dormant.access")

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
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


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


def request_id(request: Request) -> str:
    """The client's X-Request-Id when it is sane, else a fresh one."""
    given = request.headers.get("x-request-id", "")
    return given if _REQUEST_ID.match(given) else uuid.uuid4().hex[:16]


def _upstream_headers(request: Request, rid: str) -> list[tuple[str, str]]:
    # Host is kept (servers such as Jupyter check it against Origin); the address we
    # connect to never comes from the request.
    headers = clean_headers(
        request.headers.items(),
        drop=(
            "content-length",
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
    """One request to forward: what was asked, where it goes, and under which limits."""

    client: aiohttp.ClientSession
    request: Request
    body: bytes
    path: str
    timeouts: Timeouts
    workload: str
    rid: str
    metrics: Metrics


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


async def _open(call: Call, lease: Lease) -> aiohttp.ClientResponse:
    request, timeouts, workload = call.request, call.timeouts, call.workload
    url = f"{lease.endpoint.url}{call.path}"
    if request.url.query:
        url += f"?{request.url.query}"
    try:
        async with asyncio.timeout(timeouts.first_byte):
            return await call.client.request(
                request.method,
                url,
                headers=_upstream_headers(request, call.rid),
                data=call.body or None,
                allow_redirects=False,
                compress=None,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeouts.connect),
            )
    except TimeoutError as exc:
        raise UpstreamTimeout(
            f"{workload} sent no response within {timeouts.first_byte:.0f}s", workload=workload
        ) from exc
    except aiohttp.ClientError as exc:
        raise UpstreamError(f"{workload} is unreachable: {exc!r}", workload=workload) from exc


async def _relay(
    upstream: aiohttp.ClientResponse, idle: float, workload: str
) -> AsyncIterator[bytes]:
    while True:
        try:
            async with asyncio.timeout(idle):
                chunk = await upstream.content.readany()
        except TimeoutError:
            log.warning("%s: response body silent for %.0fs; closing it", workload, idle)
            return
        except aiohttp.ClientError as exc:
            log.warning("%s: upstream stream broke: %r", workload, exc)
            return
        if not chunk:
            return
        yield chunk


class _Exchange:
    """One proxied request: times it, releases the lease once, logs one access line."""

    def __init__(self, call: Call, lease: Lease) -> None:
        self.call, self.lease = call, lease
        self.started = time.monotonic()
        self.ttfb = 0.0
        self.status = 0
        self.bytes = 0
        self.upstream: aiohttp.ClientResponse | None = None
        self._done = False

    async def open(self) -> aiohttp.ClientResponse:
        try:
            self.upstream = await _open(self.call, self.lease)
        except ActivatorError as exc:
            self.status = exc.status
            await self.finish()
            raise
        self.ttfb = time.monotonic() - self.started
        self.status = self.upstream.status
        self.call.metrics.ttfb_seconds.labels(self.call.workload).observe(self.ttfb)
        return self.upstream

    async def finish(self) -> None:
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
        call, waited = self.call, self.lease.waited
        outcome = "ok" if 0 < self.status < 500 else "upstream_error"
        call.metrics.requests.labels(call.workload, outcome).inc()
        access.info(
            "request_id=%s workload=%s method=%s path=%s status=%d wake=%s ttfb_ms=%.1f "
            "duration_ms=%.1f bytes=%d",
            call.rid,
            call.workload,
            call.request.method,
            call.request.url.path,
            self.status,
            f"{waited.path}:{waited.seconds:.3f}" if waited else "-",
            self.ttfb * 1000,
            (time.monotonic() - self.started) * 1000,
            self.bytes,
        )

    async def body(self) -> AsyncIterator[bytes]:
        assert self.upstream is not None
        try:
            async for chunk in _relay(
                self.upstream, self.call.timeouts.stream_idle, self.call.workload
            ):
                self.bytes += len(chunk)
                yield chunk
        finally:
            await self.finish()


async def forward(call: Call, lease: Lease) -> StreamingResponse:
    """Send the call (body already read) to the leased instance's endpoint and stream
    the answer. The lease is released when the body is finished or abandoned (a client
    disconnect cancels the stream, which closes the upstream connection)."""
    exchange = _Exchange(call, lease)
    upstream = await exchange.open()
    response = StreamingResponse(
        exchange.body(),
        status_code=upstream.status,
        background=BackgroundTask(exchange.finish),
    )
    raw = [
        (k.encode("latin-1"), v.encode("latin-1"))
        for k, v in clean_headers(
            ((k.decode("latin-1"), v.decode("latin-1")) for k, v in upstream.raw_headers),
            drop=("x-request-id",),
        )
    ]
    raw.append((b"x-request-id", call.rid.encode()))
    if lease.waited is not None:
        raw.append((b"x-dormant-wake", f"{lease.waited.path}; {lease.waited.seconds:.3f}".encode()))
    response.raw_headers = raw
    return response


def _sse_error(exc: ActivatorError) -> bytes:
    return f"data: {json.dumps(exc.body())}\n\n".encode()


def waking_stream(
    call: Call, acquire: Callable[[], Awaitable[Lease]], every: float
) -> StreamingResponse:
    """For a `stream: true` request that must wait for a wake: answer at once with an
    SSE stream that carries a comment every ``every`` seconds until the upstream's first
    chunk. Failures after the headers went out become an SSE `data: {"error": ...}` event."""
    workload = call.workload

    async def events() -> AsyncIterator[bytes]:
        started = time.monotonic()
        task = asyncio.ensure_future(acquire())
        try:
            while not task.done():
                await asyncio.wait({task}, timeout=every)
                if not task.done():
                    yield f": waking {workload} ({time.monotonic() - started:.0f}s)\n\n".encode()
            lease = task.result()
        except ActivatorError as exc:
            yield _sse_error(exc)
            return
        finally:
            task.cancel()  # the client went away: leave the queue
        if lease.waited is not None:
            yield f": dormant-wake {lease.waited.path}; {lease.waited.seconds:.3f}\n\n".encode()
        exchange = _Exchange(call, lease)
        try:
            upstream = await exchange.open()
        except ActivatorError as exc:
            yield _sse_error(exc)
            return
        if upstream.status != 200:
            detail = (await upstream.content.read(2000)).decode(errors="replace")
            await exchange.finish()
            yield _sse_error(
                UpstreamError(f"{workload} answered {upstream.status}: {detail}", workload=workload)
            )
            return
        async for chunk in exchange.body():
            yield chunk

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache", "x-request-id": call.rid},
    )
