"""The pool's bookkeeping of sizes, with plain members (no runtime: the point is what the
pool decides while a size is still an estimate). The full flow is tests/activator/test_pool.py
(fake runtime) and tests/integration/test_pool.py (reference servers, CRIU)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from warmpool.placement import Member, Tier
from warmpool.pool import Pool, PoolBusy, PoolFull

pytestmark = pytest.mark.anyio

MB = 1 << 20


@dataclass
class Plain:
    """A pool member that is only what the policy sees."""

    name: str
    pin: bool = False
    tier: Tier = Tier.COLD

    def placement(self) -> Member:
        return Member(self.name, self.tier, 0, pin=self.pin)

    async def demote(self, to: Tier, reason: str) -> None:
        raise AssertionError(f"{self.name} was asked to leave ({reason}); nothing should be")


async def test_a_pinned_workload_not_measured_yet_makes_others_wait_not_fail() -> None:
    """A pinned `memory: auto` workload holds the whole budget until it is first measured.
    A workload asking to come in meanwhile (the first requests after start) waits for that
    measurement; it used to be refused at once as 'can never be resident' (PoolFull)."""
    pool = Pool(1000 * MB, poll=0.01)
    a, b = Plain("a", pin=True), Plain("b")
    pool.join(a)
    pool.join(b)
    await pool.reserve(a, timeout=1)
    assert pool.used() == 1000 * MB  # the estimate: never seen, so all of the budget
    waiting = asyncio.ensure_future(pool.reserve(b, timeout=5))
    await asyncio.sleep(0.1)
    assert not waiting.done(), waiting.exception() if waiting.done() else ""
    pool.measure("a", 300 * MB)  # what the reaper's first sample of a running `a` does
    await asyncio.wait_for(waiting, 5)
    assert pool.holds("b") and pool.used() == 1000 * MB  # b: the rest of it (never seen)


async def test_while_it_stays_unmeasured_the_wait_ends_in_a_busy_answer_naming_it() -> None:
    pool = Pool(1000 * MB, poll=0.01)
    a, b = Plain("a", pin=True), Plain("b")
    pool.join(a)
    pool.join(b)
    await pool.reserve(a, timeout=1)
    with pytest.raises(PoolBusy, match="pinned a, which has not been measured"):
        await pool.reserve(b, timeout=0.2)
    assert not pool.holds("b")


async def test_a_declared_pinned_size_that_leaves_no_room_is_still_never() -> None:
    pool = Pool(1000 * MB, poll=0.01)
    a, b = Plain("a", pin=True), Plain("b")
    pool.join(a, declared=900 * MB)
    pool.join(b, declared=200 * MB)
    await pool.reserve(a, timeout=1)
    with pytest.raises(PoolFull, match="can never be resident"):
        await pool.reserve(b, timeout=5)


@dataclass
class Mover:
    """A pool member that leaves the device when asked, slowly, as its owner would."""

    name: str
    pool: Pool
    tier: Tier = Tier.COLD
    pin: bool = False
    leave_seconds: float = 0.05
    demoted: list[Tier] = field(default_factory=list)

    def placement(self) -> Member:
        return Member(self.name, self.tier, 0, pin=self.pin)

    async def demote(self, to: Tier, reason: str) -> None:
        await asyncio.sleep(self.leave_seconds)
        self.demoted.append(to)
        self.tier = to
        self.pool.left(self.name)

    async def come_in(self, timeout: float = 5) -> None:
        await self.pool.reserve(self, timeout)
        self.tier = Tier.RESIDENT


async def test_the_room_a_victim_frees_is_held_for_the_reservation_it_left_for() -> None:
    """b makes a leave; c asks meanwhile. c used to take the room a freed (b re-planned
    after releasing the pool's lock), then b swapped c out again: two swaps, one served."""
    pool = Pool(1000 * MB, poll=0.01)
    a, b, c = (Mover(n, pool) for n in "abc")
    for member in (a, b, c):
        pool.join(member, declared=600 * MB)
    await a.come_in()
    b_in = asyncio.ensure_future(b.come_in())
    await asyncio.sleep(0.01)  # b is first in line; a is leaving for it
    c_in = asyncio.ensure_future(c.come_in())
    await asyncio.sleep(0.01)
    assert pool.view()["queue"] == ["b", "c"]
    await asyncio.wait_for(b_in, 5)
    assert pool.holds("b") and not pool.holds("c") and c.demoted == []
    await asyncio.wait_for(c_in, 5)  # then c, in its turn: b leaves for it
    assert (a.demoted, b.demoted, c.demoted) == ([Tier.HIBERNATED], [Tier.HIBERNATED], [])


async def test_reservations_are_granted_in_order_of_arrival() -> None:
    pool = Pool(1000 * MB, poll=0.01)
    members = {n: Mover(n, pool, leave_seconds=0.01) for n in "abcd"}
    for member in members.values():
        pool.join(member, declared=600 * MB)
    await members["a"].come_in()
    granted: list[str] = []

    async def come_in(name: str) -> None:
        await members[name].come_in()
        granted.append(name)

    tasks = []
    for name in "dbc":
        tasks.append(asyncio.ensure_future(come_in(name)))
        await asyncio.sleep(0.002)
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert granted == ["d", "b", "c"]


async def test_a_pinned_auto_workload_measured_above_the_budget_is_flagged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """It used to go unnoticed, and every other workload's 503 said it needed '1B'."""
    pool = Pool(500 * MB, poll=0.01)
    a, b, c = Plain("a", pin=True), Plain("b"), Plain("c")
    pool.join(a)
    pool.join(b)
    pool.join(c, declared=400 * MB)
    await pool.reserve(a, timeout=1)
    a.tier = Tier.RESIDENT
    with caplog.at_level("WARNING", logger="dormant.pool"):
        pool.measure("a", 600 * MB)
        pool.measure("a", 600 * MB)  # warned once
    problems = pool.view()["problems"]
    assert problems and all("a" in p and "500.0MiB" in p for p in problems)
    warned = [r.getMessage() for r in caplog.records if "pinned workloads a need" in r.getMessage()]
    assert len(warned) == 1
    with pytest.raises(PoolFull) as never_seen:
        await pool.reserve(b, timeout=1)
    message = str(never_seen.value)
    assert "needs 1B" not in message
    assert "b needs an unknown size until it is measured" in message
    assert "pinned workloads hold 600.0MiB (a 600.0MiB measured)" in message
    assert "can never be resident" in message
    with pytest.raises(PoolFull, match=r"c needs 400\.0MiB \(declared\)"):
        await pool.reserve(c, timeout=1)
