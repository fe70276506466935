"""The transition table is the single source of truth; check its shape."""

from __future__ import annotations

import pytest

from activator.states import STABLE, TRANSITIONS, IllegalTransition, State, check_transition


def test_every_state_has_a_row_and_can_be_left() -> None:
    assert set(TRANSITIONS) == set(State)
    for state, targets in TRANSITIONS.items():
        assert targets, f"{state} is a dead end"
        assert state not in targets


def test_every_state_is_reachable_from_cold() -> None:
    seen, frontier = {State.COLD}, [State.COLD]
    while frontier:
        for nxt in TRANSITIONS[frontier.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                frontier.append(nxt)
    assert seen == set(State)


@pytest.mark.parametrize(
    ("old", "new", "legal"),
    [
        (State.HIBERNATED, State.RESTORING, True),
        (State.RESTORING, State.STARTING, True),  # restore failed: cold boot
        (State.CHECKPOINTING, State.READY, True),  # checkpoint failed: keep serving
        (State.DRAINING, State.READY, True),  # drain timed out
        (State.READY, State.HIBERNATED, False),  # must drain and checkpoint first
        (State.COLD, State.READY, False),
        (State.HIBERNATED, State.READY, False),
        (State.FAILED, State.READY, False),
    ],
)
def test_transitions(old: State, new: State, legal: bool) -> None:
    if legal:
        check_transition(old, new)
    else:
        with pytest.raises(IllegalTransition):
            check_transition(old, new)


def test_operations_start_and_end_in_stable_states() -> None:
    transient = set(State) - STABLE
    assert transient == {
        State.STARTING,
        State.RESTORING,
        State.RESUMING,
        State.DRAINING,
        State.CHECKPOINTING,
    }
