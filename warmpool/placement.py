"""Which workloads leave the device so another can come in: pure placement policy.

Plain frozen values in, a ``Plan`` out; no asyncio, no clock reads (the caller passes
``now``), no I/O. The pool applies a plan by demoting each victim through its own
``Workload`` (drain, then suspend or hibernate), and only then lets the incoming
workload become resident.

Rules, in order:

1. Never a pinned workload, none within its ``min_resident`` (anti-thrash), and none
   still ``arriving`` (waking, or not yet done giving a lease to every request that waited
   for it: a swap in serves the requests it was made for before it can be undone).
2. Never one with requests in flight or queued — unless the incoming workload has
   waited longer than the starvation bound (``should_defer`` is False): then busy
   workloads may be chosen too, after every idle one, and their demotion says
   ``drain`` (their queued requests are served first or wait for them to come back).
3. Then the lowest ``priority`` first, then the least recently used; victims that turn
   out unnecessary (a bigger one freed enough) are dropped again, most valuable first.
4. Suspend (device memory parked in host RAM) while host RAM allows and the workload
   can be suspended, giving that faster tier to the most valuable victims; otherwise
   hibernate (a snapshot), or stop when it cannot be checkpointed either.

Who plans first when several wait to come in is ``queue_order``: first come, first
served, a higher ``priority`` counting as having arrived earlier (``PRIORITY_AGING`` seconds
per point: aging, so nobody is overtaken forever), and a waiter that has already made
victims leave for itself stays first (the room freed for it is held for it).

A workload that cannot fit now (everything evictable is busy, pinned or too recent)
gets ``Verdict.WAIT`` with the blockers and, where known, when to retry; one that can
never fit while the pinned workloads stay gets ``Verdict.NEVER`` (a configuration
problem; ``fits_ever`` finds these at start).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from warmpool.units import format_size

__all__ = [
    "PRIORITY_AGING",
    "Blocker",
    "Demotion",
    "Member",
    "Plan",
    "Tier",
    "Verdict",
    "Waiter",
    "choose_victims",
    "fits_ever",
    "is_thrash",
    "queue_order",
    "should_defer",
]

PRIORITY_AGING = 0.01
"""Seconds of waiting one point of ``priority`` is worth in ``queue_order``: a workload of
priority 100 waiting to come in goes before one of priority 0 that arrived up to 1 s
earlier, never before one that arrived earlier than that."""


class Tier(StrEnum):
    """Where a workload's state lives now: resident, suspended, hibernated or cold."""

    RESIDENT = "resident"
    """Running, its memory on the device."""
    SUSPENDED = "suspended"
    """Process alive, device memory parked in host RAM."""
    HIBERNATED = "hibernated"
    """Only a snapshot; no process."""
    COLD = "cold"
    """Nothing: it must boot."""


@dataclass(frozen=True)
class Member:
    """One workload of the pool as the policy sees it. Times are the caller's clock
    (seconds, one clock for all members and ``now``)."""

    name: str
    tier: Tier
    device_bytes: int
    """Bytes it holds on the device when resident (measured or declared; 0 = unknown)."""
    size_from: str = ""
    """Where ``device_bytes`` comes from, for messages: ``declared``, ``measured``, or
    ``unknown`` (never measured: ``device_bytes`` is an estimate); empty: not said."""
    host_bytes: int | None = None
    """Host RAM it holds while suspended; None = the same as ``device_bytes``."""
    pin: bool = False
    """Never swapped out."""
    priority: int = 0
    """Higher stays longer."""
    last_used: float = 0.0
    """When its last request finished (or started, if one is running)."""
    resident_since: float = 0.0
    """When it last became resident."""
    min_resident: float = 0.0
    """Seconds it stays resident after coming in, whatever the demand elsewhere."""
    in_flight: int = 0
    queued: int = 0
    can_suspend: bool = False
    """Its suspend engine (cuda, hooks) works for it."""
    can_hibernate: bool = True
    """It can be checkpointed (else demoting it means stopping it: cold)."""
    arriving: bool = False
    """It is coming in (waking) or has not yet given a lease to every request that waited
    for it: never a victim, however long another has waited."""

    @property
    def parked_bytes(self) -> int:
        """Host RAM it needs when suspended."""
        return self.device_bytes if self.host_bytes is None else self.host_bytes

    @property
    def busy(self) -> bool:
        return self.in_flight > 0 or self.queued > 0


class Verdict(StrEnum):
    FITS = "fits"
    """It fits after the plan's demotions (none when there is room already)."""
    WAIT = "wait"
    """It cannot fit now: what could make room is busy or within ``min_resident``."""
    NEVER = "never"
    """It cannot fit even with everything but the pinned workloads gone."""


@dataclass(frozen=True)
class Demotion:
    """Move ``name`` off the device to tier ``to``; that frees ``frees`` device bytes."""

    name: str
    to: Tier
    frees: int
    drain: bool = False
    """It has requests in flight or queued (chosen past the starvation bound): stop
    admitting, let the running ones finish, then demote it."""


@dataclass(frozen=True)
class Blocker:
    """A resident workload that could not be chosen, and why."""

    name: str
    why: str
    until: float | None = None
    """When it stops blocking (end of its ``min_resident``), where known."""


@dataclass(frozen=True)
class Plan:
    verdict: Verdict
    demotions: tuple[Demotion, ...] = ()
    reason: str = ""
    """Empty for FITS; else what blocks and what to do, for the 503 or the config error."""
    retry_after: float | None = None
    """WAIT only: seconds until a blocker's ``min_resident`` ends, where that would help."""
    blockers: tuple[Blocker, ...] = ()

    @property
    def fits(self) -> bool:
        return self.verdict is Verdict.FITS


def should_defer(waiting_since: float | None, now: float, max_defer: float) -> bool:
    """May the incoming workload still wait for busy residents to serve their queues?

    True while it has waited less than ``max_defer`` seconds (or is not waiting);
    afterwards busy residents become victims too, so no workload starves."""
    if waiting_since is None:
        return True
    return now - waiting_since < max_defer


def is_thrash(
    left_at: float | None, now: float, min_resident: float, evicted_busy: bool = False
) -> bool:
    """A workload swapped back in whose swap out should not have happened: it was chosen
    while in use (``evicted_busy``: requests in flight or queued, past the starvation bound),
    or it is back within its own ``min_resident`` of leaving."""
    if left_at is None:
        return False
    return evicted_busy or (min_resident > 0 and now - left_at < min_resident)


@dataclass(frozen=True)
class Waiter:
    """A workload waiting for the pool to make it resident."""

    name: str
    arrived: float
    """When it asked (the caller's clock)."""
    priority: int = 0
    committed: bool = False
    """It has already made victims leave for itself: it stays first in line."""


def queue_order(waiters: Sequence[Waiter], aging: float = PRIORITY_AGING) -> list[Waiter]:
    """Who plans first: the committed waiter, then by arrival with ``priority`` counting
    ``aging`` seconds per point (a fixed place per waiter, so a waiter is only overtaken by
    one that asks within ``aging`` x the difference of priorities after it); ties by name."""
    return sorted(
        waiters, key=lambda w: (not w.committed, w.arrived - w.priority * aging, w.arrived, w.name)
    )


def _pinned_note(pinned: Sequence[Member]) -> str:
    if not pinned:
        return ""
    names = ", ".join(m.name for m in pinned)
    return f", {format_size(sum(m.device_bytes for m in pinned))} of it pinned by {names}"


def _needs(m: Member) -> str:
    """What ``m`` needs, as the 503 says it: the number and where it comes from."""
    if m.size_from == "unknown":
        return "an unknown size until it is measured"
    note = f" ({m.size_from})" if m.size_from else ""
    return f"{format_size(m.device_bytes)}{note}"


def _never(incoming: Member, budget: int, pinned: Sequence[Member]) -> str:
    held = sum(m.device_bytes for m in pinned)
    if held >= budget:
        sizes = ", ".join(
            f"{m.name} {format_size(m.device_bytes)}{' ' + m.size_from if m.size_from else ''}"
            for m in pinned
        )
        return (
            f"{incoming.name} needs {_needs(incoming)}, but pinned workloads hold "
            f"{format_size(held)} ({sizes}) of the device budget of {format_size(budget)}: "
            "it can never be resident beside them; raise device.memory_budget, "
            "or unpin a workload"
        )
    return (
        f"{incoming.name} needs {_needs(incoming)} but the device budget is "
        f"{format_size(budget)}{_pinned_note(pinned)}: it can never be resident; raise "
        "device.memory_budget, lower its memory, or unpin a workload"
    )


def _blocker(m: Member, now: float, overdue: bool) -> Blocker | None:
    if m.arriving:
        return Blocker(m.name, f"{m.name} is coming in for the requests that wait for it")
    if m.min_resident > 0 and now - m.resident_since < m.min_resident:
        until = m.resident_since + m.min_resident
        return Blocker(
            m.name,
            f"{m.name} became resident {now - m.resident_since:.1f}s ago "
            f"(min_resident {m.min_resident:g}s)",
            until,
        )
    if m.busy and not overdue:
        return Blocker(m.name, f"{m.name} has {m.in_flight} in flight, {m.queued} queued")
    return None


def choose_victims(
    members: Sequence[Member],
    incoming: Member,
    budget: int,
    now: float,
    host_ram_free: int,
    *,
    overdue: bool = False,
) -> Plan:
    """Which residents to demote (and to which tier) so ``incoming`` fits in ``budget``.

    ``members`` is the whole pool (``incoming`` may be among them, by name); ``budget``
    the device bytes the pool may use (total minus reserve); ``host_ram_free`` the host
    RAM suspended workloads may still take; ``overdue`` is ``not should_defer(...)`` for
    the incoming workload (busy residents become victims, after the idle ones)."""
    names = [m.name for m in members]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate workload names in the pool: {sorted(names)}")
    if incoming.tier is Tier.RESIDENT:
        return Plan(Verdict.FITS)
    resident = [m for m in members if m.tier is Tier.RESIDENT and m.name != incoming.name]
    pinned = [m for m in resident if m.pin]
    need = incoming.device_bytes
    if need > budget - sum(m.device_bytes for m in pinned):
        return Plan(Verdict.NEVER, reason=_never(incoming, budget, pinned))
    free = budget - sum(m.device_bytes for m in resident)
    if need <= free:
        return Plan(Verdict.FITS)

    blockers: list[Blocker] = []
    candidates: list[Member] = []
    for m in resident:
        if m.pin:
            continue
        blocker = _blocker(m, now, overdue)
        if blocker is None:
            candidates.append(m)
        else:
            blockers.append(blocker)
    candidates.sort(key=lambda m: (m.busy, m.priority, m.last_used, m.name))

    chosen: list[Member] = []
    room = free
    for m in candidates:
        if room >= need:
            break
        chosen.append(m)
        room += m.device_bytes
    if room < need:
        waits = [b.until - now for b in blockers if b.until is not None]
        why = "; ".join(b.why for b in blockers) or "nothing else can leave the device"
        return Plan(
            Verdict.WAIT,
            reason=(
                f"{incoming.name} needs {_needs(incoming)}, {format_size(max(free, 0))} of "
                f"{format_size(budget)} is free and no more can be made now: {why}"
            ),
            retry_after=max(min(waits), 0.0) if waits else None,
            blockers=tuple(blockers),
        )
    for m in reversed(chosen[:-1]):  # the last one was needed, or the loop stops earlier
        if room - m.device_bytes >= need:
            chosen.remove(m)
            room -= m.device_bytes

    host_left = host_ram_free
    tiers: dict[str, Tier] = {}
    for m in reversed(chosen):  # the most valuable victims get the faster tier
        if m.can_suspend and m.parked_bytes <= host_left:
            tiers[m.name] = Tier.SUSPENDED
            host_left -= m.parked_bytes
        else:
            tiers[m.name] = Tier.HIBERNATED if m.can_hibernate else Tier.COLD
    return Plan(
        Verdict.FITS,
        tuple(Demotion(m.name, tiers[m.name], m.device_bytes, drain=m.busy) for m in chosen),
        blockers=tuple(blockers),
    )


def fits_ever(members: Sequence[Member], budget: int) -> list[str]:
    """Configuration problems (empty when fine): workloads that could never be resident
    beside the pinned ones, and pinned workloads that do not fit together. Members with
    an unknown size (0) are skipped: their size is measured once they run."""
    problems = []
    pinned = [m for m in members if m.pin]
    total_pinned = sum(m.device_bytes for m in pinned)
    if total_pinned > budget:
        problems.append(
            f"pinned workloads {', '.join(m.name for m in pinned)} need "
            f"{format_size(total_pinned)} together but the device budget is "
            f"{format_size(budget)}; raise device.memory_budget or unpin one"
        )
    for m in members:
        if m.device_bytes <= 0:
            continue
        others = [p for p in pinned if p.name != m.name]
        if m.device_bytes > budget - sum(p.device_bytes for p in others):
            problems.append(_never(m, budget, others))
    return problems
