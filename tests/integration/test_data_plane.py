"""The activator as a data plane, against real upstream servers on loopback:
routing by path and Host, header hygiene, WebSockets across a wake, admin auth,
keep-alive while waking, timeouts, client disconnects, and a 1,000-request burst.

Upstreams that break
mid-stream, Expect: 100-continue, bounded request heads and bodies, 405s, /metrics
auth, every answer traceable, and failures while a stream waits for a wake."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from snapshots import CriuEngine
from tests.conftest import TESTS, free_port
from tests.integration.harness import Dormant
from tests.integration.wire import access_lines, read_body, read_head

APP = ["{python}", str(TESTS / "servers" / "http_app.py"), "--port", "{port}"]
ECHO = ["{python}", str(TESTS / "servers" / "raw_echo.py"), "--port", "{port}"]
TOKEN = "s3cret-admin-token-value"


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory, criu: CriuEngine) -> Iterator[Dormant]:
    tmp = tmp_path_factory.mktemp("plane")
    token_file = tmp / "token"
    token_file.write_text(TOKEN + "\n")
    d = Dormant(
        tmp,
        [
            {
                "name": "web",
                "kind": "http",
                "path_prefix": "/apps/echo",
                "strip_prefix": True,
                "command": APP,
                "idle_after": 0,
            },
            {
                "name": "hosted",
                "kind": "http",
                "hosts": ["svc.example"],
                "command": APP,
                "idle_after": 0,
            },
            {
                "name": "stalls",
                "kind": "http",
                "path_prefix": "/stalls",
                "strip_prefix": True,
                "command": [*APP, "--slow", "5"],
                "stream_idle_timeout": "1s",
                "first_byte_timeout": "1s",
                "idle_after": 0,
            },
            {
                "name": "slowboot",
                "models": ["slow-model"],
                "idle_after": 0,
                "command": [*APP, "--boot-delay", "2.5"],
                "wake_keepalive": "0.5s",
            },
            {  # no wake_keepalive: the default (2s) applies; used by one test, cold until then
                "name": "quietboot",
                "models": ["quietboot-model"],
                "idle_after": 0,
                "command": [*APP, "--boot-delay", "3"],
            },
            {
                "name": "lazy",
                "models": ["lazy-model"],
                "idle_after": 0,
                "command": [*APP, "--boot-delay", "3"],
            },
            {  # a page a browser opens while it boots
                "name": "pageboot",
                "kind": "http",
                "path_prefix": "/pageboot",
                "strip_prefix": True,
                "idle_after": 0,
                "command": [*APP, "--boot-delay", "3"],
            },
            {  # never started: `dormant up` says where it is and where its token is
                "name": "nb",
                "kind": "jupyter",
                "idle_after": 0,
            },
            {
                "name": "raw",
                "kind": "http",
                "path_prefix": "/raw",
                "strip_prefix": True,
                "command": ECHO,
                "idle_after": 0,
            },
            {  # its instance is killed by the test
                "name": "doomed",
                "kind": "http",
                "path_prefix": "/doomed",
                "strip_prefix": True,
                "command": ECHO,
                "idle_after": 0,
            },
            {
                "name": "narrow",
                "models": ["narrow-model"],
                "idle_after": 0,
                "queue_depth": 1,
                "wake_timeout": "1s",
                "command": [*APP, "--boot-delay", "4"],
            },
            {
                "name": "broken",
                "models": ["broken-model"],
                "idle_after": 0,
                "wake_keepalive": "0.3s",
                "command": ["{python}", "-c", "import sys; print('no model here'); sys.exit(3)"],
            },
            {
                "name": "sluggish",
                "models": ["sluggish-model"],
                "idle_after": 0,
                "wake_timeout": "1s",
                "wake_keepalive": "0.3s",
                "command": [*APP, "--boot-delay", "4"],
            },
            {
                "name": "burst",
                "models": ["burst-model"],
                "idle_after": 0,
                "queue_depth": 300,
                "max_in_flight": 32,
                "command": APP,
            },
        ],
        admin_token_file=str(token_file),
    )
    d.start()
    yield d
    d.stop()


AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _admin(d: Dormant, method: str, path: str) -> httpx.Response:
    return d.admin(method, path, headers=AUTH)


def test_path_routing_strips_prefix_and_cleans_headers(plane: Dormant) -> None:
    response = httpx.get(
        f"{plane.url}/apps/echo/info?x=1",
        timeout=60,
        headers={
            "Connection": "keep-alive, X-Secret",
            "X-Secret": "hop",
            "Keep-Alive": "timeout=5",
            "X-Forwarded-For": "203.0.113.9",
            "X-Request-Id": "req-123",
        },
    )
    assert response.status_code == 200
    seen = response.json()
    assert seen["path"] == "/info"
    headers = seen["headers"]
    assert "x-secret" not in headers and "keep-alive" not in headers
    assert headers["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-request-id"] == "req-123" == response.headers["x-request-id"]
    assert response.headers["x-dormant-wake"].startswith("boot; ")
    again = httpx.get(f"{plane.url}/apps/echo/info", timeout=30)
    assert "x-dormant-wake" not in again.headers
    assert len(again.headers["x-request-id"]) == 16


def test_host_routing_and_unknown_route(plane: Dormant) -> None:
    web = httpx.get(f"{plane.url}/apps/echo/info", timeout=60).json()["boot_id"]
    hosted = httpx.get(f"{plane.url}/anything", headers={"Host": "svc.example:8080"}, timeout=60)
    assert hosted.status_code == 200 and hosted.json()["boot_id"] != web
    assert hosted.json()["path"] == "/anything"
    missing = httpx.get(f"{plane.url}/nowhere", timeout=10)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_websocket_both_ways_survives_a_wake(plane: Dormant) -> None:
    ws_url = plane.url.replace("http://", "ws://") + "/apps/echo/echo"
    with connect(ws_url, open_timeout=60) as ws:
        ws.send("a")
        first = ws.recv(timeout=10)
        ws.send("b")
        second = ws.recv(timeout=10)
        count = int(first.split(":")[0])
        assert (first, second) == (f"{count}:a", f"{count + 1}:b")
        hibernated = _admin(plane, "POST", "/workloads/web/hibernate").json()
        assert hibernated["state"] == "hibernated"
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
    with connect(ws_url, open_timeout=60) as ws:  # reconnecting wakes it: restore
        ws.send("c")
        assert ws.recv(timeout=10) == f"{count + 2}:c", "state survived hibernation"
    view = _admin(plane, "GET", "/workloads/web").json()
    assert view["last_wake"]["path"] == "restore"


def test_admin_needs_the_bearer_token(plane: Dormant) -> None:
    assert plane.admin("GET", "/healthz").status_code == 200
    missing = plane.admin("GET", "/workloads")
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert missing.json()["error"]["code"] == "unauthorized"
    wrong = plane.admin("POST", "/workloads/web/hibernate", headers={"Authorization": "Bearer no"})
    assert wrong.status_code == 401
    assert _admin(plane, "GET", "/workloads").status_code == 200
    unknown = _admin(plane, "POST", "/workloads/nope/wake")
    assert unknown.status_code == 404
    assert TOKEN not in plane.log()


def test_stream_gets_keepalive_comments_while_waking(plane: Dormant) -> None:
    _admin(plane, "POST", "/workloads/slowboot/hibernate")
    assert _admin(plane, "GET", "/workloads/slowboot").json()["state"] in ("cold", "hibernated")
    lines = []
    with httpx.stream(
        "POST",
        f"{plane.url}/v1/completions",
        timeout=60,
        json={"model": "slow-model", "stream": True},
        headers={"X-Request-Id": "keepalive-ok"},
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-request-id"] == "keepalive-ok"
        lines = [line for line in response.iter_lines() if line]
    waking = [line for line in lines if line.startswith(": waking slowboot")]
    assert len(waking) >= 3, lines  # 2.5 s boot, a comment every 0.5 s
    assert lines.index(waking[0]) == 0
    # the headers went out before the wake: it is announced in the header's form
    wake = [line for line in lines if line.startswith(": dormant-wake ")]
    assert len(wake) == 1 and wake[0].startswith(": dormant-wake boot; "), lines
    assert any('"boot_id"' in line for line in lines), "the upstream's body follows"
    (line,) = access_lines(plane, "keepalive-ok")
    assert "workload=slowboot " in line and "status=200 upstream=200 outcome=ok " in line
    assert 'wake="boot; ' in line


def test_stream_idle_and_first_byte_timeouts(plane: Dormant) -> None:
    started = time.monotonic()
    body = b""
    with (
        httpx.stream(
            "GET", f"{plane.url}/stalls/stall", timeout=60, headers={"X-Request-Id": "stalled"}
        ) as response,
        pytest.raises(httpx.RemoteProtocolError),  # aborted: not a clean end
    ):
        assert response.status_code == 200
        for chunk in response.iter_raw():
            body += chunk
    assert body == b"first chunk\n"
    assert time.monotonic() - started < 30, "a silent stream is closed, not left hanging"
    (line,) = access_lines(plane, "stalled")
    assert "status=200 upstream=200 outcome=upstream_timeout " in line
    slow = httpx.get(f"{plane.url}/stalls/slow", timeout=60)
    assert slow.status_code == 504 and slow.json()["error"]["code"] == "upstream_timeout"


def test_client_that_leaves_the_queue_is_not_counted(plane: Dormant) -> None:
    assert _admin(plane, "GET", "/workloads/lazy").json()["state"] == "cold"
    with pytest.raises(httpx.ReadTimeout):  # its cold boot takes 3 s
        httpx.post(f"{plane.url}/v1/completions", json={"model": "lazy-model"}, timeout=0.7)
    view = _admin(plane, "GET", "/workloads/lazy").json()
    assert view["state"] == "starting" and view["waiting"] == 0, view
    deadline = time.monotonic() + 30
    while view["state"] != "ready":  # the wake itself goes on for the next request
        assert time.monotonic() < deadline, view
        time.sleep(0.1)
        view = _admin(plane, "GET", "/workloads/lazy").json()
    assert view["in_flight"] == 0


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_burst_of_1000_at_a_hibernated_workload(plane: Dormant) -> None:
    assert (
        httpx.post(f"{plane.url}/v1/x", json={"model": "burst-model"}, timeout=60).status_code
        == 200
    )
    assert _admin(plane, "POST", "/workloads/burst/hibernate").json()["state"] == "hibernated"
    restores_before = _admin(plane, "GET", "/workloads/burst").json()["counters"]["restores"]
    assert plane.proc is not None
    rss_before = _rss_kib(plane.proc.pid)

    async def burst() -> list[httpx.Response | Exception]:
        limits = httpx.Limits(max_connections=1100, max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=120, limits=limits) as client:
            return await asyncio.gather(
                *(
                    client.post(
                        f"{plane.url}/v1/completions", json={"model": "burst-model", "i": i}
                    )
                    for i in range(1000)
                ),
                return_exceptions=True,
            )

    started = time.monotonic()
    results = asyncio.run(burst())
    elapsed = time.monotonic() - started
    rss_after = _rss_kib(plane.proc.pid)
    served = [r for r in results if isinstance(r, httpx.Response) and r.status_code == 200]
    refused = [r for r in results if isinstance(r, httpx.Response) and r.status_code == 503]
    failed = [r for r in results if r not in served and r not in refused]
    print(
        f"\nburst: served={len(served)} refused={len(refused)} failed={len(failed)} "
        f"in {elapsed:.1f}s; activator RSS {rss_before / 1024:.0f} -> {rss_after / 1024:.0f} MiB"
    )
    assert not failed, failed[:3]
    assert len(served) >= 300 and len(served) + len(refused) == 1000
    assert all(
        r.headers.get("retry-after") and r.json()["error"]["code"] == "queue_full" for r in refused
    )
    view = _admin(plane, "GET", "/workloads/burst").json()
    assert view["counters"]["restores"] == restores_before + 1
    assert view["waiting"] == 0 and view["in_flight"] == 0
    assert rss_after - rss_before < 200 * 1024, "activator memory must stay bounded"


# -- an upstream that breaks mid-body is not a success ---------------------------


def _metric(d: Dormant, series: str) -> float:
    text = httpx.get(f"{d.url}/metrics", headers=AUTH, timeout=10).text
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


def _sse_until_dropped(
    url: str, rid: str, on_data: Callable[[dict[str, Any]], None] | None = None
) -> list[str]:
    """The lines of an SSE stream the activator aborts (no terminating chunk)."""
    lines: list[str] = []
    with httpx.stream("GET", url, timeout=30, headers={"X-Request-Id": rid}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream"
        with pytest.raises(httpx.RemoteProtocolError):  # the client can tell: incomplete
            for line in response.iter_lines():
                lines.append(line)
                if on_data is not None and line.startswith("data: "):
                    on_data(json.loads(line[6:]))
                    on_data = None
    return lines


def _error_event(lines: list[str]) -> dict[str, Any]:
    """The one `event: error` (the last event), in the form OpenAI clients raise on."""
    events = [i for i, line in enumerate(lines) if line == "event: error"]
    assert len(events) == 1, lines
    data = lines[events[0] + 1]
    assert data.startswith("data: ") and not any(
        line.startswith("data: ") for line in lines[events[0] + 2 :]
    ), lines
    error: dict[str, Any] = json.loads(data[6:])["error"]
    assert error["message"] and error["type"] and error["code"], error
    return error


def test_upstream_killed_mid_stream_is_not_a_success(plane: Dormant) -> None:
    series = 'dormant_requests_total{outcome="upstream_error",workload="doomed"}'
    before = _metric(plane, series)
    killed: list[int] = []

    def kill(event: dict[str, Any]) -> None:  # the server's PID on the host, from its stream
        os.kill(event["pid"], signal.SIGKILL)
        killed.append(event["pid"])

    lines = _sse_until_dropped(f"{plane.url}/doomed/sse-then-hang", "killed-mid-stream", kill)
    assert killed and lines[0].startswith("data: ")
    error = _error_event(lines)
    assert error["code"] == "upstream_error" and error["workload"] == "doomed"
    (line,) = access_lines(plane, "killed-mid-stream")
    assert "workload=doomed " in line and "status=200 upstream=200 outcome=upstream_broke " in line
    assert _metric(plane, series) == before + 1
    assert "without completing response" not in plane.log(), "an abort on purpose is no ERROR"


def test_upstream_closing_its_socket_mid_body(plane: Dormant) -> None:
    lines = _sse_until_dropped(f"{plane.url}/raw/sse-then-close", "closed-mid-sse")
    assert [line for line in lines if line.startswith('data: {"n"')], lines
    assert _error_event(lines)["code"] == "upstream_error"
    (line,) = access_lines(plane, "closed-mid-sse")
    assert "status=200 upstream=200 outcome=upstream_broke " in line

    received = b""
    with (
        httpx.stream(
            "GET", f"{plane.url}/raw/short-body", timeout=30, headers={"X-Request-Id": "short"}
        ) as response,
        pytest.raises(httpx.RemoteProtocolError),
    ):
        assert response.status_code == 200 and response.headers["content-length"] == "100"
        for chunk in response.iter_raw():
            received += chunk
    assert received == b"0123456789", "no error text is mixed into a non-SSE body"
    (line,) = access_lines(plane, "short")
    assert "status=200 upstream=200 outcome=upstream_broke " in line


def test_client_leaving_mid_response_is_client_gone(plane: Dormant) -> None:
    with httpx.stream(
        "GET", f"{plane.url}/raw/sse-then-hang", timeout=30, headers={"X-Request-Id": "left"}
    ) as response:
        assert next(response.iter_lines()).startswith("data: ")
    (line,) = access_lines(plane, "left")
    assert "status=200 upstream=200 outcome=client_gone " in line
    assert _admin(plane, "GET", "/workloads/raw").json()["in_flight"] == 0, "lease released"


# -- Expect: 100-continue ---------------------------------------------------------


def test_expect_100_continue_with_an_upstream_that_never_answers_100(plane: Dormant) -> None:
    """Like curl with a large upload: send the head with Expect, wait for 100, then the
    body. The upstream is Python's http.server, which never sends 100 Continue."""
    body = b"x" * 200_000
    with socket.create_connection(("127.0.0.1", plane.port), timeout=30) as sock:
        sock.sendall(
            b"PUT /raw/upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
            b"Expect: 100-continue\r\nX-Request-Id: expect-100\r\n\r\n" % len(body)
        )
        status, _, _ = read_head(sock)
        assert status == 100
        sock.sendall(body)
        status, headers, rest = read_head(sock)  # within 30 s: not first_byte_timeout
        seen = json.loads(read_body(sock, headers, rest))
    assert status == 200 and seen["body_bytes"] == len(body), seen
    assert "expect" not in seen["headers"], "the body was read already: Expect is dropped"


# -- bounded request heads and bodies --------------------------------------------


def _client_sockets(pid: int, port: int) -> int:
    """Connections to ``port`` that process ``pid`` holds open (its accepted sockets)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] != "0A":  # not LISTEN
                inodes.add(fields[9])
    held = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            held += link.startswith("socket:[") and link[8:-1] in inodes
    return held


def test_oversized_request_heads_get_431(plane: Dormant) -> None:
    with socket.create_connection(("127.0.0.1", plane.port), timeout=30) as sock:
        sock.sendall(
            b"GET /raw/x HTTP/1.1\r\nHost: x\r\nX-Request-Id: big-head\r\n"
            b"X-Big: " + b"a" * 100_000 + b"\r\n\r\n"
        )
        status, headers, rest = read_head(sock)
        answer = json.loads(read_body(sock, headers, rest))
    assert status == 431 and headers["x-request-id"] == "big-head", headers
    assert answer["error"]["code"] == "headers_too_large"
    (line,) = access_lines(plane, "big-head")
    assert "status=431 " in line and "outcome=headers_too_large " in line

    # 32 MiB of header: refused after 64 KiB, never buffered whole
    assert plane.proc is not None
    rss_before = _rss_kib(plane.proc.pid)
    with socket.create_connection(("127.0.0.1", plane.port), timeout=30) as sock:
        sock.sendall(b"GET /raw/x HTTP/1.1\r\nHost: x\r\nX-Big: ")
        for _ in range(32):
            if select.select([sock], [], [], 0)[0]:
                break  # the answer is there: stop sending
            try:
                sock.sendall(b"a" * (1 << 20))
            except OSError:
                break
        status, _, _ = read_head(sock)
    assert status == 431
    assert _rss_kib(plane.proc.pid) - rss_before < 16 * 1024, "the head was not buffered"


def test_trickling_clients_are_cut_off(plane: Dormant) -> None:
    """50 connections trickle a byte every 2 s: 25 in the request head, 25 in a body the
    activator reads; each gets 408 after about 30 s and its socket is closed. 5 more
    trickle a body nobody reads (the answer is out): closed by the keep-alive timeout."""
    assert plane.proc is not None
    pid = plane.proc.pid
    before = _client_sockets(pid, plane.port)
    heads = [
        b"GET /raw/x HTTP/1.1\r\nHost: x\r\nX-Request-Id: trickle-%d\r\nX-Slow: " % i
        for i in range(25)
    ]
    bodies = [
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nX-Request-Id: trickle-%d\r\n"
        b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n" % i
        for i in range(25, 50)
    ]
    unread = [
        b"GET /-/healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" for _ in range(5)
    ]

    async def trickle(first: bytes) -> tuple[int | None, bool]:
        """(status of the answer, whether the socket was then closed by the server)."""
        reader, writer = await asyncio.open_connection("127.0.0.1", plane.port)
        writer.write(first)
        status: int | None = None
        try:
            while True:
                try:
                    data = await asyncio.wait_for(reader.read(65536), 2.0)
                except TimeoutError:
                    writer.write(b"a")
                    await writer.drain()
                    continue
                if not data:
                    return status, True
                if status is None:
                    status = int(data.split()[1])
        except ConnectionError:
            return status, True
        finally:
            writer.close()

    async def run() -> tuple[list[tuple[int | None, bool]], int]:
        tasks = [asyncio.ensure_future(trickle(first)) for first in heads + bodies + unread]
        await asyncio.sleep(5)
        during = _client_sockets(pid, plane.port)
        async with asyncio.timeout(90):
            return list(await asyncio.gather(*tasks)), during

    results, during = asyncio.run(run())
    print(f"\nclient sockets held: {before} before, {during} while 55 trickle, ", end="")
    # the 50 that trickle a head or a read body are all held at 5 s (their limit is 30 s);
    # the 5 unread bodies may already be gone (the keep-alive timeout is 5 s)
    assert during >= before + 50
    assert results[:50] == [(408, True)] * 50, results
    assert results[50:] == [(200, True)] * 5, results
    deadline = time.monotonic() + 10
    while _client_sockets(pid, plane.port) > before and time.monotonic() < deadline:
        time.sleep(0.2)
    after = _client_sockets(pid, plane.port)
    print(f"{after} after")
    assert after <= before
    (line,) = access_lines(plane, "trickle-3")
    assert "status=408 " in line and "outcome=request_timeout " in line
    (line,) = access_lines(plane, "trickle-30")
    assert "status=408 " in line and "outcome=request_timeout " in line


# -- 405, client disconnects -----------------------------------------------


def test_wrong_methods_on_the_openai_surface_get_405(plane: Dormant) -> None:
    for method in ("GET", "PUT", "OPTIONS", "HEAD", "DELETE"):
        response = httpx.request(method, f"{plane.url}/v1/completions", timeout=10)
        assert response.status_code == 405, (method, response.text)
        assert response.headers["allow"] == "POST" and response.headers["x-request-id"]
        if method != "HEAD":
            assert response.json()["error"]["code"] == "method_not_allowed"
    assert httpx.get(f"{plane.url}/v1/models", timeout=10).status_code == 200
    models = httpx.delete(f"{plane.url}/v1/models", timeout=10)
    assert models.status_code == 405 and models.headers["allow"] == "GET"


def test_client_leaving_mid_body_is_one_info_line(plane: Dormant) -> None:
    with socket.create_connection(("127.0.0.1", plane.port), timeout=30) as sock:
        sock.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nX-Request-Id: left-mid-body\r\n"
            b'Content-Length: 1000\r\n\r\n{"model"'
        )
        time.sleep(0.3)
    (line,) = access_lines(plane, "left-mid-body")
    assert "status=499 " in line and "outcome=client_gone " in line
    log = plane.log()
    assert "client left mid-body after 8 bytes (request_id=left-mid-body)" in log
    assert "ClientDisconnect" not in log and "Exception in ASGI application" not in log


# -- every answer is traceable ---------------------------------------------------


def test_every_answer_is_traceable(plane: Dormant) -> None:
    cases: list[tuple[str, str, str, dict[str, Any], int, str]] = [
        ("t-bad-json", "POST", "/v1/completions", {"content": b"{nope"}, 400, "bad_request"),
        ("t-no-model", "POST", "/v1/completions", {"json": {"model": "nope"}}, 404, "not_found"),
        ("t-no-route", "GET", "/nowhere", {}, 404, "not_found"),
        ("t-405", "GET", "/v1/completions", {}, 405, "method_not_allowed"),
        ("t-401", "GET", "/-/workloads", {}, 401, "unauthorized"),
        ("t-admin", "GET", "/-/workloads", {"headers": AUTH}, 200, "ok"),
        ("t-models", "GET", "/v1/models", {}, 200, "ok"),
        ("t-healthz", "GET", "/-/healthz", {}, 200, "ok"),
        ("t-metrics-401", "GET", "/metrics", {}, 401, "unauthorized"),
        ("t-metrics", "GET", "/metrics", {"headers": AUTH}, 200, "ok"),
    ]
    for rid, method, path, kw, status, outcome in cases:
        headers = {**kw.pop("headers", {}), "X-Request-Id": rid}
        response = httpx.request(method, plane.url + path, headers=headers, timeout=30, **kw)
        assert response.status_code == status, (rid, response.text)
        assert response.headers["x-request-id"] == rid
        (line,) = access_lines(plane, rid)
        assert f" status={status} " in line and f" outcome={outcome} " in line, line

    with socket.create_connection(("127.0.0.1", plane.port), timeout=30) as sock:
        sock.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nX-Request-Id: t-413\r\n"
            b"Content-Length: 999999999999\r\n\r\n"
        )
        status, headers, _ = read_head(sock)
    assert status == 413 and headers["x-request-id"] == "t-413"
    (line,) = access_lines(plane, "t-413")
    assert "outcome=payload_too_large " in line

    insane = httpx.get(f"{plane.url}/nowhere", headers={"X-Request-Id": "a b;c"}, timeout=10)
    fresh = insane.headers["x-request-id"]
    assert fresh != "a b;c" and len(fresh) == 16 and len(access_lines(plane, fresh)) == 1

    async def waits() -> list[httpx.Response]:  # queue_depth 1, wake_timeout 1 s, 4 s boot
        async with httpx.AsyncClient(timeout=30) as client:

            def post(rid: str) -> Awaitable[httpx.Response]:
                return client.post(
                    f"{plane.url}/v1/completions",
                    json={"model": "narrow-model"},
                    headers={"X-Request-Id": rid},
                )

            first = asyncio.ensure_future(post("t-504"))
            await asyncio.sleep(0.3)
            return [await post("t-503"), await first]

    full, late = asyncio.run(waits())
    assert full.status_code == 503 and full.headers["retry-after"]
    assert late.status_code == 504
    for response, rid, outcome in ((full, "t-503", "queue_full"), (late, "t-504", "wake_timeout")):
        assert response.headers["x-request-id"] == rid
        (line,) = access_lines(plane, rid)
        assert "workload=narrow " in line and f"outcome={outcome} " in line


# -- failures while a stream waits for a wake ------------------------------------


def _waking_stream(d: Dormant, model: str, rid: str) -> list[str]:
    """A `stream: true` request that waits for a wake; it must end cleanly."""
    with httpx.stream(
        "POST",
        f"{d.url}/v1/completions",
        json={"model": model, "stream": True},
        headers={"X-Request-Id": rid},
        timeout=60,
    ) as response:
        assert response.status_code == 200 and response.headers["x-request-id"] == rid
        return [line for line in response.iter_lines() if line]


def test_wake_failures_while_streaming_are_error_events(plane: Dormant) -> None:
    lines = _waking_stream(plane, "broken-model", "wake-fails")
    error = _error_event(lines)
    assert error["code"] == "wake_failed" and error["workload"] == "broken", error
    assert lines[-2:] == ["event: error", lines[-1]], "the error ends the stream"
    (line,) = access_lines(plane, "wake-fails")
    assert "workload=broken " in line and "status=200 upstream=- outcome=wake_failed " in line

    lines = _waking_stream(plane, "sluggish-model", "wake-too-slow")
    assert [line for line in lines if line.startswith(": waking sluggish")], lines
    assert _error_event(lines)["code"] == "wake_timeout"
    (line,) = access_lines(plane, "wake-too-slow")
    assert "status=200 upstream=- outcome=wake_timeout " in line
    assert _metric(plane, 'dormant_requests_total{outcome="wake_failed",workload="broken"}') >= 1


# -- /metrics token, the admin listener, what `dormant up` says ------------


def test_metrics_token_admin_listener_and_startup_lines(tmp_path: Path) -> None:
    admin_port = free_port()
    d = Dormant(
        tmp_path,
        [{"name": "idle", "kind": "http", "path_prefix": "/idle", "command": ECHO}],
        admin_token="adm-token-1",
        metrics_token="met-token-1",
        admin_listen=f"127.0.0.1:{admin_port}",
    )
    d.start()
    try:
        metrics = f"{d.url}/metrics"
        assert httpx.get(metrics, timeout=10).status_code == 401
        admin_auth = {"Authorization": "Bearer adm-token-1"}
        assert httpx.get(metrics, headers=admin_auth, timeout=10).status_code == 401
        ok = httpx.get(metrics, headers={"Authorization": "Bearer met-token-1"}, timeout=10)
        assert ok.status_code == 200 and "dormant_workload_state" in ok.text

        admin = f"http://127.0.0.1:{admin_port}"
        for method, path, status in (("GET", "/metrics", 404), ("POST", "/-/workloads", 405)):
            response = httpx.request(method, admin + path, headers=admin_auth, timeout=10)
            assert response.status_code == status and response.headers["x-request-id"]
            assert set(response.json()) == {"error"} and response.json()["error"]["message"]

        log = d.log()
        assert f"dormant: serving on http://127.0.0.1:{d.port}\n" in log
        assert f"dormant: admin API on http://127.0.0.1:{admin_port} (token required)\n" in log

        env = {k: v for k, v in os.environ.items() if k != "DORMANT_ADMIN_TOKEN"}
        cli = subprocess.run(
            [sys.executable, "-m", "activator", "status", "--url", admin],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert cli.returncode == 1
        assert "--token-file FILE or $DORMANT_ADMIN_TOKEN" in cli.stderr, cli.stderr
    finally:
        d.stop()
    usage = subprocess.run(
        [sys.executable, "-m", "activator", "status", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (
        "file holding the admin token (default: $DORMANT_ADMIN_TOKEN, else -c's token)"
        in " ".join(usage.stdout.split())
    )


def test_up_prints_where_it_serves_with_a_token_on_one_address(plane: Dormant) -> None:
    assert (
        f"dormant: serving on http://127.0.0.1:{plane.port} "
        "(admin API on the same address, token required)\n"
    ) in plane.log()


# -- what a user sees while a workload wakes; where a notebook is ---------------------------

BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}


def test_stream_gets_keepalive_comments_by_default(plane: Dormant) -> None:
    """`quietboot` sets no wake_keepalive: a stream waiting for its 3 s boot is not silent."""
    assert _admin(plane, "GET", "/workloads/quietboot").json()["state"] == "cold"
    with httpx.stream(
        "POST",
        f"{plane.url}/v1/completions",
        timeout=60,
        json={"model": "quietboot-model", "stream": True},
    ) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line]
    assert lines[0].startswith(": waking quietboot"), lines
    assert any(line.startswith(": dormant-wake ") for line in lines), lines
    assert any('"boot_id"' in line for line in lines), "the upstream's body follows"


def test_a_browser_gets_a_waking_page_then_the_real_one(plane: Dormant) -> None:
    assert _admin(plane, "GET", "/workloads/pageboot").json()["state"] == "cold"
    url = f"{plane.url}/pageboot/info"
    page = httpx.get(url, headers=BROWSER, timeout=60)
    assert page.status_code == 503 and page.headers["retry-after"] == "1"
    assert page.headers["content-type"].startswith("text/html")
    assert "pageboot is waking up" in page.text and 'http-equiv="refresh"' in page.text
    assert "no estimate yet" in page.text  # it never woke before
    assert _admin(plane, "GET", "/workloads/pageboot").json()["state"] == "starting"
    reloads = 0
    while (page := httpx.get(url, headers=BROWSER, timeout=60)).status_code == 503:
        assert "pageboot is waking up" in page.text
        reloads += 1
        assert reloads < 60, "still waking after a minute of reloads"
        time.sleep(0.5)
    assert page.status_code == 200 and "boot_id" in page.json(), "the real page, once ready"
    view = _admin(plane, "GET", "/workloads/pageboot").json()
    assert view["counters"]["boots"] == 1, "the reloads joined one wake"

    _admin(plane, "POST", "/workloads/pageboot/hibernate")
    api = httpx.get(url, timeout=60)  # an API client (Accept: */*) waits, as before
    assert api.status_code == 200 and "boot_id" in api.json()


def test_up_prints_each_notebooks_address_and_token_file(plane: Dormant) -> None:
    token = plane.state / "notebooks" / "nb" / "token"
    url = f"http://127.0.0.1:{plane.port}/notebooks/nb/"
    assert f"dormant: notebook nb at {url} — log in with the token in {token} " in plane.log()
    assert token.stat().st_mode & 0o777 == 0o600, "made at start, before any request"
    assert _admin(plane, "GET", "/workloads/nb").json()["counters"]["boots"] == 0
    status = subprocess.run(
        [sys.executable, "-m", "activator", "status", "--url", plane.url],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "DORMANT_ADMIN_TOKEN": TOKEN},
    )
    assert status.returncode == 0, status.stderr
    assert f"notebook nb: {url} (log in with the token in " in status.stdout
