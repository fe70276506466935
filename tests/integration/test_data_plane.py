"""Issue 3: the activator as a data plane, against real upstream servers on loopback:
routing by path and Host, header hygiene, WebSockets across a wake, admin auth,
keep-alive while waking, timeouts, client disconnects, and a 1,000-request burst."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from snapshots import CriuEngine
from tests.conftest import TESTS
from tests.integration.harness import Dormant

APP = ["{python}", str(TESTS / "servers" / "http_app.py"), "--port", "{port}"]
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
            {
                "name": "lazy",
                "models": ["lazy-model"],
                "idle_after": 0,
                "command": [*APP, "--boot-delay", "3"],
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
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    waking = [line for line in lines if line.startswith(": waking slowboot")]
    assert len(waking) >= 3, lines  # 2.5 s boot, a comment every 0.5 s
    assert lines.index(waking[0]) == 0
    assert any('"boot_id"' in line for line in lines), "the upstream's body follows"


def test_stream_idle_and_first_byte_timeouts(plane: Dormant) -> None:
    started = time.monotonic()
    with httpx.stream("GET", f"{plane.url}/stalls/stall", timeout=60) as response:
        assert response.status_code == 200
        body = b"".join(response.iter_raw())
    assert body == b"first chunk\n"
    assert time.monotonic() - started < 30, "a silent stream is closed, not left hanging"
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
