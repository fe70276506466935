"""The idle rule is a pure function: a table says when to hibernate."""

from __future__ import annotations

import pytest

from activator.idle import should_hibernate
from activator.states import State


@pytest.mark.parametrize(
    ("state", "in_flight", "waiting", "idle_for", "idle_after", "expected"),
    [
        (State.READY, 0, 0, 61.0, 60.0, True),
        (State.READY, 0, 0, 60.0, 60.0, True),
        (State.READY, 0, 0, 59.9, 60.0, False),
        (State.READY, 1, 0, 1e6, 60.0, False),  # a long stream keeps it awake
        (State.READY, 0, 3, 1e6, 60.0, False),  # someone is queued
        (State.READY, 0, 0, 1e6, 0.0, False),  # idle hibernation disabled
        (State.HIBERNATED, 0, 0, 1e6, 60.0, False),
        (State.STARTING, 0, 0, 1e6, 60.0, False),
        (State.FAILED, 0, 0, 1e6, 60.0, False),
    ],
)
def test_should_hibernate(
    state: State, in_flight: int, waiting: int, idle_for: float, idle_after: float, expected: bool
) -> None:
    assert (
        should_hibernate(
            state=state,
            in_flight=in_flight,
            waiting=waiting,
            idle_for=idle_for,
            idle_after=idle_after,
        )
        is expected
    )
