"""A streamed body relayed below ASGI (activator.downstream + the proxy's body relay), against
a real `dormant up` and a real upstream that writes only as fast as its socket takes it
(tests/servers/firehose.py): every byte arrives in order, the access line counts them, a
client that stops reading stops the upstream (nothing piles up in the activator), a client
that leaves closes the upstream's connection, and the connection stays usable after a
relayed response (keep-alive, pipelining)."""

from __future__ import annotations

import hashlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import TESTS
from tests.integration.harness import Dormant
from tests.integration.wire import access_lines, read_body, read_head
from tests.servers.firehose import body_digest

FIREHOSE = ["{python}", str(TESTS / "servers" / "firehose.py"), "--port", "{port}"]
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def hose(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dormant]:
    tmp = tmp_path_factory.mktemp("relay")
    d = Dormant(
        tmp,
        [
            {
                "name": "hose",
                "kind": "http",
                "path_prefix": "/hose",
                "strip_prefix": True,
                "command": FIREHOSE,
                "idle_after": 0,
                "stream_idle_timeout": "20s",
            }
        ],
        engine="restart",
    )
    d.start()
    assert httpx.get(f"{d.url}/hose/health", timeout=60).status_code == 200
    yield d
    d.stop()


def _upstream(d: Dormant) -> dict[str, Any]:
    port = d.workload("hose")["port"]
    stats: dict[str, Any] = httpx.get(f"http://127.0.0.1:{port}/written", timeout=10).json()
    return stats


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _request(path: str, rid: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\nX-Request-Id: {rid}\r\n\r\n".encode()


def test_every_byte_arrives_in_order_and_is_counted(hose: Dormant) -> None:
    # several in a row: the later ones reuse the upstream connection, whose reader has
    # buffered (and paused) before the relay takes it over
    for n in range(3):
        rid = f"relay-all-{n}"
        with httpx.stream(
            "GET", f"{hose.url}/hose/fire?mib=24", headers={"x-request-id": rid}, timeout=60
        ) as response:
            assert response.status_code == 200
            assert response.headers["content-type"] == "text/event-stream"
            assert response.headers["x-request-id"] == rid
            digest = hashlib.sha256()
            time.sleep(0.3)  # let the upstream fill every buffer on the way first
            for part in response.iter_raw():
                digest.update(part)
        assert digest.hexdigest() == body_digest(24)
        (line,) = access_lines(hose, rid)
        assert "status=200 " in line and "outcome=ok " in line
        assert f"bytes={24 * MIB}" in line


def test_a_client_that_stops_reading_stops_the_upstream(hose: Dormant) -> None:
    assert hose.proc is not None
    rss_before = _rss_kib(hose.proc.pid)
    written_before = _upstream(hose)["written"]
    with socket.create_connection(("127.0.0.1", hose.port), timeout=60) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.sendall(_request("/hose/fire?mib=400", "relay-slow"))
        status, _headers, rest = read_head(sock)
        assert status == 200
        time.sleep(3.0)  # read nothing: the activator must pause the upstream
        written = _upstream(hose)["written"] - written_before
        rss_during = _rss_kib(hose.proc.pid)
        # socket buffers on both legs hold a few MiB at most; 400 MiB were offered
        assert written < 48 * MIB, f"upstream wrote {written / MIB:.0f} MiB to a stalled client"
        assert rss_during - rss_before < 64 * 1024, (rss_before, rss_during)
        time.sleep(1.0)
        assert _upstream(hose)["written"] - written_before - written < 4 * MIB  # stays paused
        body, _ = _chunked(sock, rest)  # now read: everything arrives
    assert len(body) == 400 * MIB
    assert hashlib.sha256(body).hexdigest() == body_digest(400)


def test_a_client_that_leaves_closes_the_upstream(hose: Dormant) -> None:
    before = _upstream(hose)["closed_early"]
    with socket.create_connection(("127.0.0.1", hose.port), timeout=60) as sock:
        sock.sendall(_request("/hose/fire?mib=400", "relay-gone"))
        read_head(sock)
        sock.recv(65536)
    deadline = time.monotonic() + 15
    while _upstream(hose)["closed_early"] == before and time.monotonic() < deadline:
        time.sleep(0.1)
    stats = _upstream(hose)
    assert stats["closed_early"] == before + 1 and stats["open"] == 0, stats
    (line,) = access_lines(hose, "relay-gone")
    assert "outcome=client_gone " in line


def test_the_connection_serves_on_after_relayed_responses(hose: Dormant) -> None:
    with socket.create_connection(("127.0.0.1", hose.port), timeout=60) as sock:
        # two requests written at once (pipelined), then a third after both answers
        sock.sendall(
            _request("/hose/fire?mib=2", "relay-p1") + _request("/hose/fire?mib=3", "relay-p2")
        )
        rest = b""
        for mib in (2, 3):
            while b"\r\n\r\n" not in rest:
                rest += _recv(sock)
            head, _, rest = rest.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 ") and b"transfer-encoding: chunked" in head
            body, rest = _chunked(sock, rest)
            assert hashlib.sha256(body).hexdigest() == body_digest(mib)
        assert rest == b""
        sock.sendall(_request("/hose/written", "relay-p3"))
        status, headers, rest = read_head(sock)
        assert status == 200 and b"written" in read_body(sock, headers, rest)
    for rid in ("relay-p1", "relay-p2", "relay-p3"):
        (line,) = access_lines(hose, rid)
        assert "status=200 " in line and "outcome=ok " in line


def _chunked(sock: socket.socket, data: bytes) -> tuple[bytes, bytes]:
    """One chunked body from ``data`` + the socket; returns it and what follows it."""
    body = bytearray()
    buf = bytearray(data)
    while True:
        while b"\r\n" not in buf:
            buf += _recv(sock)
        end = buf.index(b"\r\n")
        size = int(buf[:end], 16)
        while len(buf) < end + 2 + size + 2:
            buf += _recv(sock)
        body += buf[end + 2 : end + 2 + size]
        del buf[: end + 2 + size + 2]
        if size == 0:
            return bytes(body), bytes(buf)


def _recv(sock: socket.socket) -> bytes:
    chunk = sock.recv(1 << 20)
    if not chunk:
        raise AssertionError("connection closed mid-body")
    return chunk
