"""The one launcher of `dormant up` (loadtests.launcher.DormantProcess), with real processes:
start and wait for health, stop by PID, start again, and clear errors when it cannot start."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import httpx
import pytest

from loadtests.launcher import DormantProcess, StartError, check_port, free_port
from tests.conftest import TESTS

pytestmark = pytest.mark.timeout(180)

COUNTER = ["{python}", str(TESTS / "servers" / "counter.py"), "{port}"]


def _config(tmp: Path, port: int, **extra: Any) -> dict[str, Any]:
    workload = {"name": "a", "models": ["m"], "command": COUNTER, "idle_after": 0}
    return {
        "listen": f"127.0.0.1:{port}",
        "state_dir": str(tmp / "state"),
        "engine": "restart",
        "workloads": [workload],
        **extra,
    }


def test_start_stop_and_start_again(tmp_path: Path) -> None:
    process = DormantProcess(tmp_path, _config(tmp_path, free_port()))
    assert process.config_path.is_file() and not process.running
    process.start(timeout=60)
    try:
        first = process.proc
        assert process.running and first is not None
        assert httpx.get(f"{process.url}/-/healthz", timeout=5).status_code == 200
        response = httpx.post(f"{process.url}/v1/x", json={"model": "m"}, timeout=60)
        assert response.status_code == 200  # it really serves the configured workload
        with pytest.raises(StartError, match="already running"):
            process.start()
        assert process.stop(timeout=30) == []
        assert first.returncode is not None and not process.running
        assert process.stop() == []  # nothing left to stop
        earlier = process.log()
        assert earlier

        process.start(timeout=60)  # same config, port and log
        assert process.proc is not first and process.running
        assert process.log().startswith(earlier) and len(process.log()) > len(earlier)
    finally:
        process.stop(timeout=30)


def test_a_bad_config_is_reported_with_the_log_tail(tmp_path: Path) -> None:
    process = DormantProcess(tmp_path, _config(tmp_path, free_port(), idle_afer=3))
    with pytest.raises(StartError) as failed:
        process.start(timeout=60)
    message = str(failed.value)
    assert message.startswith("dormant exited with 2 before it was healthy")
    assert "bad config" in message and "idle_afer" in message, message
    assert not process.running


def test_a_bounded_wait_stops_what_it_started(tmp_path: Path) -> None:
    process = DormantProcess(tmp_path, _config(tmp_path, free_port()))
    with pytest.raises(StartError, match=r"did not answer .*/-/healthz within 0\.01s; stopped it"):
        process.start(timeout=0.01)  # too short for any Python process to come up
    assert process.proc is not None and process.proc.returncode is not None


def test_a_taken_port_fails_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        process = DormantProcess(tmp_path, _config(tmp_path, port))
        with pytest.raises(StartError, match=rf"listen port {port} is not free on 127\.0\.0\.1"):
            process.start()
        assert process.proc is None
        with pytest.raises(StartError, match="leave it out for a free one"):
            check_port(port)
    check_port(port)  # free again once closed


def test_the_config_must_listen_on_loopback(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"needs listen: 127\.0\.0\.1:PORT"):
        DormantProcess(tmp_path, {"listen": "0.0.0.0:8080", "workloads": []})
