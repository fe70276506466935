"""Leader election among the operator's replicas: one ``coordination.k8s.io/v1`` Lease.

Two or more ``dormant operator`` replicas run; exactly one reconciles (runs kopf), the others
stand by and take over when it is gone. The Lease ``dormant-operator`` in the operator's
namespace names the holder; the holder renews it every ``renew`` seconds; a replica takes a
Lease whose renewal is older than its ``leaseDurationSeconds`` (the holder died, or was cut off
from the API server), or one released on a clean shutdown (holder ''). Writes carry the
resourceVersion they read, so two replicas that try to take the same Lease at once cannot
both succeed (409 for the loser).

The guarantee: a holder that cannot renew stops reconciling before its Lease can expire for
the others (``give_up`` = duration - renew seconds after its last renewal, earlier than any
replica may take over), so two replicas never write Endpoints at once, as long as clocks agree
within ``renew`` seconds (the usual assumption of Kubernetes' own leader election). A takeover
after a crash takes at most ``duration + retry`` seconds; after a clean shutdown ``retry``.

``decide(lease, me, now)`` is the pure rule (table-tested); ``Elector`` does the calls.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from warmpool.kube.api import KubeApi, KubeError

__all__ = ["LEASE_NAME", "ElectionSettings", "Elector", "decide"]

log = logging.getLogger("dormant.operator.leader")

LEASE_NAME = "dormant-operator"


@dataclass(frozen=True)
class ElectionSettings:
    """How the replicas elect one (the operator's --lease-* options)."""

    identity: str
    """This replica's name in the Lease (its pod name)."""
    duration: float = 15.0
    """Seconds a Lease stays valid after a renewal: the longest a crashed leader blocks."""
    renew: float = 5.0
    """Seconds between two renewals by the holder; < duration / 2."""
    retry: float = 2.0
    """Seconds between two tries of a replica standing by."""

    def __post_init__(self) -> None:
        if not 0 < self.renew * 2 <= self.duration or self.retry <= 0:
            raise ValueError(
                f"leader election: need 0 < 2 x renew ({self.renew}) <= duration "
                f"({self.duration}) and retry ({self.retry}) > 0"
            )


def _time(value: Any) -> dt.datetime | None:
    if not value:
        return None
    try:
        return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


def _stamp(now: dt.datetime) -> str:
    return now.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def decide(lease: Mapping[str, Any] | None, me: str, now: dt.datetime) -> str:
    """What this replica does with the Lease it read (None: there is none):

    1. ``create``: there is no Lease.
    2. ``renew``: it holds it.
    3. ``take``: nobody holds it (released), or the holder's last renewal is older than the
       Lease's duration (or unreadable).
    4. ``wait``: someone else holds a valid Lease.
    """
    if lease is None:
        return "create"
    spec = lease.get("spec") or {}
    holder = spec.get("holderIdentity") or ""
    if holder == me:
        return "renew"
    renewed = _time(spec.get("renewTime")) or _time(spec.get("acquireTime"))
    duration = float(spec.get("leaseDurationSeconds") or 0)
    if not holder or renewed is None or (now - renewed).total_seconds() > duration:
        return "take"
    return "wait"


class Elector:
    """Acquire, hold and release the Lease (see the module docstring)."""

    def __init__(self, api: KubeApi, namespace: str, settings: ElectionSettings) -> None:
        self.api = api
        self.settings = settings
        self.path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
        self.renewed: float | None = None
        """loop time of the last successful write (None: not the leader)."""

    def _spec(self, lease: Mapping[str, Any] | None, now: dt.datetime, taking: bool) -> dict:
        spec = dict((lease or {}).get("spec") or {})
        s = self.settings
        spec.update(
            holderIdentity=s.identity,
            leaseDurationSeconds=max(1, round(s.duration)),
            renewTime=_stamp(now),
        )
        if taking:
            spec["acquireTime"] = _stamp(now)
            spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + (
                1 if lease is not None else 0
            )
        return spec

    async def try_once(self) -> bool:
        """One round: True when this replica holds the Lease afterwards."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        now = dt.datetime.now(dt.UTC)
        lease = await self.api.find(f"{self.path}/{LEASE_NAME}")
        action = decide(lease, self.settings.identity, now)
        if action == "wait":
            return False
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": LEASE_NAME},
            "spec": self._spec(lease, now, taking=action != "renew"),
        }
        try:
            if action == "create":
                await self.api.post(self.path, body)
            else:
                assert lease is not None
                body["metadata"] = lease["metadata"]  # its resourceVersion: no lost update
                await self.api.put(f"{self.path}/{LEASE_NAME}", body)
        except KubeError as exc:
            if exc.status == 409:  # another replica wrote first
                return False
            raise
        if action != "renew":
            log.info("leading as %s (the Lease was %s)", self.settings.identity, action)
        self.renewed = started
        return True

    async def acquire(self) -> None:
        """Return once this replica holds the Lease; stand by until then. A failing API call
        is logged when its message changes, and at most once a minute otherwise."""
        said = False
        last, last_at = "", -1e9
        loop = asyncio.get_running_loop()
        while True:
            try:
                if await self.try_once():
                    return
            except KubeError as exc:
                if str(exc) != last or loop.time() - last_at > 60:
                    log.warning("leader election: %s", exc)
                    last, last_at = str(exc), loop.time()
            if not said:
                log.info("standing by: another replica holds Lease %s", LEASE_NAME)
                said = True
            await asyncio.sleep(self.settings.retry)

    async def hold(self) -> None:
        """Renew until that fails for too long; then return (the caller stops reconciling)."""
        loop = asyncio.get_running_loop()
        s = self.settings
        give_up = s.duration - s.renew
        while True:
            await asyncio.sleep(s.renew)
            try:
                if not await asyncio.wait_for(self.try_once(), timeout=s.renew):
                    log.error("leader election: Lease %s was taken over", LEASE_NAME)
                    self.renewed = None
                    return
            except (KubeError, TimeoutError) as exc:
                log.warning("leader election: renewal failed: %s", exc or "timed out")
            assert self.renewed is not None
            if loop.time() - self.renewed > give_up:
                log.error("leader election: no renewal for %.0f s; stepping down", give_up)
                self.renewed = None
                return

    async def release(self) -> None:
        """On a clean shutdown: hand the Lease over at once (holder '')."""
        if self.renewed is None:
            return
        self.renewed = None
        try:
            lease = await self.api.find(f"{self.path}/{LEASE_NAME}")
            spec = (lease or {}).get("spec") or {}
            if lease is None or spec.get("holderIdentity") != self.settings.identity:
                return
            lease["spec"] = {**spec, "holderIdentity": "", "leaseDurationSeconds": 1}
            await self.api.put(f"{self.path}/{LEASE_NAME}", lease)
            log.info("released Lease %s", LEASE_NAME)
        except KubeError as exc:
            log.warning("leader election: could not release the Lease: %s", exc)
