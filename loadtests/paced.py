"""Streams paced like batched decoding: an upstream and a client that measure per-chunk latency.

``python -m loadtests.paced upstream --port N`` serves

- ``GET /health``: 200 ``{"status":"ok"}``;
- ``POST /v1/paced`` (any body; ``?chunks=K``, default 250): ``text/event-stream``, chunked,
  one ~140-byte ``data:`` event per stream every ``--step`` seconds (20 ms), **all streams on
  one shared step**, as a batched decode writes one token to every running sequence at once;
  then ``data: [DONE]``. Each event carries the upstream's write time (``CLOCK_MONOTONIC``,
  ns, the same clock in every process on the machine) so the client measures what the path
  between them adds to every chunk.

It is raw asyncio (uvloop when installed), one ``transport.write`` per chunk, so the upstream
costs as little as possible and the benchmark sees the proxy.

``python -m loadtests.paced client --url URL --streams N --seconds S`` opens N streams at once
(``--ramp`` seconds apart in all), each asking for S/step chunks, and prints one JSON line:
chunks expected and delivered (by the end of the run plus ``--grace``), per-chunk latency
p50/p99/max (ms, receive time minus the upstream's write time) over all chunks and over the
steady part (chunks written from one second after the last stream was asked for: the
decode, without the burst of stream starts), first-chunk p50/p99 (ms from the request), and
failed streams. Streams that end early or never start count as undelivered.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import resource
import time
from collections.abc import Sequence
from typing import Any, cast

__all__ = ["CHUNK_BYTES", "ClientResult", "main", "percentile", "run_client"]

CHUNK_BYTES = 140
STEP = 0.020
_PAD = "x" * 64
_STAMP = re.compile(rb'\{"t":(\d+),')


def _event(stamp: int, index: int) -> bytes:
    data = f'data: {{"t":{stamp},"i":{index},"object":"chat.completion.chunk","p":"{_PAD}"}}\n\n'
    body = data.encode()
    return b"%x\r\n%s\r\n" % (len(body), body)


_DONE = b"data: [DONE]\n\n"
_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)
_HEALTH = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 15\r\n\r\n"
    b'{"status":"ok"}'
)
_NOT_FOUND = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"


class _Upstream(asyncio.Protocol):
    """One connection: HTTP/1.1 keep-alive, requests one at a time (bench clients only)."""

    def __init__(self, streams: dict[_Upstream, int]) -> None:
        self.streams = streams
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.sent = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.streams.pop(self, None)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self not in self.streams:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].decode("latin-1")
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length :]
            self._answer(head.split(" ", 2))

    def _answer(self, line: list[str]) -> None:
        assert self.transport is not None
        method, target = line[0], line[1] if len(line) > 1 else "/"
        path, _, query = target.partition("?")
        if method == "GET" and path == "/health":
            self.transport.write(_HEALTH)
        elif method == "POST" and path == "/v1/paced":
            chunks = 250
            for part in query.split("&"):
                if part.startswith("chunks="):
                    chunks = max(1, int(part[7:]))
            self.transport.write(_HEAD)
            self.sent = 0
            self.streams[self] = chunks
        else:
            self.transport.write(_NOT_FOUND)


async def _serve(port: int, step: float) -> None:
    loop = asyncio.get_running_loop()
    streams: dict[_Upstream, int] = {}
    server = await loop.create_server(lambda: _Upstream(streams), "127.0.0.1", port, backlog=4096)
    async with server:
        next_tick = loop.time()
        while True:
            next_tick += step
            await asyncio.sleep(max(0.0, next_tick - loop.time()))
            if next_tick < loop.time() - step:  # fell behind: keep the pace, skip the debt
                next_tick = loop.time()
            for conn, chunks in list(streams.items()):
                transport = conn.transport
                if transport is None or transport.is_closing():
                    streams.pop(conn, None)
                    continue
                transport.write(_event(time.monotonic_ns(), conn.sent))
                conn.sent += 1
                if conn.sent >= chunks:
                    transport.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(_DONE), _DONE))
                    del streams[conn]


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) of already sorted values, nearest rank; nan when empty."""
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


class _Stream(asyncio.Protocol):
    def __init__(
        self,
        request: bytes,
        lat: list[int],
        steady: list[int],
        steady_from: int,
        done: asyncio.Future[bool],
    ) -> None:
        self.request, self.lat, self.done = request, lat, done
        self.steady, self.steady_from = steady, steady_from
        self.tail = b""
        self.count = 0
        self.sent_at = 0
        self.first_ns = 0
        self.status_ok: bool | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.sent_at = time.monotonic_ns()
        cast(asyncio.Transport, transport).write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        buf = self.tail + data
        if self.status_ok is None and len(buf) >= 12:
            self.status_ok = buf[9:12] == b"200"
        end = 0
        for match in _STAMP.finditer(buf):
            stamp = int(match.group(1))
            self.lat.append(now - stamp)
            if stamp >= self.steady_from:
                self.steady.append(now - stamp)
            end = match.end()
            self.count += 1
            if not self.first_ns:
                self.first_ns = now
        self.tail = buf[max(end, len(buf) - 48) :]
        if buf.endswith(b"0\r\n\r\n") and b"[DONE]" in buf and not self.done.done():
            self.done.set_result(True)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(False)


class ClientResult(dict[str, Any]):
    """The client's JSON line as a dict."""


async def run_client(
    host: str, port: int, streams: int, seconds: float, ramp: float, grace: float, step: float
) -> ClientResult:
    """Open ``streams`` paced streams against host:port; see the module docstring."""
    loop = asyncio.get_running_loop()
    chunks = max(1, round(seconds / step))
    request = (
        b"POST /v1/paced?chunks=%d HTTP/1.1\r\nhost: %s:%d\r\ncontent-type: application/json\r\n"
        b"content-length: 37\r\n\r\n"
        b'{"model":"paced","stream":true,"n":1}' % (chunks, host.encode(), port)
    )
    lat: list[int] = []
    steady: list[int] = []  # chunks written once every stream has had time to start
    steady_from = time.monotonic_ns() + int((ramp + 1.0) * 1e9)
    protocols: list[_Stream] = []
    transports: list[asyncio.BaseTransport] = []
    failed = 0
    started = time.monotonic()

    async def one(delay: float) -> None:
        nonlocal failed
        await asyncio.sleep(delay)
        done: asyncio.Future[bool] = loop.create_future()
        proto = _Stream(request, lat, steady, steady_from, done)
        try:
            transport, _ = await loop.create_connection(lambda: proto, host, port)
        except OSError:
            failed += 1
            return
        protocols.append(proto)
        transports.append(transport)
        with contextlib.suppress(asyncio.CancelledError):
            if not await done:
                failed += 1

    tasks = [asyncio.ensure_future(one(ramp * i / streams)) for i in range(streams)]
    _, pending = await asyncio.wait(tasks, timeout=seconds + ramp + grace)
    for task in pending:
        task.cancel()
    for transport in transports:
        transport.close()
    elapsed = time.monotonic() - started
    lat.sort()
    steady.sort()
    firsts = sorted((p.first_ns - p.sent_at) / 1e6 for p in protocols if p.first_ns)
    delivered = sum(p.count for p in protocols)
    return ClientResult(
        streams=streams,
        chunks_expected=streams * chunks,
        chunks_delivered=delivered,
        delivered_pct=100.0 * delivered / (streams * chunks),
        lat_p50_ms=percentile(lat, 0.50) / 1e6,
        lat_p99_ms=percentile(lat, 0.99) / 1e6,
        lat_max_ms=(lat[-1] / 1e6) if lat else float("nan"),
        steady_p50_ms=percentile(steady, 0.50) / 1e6,
        steady_p99_ms=percentile(steady, 0.99) / 1e6,
        first_p50_ms=percentile(firsts, 0.50),
        first_p99_ms=percentile(firsts, 0.99),
        failed_streams=failed + (streams - len(protocols) - failed if pending else 0),
        non_200=sum(1 for p in protocols if p.status_ok is False),
        seconds=elapsed,
    )


def _use_uvloop() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _raise_nofile() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.paced", description=__doc__)
    sub = parser.add_subparsers(dest="role", required=True)
    up = sub.add_parser("upstream", help="serve paced SSE streams")
    up.add_argument("--port", type=int, required=True)
    up.add_argument("--step", type=float, default=STEP)
    cl = sub.add_parser("client", help="open paced streams and print one JSON line")
    cl.add_argument("--host", default="127.0.0.1")
    cl.add_argument("--port", type=int, required=True)
    cl.add_argument("--streams", type=int, required=True)
    cl.add_argument("--seconds", type=float, default=5.0)
    cl.add_argument("--ramp", type=float, default=0.5)
    cl.add_argument("--grace", type=float, default=3.0)
    cl.add_argument("--step", type=float, default=STEP)
    args = parser.parse_args(argv)
    _raise_nofile()
    _use_uvloop()
    if args.role == "upstream":
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve(args.port, args.step))
        return 0
    result = asyncio.run(
        run_client(
            args.host, args.port, args.streams, args.seconds, args.ramp, args.grace, args.step
        )
    )
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
