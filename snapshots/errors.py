"""The state plane's exception tree.

Every error says what happened and what to do about it; the activator maps
them to HTTP once, at its edge::

    SnapshotError
     ├── SnapshotNotFound     no such snapshot (or none usable)
     ├── SnapshotCorrupt      a snapshot failed verification
     ├── ManifestInvalid      a manifest is not JSON of the expected shape
     ├── StoreFailed          the store's filesystem refused an operation (ENOSPC, EIO, ...)
     │    └── CommitFailed    commit could not make a snapshot durable; its images are kept
     ├── EngineUnavailable    no usable checkpoint engine here
     ├── CheckpointFailed     a checkpoint did not complete
     └── RestoreFailed        a restore did not produce a running process
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "CheckpointFailed",
    "CommitFailed",
    "EngineDumpFailed",
    "EngineRestoreFailed",
    "EngineUnavailable",
    "ManifestInvalid",
    "RestoreFailed",
    "SnapshotCorrupt",
    "SnapshotError",
    "SnapshotNotFound",
    "StoreFailed",
]


class SnapshotError(Exception):
    """Base class of everything the snapshots package raises."""


class SnapshotNotFound(SnapshotError):
    """No snapshot with that id (or none at all for that workload)."""


class SnapshotCorrupt(SnapshotError):
    """A snapshot failed verification: a digest, size or file does not match its manifest."""

    def __init__(self, snapshot_id: str, problems: list[str]) -> None:
        self.snapshot_id = snapshot_id
        self.problems = problems
        shown = "; ".join(problems[:5]) + (
            f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
        )
        super().__init__(f"snapshot {snapshot_id} failed verification: {shown}")


class ManifestInvalid(SnapshotError):
    """A manifest is unreadable, not JSON, or JSON of the wrong shape. The store treats
    its snapshot as unusable (listed with this reason, retired by retention)."""


class StoreFailed(SnapshotError):
    """The snapshot store's filesystem refused an operation (disk full, quota, I/O error,
    read-only, file size limit). The message names the path, the error and what to do."""


class CommitFailed(StoreFailed):
    """``SnapshotStore.commit`` could not make a snapshot durable. Nothing was committed,
    and the pending directory is left intact: ``images`` holds the checkpoint's images (the
    only copy of the process's memory after a dump). Restore from them, then call
    ``SnapshotStore.discard`` with the pending snapshot."""

    def __init__(self, message: str, pending_path: Path) -> None:
        super().__init__(message)
        self.pending_path = pending_path


class EngineUnavailable(SnapshotError):
    """The checkpoint engine cannot run on this machine (e.g. no usable CRIU)."""


class EngineDumpFailed(SnapshotError):
    """The engine's dump did not complete; the process it targeted was left running if
    possible."""


class EngineRestoreFailed(SnapshotError):
    """The engine's restore did not produce a running process."""


CheckpointFailed = EngineDumpFailed
"""Alias kept for the package face (see the module's docstring)."""
RestoreFailed = EngineRestoreFailed
"""Alias kept for the package face (see the module's docstring)."""
