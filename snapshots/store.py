"""Where snapshots live: one private directory per snapshot, committed atomically.

Layout::

    ROOT/                      0700
      WORKLOAD/                0700
        .tmp-ID/               being written; never usable (status 'partial')
        .del-ID/               being deleted; never usable (status 'partial')
        ID/                    committed: images + manifest.json (written last)
        ID.bad/                failed verification or restore, with BAD_REASON; the newest
                               ``keep_bad`` per workload are kept for inspection
        .expected.json         the fingerprint of what the workload starts now (``expect``):
                               a committed snapshot whose manifest records another is
                               'stale' — kept, listed, never restored (snapshots.fingerprint)
        ID.suspect/            restored fine, but its restored process died soon after,
                               again and again (``mark_suspect``); BAD_REASON says why.
                               Never restored again; kept like ``.bad`` (``keep_bad``)

A snapshot holds a process's whole memory, so every directory is 0700 and every
file 0600. A commit fsyncs each file and directory, writes the manifest, fsyncs,
then renames the directory into place and fsyncs the parent: after a crash a
snapshot is either complete or absent. A directory is only ever removed after it
was renamed out of use, so a half-deleted snapshot is never usable either.

Errors: writing raises ``StoreFailed`` (``CommitFailed`` from ``commit``) with what
failed and what to do; retiring (``mark_bad``, ``mark_suspect``, ``prune``, ``clean_partial``,
``discard``) logs and carries on; reading (``entries``, ``list``, ``latest``, ``get``,
``verify``, ``verify_during``) raises only ``SnapshotError`` subclasses. A directory
whose manifest is missing or of the wrong shape is listed by ``entries`` as 'invalid' with
the reason and retired by ``prune``; it is never returned by ``list``/``latest``. A manifest
that cannot be read *now* (too many open files, permission denied, an I/O error) says
nothing about the snapshot: reading raises ``StoreFailed`` and nothing is retired.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import json
import logging
import os
import re
import secrets
import stat
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import snapshots.files as disk
from snapshots.errors import (
    CommitFailed,
    ManifestInvalid,
    SnapshotCorrupt,
    SnapshotNotFound,
    StoreFailed,
)
from snapshots.fingerprint import Fingerprint, stale_parts
from snapshots.manifest import (
    CANNOT_READ_NOW,
    CHUNK_BYTES,
    DEFAULT_DIGEST,
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    Manifest,
    check_files,
    digest_files,
)

__all__ = ["Entry", "PendingSnapshot", "Snapshot", "SnapshotStore", "Status"]

log = logging.getLogger("dormant.snapshots")

Status = Literal["ok", "bad", "suspect", "invalid", "partial", "stale"]
T = TypeVar("T")

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_TMP_PREFIX = ".tmp-"
_DEL_PREFIX = ".del-"
_BAD_SUFFIX = ".bad"
_SUSPECT_SUFFIX = ".suspect"
BAD_REASON = "BAD_REASON"
_REASON_LIMIT = 4096
_EXPECTED = ".expected.json"
_NOT_A_MANIFEST = frozenset({errno.ENOENT, errno.ELOOP, errno.ENOTDIR, errno.EISDIR})
"""Errors opening a manifest that say it is not there (or not a file): 'invalid'. Any other
error (EMFILE, EACCES, EIO, ...) is the machine's, not the snapshot's."""


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


@dataclass(frozen=True)
class Entry:
    """One directory of the store, usable or not.

    ``status``: 'ok' (committed, manifest valid), 'bad' (taken out of use; ``reason``
    says why), 'suspect' (set aside: what it restores died soon after, repeatedly;
    ``reason``), 'invalid' (manifest missing or unreadable; ``reason``), 'partial'
    (being written or deleted, or left so by a crash), 'stale' (committed and valid, but
    taken of another command, env or cwd than the workload's now: kept, never restored).
    """

    id: str
    workload: str
    path: Path
    status: Status
    reason: str
    bytes: int
    created: float
    """Unix time: the manifest's, else the directory's modification time."""
    manifest: Manifest | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, for the admin API and the CLI."""
        m = self.manifest
        return {
            "id": self.id,
            "workload": self.workload,
            "path": str(self.path),
            "status": self.status,
            "reason": self.reason,
            "bytes": self.bytes,
            "created": self.created,
            "engine": f"{m.engine} {m.engine_version}".strip() if m else "",
            "checkpoint_seconds": m.checkpoint_seconds if m else None,
        }


def _new_id() -> str:
    # Sortable by creation time, unique across processes.
    return (
        time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        + f"-{time.time_ns() % 10**9:09d}-"
        + secrets.token_hex(2)
    )


class SnapshotStore:
    """Commits, lists, verifies and retires snapshots under one root directory.

    ``digest`` is the algorithm new manifests use, over pieces of ``chunk_bytes``;
    ``keep_bad`` bounds the ``ID.bad``
    directories kept per workload (older ones are deleted when one is marked bad).
    Raises StoreFailed when the root cannot be created.
    """

    def __init__(
        self,
        root: Path,
        *,
        digest: str = DEFAULT_DIGEST,
        keep_bad: int = 2,
        chunk_bytes: int = CHUNK_BYTES,
    ) -> None:
        self.root = Path(root)
        self.digest = digest
        self.chunk_bytes = chunk_bytes
        self.keep_bad = keep_bad
        # Snapshots mark_bad could not move out of use on disk: kept out of use here.
        self._quarantined: dict[Path, str] = {}
        self._warned: set[tuple[Path, str]] = set()
        self._expected: dict[str, Fingerprint] = {}
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            os.chmod(self.root, 0o700)
        except OSError as exc:
            what = f"creating the snapshot store {self.root}"
            raise StoreFailed(disk.explain(exc, what, self.root)) from exc

    def _workload_dir(self, workload: str) -> Path:
        if not _NAME_RE.match(workload):
            raise ValueError(f"invalid workload name {workload!r}")
        path = self.root / workload
        if not path.is_dir():
            path.mkdir(mode=0o700, exist_ok=True)
            disk.fsync_path(self.root, directory=True)
        return path

    # -- writing -----------------------------------------------------------------

    @contextlib.contextmanager
    def begin(self, workload: str) -> Iterator[PendingSnapshot]:
        """A fresh private temp directory ``.tmp-ID``, removed when the block ends
        without committing it -- except when the block raises ``CommitFailed`` for it:
        then its images are the only copy of a dumped process, so it is kept for the
        caller to restore from and ``discard``. (A caller that handles CommitFailed
        inside the block, e.g. by restoring from ``pending.path / "images"`` there, gets
        the directory removed when the block ends.) Raises StoreFailed when it cannot be
        created (ValueError for an unsafe workload name)."""
        snap_id = _new_id()
        try:
            path = self._workload_dir(workload) / f"{_TMP_PREFIX}{snap_id}"
            path.mkdir(mode=0o700)
        except OSError as exc:
            where = self.root / workload
            raise StoreFailed(
                disk.explain(exc, f"creating a snapshot directory for {workload}", where)
            ) from exc
        pending = PendingSnapshot(snap_id, workload, path)
        try:
            yield pending
        except CommitFailed as exc:
            if exc.pending_path != path:
                self.discard(pending)
            raise
        except BaseException:
            self.discard(pending)
            raise
        else:
            if disk.lexists(path):
                self.discard(pending)

    def discard(self, pending: PendingSnapshot) -> None:
        """Remove a pending snapshot's directory (after a failed commit, once its images
        are no longer needed). Never raises: what cannot be removed is logged and left
        for ``clean_partial`` at the next start."""
        self._remove_tree(pending.path, f"pending snapshot {pending.id}")

    def commit(
        self,
        pending: PendingSnapshot,
        *,
        engine: str,
        engine_version: str = "",
        checkpoint_seconds: float = 0.0,
        meta: Mapping[str, Any] | None = None,
    ) -> Snapshot:
        """Digest every file, write the manifest last, and rename into place atomically.

        Raises CommitFailed when any step fails (disk full, quota, I/O error, file size
        limit, ...): then nothing is committed, no manifest is left behind, and the
        files under ``pending.path`` are untouched.
        """
        step = "making the images durable"
        names: list[str] = []
        manifest_path = pending.path / MANIFEST_NAME
        wrote_manifest = False
        needed = 0
        try:
            for dirpath, _dirs, files in os.walk(pending.path, topdown=False):
                for name in files:
                    full = Path(dirpath) / name
                    info = os.lstat(full)
                    if not stat.S_ISREG(info.st_mode):
                        raise CommitFailed(
                            f"commit of {pending.id}: {full} is not a regular file; "
                            "a snapshot holds only regular files",
                            pending.path,
                        )
                    needed += info.st_size
                    os.chmod(full, 0o600)
                    disk.fsync_path(full)
                    names.append(str(full.relative_to(pending.path)))
                os.chmod(dirpath, 0o700)
                disk.fsync_path(Path(dirpath), directory=True)
            step = "digesting the images"
            manifest = Manifest(
                id=pending.id,
                workload=pending.workload,
                engine=engine,
                created=time.time(),
                files=digest_files(pending.path, names, self.digest, self.chunk_bytes),
                engine_version=engine_version,
                checkpoint_seconds=checkpoint_seconds,
                meta=dict(meta or {}),
                digest=self.digest,
                chunk_bytes=self.chunk_bytes,
            )
            step = "writing the manifest"
            text = manifest.to_json().encode()
            needed = len(text)
            fd = disk.create(manifest_path)
            wrote_manifest = True
            with os.fdopen(fd, "wb") as f:
                f.write(text)
                f.flush()
                step = "syncing the manifest"
                disk.sync(f.fileno())
            step = "syncing the snapshot directory"
            disk.fsync_path(pending.path, directory=True)
            step = "renaming the snapshot into place"
            final = pending.path.parent / pending.id
            disk.rename(pending.path, final)
        except OSError as exc:
            if wrote_manifest:
                with contextlib.suppress(OSError):
                    manifest_path.unlink()
            raise self._commit_failed(pending, exc, step, needed) from exc
        try:
            disk.fsync_path(final.parent, directory=True)
        except OSError as exc:
            # The rename may not survive a crash: undo it, so that the caller is told
            # the truth (not committed) and finds the images where it expects them.
            try:
                disk.rename(final, pending.path)
            except OSError:
                log.error(
                    "snapshot %s committed but its directory entry may not be durable "
                    "(%s); keeping it: its manifest is complete",
                    pending.id,
                    disk.explain(exc, "syncing the workload directory", final.parent),
                )
            else:
                with contextlib.suppress(OSError):
                    manifest_path.unlink()
                raise self._commit_failed(
                    pending, exc, "syncing the workload directory", 0
                ) from exc
        log.info(
            "snapshot committed workload=%s id=%s bytes=%d digest=%s",
            pending.workload,
            pending.id,
            manifest.total_bytes,
            manifest.digest,
        )
        return Snapshot(final, manifest)

    def _commit_failed(
        self, pending: PendingSnapshot, exc: OSError, step: str, needed: int
    ) -> CommitFailed:
        reason = disk.explain(exc, step, pending.path, needed)
        return CommitFailed(
            f"commit of snapshot {pending.id} ({pending.workload}): {reason}; "
            f"nothing was committed, the images are intact in {pending.path}",
            pending.path,
        )

    # -- reading -----------------------------------------------------------------

    def _read_manifest(self, path: Path) -> Manifest:
        """The manifest of ``path``: ManifestInvalid when it is missing or malformed,
        StoreFailed when the machine refused to read it now (the snapshot may be fine)."""
        try:
            fd = os.open(path / MANIFEST_NAME, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise ManifestInvalid("no manifest (deleted, or never written)") from None
        except OSError as exc:
            if exc.errno in _NOT_A_MANIFEST:
                raise ManifestInvalid(f"manifest unreadable ({exc.strerror or exc})") from None
            raise StoreFailed(disk.explain(exc, "reading a manifest", path)) from exc
        try:
            with os.fdopen(fd, "rb") as f:
                text = f.read(MAX_MANIFEST_BYTES + 1)
        except OSError as exc:
            raise StoreFailed(disk.explain(exc, "reading a manifest", path)) from exc
        return Manifest.from_json(text)

    # -- what the workload is now ------------------------------------------------

    def expect(self, workload: str, fingerprint: Fingerprint) -> None:
        """Say what ``workload`` starts now: committed snapshots whose manifest records
        another fingerprint are listed 'stale' (kept, never returned by ``list``/``latest``).
        Recorded in ``WORKLOAD/.expected.json`` too, so that `dormant snapshots list` sees
        it; a failure to write it is logged (the expectation holds in this process)."""
        if self._expected.get(workload) == dict(fingerprint):
            return
        self._expected[workload] = dict(fingerprint)
        try:
            wdir = self._workload_dir(workload)
            tmp = wdir / f"{_EXPECTED}.{os.getpid()}"
            tmp.write_text(json.dumps(dict(fingerprint), sort_keys=True))
            os.replace(tmp, wdir / _EXPECTED)
        except OSError as exc:
            log.warning("%s", disk.explain(exc, f"recording what {workload} starts", self.root))

    def _expectation(self, workload: str) -> Fingerprint | None:
        found = self._expected.get(workload)
        if found is not None:
            return found
        try:
            data = json.loads((self.root / workload / _EXPECTED).read_text())
        except (OSError, ValueError):
            return None
        if isinstance(data, dict) and all(isinstance(v, str) for v in data.values()):
            return data
        return None

    def _committed(self, path: Path, workload: str) -> Entry:
        if path in self._quarantined:
            entry = self._other(path, workload, path.name, "bad", self._quarantined[path])
            with contextlib.suppress(ManifestInvalid, StoreFailed):
                m = self._read_manifest(path)
                entry = Entry(entry.id, workload, path, "bad", entry.reason, entry.bytes, m.created)
            return entry
        try:
            m = self._read_manifest(path)
            if m.id != path.name or m.workload != workload:
                raise ManifestInvalid(
                    f"manifest says {m.workload}/{m.id}, but it is in {workload}/{path.name}"
                )
        except ManifestInvalid as exc:
            if (path, str(exc)) not in self._warned:
                self._warned.add((path, str(exc)))
                log.warning("snapshot %s is unusable: %s", path, exc)
            return self._other(path, workload, path.name, "invalid", str(exc))
        recorded = m.meta.get("fingerprint")
        changed = stale_parts(recorded, self._expectation(workload))
        if changed:
            why = (
                f"stale: taken of another {', '.join(changed)} than the workload has now; "
                "kept, never restored (`dormant snapshots delete` removes it)"
            )
            if (path, why) not in self._warned:
                self._warned.add((path, why))
                log.warning("snapshot %s/%s is %s", workload, m.id, why)
            return Entry(m.id, workload, path, "stale", why, m.total_bytes, m.created, m)
        return Entry(m.id, workload, path, "ok", "", m.total_bytes, m.created, m)

    def _other(self, path: Path, workload: str, snap_id: str, status: Status, why: str) -> Entry:
        try:
            created = path.stat().st_mtime
        except OSError:
            created = 0.0
        return Entry(snap_id, workload, path, status, why, disk.disk_bytes(path), created)

    def _bad(self, path: Path, workload: str, status: Status = "bad") -> Entry:
        try:
            with open(path / BAD_REASON, errors="replace") as f:
                reason = f.read(_REASON_LIMIT).strip() or "no reason recorded"
        except OSError as exc:
            reason = f"reason not recorded ({exc.strerror or exc})"
        snap_id = path.name.removesuffix(_BAD_SUFFIX).removesuffix(_SUSPECT_SUFFIX)
        entry = self._other(path, workload, snap_id, status, reason)
        with contextlib.suppress(ManifestInvalid, StoreFailed):
            m = self._read_manifest(path)
            entry = Entry(entry.id, workload, path, status, reason, entry.bytes, m.created, m)
        return entry

    def _scan(self, workload: str) -> builtins.list[Entry]:
        wdir = self.root / workload
        try:
            names = sorted(os.listdir(wdir))
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as exc:
            raise StoreFailed(disk.explain(exc, f"listing {wdir}", wdir)) from exc
        found = []
        for name in names:
            path = wdir / name
            try:
                if not stat.S_ISDIR(os.lstat(path).st_mode):
                    continue
            except OSError:
                continue
            if name.startswith(_TMP_PREFIX):
                entry = self._other(
                    path,
                    workload,
                    name[len(_TMP_PREFIX) :],
                    "partial",
                    "being written, or left by a crash (removed at the next start)",
                )
            elif name.startswith(_DEL_PREFIX):
                entry = self._other(
                    path, workload, name[len(_DEL_PREFIX) :], "partial", "being deleted"
                )
            elif name.startswith("."):
                continue
            elif name.endswith(_BAD_SUFFIX):
                entry = self._bad(path, workload)
            elif name.endswith(_SUSPECT_SUFFIX):
                entry = self._bad(path, workload, "suspect")
            else:
                entry = self._committed(path, workload)
            if disk.lexists(path):  # not renamed or removed meanwhile
                found.append(entry)
        return found

    def workloads(self) -> builtins.list[str]:
        """Names of the workloads that have a directory here."""
        try:
            return sorted(
                name
                for name in os.listdir(self.root)
                if _NAME_RE.match(name) and disk.is_dir(self.root / name)
            )
        except OSError as exc:
            raise StoreFailed(disk.explain(exc, f"listing {self.root}", self.root)) from exc

    def entries(self, workload: str | None = None) -> builtins.list[Entry]:
        """Every snapshot directory with its status, newest first (all workloads when
        ``workload`` is None). Raises StoreFailed only when a directory cannot be listed."""
        if workload is not None and not _NAME_RE.match(workload):
            return []
        found = []
        for name in [workload] if workload else self.workloads():
            found += self._scan(name)
        return sorted(found, key=lambda e: (e.created, e.id), reverse=True)

    def list(self, workload: str | None = None) -> builtins.list[Snapshot]:
        """Usable snapshots (committed, valid manifest, not bad), newest first."""
        return [
            Snapshot(e.path, e.manifest)
            for e in self.entries(workload)
            if e.status == "ok" and e.manifest is not None
        ]

    def latest(self, workload: str) -> Snapshot | None:
        """The newest usable snapshot of ``workload``, or None."""
        snaps = self.list(workload)
        return snaps[0] if snaps else None

    def get(self, snapshot_id: str) -> Snapshot:
        """The usable snapshot ``snapshot_id``; SnapshotNotFound (saying why) otherwise."""
        entry = self.entry(snapshot_id)
        if entry.status != "ok" or entry.manifest is None:
            raise SnapshotNotFound(
                f"snapshot {snapshot_id!r} is not usable ({entry.status}: {entry.reason})"
            )
        return Snapshot(entry.path, entry.manifest)

    def entry(self, snapshot_id: str) -> Entry:
        """Any entry by id (``ID``, ``ID.bad`` or ``ID.suspect``), whatever its status."""
        wanted = snapshot_id.removesuffix(_BAD_SUFFIX).removesuffix(_SUSPECT_SUFFIX)
        for entry in self.entries():
            if entry.id == wanted:
                return entry
        raise SnapshotNotFound(f"no snapshot {snapshot_id!r} under {self.root}")

    def _verify(self, snapshot: Snapshot) -> None:
        """Raise SnapshotCorrupt unless every file matches the manifest (size, then the
        digest of every chunk), no file was added and each is a regular file. A file that
        cannot be read is a problem too (never an OSError) -- unless the machine refused to
        read it now (too many open files, permission denied, an I/O error: StoreFailed,
        and nothing is said about the snapshot)."""
        problems: list[str] = []
        expected = snapshot.manifest.files
        present: dict[str, os.stat_result] = {}

        def unreadable(exc: OSError) -> None:
            if exc.errno in CANNOT_READ_NOW:
                raise exc
            problems.append(f"{exc.filename or snapshot.path}: unreadable ({exc.strerror})")

        for dirpath, _dirs, files in os.walk(snapshot.path, onerror=unreadable):
            for f in files:
                full = Path(dirpath) / f
                try:
                    present[str(full.relative_to(snapshot.path))] = os.lstat(full)
                except OSError as exc:
                    unreadable(exc)
        present.pop(MANIFEST_NAME, None)
        problems += [f"{name}: missing" for name in sorted(set(expected) - set(present))]
        problems += [f"{name}: not in manifest" for name in sorted(set(present) - set(expected))]
        for name in sorted(set(expected) & set(present)):
            st = present[name]
            if not stat.S_ISREG(st.st_mode):
                problems.append(f"{name}: not a regular file")
            elif st.st_size != expected[name].size:
                problems.append(f"{name}: size {st.st_size} != {expected[name].size}")
        if not problems:
            problems = check_files(snapshot.path, snapshot.manifest, expected)
        if problems:
            raise SnapshotCorrupt(snapshot.id, problems)

    def verify(self, snapshot: Snapshot) -> None:
        """Raise SnapshotCorrupt unless every file matches the manifest (size, then the
        digest of every chunk), no file was added and each is a regular file; StoreFailed
        when the machine refused to read them now (the snapshot may be fine)."""
        try:
            self._verify(snapshot)
        except OSError as exc:
            raise StoreFailed(
                disk.explain(exc, f"verifying snapshot {snapshot.id}", snapshot.path)
            ) from exc

    def verify_during(
        self, snapshot: Snapshot, work: Callable[[], T], undo: Callable[[T], None]
    ) -> T:
        """Verify ``snapshot`` on another thread while ``work`` runs (e.g. a CRIU restore,
        which reads the same pages), so that verification costs almost no wall time.

        Returns ``work()``'s result once both are done and every digest matched. When
        verification fails, ``undo(result)`` runs first (e.g. end the restored tree, which
        must not have served anything yet) and SnapshotCorrupt is raised -- also when
        ``work`` failed too (the corruption is the likelier cause). When verification could
        not be done now (StoreFailed: too many open files, ...) ``undo(result)`` runs too and
        StoreFailed is raised. Otherwise an exception from ``work`` propagates. No thread
        outlives the call.
        """
        with ThreadPoolExecutor(1, thread_name_prefix="verify") as pool:
            verifying = pool.submit(self.verify, snapshot)
            try:
                result = work()
            except BaseException as exc:
                try:
                    verifying.result()
                except SnapshotCorrupt as corrupt:
                    raise corrupt from exc
                raise
            try:
                verifying.result()
            except BaseException:  # corrupt, or not verified: it must never run
                undo(result)
                raise
        return result

    # -- retiring ----------------------------------------------------------------

    def mark_bad(self, snapshot: Snapshot, reason: str) -> Path:
        """Take a snapshot out of use: renamed ``ID.bad`` with the reason in BAD_REASON;
        older ``.bad`` directories of the workload beyond ``keep_bad`` are deleted.
        Returns where the snapshot is now.

        Never raises: it logs and carries on. If the rename fails, the manifest is
        removed instead; if that fails too, this store keeps the snapshot out of use
        in memory (``entries`` shows it 'bad'). A BAD_REASON that cannot be written
        leaves the snapshot bad with the reason "reason not recorded".
        """
        return self._set_aside(snapshot, reason, _BAD_SUFFIX)

    def mark_suspect(self, snapshot: Snapshot, reason: str) -> Path:
        """Set a snapshot aside as suspect: it verifies and restores, but what it restores
        dies soon after. Renamed ``ID.suspect`` (kept, with the reason in BAD_REASON),
        never restored again; bounded by ``keep_bad`` like ``.bad``. Never raises, as
        ``mark_bad``."""
        return self._set_aside(snapshot, reason, _SUSPECT_SUFFIX)

    def _set_aside(self, snapshot: Snapshot, reason: str, suffix: str) -> Path:
        what = "suspect" if suffix == _SUSPECT_SUFFIX else "bad"
        path = snapshot.path
        bad = path.with_name(path.name + suffix)
        try:
            if disk.lexists(bad):
                self._remove_tree(bad, f"old {bad.name}")
            disk.rename(path, bad)
        except OSError as exc:
            log.error("%s", disk.explain(exc, f"marking snapshot {snapshot.id} {what}", path))
            self._quarantined[path] = reason
            try:
                (path / MANIFEST_NAME).unlink()
                log.warning("snapshot %s disabled by removing its manifest", snapshot.id)
            except OSError:
                log.error("snapshot %s kept out of use in memory only: %s", snapshot.id, reason)
            return path
        try:
            fd = os.open(bad / BAD_REASON, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(reason + "\n")
        except OSError as exc:
            log.error("%s", disk.explain(exc, f"recording why {snapshot.id} is {what}", bad))
        log.warning("snapshot %s marked %s: %s", snapshot.id, what, reason)
        self._bound_bad(snapshot.workload, suffix)
        return bad

    def _bound_bad(self, workload: str, suffix: str = _BAD_SUFFIX) -> builtins.list[str]:
        try:
            bad = [e for e in self._scan(workload) if e.path.name.endswith(suffix)]
        except StoreFailed as exc:
            log.error("%s", exc)
            return []
        bad.sort(key=lambda e: e.id, reverse=True)  # ids sort by creation time
        return [e.id for e in bad[max(self.keep_bad, 0) :] if self._delete_quietly(e.path)]

    def delete(self, snapshot: Snapshot | Entry) -> None:
        """Delete a snapshot (or any entry). It is renamed out of use first, so a
        deletion that fails half-way never leaves a usable snapshot. Raises StoreFailed."""
        path = snapshot.path
        name = path.name.removeprefix(_TMP_PREFIX).removeprefix(_DEL_PREFIX)
        doomed = path.with_name(_DEL_PREFIX + name)
        if path != doomed:
            try:
                disk.rename(path, doomed)
            except FileNotFoundError:
                return
            except OSError as exc:
                with contextlib.suppress(OSError):
                    (path / MANIFEST_NAME).unlink()
                raise StoreFailed(disk.explain(exc, f"deleting {path}", path)) from exc
        problems = disk.rmtree(doomed)
        if problems:
            raise StoreFailed(
                f"deleting {path} failed: {'; '.join(problems[:3])}; "
                f"left as {doomed.name} (removed at the next start)"
            )

    def _delete_quietly(self, path: Path) -> bool:
        try:
            self.delete(Entry(path.name, path.parent.name, path, "partial", "", 0, 0.0))
            return True
        except StoreFailed as exc:
            log.error("%s", exc)
            return False

    def _remove_tree(self, path: Path, what: str) -> bool:
        problems = disk.rmtree(path)
        if problems:
            log.error(
                "could not remove %s at %s: %s (left for the next start)",
                what,
                path,
                "; ".join(problems[:3]),
            )
        return not problems

    def prune(self, workload: str, keep: int) -> builtins.list[str]:
        """Retention for ``workload``: keep the newest ``keep`` usable snapshots and delete
        older ones; mark 'invalid' directories bad (then bounded with the others by
        ``keep_bad``); finish deletions a crash interrupted. Returns the deleted ids.
        Never raises: what cannot be deleted is logged and retried next time."""
        try:
            entries = self._scan(workload)
        except StoreFailed as exc:
            log.error("%s", exc)
            return []
        deleted = []
        usable = sorted(
            (e for e in entries if e.status == "ok"), key=lambda e: (e.created, e.id), reverse=True
        )
        for entry in usable[max(keep, 0) :]:
            if self._delete_quietly(entry.path):
                deleted.append(entry.id)
        for entry in entries:
            if entry.status == "invalid":
                self._retire_invalid(entry)
            elif entry.path.name.startswith(_DEL_PREFIX):
                self._delete_quietly(entry.path)
        return deleted + self._bound_bad(workload)

    def _retire_invalid(self, entry: Entry) -> None:
        bad = entry.path.with_name(entry.path.name + _BAD_SUFFIX)
        try:
            if disk.lexists(bad):
                self._remove_tree(bad, f"old {bad.name}")
            disk.rename(entry.path, bad)
            (bad / BAD_REASON).write_text(entry.reason + "\n")
            log.warning("snapshot %s marked bad: %s", entry.id, entry.reason)
        except OSError as exc:
            log.error("%s", disk.explain(exc, f"retiring unusable snapshot {entry.id}", entry.path))

    def clean_partial(self) -> builtins.list[Path]:
        """Remove temp directories left by a crash during a checkpoint or a deletion.
        Never raises: what cannot be removed is logged and left."""
        removed = []
        try:
            names = self.workloads()
        except StoreFailed as exc:
            log.error("%s", exc)
            return []
        for name in names:
            try:
                children = sorted(os.listdir(self.root / name))
            except OSError as exc:
                log.error("%s", disk.explain(exc, f"listing {self.root / name}", self.root / name))
                continue
            for child in children:
                path = self.root / name / child
                if child.startswith((_TMP_PREFIX, _DEL_PREFIX)) and self._remove_tree(
                    path, "a partial snapshot"
                ):
                    removed.append(path)
        return removed
