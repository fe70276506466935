"""A snapshot whose restored process dies on its first request (as a PyTorch server that
lost its AMX permission across the restore does, with SIGILL), with a real `dormant up`,
real CRIU and a real server: each such request gets a 502 that says what happened, the
second early death sets the snapshot aside as suspect (kept, with the reason), a cold
boot answers the next request, and `dormant status` and `dormant snapshots list` say why.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from snapshots import CriuEngine, SnapshotStore
from tests.conftest import TESTS
from tests.integration.harness import Dormant

pytestmark = pytest.mark.slow


def _post(d: Dormant, path: str) -> httpx.Response:
    return httpx.post(f"{d.url}/v1/{path}", json={"model": "m"}, timeout=120)


def _wait_state(d: Dormant, state: str) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while (view := d.workload("w"))["state"] != state:
        assert time.monotonic() < deadline, view
        time.sleep(0.05)
    return view


def test_second_death_after_a_restore_sets_the_snapshot_aside(
    tmp_path: Path, criu: CriuEngine
) -> None:
    die_file = tmp_path / "die-if-boot-id"
    command = ["{python}", str(TESTS / "servers" / "dies_restored.py"), "--port", "{port}"]
    d = Dormant(
        tmp_path,
        [
            {
                "name": "w",
                "models": ["m"],
                "command": [*command, "--die-file", str(die_file)],
                "idle_after": 0,
                "start_timeout": "60s",
            }
        ],
    ).start()
    try:
        dumped = _post(d, "boot").text
        assert d.admin("POST", "/workloads/w/hibernate").json()["state"] == "hibernated"
        snapshot = d.workload("w")["snapshot"]["id"]
        die_file.write_text(dumped)  # from now on every restore of it dies on /v1/work

        for death in (1, 2):
            response = _post(d, "work")
            assert response.status_code == 502, response.text
            error = response.json()["error"]
            assert error["code"] == "upstream_error"
            assert "closed the connection before answering" in error["message"]
            view = _wait_state(d, "failed")
            assert "killed by signal 4" in view["last_error"], view
            if death == 1:
                assert "set aside" not in view["last_error"]

        line = view["last_error"]
        assert f"snapshot {snapshot} set aside as suspect" in line and "SIGILL" in line
        assert "\n" not in line
        assert view["counters"]["snapshots_set_aside"] == 1

        response = _post(d, "work")  # a cold boot answers, with a new boot id
        assert response.status_code == 200, response.text
        assert response.headers["x-dormant-wake"].startswith("boot; ")
        assert response.text.startswith("worked ") and dumped not in response.text

        entry = SnapshotStore(d.state / "snapshots").entry(snapshot)
        assert entry.status == "suspect" and entry.path.name == f"{snapshot}.suspect"
        assert "2 times in a row" in entry.reason and "killed by signal 4" in entry.reason
        listed = d.cli("snapshots", "list")
        assert listed.returncode == 0, listed.stderr
        assert "suspect" in listed.stdout and snapshot in listed.stdout
        status = d.cli("status")
        assert "set aside as suspect" in status.stdout, status.stdout
    finally:
        d.stop()
