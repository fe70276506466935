"""Who owns a policy's lifecycle: one ``coordination.k8s.io/v1`` Lease per policy.

Several activators may serve a namespace at once (two replicas, or the old and the new pod of
a rollout); each proxies any request, but only the **holder** of a policy's Lease (named
``dormant-policy-<policy>``, identity = the activator's advertised ``IP:PORT``) scales its target,
asks for its route and checkpoints its pod. The others follow: they adopt the pod the holder
woke, hold a cold request while asking the holder for a wake (``request_wake``: an annotation
on the Lease), and leave checkpointing to it.

The rules (``judge``, pure), in the order they apply:

1. no Lease yet: create it (409: another was quicker, follow it);
2. ours: renew it (every third of its duration);
3. nobody's (released at a graceful exit): take it;
4. another's that has not changed for a whole ``leaseDurationSeconds`` *as observed here*
   (our own monotonic clock, never the writer's timestamps: clocks differ): take it;
5. else follow it.

Writes are PUTs with the ``resourceVersion`` read (optimistic concurrency): of two activators
taking an expired Lease at once exactly one succeeds. A holder that could not renew for a whole
duration (the API server unreachable) stops acting as the holder, so two owners never act at
once for longer than the clock drift between two pods. ``release()`` at a graceful exit empties
the holder, so a rollout hands over at once instead of after a duration.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from warmpool.kube.api import KubeApi, KubeError

__all__ = ["WAKE_ANNOTATION", "LeaseKeeper", "LeaseView", "judge", "lease_name"]

log = logging.getLogger("dormant.lease")

WAKE_ANNOTATION = "dormant.dev/wake-requested"
"""On a policy's Lease: the Unix time at which a non-holder asked the holder for a wake."""
WAKE_FRESH = 10.0
"""A wake request older than this (seconds) is not acted on: one that waits renews it every
2 s, so an older one is a leftover (its request was served or gave up)."""


def lease_name(policy: str) -> str:
    return f"dormant-policy-{policy}"[:253]


@dataclass(frozen=True)
class LeaseView:
    """A Lease as read: who holds it, for how long, and its version."""

    holder: str
    duration: float
    version: str
    renewed: str
    wake: float = 0.0

    @classmethod
    def of(cls, obj: dict[str, Any]) -> LeaseView:
        spec = obj.get("spec") or {}
        meta = obj.get("metadata") or {}
        try:
            wake = float((meta.get("annotations") or {}).get(WAKE_ANNOTATION) or 0)
        except ValueError:
            wake = 0.0
        return cls(
            holder=str(spec.get("holderIdentity") or ""),
            duration=float(spec.get("leaseDurationSeconds") or 0),
            version=str(meta.get("resourceVersion") or ""),
            renewed=str(spec.get("renewTime") or ""),
            wake=wake,
        )


def judge(view: LeaseView | None, me: str, unchanged_for: float) -> str:
    """'create', 'renew', 'take' or 'follow' (the rules of the module docstring)."""
    if view is None:
        return "create"
    if view.holder == me:
        return "renew"
    if not view.holder or unchanged_for >= view.duration:
        return "take"
    return "follow"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseKeeper:
    """The Lease of one policy as this activator sees it (see the module docstring)."""

    def __init__(
        self,
        api: KubeApi,
        namespace: str,
        policy: str,
        identity: str,
        duration: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
        on_acquired: Callable[[], None] | None = None,
    ) -> None:
        self.api, self.identity, self.duration = api, identity, duration
        self.namespace = namespace
        self.name = lease_name(policy)
        self._path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{self.name}"
        self._collection = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
        self._clock = clock
        self.on_acquired = on_acquired
        """Called (in the loop) each time this activator becomes the holder."""
        self._valid_until = float("-inf")
        self._seen: tuple[str, str] | None = None  # (holder, renewTime) last observed
        self._seen_at = clock()
        self.view: LeaseView | None = None
        self._first = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._handled_wake = 0.0
        self._asked_at = float("-inf")
        self._problem = ""
        self.yielding = False
        """Set by ``hand_over``: release instead of renewing, and take the Lease (back) only
        after it stayed nobody's for a whole duration (no other activator came for it)."""

    # -- what callers ask ----------------------------------------------------------------------
    @property
    def held(self) -> bool:
        """Whether this activator holds the Lease now (renewed within its duration)."""
        return self._clock() < self._valid_until

    @property
    def holder(self) -> str:
        if self.held:
            return self.identity
        return self.view.holder if self.view is not None else ""

    async def settled(self, timeout: float = 5.0) -> bool:
        """Wait (bounded) for the first look at the Lease; whether we hold it."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._first.wait(), timeout)
        return self.held

    async def request_wake(self) -> None:
        """As a non-holder: ask the holder to wake the workload (at most every 2 s)."""
        if self._clock() - self._asked_at < 2.0:
            return
        self._asked_at = self._clock()
        patch = {"metadata": {"annotations": {WAKE_ANNOTATION: f"{time.time():.3f}"}}}
        try:
            await self.api.merge(self._path, patch)
        except KubeError as exc:
            log.debug("lease %s: could not ask for a wake: %s", self.name, exc)

    async def wake_requested(self) -> bool:
        """As the holder: whether another activator asked for a wake not handled yet (reads the
        Lease; each request is answered once)."""
        try:
            obj = await self.api.find(self._path)
        except KubeError:
            return False
        if obj is None:
            return False
        view = LeaseView.of(obj)
        if view.wake <= self._handled_wake:
            return False
        self._handled_wake = view.wake
        return time.time() - view.wake < WAKE_FRESH

    # -- the loop ------------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"lease-{self.name}")

    async def hand_over(self) -> None:
        """SIGTERM: release the Lease now for another activator (keep following it; take it back
        only if nobody else has within a duration)."""
        self.yielding = True
        await self.tick()

    def taken_by_another(self) -> bool:
        """After ``hand_over``: whether another activator holds the Lease now."""
        return self.view is not None and self.view.holder not in ("", self.identity)

    async def stop(self, release: bool = True) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        if release and self.held:
            with contextlib.suppress(KubeError):
                obj = await self.api.find(self._path)
                if obj is not None and LeaseView.of(obj).holder == self.identity:
                    await self._write(obj, holder="")
            log.info("lease %s: released", self.name)
        self._valid_until = float("-inf")

    async def _run(self) -> None:
        """The holder renews every third of the duration; the others look more often (every
        2 s at most), so a released Lease is taken within seconds of a graceful exit."""
        while True:
            await self.tick()
            interval = self.duration / 3 if self.held else min(self.duration / 3, 2.0)
            await asyncio.sleep(max(interval, 0.2))

    async def tick(self) -> None:
        """One look at the Lease and what the rules say to do."""
        was = self.held
        try:
            for _ in range(2):  # a 409 (someone wrote meanwhile): read again, once
                if await self._step():
                    break
            self._problem = ""
        except KubeError as exc:
            if str(exc) != self._problem:
                log.warning("lease %s: %s", self.name, exc)
            self._problem = str(exc)
        except Exception:  # a bug: say so, and keep the loop (and the holder's duty) alive
            log.exception("lease %s: unexpected error", self.name)
        finally:
            self._first.set()
        if self.held and not was:
            log.info("lease %s: held by this activator (%s)", self.name, self.identity)
            if self.on_acquired is not None:
                self.on_acquired()
        elif was and not self.held and not self.yielding:
            log.warning("lease %s: no longer held here (now %s)", self.name, self.holder or "none")

    async def _step(self) -> bool:
        """True when done; False after a conflict."""
        started = self._clock()
        obj = await self.api.find(self._path)
        view = LeaseView.of(obj) if obj is not None else None
        self.view = view
        # a renewal changes renewTime; a wake request (an annotation) changes the version only
        if view is not None and (view.holder, view.renewed) != self._seen:
            self._seen, self._seen_at = (view.holder, view.renewed), started
        unchanged = started - self._seen_at
        action = judge(view, self.identity, unchanged)
        if self.yielding:
            if action == "renew":
                assert obj is not None
                await self._write(obj, holder="")
                self._valid_until = float("-inf")
                log.info("lease %s: handed over (released for another activator)", self.name)
                return True
            if action in ("create", "take") and unchanged < self.duration:
                action = "follow"
        if action == "follow":
            self._valid_until = float("-inf")
            return True
        try:
            if action == "create":
                await self._create()
            else:
                assert obj is not None
                await self._write(obj, holder=self.identity, take=action == "take")
        except KubeError as exc:
            if exc.status == 409:
                return False
            raise
        self._valid_until = started + self.duration
        return True

    def _spec(self, holder: str) -> dict[str, Any]:
        return {
            "holderIdentity": holder,
            "leaseDurationSeconds": max(1, math.ceil(self.duration)),
            "renewTime": _now(),
        }

    async def _create(self) -> None:
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "labels": {"app.kubernetes.io/part-of": "dormant"}},
            "spec": {**self._spec(self.identity), "acquireTime": _now(), "leaseTransitions": 0},
        }
        obj = await self.api.post(self._collection, body)
        self.view = LeaseView.of(obj)

    async def _write(self, obj: dict[str, Any], *, holder: str, take: bool = False) -> None:
        """PUT ``obj`` (as read: its resourceVersion makes a concurrent write a 409)."""
        spec = dict(obj.get("spec") or {})
        spec.update(self._spec(holder))
        if not holder:  # released: the next holder takes it at once (rule 3)
            spec["leaseDurationSeconds"] = 1
        if take:
            spec["acquireTime"] = _now()
            spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
        obj["spec"] = spec
        written = await self.api.put(self._path, obj)
        self.view = LeaseView.of(written)
        self._seen = (self.view.holder, self.view.renewed)
        self._seen_at = self._clock()
