"""A state-machine property test: random interleavings of requests, wakes, hibernations,
crashes, and checkpoint / commit / restore / boot failures, on the fake runtime -- including
errors of any type where a runtime should have translated them (OSErrors: EMFILE, ENOSPC,
EPERM), restores the environment refused (the snapshot kept), and an instance whose
liveness cannot be told for a while.

Invariants (the classes of failure made impossible):
- no IllegalTransition (or any error outside the documented trees) ever reaches a caller,
  and no error of any type leaves the workload in a transitional state;
- every request is answered: a lease on a READY workload's live instance, or a defined
  error (QueueFull, WakeTimeout, WakeFailed) — none hangs;
- a workload with a committed snapshot never rests COLD, and a restore the environment
  refused never retires it nor boots over it;
- "cannot tell" is never "dead": no instance is replaced while it runs;
- no instance ever runs twice, and none is leased while draining or checkpointing.

Sequences are seeded: a failure names its seed, and ``SEEDS`` reruns it exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import random

import pytest

from activator.errors import Conflict, QueueFull, WakeFailed, WakeTimeout
from activator.lease import Lease
from activator.states import STABLE, State
from tests.activator.test_workload import workload
from warmpool import (
    CheckpointFailed,
    FakeRuntime,
    RestoreDeferred,
    RestoreFailed,
    StartFailed,
    WarmpoolError,
)

pytestmark = pytest.mark.anyio

SEEDS = range(int(os.environ.get("DORMANT_PROPERTY_SEEDS", "150")))
STEPS = 60
OPS = (
    "request",
    "request",
    "request",
    "request",
    "wake",
    "hibernate",
    "hibernate",
    "crash",
    "reap",
    "fail_checkpoint",
    "fail_commit",
    "lose_checkpoint",
    "fail_restore",
    "fail_boot",
    "defer_restore",
    "oserror",
    "oserror",
    "unsure",
)
FOREIGN = ("boot", "restore", "checkpoint", "stop", "latest")
"""Operations an OSError is scripted into ("oserror")."""


def _oserror(rng: random.Random) -> OSError:
    code = rng.choice([errno.EMFILE, errno.ENOSPC, errno.EPERM, errno.EIO])
    return OSError(code, os.strerror(code))


REQUEST_ERRORS = (QueueFull, WakeTimeout, WakeFailed)
HIBERNATE_ERRORS = (Conflict, WarmpoolError)


class Violation(AssertionError):
    pass


async def _sequence(seed: int) -> None:
    rng = random.Random(seed)
    runtime = FakeRuntime(
        latency={
            op: rng.choice([0.0, 0.0, 0.001, 0.003]) for op in ("boot", "restore", "checkpoint")
        }
    )
    if rng.random() < 0.5:
        runtime.add_snapshot("w")
    w = workload(
        runtime,
        queue_depth=rng.choice([2, 8, 64]),
        max_in_flight=rng.choice([0, 1, 3]),
        wake_timeout="300ms",
        drain_timeout=rng.choice(["5ms", "200ms"]),
        retry_backoff="2ms",
    )
    tasks: list[asyncio.Task[None]] = []
    outstanding: set[Lease] = set()

    def check_at_rest() -> None:
        if w.state is State.COLD and runtime._newest("w") is not None:
            raise Violation(f"seed {seed}: cold with snapshot {runtime._newest('w')}")
        if not w._lock.locked() and w.state not in STABLE:
            raise Violation(f"seed {seed}: left {w.state} with no operation running")
        if w.state is State.CHECKPOINTING and any(
            lease.instance is w._instance for lease in outstanding
        ):
            raise Violation(f"seed {seed}: checkpointing an instance with a request in flight")

    async def request() -> None:
        try:
            lease = await w.acquire()
        except REQUEST_ERRORS:
            return
        # No await since acquire returned: this is what the proxy forwards to.
        if w.state is not State.READY:
            raise Violation(f"seed {seed}: leased while {w.state}")
        if lease.instance.exit_reason() == "checkpointed":
            raise Violation(f"seed {seed}: leased a checkpointed instance")
        outstanding.add(lease)
        await asyncio.sleep(rng.choice([0.0, 0.001, 0.004]))
        outstanding.discard(lease)
        lease.release()

    async def wake() -> None:
        with contextlib.suppress(WakeFailed):
            await w.wake()

    async def hibernate() -> None:
        with contextlib.suppress(*HIBERNATE_ERRORS):
            await w.hibernate("property test")

    for _ in range(STEPS):
        op = rng.choice(OPS)
        if op == "request":
            tasks.append(asyncio.ensure_future(request()))
        elif op == "wake":
            tasks.append(asyncio.ensure_future(wake()))
        elif op == "hibernate":
            tasks.append(asyncio.ensure_future(hibernate()))
        elif op == "crash":
            live = runtime.live.get("w")
            if live is not None and live._alive:
                live.crash()
        elif op == "reap":
            w.check_alive()
        elif op == "fail_checkpoint":
            runtime.fail_next("checkpoint", CheckpointFailed("dump refused"))
        elif op == "fail_commit":
            runtime.fail_next("checkpoint", CheckpointFailed("ENOSPC"), replace=True)
        elif op == "lose_checkpoint":
            runtime.fail_next("checkpoint", CheckpointFailed("lost"), keep_instance=False)
        elif op == "fail_restore":
            runtime.fail_next("restore", RestoreFailed("corrupt"))
        elif op == "fail_boot":
            runtime.fail_next("boot", StartFailed("exit 1"))
        elif op == "defer_restore":
            runtime.fail_next("restore", RestoreDeferred("port 8000 is taken", retry_after=0.001))
        elif op == "oserror":
            runtime.fail_next(rng.choice(FOREIGN), _oserror(rng))
        elif op == "unsure":
            live = runtime.live.get("w")
            if live is not None:
                live.cannot_tell(None if live._unsure else _oserror(rng))
        check_at_rest()
        await asyncio.sleep(rng.choice([0.0, 0.0, 0.0, 0.001]))

    try:
        async with asyncio.timeout(10):
            results = await asyncio.gather(*tasks, return_exceptions=True)
    except TimeoutError:
        raise Violation(f"seed {seed}: {sum(not t.done() for t in tasks)} calls hang") from None
    for result in results:
        if isinstance(result, BaseException):
            raise Violation(f"seed {seed}: {type(result).__name__}: {result}") from result
    assert w.in_flight == 0 and w.waiting == 0, f"seed {seed}"
    check_at_rest()
    await w.shutdown(rng.choice(["stop", "hibernate"]))
    check_at_rest()
    if runtime.violations:
        raise Violation(f"seed {seed}: {runtime.violations}")
    live = runtime.live.get("w")
    assert live is None or not live._alive, f"seed {seed}: an instance outlived shutdown"


async def test_random_sequences_keep_every_invariant() -> None:
    for seed in SEEDS:
        await _sequence(seed)
