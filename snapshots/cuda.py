"""The CUDA driver's checkpoint API: move a process's GPU memory to host RAM and back.

``cuCheckpointProcessLock / Checkpoint / Restore / Unlock`` (driver >= 570) act on
another process by PID, like ``cuda-checkpoint --toggle``: after ``suspend`` the
process holds no device memory (the GPU is free for another model) and CRIU can
dump it like a CPU process; ``resume`` puts its memory back on the device.
This is the ``cuda`` engine's primitive (the `suspended` tier).

Beyond one process, ``suspend_tree`` / ``resume_tree`` act on every CUDA process of a
tree in the right order (lock all, then checkpoint all; restore all, then unlock all) and
leave the tree running when something fails half-way. They take any ``CudaDriver``:
``CudaCheckpoint`` on a GPU, a scripted fake (tests/gpu/fake_driver.py) in the CPU tests.
One tree operation runs at a time in a process (``DRIVER_LOCK``): the pool demotes victims
concurrently, and the driver's checkpoint calls are not documented as safe to overlap.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from snapshots.errors import EngineDumpFailed, EngineRestoreFailed, EngineUnavailable

__all__ = [
    "DRIVER_LOCK",
    "MIN_DRIVER",
    "MIN_DRIVER_OTHER_GPU",
    "NOT_CUDA_ERRORS",
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
"""CUprocessState. Any other value (drivers report transitional states) reads
``unknown(N)``: never running, so never taken for success."""
_NOT_SUPPORTED = 801  # CUDA_ERROR_NOT_SUPPORTED
NOT_CUDA_ERRORS = frozenset({1, 3})
"""What cuCheckpointProcessGetRestoreThreadId answers for a live process that never
initialised CUDA (CUDA_ERROR_INVALID_VALUE, CUDA_ERROR_NOT_INITIALIZED; the device check
records the real one). Any other error (no permission, an OS error) is not an answer."""
_HINTS = {
    _NOT_SUPPORTED: (
        "the driver cannot checkpoint this process: the CUDA checkpoint API does not support "
        "managed memory (UVM), CUDA IPC or MIG; use `suspend: hooks` or `none` for it"
    ),
}
_LOCK_TIMEOUT_HINT = "its CUDA work did not finish within the lock timeout; try again when idle"
DRIVER_LOCK = threading.RLock()
"""Held by every checkpoint call and tree operation: one at a time per process."""


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

    def __init__(self, library: str = "libcuda.so.1", *, lib: Any = None) -> None:
        """``lib``: an already loaded library to use instead (the FAKE libcuda of
        tests/gpu/fake_driver.py, in the CPU tests and the device check's dry run)."""
        if lib is not None:
            self._cuda = lib
        else:
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
        self.last_error = 0
        """The CUresult of the last checkpoint call (0: success)."""

    def _error(self, code: int) -> str:
        text = ctypes.c_char_p()
        self._cuda.cuGetErrorString(code, ctypes.byref(text))
        return (text.value or b"unknown error").decode()

    def _check(
        self, code: int, call: str, error: type[Exception], pid: int = 0, hint: str = ""
    ) -> None:
        self.last_error = code
        if code != 0:
            hint = hint or _HINTS.get(code, "")
            on = f" for pid {pid}" if pid else ""
            raise error(
                f"{call}{on} failed: CUDA error {code} ({self._error(code)})"
                + (f"; {hint}" if hint else "")
            )

    def probe_restore_thread(self, pid: int) -> tuple[int, int]:
        """(CUresult, thread id) of cuCheckpointProcessGetRestoreThreadId for ``pid``, as
        the driver answers (the device check records the codes)."""
        fn = getattr(self._cuda, "cuCheckpointProcessGetRestoreThreadId", None)
        if fn is None:
            raise EngineUnavailable(
                "the NVIDIA driver has no cuCheckpointProcessGetRestoreThreadId (needs >= 570)"
            )
        tid = ctypes.c_int()
        with DRIVER_LOCK:
            code = int(fn(pid, ctypes.byref(tid)))
        return code, tid.value

    def restore_thread_id(self, pid: int) -> int | None:
        """The CUDA restore thread of ``pid``; None when the driver says ``pid`` is not a
        CUDA process (``NOT_CUDA_ERRORS``). Any other error raises EngineDumpFailed: a
        CUDA process the driver may not act on must not pass for a CPU one."""
        code, tid = self.probe_restore_thread(pid)
        if code in NOT_CUDA_ERRORS:
            log.debug("pid %d is not a CUDA process: %s", pid, self._error(code))
            return None
        self._check(code, "cuCheckpointProcessGetRestoreThreadId", EngineDumpFailed, pid)
        return tid

    def is_cuda(self, pid: int) -> bool:
        return self.restore_thread_id(pid) is not None

    def lock(self, pid: int, timeout: float) -> None:
        """Block the process's CUDA calls, waiting up to ``timeout`` s for running work.
        A failure after waiting about that long is a lock timeout, whatever its code
        (recorded in ``last_error``; the device check reports which code it is)."""
        args = _LockArgs(timeoutMs=int(timeout * 1000))
        started = time.monotonic()
        with DRIVER_LOCK:
            code = self._cuda.cuCheckpointProcessLock(pid, ctypes.byref(args))
        waited = time.monotonic() - started
        hint = _LOCK_TIMEOUT_HINT if code and waited >= 0.9 * timeout else ""
        self._check(code, "cuCheckpointProcessLock", EngineDumpFailed, pid, hint)

    def checkpoint(self, pid: int) -> None:
        """Move a locked process's device memory to host RAM; its GPU memory is freed."""
        with DRIVER_LOCK:
            code = self._cuda.cuCheckpointProcessCheckpoint(pid, None)
        self._check(code, "cuCheckpointProcessCheckpoint", EngineDumpFailed, pid)

    def restore(self, pid: int) -> None:
        """Bring a checkpointed process's memory back onto the device (still locked)."""
        with DRIVER_LOCK:
            code = self._cuda.cuCheckpointProcessRestore(pid, None)
        self._check(code, "cuCheckpointProcessRestore", EngineRestoreFailed, pid)

    def unlock(self, pid: int) -> None:
        """Let a locked process make CUDA calls again."""
        with DRIVER_LOCK:
            code = self._cuda.cuCheckpointProcessUnlock(pid, None)
        self._check(code, "cuCheckpointProcessUnlock", EngineRestoreFailed, pid)

    def state(self, pid: int) -> str:
        """'running', 'locked', 'checkpointed', 'failed' or 'unknown(N)'."""
        state = ctypes.c_int()
        with DRIVER_LOCK:
            code = self._cuda.cuCheckpointProcessGetState(pid, ctypes.byref(state))
        self._check(code, "cuCheckpointProcessGetState", EngineDumpFailed, pid)
        return _STATES.get(state.value, f"unknown({state.value})")

    def suspend(self, pid: int, lock_timeout: float = 10.0) -> ToggleTiming:
        """Lock the process's CUDA work (waiting up to ``lock_timeout`` for running work),
        then move its device memory to host RAM. On failure it is left running."""
        with DRIVER_LOCK:
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
        with DRIVER_LOCK:
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
    with DRIVER_LOCK:
        return _suspend_tree(driver, pids, lock_timeout)


def _suspend_tree(driver: CudaDriver, pids: Iterable[int], lock_timeout: float) -> TreeTiming:
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
    is safe to repeat). Then every state is read again: unless all are ``running``,
    EngineRestoreFailed names each process that is not (a ``failed`` one, a transitional state)
    and every call that failed; the others are unlocked all the same."""
    with DRIVER_LOCK:
        return _resume_tree(driver, pids)


def _resume_tree(driver: CudaDriver, pids: Iterable[int]) -> TreeTiming:
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
    ended = time.perf_counter()
    for pid in cuda:
        try:
            state = driver.state(pid)
        except EngineDumpFailed as exc:
            state = f"unreadable ({exc})"
        if state != "running":
            problems.append(f"pid {pid} is {state!r} after the resume, not 'running'")
    if problems:
        raise EngineRestoreFailed("; ".join(problems))
    return TreeTiming(tuple(cuda), middle - started, ended - middle)


def gpu_refusal(gpus: Mapping[int, Collection[int]], mig: Collection[int] = ()) -> str:
    """Pure: why the CUDA checkpoint API must not be used on these processes, from the
    driver's view of them as NVML reports it (``pid -> indices of the GPUs it holds
    memory on``) and the GPUs with MIG enabled; empty when nothing is known to be wrong.
    Refused: a process on several GPUs, one on a MIG-enabled GPU. (Open /dev/nvidiaN files
    say nothing: CUDA opens every GPU's node at initialisation. Managed memory (UVM)
    cannot be seen from outside: the driver refuses it with CUDA_ERROR_NOT_SUPPORTED,
    which ``CudaCheckpoint`` explains.)"""
    problems = []
    for pid, held in sorted(gpus.items()):
        on = sorted(set(held))
        if len(on) > 1:
            problems.append(
                f"pid {pid} holds memory on GPUs {', '.join(map(str, on))}: multi-GPU "
                "processes cannot be checkpointed through the CUDA checkpoint API here"
            )
        in_mig = [g for g in on if g in mig]
        if in_mig:
            problems.append(
                f"pid {pid} runs on GPU {in_mig[0]}, which has MIG enabled: the CUDA "
                "checkpoint API does not support MIG"
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
