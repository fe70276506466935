"""Requests and WebSockets that are not a user's activity (a notebook page's housekeeping,
``activator.activity``): they neither wake a sleeping workload nor keep it awake; and the
calls the waking page and held sockets use (``begin_wake``, ``waking_for``,
``until_ready``). On the fake runtime: what happened is counted, not timed."""

from __future__ import annotations

import asyncio

import pytest

from activator.config.settings import parse_settings
from activator.errors import NotAwake
from activator.metrics import Metrics
from activator.states import State
from activator.workload import Workload
from warmpool import FakeRuntime, InstanceSpec

pytestmark = pytest.mark.anyio


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _workload(runtime: FakeRuntime, clock: Clock) -> Workload:
    raw = {"name": "nb", "kind": "jupyter", "idle_after": 10}
    s = parse_settings({"workloads": [raw]}).workloads[0]
    spec = InstanceSpec(name="nb", command=("serve",))
    return Workload(s, runtime, Metrics(), lambda: spec, clock=clock)


async def test_housekeeping_does_not_wake_a_sleeping_workload() -> None:
    runtime = FakeRuntime()
    w = _workload(runtime, Clock())
    with pytest.raises(NotAwake) as refused:
        await w.acquire(wake=False, activity=False)
    assert refused.value.status == 409 and refused.value.headers["Retry-After"]
    with pytest.raises(NotAwake):
        await w.connect(wake=False, activity=False)
    assert w.state is State.COLD and runtime.calls["boot"] == 0 and w.waiting == 0


async def test_housekeeping_waits_for_a_wake_under_way_without_counting() -> None:
    runtime = FakeRuntime(latency={"boot": 0.05})
    clock = Clock()
    w = _workload(runtime, clock)
    waking = asyncio.ensure_future(w.acquire())  # a user's request wakes it
    await asyncio.sleep(0)
    quiet = await w.acquire(wake=False, activity=False)  # a poll rides along
    (await waking).release()
    assert runtime.calls["boot"] == 1
    clock.now += 7
    quiet.release()
    assert w.idle_for() == 7, "a poll that ends is not activity"


async def test_housekeeping_on_a_ready_workload_does_not_reset_idleness() -> None:
    clock = Clock()
    w = _workload(FakeRuntime(), clock)
    (await w.acquire()).release()
    clock.now += 9
    lease = w.try_acquire(activity=False)
    assert lease is not None
    lease.release()
    connection = await w.connect(activity=False)
    connection.close()
    assert w.idle_for() == 9
    connection = await w.connect(activity=False)
    clock.now += 1
    connection.touch()  # a user's message on it
    assert w.idle_for() == 0
    connection.close()


async def test_hibernating_does_not_let_housekeeping_wake_it_again() -> None:
    """The bug: a page reconnecting 8 ms after an admin's hibernate woke the notebook."""
    runtime = FakeRuntime(latency={"checkpoint": 0.05})
    w = _workload(runtime, Clock())
    (await w.acquire()).release()
    hibernating = asyncio.ensure_future(w.hibernate())
    await asyncio.sleep(0.01)
    assert w.state is State.CHECKPOINTING
    with pytest.raises(NotAwake):
        await w.connect(wake=False, activity=False)
    assert await hibernating is State.HIBERNATED
    await asyncio.sleep(0.01)
    assert w.state is State.HIBERNATED and runtime.calls["restore"] == 0


async def test_begin_wake_until_ready_and_waking_for() -> None:
    runtime = FakeRuntime(latency={"boot": 0.05})
    clock = Clock()
    w = _workload(runtime, clock)
    ready = asyncio.ensure_future(w.until_ready())
    task = w.begin_wake()
    assert task is not None and w.begin_wake() is task, "one wake, joined"
    clock.now += 3
    assert w.waking_for() == 3
    assert not ready.done()
    await task
    await asyncio.wait_for(ready, 1)
    assert w.begin_wake() is None, "ready: nothing to start"
    await w.hibernate()
    assert not asyncio.ensure_future(w.until_ready()).done()
