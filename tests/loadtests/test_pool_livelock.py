"""The livelock scenario's client: what it counts (the run itself starts real servers and
takes minutes: `python -m loadtests.pool_livelock`, numbers in docs/measurements.md)."""

from __future__ import annotations

import pytest

from loadtests.pool_livelock import Outcome, parse_args, summarize


def test_summary_counts_served_and_failed_requests_and_the_wait() -> None:
    outcomes = [
        Outcome("a", 200, 0.1),
        Outcome("a", 200, 0.3, "restore; 0.2"),
        Outcome("b", 200, 2.0, "restore; 1.9"),
        Outcome("c", 504, None, error="HTTP 504: wake_timeout"),
        Outcome("c", 200, None, error="stream finished without content"),
        Outcome("b", 0, None, error="ReadTimeout"),
    ]
    summary = summarize(outcomes, 120.0)
    assert (summary.requests, summary.served) == (6, 3)
    assert summary.failed == {"504": 1, "200": 1, "no answer": 1}
    assert summary.served_by_workload == {"a": 2, "b": 1, "c": 0}
    assert summary.wait_max == 2.0 and summary.wait_p50 == pytest.approx(0.3)


def test_nothing_served_has_no_wait() -> None:
    summary = summarize([Outcome("a", 504, None, error="HTTP 504")], 1.0)
    assert summary.served == 0 and summary.wait_p95 is None


def test_bounds_are_checked() -> None:
    with pytest.raises(SystemExit):
        parse_args(["--seconds", "0"])
    assert parse_args([]).seconds == 120.0
