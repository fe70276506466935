"""State plane: checkpoint engines and the snapshot store."""

from snapshots.criu import MIN_VERSION, CriuEngine, CriuInfo, find_criu, kill_leftovers, probe_criu
from snapshots.errors import (
    CheckpointFailed,
    CommitFailed,
    EngineDumpFailed,
    EngineRestoreFailed,
    EngineUnavailable,
    ManifestInvalid,
    RestoreFailed,
    SnapshotCorrupt,
    SnapshotError,
    SnapshotNotFound,
    StoreFailed,
)
from snapshots.manifest import FileEntry, Manifest
from snapshots.procfs import changed_files, mapped_files, process_tree, stdio_pipe_inode
from snapshots.store import Entry, PendingSnapshot, Snapshot, SnapshotStore

__all__ = [
    "MIN_VERSION",
    "CheckpointFailed",
    "CommitFailed",
    "CriuEngine",
    "CriuInfo",
    "EngineDumpFailed",
    "EngineRestoreFailed",
    "EngineUnavailable",
    "Entry",
    "FileEntry",
    "Manifest",
    "ManifestInvalid",
    "PendingSnapshot",
    "RestoreFailed",
    "Snapshot",
    "SnapshotCorrupt",
    "SnapshotError",
    "SnapshotNotFound",
    "SnapshotStore",
    "StoreFailed",
    "changed_files",
    "find_criu",
    "kill_leftovers",
    "mapped_files",
    "probe_criu",
    "process_tree",
    "stdio_pipe_inode",
]
