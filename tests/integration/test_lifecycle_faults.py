"""Faults at every kill point of hibernate and wake, and the timeouts that bound them, with
a real `dormant up`, real CRIU and a real server holding 300 MiB of state.

After each fault: the client gets an answer (or a defined error), nothing is orphaned,
the port has exactly one listener, and the workload serves again.
(SIGKILL of Dormant itself at these points: tests/integration/test_crash_recovery.py.)
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from snapshots import CriuEngine, SnapshotStore
from tests.conftest import TESTS
from tests.integration.harness import Dormant

APP = ["{python}", str(TESTS / "servers" / "http_app.py"), "--port", "{port}", "--ballast", "300"]
pytestmark = pytest.mark.slow


def _dormant(tmp: Path, **workload: object) -> Dormant:
    token = uuid.uuid4().hex
    d = Dormant(
        tmp,
        [{"name": "big", "models": ["big"], "command": APP, "idle_after": 0, **workload}],
        environ={"DORMANT_TEST_TOKEN": token},
    )
    d.token = token  # type: ignore[attr-defined]
    return d


@pytest.fixture
def big(tmp_path: Path, criu: CriuEngine) -> Iterator[Dormant]:
    d = _dormant(tmp_path).start()
    yield d
    d.stop()
    assert _servers(d) == [], "nothing outlives Dormant"


def _ask(d: Dormant) -> httpx.Response:
    return httpx.post(f"{d.url}/v1/info", json={"model": "big"}, timeout=120)


def _servers(d: Dormant) -> list[int]:
    """Pids of this test's upstream servers (found by the token in their environment;
    the `unshare` wrapper of a booted instance is not counted)."""
    mark = f"DORMANT_TEST_TOKEN={d.token}".encode()  # type: ignore[attr-defined]
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if b"unshare" in argv[0] or not any(a.endswith(b"http_app.py") for a in argv):
                continue  # not the server (a booted one has its unshare wrapper above it)
            if mark in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return sorted(found)


def _listeners(port: int) -> int:
    """LISTEN sockets on ``port`` (IPv4, all network namespaces we can see: ours)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == "0A":
            count += 1
    return count


def _criu(d: Dormant, action: str) -> int | None:
    """The pid of criu running ``action`` (dump or restore) for this Dormant, if any."""
    work = str(d.state).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        is_criu = bool(argv) and argv[0].endswith(b"criu") and action.encode() in argv[1:2]
        if is_criu and any(work in a for a in argv):
            return int(entry.name)
    return None


def _when(condition: Callable[[], int | None], then: Callable[[int], None]) -> threading.Thread:
    """In a thread: wait (up to 60 s) until ``condition`` returns a pid, then ``then`` it."""

    def watch() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            pid = condition()
            if pid is not None:
                then(pid)
                return
            time.sleep(0.005)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _assert_serving_once(d: Dormant) -> httpx.Response:
    """A request is answered, by exactly one server, the only listener on its port."""
    response = _ask(d)
    assert response.status_code == 200, response.text
    view = d.workload("big")
    assert view["state"] == "ready", view
    deadline = time.monotonic() + 10
    while len(_servers(d)) != 1 and time.monotonic() < deadline:
        time.sleep(0.05)  # a killed tree is reaped a moment later
    assert len(_servers(d)) == 1, f"one server, not {_servers(d)}"
    assert _listeners(view["port"]) == 1
    return response


def test_restore_timeout_keeps_the_snapshot_and_answers_503(
    tmp_path: Path, criu: CriuEngine
) -> None:
    """restore_timeout 1ms on a hibernated workload → the restore times out: a slow machine,
    not a broken snapshot. It is kept (not .bad), nothing cold-boots over it, the client gets
    503 + Retry-After with the reason, and status says why."""
    d = _dormant(tmp_path, restore_timeout="1ms").start()
    try:
        assert _ask(d).status_code == 200
        assert d.admin("POST", "/workloads/big/hibernate").json()["state"] == "hibernated"
        response = _ask(d)
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "wake_failed"
        assert "timed out" in response.json()["error"]["message"]
        assert int(response.headers["retry-after"]) >= 1
        store = SnapshotStore(d.state / "snapshots")
        assert [e.status for e in store.entries("big")] == ["ok"], "kept as it was"
        view = d.workload("big")
        assert "timed out" in view["last_error"] and view["counters"]["restore_failures"] == 0
        assert view["counters"]["restore_deferred"] == 1 and view["counters"]["boots"] == 1
        status = d.cli("status")
        assert status.returncode == 0 and "timed out" in status.stdout
        assert "the snapshot is kept" in status.stdout
        assert _servers(d) == [], "nothing booted over the snapshot"
    finally:
        d.stop()


def test_checkpoint_timeout_answers_a_clear_error_and_keeps_serving(
    tmp_path: Path, criu: CriuEngine
) -> None:
    d = _dormant(tmp_path, checkpoint_timeout="1ms").start()
    try:
        first = _ask(d).json()
        answer = d.admin("POST", "/workloads/big/hibernate")
        assert answer.status_code == 500
        assert "timed out" in answer.json()["error"]["message"]
        again = _assert_serving_once(d)
        assert again.json()["boot_id"] == first["boot_id"], "the same process serves on"
        assert SnapshotStore(d.state / "snapshots").latest("big") is None
    finally:
        d.stop()


def test_criu_killed_during_the_dump(big: Dormant) -> None:
    d = big
    first = _ask(d).json()
    watcher = _when(lambda: _criu(d, "dump"), _kill)
    answer = d.admin("POST", "/workloads/big/hibernate")
    watcher.join(5)
    assert answer.status_code == 500, answer.text
    assert "dump" in answer.json()["error"]["message"]
    # CRIU lets go of the tree when it dies: it serves on if it survived, else the next
    # request boots a fresh one; either way exactly one server answers.
    again = _assert_serving_once(d)
    if d.workload("big")["counters"]["boots"] == 1:
        assert again.json()["boot_id"] == first["boot_id"]
    assert SnapshotStore(d.state / "snapshots").latest("big") is None


def test_criu_killed_during_the_restore(big: Dormant) -> None:
    d = big
    state = _ask(d).json()
    assert d.admin("POST", "/workloads/big/hibernate").json()["state"] == "hibernated"
    watcher = _when(lambda: _criu(d, "restore"), _kill)
    response = _ask(d)  # criu killed: the machine's doing, the snapshot is kept
    watcher.join(5)
    assert response.status_code == 503, response.text
    assert "Retry-After" in response.headers
    assert d.workload("big")["counters"]["restore_failures"] == 0
    assert [e.status for e in SnapshotStore(d.state / "snapshots").entries("big")] == ["ok"]
    time.sleep(int(response.headers["Retry-After"]))
    again = _ask(d)  # as the answer said: later, it restores (the state is not lost)
    assert again.status_code == 200, again.text
    assert again.headers["x-dormant-wake"].startswith("restore; ")
    assert again.json()["boot_id"] == state["boot_id"]
    _assert_serving_once(d)


def test_server_killed_during_the_dump(big: Dormant) -> None:
    d = big
    _ask(d)
    server = d.workload("big")["pid"]
    watcher = _when(lambda: server if _criu(d, "dump") else None, _kill)
    answer = d.admin("POST", "/workloads/big/hibernate")
    watcher.join(5)
    assert answer.status_code in (200, 500), answer.text
    # the dump either finished first (hibernated) or failed with the process gone
    assert d.workload("big")["state"] in ("hibernated", "failed"), d.workload("big")
    _assert_serving_once(d)


def test_server_killed_right_after_a_restore(big: Dormant) -> None:
    d = big
    first = _ask(d).json()
    assert d.admin("POST", "/workloads/big/hibernate").json()["state"] == "hibernated"
    assert _ask(d).json()["boot_id"] == first["boot_id"]
    _kill(d.workload("big")["pid"])
    deadline = time.monotonic() + 10
    while d.workload("big")["state"] != "failed":
        assert time.monotonic() < deadline, d.workload("big")
        time.sleep(0.05)
    # the snapshot is still committed: the next request restores it (no backoff after a crash)
    response = _ask(d)
    assert response.status_code == 200
    assert response.headers["x-dormant-wake"].startswith("restore; ")
    assert response.json()["boot_id"] == first["boot_id"]
    _assert_serving_once(d)
