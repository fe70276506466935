"""The activator end to end with a real (tiny, stdlib) upstream server and real CRIU:
hibernate, wake with exactly one restore under concurrency, corrupted snapshots,
commands that fail to start, crashed servers, and the bad-input answers."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from snapshots import CriuEngine, Snapshot, SnapshotStore
from tests.conftest import TESTS
from tests.integration.harness import Dormant, pid_alive

COUNTER = ["{python}", str(TESTS / "servers" / "counter.py"), "{port}"]


@pytest.fixture
def dormant(tmp_path: Path, criu: CriuEngine) -> Iterator[Dormant]:
    d = Dormant(
        tmp_path,
        [
            {"name": "a", "models": ["model-a"], "command": COUNTER, "idle_after": 0},
            {"name": "b", "models": ["model-b"], "command": COUNTER, "idle_after": "1s"},
            {
                "name": "broken",
                "models": ["model-broken"],
                "retry_backoff": "30s",
                "command": [
                    "{python}",
                    "-c",
                    "print('cannot load weights: /nowhere', flush=True); exit(3)",
                ],
            },
        ],
        admin_token="",
    )
    d.start()
    yield d
    d.stop()
    for name in ("a", "b"):
        assert (
            not list((d.state / "snapshots" / name).glob(".tmp-*"))
            if (d.state / "snapshots" / name).exists()
            else True
        )


def _complete(d: Dormant, model: str, **kw: object) -> httpx.Response:
    return httpx.post(
        f"{d.url}/v1/completions", json={"model": model, "prompt": "hi", **kw}, timeout=120
    )


def test_hibernate_then_one_restore_for_many_concurrent_requests(dormant: Dormant) -> None:
    d = dormant
    first = _complete(d, "model-a")
    assert first.status_code == 200 and first.text == "1"
    assert first.headers["x-dormant-wake"].startswith("boot; ")
    pid = d.workload("a")["pid"]
    assert pid_alive(pid)

    hibernated = d.admin("POST", "/workloads/a/hibernate").json()
    assert hibernated["state"] == "hibernated"
    assert not pid_alive(pid), "the process tree must be gone after hibernation"
    store = SnapshotStore(d.state / "snapshots")
    snapshot = store.latest("a")
    assert snapshot is not None and hibernated["snapshot"]["id"] == snapshot.id
    store.verify(snapshot)
    models = httpx.get(f"{d.url}/v1/models").json()["data"]
    assert {m["id"]: m["dormant"]["state"] for m in models}["model-a"] == "hibernated"

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=120) as client:
            return await asyncio.gather(
                *(
                    client.post(f"{d.url}/v1/completions", json={"model": "model-a"})
                    for _ in range(20)
                )
            )

    responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [200] * 20
    # state survived: the counter continues from 1, each request incremented it once
    assert sorted(int(r.text) for r in responses) == list(range(2, 22))
    assert sum(r.headers.get("x-dormant-wake", "").startswith("restore; ") for r in responses) == 20
    view = d.workload("a")
    assert view["counters"]["restores"] == 1
    assert view["counters"]["boots"] == 1
    assert view["restored_from"] == snapshot.id


def _corrupt_latest(d: Dormant, name: str, offset: int) -> Snapshot:
    """Flip one byte at ``offset`` of the largest pages image of ``name``'s newest snapshot."""
    snapshot = SnapshotStore(d.state / "snapshots").latest(name)
    assert snapshot is not None
    pages = max((snapshot.path / "images").glob("pages-*.img"), key=lambda p: p.stat().st_size)
    with open(pages, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))
    return snapshot


def test_corrupted_snapshot_is_caught_marked_bad_and_cold_booted(dormant: Dormant) -> None:
    d = dormant
    assert _complete(d, "model-a").status_code == 200
    d.admin("POST", "/workloads/a/hibernate")
    snapshot = _corrupt_latest(d, "a", 4096)

    response = _complete(d, "model-a")
    assert response.status_code == 200
    assert response.text == "1", "a cold boot starts from scratch"
    assert response.headers["x-dormant-wake"].startswith("boot; ")
    view = d.workload("a")
    assert view["counters"]["restore_failures"] == 1 and view["counters"]["restores"] == 0
    assert "mismatch" in view["last_error"]
    assert (snapshot.path.parent / f"{snapshot.id}.bad" / "BAD_REASON").exists()
    assert "mismatch" in d.log()


def test_a_corrupted_snapshot_never_runs(tmp_path: Path, criu: CriuEngine) -> None:
    """Verification runs beside the CRIU restore, whose tree stays stopped until every
    digest matched: a corrupt image is killed before one instruction of it runs. A
    heartbeat thread in the server (a line with its boot id every 20 ms) would show it."""
    beats = tmp_path / "beats"
    d = Dormant(
        tmp_path,
        [
            {
                "name": "a",
                "models": ["a"],
                "idle_after": 0,
                "command": [*COUNTER, "--heartbeat", str(beats)],
            }
        ],
    ).start()
    try:
        assert _complete(d, "a").status_code == 200
        assert d.admin("POST", "/workloads/a/hibernate").json()["state"] == "hibernated"
        old = beats.read_text().split()[-1]
        before = beats.read_text().split().count(old)
        _corrupt_latest(d, "a", 8192)
        response = _complete(d, "a")
        assert response.headers["x-dormant-wake"].startswith("boot; ")
        time.sleep(0.2)  # a restored (corrupt) heartbeat would have written by now
        lines = beats.read_text().split()
        assert lines.count(old) == before, "the corrupt image ran"
        assert lines[-1] != old, "the cold-booted server beats"
        assert (d.state / "work" / "a" / "restore").exists(), "CRIU ran beside verification"
    finally:
        d.stop()


def test_command_that_fails_to_start_answers_json_promptly(dormant: Dormant) -> None:
    d = dormant
    started = time.monotonic()
    response = _complete(d, "model-broken")
    assert time.monotonic() - started < 30
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "wake_failed" and error["workload"] == "broken"
    assert "exited with status 3" in error["message"]
    assert "cannot load weights" in error["message"]
    # within the backoff the next request fails fast with the same reason, without a new start
    again = _complete(d, "model-broken")
    assert again.status_code == 503 and "failed" in again.json()["error"]["message"]
    assert d.workload("broken")["counters"]["start_failures"] == 1
    status = d.cli("status")
    assert status.returncode == 0, status.stderr
    line = next(ln for ln in status.stdout.splitlines() if ln.startswith("broken"))
    assert "failed" in line and "cannot load weights" in line
    # everything else keeps serving
    assert _complete(d, "model-a").status_code == 200


def test_idle_workload_is_hibernated_by_the_reaper_and_woken(dormant: Dormant) -> None:
    d = dormant
    assert _complete(d, "model-b").status_code == 200
    deadline = time.monotonic() + 30
    while d.workload("b")["state"] != "hibernated":
        assert time.monotonic() < deadline, d.workload("b")
        time.sleep(0.2)
    response = _complete(d, "model-b")
    assert response.status_code == 200 and response.text == "2"
    assert response.headers["x-dormant-wake"].startswith("restore; ")


def test_server_that_crashes_is_noticed_and_restarted(dormant: Dormant) -> None:
    d = dormant
    assert _complete(d, "model-a").status_code == 200
    pid = d.workload("a")["pid"]
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while d.workload("a")["state"] != "failed":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert "killed by" in d.workload("a")["last_error"]
    response = _complete(d, "model-a")
    assert response.status_code == 200 and response.text == "1"


@pytest.mark.parametrize(
    ("request_kw", "status", "code", "words"),
    [
        ({"content": b"{not json"}, 400, "bad_request", "not valid JSON"),
        ({"content": b"\xff\xfe\x00"}, 400, "bad_request", "not valid JSON"),
        ({"json": ["model-a"]}, 400, "bad_request", "JSON object"),
        ({"json": {"prompt": "x"}}, 400, "bad_request", '"model"'),
        ({"json": {"model": "nope"}}, 404, "not_found", "available models: model-a, model-b"),
        ({"content": b"x" * (9 << 20)}, 413, "payload_too_large", "limit"),
    ],
)
def test_bad_requests_get_one_json_error_shape(
    dormant: Dormant, request_kw: dict, status: int, code: str, words: str
) -> None:
    response = httpx.post(f"{dormant.url}/v1/completions", timeout=30, **request_kw)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == code and words in error["message"]
    assert d_state(dormant, "a") == "cold", "a bad request must not wake anything"


def d_state(d: Dormant, name: str) -> str:
    return str(d.workload(name)["state"])


def test_admin_unknown_workload_is_404(dormant: Dormant) -> None:
    response = dormant.admin("POST", "/workloads/nope/hibernate")
    assert (
        response.status_code == 404 and "known: a, b, broken" in response.json()["error"]["message"]
    )
