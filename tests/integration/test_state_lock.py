"""One `dormant up` per state directory: a second one (the same config started twice, as
`make run` twice does, or on another port) exits 2 with one line naming the first's pid,
before it touches anything — the first keeps serving, also when the second comes while the
first is checkpointing (its half-written snapshot and its criu are left alone)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from snapshots import CriuEngine, SnapshotStore
from tests.conftest import ROOT, TESTS, free_port
from tests.integration.harness import Dormant, pid_alive

pytestmark = pytest.mark.criu

COUNTER = ["{python}", str(TESTS / "servers" / "counter.py"), "{port}"]


def _slow_criu(tmp_path: Path, real: Path) -> tuple[Path, Path, Path]:
    """A criu that, asked to dump, says so (a file) and waits (bounded, 60 s) for a go."""
    started, go = tmp_path / "dump-started", tmp_path / "dump-go"
    wrapper = tmp_path / "bin" / "criu"
    wrapper.parent.mkdir()
    wrapper.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = dump ]; then\n'
        f"  touch {started}\n"
        "  i=0\n"
        f'  while [ ! -e {go} ] && [ "$i" -lt 1200 ]; do sleep 0.05; i=$((i+1)); done\n'
        "fi\n"
        f'exec {real} "$@"\n'
    )
    wrapper.chmod(0o755)
    return wrapper, started, go


@pytest.fixture
def first(tmp_path: Path, criu: CriuEngine) -> Iterator[tuple[Dormant, Path, Path]]:
    wrapper, started, go = _slow_criu(tmp_path, criu.info.path)
    d = Dormant(
        tmp_path,
        [{"name": "a", "models": ["model-a"], "command": COUNTER, "idle_after": 0}],
        admin_token="",
        engine="criu",
        criu_path=str(wrapper),
    )
    d.start()
    try:
        yield d, started, go
    finally:
        go.touch()
        d.stop()


def _second(d: Dormant) -> subprocess.CompletedProcess[str]:
    """The same config started again; ``--listen`` elsewhere (a taken port must not be what
    stops it)."""
    listen = f"127.0.0.1:{free_port()}"
    return subprocess.run(
        [sys.executable, "-m", "activator", "up", "-c", str(d.config), "--listen", listen],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=d.environ,
    )


def _assert_refused(done: subprocess.CompletedProcess[str], d: Dormant) -> None:
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(
        f"dormant: state_dir {d.state} is in use by another Dormant (pid {d.proc.pid} on "  # type: ignore[union-attr]
    ), lines[0]


def test_a_second_up_leaves_a_serving_first_alone(first: tuple[Dormant, Path, Path]) -> None:
    d, _started, _go = first
    served = httpx.post(f"{d.url}/v1/completions", json={"model": "model-a"}, timeout=60)
    assert served.status_code == 200, served.text
    pid = d.workload("a")["pid"]
    _assert_refused(_second(d), d)
    assert pid_alive(pid) and d.workload("a")["pid"] == pid
    again = httpx.post(f"{d.url}/v1/completions", json={"model": "model-a"}, timeout=60)
    assert again.status_code == 200 and "x-dormant-wake" not in again.headers
    assert "ended what an earlier Dormant left running" not in d.log()


def test_a_second_up_while_the_first_checkpoints(first: tuple[Dormant, Path, Path]) -> None:
    d, started, go = first
    assert httpx.post(f"{d.url}/v1/completions", json={"model": "model-a"}).status_code == 200
    result: dict[str, httpx.Response] = {}
    hibernate = threading.Thread(
        target=lambda: result.update(done=d.admin("POST", "/workloads/a/hibernate"))
    )
    hibernate.start()
    deadline = time.monotonic() + 60
    while not started.exists():
        assert time.monotonic() < deadline and hibernate.is_alive(), d.log()
        time.sleep(0.05)
    pending = list((d.state / "snapshots" / "a").glob(".tmp-*"))
    assert len(pending) == 1
    _assert_refused(_second(d), d)
    assert pending[0].is_dir(), "the second Dormant removed the half-written snapshot"
    go.touch()
    hibernate.join(120)
    assert result["done"].status_code == 200, result["done"].text
    assert result["done"].json()["state"] == "hibernated"
    snapshot = SnapshotStore(d.state / "snapshots").latest("a")
    assert snapshot is not None
    woke = httpx.post(f"{d.url}/v1/completions", json={"model": "model-a"}, timeout=60)
    assert woke.status_code == 200 and woke.headers["x-dormant-wake"].startswith("restore")


def test_the_lock_goes_with_the_first(tmp_path: Path) -> None:
    """Killed (SIGKILL, no clean-up of its own), the first's lock is gone with it."""
    d = Dormant(
        tmp_path,
        [{"name": "a", "models": ["model-a"], "command": COUNTER}],
        admin_token="",
        engine="restart",
    )
    d.start()
    assert d.proc is not None
    os.kill(d.proc.pid, 9)
    d.proc.wait(30)
    d.start()
    d.stop()
