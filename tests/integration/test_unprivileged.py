"""Dormant run as an unprivileged user (uid/gid 65534): no PID namespaces, no CRIU, so the
documented ``restart`` engine. A real `dormant up` answers a request through a real server,
and `dormant check` says what this user lacks without a traceback.

The subprocesses drop to 65534 with setgid/setuid in preexec (the test runs as root). They
need a Python that uid 65534 may execute with the project's packages: the test's own
interpreter when it can, else the system's of the same version with the venv's
site-packages on PYTHONPATH."""

from __future__ import annotations

import os
import shutil
import signal
import site
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, TESTS, free_port

NOBODY = 65534
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="dropping to uid 65534 needs root")


def _as_nobody() -> None:
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


def _environ(home: Path) -> dict[str, str]:
    paths = [str(ROOT), *site.getsitepackages()]
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "PYTHONPATH": os.pathsep.join(paths),
        "PYTHONDONTWRITEBYTECODE": "1",
        "LANG": "C.UTF-8",
    }


@pytest.fixture
def nobody_home() -> Iterator[Path]:
    """A directory of 65534's own (pytest's tmp_path is under root's private 0700 dir)."""
    home = Path(tempfile.mkdtemp(prefix="dormant-nobody-"))
    os.chown(home, NOBODY, NOBODY)
    yield home
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def python(nobody_home: Path) -> str:
    """An interpreter uid 65534 can run, that imports the project."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (sys.executable, f"/usr/bin/{version}", f"/usr/local/bin/{version}"):
        try:
            done = subprocess.run(
                [candidate, "-c", "import activator.cli, uvicorn, fastapi"],
                env=_environ(nobody_home),
                preexec_fn=_as_nobody,
                capture_output=True,
                timeout=60,
                cwd=nobody_home,
            )
        except OSError:
            continue
        if done.returncode == 0:
            return candidate
    pytest.skip(f"no {version} that uid 65534 can run with the project's packages")


def _run(python: str, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [python, "-m", "activator", *args],
        env=_environ(home),
        preexec_fn=_as_nobody,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=home,
    )


@pytest.fixture
def dormant_up(python: str, nobody_home: Path) -> Iterator[Callable[[], str]]:
    """`dormant up` as 65534 on a tiny HTTP workload; yields a function returning its log."""
    state = nobody_home / "state"
    port = free_port()
    config = nobody_home / "dormant.yaml"
    config.write_text(
        f"listen: 127.0.0.1:{port}\n"
        f"state_dir: {state}\n"
        "workloads:\n"
        "  - name: counter\n"
        "    kind: http\n"
        "    path_prefix: /apps/counter\n"
        "    health_path: /health\n"
        "    idle_after: 0\n"
        f"    command: ['{{python}}', '{TESTS / 'servers' / 'counter.py'}', '{{port}}']\n"
    )
    os.chown(config, NOBODY, NOBODY)
    log = nobody_home / "dormant.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [python, "-m", "activator", "up", "-c", str(config)],
            env=_environ(nobody_home),
            preexec_fn=_as_nobody,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=nobody_home,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/-/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield lambda: f"http://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    text = log.read_text()
    assert "Traceback" not in text, text


def test_dormant_up_as_uid_65534_answers_with_the_restart_engine(
    dormant_up: Callable[[], str], nobody_home: Path
) -> None:
    url = dormant_up()
    first = httpx.post(f"{url}/apps/counter/incr", timeout=120)
    assert first.status_code == 200, first.text
    assert first.text == "1"
    log = (nobody_home / "dormant.log").read_text()
    assert "without a PID namespace" in log
    assert log.count("without a PID namespace") == 1, "said once"


def test_dormant_check_as_uid_65534_prints_no_traceback(python: str, nobody_home: Path) -> None:
    # the default state dir of a user whose HOME it may not enter, and then a usable one
    for env_home in (Path("/root"), nobody_home):
        done = _run(python, env_home, "check")
        assert "Traceback" not in done.stdout + done.stderr, done.stderr
        assert "PID namespaces" in done.stdout
        assert "engine restart" in done.stdout or "restart" in done.stdout
