"""Which workloads leave the device so another can come in: pure placement policy.

Plain frozen values in, a ``Plan`` out; no asyncio, no clock reads (the caller passes
``now``), no I/O. The pool applies a plan by demoting each victim through its own
``Workload`` (drain, then suspend or hibernate), and only then lets the incoming
workload become resident.

Rules, in order:

1. Never a pinned workload, and none within its ``min_resident`` (anti-thrash).
2. Never one with requests in flight or queued — unless the incoming workload has
   waited longer than the starvation bound (``should_defer`` is False): then busy
   workloads may be chosen too, after every idle one, and their demotion says
   ``drain`` (their queued requests are served first or wait for them to come back).
3. Then the lowest ``priority`` first, then the least recently used; victims that turn
   out unnecessary (a bigger one freed enough) are dropped again, most valuable first.
4. Suspend (device memory parked in host RAM) while host RAM allows and the workload
   can be suspended, giving that faster tier to the most valuable victims; otherwise
   hibernate (a snapshot), or stop when it cannot be checkpointed either.

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
    "Blocker",
    "Demotion",
    "Member",
    "Plan",
    "Tier",
    "Verdict",
    "choose_victims",
    "fits_ever",
    "is_thrash",
    "should_defer",
]


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


def is_thrash(left_at: float | None, now: float, min_resident: float) -> bool:
    """A workload swapped back in within its own ``min_resident`` of being swapped out."""
    return left_at is not None and min_resident > 0 and now - left_at < min_resident


def _pinned_note(pinned: Sequence[Member]) -> str:
    if not pinned:
        return ""
    names = ", ".join(m.name for m in pinned)
    return f", {format_size(sum(m.device_bytes for m in pinned))} of it pinned by {names}"


def _never(incoming: Member, budget: int, pinned: Sequence[Member]) -> str:
    return (
        f"{incoming.name} needs {format_size(incoming.device_bytes)} but the device budget is "
        f"{format_size(budget)}{_pinned_note(pinned)}: it can never be resident; raise "
        "device.memory_budget, lower its memory, or unpin a workload"
    )


def _blocker(m: Member, now: float, overdue: bool) -> Blocker | None:
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
                f"{incoming.name} needs {format_size(need)}, {format_size(max(free, 0))} of "
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
