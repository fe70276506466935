"""The CUDA driver's checkpoint API: move a process's GPU memory to host RAM and back.

``cuCheckpointProcessLock / Checkpoint / Restore / Unlock`` (driver >= 570) act on
another process by PID, like ``cuda-checkpoint --toggle``: after ``suspend`` the
process holds no device memory (the GPU is free for another model) and CRIU can
dump it like a CPU process; ``resume`` puts its memory back on the device.
This is the ``cuda`` engine's primitive (the `suspended` tier).
"""

from __future__ import annotations

import ctypes
import time
from dataclasses import dataclass

from .errors import CheckpointFailed, EngineUnavailable, RestoreFailed

__all__ = ["CudaCheckpoint", "ToggleTiming"]

_STATES = {0: "running", 1: "locked", 2: "checkpointed", 3: "failed"}


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

    def _check(self, code: int, call: str, error: type[Exception]) -> None:
        if code != 0:
            raise error(f"{call} failed: CUDA error {code} ({self._error(code)})")

    def state(self, pid: int) -> str:
        """'running', 'locked', 'checkpointed' or 'failed'."""
        state = ctypes.c_int()
        self._check(
            self._cuda.cuCheckpointProcessGetState(pid, ctypes.byref(state)),
            "cuCheckpointProcessGetState",
            CheckpointFailed,
        )
        return _STATES.get(state.value, f"unknown({state.value})")

    def suspend(self, pid: int, lock_timeout: float = 10.0) -> ToggleTiming:
        """Lock the process's CUDA work (waiting up to ``lock_timeout`` for running work),
        then move its device memory to host RAM."""
        args = _LockArgs(timeoutMs=int(lock_timeout * 1000))
        started = time.perf_counter()
        self._check(
            self._cuda.cuCheckpointProcessLock(pid, ctypes.byref(args)),
            "cuCheckpointProcessLock",
            CheckpointFailed,
        )
        locked = time.perf_counter()
        code = self._cuda.cuCheckpointProcessCheckpoint(pid, None)
        if code != 0:
            self._cuda.cuCheckpointProcessUnlock(pid, None)  # leave it running, as it was
            self._check(code, "cuCheckpointProcessCheckpoint", CheckpointFailed)
        return ToggleTiming(locked - started, time.perf_counter() - locked)

    def resume(self, pid: int) -> ToggleTiming:
        """Bring the device memory back and let the process run CUDA work again."""
        started = time.perf_counter()
        self._check(
            self._cuda.cuCheckpointProcessRestore(pid, None),
            "cuCheckpointProcessRestore",
            RestoreFailed,
        )
        restored = time.perf_counter()
        self._check(
            self._cuda.cuCheckpointProcessUnlock(pid, None),
            "cuCheckpointProcessUnlock",
            RestoreFailed,
        )
        return ToggleTiming(restored - started, time.perf_counter() - restored)
