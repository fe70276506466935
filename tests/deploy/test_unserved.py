"""deploy.unserved: which policies get a status saying no install serves their namespace
(pure, table-tested; against the real API server in tests/kube/test_operator.py)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from deploy.unserved import REASON, unserved

NOW = dt.datetime(2026, 12, 7, 2, 0, 0, tzinfo=dt.UTC)


def policy(namespace: str, age: float, status: Any = None, deleting: bool = False) -> Any:
    created = (NOW - dt.timedelta(seconds=age)).strftime("%Y-%m-%dT%H:%M:%SZ")
    meta: dict[str, Any] = {
        "name": "p",
        "namespace": namespace,
        "creationTimestamp": created,
        "generation": 2,
    }
    if deleting:
        meta["deletionTimestamp"] = created
    doc: dict[str, Any] = {"metadata": meta, "spec": {}}
    if status is not None:
        doc["status"] = status
    return doc


@pytest.mark.parametrize(
    ("doc", "marked"),
    [
        (policy("models", 60), True),  # another namespace, nobody wrote a status
        (policy("dormant", 60), False),  # ours: the reconcile writes its status
        (policy("models", 5), False),  # too young: its own install may not have looked yet
        (policy("models", 60, status={"phase": "Pending"}), False),  # someone serves it
        (policy("models", 60, status={"phase": "Degraded"}), False),  # marked already
        (policy("models", 60, deleting=True), False),
    ],
)
def test_unserved(doc: Any, marked: bool) -> None:
    out = unserved([doc], "dormant", NOW, grace=30)
    assert bool(out) == marked
    if marked:
        ((namespace, name, status),) = out
        assert (namespace, name) == ("models", "p")
        assert status["phase"] == "Degraded" and status["observedGeneration"] == 2
        assert "namespace models" in status["message"] and "dormant" in status["message"]
        (condition,) = status["conditions"]
        assert condition["reason"] == REASON and condition["status"] == "True"
