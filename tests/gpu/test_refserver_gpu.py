"""The reference server on a CUDA device: vLLM's sleep API really frees device memory (NVML
shows it, read from this process, not the server's) and wakes to identical greedy outputs, with
the KV cache kept across level 1 and dropped by level 2; two servers each holding more than half
of the device take turns on it. Skipped where there is no NVIDIA driver or no CUDA PyTorch (these
CI machines); the CPU versions of these checks are tests/examples/test_refserver_sleep.py."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import ROOT
from tests.examples.refserver_process import MODEL, refserver
from tests.gpu.plan import record

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(900)]

GiB = 1 << 30


@pytest.fixture(scope="module")
def nvml() -> Iterator[Any]:
    """An NVML handle on the GPU that the server's cuda:0 is, or skip."""
    if not torch.cuda.is_available():
        pytest.skip(f"no CUDA here (torch {torch.__version__}: torch.cuda.is_available() false)")
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as exc:
        pytest.skip(f"no NVIDIA driver/NVML here: {exc}")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip()
    index = int(visible) if visible.isdigit() else 0
    try:
        yield pynvml.nvmlDeviceGetHandleByIndex(index)
    finally:
        pynvml.nvmlShutdown()


def _used(handle: Any) -> int:
    import pynvml

    return int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)


def _total(handle: Any) -> int:
    import pynvml

    return int(pynvml.nvmlDeviceGetMemoryInfo(handle).total)


def _settled_used(handle: Any) -> int:
    """Device memory in use once it stops changing (frees can show in NVML a moment late)."""
    last = _used(handle)
    for _ in range(20):
        time.sleep(0.1)
        now = _used(handle)
        if now == last:
            return now
        last = now
    return last


def _on_device(report: dict[str, Any]) -> int:
    return int(sum(report["device_bytes"].values()))


def _prompt(seed: int) -> str:
    return chr(33 + seed) + "".join(chr(32 + (i * 7 + seed * 13) % 95) for i in range(299))


def _timed(what: str, call: Any, *args: Any) -> None:
    began = time.monotonic()
    r = call(*args)
    assert r.status_code == 200, (what, r.text)
    record(what="refserver-sleep", step=what, seconds=round(time.monotonic() - began, 4))


def test_sleep_frees_the_device_and_wake_restores_identical_outputs(
    nvml: Any, tmp_path: Path
) -> None:
    held = 4 * GiB
    args = ["--device", "cuda", "--hold-device-memory", "4GiB"]
    with refserver(tmp_path, *args, start_timeout=600, http_timeout=600) as s:
        assert "device=cuda:0 held=4GiB" in s.log.read_text()
        prompt = _prompt(1)
        uncached = s.text_and_cached(prompt)
        cached = s.text_and_cached(prompt)
        assert uncached[1] == 0 and cached[1] == len(prompt) - 1
        awake = s.memory(verify=True)
        assert awake["device"] == "cuda:0" and awake["held_intact"] is True
        assert awake["device_bytes"]["held"] == held
        used_awake = _settled_used(nvml)

        _timed(f"sleep level 1 ({_on_device(awake) / GiB:.2f} GiB)", s.sleep, 1)
        assert s.is_sleeping()
        parked = s.memory()
        assert parked["device_bytes"] == {"weights": 0, "held": 0, "kv_cache": 0}
        assert parked["host_pinned"] is True
        assert sum(parked["host_bytes"].values()) == _on_device(awake)
        freed = used_awake - _settled_used(nvml)
        print(f"NVML: {freed / GiB:.2f} GiB freed of {_on_device(awake) / GiB:.2f} GiB parked")
        assert freed >= 0.95 * _on_device(awake)
        r = s.complete("refused", 2)
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_sleeping"
        assert s.http.get("/health").status_code == 200

        _timed("wake from level 1", s.wake)
        assert not s.is_sleeping()
        assert abs(_settled_used(nvml) - used_awake) <= GiB // 2
        assert s.memory(verify=True)["held_intact"] is True
        assert s.text_and_cached(prompt) == cached  # same weights, same KV cache
        _, hit = s.text_and_cached(prompt + " and more")
        assert hit >= len(prompt)

        before_2 = _settled_used(nvml)
        _timed("sleep level 2", s.sleep, 2)
        assert before_2 - _settled_used(nvml) >= 0.95 * held
        assert sum(s.memory()["host_bytes"].values()) == 0
        _timed("wake from level 2", s.wake)
        assert s.memory(verify=True)["held_intact"] is True
        assert s.text_and_cached(prompt) == uncached  # reloaded from the file, empty cache


def test_two_servers_each_holding_over_half_the_device_take_turns(
    nvml: Any, tmp_path: Path
) -> None:
    """Level 2 here, so no host RAM is needed for the two large holdings (level 1's parking
    is the test above); a wake with no room on the device fails clearly and changes nothing."""
    share = int(0.52 * (_total(nvml) - _settled_used(nvml)))
    hold = ["--device", "cuda", "--hold-device-memory", str(share)]
    prompt = _prompt(2)
    with refserver(tmp_path, *hold, model="a", start_timeout=600, http_timeout=600) as a:
        a_text = a.text_and_cached(prompt)
        _timed(f"a: sleep level 2 ({share / GiB:.1f} GiB held)", a.sleep, 2)
        with refserver(
            tmp_path, *hold, "--seed", "1", model="b", start_timeout=600, http_timeout=600
        ) as b:
            b_text = b.text_and_cached(prompt)
            assert b_text[0] != a_text[0]  # other weights
            r = a.wake()  # b holds the device: a cannot come back yet, and says so
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "device_memory_exhausted"
            assert a.is_sleeping()
            _timed("b: sleep level 2", b.sleep, 2)
            _timed("a: wake from level 2", a.wake)
            assert a.text_and_cached(prompt) == a_text
            assert a.memory(verify=True)["held_intact"] is True
            _timed("a: sleep level 2 again", a.sleep, 2)
            _timed("b: wake from level 2", b.wake)
            assert b.text_and_cached(prompt) == b_text
            assert b.memory(verify=True)["held_intact"] is True


def test_a_cuda_index_this_machine_lacks_exits_2(nvml: Any, tmp_path: Path) -> None:
    device = f"cuda:{torch.cuda.device_count()}"
    cmd = [sys.executable, "-m", "examples.refserver", "--model", MODEL, "--port", "1"]
    cmd += ["--state-dir", str(tmp_path), "--device", device]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    [line] = done.stderr.splitlines()
    assert f"--device {device}: this machine has" in line
