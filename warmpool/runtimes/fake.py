"""A runtime that runs nothing: scripted latencies and failures, for lifecycle tests.

Like httpx's mock transport, it makes the code above the seam testable in
milliseconds: ``Workload`` cannot tell it from a real runtime. It also checks what a
real one must guarantee — never two live instances of one workload — and counts every
call, so tests assert on what happened rather than on timing.

    runtime = FakeRuntime(latency={"restore": 0.01})
    runtime.fail_next("restore", RestoreFailed("images corrupt"))      # retired, as a real one
    runtime.fail_next("restore", RestoreDeferred("port 8000 is taken"))  # kept
    runtime.fail_next("latest", OSError(24, "Too many open files"))    # any error, any step
    instance.cannot_tell(OSError(24, "Too many open files"))           # alive() raises
"""

from __future__ import annotations

import asyncio
import collections
import itertools
from dataclasses import dataclass, field
from typing import Any

from warmpool.errors import (
    CheckpointFailed,
    NotSupported,
    RestoreDeferred,
    RestoreFailed,
    WarmpoolError,
)
from warmpool.runtime import Capabilities, Endpoint, Instance, InstanceSpec, SnapshotInfo

__all__ = ["FakeInstance", "FakeRuntime"]

OPERATIONS = ("boot", "restore", "checkpoint", "suspend", "resume", "stop", "latest")


@dataclass(eq=False)
class FakeInstance:
    """An instance that exists only as this object. ``crash()`` makes it die."""

    name: str
    endpoint: Endpoint
    restored_from: str | None = None
    serial: int = 0
    suspended: bool = False
    """Its device memory is parked (by ``FakeRuntime.suspend``)."""
    _alive: bool = True
    _why: str = "running"
    _unsure: Exception | None = None

    def alive(self) -> bool:
        if self._unsure is not None:
            raise self._unsure
        return self._alive

    def cannot_tell(self, error: Exception | None) -> None:
        """``alive()`` raises ``error`` from now on (None: it answers again)."""
        self._unsure = error

    def exit_reason(self) -> str:
        return self._why

    def describe(self) -> dict[str, Any]:
        return {"fake": self.serial, "endpoint": self.endpoint.url}

    def crash(self, why: str = "killed by signal 9") -> None:
        self._alive, self._why = False, why


@dataclass
class _Failure:
    error: Exception
    keep_instance: bool = True
    """checkpoint only: whether the instance survives the failure (False: it is gone)."""
    replace: bool = False
    """checkpoint only: a replacement instance serves (restored from uncommitted images)."""


@dataclass
class FakeRuntime:
    """Implements ``warmpool.runtime.Runtime`` in memory.

    ``latency`` maps an operation name to seconds it takes (an asyncio sleep);
    ``fail_next`` queues one failure for an operation. ``snapshots`` holds the
    committed snapshots per workload, newest last."""

    checkpoint_ok: bool = True
    suspend_ok: bool = False
    """Whether ``suspend`` / ``resume`` work (a suspend engine); else NotSupported."""
    latency: dict[str, float] = field(default_factory=dict)
    snapshots: dict[str, list[SnapshotInfo]] = field(default_factory=dict)
    calls: collections.Counter[str] = field(default_factory=collections.Counter)
    suspect: dict[str, str] = field(default_factory=dict)
    """Snapshots set aside (``set_aside``): id -> reason."""
    violations: list[str] = field(default_factory=list)
    """Broken guarantees seen (e.g. a second live instance): a test asserts it stays empty."""
    live: dict[str, FakeInstance] = field(default_factory=dict)
    _failures: dict[str, collections.deque[_Failure]] = field(
        default_factory=lambda: collections.defaultdict(collections.deque)
    )
    _serial: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def capabilities(self) -> Capabilities:
        why = "" if self.suspend_ok else "the fake runtime was made without suspend"
        if self.checkpoint_ok:
            return Capabilities("fake", True, "", self.suspend_ok, why)
        return Capabilities(
            "restart", False, "fake runtime made without checkpoints", self.suspend_ok, why
        )

    # -- scripting ---------------------------------------------------------------------------

    def fail_next(
        self,
        operation: str,
        error: Exception,
        *,
        keep_instance: bool = True,
        replace: bool = False,
    ) -> None:
        """The next ``operation`` raises ``error`` (any exception: a real runtime translates
        foreign errors, but its owner must survive one that slips through). For restore:
        a snapshot is retired unless the error is RestoreDeferred (or foreign: kept). For
        checkpoint: ``keep_instance`` False means the process is gone afterwards;
        ``replace`` means a replacement serves (both for WarmpoolErrors only)."""
        assert operation in OPERATIONS, operation
        self._failures[operation].append(_Failure(error, keep_instance, replace))

    def add_snapshot(self, name: str, size: int = 1000) -> SnapshotInfo:
        info = SnapshotInfo(f"snap-{next(self._serial)}", size, 0.0, 0.01)
        self.snapshots.setdefault(name, []).append(info)
        return info

    async def _step(self, operation: str) -> _Failure | None:
        self.calls[operation] += 1
        delay = self.latency.get(operation, 0.0)
        await asyncio.sleep(delay)
        queue = self._failures.get(operation)
        return queue.popleft() if queue else None

    def _new(self, spec: InstanceSpec, restored_from: str | None) -> FakeInstance:
        current = self.live.get(spec.name)
        if current is not None and current._alive:
            self.violations.append(f"{spec.name}: a second instance started while one runs")
        serial = next(self._serial)
        instance = FakeInstance(
            spec.name, Endpoint("fake.invalid", 10000 + serial), restored_from, serial
        )
        self.live[spec.name] = instance
        return instance

    def _mine(self, instance: Instance) -> FakeInstance:
        if not isinstance(instance, FakeInstance):
            raise TypeError(f"not a fake instance: {instance!r}")
        return instance

    # -- Runtime -----------------------------------------------------------------------------

    def latest(self, name: str) -> SnapshotInfo | None:
        queue = self._failures.get("latest")
        if queue:
            self.calls["latest"] += 1
            raise queue.popleft().error
        return self._newest(name)

    def _newest(self, name: str) -> SnapshotInfo | None:
        found = self.snapshots.get(name)
        return found[-1] if found and self.checkpoint_ok else None

    def set_aside(self, name: str, snapshot_id: str, reason: str) -> bool:
        self.calls["set_aside"] += 1
        found = self.snapshots.get(name, [])
        kept = [s for s in found if s.id != snapshot_id]
        if len(kept) == len(found):
            return False
        self.snapshots[name] = kept
        self.suspect[snapshot_id] = reason
        return True

    async def boot(self, spec: InstanceSpec) -> FakeInstance:
        failure = await self._step("boot")
        if failure is not None:
            raise failure.error
        return self._new(spec, None)

    async def restore(self, spec: InstanceSpec) -> FakeInstance | None:
        failure = await self._step("restore")
        snapshot = self._newest(spec.name)
        if snapshot is None:
            return None
        if failure is not None:
            if isinstance(failure.error, (RestoreFailed, RestoreDeferred)):
                failure.error.snapshot_id = snapshot.id
            if isinstance(failure.error, WarmpoolError) and not isinstance(
                failure.error, RestoreDeferred
            ):
                self.snapshots[spec.name].remove(snapshot)  # retired, as a real runtime does
            raise failure.error
        return self._new(spec, snapshot.id)

    async def checkpoint(self, instance: Instance) -> SnapshotInfo:
        fake = self._mine(instance)
        if not self.checkpoint_ok:
            raise NotSupported(self.capabilities.checkpoint_why)
        failure = await self._step("checkpoint")
        if failure is not None and not isinstance(failure.error, WarmpoolError):
            raise failure.error  # a foreign error: the instance is left as it was
        if failure is not None:
            if failure.replace:
                fake.crash("checkpointed")
                replacement = self._new(
                    InstanceSpec(fake.name, ("fake",)), f"uncommitted-{fake.serial}"
                )
                raise CheckpointFailed(str(failure.error), replacement)
            if not failure.keep_instance:
                fake.crash("gone after a failed checkpoint")
                raise CheckpointFailed(str(failure.error), None)
            raise CheckpointFailed(str(failure.error), fake)
        fake.crash("checkpointed")
        return self.add_snapshot(fake.name)

    async def suspend(self, instance: Instance) -> None:
        fake = self._mine(instance)
        if not self.suspend_ok:
            raise NotSupported("the fake runtime was made without suspend")
        failure = await self._step("suspend")
        if failure is not None:
            raise failure.error
        fake.suspended = True

    async def resume(self, instance: Instance) -> None:
        fake = self._mine(instance)
        if not self.suspend_ok:
            raise NotSupported("the fake runtime was made without suspend")
        failure = await self._step("resume")
        if failure is not None:
            raise failure.error
        fake.suspended = False

    async def idle_for(self, instance: Instance) -> float | None:
        """Every request goes through the activator here: None (its view stands)."""
        return None

    async def stop(self, instance: Instance) -> None:
        fake = self._mine(instance)
        failure = await self._step("stop")
        fake.crash("stopped")
        if failure is not None:
            raise failure.error
