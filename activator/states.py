"""Workload states and the transition table: the single source of truth for what may follow what."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["STABLE", "TRANSITIONS", "IllegalTransition", "State", "check_transition"]


class State(StrEnum):
    COLD = "cold"  # nothing: no process, no snapshot
    STARTING = "starting"  # booting the command
    RESTORING = "restoring"  # verifying and restoring a snapshot
    RESUMING = "resuming"  # device memory coming back from host RAM (suspend engine)
    READY = "ready"  # serving
    DRAINING = "draining"  # no new requests admitted; waiting for in-flight ones
    CHECKPOINTING = "checkpointing"  # writing a snapshot
    SUSPENDED = "suspended"  # process alive, device memory parked in host RAM
    HIBERNATED = "hibernated"  # only a snapshot; no process
    FAILED = "failed"  # the last start or restore failed, or the process died


TRANSITIONS: dict[State, frozenset[State]] = {
    # to RESTORING when a snapshot appeared (another runtime, or one written by a pod)
    State.COLD: frozenset({State.STARTING, State.RESTORING}),
    State.STARTING: frozenset({State.READY, State.FAILED}),
    # a restore that fails falls back to a cold boot
    State.RESTORING: frozenset({State.READY, State.STARTING, State.FAILED}),
    # a resume that fails stops the process and restores or cold-boots instead
    State.RESUMING: frozenset({State.READY, State.FAILED, State.RESTORING, State.STARTING}),
    State.READY: frozenset({State.DRAINING, State.FAILED}),
    # back to READY when the drain times out; to COLD (or HIBERNATED, when an older
    # snapshot remains) when the instance is stopped instead of checkpointed; to FAILED
    # when the process died while draining
    State.DRAINING: frozenset(
        {
            State.CHECKPOINTING,
            State.READY,
            State.COLD,
            State.HIBERNATED,
            State.SUSPENDED,
            State.FAILED,
        }
    ),
    # back to READY when the checkpoint fails and the process is still serving
    State.CHECKPOINTING: frozenset({State.HIBERNATED, State.READY, State.FAILED}),
    # to COLD / HIBERNATED when it is stopped (shutdown) or its process died
    State.SUSPENDED: frozenset(
        {State.RESUMING, State.DRAINING, State.COLD, State.HIBERNATED, State.FAILED}
    ),
    State.HIBERNATED: frozenset({State.RESTORING, State.STARTING, State.COLD}),
    # cleared to where it rests: HIBERNATED when a snapshot remains, else COLD
    State.FAILED: frozenset({State.STARTING, State.RESTORING, State.COLD, State.HIBERNATED}),
}

# States a workload rests in between operations; the others exist only while an
# operation holds the workload's lock.
STABLE = frozenset({State.COLD, State.READY, State.SUSPENDED, State.HIBERNATED, State.FAILED})


class IllegalTransition(RuntimeError):
    """A bug: code tried a transition the table does not allow."""


def check_transition(old: State, new: State) -> None:
    if new not in TRANSITIONS[old]:
        raise IllegalTransition(f"{old} -> {new} is not a legal transition")
