"""One workload's lifecycle, with a single owner.

Callers state intent: ``acquire()`` a lease to send a request (waking the
workload if needed), ``hibernate()``, ``wake()``. Nobody outside reads the state
and acts on it. Every change of state goes through ``_transition``, which checks
the table in ``states``, logs, and updates metrics.

The workload talks to its instances only through the ``Runtime`` protocol
(warmpool/runtime.py): no pids, paths or snapshot stores here. The spec of the next
instance comes from a factory (``activator.specs``).

Concurrency: lifecycle operations (wake, hibernate, stop) run one at a time under
``_lock``. All requests that find the workload not ready share one wake task, so
however many arrive, there is exactly one restore. Checking READY and taking a
lease happen without an ``await`` in between, so a hibernation can never drain a
workload while a request is between "it is ready" and "I am in flight".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import warmpool.lifecycle as lifecycle
from activator.breaker import Slots
from activator.config.settings import WorkloadSettings
from activator.errors import Conflict, NotAwake, QueueFull, WakeFailed, WakeTimeout
from activator.lease import Connection, Lease, WakeRecord
from activator.metrics import Metrics
from activator.specs import SpecFactory
from activator.states import STABLE, State, check_transition
from warmpool import (
    Endpoint,
    Instance,
    InstanceSpec,
    NotSupported,
    RestoreDeferred,
    Runtime,
    SnapshotInfo,
    WarmpoolError,
)
from warmpool.placement import Member, Tier
from warmpool.pool import Pool, PoolBusy

__all__ = ["Workload"]

log = logging.getLogger("dormant.workload")

NOT_AWAKE_RETRY_AFTER = 10
"""Retry-After (seconds) on a housekeeping request refused because the workload sleeps."""

_OFF_DEVICE = frozenset({State.COLD, State.HIBERNATED, State.SUSPENDED, State.FAILED})
"""States in which a workload holds nothing on the device (the pool is told)."""
_TIERS = {
    State.SUSPENDED: Tier.SUSPENDED,
    State.HIBERNATED: Tier.HIBERNATED,
    State.COLD: Tier.COLD,
    State.FAILED: Tier.COLD,
}


class Workload:
    """The owner of one workload's state."""

    def __init__(
        self,
        settings: WorkloadSettings,
        runtime: Runtime,
        metrics: Metrics,
        spec: SpecFactory,
        clock: Callable[[], float] = time.monotonic,
        pool: Pool | None = None,
    ) -> None:
        self.settings = settings
        self.name = settings.name
        self._runtime = runtime
        self._pool = pool
        self._spec = spec
        self._metrics = metrics
        self._clock = clock
        self._lock = asyncio.Lock()
        self._wake_task: asyncio.Task[WakeRecord] | None = None
        self._wake_started = clock()
        self._ready_event = asyncio.Event()  # set exactly while the state is READY
        self._slots = Slots(settings.max_in_flight)
        self._idle = asyncio.Event()
        self._idle.set()
        self._connections: set[Connection] = set()
        self._connections_gone = asyncio.Event()
        self._connections_gone.set()
        self._instance: Instance | None = None
        self._in_flight = 0
        self._waiting = 0
        self._waiters: set[object] = set()
        """One token per acquire() call that waits."""
        self._owed: set[object] = set()
        """Waiters that were waiting when the last wake ended and have no lease yet: the pool
        does not swap the workload out before they have one (``placement().arriving``)."""
        self._last_activity = clock()
        self._since = clock()
        self._resident_since = clock()
        self._wake_from = "cold"  # the tier the running wake started from (swap metrics)
        self._failed_at = float("-inf")
        self._deaths = lifecycle.Deaths()  # rule 4: early deaths after a restore, in a row
        self.reason = ""
        self.last_error = ""
        self.last_error_at: float | None = None
        self.last_wake: WakeRecord | None = None
        self.last_checkpoint: dict[str, Any] | None = None
        self.counters = {
            "boots": 0,
            "restores": 0,
            "restore_failures": 0,
            "checkpoints": 0,
            "checkpoint_failures": 0,
            "start_failures": 0,
            "restore_deferred": 0,
            "suspends": 0,
            "resumes": 0,
            "swaps_out": 0,
            "snapshots_set_aside": 0,
        }
        self._state = self._at_rest()
        metrics.set_state(self.name, self._state)

    # -- state -------------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def waiting(self) -> int:
        return self._waiting

    @property
    def endpoint(self) -> Endpoint | None:
        """Where the ready instance serves, or None when there is no instance."""
        return self._instance.endpoint if self._instance is not None else None

    def idle_for(self) -> float:
        return self._clock() - self._last_activity

    async def server_idle_for(self) -> float | None:
        """Seconds since the ready instance itself last carried traffic, as its runtime sees
        it (traffic that reaches it without the proxy: a pod behind its Service); None when
        the runtime cannot tell or nothing is ready."""
        instance = self._instance
        if instance is None or not self._ready():
            return None
        return await self._runtime.idle_for(instance)

    def note_activity(self, seconds_ago: float = 0.0) -> None:
        """Activity seen outside the proxy (e.g. a notebook kernel computing), ``seconds_ago``."""
        self._last_activity = max(self._last_activity, self._clock() - seconds_ago)

    def _latest(self) -> SnapshotInfo | Exception | None:
        """The newest usable snapshot, None, or the error that kept the runtime from telling."""
        try:
            return self._runtime.latest(self.name)
        except Exception as exc:  # cannot tell: the caller decides what that means
            return exc

    def _at_rest(self) -> State:
        """Where a workload without an instance rests: HIBERNATED while it has a usable
        snapshot (it must never look cold then), else COLD. When the runtime cannot tell
        (its store unreadable now), HIBERNATED: a snapshot may be there."""
        latest = self._latest()
        if isinstance(latest, Exception):
            log.warning("%s: cannot tell whether it has a snapshot (%s)", self.name, latest)
            return State.HIBERNATED
        return State.HIBERNATED if latest is not None else State.COLD

    def _alive(self, instance: Instance) -> bool | None:
        """Whether ``instance`` is alive; None when that cannot be told now (an error while
        looking): "cannot tell" is never "dead"."""
        try:
            return instance.alive()
        except Exception as exc:
            log.warning("%s: cannot tell whether its instance is alive: %s", self.name, exc)
            return None

    def _transition(self, new: State, reason: str = "") -> None:
        old = self._state
        check_transition(old, new)
        now = self._clock()
        self._metrics.transitions.labels(self.name, old.value, new.value).inc()
        self._metrics.set_state(self.name, new)
        # The duration of what just happened: an operation's (starting -> ready in 3.4s);
        # a resting state's time is not an operation's and is not logged as one.
        took = "" if old in STABLE else f" in {now - self._since:.3f}s"
        log.info("%s: %s -> %s%s%s", self.name, old, new, took, f" ({reason})" if reason else "")
        self._state, self._since, self.reason = new, now, reason
        if new is State.READY:
            self._ready_event.set()
        else:
            self._ready_event.clear()
        if self._pool is not None and new in _OFF_DEVICE:
            self._pool.left(self.name)

    def _error(self, message: str) -> None:
        self.last_error = message
        self.last_error_at = time.time()

    # -- requests ------------------------------------------------------------------------

    def _ready(self) -> bool:
        return self._state is State.READY and self._instance is not None

    def try_acquire(self, *, activity: bool = True) -> Lease | None:
        """A lease right now (ready, a free slot, nobody queued ahead), or None. With
        ``activity=False`` (a page's housekeeping) the request does not count as
        activity: it neither starts nor ends an idle period."""
        if self._ready() and self._waiting == 0 and self._slots.try_take():
            return self._lease(None, activity)
        return None

    async def acquire(
        self, timeout: float | None = None, *, wake: bool = True, activity: bool = True
    ) -> Lease:
        """A lease on a ready instance, waking the workload first if needed, then
        waiting for a free slot when ``max_in_flight`` are busy.

        Raises QueueFull when ``queue_depth`` requests already wait, WakeTimeout
        after ``timeout`` (default ``wake_timeout``), WakeFailed when the wake fails.
        With ``wake=False`` it waits for a wake already under way but starts none:
        NotAwake (409) when the workload is not ready and nothing wakes it. A cancelled
        caller (client gone) simply leaves the queue.
        """
        if (lease := self.try_acquire(activity=activity)) is not None:
            return lease
        if not wake and not self._ready() and not self._waking():
            raise NotAwake(
                f"{self.name} is {self._state} and this request does not wake it (a page's "
                "background refresh); it wakes when its user acts: runs a cell, opens or "
                "saves a file, types in a terminal, or reloads the page",
                workload=self.name,
                headers={"Retry-After": str(NOT_AWAKE_RETRY_AFTER)},
            )
        if self._waiting >= self.settings.queue_depth:
            retry = max(1, round(self.last_wake.seconds)) if self.last_wake else 5
            raise QueueFull(
                f"{self.name}: {self._waiting} requests already wait (state {self._state}); "
                "retry later",
                workload=self.name,
                headers={"Retry-After": str(retry)},
            )
        wait = self.settings.wake_timeout if timeout is None else timeout
        deadline = self._clock() + wait
        token = object()
        self._waiters.add(token)
        self._waiting += 1
        self._metrics.queue_depth.labels(self.name).set(self._waiting)
        try:
            record: WakeRecord | None = None
            while True:
                remaining = deadline - self._clock()
                if remaining <= 0:
                    raise WakeTimeout(
                        f"{self.name} could not take the request within {wait:.0f}s "
                        f"(state {self._state}, {self._in_flight} in flight)",
                        workload=self.name,
                    )
                if not self._ready():
                    if not wake and not self._waking():
                        raise NotAwake(
                            f"{self.name} went back to sleep ({self._state}) while this "
                            "request waited; it wakes when its user acts",
                            workload=self.name,
                            headers={"Retry-After": str(NOT_AWAKE_RETRY_AFTER)},
                        )
                    with contextlib.suppress(TimeoutError):
                        record = await asyncio.wait_for(
                            asyncio.shield(self._ensure_wake_task()), remaining
                        )
                    continue
                if not self._slots.try_take():
                    try:
                        async with asyncio.timeout(remaining):
                            await self._slots.take()
                    except TimeoutError:
                        continue
                if self._ready():
                    return self._lease(record, activity)
                self._slots.give()  # it started hibernating while we waited for the slot
        finally:
            self._waiters.discard(token)
            self._owed.discard(token)
            self._waiting -= 1
            self._metrics.queue_depth.labels(self.name).set(self._waiting)

    def _lease(self, waited: WakeRecord | None, activity: bool = True) -> Lease:
        """Record one more request in flight; the caller already holds a slot."""
        assert self._instance is not None
        self._in_flight += 1
        self._idle.clear()
        if activity:
            self._last_activity = self._clock()
        self._metrics.in_flight.labels(self.name).set(self._in_flight)
        return Lease(self._instance, waited, lambda: self._release(activity))

    async def connect(
        self, timeout: float | None = None, *, wake: bool = True, activity: bool = True
    ) -> Connection:
        """Wake if needed (queued like a request), then register a WebSocket connection.
        ``wake`` and ``activity`` as for ``acquire``: with ``activity=False`` opening and
        closing the connection are not activity (its messages may be: ``touch``)."""
        lease = await self.acquire(timeout, wake=wake, activity=activity)
        lease.release()  # a connection holds no request slot; nothing awaits in between
        connection = Connection(
            lease.instance, lease.waited, self.note_activity, lambda c: self._detach(c, activity)
        )
        self._connections.add(connection)
        self._connections_gone.clear()
        self._metrics.websockets.labels(self.name).set(len(self._connections))
        return connection

    def _detach(self, connection: Connection, activity: bool = True) -> None:
        self._connections.discard(connection)
        if activity:
            self._last_activity = self._clock()
        self._metrics.websockets.labels(self.name).set(len(self._connections))
        if not self._connections:
            self._connections_gone.set()

    def _release(self, activity: bool = True) -> None:
        self._slots.give()
        self._in_flight -= 1
        if activity:
            self._last_activity = self._clock()
        self._metrics.in_flight.labels(self.name).set(self._in_flight)
        if self._in_flight == 0:
            self._idle.set()

    # -- waking ------------------------------------------------------------------------

    def _waking(self) -> bool:
        return self._wake_task is not None and not self._wake_task.done()

    def begin_wake(self) -> asyncio.Task[WakeRecord] | None:
        """Start waking without waiting (or join the wake under way): the wake's task, or
        None when the workload is ready already. For answers that do not wait (the
        waking page); ``waking_for`` says since when."""
        if self._ready() and not self._lock.locked():
            return None
        return self._ensure_wake_task()

    def waking_for(self) -> float:
        """Seconds since the latest wake began (meaningful while one is under way)."""
        return self._clock() - self._wake_started

    async def until_ready(self) -> None:
        """Return once the workload is ready (at once if it is); starts nothing."""
        await self._ready_event.wait()

    def _ensure_wake_task(self) -> asyncio.Task[WakeRecord]:
        if self._wake_task is None or self._wake_task.done():
            self._wake_started = self._clock()
            self._wake_task = asyncio.create_task(self._wake(), name=f"wake-{self.name}")
            # Waiters retrieve the result; this keeps an unobserved failure quiet.
            self._wake_task.add_done_callback(lambda t: t.cancelled() or t.exception())
        return self._wake_task

    async def wake(self) -> WakeRecord | None:
        """Make the workload ready (admin / pre-warm) and return once it is: None when it
        already was. During a hibernation it waits for that to end, then wakes it."""
        if self._ready() and not self._lock.locked():
            return None
        return await asyncio.shield(self._ensure_wake_task())

    async def _wake(self) -> WakeRecord:
        async with self._lock:
            if self._ready() and self.last_wake is not None:
                return self.last_wake
            since_failure = self._clock() - self._failed_at
            if self._state is State.FAILED and since_failure < self.settings.retry_backoff:
                left = self.settings.retry_backoff - since_failure
                raise WakeFailed(
                    f"{self.name} failed {since_failure:.1f}s ago: {self.last_error} "
                    f"(next attempt in {left:.1f}s)",
                    workload=self.name,
                    headers={"Retry-After": str(max(1, math.ceil(left)))},
                )
            started = self._clock()
            self._wake_from = self.placement().tier.value
            if self._state is State.SUSPENDED:
                await self._reserve()
                if (record := await self._resume(started)) is not None:
                    return record
            spec = self._spec()  # WakeFailed when it cannot be built: nothing changed
            await self._reserve()
            try:
                instance = await self._restore_or_boot(spec)
            except asyncio.CancelledError:
                if self._state in (State.RESTORING, State.STARTING):
                    self._fail("the wake was cancelled (shutdown)")
                raise
            return self._became_ready(instance, started)

    async def _reserve(self) -> None:
        """Room on the shared device, when there is a pool (WakeFailed, 503, otherwise)."""
        if self._pool is None:
            return
        try:
            await self._pool.reserve(self, self.settings.wake_timeout)
        except PoolBusy as exc:
            retry = max(1, round(exc.retry_after or 5))
            raise WakeFailed(
                f"{self.name} cannot be resident now: {exc}",
                workload=self.name,
                headers={"Retry-After": str(retry)},
            ) from exc
        except WarmpoolError as exc:  # PoolFull: it never fits
            raise WakeFailed(f"{self.name} cannot be resident: {exc}", workload=self.name) from exc

    async def _resume(self, started: float) -> WakeRecord | None:
        """SUSPENDED -> READY through the runtime's suspend engine; None (and the process
        stopped) when the resume fails: the caller restores or cold-boots instead."""
        instance = self._instance
        assert instance is not None
        self._transition(State.RESUMING)
        failed = await lifecycle.resume_or_stop(self._runtime, instance)
        if failed is not None:
            self._error(f"resume failed: {failed}")
            log.error("%s: %s; stopped it to restore or cold boot", self.name, self.last_error)
            self._instance = None
            return None
        self.counters["resumes"] += 1
        return self._became_ready(instance, started, "resume")

    # -- what lifecycle.restore_or_boot reports ---------------------------------------------

    def _restoring(self, snapshot: SnapshotInfo) -> None:
        self._transition(State.RESTORING, f"snapshot {snapshot.id}")

    def _restore_failed(self, exc: WarmpoolError) -> None:
        self.counters["restore_failures"] += 1
        self._error(f"restore failed: {exc}")
        log.error("%s: %s; cold booting instead", self.name, self.last_error)

    def _booting(self, why: str) -> None:
        self._transition(State.STARTING, why)

    async def _restore_or_boot(self, spec: InstanceSpec) -> Instance:
        """Rule 1 of ``warmpool.lifecycle``. Whatever fails, the workload never stays in a
        transitional state: FAILED (requests fail fast for ``retry_backoff``), or where it
        was when nothing had started yet."""
        try:
            steps = lifecycle.Steps(self._restoring, self._restore_failed, self._booting)
            return await lifecycle.restore_or_boot(self._runtime, spec, steps)
        except RestoreDeferred as exc:
            # the environment refused; the snapshot is kept and nothing boots over it
            self.counters["restore_deferred"] += 1
            retry = max(1, math.ceil(exc.retry_after))
            self._stop_trying(f"restore deferred: {exc}")
            raise WakeFailed(
                f"{self.name} cannot be restored now: {exc}",
                workload=self.name,
                headers={"Retry-After": str(retry)},
            ) from exc
        except Exception as exc:  # a WarmpoolError, or anything a runtime let through
            self.counters["start_failures"] += 1
            what = exc if isinstance(exc, WarmpoolError) else f"{type(exc).__name__}: {exc}"
            retry = max(1, math.ceil(self.settings.retry_backoff))
            self._stop_trying(f"start failed: {what}")
            raise WakeFailed(
                f"{self.name} could not start: {what}",
                workload=self.name,
                headers={"Retry-After": str(retry)},
            ) from exc

    def _stop_trying(self, reason: str) -> None:
        """After a wake failed: FAILED (requests fail fast for ``retry_backoff``) when it had
        begun (RESTORING, STARTING); when nothing had begun (the runtime could not even say
        whether a snapshot exists) the state stays and only the error is recorded."""
        if self._state in (State.RESTORING, State.STARTING):
            self._fail(reason, backoff=True)
        else:
            self._error(reason)
            log.error("%s: %s", self.name, reason)
            if self._pool is not None:
                self._pool.left(self.name)

    def _became_ready(
        self, instance: Instance, started: float, path: str | None = None
    ) -> WakeRecord:
        if path is None:
            path = "restore" if instance.restored_from else "boot"
            self.counters["restores" if path == "restore" else "boots"] += 1
        seconds = self._clock() - started
        self._owed = set(self._waiters)  # served before the pool may swap it out again
        self._instance = instance
        self._last_activity = self._resident_since = self._clock()
        phases = (instance.describe() or {}).get("wake_phases") or {}
        self.last_wake = WakeRecord(
            path, seconds, time.time(), tuple((k, float(v)) for k, v in phases.items())
        )
        self._metrics.wake_seconds.labels(self.name, path).observe(seconds)
        engine = {"resume": self.settings.suspend, "restore": self._runtime.capabilities.engine}
        self._metrics.record_swap(
            self.name, self._wake_from, "resident", engine.get(path, "boot"), seconds
        )
        self._transition(State.READY, f"{path}, {instance.endpoint}")
        return self.last_wake

    def _fail(self, reason: str, *, backoff: bool = False) -> None:
        """FAILED. With ``backoff`` (the command itself cannot start), requests fail fast
        for ``retry_backoff`` seconds instead of each trying again; a crash retries at once."""
        self._transition(State.FAILED, reason)
        self._error(reason)
        self._failed_at = self._clock() if backoff else float("-inf")
        self._instance = None

    # -- giving resources back ------------------------------------------------------------

    async def hibernate(self, reason: str = "requested") -> State:
        """Drain, then checkpoint (or stop, when the runtime cannot checkpoint). Returns
        the resulting state.

        Raises Conflict when in-flight requests do not finish within ``drain_timeout``
        (the workload keeps serving), a WarmpoolError (CheckpointFailed...) when the
        checkpoint fails — the workload then serves again, or is FAILED when its process
        is gone, with the reason in ``last_error``.
        """
        async with self._lock:
            if self._state is State.FAILED:
                self._transition(self._at_rest(), "cleared after failure")
            if not self._ready():
                return self._state
            instance = await self._drain(reason)
            if instance is None:
                return self._state
            if not self._runtime.capabilities.checkpoint:
                started = self._clock()
                try:
                    await self._runtime.stop(instance)
                except Exception as exc:
                    failed = _warmpool(exc, "stop")
                    self._checkpoint_failed(failed, instance)
                    if failed is exc:
                        raise
                    raise failed from exc
                self._instance = None
                self._transition(self._at_rest(), "stopped (restart engine: no snapshot)")
                self._swapped_out("cold", "restart", started)
                return self._state
            started = self._clock()
            self._transition(State.CHECKPOINTING)
            try:
                snapshot = await self._runtime.checkpoint(instance)
            except WarmpoolError as exc:
                self._checkpoint_failed(exc, instance)
                raise
            except Exception as exc:  # never left CHECKPOINTING, whatever the runtime raised
                failed = _warmpool(exc, "checkpoint")
                self._checkpoint_failed(failed, instance)
                raise failed from exc
            except asyncio.CancelledError:
                self._checkpoint_failed(WarmpoolError("cancelled (shutdown)"), instance)
                raise
            self.counters["checkpoints"] += 1
            self._instance = None
            self.last_checkpoint = {
                "snapshot": snapshot.id,
                "seconds": snapshot.checkpoint_seconds,
                "bytes": snapshot.bytes,
            }
            self._metrics.checkpoint_seconds.labels(self.name).observe(snapshot.checkpoint_seconds)
            self._metrics.snapshot_bytes.labels(self.name).set(snapshot.bytes)
            self._transition(State.HIBERNATED, f"snapshot {snapshot.id}, {snapshot.bytes} bytes")
            self._swapped_out("hibernated", self._runtime.capabilities.engine, started)
            return self._state

    def _swapped_out(self, to: str, engine: str, started: float) -> None:
        self._metrics.record_swap(self.name, "resident", to, engine, self._clock() - started)

    async def suspend(self, reason: str = "requested") -> State:
        """Drain, then park the instance's device memory in host RAM (the runtime's
        suspend engine); the process stays. Returns the resulting state; raises Conflict
        (drain timed out) or a WarmpoolError (NotSupported, SuspendFailed: still serving)."""
        async with self._lock:
            if not self._ready():
                return self._state
            if self.settings.suspend == "none":
                raise NotSupported(f"{self.name}: suspend is 'none' in its settings")
            instance = await self._drain(reason)
            if instance is None:
                return self._state
            started = self._clock()
            try:
                await self._runtime.suspend(instance)
            except Exception as exc:
                exc = _warmpool(exc, "suspend")
                self._error(f"suspend failed: {exc}")
                if self._alive(instance) is not False:
                    self._transition(State.READY, f"suspend failed, still serving: {exc}")
                else:
                    self._fail(f"suspend failed and the process is gone: {exc}")
                raise
            self.counters["suspends"] += 1
            self._transition(State.SUSPENDED, reason)
            self._swapped_out("suspended", self.settings.suspend, started)
            return self._state

    async def _drain(self, reason: str) -> Instance | None:
        """READY -> DRAINING, wait for in-flight requests and WebSockets (under the lock).
        Returns the instance to act on; None when it died meanwhile (then FAILED). Raises
        Conflict (back to READY) when the drain times out."""
        instance = self._instance
        assert instance is not None
        self._transition(State.DRAINING, reason)
        try:
            async with asyncio.timeout(self.settings.drain_timeout):
                await self._idle.wait()
                for connection in list(self._connections):
                    connection.closing.set()
                await self._connections_gone.wait()
        except TimeoutError:
            self._transition(State.READY, "drain timed out")
            raise Conflict(
                f"{self.name} still has {self._in_flight} requests and "
                f"{len(self._connections)} websockets open after "
                f"{self.settings.drain_timeout:.0f}s; not {reason}",
                workload=self.name,
            ) from None
        if self._alive(instance) is False:
            self._fail(f"process {instance.exit_reason()}")
            return None
        return instance

    async def demote(self, to: Tier, reason: str) -> None:
        """For the warm pool: leave the device (suspend, or hibernate / stop). Raises when
        it could not; the workload then serves on."""
        state = await (self.suspend(reason) if to is Tier.SUSPENDED else self.hibernate(reason))
        if state not in _OFF_DEVICE:
            raise WarmpoolError(f"{self.name} could not leave the device (it is {state})")
        self.counters["swaps_out"] += 1

    def placement(self) -> Member:
        """This workload as the warm pool's placement policy sees it."""
        s = self.settings
        mid_operation = self._state is not State.READY and self._state not in _OFF_DEVICE
        waking = self._wake_task is not None and not self._wake_task.done()
        return Member(
            name=self.name,
            tier=_TIERS.get(self._state, Tier.RESIDENT),
            device_bytes=0,  # the pool knows sizes
            pin=s.pin,
            priority=s.priority,
            last_used=self._last_activity,
            resident_since=self._resident_since,
            min_resident=s.min_resident,
            in_flight=self._in_flight + len(self._connections),
            # a workload mid-operation (waking, draining) is never chosen: count it busy
            queued=max(self._waiting, 1) if mid_operation else self._waiting,
            can_suspend=s.suspend != "none",
            can_hibernate=self._runtime.capabilities.checkpoint,
            arriving=waking or bool(self._owed),
        )

    def _checkpoint_failed(self, exc: WarmpoolError, instance: Instance) -> None:
        """After a failed checkpoint: serve again with whichever instance survived it."""
        self.counters["checkpoint_failures"] += 1
        self._error(f"checkpoint failed: {exc}")
        serving = lifecycle.survivor(exc, instance)
        if serving is not None:
            self._instance = serving
            self._transition(State.READY, f"checkpoint failed, still serving: {exc}")
        else:
            self._fail(f"checkpoint failed and the process is gone: {exc}")

    def check_alive(self) -> None:
        """Notice a ready (or suspended) instance that died on its own; let the pool
        measure a ready one."""
        if self._instance is None or self._lock.locked():
            return
        if self._state in (State.READY, State.SUSPENDED) and self._alive(self._instance) is False:
            self._fail(self._death(self._instance))
        elif self._state is State.READY and self._pool is not None:
            self._pool.sample(self.name, self._instance)

    def _death(self, instance: Instance) -> str:
        """Why ``instance`` is gone, in one line; sets its snapshot aside as suspect when
        it is the second restore of it in a row to die within seconds (lifecycle rule 4)."""
        died = f"process {instance.exit_reason()}"
        lived = self._clock() - self._resident_since
        snapshot = instance.restored_from
        self._deaths, suspect = lifecycle.after_death(snapshot, lived, self._deaths)
        if not suspect or snapshot is None:
            return died
        hint = (
            " (SIGILL: the restored process lost a CPU feature; see `dormant check`)"
            if "signal 4" in died
            else ""
        )
        why = (
            f"the process restored from it died {lived:.1f}s after its restore, "
            f"{lifecycle.SUSPECT_AFTER} times in a row{hint}"
        )
        if not self._runtime.set_aside(self.name, snapshot, f"{why}; last: {died}"):
            return died
        self.counters["snapshots_set_aside"] += 1
        return f"snapshot {snapshot} set aside as suspect: {why}; the next wake boots cold; {died}"

    async def shutdown(self, mode: str) -> None:
        """At Dormant's exit: 'hibernate' checkpoints a ready workload (falling back to
        stopping it if that fails); 'stop' stops it. Snapshots stay for the next start."""
        if mode == "hibernate" and self._runtime.capabilities.checkpoint and self._ready():
            try:
                await self.hibernate("shutdown")
                return
            except Exception as exc:  # stopping is still right; say why we could not hibernate
                log.warning("%s: could not hibernate at shutdown (%s); stopping it", self.name, exc)
        await self.stop()

    async def stop(self) -> None:
        """Stop the instance (shutdown); snapshots stay for the next start."""
        if self._wake_task and not self._wake_task.done():
            self._wake_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._wake_task
        async with self._lock:
            if self._instance is not None:
                try:
                    await self._runtime.stop(self._instance)
                except Exception as exc:  # shutting down: say so, and carry on
                    log.error("%s: stopping its instance failed: %s", self.name, exc)
                self._instance = None
            if self._state is State.READY:
                self._transition(State.DRAINING, "shutdown")
            if self._state in (State.DRAINING, State.SUSPENDED):
                self._transition(self._at_rest(), "stopped at shutdown")

    # -- reporting -----------------------------------------------------------------------

    @staticmethod
    def _wake_view(wake: WakeRecord) -> dict[str, Any]:
        view: dict[str, Any] = {"path": wake.path, "seconds": round(wake.seconds, 4)}
        if wake.phases:
            view["phases"] = {name: round(at, 3) for name, at in wake.phases}
        return view

    def view(self) -> dict[str, Any]:
        latest = self._latest()
        snapshot = None if isinstance(latest, Exception) else latest
        instance = self._instance
        facts = instance.describe() if instance else {}
        return {
            "name": self.name,
            "kind": self.settings.kind,
            "models": list(self.settings.models),
            # where its users go, below the activator's address (notebooks, path prefixes)
            "url": f"{self.settings.path_prefix}/" if self.settings.path_prefix else None,
            "token_file": self.settings.token_file or None,  # a notebook's, when configured
            "state": self._state.value,
            "reason": self.reason,
            "since_s": round(self._clock() - self._since, 3),
            "engine": self._runtime.capabilities.engine,
            "pid": facts.get("pid"),
            "endpoint": instance.endpoint.url if instance else None,
            "port": instance.endpoint.port if instance else None,
            "instance": facts or None,
            "restored_from": instance.restored_from if instance else None,
            "in_flight": self._in_flight,
            "websockets": len(self._connections),
            "waiting": self._waiting,
            "idle_s": round(self.idle_for(), 3),
            "idle_after_s": self.settings.idle_after,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "last_wake": None if self.last_wake is None else self._wake_view(self.last_wake),
            "last_checkpoint": self.last_checkpoint,
            "snapshot": None
            if snapshot is None
            else {"id": snapshot.id, "bytes": snapshot.bytes, "created": snapshot.created},
            "counters": dict(self.counters),
            "tier": self.placement().tier.value
            if self._pool is None or not self._pool.holds(self.name)
            else "resident",
            "memory": self._pool.member_view(self.name) if self._pool is not None else None,
        }


def _warmpool(exc: BaseException, what: str) -> WarmpoolError:
    """``exc`` as a WarmpoolError (a runtime let a foreign error through)."""
    if isinstance(exc, WarmpoolError):
        return exc
    return WarmpoolError(f"{what} failed: {type(exc).__name__}: {exc}")
