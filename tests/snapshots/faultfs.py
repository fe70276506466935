"""Real filesystems that fail on demand, for the snapshot store's fault-injection tests.

Every fault comes from the kernel, not from a mock of ``open``:

* ``Tmpfs``: a tmpfs of a few hundred KB (and/or a handful of inodes) that really fills
  up: writes fail with ENOSPC.
* ``Ext4``: an ext4 filesystem on a loop device. ``shutdown()`` is ext4's
  EXT4_IOC_SHUTDOWN (what xfstests' `godown` uses): from then on every read, write,
  fsync and rename on it fails with EIO, like a disk that died. ``sync=True`` flushes
  everything first (a disk failing under a healthy page cache); ``sync=False`` drops
  what was not yet durable (a crash). ``remount()`` unmounts and mounts it again: the
  journal is replayed and what survives is what a restarted Dormant would find.
* ``read_only(path)``: a read-only bind mount over a directory (EROFS), like a
  filesystem remounted read-only after errors.
* ``immutable(path)``: ``chattr +i``; even root gets EPERM removing it.

All need root (mount); ``require_root_mounts()`` skips with the reason elsewhere.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["Ext4", "Tmpfs", "immutable", "read_only", "require_root_mounts"]

_EXT4_IOC_SHUTDOWN = 0x8004587D  # _IOR('X', 125, __u32)
_GOING_DEFAULT, _GOING_NOLOGFLUSH = 0, 2


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)


def _umount(path: Path) -> None:
    result = subprocess.run(["umount", str(path)], capture_output=True, timeout=60)
    if result.returncode != 0:  # busy: detach it anyway so the test dir can be removed
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=60)


def require_root_mounts(tmp: Path) -> None:
    """Skip (saying why) where this process cannot mount a tmpfs."""
    if os.geteuid() != 0:
        pytest.skip("fault injection mounts filesystems: needs root")
    probe = tmp / "mount-probe"
    probe.mkdir(exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    _umount(probe)


class Tmpfs:
    """A tmpfs of ``size`` bytes and optionally ``inodes`` inodes at ``mnt``."""

    def __init__(self, mnt: Path, size: int, inodes: int | None = None) -> None:
        self.mnt = mnt
        mnt.mkdir(parents=True, exist_ok=True)
        options = f"size={size},mode=0700" + (f",nr_inodes={inodes}" if inodes else "")
        _run("mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mnt))

    def fill(self) -> Path:
        """Write until the filesystem is full (ENOSPC); returns the filler to free it."""
        filler = self.mnt / "filler"
        with open(filler, "wb", buffering=0) as f:
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * 4096)
            with contextlib.suppress(OSError):
                f.write(b"\0")  # the last partial page
        return filler

    def use_up_inodes(self, limit: int = 10_000) -> list[Path]:
        """Create empty files until no inode is left (bounded); returns them."""
        made = []
        for i in range(limit):
            path = self.mnt / f"inode-{i}"
            try:
                path.touch()
            except OSError:
                return made
            made.append(path)
        raise AssertionError(f"{limit} files and still inodes left")

    def close(self) -> None:
        _umount(self.mnt)


class Ext4:
    """ext4 on a loop device over a sparse file, mounted at ``mnt``."""

    def __init__(self, tmp: Path, size_mb: int = 32) -> None:
        if shutil.which("mkfs.ext4") is None:
            pytest.skip("mkfs.ext4 (e2fsprogs) is not installed")
        self.image = tmp / "ext4.img"
        self.mnt = tmp / "ext4"
        self.mnt.mkdir(parents=True, exist_ok=True)
        with open(self.image, "wb") as f:
            f.truncate(size_mb << 20)
        _run("mkfs.ext4", "-q", "-F", str(self.image))
        self.mount()

    def mount(self) -> None:
        result = subprocess.run(
            ["mount", "-o", "loop", str(self.image), str(self.mnt)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if result.returncode != 0:
            pytest.skip(f"cannot mount ext4 on a loop device here: {result.stderr.strip()}")

    def shutdown(self, sync: bool = True) -> None:
        """From now on every operation on the filesystem fails with EIO."""
        fd = os.open(self.mnt, os.O_RDONLY | os.O_DIRECTORY)
        try:
            flag = _GOING_DEFAULT if sync else _GOING_NOLOGFLUSH
            fcntl.ioctl(fd, _EXT4_IOC_SHUTDOWN, struct.pack("I", flag))
        finally:
            os.close(fd)

    def remount(self) -> None:
        """Unmount and mount again: what survives is what a restart would find."""
        _umount(self.mnt)
        self.mount()

    def close(self) -> None:
        _umount(self.mnt)
        self.image.unlink(missing_ok=True)


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[Path]:
    """``path`` read-only (EROFS) for the duration."""
    _run("mount", "--bind", str(path), str(path))
    try:
        _run("mount", "-o", "remount,ro,bind", str(path))
        yield path
    finally:
        _umount(path)


@contextlib.contextmanager
def immutable(path: Path, moved_to: Path | None = None) -> Iterator[Path]:
    """``chattr +i path`` for the duration: unlinking it fails with EPERM, even as root.
    ``moved_to``: where the file will be when the block ends (its directory renamed)."""
    _run("chattr", "+i", str(path))
    try:
        yield path
    finally:
        _run("chattr", "-i", str(moved_to or path))
