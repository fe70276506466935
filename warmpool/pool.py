"""The warm pool: several workloads share one device, one reservation at a time.

Before a workload becomes resident (boot, restore, resume) it asks the pool to
``reserve`` room for it. The pool asks the pure placement policy
(``warmpool.placement.choose_victims``) which residents must leave, demotes each through
its own owner (``PoolMember.demote``: drain, then suspend or hibernate), and returns once
the incoming workload fits. A workload that leaves the device says so (``left``).

What the pool counts as resident is its own bookkeeping (``held``), not the members'
states: a reservation holds its bytes from the moment it is granted, so two wakes can
never both count on the same free room. Sizes are what a member declares, else the
largest footprint measured while it ran (``measure``), else — never seen yet — the
whole budget (it comes in alone the first time: safe, and measured from then on).
A suspended workload is not free: sleep modes and the CUDA checkpoint leave a CUDA
context and the like behind. On a GPU (``suspend_frees``) its residual is measured on the
device when it leaves for the suspended tier and kept in the account until it comes back
or leaves the device for good.

Reservations are served in order (``placement.queue_order``: first come, first served,
aged by priority). Only the first in line plans and demotes; once it has made victims leave
it stays first, so the room freed for it is held for it, and nobody else is granted room
before it. A workload that has just come in is never a victim until every request that
waited for it has its lease (``Member.arriving``): each wait costs one swap, never a swap
undone before it served anyone.

Bounded: a reservation waits at most ``timeout`` (in line, then for busy or too-recent
residents: ``PoolBusy``, with when to retry); one that can never fit fails at once
(``PoolFull``). A pinned workload measured larger than the budget allows is a problem the
pool logs and shows (``problems``): nothing else can be resident beside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from snapshots.cuda_view import host_ram_free as available_host_ram
from warmpool.device import Device
from warmpool.errors import WarmpoolError
from warmpool.placement import (
    Demotion,
    Member,
    Plan,
    Tier,
    Verdict,
    Waiter,
    choose_victims,
    fits_ever,
    is_thrash,
    queue_order,
    should_defer,
)
from warmpool.runtime import Instance
from warmpool.units import format_size

__all__ = ["Pool", "PoolBusy", "PoolFull", "PoolMember"]

log = logging.getLogger("dormant.pool")


class PoolFull(WarmpoolError):
    """The workload can never be resident beside the pinned ones (a configuration problem)."""


class PoolBusy(WarmpoolError):
    """No room now: what could leave the device is busy or within its ``min_resident``.
    ``retry_after``: seconds after which trying again may help."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PoolMember(Protocol):
    """What the pool needs from a workload's owner (activator.Workload)."""

    @property
    def name(self) -> str: ...

    def placement(self) -> Member:
        """The workload as the policy sees it now (tier from its own state; the pool
        overrides tier and size while it holds room for it)."""
        ...

    async def demote(self, to: Tier, reason: str) -> None:
        """Leave the device: drain, then suspend (to SUSPENDED) or checkpoint / stop
        (to HIBERNATED / COLD). Raises when it could not; it then still serves."""
        ...


@dataclass
class _Book:
    declared: int = 0
    measured: int = 0
    held: int | None = None
    """Bytes the pool holds for it while it is (becoming) resident; None when it is off."""
    left_at: float | None = None
    thrash: int = 0
    swaps_out: int = 0
    residual: int = 0
    """Device bytes it still holds while suspended (measured after the suspend)."""
    evicted_busy: bool = False
    """It last left as a victim chosen while in use (coming back for that is thrash)."""


@dataclass(eq=False)
class _Ticket:
    """One reservation waiting in line."""

    waiter: Waiter
    serial: int


@dataclass
class Pool:
    """``budget``: device bytes the pool may use (total minus reserve). ``suspend_frees``:
    whether parking memory in host RAM frees the device (on a GPU; on CPU the device *is*
    host RAM, so suspending frees nothing and victims are hibernated)."""

    budget: int
    device: Device | None = None
    """Measures resident members (``sample``); None: declared sizes only."""
    kind: str = "cpu"
    max_defer: float = 30.0
    suspend_frees: bool = False
    host_ram_free: Callable[[], int] = available_host_ram
    clock: Callable[[], float] = time.monotonic
    poll: float = 0.25
    """Seconds between re-plans while a reservation waits for busy residents."""
    on_thrash: Callable[[str], None] | None = None
    """Called with the name of a workload swapped back in within its own min_resident."""
    members: dict[str, PoolMember] = field(default_factory=dict)
    _books: dict[str, _Book] = field(default_factory=dict)
    _instances: dict[str, Instance] = field(default_factory=dict)
    _line: list[_Ticket] = field(default_factory=list)
    """Reservations waiting, in arrival order (``queue_order`` sorts them)."""
    _serials: itertools.count[int] = field(default_factory=itertools.count)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    """Set (and replaced) when the line or the room changes: waiters re-plan at once."""
    _problems: set[str] = field(default_factory=set)
    """Problems already logged (``problems``), so each is warned about once."""

    def join(self, member: PoolMember, declared: int = 0) -> None:
        """Add a workload; ``declared``: its size in bytes (0 = measure it)."""
        self.members[member.name] = member
        self._books[member.name] = _Book(declared=declared)

    # -- sizes and bookkeeping ---------------------------------------------------------------

    def size(self, name: str) -> int:
        """The bytes ``name`` is expected to hold when resident: declared, else measured,
        else (never seen) all the budget the pinned workloads leave."""
        book = self._books[name]
        if book.declared or book.measured:
            return book.declared or book.measured
        pinned = sum(
            self._books[n].held or 0
            for n, member in self.members.items()
            if n != name and member.placement().pin
        )
        return max(self.budget - pinned, 1)

    def size_from(self, name: str) -> str:
        """Where ``size(name)`` comes from: ``declared``, ``measured`` or ``unknown``."""
        book = self._books[name]
        return "declared" if book.declared else "measured" if book.measured else "unknown"

    def measure(self, name: str, footprint: int | None) -> None:
        """A resident member's measured footprint (the largest seen is kept)."""
        book = self._books.get(name)
        if book is None or footprint is None or footprint <= 0:
            return
        book.measured = max(book.measured, footprint)
        if book.held is not None and not book.declared:
            book.held = book.measured  # the estimate gives way to what was measured
        for problem in self.problems():
            if problem not in self._problems:
                self._problems.add(problem)
                log.warning("pool: %s", problem)

    def problems(self) -> list[str]:
        """What can never work with the sizes known now (declared or measured): e.g. a
        pinned ``memory: auto`` workload measured larger than the budget leaves room for
        nothing else. Empty when fine."""
        known = [
            replace(
                self.members[n].placement(),
                device_bytes=b.declared or b.measured,
                size_from=self.size_from(n),
            )
            for n, b in self._books.items()
            if b.declared or b.measured
        ]
        return fits_ever(known, self.budget)

    def sample(self, name: str, instance: Instance) -> int | None:
        """Measure a resident member's instance on the device (by the pid and cgroup its
        runtime reports) and record it; returns the bytes, None when unavailable."""
        if self.device is None:
            return None
        self._instances[name] = instance
        footprint = self._footprint(instance)
        self.measure(name, footprint)
        return footprint

    def _footprint(self, instance: Instance) -> int | None:
        facts = instance.describe()
        pid, group = facts.get("pid"), facts.get("cgroup")
        if self.device is None or not isinstance(pid, int):
            return None
        return self.device.used_by([pid], Path(group) if isinstance(group, str) else None).bytes

    def left(self, name: str) -> None:
        """``name`` left the device (checkpointed, suspended, stopped, crashed, failed).
        Suspended on a GPU: what it still holds there is measured and kept (``residual``)."""
        book = self._books.get(name)
        if book is None:
            return
        if book.held is not None:
            book.held = None
            book.left_at = self.clock()
            book.swaps_out += 1
            self._notify()
        book.residual = 0
        instance = self._instances.get(name)
        if self.suspend_frees and instance is not None and self._suspended(name):
            book.residual = self._footprint(instance) or 0
            log.info("pool: %s keeps %s on the device suspended", name, format_size(book.residual))

    def _suspended(self, name: str) -> bool:
        return self.members[name].placement().tier is Tier.SUSPENDED

    def used(self) -> int:
        return sum(b.held if b.held is not None else b.residual for b in self._books.values())

    def _residuals(self, but: str) -> int:
        """Device bytes held by suspended members other than ``but``."""
        return sum(b.residual for n, b in self._books.items() if n != but and b.held is None)

    def holds(self, name: str) -> bool:
        book = self._books.get(name)
        return book is not None and book.held is not None

    def _view(self, name: str) -> Member:
        member = self.members[name].placement()
        book = self._books[name]
        if book.held is None:
            return replace(member, device_bytes=self.size(name), size_from=self.size_from(name))
        return replace(
            member,
            tier=Tier.RESIDENT,
            device_bytes=book.held,
            size_from=self.size_from(name),
            can_suspend=member.can_suspend and self.suspend_frees,
        )

    def _notify(self) -> None:
        """Wake every waiting reservation to re-plan (the line or the room changed)."""
        self._changed.set()
        self._changed = asyncio.Event()

    def _in_order(self) -> list[_Ticket]:
        by_waiter = {id(t.waiter): t for t in self._line}
        return [by_waiter[id(w)] for w in queue_order([t.waiter for t in self._line])]

    # -- reservations ----------------------------------------------------------------------

    async def reserve(self, member: PoolMember, timeout: float) -> None:
        """Return once ``member`` fits, victims demoted; it then holds its room until
        ``left``. Reservations are served in order (``queue_order``); only the first in
        line plans and demotes. Raises PoolFull (never fits), PoolBusy (not within
        ``timeout``)."""
        name = member.name
        if self.holds(name):
            return
        started = self.clock()
        deadline = started + timeout
        ticket = _Ticket(Waiter(name, started, member.placement().priority), next(self._serials))
        self._line.append(ticket)
        refused: dict[str, str] = {}  # victims that could not leave during this reservation
        try:
            while True:
                now = self.clock()
                plan = self._plan(name, refused, started, now)
                line = self._in_order()
                ahead = [t.waiter.name for t in line[: line.index(ticket)]]
                if not ahead and plan.fits and not plan.demotions:
                    self._grant(name, now)
                    return
                if not ahead and plan.fits:
                    # First in line: the room these victims free is held for it.
                    ticket.waiter = replace(ticket.waiter, committed=True)
                    refused.update(await self._demote(plan.demotions, name))
                    continue  # re-plan: sizes and states have changed
                if ahead:
                    plan = Plan(
                        Verdict.WAIT,
                        reason=f"{name} waits its turn behind {', '.join(ahead)}"
                        + (f" ({plan.reason})" if plan.reason else ""),
                    )
                changed = self._changed
                remaining = deadline - self.clock()
                if remaining <= 0 or (
                    plan.retry_after is not None and plan.retry_after > remaining
                ):
                    # waiting longer is pointless (or not allowed): say when it may work
                    raise PoolBusy(plan.reason, plan.retry_after)
                wait = min(self.poll, remaining, plan.retry_after or self.poll)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(wait, 0.01)):
                        await changed.wait()
        finally:
            self._line.remove(ticket)
            self._notify()

    def _plan(self, name: str, refused: dict[str, str], started: float, now: float) -> Plan:
        """The policy's plan for ``name`` now; raises PoolFull (never fits) or PoolBusy
        (only victims that refused to leave could make room)."""
        members = [
            replace(view, pin=True) if view.name in refused else view
            for view in (self._view(n) for n in self.members)
        ]
        incoming = next(m for m in members if m.name == name)
        plan = choose_victims(
            members,
            incoming,
            self.budget - self._residuals(name),
            now,
            self.host_ram_free(),
            overdue=not should_defer(started, now, self.max_defer),
        )
        if plan.verdict is not Verdict.NEVER:
            return plan
        if unmeasured := self._unmeasured_pins(name):
            # A pinned workload never measured yet holds the whole budget as its
            # estimate: the verdict is not final, its first sample settles it.
            return Plan(
                Verdict.WAIT,
                reason=(
                    f"{name} waits for the size of pinned {', '.join(unmeasured)}, "
                    "which has not been measured yet (until then it counts as the "
                    "whole budget); declare its memory: to spare the wait"
                ),
            )
        if kept := self._residuals(name):
            # What suspended workloads keep on the device goes when they hibernate.
            return Plan(
                Verdict.WAIT,
                reason=(
                    f"{name} does not fit beside the {format_size(kept)} that suspended "
                    "workloads keep on the device (CUDA contexts and the like); it "
                    "fits once they have left it"
                ),
            )
        if refused:
            why = "; ".join(f"{n} could not leave the device: {e}" for n, e in refused.items())
            raise PoolBusy(f"{name} cannot be made room for now: {why}")
        raise PoolFull(plan.reason)

    def _unmeasured_pins(self, name: str) -> list[str]:
        """Pinned members other than ``name`` holding room by the never-measured estimate."""
        return [
            n
            for n, book in self._books.items()
            if n != name
            and book.held is not None
            and not (book.declared or book.measured)
            and self.members[n].placement().pin
        ]

    def _grant(self, name: str, now: float) -> None:
        book = self._books[name]
        book.held = self.size(name)
        book.residual = 0
        min_resident = self.members[name].placement().min_resident
        if is_thrash(book.left_at, now, min_resident, book.evicted_busy):
            book.thrash += 1
            if self.on_thrash is not None:
                self.on_thrash(name)
            log.warning(
                "%s: swapped back in %.1fs after it left%s (min_resident %gs): thrash",
                name,
                now - (book.left_at or now),
                ", swapped out while in use" if book.evicted_busy else "",
                min_resident,
            )
        book.evicted_busy = False
        log.info(
            "pool: %s holds %s (%s of %s used)",
            name,
            format_size(book.held),
            format_size(self.used()),
            format_size(self.budget),
        )

    async def _demote(self, demotions: Sequence[Demotion], incoming: str) -> dict[str, str]:
        """Demote every victim (at once); returns those that could not leave, and why
        (they still serve, and are not asked again during this reservation)."""
        refused: dict[str, str] = {}

        async def one(d: Demotion) -> None:
            log.info("pool: %s leaves for %s (to %s)", d.name, incoming, d.to)
            book = self._books[d.name]
            book.evicted_busy = d.drain
            try:
                await self.members[d.name].demote(d.to, f"swapped out for {incoming}")
            except Exception as exc:  # it still serves; the next plan sees it resident
                book.evicted_busy = False
                log.warning("pool: %s could not leave the device: %s", d.name, exc)
                refused[d.name] = str(exc)

        await asyncio.gather(*(one(d) for d in demotions))
        return refused

    # -- reporting ---------------------------------------------------------------------------

    def view(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "budget_bytes": self.budget,
            "used_bytes": self.used(),
            "max_defer_s": self.max_defer,
            "device": self.device.describe() if self.device is not None else None,
            "members": {name: self.member_view(name) for name in self._books},
            "queue": [t.waiter.name for t in self._in_order()],
            "problems": self.problems(),
        }

    def member_view(self, name: str) -> dict[str, Any]:
        book = self._books[name]
        return {
            "held_bytes": book.held,
            "declared_bytes": book.declared or None,
            "measured_bytes": book.measured or None,
            "thrash": book.thrash,
            "residual_bytes": book.residual or None,
        }

    def thrash_count(self, name: str) -> int:
        return self._books[name].thrash
