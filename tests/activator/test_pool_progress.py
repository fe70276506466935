"""A progress property of the warm pool: N workloads in room for k, random arrivals, streaming
clients that ask again as soon as they are answered, scripted failures, on the fake runtime.

What docs/warm-pool.md promises, made a tested property:
- every request is answered within a bound: a lease, or a defined error that a scripted
  failure explains — never a WakeTimeout, nothing hangs;
- a request waits for at most one swap per workload ahead of it (with equal priorities: at
  most N + 1 swaps in complete between its arrival and its lease), and the pool makes no
  more swaps in than there are requests (a swap is never undone before it served anyone);
- a pinned workload, once it has served, stays resident;
- the pool never holds more than its budget, and no instance runs twice.

This is the livelock of the reliability issue (three streaming clients, room for one, a
short ``max_defer``: reservations stole each other's room and evicted workloads mid-restore,
and nothing was served). Sequences are seeded: a failure names its seed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from typing import Any

import pytest

from activator.errors import QueueFull, WakeFailed, WakeTimeout
from activator.workload import Workload
from tests.activator.test_pool import GB, pooled
from warmpool import CheckpointFailed, FakeRuntime, RestoreFailed, StartFailed

pytestmark = pytest.mark.anyio

SEEDS = range(int(os.environ.get("DORMANT_PROPERTY_SEEDS", "150")))
ARRIVALS = 30
"""Random requests per sequence, beside the streaming clients."""
STREAMED = 4
"""Requests each streaming client sends, one after the other."""
BOUND = "5s"
"""wake_timeout: far above what any wait here takes (milliseconds): a WakeTimeout is a hang."""


class Violation(AssertionError):
    pass


def swaps_in(workloads: dict[str, Workload]) -> int:
    return sum(
        w.counters["boots"] + w.counters["restores"] + w.counters["resumes"]
        for w in workloads.values()
    )


async def _sequence(seed: int) -> None:
    rng = random.Random(seed)
    n = rng.randint(2, 5)
    room = rng.randint(1, n - 1)
    names = [chr(ord("a") + i) for i in range(n)]
    pinned = names[-1] if room >= 2 and rng.random() < 0.5 else None
    equal = rng.random() < 0.7
    extra: dict[str, dict[str, Any]] = {
        name: {
            "wake_timeout": BOUND,
            "max_in_flight": rng.choice([0, 1, 2]),
            "retry_backoff": "1ms",
            "pin": name == pinned,
            "priority": 0 if equal else rng.choice([-3, 0, 3]),
        }
        for name in names
    }
    runtime = FakeRuntime(
        latency={op: rng.choice([0.0, 0.0005, 0.002]) for op in ("boot", "restore", "checkpoint")}
    )
    pool, w = pooled(runtime, budget=room * GB, max_defer=rng.choice([0.0, 0.005, 0.02]), **extra)
    scripted = 0
    requests = 0
    pinned_served = False
    errors: list[str] = []

    def check() -> None:
        if pool.used() > room * GB:
            raise Violation(f"seed {seed}: the pool holds {pool.used()} > {room * GB}")
        if pinned_served and pinned is not None and not pool.holds(pinned):
            raise Violation(f"seed {seed}: pinned {pinned} left the device ({w[pinned].state})")

    async def request(name: str, hold: float) -> None:
        nonlocal requests, pinned_served
        requests += 1
        before = swaps_in(w)
        try:
            lease = await w[name].acquire()
        except WakeFailed as exc:
            errors.append(f"{name}: {exc.message}")
            return
        except (WakeTimeout, QueueFull) as exc:
            raise Violation(f"seed {seed}: {name}: {type(exc).__name__}: {exc.message}") from exc
        waited = swaps_in(w) - before
        if equal and waited > n + 1:
            raise Violation(f"seed {seed}: a request for {name} waited for {waited} swaps")
        if name == pinned:
            pinned_served = True
        try:
            await asyncio.sleep(hold)
        finally:
            lease.release()

    async def stream(name: str) -> None:
        for _ in range(STREAMED):
            await request(name, rng.choice([0.0, 0.001, 0.004]))

    tasks = [asyncio.ensure_future(stream(name)) for name in rng.sample(names, rng.randint(1, n))]
    for _ in range(ARRIVALS):
        op = rng.choice(["request"] * 6 + ["fail_checkpoint", "fail_restore", "fail_boot"])
        if op == "request":
            name = rng.choices(names, [1 / (i + 1) for i in range(n)])[0]
            tasks.append(asyncio.ensure_future(request(name, rng.choice([0.0, 0.001, 0.004]))))
        elif op == "fail_checkpoint":
            runtime.fail_next("checkpoint", CheckpointFailed("dump refused"))
            scripted += 1
        elif op == "fail_restore":
            runtime.fail_next("restore", RestoreFailed("images corrupt"))
        else:
            runtime.fail_next("boot", StartFailed("exit 1"))
            scripted += 1
        check()
        await asyncio.sleep(rng.choice([0.0, 0.0, 0.001, 0.003]))

    try:
        async with asyncio.timeout(30):
            results = await asyncio.gather(*tasks, return_exceptions=True)
    except TimeoutError:
        raise Violation(f"seed {seed}: {sum(not t.done() for t in tasks)} requests hang") from None
    for result in results:
        if isinstance(result, BaseException):
            raise Violation(f"seed {seed}: {type(result).__name__}: {result}") from result
    check()
    if errors and not scripted:
        raise Violation(f"seed {seed}: refused without a scripted failure: {errors}")
    if swaps_in(w) > requests:
        raise Violation(f"seed {seed}: {swaps_in(w)} swaps in for {requests} requests")
    if runtime.violations:
        raise Violation(f"seed {seed}: {runtime.violations}")
    for workload in w.values():
        assert workload.in_flight == 0 and workload.waiting == 0, f"seed {seed}"
        with contextlib.suppress(Exception):
            await workload.shutdown("stop")


async def test_every_request_is_served_within_a_bound_and_swaps_never_outnumber_them() -> None:
    for seed in SEEDS:
        await _sequence(seed)


async def test_three_streaming_clients_in_room_for_one_are_all_served() -> None:
    """The livelock, small: one client per workload, each asking again at once, room for one
    and max_defer shorter than a stream. Every client is served; each swap serves."""
    runtime = FakeRuntime(latency={"checkpoint": 0.01, "restore": 0.005, "boot": 0.005})
    settings = {"wake_timeout": "3s", "max_in_flight": 1}
    pool, w = pooled(runtime, budget=GB, max_defer=0.01, a=settings, b=settings, c=settings)
    served = dict.fromkeys(w, 0)

    async def client(name: str) -> None:
        for _ in range(5):
            lease = await w[name].acquire()
            await asyncio.sleep(0.02)  # a stream, longer than max_defer
            lease.release()
            served[name] += 1

    async with asyncio.timeout(30):
        await asyncio.gather(*(client(name) for name in w))
    assert served == {"a": 5, "b": 5, "c": 5}
    assert swaps_in(w) <= 15 and not runtime.violations
    assert sum(pool.thrash_count(name) for name in w) > 0  # each came back for a waiter
