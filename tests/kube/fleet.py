"""The model of deploy/base/model.yaml and its policy in a test's namespace, and any number of
activators (`dormant up`, runtime kubernetes) and operators as host processes: the pieces the
availability tests (two activators, outages, drains) put together their own way. Built on
test_scale_to_zero's helpers; a kubeconfig can be rewritten to reach the API server through a
proxy (tests/kube/apiproxy.py)."""

from __future__ import annotations

import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from .cluster import Cluster, free_port, wait_until
from .kubelet import FakeKubelet
from .manifests import Manifests
from .network import PodNetwork
from .rest import Rest
from .test_scale_to_zero import (
    MODEL,
    MODEL_PODS,
    PROMPT,
    HostProcess,
    _crd,
    _model_objects,
    _policy,
)
from .workloads import endpoint_addresses, pods, replicas

__all__ = ["MODEL", "MODEL_PODS", "PROMPT", "Fleet", "PhaseLog"]


@dataclass
class Fleet:
    kube: Rest
    ns: str
    kubelet: FakeKubelet
    cluster: Cluster
    network: PodNetwork
    tmp: Path
    exec_token: str = field(default_factory=lambda: secrets.token_hex(16))
    admin_token: str = field(default_factory=lambda: secrets.token_hex(16))
    procs: list[HostProcess] = field(default_factory=list)

    @property
    def policies(self) -> str:
        return f"/apis/dormant.dev/v1alpha1/namespaces/{self.ns}/scaletozeropolicies"

    def install(self, **policy: Any) -> None:
        """The CRD, the exec token Secret, the model objects and the policy `ref`."""
        _crd(self.kube)
        self.kube.post(
            f"/api/v1/namespaces/{self.ns}/secrets",
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "dormant-exec"},
                "stringData": {"token": self.exec_token},
            },
        )
        for doc in _model_objects(self.ns):
            Manifests(self.kube).create(doc)
        spec = {
            "idleAfter": 0,
            "startTimeout": "5m",
            "restoreTimeout": "3m",
            "wakeTimeout": "5m",
            "drainTimeout": "1s",
        }
        self.kube.post(self.policies, _policy(self.ns, **(spec | policy)))
        (self.tmp / "exec-token").write_text(self.exec_token)
        (self.tmp / "admin-token").write_text(self.admin_token)

    def kubeconfig(self, server: str | None = None) -> Path:
        """The cluster's kubeconfig, or a copy that reaches the API server at ``server``."""
        if server is None:
            return self.cluster.kubeconfig
        text = re.sub(
            r'server: "[^"]*"', f'server: "{server}"', self.cluster.kubeconfig.read_text()
        )
        path = self.tmp / f"kubeconfig-{secrets.token_hex(3)}"
        path.write_text(text)
        path.chmod(0o600)
        return path

    def activator(
        self, name: str, *, kubeconfig: Path | None = None, **kubernetes: Any
    ) -> tuple[HostProcess, str]:
        port = free_port(self.network.gateway)
        address = f"{self.network.gateway}:{port}"
        config = {
            "listen": address,
            "state_dir": str(self.tmp / name),
            "engine": "restart",
            "admin_token": self.admin_token,
            "reap_interval": 0.5,
            "log_level": "info",
            "runtime": "kubernetes",
            "kubernetes": {
                "namespace": self.ns,
                "kubeconfig": str(kubeconfig or self.cluster.kubeconfig),
                "advertise": address,
                "control_token_file": str(self.tmp / "exec-token"),
                "poll_interval": 0.2,
                "route_timeout": "60s",
                **kubernetes,
            },
        }
        (self.tmp / f"{name}.yaml").write_text(yaml.safe_dump(config))
        proc = HostProcess(
            name, ["up", "-c", str(self.tmp / f"{name}.yaml")], self.tmp / f"{name}.log"
        )
        self.procs.append(proc)
        return proc, f"http://{address}"

    def operator(self, activator_url: str) -> HostProcess:
        proc = HostProcess(
            "operator",
            [
                "operator",
                "--namespace",
                self.ns,
                "--activator",
                activator_url,
                "--admin-token-file",
                str(self.tmp / "admin-token"),
                "--kubeconfig",
                str(self.cluster.kubeconfig),
                "--interval",
                "1",
            ],
            self.tmp / "operator.log",
        )
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()

    # -- looking -------------------------------------------------------------------------------
    def diagnose(self) -> str:
        return "\n".join(
            [
                f"kubelet errors: {self.kubelet.errors}",
                *(p.log(50) for p in self.procs),
                *(
                    f"--- pod {n}\n{self.kubelet.log(n)[-2500:]}"
                    for n in (p["metadata"]["name"] for p in pods(self.kube, self.ns, MODEL_PODS))
                ),
            ]
        )

    def until(self, what: str, check: Any, timeout: float = 120) -> Any:
        return wait_until(what, check, timeout=timeout, interval=0.3, diagnose=self.diagnose)

    def status(self, name: str = "ref") -> dict[str, Any]:
        return dict(self.kube.get(f"{self.policies}/{name}").get("status") or {})

    def replicas(self) -> int:
        return replicas(self.kube, self.ns, "ref-model")

    def endpoints(self) -> set[str]:
        return endpoint_addresses(self.kube, self.ns, "ref-model")

    def workload(self, url: str) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self.admin_token}"}
        answer = httpx.get(f"{url}/-/workloads/ref", headers=headers, timeout=30)
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    def lease_holder(self) -> str:
        path = f"/apis/coordination.k8s.io/v1/namespaces/{self.ns}/leases/dormant-policy-ref"
        try:
            return str(self.kube.get(path)["spec"].get("holderIdentity") or "")
        except Exception:
            return ""

    def complete(self, base: str, prompt: str = PROMPT, timeout: float = 300) -> httpx.Response:
        body = {"model": MODEL, "prompt": prompt, "max_tokens": 4}
        return httpx.post(f"{base}/v1/completions", json=body, timeout=timeout)

    def committed(self) -> int:
        """Snapshots committed by the model's supervisors, over all its pods so far."""
        names = set(self.kubelet.terminations) | {
            p["metadata"]["name"] for p in pods(self.kube, self.ns, MODEL_PODS)
        }
        return sum(
            len(re.findall(r"snapshot \S+ committed \(", self.kubelet.log(n)))
            for n in names
            if n.startswith("ref-model")
        )


class PhaseLog:
    """The policy's status.phase, sampled in a thread until ``stop()``."""

    def __init__(self, fleet: Fleet, interval: float = 0.3) -> None:
        self.seen: list[str] = []
        self._stop = threading.Event()

        def sample() -> None:
            while not self._stop.is_set():
                try:
                    phase = str(fleet.status().get("phase") or "")
                except Exception:
                    phase = ""
                if phase and (not self.seen or self.seen[-1] != phase):
                    self.seen.append(phase)
                self._stop.wait(interval)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()

    def stop(self) -> list[str]:
        self._stop.set()
        self._thread.join(5)
        return self.seen


def elapsed(since: float) -> float:
    return round(time.monotonic() - since, 2)
