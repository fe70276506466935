"""What the Kubernetes runtime says the newest snapshot is (``latest``, which the policy's
status shows) follows what the pod's supervisor reports its volume holds, after pruning too:
never a snapshot that is gone."""

from __future__ import annotations

from typing import Any

from warmpool.runtime import SnapshotInfo
from warmpool.runtimes.kubernetes import KubeOptions, KubernetesRuntime, KubeTarget


def runtime(seed: str | None) -> KubernetesRuntime:
    target = KubeTarget(namespace="ns", kind="Deployment", name="m", service="m", port=8000)
    snapshot = SnapshotInfo(seed, 1, 0.0, 0.0) if seed else None
    return KubernetesRuntime(None, None, target, KubeOptions(advertise="10.0.0.1:8080"), snapshot)  # type: ignore[arg-type]


def listed(*ids: str, status: str = "ok") -> dict[str, Any]:
    return {
        "snapshots": [
            {"id": i, "status": status, "bytes": 10, "created": n} for n, i in enumerate(ids)
        ]
    }


def test_the_newest_usable_snapshot_replaces_the_policys_older_one() -> None:
    rt = runtime("old")
    rt._learn(listed("new"))
    latest = rt.latest("m")
    assert latest is not None and latest.id == "new"


def test_a_store_that_holds_none_usable_any_more_names_none() -> None:
    rt = runtime("pruned")
    rt._learn(listed())
    assert rt.latest("m") is None
    rt = runtime("pruned")
    rt._learn(listed("bad-one", status="bad"))
    assert rt.latest("m") is None


def test_a_store_that_cannot_be_read_changes_nothing() -> None:
    rt = runtime("kept")
    rt._learn({"snapshots": [{"error": "cannot read the volume"}]})
    latest = rt.latest("m")
    assert latest is not None and latest.id == "kept"
    rt._learn({})
    latest = rt.latest("m")
    assert latest is not None and latest.id == "kept"
