"""warmpool.kube.watch against the real API server: a policy being deleted (held only by a
finalizer while the operator gives its target back) is gone for the activator at once, in the
watch's events and in every list, so it is never hibernated, woken or re-routed meanwhile."""

from __future__ import annotations

import asyncio

import pytest

from warmpool.kube.api import KubeApi, connect
from warmpool.kube.watch import PolicyWatch

from .cluster import Cluster
from .rest import Rest
from .test_scale_to_zero import _crd, _policy

pytestmark = pytest.mark.kube

HOLD = "tests.dormant.dev/hold"


def test_a_policy_being_deleted_is_gone_for_the_activator(
    kube_cluster: Cluster, kube: Rest, namespace: str
) -> None:
    m = _crd(kube)
    doc = _policy(namespace)
    doc["metadata"]["finalizers"] = [HOLD]
    m.create(doc)
    path = m.path(doc, name=True)
    api = KubeApi(connect(str(kube_cluster.kubeconfig)))

    async def scenario() -> None:
        watch = PolicyWatch(api, namespace)
        listed = await watch.start()
        assert [p["metadata"]["name"] for p in listed] == [doc["metadata"]["name"]]
        try:
            await asyncio.to_thread(kube.delete, path)
            kind, obj = await asyncio.wait_for(watch.next(), 30)
            assert kind == "DELETED", (kind, obj["metadata"])
            assert obj["metadata"].get("deletionTimestamp")
            assert kube.get(path)["metadata"]["finalizers"] == [HOLD]  # still there
            again = PolicyWatch(api, namespace)
            try:
                assert await again.start() == []  # and not listed
            finally:
                await again.stop()
        finally:
            await watch.stop()

    try:
        asyncio.run(scenario())
    finally:
        kube.patch(path, {"metadata": {"finalizers": None}})
