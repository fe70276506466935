"""`criu check` in an unprivileged container: the two errors every such container shows (no
/dev/net/tun, /proc/sys read-only) do not make CRIU unusable; any other error does. The
outputs are what CRIU 4.2.1 printed in a real pod (tests/kube/test_realnode.py)."""

from __future__ import annotations

import pytest

from snapshots.criu import check_passes

TUN = "Error (criu/tun.c:85): tun: Unable to create tun: No such file or directory"
LAST_PID = (
    "Error (criu/cr-check.c:160): sys/kernel/ns_last_pid sysctl is inaccessible: "
    "Read-only file system"
)
KDAT = "Warn  (criu/kerndat.c:1290): Can't keep kdat cache on non-tempfs"
BAD = "Warn  (criu/cr-check.c:1674): Does not look good."
VDSO = "Error (criu/vdso.c:123): vdso: Unexpected rt vDSO area bounds"


@pytest.mark.parametrize(
    ("returncode", "lines", "passes"),
    [
        (0, ["Looks good."], True),
        (1, [TUN, KDAT, LAST_PID, BAD], True),  # an unprivileged container
        (1, [TUN, BAD], True),
        (1, [TUN, VDSO, LAST_PID, BAD], False),  # a real problem among them
        (1, [VDSO, BAD], False),
        (1, [BAD], False),  # failed without saying why
        (1, [], False),
    ],
)
def test_only_the_containers_own_check_errors_are_tolerated(
    returncode: int, lines: list[str], passes: bool
) -> None:
    assert check_passes(returncode, "\n".join(lines)) is passes
