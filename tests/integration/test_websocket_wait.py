"""WebSocket upgrades that wait for a wake are queued like requests, and a client that
gives up while it waits leaves the queue (as an HTTP client does): real WebSocket clients
against a real `dormant up` fronting a server whose cold boot is slow on purpose.

The report: five upgrades that gave up while a workload woke kept their queue slots, and
the next real request got ``503 queue_full``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from websockets.sync.client import connect

from tests.conftest import TESTS
from tests.integration.harness import Dormant
from tests.integration.wire import access_lines

APP = ["{python}", str(TESTS / "servers" / "http_app.py"), "--port", "{port}"]
DEPTH = 3
BOOT_DELAY = 10.0
"""Seconds the upstream sleeps before it listens: the clients give up well within it."""


@pytest.fixture(scope="module")
def slow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dormant]:
    d = Dormant(
        tmp_path_factory.mktemp("wswait"),
        [
            {
                "name": "slow",
                "kind": "http",
                "path_prefix": "/slow",
                "strip_prefix": True,
                "command": [*APP, "--boot-delay", str(BOOT_DELAY)],
                "queue_depth": DEPTH,
                "wake_timeout": "120s",
                "idle_after": 0,
            }
        ],
    )
    d.start()
    yield d
    d.stop()


def _view(d: Dormant) -> dict[str, object]:
    return d.workload("slow")


def _give_up(d: Dormant, n: int) -> str:
    """Open a WebSocket and give up after 1 s (the workload is still booting)."""
    url = d.url.replace("http://", "ws://") + "/slow/echo"
    try:
        with connect(url, open_timeout=1, additional_headers={"X-Request-Id": f"ws-gone-{n}"}):
            return "opened"
    except TimeoutError:
        return "gave up"


def test_upgrades_that_give_up_while_waiting_leave_the_queue(slow: Dormant) -> None:
    assert _view(slow)["state"] == "cold"
    started = time.monotonic()
    with ThreadPoolExecutor(DEPTH) as pool:
        outcomes = list(pool.map(lambda n: _give_up(slow, n), range(DEPTH)))
    assert outcomes == ["gave up"] * DEPTH
    view = _view(slow)
    deadline = time.monotonic() + 3
    while view["waiting"] != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
        view = _view(slow)
    assert view["state"] == "starting", "the test needs the wake still going on"
    assert view["waiting"] == 0, f"{view['waiting']} upgrades that gave up still hold queue slots"
    assert time.monotonic() - started < BOOT_DELAY

    # the queue is whole again: DEPTH real requests wait for the same wake and are served
    with ThreadPoolExecutor(DEPTH) as pool:
        answers = list(
            pool.map(lambda _: httpx.get(f"{slow.url}/slow/info", timeout=120), range(DEPTH))
        )
    assert [a.status_code for a in answers] == [200] * DEPTH, [a.text for a in answers]
    assert all(a.headers["x-dormant-wake"].startswith("boot; ") for a in answers)

    for n in range(DEPTH):  # each abandoned upgrade: one access line, the client gone
        (line,) = access_lines(slow, f"ws-gone-{n}")
        assert "method=WEBSOCKET " in line and " status=499 " in line, line
        assert " outcome=client_gone " in line, line
    assert "Exception in ASGI application" not in slow.log()

    # the wake went on: a WebSocket now opens at once, and still works
    with connect(slow.url.replace("http://", "ws://") + "/slow/echo", open_timeout=10) as ws:
        ws.send("hi")
        assert ws.recv(timeout=10).endswith(":hi")
