"""warmpool.kube.api against the real API server: answers are the objects as sent, and every
failure — a missing object, a refusal, a server that does not answer, a bad kubeconfig — is a
KubeError with the HTTP status (0 when nothing answered), never the client's own exception."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml

from warmpool.errors import WarmpoolError
from warmpool.kube.api import KubeApi, KubeError, connect

from .cluster import Cluster, free_port

pytestmark = pytest.mark.kube


def test_answers_and_refusals(kube_cluster: Cluster, namespace: str) -> None:
    api = KubeApi(connect(str(kube_cluster.kubeconfig)))
    nobody = KubeApi(kube_cluster.service_account_client("default", "nobody"))

    async def scenario() -> None:
        found = await api.get(f"/api/v1/namespaces/{namespace}")
        assert found["kind"] == "Namespace" and found["metadata"]["name"] == namespace
        assert await api.find(f"/api/v1/namespaces/{namespace}/services/missing") is None
        with pytest.raises(KubeError) as missing:
            await api.get(f"/api/v1/namespaces/{namespace}/services/missing")
        assert missing.value.status == 404 and "not found" in str(missing.value)
        with pytest.raises(KubeError) as denied:
            await nobody.get(f"/api/v1/namespaces/{namespace}/pods")
        assert denied.value.status == 403 and isinstance(denied.value, WarmpoolError)
        bad = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "Bad_Name"}}
        with pytest.raises(KubeError) as invalid:
            await api.post(f"/api/v1/namespaces/{namespace}/services", bad)
        assert invalid.value.status == 422

    try:
        asyncio.run(scenario())
    finally:
        api.close()
        nobody.close()


def test_a_server_that_does_not_answer(tmp_path: Path) -> None:
    config = tmp_path / "kubeconfig"
    server = {"server": f"https://127.0.0.1:{free_port()}", "insecure-skip-tls-verify": True}
    config.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": server}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    api = KubeApi(connect(str(config)), timeout=5)
    try:
        with pytest.raises(KubeError) as unreachable:
            api.call("GET", "/version")
        assert unreachable.value.status == 0 and "did not answer" in str(unreachable.value)
    finally:
        api.close()
    with pytest.raises(KubeError) as unusable:
        connect(str(tmp_path / "missing"))
    assert "cannot use" in str(unusable.value)
