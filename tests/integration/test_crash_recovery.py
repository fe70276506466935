"""Killing the activator (SIGKILL) mid-hibernation or mid-restore, then starting it again:
no orphan processes, no half-written snapshot visible, state reconciled."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from snapshots import CriuEngine, SnapshotStore, process_tree
from tests.conftest import TESTS
from tests.integration.harness import Dormant, pid_alive

# 300 MiB of state: a dump or restore takes long enough to be interrupted.
APP = ["{python}", str(TESTS / "servers" / "http_app.py"), "--port", "{port}", "--ballast", "300"]


def _dormant(tmp: Path) -> Dormant:
    return Dormant(
        tmp,
        [
            {
                "name": "big",
                "models": ["big-model"],
                "command": APP,
                "idle_after": 0,
                "start_timeout": "120s",
            }
        ],
    )


def _kill_when(
    d: Dormant, state: str, action: Callable[[], object], delay: float = 0.0
) -> list[int]:
    """Run ``action`` in a thread; SIGKILL the activator ``delay`` seconds after the
    workload is in ``state``. Returns every pid of the activator's process tree then."""
    thread = threading.Thread(target=lambda: _quietly(action), daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while d.workload("big")["state"] != state:
        assert time.monotonic() < deadline, d.workload("big")
        time.sleep(0.01)
    time.sleep(delay)
    assert d.proc is not None
    tree = process_tree(d.proc.pid)
    os.kill(d.proc.pid, signal.SIGKILL)
    d.proc.wait(10)
    thread.join(30)
    return tree


def _quietly(action: Callable[[], object]) -> None:
    with contextlib.suppress(httpx.HTTPError):  # the activator was killed under it
        action()


def _assert_no_orphans(tree: list[int]) -> None:
    deadline = time.monotonic() + 10
    while alive := [p for p in tree if pid_alive(p)]:
        assert time.monotonic() < deadline, f"orphans left: {alive}"
        time.sleep(0.05)


def _port_released(port: int, timeout: float = 10.0) -> bool:
    """Nothing listens on ``port`` (within ``timeout``: when criu is killed mid-dump, the
    socket it was handed by its parasite is released by the kernel a moment later)."""
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) != 0:
                return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def test_sigkill_during_checkpoint(tmp_path: Path, criu: CriuEngine) -> None:
    d = _dormant(tmp_path).start()
    try:
        assert (
            httpx.post(f"{d.url}/v1/x", json={"model": "big-model"}, timeout=120).status_code == 200
        )
        port = d.workload("big")["port"]
        tree = _kill_when(d, "checkpointing", lambda: d.admin("POST", "/workloads/big/hibernate"))
        store = SnapshotStore(d.state / "snapshots")
        committed = store.list("big")
        for snapshot in committed:  # whatever is visible is complete
            store.verify(snapshot)

        d.start()  # ends what the killed activator left (a stopped criu helper, at most)
        _assert_no_orphans(tree)
        assert _port_released(port)
        assert not list((d.state / "snapshots" / "big").glob(".tmp-*")), "partial dump cleaned"
        view = d.workload("big")
        assert view["state"] == ("hibernated" if committed else "cold")
        response = httpx.post(f"{d.url}/v1/x", json={"model": "big-model"}, timeout=120)
        assert response.status_code == 200
    finally:
        d.stop()


def _listeners(port: int) -> int:
    """LISTEN sockets on ``port`` (from /proc/net/tcp)."""
    lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(
        1 for ln in lines if int(ln.split()[1].split(":")[1], 16) == port and ln.split()[3] == "0A"
    )


# Killed as the restore starts, and part-way through it (criu has forked the tree and is
# filling its memory): the tree must not outlive Dormant, nor be restored a second time.
@pytest.mark.parametrize("delay", [0.0, 0.25])
def test_sigkill_during_restore(tmp_path: Path, criu: CriuEngine, delay: float) -> None:
    d = _dormant(tmp_path).start()
    try:
        first = httpx.post(f"{d.url}/v1/x", json={"model": "big-model"}, timeout=120).json()
        assert d.admin("POST", "/workloads/big/hibernate").json()["state"] == "hibernated"
        snapshot = SnapshotStore(d.state / "snapshots").latest("big")
        assert snapshot is not None
        port = snapshot.manifest.meta["port"]
        tree = _kill_when(
            d,
            "restoring",
            lambda: httpx.post(f"{d.url}/v1/x", json={"model": "big-model"}, timeout=120),
            delay,
        )
        d.start()
        _assert_no_orphans(tree)
        assert _port_released(port), "a half-restored server must not keep the port"
        assert d.workload("big")["state"] == "hibernated"
        again = httpx.post(f"{d.url}/v1/x", json={"model": "big-model"}, timeout=120)
        assert again.status_code == 200
        assert again.json()["boot_id"] == first["boot_id"], "restored, not cold booted"
        assert again.headers["x-dormant-wake"].startswith("restore; ")
        assert _listeners(port) == 1, "exactly one server listens: no second copy"
    finally:
        d.stop()
