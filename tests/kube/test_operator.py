"""`dormant operator` on its own against the real API server and the fake node, acting with
its service account's token under deploy/base/rbac.yaml's Role (so every call it makes is
one the shipped RBAC allows): a deleted policy gives its target back. As deploy/base ships it,
its service account lives in a namespace of its own (dormant-system's part) and the Role in
the namespace it serves (dormant's).

No activator runs: the test plays its part where needed (scaling the target to 0, the
Service's route annotations), which is all the operator sees of it.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from . import identities
from .cluster import Cluster, free_port, wait_until
from .kubelet import FakeKubelet
from .network import PodNetwork
from .rest import ApiException, Rest
from .test_scale_to_zero import HostProcess, _crd
from .workloads import POD_APP, PORT, deployment, endpoint_addresses, get, pods, replicas

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
        return endpoint_addresses(self.kube, self.ns, name)

    def replicas(self) -> int:
        return replicas(self.kube, self.ns, "app")

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
    """The CRD, the base's RBAC (its Roles in the test's namespace, the operator's service
    account in a second one), a 2-replica Deployment of the pod app with its selector-less
    Service (as deploy/base/model.yaml ships it), and a policy."""
    _crd(kube)
    system = f"{namespace}-sys"
    kube.post(
        "/api/v1/namespaces",
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": system}},
    )
    rbac = identities.install(kube, namespace, system=system)
    config = identities.kubeconfig_for(
        kube_cluster,
        identities.token(kube, system, "dormant-operator"),
        tmp_path / "operator.kubeconfig",
        system,  # its own namespace, as in the pod: the policies' comes from --namespace
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
        with contextlib.suppress(ApiException):
            kube.delete(f"/api/v1/namespaces/{system}")


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


def _health(port: int) -> tuple[int, str]:
    try:
        return get(f"http://127.0.0.1:{port}/healthz")
    except OSError as exc:
        return 0, str(exc)


def test_two_operators_one_leads_and_the_other_takes_over_when_it_is_killed(
    setup: Setup,
) -> None:
    """Issue 17: the operator was a single point of failure. Two replicas: one holds the Lease
    and writes Endpoints, the other stands by (alive and ready for its probes) and writes
    nothing; the leader is SIGKILLed (no clean release); the other takes the Lease and keeps
    the Endpoints following the route within the Lease's duration plus a retry."""
    s = setup
    lease_path = f"/apis/coordination.k8s.io/v1/namespaces/{s.ns}/leases/dormant-operator"
    gateway = s.cluster.server.split("//")[1].rsplit(":", 1)[0]
    duration = 6
    ports = free_port(), free_port()

    def start(name: str, port: int) -> HostProcess:
        return s.operator(
            f"operator-{name}",
            "--identity",
            name,
            "--lease-duration",
            str(duration),
            "--health-listen",
            f"127.0.0.1:{port}",
        )

    def holder() -> str:
        return str(s.kube.get(lease_path)["spec"].get("holderIdentity") or "")

    def route_to(address: str) -> None:
        s.kube.patch(
            f"/api/v1/namespaces/{s.ns}/services/app",
            {
                "metadata": {
                    "annotations": {
                        "dormant.dev/route": "activator",
                        "dormant.dev/activator": address,
                    }
                }
            },
        )

    a = start("a", ports[0])
    b: HostProcess | None = None
    c: HostProcess | None = None
    d: HostProcess | None = None
    try:
        diagnose = lambda: "\n".join(p.log(40) for p in (a, b, c) if p is not None)  # noqa: E731
        wait_until("a to lead", lambda: holder() == "a", timeout=60, diagnose=diagnose)
        b = start("b", ports[1])
        wait_until(
            "b to stand by, answering its probes",
            lambda: _health(ports[1])[0] == 200 and "standing by" in b.log_path.read_text(),
            timeout=60,
            diagnose=diagnose,
        )
        assert "standby" in _health(ports[1])[1]
        wait_until("a's kopf liveness endpoint", lambda: _health(ports[0])[0] == 200, 30)
        first = f"{gateway}:9"
        route_to(first)
        wait_until("a to route", lambda: s.endpoints() == {first}, timeout=60, diagnose=diagnose)
        assert holder() == "a"
        assert "Routed" not in b.log_path.read_text(), "the replica standing by wrote Endpoints"

        a.proc.kill()  # no release: b must wait for the Lease to expire
        a.proc.wait(10)
        killed = time.monotonic()
        second = f"{gateway}:10"
        route_to(second)
        wait_until(
            "b to take over and route",
            lambda: s.endpoints() == {second},
            timeout=duration * 5,
            diagnose=diagnose,
        )
        took = time.monotonic() - killed
        assert holder() == "b"
        # Bounded: the Lease's duration, a retry (duration / 6) and one reconcile (kopf's
        # start included) on a loaded machine.
        assert took < duration + 15, f"took over after {took:.1f} s"
        wait_until(
            "b's kopf liveness endpoint",
            lambda: (
                _health(ports[1]) == (200, "{}")
                or (_health(ports[1])[0] == 200 and "standby" not in _health(ports[1])[1])
            ),
            30,
        )
        print(f"takeover after SIGKILL of the leader: {took:.1f} s (lease {duration} s)")

        # -- a clean shutdown (a rollout, a drain) releases the Lease: no wait for expiry ---
        c = start("c", free_port())
        wait_until("c to stand by", lambda: "standing by" in c.log_path.read_text(), 60)
        b.stop()  # SIGTERM: kopf stops, the Lease is released
        assert b.proc.returncode == 0, b.log(40)
        stopped = time.monotonic()
        third = f"{gateway}:11"
        route_to(third)
        wait_until(
            "c to take over and route",
            lambda: s.endpoints() == {third},
            timeout=duration * 5,
            diagnose=lambda: c.log(40),
        )
        handover = time.monotonic() - stopped
        assert holder() == "c"
        # The Lease was released: c took it at its next retry (duration / 6), not after the
        # Lease's duration (plus kopf's start and one reconcile).
        assert "released Lease" in b.log_path.read_text()
        print(f"handover after SIGTERM of the leader: {handover:.1f} s")
        # A replica standing by stops cleanly on SIGTERM too.
        d = start("d", free_port())
        wait_until("d to stand by", lambda: "standing by" in d.log_path.read_text(), 60)
        d.stop()
        assert d.proc.returncode == 0 and "stopped while standing by" in d.log(20), d.log(20)
        assert holder() == "c"
    finally:
        for proc in (a, b, c, d):
            if proc is not None:
                proc.stop()


def test_a_policy_in_a_namespace_no_install_serves_says_so(setup: Setup) -> None:
    """Issue 17: a policy in another namespace was silently ignored. The operator (with the
    base's RBAC: namespaced Roles plus the one grant on the CRD) marks it Degraded."""
    s = setup
    elsewhere = f"{s.ns[:40]}-x"
    s.kube.post(
        "/api/v1/namespaces",
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": elsewhere}},
    )
    operator = s.operator()
    try:
        s.kube.post(
            f"{GROUP_PATH}/namespaces/{elsewhere}/scaletozeropolicies",
            {
                "apiVersion": "dormant.dev/v1alpha1",
                "kind": "ScaleToZeroPolicy",
                "metadata": {"name": "lost"},
                "spec": {
                    "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "x"},
                    "service": {"name": "x", "port": 8000},
                    "models": ["x"],
                    "checkpoint": {"engine": "restart"},
                },
            },
        )
        path = f"{GROUP_PATH}/namespaces/{elsewhere}/scaletozeropolicies/lost"
        status = wait_until(
            "the unserved policy's status",
            lambda: s.kube.get(path).get("status"),
            timeout=90,
            diagnose=lambda: operator.log(40),
        )
        assert status["phase"] == "Degraded", status
        assert f"no Dormant install serves namespace {elsewhere}" in status["message"]
        assert f"the one in namespace {s.ns}" in status["message"]
        assert status["conditions"][0]["reason"] == "NamespaceNotServed"
        assert f"policy {elsewhere}/lost: no Dormant install" in operator.log_path.read_text()
        # The policy it serves is its own business: not marked (its reconcile may come after
        # the mark on a loaded machine: wait for its status).
        ours = wait_until(
            "the served policy's status",
            lambda: s.kube.get(f"{s.policies}/app").get("status"),
            timeout=90,
            diagnose=lambda: operator.log(40),
        )
        assert ours.get("phase") != "Degraded", ours
    finally:
        operator.stop()
        s.kube.delete(f"/api/v1/namespaces/{elsewhere}")
