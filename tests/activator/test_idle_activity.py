"""The idle reaper asks the runtime too: traffic that reaches an instance without the proxy
(a pod behind its Service) keeps it awake; a runtime that cannot tell changes nothing."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from activator.config.settings import parse_settings
from activator.metrics import Metrics
from activator.reaper import Reaper
from activator.states import State
from activator.workload import Workload
from warmpool import FakeRuntime, Instance, InstanceSpec

pytestmark = pytest.mark.anyio


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class SeenRuntime(FakeRuntime):
    """A fake whose instances report their own idle time (as a pod's supervisor does)."""

    seen: float | None = None
    asked: int = 0

    async def idle_for(self, instance: Instance) -> float | None:
        self.asked += 1
        return self.seen


def workload(runtime: FakeRuntime, clock: Clock, name: str = "w") -> Workload:
    raw = {"name": name, "models": [f"m-{name}"], "command": ["serve"], "idle_after": 10}
    s = parse_settings({"workloads": [raw]}).workloads[0]
    spec = InstanceSpec(name=name, command=("serve",))
    return Workload(s, runtime, Metrics(), lambda: spec, clock=clock)


async def _tick(reaper: Reaper, w: Workload) -> State:
    reaper.tick()
    await asyncio.gather(*reaper._running.values())  # the hibernation the tick started
    reaper._running.clear()
    return w.state


async def _ready(w: Workload) -> None:
    lease = await w.acquire()
    lease.release()
    assert w.state is State.READY


async def test_recent_traffic_at_the_server_keeps_it_awake_and_counts_as_activity() -> None:
    clock, runtime = Clock(), SeenRuntime()
    w = workload(runtime, clock)
    await _ready(w)
    reaper = Reaper([w], interval=1.0)
    clock.now += 11  # idle for the proxy
    runtime.seen = 3.0  # but the pod served a request 3 s ago
    assert await _tick(reaper, w) is State.READY
    assert runtime.calls["checkpoint"] == 0 and runtime.asked == 1
    assert w.idle_for() == pytest.approx(3.0)  # the server's view moved the clock
    clock.now += 7.5  # 10.5 s since the server's traffic, and it saw nothing since
    runtime.seen = 10.5
    assert await _tick(reaper, w) is State.HIBERNATED
    assert runtime.calls["checkpoint"] == 1


async def test_a_runtime_that_cannot_tell_leaves_the_proxys_view() -> None:
    clock, runtime = Clock(), SeenRuntime()
    w = workload(runtime, clock)
    await _ready(w)
    reaper = Reaper([w], interval=1.0)
    clock.now += 5
    assert await _tick(reaper, w) is State.READY and runtime.asked == 0  # not idle: not asked
    clock.now += 6
    runtime.seen = None
    assert await _tick(reaper, w) is State.HIBERNATED and runtime.asked == 1


async def test_the_reaper_follows_a_changing_set_of_workloads() -> None:
    clock, runtime = Clock(), SeenRuntime()
    a, b = workload(runtime, clock, "a"), workload(runtime, clock, "b")
    live: list[Any] = [a]
    reaper = Reaper(live, interval=1.0)
    await _ready(a)
    await _ready(b)
    live.append(b)  # added after the reaper was made (a policy created at run time)
    clock.now += 11
    reaper.tick()
    await asyncio.gather(*reaper._running.values())
    assert a.state is State.HIBERNATED and b.state is State.HIBERNATED
