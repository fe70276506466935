"""The workload lifecycle on the fake runtime: every case in milliseconds, no process.

The fake (warmpool.runtimes.fake) stands in for the real runtime only here, where the point is
the state machine's decisions; the same cases run against CRIU and real servers in
tests/integration.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from activator.config.settings import WorkloadSettings, parse_settings
from activator.errors import Conflict, QueueFull, WakeFailed, WakeTimeout
from activator.lease import Lease
from activator.metrics import Metrics
from activator.states import State
from activator.workload import Workload
from warmpool import CheckpointFailed, FakeRuntime, InstanceSpec, RestoreFailed, StartFailed

pytestmark = pytest.mark.anyio


def settings(**overrides: Any) -> WorkloadSettings:
    raw = {"name": "w", "models": ["m"], "command": ["serve"], "idle_after": 0, **overrides}
    return parse_settings({"workloads": [raw]}).workloads[0]


class Clock:
    """A clock the test moves by hand (backoff and idle time)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def workload(runtime: FakeRuntime, clock: Any = None, **overrides: Any) -> Workload:
    s = settings(**overrides)
    spec = InstanceSpec(name=s.name, command=("serve",))
    kwargs = {"clock": clock} if clock is not None else {}
    return Workload(s, runtime, Metrics(), lambda: spec, **kwargs)


async def serve_after_a_restore(w: Workload) -> None:
    """Boot, hibernate, then restore ``w``: it serves with a committed snapshot behind it."""
    (await w.acquire()).release()
    await w.hibernate()
    (await w.acquire()).release()


async def test_concurrent_waiters_share_exactly_one_restore() -> None:
    runtime = FakeRuntime(latency={"restore": 0.05})
    runtime.add_snapshot("w")
    w = workload(runtime)
    assert w.state is State.HIBERNATED
    leases = await asyncio.gather(*(w.acquire() for _ in range(50)))
    assert runtime.calls["restore"] == 1 and runtime.calls["boot"] == 0
    assert {lease.instance for lease in leases} == {runtime.live["w"]}
    assert all(lease.waited is not None and lease.waited.path == "restore" for lease in leases)
    assert w.in_flight == 50
    for lease in leases:
        lease.release()
    assert w.in_flight == 0 and w.state is State.READY


async def test_queue_full_answers_503_with_retry_after() -> None:
    runtime = FakeRuntime(latency={"boot": 0.2})
    w = workload(runtime, queue_depth=3)
    waiting = [asyncio.ensure_future(w.acquire()) for _ in range(3)]
    await asyncio.sleep(0.01)
    with pytest.raises(QueueFull) as info:
        await w.acquire()
    assert info.value.status == 503 and "Retry-After" in info.value.headers
    for lease in await asyncio.gather(*waiting):
        lease.release()
    assert runtime.calls["boot"] == 1


async def test_wake_deadline_answers_504_and_the_wake_goes_on() -> None:
    runtime = FakeRuntime(latency={"boot": 0.3})
    w = workload(runtime, wake_timeout="50ms")
    with pytest.raises(WakeTimeout) as info:
        await w.acquire()
    assert info.value.status == 504
    assert w.waiting == 0  # it left the queue
    assert (await w.wake()) is not None  # the one wake finished for whoever comes next
    assert w.state is State.READY and runtime.calls["boot"] == 1


async def test_drain_that_times_out_keeps_serving() -> None:
    runtime = FakeRuntime()
    w = workload(runtime, drain_timeout="50ms")
    lease = await w.acquire()
    with pytest.raises(Conflict):
        await w.hibernate()
    assert w.state is State.READY and runtime.calls["checkpoint"] == 0
    second = w.try_acquire()
    assert second is not None and second.instance is lease.instance
    lease.release()
    second.release()


async def test_restore_failure_retires_the_snapshot_and_cold_boots() -> None:
    runtime = FakeRuntime()
    bad = runtime.add_snapshot("w")
    runtime.fail_next("restore", RestoreFailed("images corrupt"))
    w = workload(runtime)
    lease = await w.acquire()
    assert lease.waited is not None and lease.waited.path == "boot"
    assert runtime.calls["restore"] == 1 and runtime.calls["boot"] == 1
    assert bad not in runtime.snapshots["w"]  # the runtime retired it
    assert w.counters["restore_failures"] == 1
    assert "images corrupt" in w.last_error and w.last_error_at is not None
    lease.release()


async def test_start_failure_fails_fast_for_retry_backoff() -> None:
    clock = Clock()
    runtime = FakeRuntime()
    runtime.fail_next("boot", StartFailed("command exited with status 3"))
    w = workload(runtime, clock, retry_backoff="5s")
    with pytest.raises(WakeFailed, match="status 3"):
        await w.acquire()
    assert w.state is State.FAILED
    clock.now += 1
    with pytest.raises(WakeFailed, match=r"next attempt in 4\.0s"):
        await w.acquire()
    assert runtime.calls["boot"] == 1  # failing fast: no second boot
    clock.now += 5
    (await w.acquire()).release()
    assert runtime.calls["boot"] == 2 and w.state is State.READY


async def test_crash_retries_at_once_and_restores_the_snapshot() -> None:
    runtime = FakeRuntime()
    w = workload(runtime)
    await serve_after_a_restore(w)
    runtime.live["w"].crash()
    w.check_alive()
    assert w.state is State.FAILED
    lease = await w.acquire()  # no backoff after a crash; the snapshot is still there
    assert lease.waited is not None and lease.waited.path == "restore"
    lease.release()


async def test_hibernate_of_a_crashed_workload_with_a_snapshot_rests_hibernated() -> None:
    """It used to become `cold` and every request got IllegalTransition."""
    runtime = FakeRuntime()
    w = workload(runtime)
    await serve_after_a_restore(w)
    runtime.live["w"].crash()
    w.check_alive()
    assert await w.hibernate() is State.HIBERNATED
    lease = await w.acquire()
    assert lease.waited is not None and lease.waited.path == "restore"
    lease.release()


async def test_hibernate_racing_a_wake() -> None:
    runtime = FakeRuntime(latency={"checkpoint": 0.05, "restore": 0.05})
    w = workload(runtime)
    (await w.acquire()).release()
    hibernating = asyncio.ensure_future(w.hibernate())
    await asyncio.sleep(0.01)
    assert w.state is State.CHECKPOINTING
    record = await w.wake()  # waits for the hibernation, then restores
    assert await hibernating is State.HIBERNATED
    assert record is not None and record.path == "restore"
    assert w.state is State.READY and runtime.calls["restore"] == 1
    assert not runtime.violations


async def test_requests_never_reach_a_draining_checkpointing_or_stopped_instance() -> None:
    runtime = FakeRuntime(latency={"checkpoint": 0.05, "restore": 0.02})
    w = workload(runtime)
    first = await w.acquire()
    old = first.instance
    hibernating = asyncio.ensure_future(w.hibernate())
    await asyncio.sleep(0.01)
    assert w.state is State.DRAINING
    assert w.try_acquire() is None  # nothing admitted while draining
    later = asyncio.ensure_future(w.acquire())
    await asyncio.sleep(0.01)
    assert not later.done()
    first.release()
    await hibernating
    lease = await later
    assert lease.instance is not old and not old.alive()
    assert lease.instance.alive() and lease.waited is not None
    lease.release()


async def test_shutdown_with_requests_in_flight_stops_the_instance() -> None:
    runtime = FakeRuntime()
    w = workload(runtime)
    lease = await w.acquire()
    await w.shutdown("stop")
    assert w.state is State.COLD and not lease.instance.alive()
    lease.release()  # a late release after shutdown is harmless
    assert w.in_flight == 0


async def test_shutdown_hibernate_checkpoints_and_the_next_owner_restores() -> None:
    runtime = FakeRuntime()
    w = workload(runtime)
    (await w.acquire()).release()
    await w.shutdown("hibernate")
    assert w.state is State.HIBERNATED and runtime.calls["checkpoint"] == 1
    again = workload(runtime)  # Dormant restarted: the workload starts hibernated
    assert again.state is State.HIBERNATED


async def test_checkpoint_failure_keeps_serving_the_same_instance() -> None:
    runtime = FakeRuntime()
    w = workload(runtime)
    first = await w.acquire()
    first.release()
    runtime.fail_next("checkpoint", CheckpointFailed("criu: ctty inheritance detected"))
    with pytest.raises(CheckpointFailed):
        await w.hibernate()
    assert w.state is State.READY and "ctty" in w.last_error
    lease = w.try_acquire()
    assert lease is not None and lease.instance is first.instance
    lease.release()


async def test_commit_failure_serves_from_the_replacement() -> None:
    """Disk full after a successful dump left no process, no snapshot and
    a workload stuck in `checkpointing`."""
    runtime = FakeRuntime()
    w = workload(runtime)
    first = await w.acquire()
    first.release()
    runtime.fail_next("checkpoint", CheckpointFailed("no space left"), replace=True)
    with pytest.raises(CheckpointFailed):
        await w.hibernate()
    assert w.state is State.READY and not first.instance.alive()
    lease = w.try_acquire()
    assert lease is not None and lease.instance is runtime.live["w"]
    lease.release()


async def test_checkpoint_that_loses_the_process_says_so_and_the_next_request_restores() -> None:
    runtime = FakeRuntime()
    w = workload(runtime)
    await serve_after_a_restore(w)
    runtime.fail_next("checkpoint", CheckpointFailed("state lost"), keep_instance=False)
    with pytest.raises(CheckpointFailed):
        await w.hibernate()
    assert w.state is State.FAILED and "process is gone" in w.last_error
    lease = await w.acquire()  # the older snapshot is still committed: restore it
    assert lease.waited is not None and lease.waited.path == "restore"
    lease.release()


async def test_restart_engine_hibernates_by_stopping() -> None:
    runtime = FakeRuntime(checkpoint_ok=False)
    w = workload(runtime)
    first = await w.acquire()
    first.release()
    assert await w.hibernate() is State.COLD
    assert not first.instance.alive() and runtime.calls["checkpoint"] == 0
    lease = await w.acquire()
    assert lease.waited is not None and lease.waited.path == "boot"
    lease.release()


async def test_a_spec_that_cannot_be_built_fails_the_wake_and_changes_nothing() -> None:
    runtime = FakeRuntime()
    runtime.add_snapshot("w")

    def broken() -> InstanceSpec:
        raise WakeFailed("w: cannot prepare the notebook server: disk full", workload="w")

    w = Workload(settings(), runtime, Metrics(), broken)
    with pytest.raises(WakeFailed, match="disk full"):
        await w.acquire()
    assert w.state is State.HIBERNATED and runtime.calls["restore"] == 0


async def test_admin_wake_returns_only_when_ready() -> None:
    runtime = FakeRuntime(latency={"checkpoint": 0.05, "restore": 0.05})
    w = workload(runtime)
    (await w.acquire()).release()
    hibernating = asyncio.ensure_future(w.hibernate())
    await asyncio.sleep(0)
    await w.wake()
    assert w.state is State.READY
    await hibernating


async def test_max_in_flight_queues_in_order() -> None:
    runtime = FakeRuntime()
    w = workload(runtime, max_in_flight=1)
    first = await w.acquire()
    order: list[int] = []

    async def take(i: int) -> Lease:
        lease = await w.acquire()
        order.append(i)
        return lease

    waiting = [asyncio.ensure_future(take(i)) for i in range(3)]
    await asyncio.sleep(0.01)
    assert not any(t.done() for t in waiting)
    first.release()
    for task in waiting:
        (await task).release()
    assert order == [0, 1, 2]


async def test_second_early_death_after_a_restore_sets_the_snapshot_aside() -> None:
    """Issue "Restore that survives today's CPUs": a snapshot whose restored process dies
    within seconds (SIGILL) was restored again and again; the second early death in a row
    sets it aside as suspect and the next wake boots cold, saying why in one line."""
    clock = Clock()
    runtime = FakeRuntime()
    w = workload(runtime, clock)
    await serve_after_a_restore(w)
    snapshot = runtime.live["w"].restored_from
    assert snapshot is not None
    runtime.live["w"].crash("killed by signal 4")
    clock.now += 0.5
    w.check_alive()
    assert w.state is State.FAILED and runtime.calls["set_aside"] == 0
    lease = await w.acquire()  # the first death: restore once more
    assert lease.waited is not None and lease.waited.path == "restore"
    lease.release()
    runtime.live["w"].crash("killed by signal 4")
    clock.now += 0.5
    w.check_alive()
    assert runtime.suspect.keys() == {snapshot}
    assert "2 times in a row" in runtime.suspect[snapshot]
    assert f"snapshot {snapshot} set aside as suspect" in w.last_error
    assert "SIGILL" in w.last_error and "\n" not in w.last_error
    assert w.view()["counters"]["snapshots_set_aside"] == 1
    lease = await w.acquire()
    assert lease.waited is not None and lease.waited.path == "boot"
    lease.release()


async def test_a_restored_process_that_served_a_while_does_not_count_against_its_snapshot() -> None:
    clock = Clock()
    runtime = FakeRuntime()
    w = workload(runtime, clock)
    await serve_after_a_restore(w)
    for _ in range(3):
        runtime.live["w"].crash()
        clock.now += 120  # it served for two minutes: the snapshot is fine
        w.check_alive()
        lease = await w.acquire()
        assert lease.waited is not None and lease.waited.path == "restore"
        lease.release()
    assert runtime.calls["set_aside"] == 0 and not runtime.suspect
