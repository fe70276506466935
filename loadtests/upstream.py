"""A minimal, fast upstream for proxy benchmarks: ``python -m loadtests.upstream --port N``.

Raw ASGI on uvicorn (uvloop + httptools, access log off), so the upstream costs as little as
possible and the benchmark sees the proxy's overhead rather than the server's:

- ``GET /health``: 200 ``{"status":"ok"}``.
- ``POST /v1/small``: a ~200-byte JSON body (an OpenAI-shaped completion).
- ``POST /v1/stream``: ``text/event-stream``, 16 small ``data:`` events sent as separate
  chunks, then ``data: [DONE]``; no sleeps.

Request bodies are read and ignored. Anything else is a 404.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

__all__ = ["SMALL_BODY", "STREAM_EVENTS", "app", "main"]

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

SMALL_BODY: bytes = json.dumps(
    {
        "id": "cmpl-bench",
        "object": "text_completion",
        "created": 0,
        "model": "echo",
        "choices": [{"index": 0, "text": "hello from the bench upstream", "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 4, "completion_tokens": 5, "total_tokens": 9},
    },
    separators=(",", ":"),
).encode()


def _event(i: int) -> bytes:
    chunk = {
        "id": "cmpl-bench",
        "object": "text_completion",
        "choices": [{"index": 0, "text": f" t{i}"}],
    }
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"


STREAM_EVENTS: tuple[bytes, ...] = (*(_event(i) for i in range(16)), b"data: [DONE]\n\n")

_HEALTH = b'{"status":"ok"}'
_NOT_FOUND = b'{"error":{"message":"not found"}}'


def _headers(content_type: bytes, length: int | None = None) -> list[tuple[bytes, bytes]]:
    headers = [(b"content-type", content_type)]
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    return headers


async def _full(send: Send, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": _headers(b"application/json", len(body)),
        }
    )
    await send({"type": "http.response.body", "body": body})


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """The ASGI application."""
    if scope["type"] != "http":
        return
    more = True
    while more:  # drain and ignore the request body
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        more = message.get("more_body", False)
    method, path = scope["method"], scope["path"]
    if method == "POST" and path == "/v1/small":
        await _full(send, 200, SMALL_BODY)
    elif method == "POST" and path == "/v1/stream":
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [*_headers(b"text/event-stream"), (b"cache-control", b"no-cache")],
            }
        )
        last = len(STREAM_EVENTS) - 1
        for i, event in enumerate(STREAM_EVENTS):
            await send({"type": "http.response.body", "body": event, "more_body": i < last})
    elif method == "GET" and path == "/health":
        await _full(send, 200, _HEALTH)
    else:
        await _full(send, 404, _NOT_FOUND)


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGINT/SIGTERM."""
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m loadtests.upstream", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level="warning",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
