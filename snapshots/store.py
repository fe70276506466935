"""Where snapshots live: one private directory per snapshot, committed atomically.

Layout::

    ROOT/                      0700
      WORKLOAD/                0700
        .tmp-ID/               being written; never visible as a snapshot
        ID/                    committed: images + manifest.json (written last)
        ID.bad/                failed verification or restore; kept for inspection

A snapshot holds a process's whole memory, so every directory is 0700 and every
file 0600. A commit fsyncs each file, writes the manifest, fsyncs, then renames
the directory into place and fsyncs the parent: after a crash a snapshot is
either complete or absent.
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import SnapshotCorrupt, SnapshotNotFound
from .manifest import MANIFEST_NAME, Manifest, digest_files, mismatched_files

__all__ = ["PendingSnapshot", "Snapshot", "SnapshotStore"]

log = logging.getLogger("dormant.snapshots")

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_TMP_PREFIX = ".tmp-"
_BAD_SUFFIX = ".bad"


@dataclass(frozen=True)
class Snapshot:
    """A committed snapshot: its directory and manifest."""

    path: Path
    manifest: Manifest

    @property
    def id(self) -> str:
        return self.manifest.id

    @property
    def workload(self) -> str:
        return self.manifest.workload


@dataclass(frozen=True)
class PendingSnapshot:
    """A snapshot being written. Write files into ``path``, then ``SnapshotStore.commit``."""

    id: str
    workload: str
    path: Path


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _new_id() -> str:
    # Sortable by creation time, unique across processes.
    return (
        time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        + f"-{time.time_ns() % 10**9:09d}-"
        + secrets.token_hex(2)
    )


class SnapshotStore:
    """Commits, lists, verifies and retires snapshots under one root directory."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)

    def _workload_dir(self, workload: str) -> Path:
        if not _NAME_RE.match(workload):
            raise ValueError(f"invalid workload name {workload!r}")
        path = self.root / workload
        path.mkdir(mode=0o700, exist_ok=True)
        return path

    # -- writing -----------------------------------------------------------------

    @contextlib.contextmanager
    def begin(self, workload: str) -> Iterator[PendingSnapshot]:
        """A fresh private temp directory; removed again unless it was committed."""
        snap_id = _new_id()
        path = self._workload_dir(workload) / f"{_TMP_PREFIX}{snap_id}"
        path.mkdir(mode=0o700)
        try:
            yield PendingSnapshot(snap_id, workload, path)
        finally:
            if path.exists():
                shutil.rmtree(path, ignore_errors=True)

    def commit(
        self,
        pending: PendingSnapshot,
        *,
        engine: str,
        engine_version: str = "",
        checkpoint_seconds: float = 0.0,
        meta: Mapping[str, Any] | None = None,
    ) -> Snapshot:
        """Digest every file, write the manifest last, and rename into place atomically."""
        names = []
        for dirpath, _dirs, files in os.walk(pending.path):
            for name in files:
                full = Path(dirpath) / name
                os.chmod(full, 0o600)
                with open(full, "rb") as f:
                    os.fsync(f.fileno())
                names.append(str(full.relative_to(pending.path)))
            os.chmod(dirpath, 0o700)
        manifest = Manifest(
            id=pending.id,
            workload=pending.workload,
            engine=engine,
            created=time.time(),
            files=digest_files(pending.path, names),
            engine_version=engine_version,
            checkpoint_seconds=checkpoint_seconds,
            meta=dict(meta or {}),
        )
        manifest_path = pending.path / MANIFEST_NAME
        fd = os.open(manifest_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(manifest.to_json())
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(pending.path)
        final = pending.path.parent / pending.id
        os.rename(pending.path, final)
        _fsync_dir(final.parent)
        log.info(
            "snapshot committed workload=%s id=%s bytes=%d",
            pending.workload,
            pending.id,
            manifest.total_bytes,
        )
        return Snapshot(final, manifest)

    # -- reading -----------------------------------------------------------------

    def _load(self, path: Path) -> Snapshot | None:
        try:
            return Snapshot(path, Manifest.from_json((path / MANIFEST_NAME).read_text()))
        except (OSError, ValueError, KeyError) as exc:
            log.warning("ignoring %s: unreadable manifest (%s)", path, exc)
            return None

    def list(self, workload: str | None = None) -> list[Snapshot]:
        """Committed, not-bad snapshots, newest first."""
        dirs = (
            [self.root / workload]
            if workload
            else sorted(p for p in self.root.iterdir() if p.is_dir())
        )
        found = []
        for wdir in dirs:
            if not wdir.is_dir():
                continue
            for path in wdir.iterdir():
                if path.name.startswith(_TMP_PREFIX) or path.name.endswith(_BAD_SUFFIX):
                    continue
                if path.is_dir() and (snap := self._load(path)) is not None:
                    found.append(snap)
        return sorted(found, key=lambda s: (s.manifest.created, s.id), reverse=True)

    def latest(self, workload: str) -> Snapshot | None:
        """The newest usable snapshot of ``workload``, or None."""
        snaps = self.list(workload)
        return snaps[0] if snaps else None

    def get(self, snapshot_id: str) -> Snapshot:
        for snap in self.list():
            if snap.id == snapshot_id:
                return snap
        raise SnapshotNotFound(f"no snapshot {snapshot_id!r} under {self.root}")

    def verify(self, snapshot: Snapshot) -> None:
        """Raise SnapshotCorrupt unless every file matches the manifest (size, then sha256)
        and no file was added."""
        problems: list[str] = []
        expected = snapshot.manifest.files
        present = {
            str((Path(d) / f).relative_to(snapshot.path))
            for d, _dirs, files in os.walk(snapshot.path)
            for f in files
        } - {MANIFEST_NAME}
        problems += [f"{name}: missing" for name in sorted(set(expected) - present)]
        problems += [f"{name}: not in manifest" for name in sorted(present - set(expected))]
        sized = []
        for name in sorted(set(expected) & present):
            size = (snapshot.path / name).stat().st_size
            if size != expected[name].size:
                problems.append(f"{name}: size {size} != {expected[name].size}")
            else:
                sized.append(name)
        if not problems:
            bad = mismatched_files(snapshot.path, {n: expected[n] for n in sized})
            problems += [f"{name}: sha256 mismatch" for name in bad]
        if problems:
            raise SnapshotCorrupt(snapshot.id, problems)

    # -- retiring ----------------------------------------------------------------

    def mark_bad(self, snapshot: Snapshot, reason: str) -> Path:
        """Move a snapshot out of use (kept as ID.bad with the reason) and return its new path."""
        bad = snapshot.path.with_name(snapshot.path.name + _BAD_SUFFIX)
        if bad.exists():
            shutil.rmtree(bad, ignore_errors=True)
        os.rename(snapshot.path, bad)
        (bad / "BAD_REASON").write_text(reason + "\n")
        log.warning("snapshot %s marked bad: %s", snapshot.id, reason)
        return bad

    def delete(self, snapshot: Snapshot) -> None:
        shutil.rmtree(snapshot.path)

    def prune(self, workload: str, keep: int) -> builtins.list[str]:
        """Delete all but the newest ``keep`` snapshots of ``workload``; returns the deleted ids."""
        doomed = self.list(workload)[max(keep, 0) :]
        for snap in doomed:
            self.delete(snap)
        return [s.id for s in doomed]

    def clean_partial(self) -> builtins.list[Path]:
        """Remove temp directories left by a crash during a checkpoint."""
        removed = []
        for wdir in (p for p in self.root.iterdir() if p.is_dir()):
            for path in wdir.glob(f"{_TMP_PREFIX}*"):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
        return removed
