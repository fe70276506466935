"""A suspended workload is not free on a GPU: sleep modes and the CUDA checkpoint leave a
CUDA context and the like on the device. The pool measures that residual after every
suspend and keeps it in its account. The device here is a FAKE that answers what NVML would
(there is no GPU on these machines); the members are plain policy views."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from warmpool.device import Footprint
from warmpool.placement import Member, Tier
from warmpool.pool import Pool, PoolBusy

pytestmark = pytest.mark.anyio

MB = 1 << 20


@dataclass
class FakeNvml:
    """A FAKE NVIDIA device: what each pid holds, as NVML would report it."""

    holds: dict[int, int] = field(default_factory=dict)
    kind: str = "nvidia"

    def total(self) -> int:
        return 1000 * MB

    def used_by(self, pids: Any, cgroup: Path | None = None) -> Footprint:
        return Footprint(sum(self.holds.get(p, 0) for p in pids), "nvml")

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind}


@dataclass
class Proc:
    pid: int

    def describe(self) -> dict[str, Any]:
        return {"pid": self.pid}


@dataclass
class Member_:
    """A workload whose tier the test moves, as its owner would."""

    name: str
    tier: Tier = Tier.COLD
    demoted: list[Tier] = field(default_factory=list)

    def placement(self) -> Member:
        return Member(self.name, self.tier, 0, can_suspend=True)

    async def demote(self, to: Tier, reason: str) -> None:
        self.demoted.append(to)


async def _resident(pool: Pool, device: FakeNvml, member: Member_, pid: int, size: int) -> None:
    await pool.reserve(member, timeout=1)
    member.tier = Tier.RESIDENT
    device.holds[pid] = size
    pool.sample(member.name, Proc(pid))  # type: ignore[arg-type]


def _suspend(pool: Pool, device: FakeNvml, member: Member_, pid: int, residual: int) -> None:
    """What a suspend leaves (the driver's context, say), then the owner's transition."""
    device.holds[pid] = residual
    member.tier = Tier.SUSPENDED
    pool.left(member.name)


async def test_a_suspended_workload_keeps_its_measured_residual_in_the_account() -> None:
    device = FakeNvml()
    pool = Pool(1000 * MB, device=device, kind="nvidia", suspend_frees=True, poll=0.01)
    a = Member_("a")
    pool.join(a, declared=600 * MB)
    await _resident(pool, device, a, 101, 600 * MB)
    _suspend(pool, device, a, 101, 500 * MB)
    assert pool.used() == 500 * MB
    assert pool.member_view("a")["residual_bytes"] == 500 * MB
    b = Member_("b")
    pool.join(b, declared=600 * MB)  # 600 fit in 1000, but not beside a's 500 left behind
    with pytest.raises(PoolBusy):
        await pool.reserve(b, timeout=0.05)
    device.holds[101] = 0
    a.tier = Tier.HIBERNATED  # a leaves the device for good: nothing left to count
    pool.left("a")
    assert pool.used() == 0
    await pool.reserve(b, timeout=1)
    assert pool.holds("b")


async def test_a_residual_ends_when_the_workload_comes_back() -> None:
    device = FakeNvml()
    pool = Pool(1000 * MB, device=device, kind="nvidia", suspend_frees=True, poll=0.01)
    a = Member_("a")
    pool.join(a, declared=600 * MB)
    await _resident(pool, device, a, 101, 600 * MB)
    _suspend(pool, device, a, 101, 80 * MB)
    assert pool.used() == 80 * MB
    a.tier = Tier.SUSPENDED
    await pool.reserve(a, timeout=1)  # its wake: its whole size again, the residual inside it
    assert pool.used() == 600 * MB and pool.member_view("a")["residual_bytes"] is None


async def test_on_cpu_nothing_changes() -> None:
    """On CPU (suspending frees nothing; the pool hibernates instead) no residual is kept."""
    device = FakeNvml(kind="cpu")
    pool = Pool(1000 * MB, device=device, kind="cpu", poll=0.01)
    a = Member_("a")
    pool.join(a, declared=600 * MB)
    await _resident(pool, device, a, 101, 600 * MB)
    _suspend(pool, device, a, 101, 500 * MB)
    assert pool.used() == 0
