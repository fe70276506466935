"""The resource plane's exception tree. Runtimes translate foreign errors (OSError,
subprocess, snapshot-store, HTTP-client) into these at their boundary, so callers
catch ``WarmpoolError`` and nothing else."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from warmpool.runtime import Instance

__all__ = [
    "CheckpointFailed",
    "DeviceUnavailable",
    "NotSupported",
    "RestoreDeferred",
    "RestoreFailed",
    "ResumeFailed",
    "StartFailed",
    "SuspendFailed",
    "WarmpoolError",
]


class WarmpoolError(Exception):
    """Base class of everything the warmpool package raises."""


class StartFailed(WarmpoolError):
    """An instance did not become healthy: its command exited, or the health check timed out."""


class RestoreFailed(WarmpoolError):
    """A snapshot could not be restored (corrupt, changed files, CRIU failed, or the
    restored server did not answer). The runtime has retired that snapshot already;
    ``snapshot_id`` names it."""

    def __init__(self, message: str, snapshot_id: str = "") -> None:
        super().__init__(message)
        self.snapshot_id = snapshot_id


class RestoreDeferred(WarmpoolError):
    """The environment refused a restore (the snapshot's port is taken, file descriptors or
    disk space are exhausted, permission denied, a timeout, the store cannot be read now):
    the snapshot is fine and kept as it is. Nothing must boot over it; the owner answers
    503 with ``Retry-After: retry_after`` and this message. ``snapshot_id`` names it when
    one was found."""

    def __init__(self, message: str, snapshot_id: str = "", retry_after: float = 5.0) -> None:
        super().__init__(message)
        self.snapshot_id = snapshot_id
        self.retry_after = retry_after


class CheckpointFailed(WarmpoolError):
    """A checkpoint did not produce a committed snapshot.

    ``instance`` is what serves now: the original instance when it was never stopped,
    a replacement restored from the uncommitted images when the dump succeeded but the
    commit did not, or None when the process is gone and nothing could bring it back
    (the message then says what was lost)."""

    def __init__(self, message: str, instance: Instance | None = None) -> None:
        super().__init__(message)
        self.instance = instance


class NotSupported(WarmpoolError):
    """The runtime (or its engine) cannot do this here; the message says why."""


class SuspendFailed(WarmpoolError):
    """Parking an instance's device memory in host RAM failed; the instance was left
    running and serving where the engine could (the message says if it could not)."""


class ResumeFailed(WarmpoolError):
    """Bringing a suspended instance's memory back failed; it cannot serve until it is
    stopped and booted (or restored) again."""


class DeviceUnavailable(WarmpoolError):
    """The device cannot be used or measured here (no NVIDIA driver, no NVML); the
    message says why."""
