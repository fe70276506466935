"""The warm pool wired into the workload lifecycle, on the fake runtime (no process: the
point is who leaves the device, when, and that every request is answered). The same flow
runs with real reference servers and CRIU in tests/integration/test_pool.py."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from activator.config.settings import parse_settings
from activator.errors import WakeFailed
from activator.metrics import Metrics
from activator.states import State
from activator.workload import Workload
from warmpool import CheckpointFailed, FakeRuntime, InstanceSpec
from warmpool.pool import Pool

pytestmark = pytest.mark.anyio

GB = 1 << 30


def pooled(
    runtime: FakeRuntime,
    budget: int = 2 * GB,
    *,
    suspend_frees: bool = False,
    max_defer: float = 30.0,
    host_ram: int = 64 * GB,
    **per_workload: dict[str, Any],
) -> tuple[Pool, dict[str, Workload]]:
    """Workloads (name -> extra settings) of 1 GiB each sharing a ``budget`` pool."""
    raw = [
        {
            "name": name,
            "models": [name],
            "command": ["serve"],
            "idle_after": 0,
            "memory": "1GiB",
            "wake_timeout": "2s",
            "drain_timeout": "2s",
            **extra,
        }
        for name, extra in per_workload.items()
    ]
    settings = parse_settings({"device": {"memory_budget": budget}, "workloads": raw})
    pool = Pool(
        budget,
        kind="test",
        max_defer=max_defer,
        suspend_frees=suspend_frees,
        host_ram_free=lambda: host_ram,
        poll=0.01,
    )
    metrics = Metrics()
    workloads = {}
    for s in settings.workloads:
        spec = InstanceSpec(name=s.name, command=("serve",), suspend=s.suspend)
        w = Workload(s, runtime, metrics, (lambda spec=spec: spec), pool=pool)
        pool.join(w, declared=s.memory or 0)
        workloads[s.name] = w
    return pool, workloads


async def use(w: Workload, hold: float = 0.0) -> str:
    lease = await w.acquire()
    try:
        await asyncio.sleep(hold)
        return lease.waited.path if lease.waited else "warm"
    finally:
        lease.release()


async def test_the_least_recently_used_leaves_and_one_swap_serves_every_waiter() -> None:
    runtime = FakeRuntime(latency={"checkpoint": 0.02, "restore": 0.02})
    pool, w = pooled(runtime, a={}, b={}, c={})
    await use(w["a"])
    await use(w["b"])
    assert pool.used() == 2 * GB
    paths = await asyncio.gather(*(use(w["c"]) for _ in range(20)))
    assert paths == ["boot"] * 20
    assert w["a"].state is State.HIBERNATED and w["b"].state is State.READY
    assert runtime.calls["checkpoint"] == 1 and runtime.calls["boot"] == 3
    assert pool.used() == 2 * GB and not runtime.violations
    assert await use(w["a"]) == "restore"  # back from its snapshot; b (now LRU) left
    assert w["b"].state is State.HIBERNATED and w["a"].counters["swaps_out"] == 1


async def test_a_pinned_workload_is_never_chosen() -> None:
    runtime = FakeRuntime()
    _, w = pooled(runtime, a={"pin": True}, b={}, c={})
    await use(w["a"])
    await use(w["b"])
    for name in ("c", "b", "c", "b"):
        await use(w[name])
        assert w["a"].state is State.READY
    assert w["a"].counters["checkpoints"] == 0


async def test_requests_in_flight_keep_a_workload_on_the_device() -> None:
    runtime = FakeRuntime()
    _, w = pooled(runtime, a={}, b={}, c={})
    await use(w["a"])
    await use(w["b"])
    busy = asyncio.ensure_future(use(w["a"], hold=0.3))  # a is older but busy
    await asyncio.sleep(0.01)
    assert await use(w["c"]) == "boot"
    assert w["b"].state is State.HIBERNATED and w["a"].state is State.READY
    await busy


async def test_min_resident_blocks_a_swap_with_a_clear_503_and_retry_after() -> None:
    runtime = FakeRuntime()
    _, w = pooled(runtime, a={"min_resident": "60s"}, b={"min_resident": "60s"}, c={})
    await use(w["a"])
    await use(w["b"])
    with pytest.raises(WakeFailed) as info:
        await w["c"].acquire()
    assert info.value.status == 503
    assert "min_resident" in info.value.message
    assert 50 <= int(info.value.headers["Retry-After"]) <= 60
    assert w["a"].state is State.READY and w["b"].state is State.READY
    assert w["c"].state is State.COLD  # nothing was done to it


async def test_priority_beats_recency() -> None:
    runtime = FakeRuntime()
    _, w = pooled(runtime, a={"priority": 5}, b={}, c={})
    await use(w["b"])
    await use(w["a"])  # a is the most recently used, b the least; but...
    await use(w["b"])  # ...now a is the least recently used, and has the higher priority
    await use(w["c"])
    assert w["a"].state is State.READY and w["b"].state is State.HIBERNATED


async def test_busy_residents_yield_after_the_starvation_bound() -> None:
    runtime = FakeRuntime()
    _, w = pooled(runtime, max_defer=0.2, a={}, b={}, c={})
    await use(w["a"])
    await use(w["b"])
    streams = [asyncio.ensure_future(use(w[n], hold=0.5)) for n in ("a", "b")]
    await asyncio.sleep(0.01)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await use(w["c"]) == "boot"  # after max_defer one drains (its request finishes)
    assert loop.time() - started >= 0.2
    await asyncio.gather(*streams)  # the busy ones' requests were served, not cut
    assert [w[n].state for n in "ab"].count(State.HIBERNATED) == 1


async def test_suspend_when_it_frees_the_device_and_host_ram_allows() -> None:
    runtime = FakeRuntime(suspend_ok=True)
    _, w = pooled(runtime, suspend_frees=True, a={"suspend": "hooks"}, b={}, c={})
    await use(w["a"])
    await use(w["b"])
    await use(w["c"])  # a (least recently used) can be suspended: the faster tier
    assert w["a"].state is State.SUSPENDED and runtime.live["a"].suspended
    assert await use(w["a"]) == "resume"
    assert not runtime.live["a"].suspended and w["a"].counters["resumes"] == 1
    assert w["b"].state is State.HIBERNATED  # b could only be hibernated


async def test_without_host_ram_a_suspendable_workload_is_hibernated() -> None:
    runtime = FakeRuntime(suspend_ok=True)
    _, w = pooled(runtime, suspend_frees=True, host_ram=0, a={"suspend": "hooks"}, b={}, c={})
    await use(w["a"])
    await use(w["b"])
    await use(w["c"])
    assert w["a"].state is State.HIBERNATED


async def test_a_failed_swap_leaves_every_workload_serving() -> None:
    runtime = FakeRuntime()
    _, w = pooled(runtime, a={}, b={}, c={})
    await use(w["a"])
    await use(w["b"])
    runtime.fail_next("checkpoint", CheckpointFailed("dump refused"))
    assert await use(w["c"]) == "boot"  # a could not leave; the next plan took b
    assert w["a"].state is State.READY and "dump refused" in w["a"].last_error
    assert w["b"].state is State.HIBERNATED and w["c"].state is State.READY


async def test_a_swap_that_cannot_happen_answers_503_and_keeps_both_serving() -> None:
    runtime = FakeRuntime()
    _, w = pooled(runtime, a={}, b={"pin": True}, c={})
    await use(w["a"])
    await use(w["b"])
    for _ in range(3):
        runtime.fail_next("checkpoint", CheckpointFailed("dump refused"))
    with pytest.raises(WakeFailed) as info:
        await w["c"].acquire()
    assert info.value.status == 503
    assert w["a"].state is State.READY and w["b"].state is State.READY
    assert w["c"].state is State.COLD


def test_a_workload_that_can_never_fit_is_a_config_error() -> None:
    from activator.config.settings import ConfigError

    with pytest.raises(ConfigError, match="can never be resident"):
        parse_settings(
            {
                "device": {"memory_budget": "1GiB"},
                "workloads": [{"name": "big", "models": ["m"], "command": ["x"], "memory": "2GiB"}],
            }
        )


async def test_random_traffic_never_exceeds_the_budget() -> None:
    """Zipf-like traffic over four workloads sharing room for two: every request is
    answered, the pool never holds more than its budget, nothing runs twice."""
    rng = random.Random(7)
    runtime = FakeRuntime(latency={"checkpoint": 0.002, "restore": 0.002, "boot": 0.002})
    pool, w = pooled(runtime, a={}, b={}, c={}, d={"pin": True})
    names = ["a", "b", "c", "d"]
    weights = [1 / (i + 1) for i in range(len(names))]
    peak = 0
    stop = asyncio.Event()

    async def watch() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, pool.used())
            await asyncio.sleep(0)

    watcher = asyncio.ensure_future(watch())
    paths = []
    for _ in range(60):  # waves of concurrent requests
        wave = [
            use(w[rng.choices(names, weights)[0]], hold=rng.choice([0, 0.001, 0.005]))
            for _ in range(5)
        ]
        paths += await asyncio.gather(*wave)
    stop.set()
    await watcher
    assert len(paths) == 300
    assert peak <= 2 * GB and not runtime.violations
    assert w["d"].counters["checkpoints"] == 0
    assert sum(x.counters["swaps_out"] for x in w.values()) > 3


async def test_a_workload_swapped_in_serves_its_waiters_before_it_can_be_swapped_out() -> None:
    """b asks while a boots for three waiting requests, and b may not wait at all
    (max_defer 0). a used to be chosen mid-boot and hibernated before its waiters had a
    lease: they waited for a second swap, the swap made for them undone unused."""
    runtime = FakeRuntime(latency={"boot": 0.02, "checkpoint": 0.01, "restore": 0.01})
    _, w = pooled(runtime, budget=GB, max_defer=0.0, a={"max_in_flight": 1}, b={})
    first = [asyncio.ensure_future(use(w["a"], hold=0.01)) for _ in range(3)]
    await asyncio.sleep(0.005)  # a is booting for them
    assert await use(w["b"]) == "boot"
    assert await asyncio.gather(*first) == ["boot"] * 3  # one swap served all three
    assert runtime.calls["restore"] == 0 and runtime.calls["checkpoint"] == 1
    assert w["a"].state is State.HIBERNATED and w["b"].state is State.READY
