"""Small workloads for the `kube` tests: a Deployment of a command, finding its pods."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .cluster import Cluster, free_port
from .kubelet import FakeKubelet
from .rest import ApiException, Rest

__all__ = [
    "POD_APP",
    "POD_IP_ENV",
    "PORT",
    "deployment",
    "diagnose",
    "endpoint_addresses",
    "get",
    "pods",
    "ready_pod",
    "replicas",
]

POD_APP = str(Path(__file__).with_name("pod_app.py"))
# Every pod has its own network namespace (tests/kube/network.py), so all pods may use one port.
PORT = free_port()
POD_IP_ENV = {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}


def deployment(
    name: str,
    command: list[str],
    *,
    probe_port: int | None = None,
    volumes: list[dict[str, Any]] | None = None,
    mounts: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "app",
        "image": "this-checkout",
        "command": command,
        "env": [POD_IP_ENV],
        "volumeMounts": mounts or [],
    }
    if probe_port is not None:
        container["ports"] = [{"name": "http", "containerPort": probe_port}]
        container["readinessProbe"] = {
            "httpGet": {"path": "/health", "port": "http"},
            "periodSeconds": 1,
        }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "terminationGracePeriodSeconds": 10,
                    "containers": [container],
                    "volumes": volumes or [],
                },
            },
        },
    }


def pods(kube: Rest, ns: str, app: str) -> list[dict[str, Any]]:
    """The pods labelled app=APP (or matching APP when it is a selector: `k=v,...`)."""
    selector = app if "=" in app else f"app={app}"
    return list(kube.get(f"/api/v1/namespaces/{ns}/pods", labelSelector=selector)["items"])


def endpoint_addresses(kube: Rest, ns: str, service: str) -> set[str]:
    """The ready ``IP:port`` pairs of a Service's Endpoints."""
    doc = kube.get(f"/api/v1/namespaces/{ns}/endpoints/{service}")
    return {
        f"{a['ip']}:{p['port']}"
        for s in doc.get("subsets") or []
        for a in s.get("addresses") or []
        for p in s.get("ports") or []
    }


def replicas(kube: Rest, ns: str, deployment: str) -> int:
    """A Deployment's desired replicas."""
    return int(
        kube.get(f"/apis/apps/v1/namespaces/{ns}/deployments/{deployment}")["spec"]["replicas"]
    )


def ready_pod(kube: Rest, ns: str, app: str, not_named: str = "") -> dict[str, Any] | None:
    for pod in pods(kube, ns, app):
        conds = {c["type"]: c["status"] for c in pod.get("status", {}).get("conditions", [])}
        if (
            pod["metadata"]["name"] != not_named
            and not pod["metadata"].get("deletionTimestamp")
            and conds.get("Ready") == "True"
        ):
            return pod
    return None


def get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.status, resp.read().decode()


def diagnose(cluster: Cluster, kubelet: FakeKubelet, pod: str = "") -> Callable[[], str]:
    return lambda: (
        f"kubelet errors: {kubelet.errors}\npod log:\n{kubelet.log(pod)}\n"
        + (cluster.log_tails(15))
    )


def service_account_ready(kube: Rest, ns: str, name: str) -> bool:
    """Whether a ServiceAccount exists with its token Secret (1.20's token controller writes
    it; until then the ServiceAccount admission plugin refuses the pods that use it)."""
    try:
        account = kube.get(f"/api/v1/namespaces/{ns}/serviceaccounts/{name}")
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return bool(account.get("secrets"))
