"""deploy.leader.decide: what a replica does with the Lease it read (pure, table-tested). The
election itself runs against the real API server in tests/kube/test_operator.py."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from deploy.leader import ElectionSettings, decide

NOW = dt.datetime(2026, 12, 7, 2, 0, 0, tzinfo=dt.UTC)


def lease(holder: str, age: float | None, duration: int = 15, stamp: str = "") -> dict[str, Any]:
    spec: dict[str, Any] = {"holderIdentity": holder, "leaseDurationSeconds": duration}
    if age is not None:
        renewed = NOW - dt.timedelta(seconds=age)
        spec["renewTime"] = stamp or renewed.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {"metadata": {"name": "dormant-operator"}, "spec": spec}


@pytest.mark.parametrize(
    ("the_lease", "expected"),
    [
        (None, "create"),  # 1.
        (lease("me", 3), "renew"),  # 2.
        (lease("me", 60), "renew"),  # still ours: renew, never "take" from ourselves
        (lease("", 1), "take"),  # 3. released on a clean shutdown
        (lease("other", 16), "take"),  # expired
        (lease("other", None), "take"),  # never renewed
        (lease("other", 1, stamp="garbage"), "take"),  # unreadable
        (lease("other", 14), "wait"),  # 4. valid
        (lease("other", 15), "wait"),  # exactly at the end: still valid
    ],
)
def test_decide(the_lease: dict[str, Any] | None, expected: str) -> None:
    assert decide(the_lease, "me", NOW) == expected


def test_acquire_time_counts_when_there_is_no_renewal() -> None:
    doc = lease("other", None)
    doc["spec"]["acquireTime"] = (NOW - dt.timedelta(seconds=2)).isoformat()
    assert decide(doc, "me", NOW) == "wait"


@pytest.mark.parametrize(("duration", "renew", "retry"), [(15, 8, 2), (15, 0, 2), (15, 5, 0)])
def test_settings_refuse_a_renewal_that_cannot_keep_the_lease(
    duration: float, renew: float, retry: float
) -> None:
    with pytest.raises(ValueError, match="leader election"):
        ElectionSettings("me", duration, renew, retry)
