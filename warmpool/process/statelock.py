"""One owner per state directory: ``DIR/.lock``, held with ``flock`` for as long as the owner
runs (``dormant up`` on its state dir, ``dormant exec`` on its snapshot volume).

Whoever holds it may clean what a killed predecessor left there (half-written snapshots,
criu processes, instance cgroups); nobody else may, since for a live owner those are its
running dump and its serving instances. The kernel releases the lock when the holder dies,
however it dies, so a crash never leaves a stale lock. The holder writes who it is (pid,
host, since when), so a second one can say whom it met.

The lock is per open file: a second ``StateLock`` on the same directory fails to acquire
it even in the same process. ``held_here`` says whether this process holds one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import threading
import time
from pathlib import Path

__all__ = ["StateLock", "held_here"]

_HELD: set[Path] = set()
"""Directories (resolved) whose lock this process holds."""
_HELD_GUARD = threading.Lock()


def _key(directory: Path) -> Path:
    return Path(os.path.realpath(directory))


def held_here(directory: Path) -> bool:
    """Whether this process holds ``directory``'s lock."""
    with _HELD_GUARD:
        return _key(directory) in _HELD


class StateLock:
    """``DIR/.lock`` (see the module docstring). ``try_acquire`` never waits."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / ".lock"
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def try_acquire(self) -> bool:
        """Take the lock and write who holds it; False when another holder has it.
        Raises OSError when the lock file cannot be opened."""
        if self._fd is not None:
            return True
        # O_CLOEXEC: no child (an instance, criu, what criu restores) may keep it alive
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        self._fd = fd
        with _HELD_GUARD:
            _HELD.add(_key(self.directory))
        return True

    def holder(self) -> str:
        """'pid N on HOST since HH:MM:SS', or 'another instance' when that is not written."""
        try:
            info = json.loads(self.path.read_text() or "{}")
            since = time.strftime("%H:%M:%S", time.localtime(info["since"]))
            return f"pid {info['pid']} on {info['host']} since {since}"
        except (OSError, ValueError, KeyError, TypeError):
            return "another instance"

    def release(self) -> None:
        if self._fd is not None:
            with _HELD_GUARD:
                _HELD.discard(_key(self.directory))
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing the only descriptor releases the flock
            self._fd = None
