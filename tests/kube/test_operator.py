"""`dormant operator` on its own against the real API server and the fake node, acting with
its service account's token under deploy/base/rbac.yaml's Role (so every call it makes is
one the shipped RBAC allows): a deleted policy gives its target back.

No activator runs: the test plays its part where needed (scaling the target to 0, the
Service's route annotations), which is all the operator sees of it.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from . import identities
from .cluster import Cluster, wait_until
from .kubelet import FakeKubelet
from .network import PodNetwork
from .rest import ApiException, Rest
from .test_scale_to_zero import HostProcess, _crd
from .workloads import POD_APP, PORT, deployment, get, pods

pytestmark = pytest.mark.kube

GROUP_PATH = "/apis/dormant.dev/v1alpha1"
Doc = dict[str, Any]


@dataclass
class Setup:
    kube: Rest
    ns: str
    cluster: Cluster
    kubelet: FakeKubelet
    workdir: Path
    kubeconfig: Path
    rbac: list[Doc]

    @property
    def policies(self) -> str:
        return f"{GROUP_PATH}/namespaces/{self.ns}/scaletozeropolicies"

    def operator(self, name: str = "operator", *extra: str) -> HostProcess:
        return HostProcess(
            name,
            [
                "operator",
                "--namespace",
                self.ns,
                "--kubeconfig",
                str(self.kubeconfig),
                "--interval",
                "1",
                *extra,
            ],
            self.workdir / f"{name}.log",
        )

    def endpoints(self, name: str = "app") -> set[str]:
        doc = self.kube.get(f"/api/v1/namespaces/{self.ns}/endpoints/{name}")
        return {
            f"{a['ip']}:{p['port']}"
            for s in doc.get("subsets") or []
            for a in s.get("addresses") or []
            for p in s.get("ports") or []
        }

    def replicas(self) -> int:
        dep = self.kube.get(f"/apis/apps/v1/namespaces/{self.ns}/deployments/app")
        return int(dep["spec"]["replicas"])

    def ready_ips(self) -> set[str]:
        out = set()
        for pod in pods(self.kube, self.ns, "app"):
            conds = {c["type"]: c["status"] for c in pod["status"].get("conditions", [])}
            if conds.get("Ready") == "True" and not pod["metadata"].get("deletionTimestamp"):
                out.add(pod["status"]["podIP"])
        return out


@pytest.fixture
def setup(
    kube_cluster: Cluster,
    pod_network: PodNetwork,
    kube: Rest,
    namespace: str,
    kubelet: FakeKubelet,
    tmp_path: Path,
) -> Iterator[Setup]:
    """The CRD, the base's RBAC in the test's namespace, a 2-replica Deployment of the pod app
    with its selector-less Service (as deploy/base/model.yaml ships it), and a policy."""
    _crd(kube)
    rbac = identities.install(kube, namespace)
    config = identities.kubeconfig_for(
        kube_cluster,
        identities.token(kube, namespace, "dormant-operator"),
        tmp_path / "operator.kubeconfig",
        namespace,
    )
    app = deployment(
        "app", ["python", POD_APP, "--host", "$(POD_IP)", "--port", str(PORT)], probe_port=PORT
    )
    app["spec"]["replicas"] = 2
    kube.post(f"/apis/apps/v1/namespaces/{namespace}/deployments", app)
    kube.post(
        f"/api/v1/namespaces/{namespace}/services",
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "app"},
            "spec": {"ports": [{"name": "http", "port": 80}]},
        },
    )
    kube.post(
        f"{GROUP_PATH}/namespaces/{namespace}/scaletozeropolicies",
        {
            "apiVersion": "dormant.dev/v1alpha1",
            "kind": "ScaleToZeroPolicy",
            "metadata": {"name": "app"},
            "spec": {
                "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "app"},
                "service": {"name": "app", "port": PORT},
                "models": [f"m-{secrets.token_hex(3)}"],
                "checkpoint": {"engine": "restart"},
            },
        },
    )
    try:
        yield Setup(kube, namespace, kube_cluster, kubelet, tmp_path, config, rbac)
    finally:
        identities.uninstall(kube, rbac)


def test_deleting_a_hibernated_policy_gives_the_app_back(setup: Setup) -> None:
    s = setup
    operator = s.operator()

    def until(what: str, check: Any, timeout: float = 90) -> Any:
        def alive_and() -> Any:
            if not operator.alive():
                pytest.fail(f"the operator exited while waiting for {what}\n{operator.log()}")
            return check()

        return wait_until(
            what,
            alive_and,
            timeout=timeout,
            interval=0.3,
            diagnose=lambda: f"{operator.log(60)}\nkubelet errors: {s.kubelet.errors}",
        )

    try:
        policy = until(
            "the operator's finalizer and the target's replicas on the policy",
            lambda: (
                (d := s.kube.get(f"{s.policies}/app"))["metadata"].get("finalizers")
                and d["metadata"].get("annotations", {}).get("dormant.dev/replicas-before")
                and d
            ),
        )
        assert policy["metadata"]["finalizers"] == ["dormant.dev/release"]
        assert policy["metadata"]["annotations"]["dormant.dev/replicas-before"] == "2"
        until("two ready pods", lambda: len(s.ready_ips()) == 2)

        # -- hibernated, as the activator leaves it: 0 replicas, the route at the activator ---
        nowhere = f"{s.cluster.server.split('//')[1].split(':')[0]}:9"  # nothing listens
        s.kube.patch(
            f"/apis/apps/v1/namespaces/{s.ns}/deployments/app/scale", {"spec": {"replicas": 0}}
        )
        s.kube.patch(
            f"/api/v1/namespaces/{s.ns}/services/app",
            {
                "metadata": {
                    "annotations": {
                        "dormant.dev/route": "activator",
                        "dormant.dev/activator": nowhere,
                    }
                }
            },
        )
        until("the Endpoints at the activator", lambda: s.endpoints() == {nowhere})
        until("the pods to be gone", lambda: not pods(s.kube, s.ns, "app"))

        # -- the policy is deleted: the app comes back without anyone's help -----------------
        s.kube.delete(f"{s.policies}/app")

        def gone() -> bool:
            try:
                s.kube.get(f"{s.policies}/app")
            except ApiException as exc:
                return exc.status == 404
            return False

        until("the policy to be gone (its finalizer removed)", gone)
        assert s.replicas() == 2, "the target was not scaled back to its replicas before"
        service = s.kube.get(f"/api/v1/namespaces/{s.ns}/services/app")
        assert service["spec"]["selector"] == {"app": "app"}
        assert [p["targetPort"] for p in service["spec"]["ports"]] == [PORT]
        assert not {
            k for k in service["metadata"].get("annotations") or {} if k.startswith("dormant.dev/")
        }
        # Kubernetes' Endpoints controller routes now: to the ready pods, on the pods' port.
        ready = until(
            "the Endpoints to list both ready pods",
            lambda: (
                (ips := s.ready_ips())
                and len(ips) == 2
                and s.endpoints() == {f"{ip}:{PORT}" for ip in ips}
                and ips
            ),
        )
        for ip in ready:
            assert get(f"http://{ip}:{PORT}/health") == (200, "ok")
        # The operator, still running, leaves the Service and Endpoints to Kubernetes.
        assert operator.alive()
    finally:
        operator.stop()
