"""The idle rules are pure functions: tables say when to hibernate."""

from __future__ import annotations

import pytest

from warmpool.idle import server_keeps_awake, should_hibernate


@pytest.mark.parametrize(
    ("serving", "in_flight", "waiting", "idle_for", "idle_after", "expected"),
    [
        (True, 0, 0, 61.0, 60.0, True),
        (True, 0, 0, 60.0, 60.0, True),
        (True, 0, 0, 59.9, 60.0, False),
        (True, 1, 0, 1e6, 60.0, False),  # a long stream keeps it awake
        (True, 0, 3, 1e6, 60.0, False),  # someone is queued
        (True, 0, 0, 1e6, 0.0, False),  # idle hibernation disabled
        (False, 0, 0, 1e6, 60.0, False),  # hibernated, starting, failed...: nothing to do
    ],
)
def test_should_hibernate(
    serving: bool, in_flight: int, waiting: int, idle_for: float, idle_after: float, expected: bool
) -> None:
    assert (
        should_hibernate(
            serving=serving,
            in_flight=in_flight,
            waiting=waiting,
            idle_for=idle_for,
            idle_after=idle_after,
        )
        is expected
    )


@pytest.mark.parametrize(
    ("busy", "server_idle_for", "idle_for", "idle_after", "expected"),
    [
        (None, 0.0, 700.0, 600.0, None),  # the server did not answer: the proxy's view stands
        (0, 900.0, 700.0, 600.0, None),  # idle on both counts
        (0, 650.0, 700.0, 600.0, None),  # the server saw more, still too long ago
        (1, 3600.0, 700.0, 600.0, 0.0),  # a kernel computing for an hour
        (2, 0.0, 1e6, 600.0, 0.0),
        (0, 30.0, 700.0, 600.0, 30.0),  # e.g. output from a kernel thread
        (0, 0.0, 600.0, 600.0, 0.0),
        (0, 599.0, 600.0, 600.0, 599.0),
        (0, 600.0, 600.0, 600.0, None),
    ],
)
def test_server_keeps_awake(
    busy: int | None,
    server_idle_for: float,
    idle_for: float,
    idle_after: float,
    expected: float | None,
) -> None:
    got = server_keeps_awake(
        busy=busy, server_idle_for=server_idle_for, idle_for=idle_for, idle_after=idle_after
    )
    assert got == expected
