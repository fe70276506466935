"""Shutdown, restart, a separate admin listener, metrics and the access log."""

from __future__ import annotations

from pathlib import Path

import httpx

from snapshots import CriuEngine, SnapshotStore
from tests.conftest import TESTS, free_port
from tests.integration.harness import Dormant

COUNTER = ["{python}", str(TESTS / "servers" / "counter.py"), "{port}"]


def test_on_shutdown_hibernate_then_restart_restores(tmp_path: Path, criu: CriuEngine) -> None:
    admin_port = free_port()
    d = Dormant(
        tmp_path,
        [{"name": "a", "models": ["model-a"], "command": COUNTER, "idle_after": 0}],
        on_shutdown="hibernate",
        admin_listen=f"127.0.0.1:{admin_port}",
    )
    d.start()
    try:
        admin = f"http://127.0.0.1:{admin_port}/-"
        for expected in ("1", "2"):
            response = httpx.post(
                f"{d.url}/v1/completions",
                json={"model": "model-a"},
                headers={"X-Request-Id": f"trace-{expected}"},
                timeout=60,
            )
            assert response.text == expected
        # admin lives on its own port only
        assert httpx.get(f"{d.url}/-/workloads", timeout=10).status_code == 404
        assert httpx.get(f"{admin}/workloads/a", timeout=10).json()["state"] == "ready"

        metrics = httpx.get(f"{d.url}/metrics", timeout=10).text
        assert 'dormant_workload_state{state="ready",workload="a"} 1.0' in metrics
        assert 'dormant_requests_total{outcome="ok",workload="a"} 2.0' in metrics
        assert 'dormant_wake_seconds_count{path="boot",workload="a"} 1.0' in metrics
        assert "dormant_proxy_ttfb_seconds_bucket" in metrics
        assert (
            "request_id=trace-2 workload=a method=POST path=/v1/completions status=200" in d.log()
        )
    finally:
        d.stop()
    snapshot = SnapshotStore(d.state / "snapshots").latest("a")
    assert snapshot is not None, "on_shutdown: hibernate leaves a snapshot"

    d.start()
    try:
        admin = f"http://127.0.0.1:{admin_port}/-"
        assert httpx.get(f"{admin}/workloads/a", timeout=10).json()["state"] == "hibernated"
        response = httpx.post(f"{d.url}/v1/completions", json={"model": "model-a"}, timeout=60)
        assert response.text == "3", "the counter survived a restart of Dormant itself"
        assert response.headers["x-dormant-wake"].startswith("restore; ")
    finally:
        d.stop()
