"""The fake kubelet's less common paths: restarts, a grace period that runs out, ConfigMap
volumes with mount paths rewritten, a cordoned node whose evicted pod moves to another."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from .cluster import Cluster, wait_until
from .kubelet import FakeKubelet
from .network import PodNetwork
from .rest import Rest
from .workloads import POD_APP, POD_IP_ENV, PORT, deployment, pods, ready_pod

pytestmark = pytest.mark.kube


def status_of(kube: Rest, ns: str, app: str) -> dict[str, Any]:
    (pod,) = pods(kube, ns, app)
    return dict(pod.get("status", {}))


def test_a_crashing_container_is_restarted_with_a_count(
    kube: Rest, namespace: str, kubelet: FakeKubelet
) -> None:
    script = "import sys; print('up', flush=True); sys.exit(3)"
    body = deployment("crash", [sys.executable, "-c", script])
    kube.post(f"/apis/apps/v1/namespaces/{namespace}/deployments", body)

    def restarted() -> bool:
        (cs,) = status_of(kube, namespace, "crash")["containerStatuses"]
        return bool(cs["restartCount"] >= 2 and cs["lastState"]["terminated"]["exitCode"] == 3)

    wait_until("two restarts", restarted, timeout=60, diagnose=lambda: str(kubelet.errors))
    (pod,) = pods(kube, namespace, "crash")
    log = kubelet.log(pod["metadata"]["name"])
    # Three starts; the last may not have printed yet.
    assert log.count("--- fake kubelet: start") >= 3 and log.count("up\n") >= 2, log


def test_sigkill_after_the_grace_period(kube: Rest, namespace: str, kubelet: FakeKubelet) -> None:
    script = (
        "import signal, time;"
        " signal.signal(signal.SIGTERM, lambda *a: print('ignored', flush=True));"
        " print('up', flush=True); time.sleep(600)"
    )
    body = deployment("stubborn", [sys.executable, "-c", script])
    body["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 1
    kube.post(f"/apis/apps/v1/namespaces/{namespace}/deployments", body)
    pod = wait_until("the pod", lambda: ready_pod(kube, namespace, "stubborn"), timeout=60)
    assert isinstance(pod, dict)
    name = pod["metadata"]["name"]
    wait_until("the process to start", lambda: "up" in kubelet.log(name), timeout=30)
    kube.delete(f"/api/v1/namespaces/{namespace}/pods/{name}")
    wait_until(
        "the pod to be gone",
        lambda: (
            name in kubelet.terminations
            and all(p["metadata"]["name"] != name for p in pods(kube, namespace, "stubborn"))
        ),
        timeout=30,
    )
    term = kubelet.terminations[name]
    assert term.killed and term.exit_code == -9 and term.grace == 1, term
    assert "ignored" in kubelet.log(name)


def test_config_map_volume_and_env_with_mount_paths_rewritten(
    kube: Rest, namespace: str, kubelet: FakeKubelet
) -> None:
    ns = namespace
    kube.post(
        f"/api/v1/namespaces/{ns}/configmaps",
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "cfg"},
            "data": {"app.yaml": "state_dir: /var/lib/app/state\n", "greeting": "hello"},
        },
    )
    script = (
        "import os, pathlib; cfg = pathlib.Path('/etc/app/app.yaml').read_text();"
        " print('CFG', cfg.strip()); print('GREETING', os.environ['GREETING']);"
        " print('WHERE', os.environ['WHERE'])"
    )
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "cfg"},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": {"app": "cfg"}},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "main",
                            "image": "this-checkout",
                            "command": [sys.executable, "-c", script],
                            "env": [
                                POD_IP_ENV,
                                {"name": "WHERE", "value": "/var/lib/app/x on $(POD_IP)"},
                                {
                                    "name": "GREETING",
                                    "valueFrom": {
                                        "configMapKeyRef": {"name": "cfg", "key": "greeting"}
                                    },
                                },
                            ],
                            "volumeMounts": [
                                {"name": "cfg", "mountPath": "/etc/app"},
                                {"name": "state", "mountPath": "/var/lib/app"},
                            ],
                        }
                    ],
                    "volumes": [
                        {"name": "cfg", "configMap": {"name": "cfg"}},
                        {"name": "state", "emptyDir": {}},
                    ],
                },
            },
        },
    }
    kube.post(f"/apis/batch/v1/namespaces/{ns}/jobs", job)
    wait_until(
        "the job to succeed",
        lambda: status_of(kube, ns, "cfg").get("phase") == "Succeeded",
        timeout=60,
        diagnose=lambda: str(kubelet.errors),
    )
    (pod,) = pods(kube, ns, "cfg")
    out = kubelet.log(pod["metadata"]["name"])
    scratch = kubelet.root / "pods"
    assert "GREETING hello" in out
    assert f"CFG state_dir: {scratch}" in out and "/state\n" in out, out
    ip = pod["status"]["podIP"]
    assert f"WHERE {scratch}" in out and f"/x on {ip}" in out, out


def test_an_evicted_pod_moves_off_a_cordoned_node(
    kube_cluster: Cluster,
    pod_network: PodNetwork,
    kube: Rest,
    namespace: str,
    kubelet: FakeKubelet,
    tmp_path: Path,
) -> None:
    ns = namespace
    cmd = [sys.executable, POD_APP, "--host", "$(POD_IP)", "--port", str(PORT)]
    kube.post(f"/apis/apps/v1/namespaces/{ns}/deployments", deployment("mv", cmd, probe_port=PORT))
    first = wait_until("a Ready pod", lambda: ready_pod(kube, ns, "mv"), timeout=60)
    assert isinstance(first, dict) and first["spec"]["nodeName"] == kubelet.node
    other = FakeKubelet(
        kube_cluster.client(),
        tmp_path / "other",
        network=pod_network,
        node=f"other-{ns}",
        namespaces=[ns],
    ).start()
    try:
        kubelet.set_unschedulable(True)  # kubectl cordon, then drain: evict
        name = first["metadata"]["name"]
        kube.post(
            f"/api/v1/namespaces/{ns}/pods/{name}/eviction",
            {"apiVersion": "policy/v1beta1", "kind": "Eviction", "metadata": {"name": name}},
        )
        moved = wait_until(
            "the replacement on the other node",
            lambda: ready_pod(kube, ns, "mv", not_named=name),
            timeout=60,
            diagnose=lambda: f"{kubelet.errors} {other.errors}",
        )
        assert isinstance(moved, dict) and moved["spec"]["nodeName"] == other.node
        assert kubelet.terminations[name].exit_code == 0
    finally:
        other.stop()
    assert not other.errors
