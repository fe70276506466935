"""The pool's bookkeeping of sizes, with plain members (no runtime: the point is what the
pool decides while a size is still an estimate). The full flow is tests/activator/test_pool.py
(fake runtime) and tests/integration/test_pool.py (reference servers, CRIU)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

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
