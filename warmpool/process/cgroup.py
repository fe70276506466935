"""One cgroup per local instance: what outlives a crash of Dormant and can be cleaned.

A killed Dormant cannot end what it started, and a process tree can outlive its parent
(a tree CRIU was half-way through restoring has no parent-death signal yet). Every
instance therefore runs in its own cgroup v2 group under one parent per state directory,
``dormant-DIGEST/`` (DIGEST: of the state directory). At start, Dormant ends every group
left under its parent (``cgroup.kill``: the kernel kills every process in it, however it
got there) and removes them. The parent goes when its last instance group goes, at start
once the leftovers are cleaned, and at shutdown (``close``): none is left behind for a state
directory no longer in use. The group also gives the instance's memory figure
(``memory.current``, where the memory controller is enabled for it).

Needs a writable cgroup v2 hierarchy (root; ``/sys/fs/cgroup`` or, on hybrid systems,
``/sys/fs/cgroup/unified``). Without one, instances run without a group: ``available()``
says why, and the parent-death signals remain the only protection.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import logging
import os
import time
from pathlib import Path

__all__ = ["CgroupTree", "find_cgroup2"]

log = logging.getLogger("dormant.warmpool")

_PARENT_PREFIX = "dormant-"

_MOUNTS = Path("/proc/self/mounts")


def find_cgroup2() -> Path | None:
    """The mount point of the cgroup v2 hierarchy, or None."""
    try:
        lines = _MOUNTS.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split()
        if len(parts) >= 3 and parts[2] == "cgroup2":
            return Path(parts[1])
    return None


class CgroupTree:
    """The parent group of one Dormant (one state directory) and its instance groups."""

    def __init__(self, state_dir: Path, root: Path | None = None) -> None:
        self.why_not = ""
        mount = root if root is not None else find_cgroup2()
        digest = hashlib.sha256(str(Path(state_dir).resolve()).encode()).hexdigest()[:12]
        self.parent: Path | None = None
        if mount is None:
            self.why_not = "no cgroup v2 hierarchy is mounted"
            return
        parent = mount / f"{_PARENT_PREFIX}{digest}"
        try:
            parent.mkdir(exist_ok=True)
        except OSError as exc:
            self.why_not = f"cannot create {parent}: {exc.strerror or exc}"
            return
        self.parent = parent
        self._serial = itertools.count()

    def available(self) -> bool:
        return self.parent is not None

    def create(self, name: str) -> Path | None:
        """A fresh empty group for one instance of ``name``, or None without cgroups."""
        if self.parent is None:
            return None
        group = self.parent / f"{name}-{os.getpid()}-{next(self._serial)}"
        problem: OSError | None = None
        for _ in range(3):  # the parent goes with its last group: made again if it went
            try:
                self.parent.mkdir(exist_ok=True)
                group.mkdir()
                return group
            except FileNotFoundError as exc:  # the last other group took the parent meanwhile
                problem = exc
            except OSError as exc:
                problem = exc
                break
        log.warning("%s: cannot create cgroup %s (%s); running without one", name, group, problem)
        return None

    def clean(self) -> list[str]:
        """End every process of every group left under the parent, remove the groups;
        returns the names of the groups that still had processes."""
        if self.parent is None:
            return []
        ended = []
        try:
            groups = sorted(p for p in self.parent.iterdir() if p.is_dir())
        except FileNotFoundError:
            groups = []
        for group in groups:
            if procs(group):
                ended.append(group.name)
            remove(group)
        self.close()
        return ended

    def close(self) -> None:
        """Remove the parent if no instance group is left in it (at shutdown)."""
        if self.parent is not None:
            _remove_parent(self.parent)


def _remove_parent(parent: Path) -> None:
    """rmdir a ``dormant-DIGEST`` parent; the kernel refuses while a group is in it."""
    try:
        parent.rmdir()
    except FileNotFoundError:
        pass
    except OSError as exc:
        if exc.errno not in (errno.EBUSY, errno.ENOTEMPTY):
            log.debug("cannot remove cgroup %s: %s", parent, exc)


def procs(group: Path) -> list[int]:
    """The pids in ``group`` (empty when it is gone)."""
    try:
        return [int(p) for p in (group / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


def kill(group: Path) -> None:
    """SIGKILL every process in ``group`` (cgroup.kill; a pid-by-pid fallback on kernels
    before 5.14)."""
    try:
        (group / "cgroup.kill").write_text("1")
        return
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.debug("cgroup.kill on %s failed: %s", group, exc)
    for pid in procs(group):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)


def remove(group: Path, timeout: float = 5.0) -> bool:
    """Kill what is left in ``group`` and remove it (and its ``dormant-DIGEST`` parent when it
    was the last group there); False when it could not be removed within ``timeout`` (the
    processes did not die: logged)."""
    deadline = time.monotonic() + timeout
    while True:
        if procs(group):
            kill(group)
        try:
            group.rmdir()
            break
        except FileNotFoundError:
            return True
        except OSError as exc:
            if time.monotonic() > deadline:
                log.warning("cannot remove cgroup %s: %s (pids %s)", group, exc, procs(group))
                return False
            time.sleep(0.02)
    if group.parent.name.startswith(_PARENT_PREFIX):
        _remove_parent(group.parent)
    return True
