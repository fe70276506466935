"""The Lease rules (warmpool.kube.lease): the pure judgement as a table, and two keepers on an
in-memory API that enforces resourceVersions as the API server does."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest

from warmpool.kube.api import KubeError
from warmpool.kube.lease import LeaseKeeper, LeaseView, judge

pytestmark = pytest.mark.anyio


def view(holder: str, duration: float = 10.0) -> LeaseView:
    return LeaseView(holder=holder, duration=duration, version="1", renewed="")


@pytest.mark.parametrize(
    ("lease", "unchanged", "expected"),
    [
        (None, 0.0, "create"),
        (view("me"), 0.0, "renew"),
        (view("me"), 99.0, "renew"),
        (view(""), 0.0, "take"),
        (view("other"), 9.9, "follow"),
        (view("other"), 10.0, "take"),
    ],
)
def test_judge(lease: LeaseView | None, unchanged: float, expected: str) -> None:
    assert judge(lease, "me", unchanged) == expected


class MemoryApi:
    """find/post/put/merge on one object, with resourceVersion checks (409 on a stale PUT)."""

    def __init__(self) -> None:
        self.obj: dict[str, Any] | None = None
        self.version = 0
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise KubeError("GET: the API server did not answer (refused)")

    def _stored(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(self.version)
        self.obj = obj
        return copy.deepcopy(obj)

    async def find(self, path: str) -> dict[str, Any] | None:
        self._check()
        return copy.deepcopy(self.obj)

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self._check()
        if self.obj is not None:
            raise KubeError("exists", 409)
        return self._stored(body)

    async def put(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self._check()
        assert self.obj is not None
        if body["metadata"]["resourceVersion"] != self.obj["metadata"]["resourceVersion"]:
            raise KubeError("conflict", 409)
        return self._stored(body)

    async def merge(self, path: str, patch: dict[str, Any]) -> dict[str, Any]:
        self._check()
        assert self.obj is not None
        merged = copy.deepcopy(self.obj)
        merged["metadata"].setdefault("annotations", {}).update(patch["metadata"]["annotations"])
        return self._stored(merged)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def keeper(api: MemoryApi, me: str, clock: Clock) -> LeaseKeeper:
    return LeaseKeeper(api, "ns", "ref", me, 10.0, clock=clock)  # type: ignore[arg-type]


async def test_one_holder_the_other_takes_over_only_after_a_whole_duration() -> None:
    api, clock = MemoryApi(), Clock()
    a, b = keeper(api, "a", clock), keeper(api, "b", clock)
    await a.tick()
    await b.tick()
    assert a.held and not b.held and b.holder == "a"
    clock.now += 9.0  # a stops renewing (it died)
    await b.tick()
    assert not b.held
    clock.now += 1.0
    await b.tick()
    assert b.held and api.obj is not None and api.obj["spec"]["holderIdentity"] == "b"
    assert api.obj["spec"]["leaseTransitions"] == 1
    assert not a.held  # its own renewal is older than a duration: it stopped acting too


async def test_a_holder_that_cannot_renew_stops_holding_after_its_duration() -> None:
    api, clock = MemoryApi(), Clock()
    a = keeper(api, "a", clock)
    await a.tick()
    api.down = True
    clock.now += 5.0
    await a.tick()
    assert a.held
    clock.now += 5.0
    await a.tick()
    assert not a.held


async def test_release_hands_over_at_once_and_a_wake_request_is_answered_once() -> None:
    api, clock = MemoryApi(), Clock()
    a, b = keeper(api, "a", clock), keeper(api, "b", clock)
    await a.tick()
    await b.tick()
    await b.request_wake()
    assert await a.wake_requested()
    assert not await a.wake_requested()
    await a.tick()  # the annotation changed the version: a renews all the same
    assert a.held
    await a.stop()
    await b.tick()
    assert b.held and not a.held


async def test_keepers_run_in_the_background() -> None:
    api = MemoryApi()
    a = LeaseKeeper(api, "ns", "ref", "a", 0.6)  # type: ignore[arg-type]
    b = LeaseKeeper(api, "ns", "ref", "b", 0.6)  # type: ignore[arg-type]
    a.start()
    assert await a.settled()
    b.start()
    await asyncio.sleep(0.5)
    assert not await b.settled()
    await a.stop(release=False)  # killed: no release
    await asyncio.sleep(1.5)
    assert b.held
    await b.stop()


async def test_wake_requests_while_waiting_do_not_keep_a_dead_holders_lease_alive() -> None:
    api, clock = MemoryApi(), Clock()
    a, b = keeper(api, "a", clock), keeper(api, "b", clock)
    await a.tick()
    await b.tick()
    for _ in range(6):  # a is dead; b asks for a wake every 2 s meanwhile
        clock.now += 2.0
        b._asked_at = float("-inf")
        await b.request_wake()
        await b.tick()
    assert b.held


async def test_hand_over_releases_at_once_and_takes_back_only_when_nobody_came() -> None:
    api, clock = MemoryApi(), Clock()
    a, b = keeper(api, "a", clock), keeper(api, "b", clock)
    await a.tick()
    await b.tick()
    await a.hand_over()
    assert not a.held and api.obj is not None and api.obj["spec"]["holderIdentity"] == ""
    await a.tick()
    assert not a.held  # a yielding keeper does not take a free Lease back at once
    await b.tick()
    assert b.held
    await a.tick()
    assert a.taken_by_another()

    api, clock = MemoryApi(), Clock()
    alone = keeper(api, "a", clock)
    await alone.tick()
    await alone.hand_over()
    clock.now += 9.0
    await alone.tick()
    assert not alone.held
    clock.now += 1.0
    await alone.tick()
    assert alone.held  # no other activator came within a duration: the Lease comes back
