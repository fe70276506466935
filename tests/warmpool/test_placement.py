"""Placement policy: table tests over plain values (no processes, no clock)."""

from __future__ import annotations

from typing import Any

import pytest

from warmpool.placement import (
    Demotion,
    Member,
    Tier,
    Verdict,
    Waiter,
    choose_victims,
    fits_ever,
    is_thrash,
    queue_order,
    should_defer,
)

GiB = 1 << 30
NOW = 1000.0
R, S, H, C = Tier.RESIDENT, Tier.SUSPENDED, Tier.HIBERNATED, Tier.COLD


def m(name: str, tier: Tier = R, gib: float = 2, **kw: Any) -> Member:
    """A member idle since t=0, resident since t=0, no min_resident, can suspend."""
    kw.setdefault("can_suspend", True)
    return Member(name, tier, int(gib * GiB), **kw)


def plan_for(members: list[Member], incoming: Member, budget_gib: float = 6, host_gib: float = 64):
    return choose_victims(members, incoming, int(budget_gib * GiB), NOW, int(host_gib * GiB))


def victims(members: list[Member], incoming: Member, **kw: Any) -> list[tuple[str, Tier]]:
    plan = plan_for(members, incoming, **kw)
    assert plan.verdict is Verdict.FITS, plan.reason
    return [(d.name, d.to) for d in plan.demotions]


# Budget 6 GiB, three residents of 2 GiB each: the device is full; the incoming needs 2 GiB.
FULL = ["a", "b", "c"]


@pytest.mark.parametrize(
    ("case", "overrides", "expected"),
    [
        ("least recently used goes", {"a": {"last_used": 30}, "b": {"last_used": 10}}, "c"),
        (
            "LRU among the idle",
            {"a": {"last_used": 5}, "b": {"last_used": 9}, "c": {"last_used": 7}},
            "a",
        ),
        (
            "in flight is never a victim",
            {"a": {"in_flight": 1}, "b": {"last_used": 50}, "c": {"last_used": 60}},
            "b",
        ),
        (
            "queued is never a victim",
            {"a": {"queued": 3}, "b": {"last_used": 50}, "c": {"last_used": 60}},
            "b",
        ),
        (
            "pinned is never a victim",
            {"a": {"pin": True}, "b": {"last_used": 50}, "c": {"last_used": 60}},
            "b",
        ),
        (
            "within min_resident is never a victim",
            {
                "a": {"min_resident": 30, "resident_since": NOW - 10},
                "b": {"last_used": 50},
                "c": {"last_used": 60},
            },
            "b",
        ),
        (
            "past min_resident it may go",
            {
                "a": {"min_resident": 30, "resident_since": NOW - 31},
                "b": {"last_used": 50},
                "c": {"last_used": 60},
            },
            "a",
        ),
        (
            "lowest priority before LRU",
            {"a": {"priority": 5}, "b": {"priority": 1, "last_used": 900}, "c": {"priority": 3}},
            "b",
        ),
        (
            "priority ties: LRU",
            {
                "a": {"priority": 2, "last_used": 9},
                "b": {"priority": 2, "last_used": 3},
                "c": {"priority": 7},
            },
            "b",
        ),
    ],
)
def test_one_victim_is_chosen_by_the_rules(
    case: str, overrides: dict[str, dict[str, Any]], expected: str
) -> None:
    members = [m(n, **overrides.get(n, {})) for n in FULL] + [m("new", C)]
    assert victims(members, members[-1]) == [(expected, S)], case


def test_room_already_free_demotes_nobody() -> None:
    members = [m("a"), m("new", H)]
    plan = plan_for(members, members[-1])
    assert plan.verdict is Verdict.FITS and plan.demotions == ()


def test_an_incoming_that_is_resident_already_fits() -> None:
    members = [m("a", gib=6)]
    assert plan_for(members, members[0]).demotions == ()


def test_several_victims_until_it_fits_and_no_more() -> None:
    members = [
        m("a", gib=1, last_used=1),
        m("b", gib=1, last_used=2),
        m("c", gib=1, last_used=3),
        m("d", gib=3, last_used=4),
    ]
    assert victims(members, m("new", C, gib=2)) == [("a", S), ("b", S)]


def test_a_victim_made_unnecessary_by_a_bigger_one_is_kept() -> None:
    # LRU order is small (1 GiB), then big (4 GiB): the big one alone frees enough.
    members = [m("small", gib=1, last_used=1), m("big", gib=4, last_used=2), m("x", gib=1)]
    plan = plan_for(members, m("new", C, gib=4))
    assert [(d.name, d.frees) for d in plan.demotions] == [("big", 4 * GiB)]


@pytest.mark.parametrize(
    ("host_gib", "can_suspend", "can_hibernate", "expected"),
    [
        (64, True, True, S),  # host RAM allows: suspend
        (1, True, True, H),  # not enough host RAM for 2 GiB: hibernate
        (64, False, True, H),  # no suspend engine: hibernate
        (1, True, False, C),  # nothing fits and no checkpoint: stop
        (64, False, False, C),
    ],
)
def test_suspend_while_host_ram_allows_else_hibernate(
    host_gib: float, can_suspend: bool, can_hibernate: bool, expected: Tier
) -> None:
    members = [
        m("a", gib=6, can_suspend=can_suspend, can_hibernate=can_hibernate),
        m("new", C),
    ]
    assert victims(members, members[-1], host_gib=host_gib) == [("a", expected)]


def test_host_ram_goes_to_the_most_valuable_victim() -> None:
    members = [
        m("cheap", gib=3, priority=0),
        m("dear", gib=3, priority=9),
    ]
    # Both must go (6 GiB needed); host RAM holds one of them: the higher priority one.
    got = victims(members, m("new", C, gib=6), host_gib=4)
    assert got == [("cheap", H), ("dear", S)]


def test_host_cost_of_a_suspended_member_can_differ_from_its_device_bytes() -> None:
    members = [m("a", gib=6, host_bytes=8 * GiB), m("new", C)]
    assert victims(members, members[-1], host_gib=7) == [("a", H)]
    assert victims(members, members[-1], host_gib=8) == [("a", S)]


def test_cannot_fit_now_names_what_blocks_and_when_to_retry() -> None:
    members = [
        m("busy", in_flight=2),
        m("fresh", min_resident=30, resident_since=NOW - 12),
        m("pinned", pin=True),
        m("new", C),
    ]
    plan = plan_for(members, members[-1])
    assert plan.verdict is Verdict.WAIT
    assert plan.demotions == ()
    assert "busy has 2 in flight" in plan.reason
    assert "fresh became resident 12.0s ago (min_resident 30s)" in plan.reason
    assert plan.retry_after == pytest.approx(18.0)
    assert {b.name for b in plan.blockers} == {"busy", "fresh"}


def test_cannot_fit_now_without_a_known_retry_time() -> None:
    members = [m("a", queued=1), m("b", in_flight=1), m("c", in_flight=4), m("new", C)]
    plan = plan_for(members, members[-1])
    assert plan.verdict is Verdict.WAIT and plan.retry_after is None
    assert "a has 0 in flight, 1 queued" in plan.reason


def test_partial_room_evicts_nothing() -> None:
    # One idle 2 GiB member could go, but 4 GiB are needed and the rest is busy.
    members = [m("idle"), m("busy", in_flight=1), m("new", C, gib=4)]
    plan = plan_for(members, members[-1], budget_gib=4)
    assert plan.verdict is Verdict.WAIT and plan.demotions == ()


@pytest.mark.parametrize(
    ("members", "incoming_gib", "in_reason"),
    [
        ([], 7, "needs 7.0GiB but the device budget is 6.0GiB"),
        ([m("p", gib=5, pin=True)], 2, "5.0GiB of it pinned by p"),
        ([m("p", gib=2, pin=True), m("q", gib=2, pin=True)], 3, "pinned by p, q"),
    ],
)
def test_never_fits(members: list[Member], incoming_gib: float, in_reason: str) -> None:
    plan = plan_for([*members, m("new", C, gib=incoming_gib)], m("new", C, gib=incoming_gib))
    assert plan.verdict is Verdict.NEVER
    assert in_reason in plan.reason
    assert "device.memory_budget" in plan.reason


@pytest.mark.parametrize(
    ("waiting_since", "now", "bound", "defer"),
    [
        (None, 100.0, 10.0, True),  # not waiting
        (95.0, 100.0, 10.0, True),  # waited 5 s of 10
        (90.0, 100.0, 10.0, False),  # waited exactly the bound
        (50.0, 100.0, 10.0, False),
        (100.0, 100.0, 0.0, False),  # bound 0: never defer
    ],
)
def test_should_defer_is_bounded(
    waiting_since: float | None, now: float, bound: float, defer: bool
) -> None:
    assert should_defer(waiting_since, now, bound) is defer


def test_past_the_bound_a_busy_resident_is_drained_after_the_idle_ones() -> None:
    members = [
        m("busy-low", priority=0, in_flight=1, queued=4),
        m("idle-high", priority=9, last_used=999),
        m("pinned", pin=True),
        m("new", C, gib=4),
    ]
    within = plan_for(members, members[-1])
    assert within.verdict is Verdict.WAIT  # busy-low serves its queue first
    overdue = choose_victims(
        members,
        members[-1],
        6 * GiB,
        NOW,
        64 * GiB,
        overdue=not should_defer(NOW - 31, NOW, 30),
    )
    assert overdue.verdict is Verdict.FITS
    assert overdue.demotions == (
        Demotion("idle-high", S, 2 * GiB, drain=False),
        Demotion("busy-low", S, 2 * GiB, drain=True),
    )


def test_past_the_bound_idle_members_go_before_busy_ones() -> None:
    members = [m("busy", priority=0, queued=2), m("idle", priority=5), m("x", pin=True)]
    plan = choose_victims(members, m("new", C), 6 * GiB, NOW, 64 * GiB, overdue=True)
    assert [(d.name, d.drain) for d in plan.demotions] == [("idle", False)]


def test_the_bound_never_overrides_pins_or_min_resident() -> None:
    members = [
        m("pinned", pin=True, in_flight=1),
        m("fresh", min_resident=60, resident_since=NOW - 1, queued=1),
        m("other", pin=True),
    ]
    plan = choose_victims(members, m("new", C), 6 * GiB, NOW, 64 * GiB, overdue=True)
    assert plan.verdict is Verdict.WAIT
    assert plan.retry_after == pytest.approx(59.0)


def test_duplicate_names_are_an_error() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        plan_for([m("a"), m("a")], m("b", C))


@pytest.mark.parametrize(
    ("members", "budget_gib", "problems"),
    [
        ([m("a", gib=2), m("b", gib=5)], 6, []),
        ([m("a", gib=7)], 6, ["a needs 7.0GiB but the device budget is 6.0GiB"]),
        (
            [m("p", gib=4, pin=True), m("b", gib=3)],
            6,
            ["b needs 3.0GiB", "4.0GiB of it pinned by p"],
        ),
        (
            [m("p", gib=4, pin=True), m("q", gib=4, pin=True)],
            6,
            ["pinned workloads p, q need 8.0GiB together", "p needs 4.0GiB", "q needs 4.0GiB"],
        ),
        ([m("unknown", gib=0), m("p", gib=6, pin=True)], 6, []),  # size unknown until measured
    ],
)
def test_fits_ever(members: list[Member], budget_gib: float, problems: list[str]) -> None:
    found = " | ".join(fits_ever(members, int(budget_gib * GiB)))
    for text in problems:
        assert text in found
    if not problems:
        assert found == ""


@pytest.mark.parametrize(
    ("left_at", "now", "min_resident", "evicted_busy", "thrash"),
    [
        (None, 100.0, 30.0, False, False),  # never left
        (90.0, 100.0, 30.0, False, True),  # back 10 s after leaving, min_resident 30 s
        (60.0, 100.0, 30.0, False, False),  # back after 40 s
        (99.0, 100.0, 0.0, False, False),  # no min_resident, it was idle when chosen
        (99.0, 100.0, 0.0, True, True),  # it was swapped out while in use
        (10.0, 100.0, 0.0, True, True),  # however long it took to come back
        (None, 100.0, 0.0, True, False),  # never left: nothing to undo
    ],
)
def test_is_thrash(
    left_at: float | None, now: float, min_resident: float, evicted_busy: bool, thrash: bool
) -> None:
    assert is_thrash(left_at, now, min_resident, evicted_busy) is thrash


@pytest.mark.parametrize(
    ("case", "waiters", "expected"),
    [
        ("first come, first served", [("b", 2.0, 0), ("a", 1.0, 0), ("c", 3.0, 0)], "abc"),
        ("ties by name", [("b", 1.0, 0), ("a", 1.0, 0)], "ab"),
        # priority 100 is worth 1 s of waiting (PRIORITY_AGING 10 ms a point)
        ("priority counts as having waited", [("a", 1.0, 0), ("b", 1.5, 100)], "ba"),
        ("but only so long", [("a", 1.0, 0), ("b", 2.5, 100)], "ab"),
        ("a low priority is served later", [("a", 1.0, -100), ("b", 1.9, 0)], "ba"),
        ("and ages: not forever", [("a", 1.0, -100), ("b", 2.1, 0)], "ab"),
        ("committed stays first", [("a", 1.0, 0), ("z", 9.0, -1000, True)], "za"),
    ],
)
def test_queue_order(case: str, waiters: list[tuple[Any, ...]], expected: str) -> None:
    order = queue_order([Waiter(*w) for w in waiters])
    assert "".join(w.name for w in order) == expected, case


def test_an_arriving_member_is_never_a_victim_even_past_the_bound() -> None:
    """A workload coming in (or still giving leases to the requests that waited for it) is
    not swapped out by a reservation that has waited past max_defer: that undid every swap
    before it served anyone (the livelock)."""
    members = [m("coming", arriving=True, queued=1), m("busy", in_flight=1), m("new", C)]
    plan = choose_victims(members, members[-1], 4 * GiB, NOW, 64 * GiB, overdue=True)
    assert [d.name for d in plan.demotions] == ["busy"]
    members = [m("coming", arriving=True, queued=1), m("new", C)]
    plan = choose_victims(members, members[-1], 2 * GiB, NOW, 64 * GiB, overdue=True)
    assert plan.verdict is Verdict.WAIT
    assert "coming is coming in for the requests that wait for it" in plan.reason


@pytest.mark.parametrize(
    ("incoming", "pinned", "in_reason", "not_in_reason"),
    [
        # a pinned memory: auto workload measured above the budget; the incoming never seen
        (
            {"gib": 0, "size_from": "unknown"},
            {"gib": 7, "size_from": "measured"},
            [
                "new needs an unknown size until it is measured",
                "pinned workloads hold 7.0GiB (p 7.0GiB measured)",
            ],
            ["needs 0B", "needs 1B"],
        ),
        (
            {"gib": 2, "size_from": "declared"},
            {"gib": 6, "size_from": "declared"},
            ["new needs 2.0GiB (declared), but pinned workloads hold 6.0GiB"],
            [],
        ),
        (
            {"gib": 5, "size_from": "measured"},
            {"gib": 2, "size_from": "measured"},
            ["new needs 5.0GiB (measured) but the device budget is 6.0GiB"],
            [],
        ),
    ],
)
def test_never_says_what_it_needs_and_where_the_number_comes_from(
    incoming: dict[str, Any], pinned: dict[str, Any], in_reason: list[str], not_in_reason: list[str]
) -> None:
    new = m("new", C, **incoming)
    plan = plan_for([m("p", pin=True, **pinned), new], new)
    assert plan.verdict is Verdict.NEVER
    for text in in_reason:
        assert text in plan.reason
    for text in not_in_reason:
        assert text not in plan.reason
