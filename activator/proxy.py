"""How bytes move: forward one request to a leased instance and stream the answer back."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable

import httpx
from fastapi import Request
from starlette.background import BackgroundTask
from starlette.responses import StreamingResponse

from .errors import UpstreamError, UpstreamTimeout
from .workload import Lease

__all__ = ["HOP_BY_HOP", "clean_headers", "forward"]

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


def clean_headers(
    headers: Iterable[tuple[str, str]], drop: Iterable[str] = ()
) -> list[tuple[str, str]]:
    """Without hop-by-hop headers, those named in ``Connection``, and ``drop``."""
    pairs = [(k.lower(), v) for k, v in headers]
    named = {t.strip().lower() for k, v in pairs if k == "connection" for t in v.split(",")}
    banned = HOP_BY_HOP | named | {d.lower() for d in drop}
    return [(k, v) for k, v in pairs if k not in banned]


def _forwarded(request: Request) -> list[tuple[str, str]]:
    client = request.client.host if request.client else ""
    prior = request.headers.get("x-forwarded-for")
    return [
        ("x-forwarded-for", f"{prior}, {client}" if prior else client),
        ("x-forwarded-proto", request.url.scheme),
        ("x-forwarded-host", request.headers.get("host", "")),
    ]


async def forward(
    client: httpx.AsyncClient, request: Request, lease: Lease, body: bytes, workload: str
) -> StreamingResponse:
    """Send ``request`` (with ``body`` already read) to the leased instance on loopback.

    The lease is released when the response body is finished or abandoned (client
    disconnect cancels the stream, which closes the upstream connection).
    """
    path = request.url.path
    url = f"http://127.0.0.1:{lease.port}{path}"
    if request.url.query:
        url += f"?{request.url.query}"
    headers = clean_headers(request.headers.items(), drop=("host", "content-length"))
    headers += _forwarded(request)
    try:
        upstream = await client.send(
            client.build_request(request.method, url, headers=headers, content=body), stream=True
        )
    except httpx.TimeoutException as exc:
        lease.release()
        raise UpstreamTimeout(
            f"{workload} did not answer in time: {exc!r}", workload=workload
        ) from exc
    except httpx.HTTPError as exc:
        lease.release()
        raise UpstreamError(f"{workload} is unreachable: {exc!r}", workload=workload) from exc

    async def body_stream() -> AsyncIterator[bytes]:
        try:
            async for chunk in upstream.aiter_raw():
                yield chunk
        except httpx.HTTPError as exc:
            log.warning("%s: upstream stream broke: %r", workload, exc)
        finally:
            await upstream.aclose()
            lease.release()

    async def finish() -> None:  # also runs when the body was never iterated
        await upstream.aclose()
        lease.release()

    response = StreamingResponse(
        body_stream(), status_code=upstream.status_code, background=BackgroundTask(finish)
    )
    raw = [
        (k.encode("latin-1"), v.encode("latin-1"))
        for k, v in clean_headers(upstream.headers.multi_items())
    ]
    if lease.waited is not None:
        raw.append((b"x-dormant-wake", f"{lease.waited.path}; {lease.waited.seconds:.3f}".encode()))
    response.raw_headers = raw
    return response
