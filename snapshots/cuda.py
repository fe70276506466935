"""The CUDA driver's checkpoint API: move a process's GPU memory to host RAM and back.

``cuCheckpointProcessLock / Checkpoint / Restore / Unlock`` (driver >= 570) act on
another process by PID, like ``cuda-checkpoint --toggle``: after ``suspend`` the
process holds no device memory (the GPU is free for another model) and CRIU can
dump it like a CPU process; ``resume`` puts its memory back on the device.
This is the ``cuda`` engine's primitive (the `suspended` tier).

Beyond one process, ``suspend_tree`` / ``resume_tree`` act on every CUDA process of a
tree in the right order (lock all, then checkpoint all; restore all, then unlock all) and
leave the tree running when something fails half-way. They take any ``CudaDriver``:
``CudaCheckpoint`` on a GPU, a recording stand-in in the CPU tests of the sequencing.
"""

from __future__ import annotations

import ctypes
import logging
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from snapshots.errors import EngineDumpFailed, EngineRestoreFailed, EngineUnavailable

__all__ = [
    "MIN_DRIVER",
    "MIN_DRIVER_OTHER_GPU",
    "CheckpointSupport",
    "CudaCheckpoint",
    "CudaDriver",
    "ToggleTiming",
    "TreeTiming",
    "checkpoint_support",
    "gpu_refusal",
    "resume_tree",
    "suspend_tree",
]

log = logging.getLogger("dormant.snapshots")

MIN_DRIVER = 570
"""First driver with cuCheckpointProcess* (lock, checkpoint, restore, unlock, state)."""
MIN_DRIVER_OTHER_GPU = 580
"""First driver that restores a process onto another GPU than the one it left."""

_STATES = {0: "running", 1: "locked", 2: "checkpointed", 3: "failed"}
_NOT_SUPPORTED = 801  # CUDA_ERROR_NOT_SUPPORTED
_TIMEOUT = 909  # CUDA_ERROR_TIMEOUT
_HINTS = {
    _NOT_SUPPORTED: (
        "the driver cannot checkpoint this process: the CUDA checkpoint API does not support "
        "managed memory (UVM), CUDA IPC or MIG; use `suspend: hooks` or `none` for it"
    ),
    _TIMEOUT: "its CUDA work did not finish within the lock timeout; try again when idle",
}


class _LockArgs(ctypes.Structure):
    _fields_ = [
        ("timeoutMs", ctypes.c_uint),
        ("reserved0", ctypes.c_uint),
        ("reserved1", ctypes.c_uint64 * 7),
    ]


@dataclass(frozen=True)
class ToggleTiming:
    """Seconds spent in each driver call of one suspend or resume."""

    first: float
    second: float

    @property
    def total(self) -> float:
        return self.first + self.second


class CudaCheckpoint:
    """Bindings to libcuda's checkpoint calls. Raises EngineUnavailable when there is
    no driver, or one too old (< 570) to have them."""

    def __init__(self, library: str = "libcuda.so.1") -> None:
        try:
            self._cuda = ctypes.CDLL(library)
        except OSError as exc:
            raise EngineUnavailable(f"no NVIDIA driver ({library}: {exc})") from exc
        try:
            for name in (
                "cuCheckpointProcessLock",
                "cuCheckpointProcessCheckpoint",
                "cuCheckpointProcessRestore",
                "cuCheckpointProcessUnlock",
                "cuCheckpointProcessGetState",
            ):
                getattr(self._cuda, name)
        except AttributeError as exc:
            raise EngineUnavailable(
                "the NVIDIA driver has no CUDA checkpoint API (needs driver >= 570)"
            ) from exc
        self._check(self._cuda.cuInit(0), "cuInit", EngineUnavailable)
        version = ctypes.c_int()
        self._check(
            self._cuda.cuDriverGetVersion(ctypes.byref(version)),
            "cuDriverGetVersion",
            EngineUnavailable,
        )
        self.driver_version = version.value

    def _error(self, code: int) -> str:
        text = ctypes.c_char_p()
        self._cuda.cuGetErrorString(code, ctypes.byref(text))
        return (text.value or b"unknown error").decode()

    def _check(self, code: int, call: str, error: type[Exception], pid: int = 0) -> None:
        if code != 0:
            hint = f"; {_HINTS[code]}" if code in _HINTS else ""
            on = f" for pid {pid}" if pid else ""
            raise error(f"{call}{on} failed: CUDA error {code} ({self._error(code)}){hint}")

    def restore_thread_id(self, pid: int) -> int | None:
        """The CUDA restore thread of ``pid``; None when ``pid`` is not a CUDA process
        (the call succeeds only for processes that initialised CUDA)."""
        fn = getattr(self._cuda, "cuCheckpointProcessGetRestoreThreadId", None)
        if fn is None:
            raise EngineUnavailable(
                "the NVIDIA driver has no cuCheckpointProcessGetRestoreThreadId (needs >= 570)"
            )
        tid = ctypes.c_int()
        code = fn(pid, ctypes.byref(tid))
        if code != 0:
            log.debug("pid %d is not a CUDA process: %s", pid, self._error(code))
            return None
        return tid.value

    def is_cuda(self, pid: int) -> bool:
        return self.restore_thread_id(pid) is not None

    def lock(self, pid: int, timeout: float) -> None:
        """Block the process's CUDA calls, waiting up to ``timeout`` s for running work."""
        args = _LockArgs(timeoutMs=int(timeout * 1000))
        code = self._cuda.cuCheckpointProcessLock(pid, ctypes.byref(args))
        self._check(code, "cuCheckpointProcessLock", EngineDumpFailed, pid)

    def checkpoint(self, pid: int) -> None:
        """Move a locked process's device memory to host RAM; its GPU memory is freed."""
        code = self._cuda.cuCheckpointProcessCheckpoint(pid, None)
        self._check(code, "cuCheckpointProcessCheckpoint", EngineDumpFailed, pid)

    def restore(self, pid: int) -> None:
        """Bring a checkpointed process's memory back onto the device (still locked)."""
        code = self._cuda.cuCheckpointProcessRestore(pid, None)
        self._check(code, "cuCheckpointProcessRestore", EngineRestoreFailed, pid)

    def unlock(self, pid: int) -> None:
        """Let a locked process make CUDA calls again."""
        code = self._cuda.cuCheckpointProcessUnlock(pid, None)
        self._check(code, "cuCheckpointProcessUnlock", EngineRestoreFailed, pid)

    def state(self, pid: int) -> str:
        """'running', 'locked', 'checkpointed' or 'failed'."""
        state = ctypes.c_int()
        self._check(
            self._cuda.cuCheckpointProcessGetState(pid, ctypes.byref(state)),
            "cuCheckpointProcessGetState",
            EngineDumpFailed,
            pid,
        )
        return _STATES.get(state.value, f"unknown({state.value})")

    def suspend(self, pid: int, lock_timeout: float = 10.0) -> ToggleTiming:
        """Lock the process's CUDA work (waiting up to ``lock_timeout`` for running work),
        then move its device memory to host RAM. On failure it is left running."""
        started = time.perf_counter()
        self.lock(pid, lock_timeout)
        locked = time.perf_counter()
        try:
            self.checkpoint(pid)
        except EngineDumpFailed:
            self._cuda.cuCheckpointProcessUnlock(pid, None)  # leave it running, as it was
            raise
        return ToggleTiming(locked - started, time.perf_counter() - locked)

    def resume(self, pid: int) -> ToggleTiming:
        """Bring the device memory back and let the process run CUDA work again."""
        started = time.perf_counter()
        self.restore(pid)
        restored = time.perf_counter()
        self.unlock(pid)
        return ToggleTiming(restored - started, time.perf_counter() - restored)


class CudaDriver(Protocol):
    """The per-process checkpoint calls ``suspend_tree`` and ``resume_tree`` sequence
    (``CudaCheckpoint`` implements them). Failures raise EngineDumpFailed (lock,
    checkpoint) or EngineRestoreFailed (restore, unlock)."""

    def is_cuda(self, pid: int) -> bool: ...

    def state(self, pid: int) -> str: ...

    def lock(self, pid: int, timeout: float) -> None: ...

    def checkpoint(self, pid: int) -> None: ...

    def restore(self, pid: int) -> None: ...

    def unlock(self, pid: int) -> None: ...


@dataclass(frozen=True)
class TreeTiming:
    """One suspend (lock, then checkpoint) or resume (restore, then unlock) of a tree."""

    pids: tuple[int, ...]
    """The CUDA processes acted on (empty: the tree holds no CUDA process)."""
    first: float
    second: float

    @property
    def total(self) -> float:
        return self.first + self.second


def suspend_tree(driver: CudaDriver, pids: Iterable[int], lock_timeout: float) -> TreeTiming:
    """Park the device memory of every CUDA process among ``pids`` in host RAM.

    Locks all of them first (so none waits on a peer's GPU work), then checkpoints each.
    Processes already checkpointed are left so. On a failure everything done is undone
    (restored, unlocked) and EngineDumpFailed says so: the tree keeps running."""
    cuda = [pid for pid in pids if driver.is_cuda(pid)]
    states = {pid: driver.state(pid) for pid in cuda}
    broken = [pid for pid, st in states.items() if st not in ("running", "locked", "checkpointed")]
    if broken:
        raise EngineDumpFailed(
            f"CUDA processes {broken} are in state {states[broken[0]]!r}: the driver cannot "
            "checkpoint them; restart the workload"
        )
    locked: list[int] = []
    parked: list[int] = []
    started = time.perf_counter()
    try:
        for pid in cuda:
            if states[pid] == "running":
                driver.lock(pid, lock_timeout)
                locked.append(pid)
        middle = time.perf_counter()
        for pid in cuda:
            if states[pid] != "checkpointed":
                driver.checkpoint(pid)
                parked.append(pid)
    except EngineDumpFailed as exc:
        problems = _undo(driver, parked, locked)
        after = (
            "; the tree was left running"
            if not problems
            else f"; undoing it failed too, the workload must be restarted: {'; '.join(problems)}"
        )
        raise EngineDumpFailed(f"{exc}{after}") from exc
    return TreeTiming(tuple(cuda), middle - started, time.perf_counter() - middle)


def _undo(driver: CudaDriver, parked: Sequence[int], locked: Sequence[int]) -> list[str]:
    problems = []
    for pid in reversed(parked):
        try:
            driver.restore(pid)
        except EngineRestoreFailed as exc:
            problems.append(str(exc))
    for pid in reversed(locked):
        try:
            driver.unlock(pid)
        except EngineRestoreFailed as exc:
            problems.append(str(exc))
    return problems


def resume_tree(driver: CudaDriver, pids: Iterable[int]) -> TreeTiming:
    """Bring back the device memory of every CUDA process among ``pids``: restore each
    checkpointed one, then unlock each locked one (running ones are left alone, so this
    is safe to repeat). Raises EngineRestoreFailed naming every process that failed; the
    others are unlocked all the same."""
    cuda = [pid for pid in pids if driver.is_cuda(pid)]
    problems: list[str] = []
    failed: set[int] = set()
    started = time.perf_counter()
    for pid in cuda:
        if driver.state(pid) == "checkpointed":
            try:
                driver.restore(pid)
            except EngineRestoreFailed as exc:
                problems.append(str(exc))
                failed.add(pid)
    middle = time.perf_counter()
    for pid in cuda:
        if pid not in failed and driver.state(pid) == "locked":
            try:
                driver.unlock(pid)
            except EngineRestoreFailed as exc:
                problems.append(str(exc))
    if problems:
        raise EngineRestoreFailed("; ".join(problems))
    return TreeTiming(tuple(cuda), middle - started, time.perf_counter() - middle)


_GPU_NODE = re.compile(r"^/dev/nvidia(\d+)$")


def gpu_refusal(device_files: Mapping[int, Sequence[str]]) -> str:
    """Pure: why the CUDA checkpoint API must not be used on these processes, from the
    device files each has open (``pid -> [/dev/nvidia0, /dev/nvidiactl, ...]``); empty
    when nothing is known to be wrong. Refused: processes on several GPUs and MIG
    instances. (Managed memory (UVM) cannot be seen from outside: the driver refuses
    it with CUDA_ERROR_NOT_SUPPORTED, which ``CudaCheckpoint`` explains.)"""
    problems = []
    for pid, files in sorted(device_files.items()):
        gpus = sorted({int(m.group(1)) for f in files if (m := _GPU_NODE.match(f))})
        if len(gpus) > 1:
            problems.append(
                f"pid {pid} uses GPUs {', '.join(map(str, gpus))}: multi-GPU processes cannot "
                "be checkpointed through the CUDA checkpoint API here"
            )
        mig = [
            f
            for f in files
            if f.startswith("/dev/nvidia-caps/")
            or (f.startswith("/proc/driver/nvidia/capabilities/") and "/mig/" in f)
        ]
        if mig:
            problems.append(
                f"pid {pid} uses a MIG instance ({mig[0]}): the CUDA checkpoint API does not "
                "support MIG"
            )
    if not problems:
        return ""
    return "; ".join(problems) + "; use `suspend: hooks` or `none` for this workload"


@dataclass(frozen=True)
class CheckpointSupport:
    """What a driver version allows, and why not."""

    api: bool
    api_why: str
    other_gpu: bool
    other_gpu_why: str


def checkpoint_support(driver_version: str) -> CheckpointSupport:
    """Pure: the CUDA checkpoint API needs driver >= 570; restoring onto another GPU
    than the one a process left needs >= 580. ``driver_version`` like '580.159.03'."""
    try:
        major = int(driver_version.split(".")[0])
    except ValueError:
        why = f"cannot read the driver version {driver_version!r}"
        return CheckpointSupport(False, why, False, why)
    if major >= MIN_DRIVER:
        api = (True, f"driver {driver_version} >= {MIN_DRIVER}: cuCheckpointProcess* available")
    else:
        api = (
            False,
            f"driver {driver_version} < {MIN_DRIVER}: no CUDA checkpoint API; upgrade the "
            f"NVIDIA driver to >= {MIN_DRIVER} for the cuda engine and GPU hibernation",
        )
    if major >= MIN_DRIVER_OTHER_GPU:
        other = (True, f"driver {driver_version} >= {MIN_DRIVER_OTHER_GPU}")
    else:
        other = (
            False,
            f"driver {driver_version} < {MIN_DRIVER_OTHER_GPU}: a snapshot restores only onto "
            "the GPU it was taken on",
        )
    return CheckpointSupport(api[0], api[1], other[0], other[1])
