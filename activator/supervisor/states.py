"""``dormant exec``'s phases, the table of what may follow what, and its exit codes."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, StrEnum

__all__ = ["SERVING", "TRANSITIONS", "ExitCode", "Phase", "ServerExit", "after_server_exit"]


class Phase(StrEnum):
    WAITING = "waiting"  # for the snapshot volume's lock
    RESTORING = "restoring"
    BOOTING = "booting"
    READY = "ready"  # serving, and /readyz answers 200 while the health path does
    CHECKPOINTING = "checkpointing"
    CHECKPOINTED = "checkpointed"  # a committed snapshot and no server: safe to scale to 0
    SUSPENDING = "suspending"
    SUSPENDED = "suspended"  # alive, device memory parked in host RAM
    RESUMING = "resuming"
    STOPPING = "stopping"
    STOPPED = "stopped"  # the end: SIGTERM handled without a checkpoint
    FAILED = "failed"  # no server: the start, a resume or the server itself failed


P = Phase
TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    P.WAITING: frozenset({P.RESTORING, P.BOOTING, P.STOPPED, P.FAILED}),
    # another (older) snapshot after one failed, else a boot
    P.RESTORING: frozenset({P.RESTORING, P.READY, P.BOOTING, P.STOPPED, P.FAILED}),
    P.BOOTING: frozenset({P.READY, P.STOPPED, P.FAILED}),
    P.READY: frozenset({P.CHECKPOINTING, P.SUSPENDING, P.STOPPING, P.FAILED}),
    # back to READY when the checkpoint failed and a server still serves
    P.CHECKPOINTING: frozenset({P.CHECKPOINTED, P.READY, P.FAILED}),
    P.CHECKPOINTED: frozenset({P.RESTORING, P.BOOTING, P.STOPPED}),
    P.SUSPENDING: frozenset({P.SUSPENDED, P.READY, P.FAILED}),
    P.SUSPENDED: frozenset({P.RESUMING, P.STOPPING, P.FAILED}),
    P.RESUMING: frozenset({P.READY, P.FAILED}),
    P.STOPPING: frozenset({P.STOPPED}),
    P.STOPPED: frozenset(),
    P.FAILED: frozenset({P.RESTORING, P.BOOTING, P.STOPPING, P.STOPPED}),
}

SERVING = frozenset({P.READY, P.SUSPENDED})
"""Phases with a live server."""


class ExitCode(IntEnum):
    """What ``dormant exec`` exits with (docs/exec.md)."""

    OK = 0  # terminated as asked (snapshot committed, or stopped), or a Job's command completed
    CHECKPOINT_FAILED = 1  # on SIGTERM the checkpoint failed (server stopped), or it had failed
    USAGE = 2  # bad arguments, token file, snapshot directory or control address
    START_FAILED = 3  # neither a restore nor a boot brought the server up
    SERVER_EXITED = 4  # the served command exited by itself (a failure, or 0 without the opt-in)
    LOCK_TIMEOUT = 5  # another instance kept the snapshot volume's lock too long


@dataclass(frozen=True)
class ServerExit:
    """What ``dormant exec`` does when its served command exits by itself."""

    code: ExitCode
    remove_snapshots: bool
    why: str


def after_server_exit(status_zero: bool, done_on_exit: bool) -> ServerExit:
    """The served command exited by itself (no SIGTERM to the supervisor).

    1. Status 0 with ``--done-on-exit`` (a Job's opt-in): its work is done; the snapshots
       go (the next run must not resume finished work) and exec exits 0, so the Job succeeds.
    2. Status 0 without it: a server's exit is never "the work is done" (a stray SIGTERM to
       uvicorn exits 0): the snapshots stay and exec exits 4, so the pod restarts and restores.
    3. Any other status: a failure; the snapshots stay, exit 4.
    """
    if status_zero and done_on_exit:
        return ServerExit(ExitCode.OK, True, "the command finished (exit 0, --done-on-exit)")
    if status_zero:
        return ServerExit(
            ExitCode.SERVER_EXITED,
            False,
            "the served command exited 0 by itself, but without --done-on-exit (a Job's "
            "opt-in) that is not the end of its work: snapshots kept, exiting 4 so that the "
            "pod restarts and restores",
        )
    return ServerExit(ExitCode.SERVER_EXITED, False, "the served command failed: snapshots kept")
