"""The snapshot store's filesystem steps: creating, syncing, renaming and removing files
without following links, and saying in one sentence what a failed step means and what to
do (``explain``).

Every write step of a commit goes through ``create``, ``sync`` or ``rename`` (looked up on
this module at call time, so the fault-injection tests can pick the moment a filesystem
fails).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import sys
from pathlib import Path

__all__ = [
    "create",
    "disk_bytes",
    "explain",
    "fsync_path",
    "is_dir",
    "lexists",
    "mount_point",
    "rename",
    "rmtree",
    "sync",
]


def sync(fd: int) -> None:
    os.fsync(fd)


def create(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)


def rename(src: Path, dst: Path) -> None:
    os.rename(src, dst)


def fsync_path(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else os.O_NOFOLLOW))
    try:
        sync(fd)
    finally:
        os.close(fd)


def mount_point(path: Path) -> Path:
    path = path.resolve()
    try:
        dev = path.stat().st_dev
        while path.parent != path and path.parent.stat().st_dev == dev:
            path = path.parent
    except OSError:
        pass
    return path


def explain(exc: OSError, what: str, path: Path, needed: int = 0) -> str:
    """'WHAT failed: WHY; WHAT TO DO', for an OSError from the store's filesystem."""
    code = exc.errno
    fs = f"the filesystem mounted at {mount_point(path)}"
    if code in (errno.ENOSPC, errno.EDQUOT):
        try:
            try:
                st = os.statvfs(path)
            except FileNotFoundError:
                st = os.statvfs(path.parent)
            free = f"{st.f_bavail * st.f_frsize} bytes free"
            if st.f_files and not st.f_favail:
                free += ", no inodes free"
        except OSError:
            free = "free space unknown"
        need = f", {needed} bytes needed" if needed else ""
        limit = "disk quota exceeded" if code == errno.EDQUOT else "no space left"
        hint = (
            "raise the quota" if code == errno.EDQUOT else "free space there"
        ) + " or point state_dir at a larger filesystem"
        return f"{what} failed: {limit} on {fs} ({free}{need}); {hint}"
    if code == errno.EFBIG:
        return (
            f"{what} failed: file too large ({exc.strerror}): a file size limit "
            f"(ulimit -f, RLIMIT_FSIZE) or {fs}'s maximum; raise the limit"
        )
    if code == errno.EIO:
        return f"{what} failed: I/O error on {fs}: the disk may be failing; check `dmesg`"
    if code == errno.EROFS:
        return f"{what} failed: {fs} is read-only; remount it read-write or move state_dir"
    if code in (errno.EACCES, errno.EPERM):
        return (
            f"{what} failed: permission denied on {exc.filename or path} ({exc.strerror}); "
            "run Dormant as the owner of state_dir (and check `lsattr` for immutable files)"
        )
    return f"{what} failed on {fs}: {exc.strerror or exc} ({exc.filename or path})"


def lexists(path: Path) -> bool:
    """Whether anything is at ``path``; True when that cannot be told (EIO, EACCES)."""
    try:
        os.lstat(path)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    return True


def is_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def rmtree(path: Path) -> list[str]:
    """Remove ``path`` without following any link; returns what could not be removed.

    ``path`` itself is ``lstat``-ed first: a symlink (planted, or swapped in after the
    caller looked) is removed as a link and its target is never entered; anything else
    that is not a directory is unlinked. A directory is removed by the standard library's
    ``shutil.rmtree``, which on Linux walks by file descriptor (``openat`` with
    ``O_NOFOLLOW``, checking each directory it enters is the one it ``lstat``-ed): a
    link replacing a subdirectory mid-walk is unlinked, never followed.
    """
    problems: list[str] = []

    def record(_function: object, filename: str, info: object) -> None:
        exc = info[1] if isinstance(info, tuple) else info
        if not isinstance(exc, OSError):
            exc = OSError(errno.EIO, str(exc), filename)
        if exc.filename is None:
            exc.filename = filename
        # a directory left non-empty by an earlier problem says nothing new
        if not isinstance(exc, FileNotFoundError) and not (
            problems and exc.errno == errno.ENOTEMPTY
        ):
            problems.append(explain(exc, f"removing {exc.filename}", path))

    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return []
    except OSError as exc:
        record(os.lstat, str(path), exc)
        return problems
    if not stat.S_ISDIR(mode):  # a link (never followed) or a stray file
        try:
            os.unlink(path)
        except OSError as exc:
            record(os.unlink, str(path), exc)
        return problems
    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=record)
    else:
        shutil.rmtree(path, onerror=record)
    return problems


def disk_bytes(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total
