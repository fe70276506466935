"""The state directory's lock: one holder, who it is, and gone with the holder's process
(never kept alive by a child it started)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from warmpool.process.statelock import StateLock, held_here

HOLD = """
import sys, time
from pathlib import Path
from warmpool.process.statelock import StateLock
lock = StateLock(Path(sys.argv[1]))
assert lock.try_acquire()
subprocess = __import__("subprocess")
child = subprocess.Popen(["sleep", "60"], close_fds=False)  # would keep an inheritable fd
print(child.pid, flush=True)
time.sleep(60)
"""


def test_one_holder_and_held_here(tmp_path: Path) -> None:
    first, second = StateLock(tmp_path), StateLock(tmp_path)
    assert not held_here(tmp_path)
    assert first.try_acquire() and first.held and held_here(tmp_path)
    assert held_here(tmp_path / ".." / tmp_path.name)  # by the resolved path
    assert not second.try_acquire() and not second.held
    first.release()
    assert not held_here(tmp_path)
    assert second.try_acquire()
    second.release()


def test_released_when_the_holder_dies_though_its_child_lives(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    child = 0
    try:
        assert holder.stdout is not None
        child = int(holder.stdout.readline())
        lock = StateLock(tmp_path)
        assert not lock.try_acquire()
        assert lock.holder().startswith(f"pid {holder.pid} on ")
        holder.kill()
        holder.wait(10)
        assert Path(f"/proc/{child}").exists()  # the child outlives it, without the lock
        assert lock.try_acquire()
        lock.release()
    finally:
        holder.kill()
        holder.wait(10)
        if child:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
