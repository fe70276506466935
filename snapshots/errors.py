"""The state plane's exception tree.

Every error says what happened and what to do about it; the activator maps
them to HTTP once, at its edge.
"""

from __future__ import annotations

__all__ = [
    "CheckpointFailed",
    "EngineUnavailable",
    "RestoreFailed",
    "SnapshotCorrupt",
    "SnapshotError",
    "SnapshotNotFound",
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


class EngineUnavailable(SnapshotError):
    """The checkpoint engine cannot run on this machine (e.g. no usable CRIU)."""


class CheckpointFailed(SnapshotError):
    """A checkpoint did not complete; the process it targeted was left running if possible."""


class RestoreFailed(SnapshotError):
    """A restore did not produce a running process."""
