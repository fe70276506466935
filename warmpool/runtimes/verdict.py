"""What a failed restore says about its snapshot: retire it, or keep it and try later.

A failure of the environment is never a failure of the snapshot. Pure policy, one table
(docs/failure-semantics.md, "A failed restore: retire or keep"); ``verdict`` applies its
rows in this order to the exception and the exceptions it was raised from:

1. the snapshot failed verification (a digest, a size, a missing file, a file the process
   had mapped changed) or its manifest is unreadable: **retire**;
2. a timeout (criu's ``restore_timeout``, or the restored server not answering in time):
   **keep** — a slow or loaded machine is not a broken snapshot;
3. an OS error of the environment (``EADDRINUSE``, ``EMFILE``, ``ENFILE``, ``ENOSPC``,
   ``EDQUOT``, ``EPERM``, ``EACCES``, ``ENOMEM``, ``EAGAIN``, ``EROFS``, ``EIO``): **keep**;
4. the restored server exited before it answered: what ran was the images: **retire**;
5. CRIU's log names a cause of the environment (``Can't bind inet socket``, ``Address already
   in use``, ``Too many open files``, ``No space left``, ``Operation not permitted``, ...),
   or criu could not even write its log, or was killed by a signal: **keep**;
6. anything else CRIU refused: an image it cannot restore: **retire**.

Only ``retire`` takes a snapshot out of use; ``keep`` leaves it as it is and the owner
answers 503 with ``Retry-After`` and the reason (``warmpool.lifecycle``).
"""

from __future__ import annotations

import errno
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum

from snapshots.errors import ManifestInvalid, SnapshotCorrupt
from warmpool.errors import StartFailed

__all__ = ["ENVIRONMENT_ERRNOS", "RestoreVerdict", "VerdictKind", "verdict"]


class VerdictKind(StrEnum):
    RETIRE = "retire"
    KEEP = "keep"


@dataclass(frozen=True)
class RestoreVerdict:
    """``kind`` and the row of the table that decided it (for the log and the docs)."""

    kind: VerdictKind
    why: str

    @property
    def retire(self) -> bool:
        return self.kind is VerdictKind.RETIRE


ENVIRONMENT_ERRNOS = frozenset(
    {
        errno.EADDRINUSE,
        errno.EMFILE,
        errno.ENFILE,
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EPERM,
        errno.EACCES,
        errno.ENOMEM,
        errno.EAGAIN,
        errno.EROFS,
        errno.EIO,
    }
)
"""OS errors that say the machine refused, not that the images are wrong."""

_ENVIRONMENT_TEXT = (
    "Can't bind inet socket",
    "Address already in use",
    "Too many open files",
    "No space left on device",
    "Disk quota exceeded",
    "Operation not permitted",
    "Permission denied",
    "Cannot allocate memory",
    "Resource temporarily unavailable",
    "Read-only file system",
    "(no criu log)",
)
"""Fragments of CRIU's (or the runtime's) message that name a cause in the environment."""


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def verdict(exc: BaseException) -> RestoreVerdict:
    """The verdict on a snapshot whose restore failed with ``exc`` (see the module's rules)."""
    chain = list(_chain(exc))
    for e in chain:  # rule 1
        if isinstance(e, SnapshotCorrupt):
            return RestoreVerdict(VerdictKind.RETIRE, "failed verification")
        if isinstance(e, ManifestInvalid):
            return RestoreVerdict(VerdictKind.RETIRE, "manifest unreadable")
    for e in chain:  # rule 2
        if isinstance(e, (TimeoutError, subprocess.TimeoutExpired)):
            return RestoreVerdict(VerdictKind.KEEP, "timed out")
    for e in chain:  # rule 3
        if isinstance(e, OSError) and e.errno in ENVIRONMENT_ERRNOS:
            return RestoreVerdict(
                VerdictKind.KEEP, f"the machine refused ({errno.errorcode[e.errno]})"
            )
    if isinstance(exc, StartFailed):  # rule 4
        return RestoreVerdict(VerdictKind.RETIRE, "the restored server exited")
    text = str(exc)
    for fragment in _ENVIRONMENT_TEXT:  # rule 5
        if fragment in text:
            return RestoreVerdict(VerdictKind.KEEP, f"the machine refused ({fragment})")
    for e in chain:
        if isinstance(e, subprocess.CalledProcessError) and e.returncode < 0:
            return RestoreVerdict(VerdictKind.KEEP, f"criu was killed by signal {-e.returncode}")
    return RestoreVerdict(VerdictKind.RETIRE, "criu refused the images")  # rule 6
