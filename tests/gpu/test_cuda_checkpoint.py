"""The CUDA checkpoint API on a real GPU: a process's device memory leaves the GPU
(NVML shows it freed) and comes back intact. Needs an NVIDIA GPU with driver >= 570;
skipped where there is none (these CI machines have no GPU)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapshots import EngineUnavailable
from snapshots.cuda import CudaCheckpoint
from tests.gpu.plan import record

pytestmark = pytest.mark.gpu
WORKER = Path(__file__).with_name("gpu_worker.py")


@pytest.fixture(scope="module")
def cuda() -> CudaCheckpoint:
    try:
        return CudaCheckpoint()
    except EngineUnavailable as exc:
        pytest.skip(f"no usable NVIDIA GPU here: {exc}")


def _used_mib(pid: int) -> int:
    import pynvml

    pynvml.nvmlInit()
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        procs = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
        return sum((p.usedGpuMemory or 0) for p in procs if p.pid == pid) >> 20
    finally:
        pynvml.nvmlShutdown()


@pytest.fixture(params=[1.0, 16.0], ids=["1GiB", "16GiB"])
def worker(request: pytest.FixtureRequest) -> Iterator[tuple[subprocess.Popen[str], int]]:
    proc = subprocess.Popen(
        [sys.executable, str(WORKER), str(request.param)],
        text=True,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("ready "), line
    yield proc, int(line.split()[1])
    proc.kill()
    proc.wait(30)


def test_suspend_frees_device_memory_and_resume_restores_it(
    cuda: CudaCheckpoint, worker: tuple[subprocess.Popen[str], int]
) -> None:
    proc, expected = worker
    assert proc.stdin is not None and proc.stdout is not None
    before = _used_mib(proc.pid)
    assert cuda.state(proc.pid) == "running"
    suspended = cuda.suspend(proc.pid)
    assert cuda.state(proc.pid) == "checkpointed"
    time.sleep(0.2)
    during = _used_mib(proc.pid)
    resumed = cuda.resume(proc.pid)
    assert cuda.state(proc.pid) == "running"
    after = _used_mib(proc.pid)
    proc.stdin.write("check\n")
    proc.stdin.flush()
    answer = proc.stdout.readline()
    print(
        f"\nGPU MiB used by the process: before {before}, suspended {during}, after {after}; "
        f"suspend {suspended.total:.3f}s (lock {suspended.first:.3f} + checkpoint "
        f"{suspended.second:.3f}), resume {resumed.total:.3f}s (restore {resumed.first:.3f} "
        f"+ unlock {resumed.second:.3f})"
    )
    record(
        what="cuda-toggle",
        bytes=before << 20,
        suspend_seconds=round(suspended.total, 4),
        resume_seconds=round(resumed.total, 4),
        suspended_bytes=during << 20,
        intact=answer == f"sum {expected}\n",
    )
    assert during < before / 10, "suspended process must give the device memory back"
    assert after >= before * 0.9
    assert answer == f"sum {expected}\n", "device memory came back intact"
