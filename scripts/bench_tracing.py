"""What tracing costs a request, in-process: the activator's outermost layer (AccessLog)
around a trivial ASGI app, called N times with tracing off and on (the real OpenTelemetry
SDK, each span exported at once to an exporter that drops it), side by side, alternating.

    .venv/bin/python scripts/bench_tracing.py [--requests 20000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from activator.access import AccessLog
from activator.tracing import make_tracer


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def _run(layer: AccessLog, n: int) -> float:
    scope = {"type": "http", "method": "GET", "path": "/x", "raw_path": b"/x", "headers": []}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        return None

    started = time.perf_counter()
    for _ in range(n):
        await layer(dict(scope), receive, send)
    return (time.perf_counter() - started) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    class Drop(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    tracer = make_tracer("otlp", exporter=Drop())
    off, on = AccessLog(_app), AccessLog(_app, tracer=tracer)
    results: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(args.rounds):
        results["off"].append(asyncio.run(_run(off, args.requests)))
        results["on"].append(asyncio.run(_run(on, args.requests)))
    for name, values in results.items():
        print(
            f"tracing {name:3}: {statistics.median(values):6.1f} µs/request (median of "
            f"{args.rounds} rounds of {args.requests})"
        )


if __name__ == "__main__":
    main()
