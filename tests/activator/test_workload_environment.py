"""The workload when the environment fails, not the snapshot or the command (fake runtime):
a restore the machine refused keeps the snapshot and answers 503 + Retry-After without a cold
boot; an error of any type never leaves a transitional state; "cannot tell" is not "dead"."""

from __future__ import annotations

import errno
import os

import pytest

from activator.errors import WakeFailed
from activator.states import State
from tests.activator.test_workload import Clock, workload
from warmpool import FakeRuntime, RestoreDeferred

pytestmark = pytest.mark.anyio


def emfile() -> OSError:
    return OSError(errno.EMFILE, os.strerror(errno.EMFILE))


async def test_a_deferred_restore_keeps_the_snapshot_and_answers_503_retry_after() -> None:
    runtime = FakeRuntime()
    snapshot = runtime.add_snapshot("w")
    clock = Clock()
    w = workload(runtime, clock, retry_backoff="5s")
    runtime.fail_next("restore", RestoreDeferred("port 8000 is taken by another process", "", 7))
    with pytest.raises(WakeFailed) as failed:
        await w.acquire()
    assert failed.value.status == 503
    assert failed.value.headers["Retry-After"] == "7"
    assert "port 8000 is taken" in failed.value.message
    assert runtime.calls["boot"] == 0, "nothing boots over a kept snapshot"
    assert runtime.latest("w") == snapshot, "the snapshot is kept"
    assert w.state is State.FAILED and w.counters["restore_deferred"] == 1
    # within the backoff: at once, with the reason and when to come back
    with pytest.raises(WakeFailed) as again:
        await w.acquire()
    assert "port 8000 is taken" in again.value.message and "Retry-After" in again.value.headers
    assert runtime.calls["restore"] == 1
    clock.now += 5
    lease = await w.acquire()
    assert lease.instance.restored_from == snapshot.id and runtime.calls["boot"] == 0
    lease.release()


async def test_a_store_that_cannot_be_read_now_is_not_no_snapshot() -> None:
    runtime = FakeRuntime()
    runtime.add_snapshot("w")
    w = workload(runtime)
    runtime.fail_next("latest", emfile())
    with pytest.raises(WakeFailed) as failed:
        await w.acquire()
    assert failed.value.status == 503 and "Retry-After" in failed.value.headers
    assert "Too many open files" in failed.value.message
    assert runtime.calls["boot"] == 0 and runtime.calls["restore"] == 0
    assert w.state is State.HIBERNATED, "nothing began: where it was"
    lease = await w.acquire()  # the files came back
    assert lease.instance.restored_from is not None
    lease.release()


async def test_an_oserror_from_boot_leaves_failed_not_starting() -> None:
    runtime = FakeRuntime()
    clock = Clock()
    w = workload(runtime, clock, retry_backoff="1s")
    runtime.fail_next("boot", emfile())
    with pytest.raises(WakeFailed, match="Too many open files"):
        await w.acquire()
    assert w.state is State.FAILED
    clock.now += 1
    lease = await w.acquire()  # fds came back: it boots, no IllegalTransition
    assert w.state is State.READY
    lease.release()


async def test_an_oserror_from_checkpoint_leaves_it_serving() -> None:
    runtime = FakeRuntime()
    w = workload(runtime)
    (await w.acquire()).release()
    runtime.fail_next("checkpoint", emfile())
    with pytest.raises(Exception, match="Too many open files"):
        await w.hibernate()
    assert w.state is State.READY
    (await w.acquire()).release()


async def test_cannot_tell_whether_alive_is_not_dead() -> None:
    runtime = FakeRuntime()
    w = workload(runtime)
    (await w.acquire()).release()
    live = runtime.live["w"]
    live.cannot_tell(emfile())
    w.check_alive()  # the reaper's look
    assert w.state is State.READY, "an error while looking is not a death"
    lease = await w.acquire()
    assert lease.instance is live and runtime.calls["boot"] == 1, "no second copy"
    lease.release()
    live.cannot_tell(None)
    live.crash()
    w.check_alive()
    assert w.state is State.FAILED
