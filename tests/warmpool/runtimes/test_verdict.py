"""The table of docs/failure-semantics.md, "A failed restore: retire or keep": every row."""

from __future__ import annotations

import errno
import os
import subprocess

import pytest

from snapshots.errors import EngineRestoreFailed, ManifestInvalid, SnapshotCorrupt, StoreFailed
from warmpool.errors import StartFailed
from warmpool.runtimes.verdict import verdict


def _from(error: BaseException, cause: BaseException) -> BaseException:
    error.__cause__ = cause
    return error


def _os(code: int) -> OSError:
    return OSError(code, os.strerror(code))


def _criu(log: str, code: int = 1) -> BaseException:
    return _from(
        EngineRestoreFailed(f"criu restore failed (exit {code}): {log}"),
        subprocess.CalledProcessError(code, ["criu", "restore"]),
    )


ROWS = [
    # (failure, verdict)
    (SnapshotCorrupt("s", ["images/pages-1.img: blake3 mismatch"]), "retire"),
    (SnapshotCorrupt("s", ["changed since checkpoint: /m/w.bin: size is 9, was 8"]), "retire"),
    (ManifestInvalid("manifest is not JSON"), "retire"),
    (
        _criu("Error (criu/sk-inet.c:817): Can't bind inet socket (id 5): Address already in use"),
        "keep",
    ),
    (_criu("Error (criu/files.c:1200): Too many open files"), "keep"),
    (_criu("Error (criu/cr-restore.c:1500): No space left on device"), "keep"),
    (_criu("Error (criu/cr-restore.c:1500): can't fork: Operation not permitted"), "keep"),
    (_criu("Error (criu/cr-restore.c:1500): Cannot allocate memory"), "keep"),
    (_criu("(no criu log)"), "keep"),
    (_criu("killed", code=-9), "keep"),
    (
        _from(
            EngineRestoreFailed("criu restore timed out after 60s"),
            subprocess.TimeoutExpired("criu", 60),
        ),
        "keep",
    ),
    (_from(StartFailed("t: not healthy after 60s (ConnectError)"), TimeoutError()), "keep"),
    (_from(EngineRestoreFailed("criu restore left no pid file"), _os(errno.EMFILE)), "keep"),
    (_from(StoreFailed("reading a manifest: Too many open files"), _os(errno.EMFILE)), "keep"),
    (_os(errno.EMFILE), "keep"),
    (_os(errno.ENFILE), "keep"),
    (_os(errno.ENOSPC), "keep"),
    (_os(errno.EDQUOT), "keep"),
    (_os(errno.EPERM), "keep"),
    (_os(errno.EACCES), "keep"),
    (_os(errno.ENOMEM), "keep"),
    (_os(errno.EADDRINUSE), "keep"),
    (StartFailed("t: command killed by signal 11; last output: Segmentation fault"), "retire"),
    (StartFailed("t: command exited with status 1; last output: Address already in use"), "retire"),
    (_criu("Error (criu/image.c:380): Unexpected EOF on (empty-image) 12"), "retire"),
    (_criu("Error (criu/protobuf.c:72): magic mismatch 0 for pstree"), "retire"),
]


@pytest.mark.parametrize(("failure", "expected"), ROWS, ids=[str(r[0])[:60] for r in ROWS])
def test_every_row_of_the_table(failure: BaseException, expected: str) -> None:
    assert verdict(failure).kind.value == expected


def test_verification_wins_over_a_refusal_beside_it() -> None:
    """A corrupt snapshot whose restore also hit EMFILE: still retired (rule 1 first)."""
    corrupt = _from(SnapshotCorrupt("s", ["x: blake3 mismatch"]), _os(errno.EMFILE))
    assert verdict(corrupt).retire
