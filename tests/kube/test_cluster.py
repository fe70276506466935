"""The test cluster itself: a real API server and controller manager, and the fake kubelet
(tests/kube/kubelet.py) playing the node with real local processes."""

from __future__ import annotations

import ipaddress
import sys
import urllib.error
from typing import Any

import pytest

from .cluster import Cluster, wait_until
from .kubelet import FakeKubelet
from .rest import ApiException, Rest
from .workloads import POD_APP, POD_IP_ENV, PORT, deployment, diagnose, get, pods, ready_pod

pytestmark = pytest.mark.kube


def test_control_plane_serves_rbac_and_the_controllers_run(
    kube_cluster: Cluster, kube: Rest
) -> None:
    version = kube.get("/version")
    assert version["major"] == "1" and version["minor"].startswith("20"), version
    # RBAC is on: a service account with no role can do nothing; the admin can.
    nobody = Rest(kube_cluster.service_account_client("default", "nobody"))
    with pytest.raises(ApiException) as denied:
        nobody.get("/api/v1/namespaces/default/pods")
    assert denied.value.status == 403
    assert kube.get("/api/v1/namespaces/default/pods")["kind"] == "PodList"
    # The serviceaccount controller ran (the fixture waited for it); so did the others below.
    kube.get("/api/v1/namespaces/default/serviceaccounts/default")


def test_deployment_pod_runs_on_its_ip_becomes_ready_and_scales_to_zero(
    kube_cluster: Cluster, kube: Rest, namespace: str, kubelet: FakeKubelet
) -> None:
    ns = namespace
    cmd = [sys.executable, POD_APP, "--host", "$(POD_IP)", "--port", str(PORT)]
    kube.post(f"/apis/apps/v1/namespaces/{ns}/deployments", deployment("web", cmd, probe_port=PORT))

    pod = wait_until(
        "the Deployment's pod to be Ready",
        lambda: ready_pod(kube, ns, "web"),
        timeout=90,
        diagnose=diagnose(kube_cluster, kubelet),
    )
    assert isinstance(pod, dict)
    name, ip = pod["metadata"]["name"], pod["status"]["podIP"]
    assert ipaddress.ip_address(ip) in kubelet.network.subnet and ip != kubelet.network.gateway
    assert pod["spec"]["nodeName"] == kubelet.node
    assert pod["status"]["hostIP"] == kubelet.network.gateway
    assert get(f"http://{ip}:{PORT}/health") == (200, "ok")
    # The process runs in the pod's own network namespace: nothing of it on the host's.
    with pytest.raises(urllib.error.URLError):
        get(f"http://127.0.0.1:{PORT}/health")
    wait_until(
        "the Deployment to report 1 available replica",
        lambda: (
            kube.get(f"/apis/apps/v1/namespaces/{ns}/deployments/web")["status"].get(
                "availableReplicas"
            )
            == 1
        ),
        timeout=60,
    )

    kube.patch(f"/apis/apps/v1/namespaces/{ns}/deployments/web/scale", {"spec": {"replicas": 0}})
    wait_until(
        "the pod to go away",
        lambda: not pods(kube, ns, "web"),
        timeout=60,
        diagnose=diagnose(kube_cluster, kubelet, name),
    )
    term = kubelet.terminations[name]
    assert term.sigterm_at is not None and not term.killed and term.exit_code == 0, term
    assert term.grace == 10
    assert "SIGTERM received" in kubelet.log(name)
    with pytest.raises(urllib.error.URLError):
        get(f"http://{ip}:{PORT}/health")


def test_job_pods_run_to_completion(
    kube_cluster: Cluster, kube: Rest, namespace: str, kubelet: FakeKubelet
) -> None:
    ns = namespace

    # The pod reaches the host through its gateway: the API server's /readyz is open to all.
    script = (
        "import os, ssl, urllib.request; print('job on', os.environ['POD_IP']);"
        " url = 'https://%s:%s/readyz' % (os.environ['KUBERNETES_SERVICE_HOST'],"
        " os.environ['KUBERNETES_SERVICE_PORT']);"
        " ctx = ssl._create_unverified_context();"
        " print('api', urllib.request.urlopen(url, context=ctx, timeout=10).read().decode());"
        " raise SystemExit(CODE)"
    )

    def job(name: str, code: int) -> dict[str, Any]:
        command = [sys.executable, "-c", script.replace("CODE", str(code))]
        return {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": name},
            "spec": {
                "backoffLimit": 0,
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [
                            {
                                "name": "main",
                                "image": "this-checkout",
                                "command": command,
                                "env": [POD_IP_ENV],
                            }
                        ],
                    },
                },
            },
        }

    kube.post(f"/apis/batch/v1/namespaces/{ns}/jobs", job("ok", 0))
    kube.post(f"/apis/batch/v1/namespaces/{ns}/jobs", job("bad", 3))

    def job_status(name: str) -> dict[str, Any]:
        return dict(kube.get(f"/apis/batch/v1/namespaces/{ns}/jobs/{name}").get("status", {}))

    wait_until(
        "Job ok to succeed",
        lambda: job_status("ok").get("succeeded") == 1,
        timeout=90,
        diagnose=diagnose(kube_cluster, kubelet),
    )
    (pod,) = pods(kube, ns, "ok")
    assert pod["status"]["phase"] == "Succeeded"
    term = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] == 0 and term["reason"] == "Completed"
    out = kubelet.log(pod["metadata"]["name"])
    assert f"job on {pod['status']['podIP']}" in out and "api ok" in out, out

    wait_until("Job bad to fail", lambda: job_status("bad").get("failed") == 1, timeout=90)
    (pod,) = pods(kube, ns, "bad")
    assert pod["status"]["phase"] == "Failed"
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 3


def test_eviction_sends_sigterm_and_the_replicaset_replaces_the_pod(
    kube_cluster: Cluster, kube: Rest, namespace: str, kubelet: FakeKubelet
) -> None:
    ns = namespace
    cmd = [sys.executable, POD_APP, "--host", "$(POD_IP)", "--port", str(PORT)]
    kube.post(f"/apis/apps/v1/namespaces/{ns}/deployments", deployment("ev", cmd, probe_port=PORT))
    first = wait_until(
        "a Ready pod",
        lambda: ready_pod(kube, ns, "ev"),
        timeout=90,
        diagnose=diagnose(kube_cluster, kubelet),
    )
    assert isinstance(first, dict)
    name = first["metadata"]["name"]

    def evict() -> dict[str, Any]:
        return kube.post(
            f"/api/v1/namespaces/{ns}/pods/{name}/eviction",
            {
                "apiVersion": "policy/v1beta1",
                "kind": "Eviction",
                "metadata": {"name": name, "namespace": ns},
            },
        )

    # A PodDisruptionBudget that allows no disruption makes the Eviction API refuse (429)...
    kube.post(
        f"/apis/policy/v1beta1/namespaces/{ns}/poddisruptionbudgets",
        {
            "apiVersion": "policy/v1beta1",
            "kind": "PodDisruptionBudget",
            "metadata": {"name": "ev"},
            "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "ev"}}},
        },
    )
    wait_until(
        "the disruption controller to count the healthy pod",
        lambda: (
            kube.get(f"/apis/policy/v1beta1/namespaces/{ns}/poddisruptionbudgets/ev")
            .get("status", {})
            .get("currentHealthy")
            == 1
        ),
        timeout=60,
    )
    with pytest.raises(ApiException) as refused:
        evict()
    assert refused.value.status == 429
    assert name not in kubelet.terminations
    # ... and without it the pod is deleted gracefully: SIGTERM, then a replacement.
    kube.delete(f"/apis/policy/v1beta1/namespaces/{ns}/poddisruptionbudgets/ev")
    wait_until("the eviction to be accepted", lambda: evict() is not None, timeout=30)
    replacement = wait_until(
        "a replacement pod to be Ready",
        lambda: ready_pod(kube, ns, "ev", not_named=name),
        timeout=90,
        diagnose=diagnose(kube_cluster, kubelet, name),
    )
    assert isinstance(replacement, dict)
    wait_until(
        "the evicted pod to be gone",
        lambda: name not in {p["metadata"]["name"] for p in pods(kube, ns, "ev")},
        timeout=60,
    )
    term = kubelet.terminations[name]
    assert term.sigterm_at is not None and term.exit_code == 0 and not term.killed, term
    assert "SIGTERM received" in kubelet.log(name)
    ip = replacement["status"]["podIP"]
    assert get(f"http://{ip}:{PORT}/health") == (200, "ok")


def test_a_claim_outlives_its_pods(
    kube_cluster: Cluster, kube: Rest, namespace: str, kubelet: FakeKubelet
) -> None:
    ns = namespace
    kube.post(
        f"/api/v1/namespaces/{ns}/persistentvolumeclaims",
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "state"},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "1Mi"}},
            },
        },
    )
    cmd = [
        sys.executable,
        POD_APP,
        "--host",
        "$(POD_IP)",
        "--port",
        str(PORT),
        "--data",
        "/var/lib/app",
    ]
    body = deployment(
        "pvc",
        cmd,
        probe_port=PORT,
        volumes=[{"name": "state", "persistentVolumeClaim": {"claimName": "state"}}],
        mounts=[{"name": "state", "mountPath": "/var/lib/app"}],
    )
    kube.post(f"/apis/apps/v1/namespaces/{ns}/deployments", body)
    first = wait_until(
        "the first pod",
        lambda: ready_pod(kube, ns, "pvc"),
        timeout=90,
        diagnose=diagnose(kube_cluster, kubelet),
    )
    assert isinstance(first, dict)
    name = first["metadata"]["name"]
    assert get(f"http://{first['status']['podIP']}:{PORT}/visits") == (200, f"{name}\n")

    kube.delete(f"/api/v1/namespaces/{ns}/pods/{name}")
    second = wait_until(
        "the replacement pod",
        lambda: ready_pod(kube, ns, "pvc", not_named=name),
        timeout=90,
        diagnose=diagnose(kube_cluster, kubelet, name),
    )
    assert isinstance(second, dict)
    status, text = get(f"http://{second['status']['podIP']}:{PORT}/visits")
    assert status == 200
    assert text.split() == [name, second["metadata"]["name"]]
    # The claim is a directory of the fake node's, the same for both pods.
    assert (kubelet.claim_dir(ns, "state") / "visits").read_text().split() == text.split()
