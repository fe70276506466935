"""The CUDA checkpoint layer's own logic, on CPU: no GPU here, so every driver below is a
FAKE (tests/gpu/fake_driver.py) — ``RecordingDriver`` for the tree sequencing,
``FakeLibcuda`` under the real ``CudaCheckpoint`` for its error handling — and NVML, /proc
and the disk are scripted ``Probes`` where a test needs them to say something.
The real driver is exercised by tests/gpu (the device check)."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapshots import EngineDumpFailed, EngineRestoreFailed
from snapshots.cuda import NOT_CUDA_ERRORS, CudaCheckpoint, resume_tree, suspend_tree
from snapshots.cuda_view import GpuView, Probes, nvidia_mappings, park, room_problem
from tests.gpu.fake_driver import NOT_PERMITTED, TIMEOUT, FakeLibcuda, RecordingDriver

GiB = 1 << 30


def _probes(
    used: dict[int, int | None] | None = None,
    maps: dict[int, list[str]] | None = None,
    ram: int = 64 * GiB,
    disk: int = 500 * GiB,
    rss: int = GiB,
) -> Probes:
    """Scripted effects: NVML's device bytes per pid, /dev/nvidia mappings, free RAM and
    disk, the tree's RSS."""
    return Probes(
        view=lambda pids: GpuView(
            gpus={p: {0} for p in pids}, used={p: (used or {}).get(p) for p in pids}
        ),
        mappings=lambda pid: (maps or {}).get(pid, []),
        ram_free=lambda: ram,
        disk_free=lambda path: disk,
        rss=lambda pids: rss,
    )


# ---- item 5: a resume succeeds only when every process ends 'running' ---------------


@pytest.mark.parametrize("left_in", ["failed", "unknown(4)", "unknown(5)"])
def test_resume_fails_unless_every_process_ends_running(left_in: str) -> None:
    # FAKE driver: the restore of pid 2 "succeeds" but leaves it failed or transitional.
    driver = RecordingDriver(lambda pid: pid in (1, 2), after={("restore", 2): left_in})
    suspend_tree(driver, [1, 2], lock_timeout=5)
    with pytest.raises(
        EngineRestoreFailed, match=rf"pid 2 is '{re.escape(left_in)}' after the resume"
    ):
        resume_tree(driver, [1, 2])
    assert driver.state(1) == "running"  # the other one was brought back all the same


def test_a_resume_of_a_process_already_failed_is_not_a_success() -> None:
    driver = RecordingDriver(lambda pid: pid == 3)
    driver.states[3] = "failed"
    with pytest.raises(EngineRestoreFailed, match="pid 3 is 'failed'"):
        resume_tree(driver, [3])


def test_a_clean_resume_still_passes() -> None:
    driver = RecordingDriver(lambda pid: pid in (1, 2))
    suspend_tree(driver, [1, 2], lock_timeout=5)
    assert resume_tree(driver, [1, 2]).pids == (1, 2)


# ---- item 10: only "not a CUDA process" answers mean a CPU process --------------------


def test_only_the_not_cuda_answers_make_a_cpu_process() -> None:
    lib = FakeLibcuda(cuda={10}, codes={("restore_thread", 11): NOT_PERMITTED})
    cuda = CudaCheckpoint(lib=lib)
    assert cuda.is_cuda(10) is True
    for code in NOT_CUDA_ERRORS:
        lib.not_cuda_code = code
        assert cuda.is_cuda(12) is False
    with pytest.raises(EngineDumpFailed, match=r"pid 11 failed: CUDA error 800"):
        cuda.is_cuda(11)  # a permission error must not pass for a CPU process


def test_a_tree_still_mapping_dev_nvidia_after_a_suspend_is_resumed_and_refused() -> None:
    # pid 2 is a CUDA process the (FAKE) driver did not report: it still maps the device.
    driver = RecordingDriver(lambda pid: pid == 1)
    probes = _probes(maps={2: ["/dev/nvidia0", "/dev/nvidiactl"]})
    with pytest.raises(EngineDumpFailed, match=r"pid 2 still maps /dev/nvidia0.*left running"):
        park(driver, [1, 2], [1], 5, probes)
    assert driver.calls == [("lock", 1), ("checkpoint", 1), ("restore", 1), ("unlock", 1)]
    assert driver.state(1) == "running"


@pytest.fixture
def mapper(tmp_path: Path) -> Iterator[tuple[int, str]]:
    """A real process that maps an ordinary file (there is no /dev/nvidia* here)."""
    path = tmp_path / "weights.bin"
    path.write_bytes(b"x" * 4096)
    code = (
        "import mmap, sys\n"
        f"f = open({str(path)!r}, 'rb'); m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)\n"
        "print('mapped', flush=True); sys.stdin.read()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline() == "mapped\n"
    yield proc.pid, str(path)
    proc.kill()
    proc.wait(10)


def test_nvidia_mappings_reads_the_maps_of_a_real_process(mapper: tuple[int, str]) -> None:
    pid, path = mapper
    assert path in Path(f"/proc/{pid}/maps").read_text()
    assert nvidia_mappings(pid) == []  # maps files, none of them /dev/nvidia*
    assert nvidia_mappings(2**22 + 12345) == []  # gone: nothing


# ---- item 7: host RAM for a suspend, RAM and disk for a hibernation --------------------


def test_room_problem_checks_ram_and_for_a_hibernation_disk() -> None:
    assert room_problem(8 * GiB, 16 * GiB) == ""
    assert "needs as much host RAM" in room_problem(20 * GiB, 16 * GiB)
    assert room_problem(8 * GiB, 16 * GiB, 9 * GiB, 10 * GiB) == ""
    disk_only = room_problem(8 * GiB, 16 * GiB, 9 * GiB, 5 * GiB)
    assert "on disk" in disk_only and "host RAM" not in disk_only
    both = room_problem(20 * GiB, 16 * GiB, 21 * GiB, 5 * GiB)
    assert "host RAM" in both and "on disk" in both


def test_park_refuses_before_touching_the_driver_when_the_host_lacks_room(
    tmp_path: Path,
) -> None:
    driver = RecordingDriver(lambda pid: pid == 1)
    short_ram = _probes(used={1: 30 * GiB}, ram=16 * GiB)
    with pytest.raises(EngineDumpFailed, match=r"host RAM.*nothing was changed"):
        park(driver, [1], [1], 5, short_ram)  # a suspend: RAM only
    short_disk = _probes(used={1: 8 * GiB}, disk=4 * GiB)
    park(driver, [1], [1], 5, short_disk)  # a suspend does not need the disk
    resume_tree(driver, [1])
    driver.calls.clear()
    with pytest.raises(EngineDumpFailed, match=r"about 9\.0 GiB on disk"):
        park(driver, [1], [1], 5, short_disk, images=tmp_path / "images")  # a hibernation
    assert driver.calls == []


def test_park_goes_ahead_when_nvml_has_no_figure() -> None:
    driver = RecordingDriver(lambda pid: pid == 1)
    park(driver, [1], [1], 5, _probes(used={1: None}, ram=0))
    assert driver.state(1) == "checkpointed"


# ---- item 12: one driver operation at a time; the lock timeout's real code ----------


def test_tree_operations_from_several_threads_never_overlap() -> None:
    driver = RecordingDriver(lambda pid: True, delay=0.02)  # FAKE, slow calls
    errors: list[BaseException] = []

    def swap(pids: list[int]) -> None:
        try:
            suspend_tree(driver, pids, lock_timeout=5)
            resume_tree(driver, pids)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=swap, args=([p, p + 100],)) for p in (1, 2, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert len(driver.calls) == 3 * 8
    assert driver.max_active == 1


@pytest.mark.parametrize("code", [TIMEOUT, 600, 2])
def test_a_lock_that_waited_its_timeout_says_so_whatever_the_code(code: int) -> None:
    lib = FakeLibcuda(cuda={7}, busy={7}, timeout_code=code)
    cuda = CudaCheckpoint(lib=lib)
    started = time.monotonic()
    with pytest.raises(EngineDumpFailed, match=rf"CUDA error {code} .*within the lock timeout"):
        cuda.lock(7, timeout=0.2)
    assert time.monotonic() - started >= 0.2
    assert cuda.last_error == code  # recorded as the driver answered


def test_a_quick_lock_failure_is_not_called_a_timeout() -> None:
    cuda = CudaCheckpoint(lib=FakeLibcuda(cuda={7}, codes={("lock", 7): TIMEOUT}))
    with pytest.raises(EngineDumpFailed) as failed:
        cuda.lock(7, timeout=5)
    assert "lock timeout" not in str(failed.value)


def test_the_real_checkpoint_calls_run_on_the_fake_libcuda() -> None:
    cuda = CudaCheckpoint(lib=FakeLibcuda(cuda={5}))
    cuda.suspend(5)
    assert cuda.state(5) == "checkpointed"
    cuda.resume(5)
    assert cuda.state(5) == "running" and cuda.last_error == 0
