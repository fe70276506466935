"""The pure parts of routing and request limits, table-tested: the path a routing
decision is made on (activator.registry) and the body clock (activator.limits).
The same rules end to end, through a real `dormant up`: tests/integration/test_paths.py."""

from __future__ import annotations

import pytest

from activator.errors import BadPath
from activator.limits import BODY_IDLE_TIMEOUT, MIN_BODY_RATE, BodyClock
from activator.registry import confined, decision_path


@pytest.mark.parametrize(
    ("raw", "decided"),
    [
        ("/a/b", b"/a/b"),
        ("/a/./b", b"/a/b"),
        ("/a/../b", b"/b"),
        ("/a/b/..", b"/a/"),
        ("/..", b"/"),  # a '..' at the root stays at the root
        ("/apps/e1/%2e%2e/%2e%2e/admin", b"/admin"),
        ("/apps/e1/..%2f..%2fadmin", b"/admin"),
        ("/apps/e1/%2E%2E/admin", b"/apps/admin"),
        ("/a/..;x/b", b"/b"),  # '..;' is '..' to some servers
        ("/a%5c..%5cb", b"/b"),  # so is '\\' a separator
        ("/%252e%252e/x", b"/%2e%2e/x"),  # decoded once only
        ("/caf%C3%A9", "/café".encode()),
        ("/a%zzb", b"/a%zzb"),
        ("//x", b"//x"),
    ],
)
def test_decision_path(raw: str, decided: bytes) -> None:
    assert decision_path(raw) == decided


@pytest.mark.parametrize(
    ("raw", "ok"),
    [
        ("/v1/completions", True),
        ("/v1/a/../b", True),
        ("/v1", True),
        ("/v1/../v1/completions", False),  # climbs out, even to come back
        ("/v1/%2e%2e/admin", False),
        ("/v1%2fcompletions", False),
        ("/%761/completions", False),
    ],
)
def test_v1_paths_are_confined(raw: str, ok: bool) -> None:
    if ok:
        assert confined(raw, "/v1") == raw
    else:
        with pytest.raises(BadPath):
            confined(raw, "/v1")


def test_body_clock_cuts_off_silence_and_a_steady_trickle() -> None:
    clock = BodyClock(now=0.0)
    assert clock.next_wait(now=0.0) == BODY_IDLE_TIMEOUT
    # a byte every 2 s keeps the idle timer happy but not the rate: cut off after ~30 s
    now = 0.0
    while clock.next_wait(now) > 0:
        now += 2.0
        clock.received(1)
    assert BODY_IDLE_TIMEOUT <= now <= BODY_IDLE_TIMEOUT + 4
    assert clock.error(now).status == 408
    # a fast upload earns time: 1 s per MIN_BODY_RATE bytes, but never a long silence
    fast = BodyClock(now=0.0)
    fast.received(100 * MIN_BODY_RATE)
    assert fast.next_wait(now=50.0) == BODY_IDLE_TIMEOUT
    assert fast.next_wait(now=125.0) == pytest.approx(5.0)
