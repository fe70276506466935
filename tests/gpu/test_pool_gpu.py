"""The warm pool's engines on a real GPU: two reference servers
that cannot both be resident (each holds DORMANT_GPU_HOLD, default 8 GiB; a ballast
process that never moves takes the rest of the device), served alternately — first through
the ``cuda`` engine (the driver's checkpoint API, by PID), then through ``hooks`` (the
server's own sleep API) — with greedy outputs identical after every swap and NVML showing
the device memory freed. Also: NVML accounting of an instance in its own PID namespace,
and CRIU of a CUDA process without NVIDIA's binaries (where the kernel allows CRIU).

Skipped, with the reason, where there is no NVIDIA driver. Run on a GPU machine with
tests/gpu/device_check.sh, which also writes the numbers. Knobs (environment):
DORMANT_GPU_HOLD (what each server holds, e.g. 8GiB; less where the device or host RAM
is smaller: tests/gpu/plan.py), DORMANT_GPU_ROUNDS (swap rounds per engine; default 1),
DORMANT_GPU_RESULTS (a file that gets one JSON line per measured swap).
"""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import httpx
import pytest

from examples.refserver.device import parse_size
from snapshots import EngineUnavailable, find_criu, probe_criu, process_tree
from snapshots.criu import CriuEngine
from snapshots.cuda import CudaCheckpoint
from snapshots.cuda_criu import CudaCriu, ns_pids
from tests.conftest import ROOT, free_port
from tests.gpu.plan import DEFAULT_HOLD, pool_sizes, record
from tests.servers.refproc import RefServer, refserver
from warmpool import (
    CudaEngine,
    DeviceUnavailable,
    Endpoint,
    HooksEngine,
    NvidiaDevice,
    SuspendEngine,
    SuspendTarget,
)

pytestmark = [pytest.mark.gpu, pytest.mark.anyio]

GiB = 1 << 30
HOLD = (
    parse_size(os.environ.get("DORMANT_GPU_HOLD", ""))
    if os.environ.get("DORMANT_GPU_HOLD")
    else DEFAULT_HOLD
)
ROUNDS = int(os.environ.get("DORMANT_GPU_ROUNDS", "1"))
PROMPTS = ("The warm pool keeps", "Once upon a time, a GPU")
WORKER = Path(__file__).with_name("gpu_worker.py")


@pytest.fixture(scope="module")
def gpu() -> Iterator[NvidiaDevice]:
    try:
        device = NvidiaDevice()
    except DeviceUnavailable as exc:
        pytest.skip(f"no NVIDIA GPU here: {exc}")
    try:
        CudaCheckpoint()
    except EngineUnavailable as exc:
        device.close()
        pytest.skip(f"no CUDA checkpoint API here: {exc}")
    yield device
    device.close()


def _used(gpu: NvidiaDevice, pid: int) -> int:
    used = gpu.used_by([pid])
    assert used.bytes is not None, f"NVML cannot attribute device memory here: {used.reason}"
    return used.bytes


# ---- two servers that cannot both be resident -------------------------------------


@dataclass
class Pair:
    """Two reference servers on the GPU; which one is parked, and by which engine."""

    servers: dict[str, RefServer]
    expected: dict[str, list[str]]
    hold: int
    """Bytes each holds beside its model (--hold-device-memory): more than half of the
    device memory the two share (the ballast holds the rest)."""
    parked: dict[str, str] = field(default_factory=dict)

    def target(self, name: str) -> SuspendTarget:
        server = self.servers[name]
        return SuspendTarget(name, server.endpoint, server.pid)


def _outputs(server: RefServer) -> list[str]:
    return [server.text(p, max_tokens=16) for p in PROMPTS]


def _host_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no MemAvailable in /proc/meminfo")


@pytest.fixture(scope="module")
def pair(gpu: NvidiaDevice, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    tmp = tmp_path_factory.mktemp("pool-gpu")
    total = gpu.memory().total
    hold, ballast = pool_sizes(gpu.memory().free, _host_available(), HOLD)
    args = ("--device", "cuda", "--hold-device-memory", f"{hold >> 20}MiB")
    with contextlib.ExitStack() as stack:
        if ballast:
            worker = subprocess.Popen(
                [sys.executable, str(WORKER), str(ballast / GiB)],
                text=True,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            stack.callback(worker.wait, 30)
            stack.callback(worker.kill)
            assert worker.stdout is not None
            assert worker.stdout.readline().startswith("ready "), "the ballast did not start"
        a = stack.enter_context(refserver(tmp, *args, model="pool-a", start_timeout=300))
        free = gpu.memory().free
        assert free < hold, f"b would fit beside a ({free} bytes free, {hold} needed)"
        expected = {"a": _outputs(a)}
        pair = Pair({"a": a}, expected, hold)
        # b cannot start while a holds its memory: park a first (cuda engine).
        anyio.run(CudaEngine().suspend, pair.target("a"))
        pair.parked["a"] = "cuda"
        b = stack.enter_context(refserver(tmp, *args, model="pool-b", start_timeout=300))
        pair.servers["b"] = b
        expected["b"] = _outputs(b)
        record(
            what="setup",
            device=gpu.name,
            driver=gpu.driver,
            total_bytes=total,
            hold_bytes=hold,
            ballast_bytes=ballast,
            free_beside_one=free,
            a_bytes=_used(gpu, a.pid),
            b_bytes=_used(gpu, b.pid),
        )
        yield pair


async def _swap(
    gpu: NvidiaDevice,
    pair: Pair,
    out: str,
    out_engine: SuspendEngine,
    into: str,
    in_engine: SuspendEngine,
) -> None:
    """Park ``out``, bring ``into`` back, check NVML and the outputs, record the numbers."""
    leaving, coming = pair.servers[out], pair.servers[into]
    before = _used(gpu, leaving.pid)
    parked = await out_engine.suspend(pair.target(out))
    left = _used(gpu, leaving.pid)
    free = gpu.memory().free
    pair.parked[out] = out_engine.name
    record(
        what="swap-out",
        engine=out_engine.name,
        workload=out,
        seconds=round(parked.seconds, 4),
        bytes=before - left,
        gb_per_s=round((before - left) / parked.seconds / 1e9, 2) if parked.seconds else None,
        left_on_device=left,
        detail=parked.detail,
    )
    assert left < max(before // 10, GiB), f"{out} still holds {left} of {before} bytes"
    assert free >= pair.hold, "the device must have room for the other server now"
    resumed = await in_engine.resume(pair.target(into))
    asked = time.perf_counter()
    coming.text(PROMPTS[0], max_tokens=1)  # the first token after the wake
    ttft = resumed.seconds + time.perf_counter() - asked
    pair.parked.pop(into, None)
    back = _used(gpu, coming.pid)
    record(
        what="swap-in",
        engine=in_engine.name,
        workload=into,
        seconds=round(resumed.seconds, 4),
        ttft_seconds=round(ttft, 4),
        hold_bytes=pair.hold,
        bytes=back,
        gb_per_s=round(back / resumed.seconds / 1e9, 2) if resumed.seconds else None,
        detail=resumed.detail,
    )
    assert back >= pair.hold, f"{into} holds only {back} bytes after resuming"
    assert _outputs(coming) == pair.expected[into], f"{into} answers differently after a swap"


async def test_cuda_engine_alternates_two_servers_that_cannot_both_fit(
    gpu: NvidiaDevice, pair: Pair
) -> None:
    cuda = CudaEngine()
    assert pair.parked == {"a": "cuda"}
    for _ in range(ROUNDS):
        await _swap(gpu, pair, "b", cuda, "a", cuda)
        await _swap(gpu, pair, "a", cuda, "b", cuda)
    assert pair.parked == {"a": "cuda"}


async def test_hooks_engine_alternates_two_servers_that_cannot_both_fit(
    gpu: NvidiaDevice, pair: Pair
) -> None:
    engines: dict[str, SuspendEngine] = {"cuda": CudaEngine()}
    async with httpx.AsyncClient() as client:
        hooks = engines["hooks"] = HooksEngine(client, timeout=600)
        # Whichever server the cuda test left parked comes back through its own engine
        # while the other one goes to sleep; from then on both swap through hooks.
        assert len(pair.parked) == 1, f"one server must be parked, not {pair.parked}"
        ((parked, engine),) = pair.parked.items()
        resident = "b" if parked == "a" else "a"
        await _swap(gpu, pair, resident, hooks, parked, engines[engine])
        for _ in range(ROUNDS):
            await _swap(gpu, pair, parked, hooks, resident, hooks)
            await _swap(gpu, pair, resident, hooks, parked, hooks)


# ---- accounting and the cuda engine in a PID namespace -----------------------------


@pytest.fixture
def namespaced_worker() -> Iterator[tuple[subprocess.Popen[str], int, int]]:
    """gpu_worker.py holding 1 GiB as PID 1 of its own namespace: (wrapper, host pid,
    expected checksum)."""
    proc = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--kill-child", sys.executable, str(WORKER), "1.0"],
        text=True,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("ready "), line
    (pid,) = (
        int(c) for c in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    )
    yield proc, pid, int(line.split()[1])
    proc.kill()
    proc.wait(30)


async def test_nvml_and_the_cuda_engine_on_an_instance_in_its_own_namespace(
    gpu: NvidiaDevice, namespaced_worker: tuple[subprocess.Popen[str], int, int]
) -> None:
    proc, pid, expected = namespaced_worker
    assert ns_pids(pid) == (pid, 1)
    footprint = gpu.used_by([pid])
    record(what="nvml-namespace", bytes=footprint.bytes, reason=footprint.reason)
    assert footprint.bytes is not None and footprint.bytes >= GiB, footprint
    assert "(pid 1 inside)" in footprint.reason
    engine = CudaEngine()
    target = SuspendTarget("worker", pid=pid)
    await engine.suspend(target)
    assert _used(gpu, pid) < 256 << 20
    await engine.resume(target)
    assert _used(gpu, pid) >= GiB
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("check\n")
    proc.stdin.flush()
    assert proc.stdout.readline() == f"sum {expected}\n"


# ---- GPU hibernation: CRIU of a CUDA process without NVIDIA's binaries -----------


def _criu_or_skip() -> CriuEngine:
    release = platform.release()
    if release.startswith("4.4."):
        pytest.skip(f"kernel {release} is gVisor's: CRIU cannot run here")
    path = find_criu()
    if path is None:
        pytest.skip("no criu here (carry one: tests/gpu/prepare_carry.sh)")
    info = probe_criu(path)
    if not info.usable:
        pytest.skip(f"criu unusable here: {info.why_not()}")
    return CriuEngine(info)


def test_criu_hibernates_a_cuda_server_without_nvidia_binaries(
    gpu: NvidiaDevice, tmp_path: Path
) -> None:
    criu = _criu_or_skip()
    port = free_port()
    cmd = [sys.executable, "-m", "examples.refserver", "--size", "tiny", "--model", "hib"]
    cmd += ["--port", str(port), "--state-dir", str(tmp_path / "state"), "--device", "cuda"]
    cmd += ["--hold-device-memory", "2GiB"]
    wrapper = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--kill-child", "setsid", *cmd],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = Endpoint("127.0.0.1", port).url
    restored = 0
    try:
        deadline = time.monotonic() + 300
        while True:
            assert wrapper.poll() is None, "the CUDA reference server exited"
            assert time.monotonic() < deadline, "the CUDA reference server did not start"
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            time.sleep(0.2)
        (root,) = (
            int(c)
            for c in Path(f"/proc/{wrapper.pid}/task/{wrapper.pid}/children").read_text().split()
        )
        body = {"model": "hib", "prompt": PROMPTS[0], "max_tokens": 16}
        before = httpx.post(f"{url}/v1/completions", json=body, timeout=120).json()
        held = _used(gpu, root)
        engine = CudaCriu(criu)
        started = time.monotonic()
        dump_s = engine.dump(root, tmp_path / "images", tmp_path / "dump", timeout=600)
        size = sum(f.stat().st_size for f in (tmp_path / "images").iterdir())
        restore_started = time.monotonic()
        restored = engine.restore(tmp_path / "images", tmp_path / "restore", None, None, 600)
        restore_s = time.monotonic() - restore_started
        after = httpx.post(f"{url}/v1/completions", json=body, timeout=120).json()
        record(
            what="criu-cuda",
            device_bytes=held,
            image_bytes=size,
            dump_seconds=round(dump_s, 3),
            restore_seconds=round(restore_s, 3),
            total_seconds=round(time.monotonic() - started, 3),
        )
        assert after["choices"][0]["text"] == before["choices"][0]["text"]
        assert _used(gpu, restored) >= held * 0.9
        assert len(process_tree(restored)) >= 1
    finally:
        if restored:
            with contextlib.suppress(ProcessLookupError):
                os.kill(restored, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(restored, 0)
        with contextlib.suppress(ProcessLookupError):
            os.kill(wrapper.pid, signal.SIGKILL)
        wrapper.wait(30)
