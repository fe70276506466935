"""vLLM's sleep API on the reference server, a real process on CPU: sleep levels 1 and 2, what
is refused while asleep, idempotence, partial wakes, held memory seen in the process's PSS, and
`--device cuda` where there is no CUDA. The same on a GPU: tests/gpu/test_refserver_gpu.py."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch

from tests.conftest import ROOT
from tests.examples.refserver_process import MODEL, RefServer, refserver

pytestmark = pytest.mark.timeout(180)

MiB = 1 << 20


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RefServer]:
    with refserver(tmp_path_factory.mktemp("sleep")) as s:
        yield s


@pytest.fixture
def awake(server: RefServer) -> Iterator[RefServer]:
    """The module's server, awake before and after the test."""
    assert server.wake().status_code == 200
    yield server
    assert server.wake().status_code == 200


def _prompt(seed: int) -> str:
    """A 200-character prompt whose first character no other seed's shares (no cache overlap)."""
    return chr(33 + seed) + "".join(chr(32 + (i * 7 + seed * 13) % 95) for i in range(199))


def _assert_refused(server: RefServer) -> None:
    """Inference answers 503 with an OpenAI-style JSON error; the other routes still answer."""
    for path, body in [
        ("/v1/completions", {"model": server.model, "prompt": "x", "max_tokens": 2}),
        ("/v1/completions", {"model": server.model, "prompt": "x", "stream": True}),
        (
            "/v1/chat/completions",
            {"model": server.model, "messages": [{"role": "user", "content": "x"}]},
        ),
    ]:
        r = server.http.post(path, json=body)
        assert r.status_code == 503, (path, r.text)
        assert r.headers["content-type"] == "application/json"
        error = r.json()["error"]
        assert error["code"] == "model_sleeping" and "wake_up" in error["message"]
    assert server.http.get("/health").status_code == 200
    assert [m["id"] for m in server.http.get("/v1/models").json()["data"]] == [server.model]


def test_level_1_parks_weights_and_kv_cache_and_wakes_to_the_same_output_and_cache(
    awake: RefServer,
) -> None:
    prompt = _prompt(1)
    first, cached_first = awake.text_and_cached(prompt)
    again, cached_again = awake.text_and_cached(prompt)  # the path a cache hit takes
    assert cached_first == 0 and cached_again == len(prompt) - 1 and again == first
    before = awake.memory()
    assert before["device_bytes"]["weights"] > 0 and before["device_bytes"]["kv_cache"] > 0
    assert before["host_bytes"] == {"weights": 0, "held": 0, "kv_cache": 0}

    assert awake.sleep(1).status_code == 200
    assert awake.is_sleeping()
    asleep = awake.memory()
    assert asleep["level"] == 1 and asleep["sleeping_tags"] == ["kv_cache", "weights"]
    assert asleep["device_bytes"] == {"weights": 0, "held": 0, "kv_cache": 0}
    assert asleep["host_bytes"]["weights"] == before["device_bytes"]["weights"]
    assert asleep["host_bytes"]["kv_cache"] == before["device_bytes"]["kv_cache"]
    assert asleep["host_pinned"] is False  # pinned memory is for CUDA devices
    _assert_refused(awake)

    assert awake.wake().status_code == 200
    assert not awake.is_sleeping()
    woken = awake.memory()
    assert woken["device_bytes"] == before["device_bytes"]
    assert woken["host_bytes"] == {"weights": 0, "held": 0, "kv_cache": 0}
    assert awake.text_and_cached(prompt) == (again, cached_again)
    _, cached = awake.text_and_cached(prompt + " and a little more")
    assert cached >= len(prompt)


def test_level_2_drops_weights_and_kv_cache_and_wakes_to_the_same_output_without_cache(
    awake: RefServer,
) -> None:
    prompt = _prompt(2)
    first, cached = awake.text_and_cached(prompt)
    assert cached == 0

    assert awake.sleep(2).status_code == 200
    assert awake.is_sleeping()
    asleep = awake.memory()
    assert asleep["level"] == 2
    assert asleep["device_bytes"] == {"weights": 0, "held": 0, "kv_cache": 0}
    assert asleep["host_bytes"] == {"weights": 0, "held": 0, "kv_cache": 0}  # nothing kept
    _assert_refused(awake)

    assert awake.wake().status_code == 200
    assert not awake.is_sleeping()
    assert awake.memory()["device_bytes"]["kv_cache"] == 0
    assert awake.text_and_cached(prompt) == (first, 0)  # reloaded weights, empty cache


def test_sleeping_twice_and_waking_awake_do_nothing_and_tags_wake_in_parts(
    awake: RefServer,
) -> None:
    prompt = _prompt(3)
    assert awake.wake().status_code == 200  # awake already: nothing happens
    assert not awake.is_sleeping()
    awake.text_and_cached(prompt)
    expected = awake.text_and_cached(prompt)

    assert awake.sleep(1).status_code == 200
    assert awake.sleep(1).status_code == 200
    assert awake.sleep(2).status_code == 200  # asleep already: stays at level 1
    assert awake.memory()["level"] == 1

    assert awake.wake("kv_cache").status_code == 200
    assert awake.is_sleeping()  # the weights still sleep
    report = awake.memory()
    assert report["sleeping_tags"] == ["weights"] and report["device_bytes"]["kv_cache"] > 0
    _assert_refused(awake)
    assert awake.wake("kv_cache").status_code == 200  # not asleep: nothing happens
    assert awake.is_sleeping()

    assert awake.wake("weights").status_code == 200
    assert not awake.is_sleeping()
    assert awake.text_and_cached(prompt) == expected


@pytest.mark.parametrize(
    ("path", "params", "param"),
    [
        ("/sleep", {"level": "3"}, "level"),
        ("/sleep", {"level": "one"}, "level"),
        ("/sleep", {"level": "1", "mode": "abort"}, "mode"),
        ("/wake_up", {"tags": "everything"}, "tags"),
    ],
)
def test_bad_sleep_and_wake_arguments_get_400_and_change_nothing(
    awake: RefServer, path: str, params: dict[str, str], param: str
) -> None:
    r = awake.http.post(path, params=params)
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["param"] == param and error["code"] == "invalid_value" and error["message"]
    assert not awake.is_sleeping()
    assert awake.complete("still awake", 2).status_code == 200


def test_sleep_waits_for_the_admitted_request_and_refuses_new_ones_meanwhile(
    awake: RefServer,
) -> None:
    n = 400
    request = {"model": MODEL, "prompt": "in flight", "max_tokens": n, "stream": True}
    with (
        httpx.Client(base_url=awake.url, timeout=120) as own,
        own.stream("POST", "/v1/completions", json=request) as stream,
        ThreadPoolExecutor(1) as pool,
    ):
        lines = (line for line in stream.iter_lines() if line.startswith("data: "))
        chunks = [next(lines)]  # admitted: it holds the model
        asleep = pool.submit(awake.sleep, 1)
        deadline = time.monotonic() + 30
        while not awake.memory()["sleep_pending"]:
            assert time.monotonic() < deadline, "the sleep never arrived"
            time.sleep(0.01)
        refused = awake.complete("newcomer", 1)  # not queued behind the stream: refused at once
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "model_sleeping"
        chunks += [next(lines) for _ in range(n // 2)]
        assert not asleep.done()  # half the stream still to come: the sleep waits
        chunks += list(lines)
        assert asleep.result(timeout=60).status_code == 200
    assert chunks[-1] == "data: [DONE]" and len(chunks) == n + 1  # n tokens, then [DONE]
    assert awake.is_sleeping()


def test_held_memory_is_resident_and_moves_out_and_back_with_sleep(tmp_path: Path) -> None:
    held = 64 * MiB

    def anon(s: RefServer) -> int:
        return s.smaps()["Pss_Anon"] * 1024

    with (
        refserver(tmp_path, model="plain") as plain,
        refserver(tmp_path, "--hold-device-memory", "64MiB", model="holding") as holding,
    ):
        for s in (plain, holding):
            s.text_and_cached("warm up", 8)
        assert "device=cpu held=64MiB" in holding.log.read_text()
        grown = anon(holding) - anon(plain)
        assert 56 * MiB <= grown <= 80 * MiB, grown / MiB
        base = anon(holding)
        report = holding.memory(verify=True)
        assert report["device_bytes"]["held"] == held and report["held_intact"] is True

        # Level 1 on CPU: parked in a separate host buffer, so still resident; then back.
        assert holding.sleep(1).status_code == 200
        report = holding.memory(verify=True)
        assert report["device_bytes"]["held"] == 0 and report["host_bytes"]["held"] == held
        assert report["held_intact"] is None  # nothing on the device to check
        assert abs(anon(holding) - base) <= 16 * MiB, (anon(holding) - base) / MiB
        assert holding.wake().status_code == 200
        assert holding.memory(verify=True)["held_intact"] is True
        assert abs(anon(holding) - base) <= 16 * MiB, (anon(holding) - base) / MiB

        # Level 2: freed, then allocated and refilled on wake.
        assert holding.sleep(2).status_code == 200
        assert anon(holding) <= base - 56 * MiB, (anon(holding) - base) / MiB
        assert holding.memory()["host_bytes"]["held"] == 0
        assert holding.wake().status_code == 200
        assert abs(anon(holding) - base) <= 16 * MiB, (anon(holding) - base) / MiB
        assert holding.memory(verify=True)["held_intact"] is True


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_device_cuda_without_cuda_exits_2_with_one_line(tmp_path: Path, device: str) -> None:
    cmd = [sys.executable, "-m", "examples.refserver", "--model", MODEL, "--size", "tiny"]
    cmd += ["--port", "1", "--state-dir", str(tmp_path), "--device", device]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line.startswith(f"refserver: --device {device}: no CUDA device is usable here")
    assert "torch.cuda.is_available() is false" in line and "--device cpu" in line
    assert not (tmp_path / "models").exists()  # it stopped before making weights


def test_device_and_hold_arguments_are_checked(tmp_path: Path) -> None:
    base = [sys.executable, "-m", "examples.refserver", "--model", MODEL, "--port", "1"]
    for extra, message in [
        (["--device", "tpu"], "invalid device 'tpu'"),
        (["--hold-device-memory", "12 parsecs"], "invalid size '12 parsecs'"),
        (["--hold-device-memory", "1.5"], "a number of bytes must be whole"),
    ]:
        done = subprocess.run(
            [*base, "--state-dir", str(tmp_path), *extra],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 2, done
        assert message in done.stderr


def test_concurrent_sleep_and_wake_leave_a_consistent_state(awake: RefServer) -> None:
    """Sleeps and wakes racing each other all succeed; after a last wake the server answers as
    before."""
    prompt = _prompt(4)
    awake.text_and_cached(prompt)
    expected = awake.text_and_cached(prompt)
    errors: list[BaseException] = []

    def call(action: str) -> None:
        try:
            r = awake.sleep(1) if action == "sleep" else awake.wake()
            assert r.status_code == 200, r.text
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=call, args=(a,)) for a in ["sleep", "wake", "sleep", "wake"] * 3
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    awake.wake()
    assert not awake.is_sleeping()
    assert awake.text_and_cached(prompt) == expected
