"""FAKE CUDA drivers for the CPU tests and the device check's dry run: no GPU is involved.

``RecordingDriver`` plays ``snapshots.cuda.CudaDriver`` (what ``suspend_tree`` and
``resume_tree`` sequence): the driver's states and refusals, each call recorded.
``FakeLibcuda`` plays libcuda itself under ``CudaCheckpoint(lib=...)``: the same state
machine behind the C calls, with scripted CUresults, so ``CudaCheckpoint``'s own code (error
codes, hints, the restore-thread probe) runs on CPU.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from snapshots import EngineDumpFailed, EngineRestoreFailed

NEXT = {
    "lock": ("running", "locked"),
    "checkpoint": ("locked", "checkpointed"),
    "restore": ("checkpointed", "locked"),
    "unlock": ("locked", "running"),
}
"""call -> (the state it needs, the state it leaves)."""


class RecordingDriver:
    """Plays the CUDA driver's checkpoint calls (FAKE): the same states and refusals, calls
    recorded as (call, pid). ``cuda(pid)`` says which processes use CUDA; ``key(pid)`` what a
    process's CUDA state is kept under (e.g. its PID inside its namespace, as the real state
    lives in the process's memory and survives CRIU); ``fail`` makes one (call, pid) fail, or
    every (call, pid) for which it returns True; ``after`` makes a successful (call, pid)
    leave another state than the usual one (a driver that reports success and then
    'failed', or a transitional state); ``delay`` seconds per call, with ``max_active`` the
    most calls seen in flight at once."""

    def __init__(
        self,
        cuda: Callable[[int], bool],
        key: Callable[[int], object] = lambda pid: pid,
        fail: tuple[str, int] | Callable[[str, int], bool] | None = None,
        after: dict[tuple[str, int], str] | None = None,
        delay: float = 0.0,
    ) -> None:
        self.cuda, self.key, self.fail = cuda, key, fail
        self.after = after or {}
        self.delay = delay
        self.states: dict[object, str] = {}
        self.calls: list[tuple[str, int]] = []
        self.active = self.max_active = 0
        self._count = threading.Lock()

    def is_cuda(self, pid: int) -> bool:
        return self.cuda(pid)

    def state(self, pid: int) -> str:
        return self.states.get(self.key(pid), "running")

    def _fails(self, call: str, pid: int) -> bool:
        if callable(self.fail):
            return self.fail(call, pid)
        return self.fail == (call, pid)

    def _act(self, call: str, pid: int) -> None:
        error = EngineDumpFailed if call in ("lock", "checkpoint") else EngineRestoreFailed
        with self._count:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            time.sleep(self.delay)
            self.calls.append((call, pid))
            if not self.is_cuda(pid):
                raise error(f"{call}: pid {pid} is not a CUDA process")
            before, after = NEXT[call]
            if self.state(pid) != before:
                raise error(f"{call}: pid {pid} is {self.state(pid)}, not {before}")
            if self._fails(call, pid):
                raise error(f"{call} failed for pid {pid}: CUDA error 2 (out of memory)")
            self.states[self.key(pid)] = self.after.get((call, pid), after)
        finally:
            with self._count:
                self.active -= 1

    def lock(self, pid: int, timeout: float) -> None:
        self._act("lock", pid)

    def checkpoint(self, pid: int) -> None:
        self._act("checkpoint", pid)

    def restore(self, pid: int) -> None:
        self._act("restore", pid)

    def unlock(self, pid: int) -> None:
        self._act("unlock", pid)


_STATE_CODES = {"running": 0, "locked": 1, "checkpointed": 2, "failed": 3}
NOT_INITIALIZED = 3
ILLEGAL_STATE = 401
NOT_PERMITTED = 800
TIMEOUT = 909


class FakeLibcuda:
    """libcuda's checkpoint entry points (FAKE), for ``CudaCheckpoint(lib=FakeLibcuda())``.

    ``cuda``: the pids that initialised CUDA (others answer ``not_cuda_code``, as the
    real driver answers a CPU process); ``codes``: scripted CUresults, ``(call, pid) ->
    code``, e.g. a permission error for one pid; ``busy``: pids whose lock waits its whole
    timeout then answers ``timeout_code`` (work that does not finish)."""

    def __init__(
        self,
        cuda: set[int],
        codes: dict[tuple[str, int], int] | None = None,
        busy: set[int] | None = None,
        not_cuda_code: int = NOT_INITIALIZED,
        timeout_code: int = TIMEOUT,
    ) -> None:
        self.cuda = cuda
        self.codes = codes or {}
        self.busy = busy or set()
        self.not_cuda_code, self.timeout_code = not_cuda_code, timeout_code
        self.states: dict[int, str] = {}

    # -- the C calls, by libcuda's names (ctypes-style: out-parameters come as byref objects) --

    def cuInit(self, flags: int) -> int:
        return 0

    def cuDriverGetVersion(self, out: Any) -> int:
        out._obj.value = 13000
        return 0

    def cuGetErrorString(self, code: int, out: Any) -> int:
        out._obj.value = f"fake CUDA error {code}".encode()
        return 0

    def _scripted(self, call: str, pid: int) -> int | None:
        if (call, pid) in self.codes:
            return self.codes[(call, pid)]
        return None if pid in self.cuda else self.not_cuda_code

    def cuCheckpointProcessGetRestoreThreadId(self, pid: int, out: Any) -> int:
        code = self._scripted("restore_thread", pid)
        if code is None:
            out._obj.value = pid
            return 0
        return code

    def cuCheckpointProcessGetState(self, pid: int, out: Any) -> int:
        code = self._scripted("state", pid)
        if code is None:
            out._obj.value = _STATE_CODES[self.states.get(pid, "running")]
            return 0
        return code

    def _move(self, call: str, pid: int) -> int:
        code = self._scripted(call, pid)
        if code is not None:
            return code
        before, after = NEXT[call]
        if self.states.get(pid, "running") != before:
            return ILLEGAL_STATE
        self.states[pid] = after
        return 0

    def cuCheckpointProcessLock(self, pid: int, args: Any) -> int:
        if pid in self.busy:
            time.sleep(args._obj.timeoutMs / 1000)
            return self.timeout_code
        return self._move("lock", pid)

    def cuCheckpointProcessCheckpoint(self, pid: int, args: Any) -> int:
        return self._move("checkpoint", pid)

    def cuCheckpointProcessRestore(self, pid: int, args: Any) -> int:
        return self._move("restore", pid)

    def cuCheckpointProcessUnlock(self, pid: int, args: Any) -> int:
        return self._move("unlock", pid)
