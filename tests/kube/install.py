"""Dormant installed on the real node as a user installs it: deploy/base rendered as `kubectl
apply -k deploy/base` renders it (tests/kube/kustomize.py), every object created, the two
Secrets the install docs ask for, then the example policy. The activator, the operator and the
model all run as pods from the project's image.

What a real cluster has that the suite's does not is supplied here, and only that:

* a PersistentVolume for each claim (no storage provisioner): a host directory, pre-bound;
* no cluster DNS: the activator's Service gets a fixed ClusterIP, and the activator's and
  operator's pods `hostAliases` entries for the names they use (`kubernetes.default.svc`,
  which kopf connects to, and the operator's `--activator` URL's host);
* the image as the node knows it (`imagePullPolicy: Never`: nothing is pulled);
* the policy's idleAfter shortened so that a test can watch it hibernate.
Everything else (namespaces, RBAC, securityContexts, probes, replicas, the policy's other
settings) is as shipped.
"""

from __future__ import annotations

import contextlib
import copy
import ipaddress
import json
import secrets
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .cluster import wait_until
from .kustomize import render
from .manifests import Manifests
from .realnode import RealNode
from .rest import ApiException, Rest
from .workloads import service_account_ready

__all__ = ["Install", "install"]

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "deploy" / "base"
POLICY = ROOT / "deploy" / "examples" / "ref-policy.yaml"
Doc = dict[str, Any]


@dataclass
class Install:
    """Where the install's parts are and how to reach them."""

    node: RealNode
    policy: Doc
    control_ns: str  # the activator's and the operator's
    model_ns: str  # the model's and its policy's
    activator_ip: str  # the activator Service's ClusterIP

    @property
    def kube(self) -> Rest:
        return self.node.kube

    @property
    def policy_name(self) -> str:
        return str(self.policy["metadata"]["name"])

    @property
    def service(self) -> str:
        return str(self.policy["spec"]["service"]["name"])

    @property
    def target(self) -> str:
        return str(self.policy["spec"]["targetRef"]["name"])

    def service_ip(self) -> str:
        """The model Service's ClusterIP (clients' address)."""
        svc = self.kube.get(f"/api/v1/namespaces/{self.model_ns}/services/{self.service}")
        return str(svc["spec"]["clusterIP"])

    def service_port(self) -> int:
        svc = self.kube.get(f"/api/v1/namespaces/{self.model_ns}/services/{self.service}")
        return int(svc["spec"]["ports"][0]["port"])

    def policy_status(self) -> dict[str, Any]:
        path = (
            f"/apis/dormant.dev/v1alpha1/namespaces/{self.model_ns}"
            f"/scaletozeropolicies/{self.policy_name}"
        )
        return dict(self.kube.get(path).get("status") or {})

    def pods(self, ns: str, name: str) -> list[dict[str, Any]]:
        found = self.kube.get(
            f"/api/v1/namespaces/{ns}/pods", labelSelector=f"app.kubernetes.io/name={name}"
        )
        return list(found["items"])

    def ready_pods(self, ns: str, name: str) -> list[dict[str, Any]]:
        return [
            p
            for p in self.pods(ns, name)
            if not p["metadata"].get("deletionTimestamp")
            and any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in p.get("status", {}).get("conditions") or []
            )
        ]

    def logs(self, ns: str, name: str, container: str, lines: int = 40) -> str:
        """The last `lines` lines each pod printed, less access lines and probes."""
        parts = []
        for pod in self.pods(ns, name):
            text = self.node.container_log(ns, pod["metadata"]["name"], container)
            kept = [
                line
                for line in text.splitlines()
                if "dormant.access" not in line and "kube-probe" not in line
            ]
            tail = "\n".join(kept[-lines:])
            parts.append(f"--- {pod['metadata']['name']} ({container})\n{tail}")
        return "\n".join(parts)

    def diagnose(self) -> str:
        pods = [
            f"{p['metadata']['namespace']}/{p['metadata']['name']}: "
            f"{p.get('status', {}).get('phase')} "
            f"{[(c['type'], c['status']) for c in p.get('status', {}).get('conditions') or []]}"
            for ns in (self.control_ns, self.model_ns)
            for p in self.kube.get(f"/api/v1/namespaces/{ns}/pods")["items"]
        ]
        try:
            status = self.policy_status()
        except ApiException as exc:
            status = {"error": exc.status}
        routes = []
        for path, query in (
            (f"/api/v1/namespaces/{self.model_ns}/endpoints/{self.service}", {}),
            (
                f"/apis/discovery.k8s.io/v1beta1/namespaces/{self.model_ns}/endpointslices",
                {"labelSelector": f"kubernetes.io/service-name={self.service}"},
            ),
        ):
            with contextlib.suppress(ApiException):
                routes.append(json.dumps(self.kube.get(path, **query))[:2000])
        return "\n".join(
            [
                "pods:",
                *pods,
                f"policy status: {status}",
                "the model Service's Endpoints and EndpointSlices:",
                *routes,
                self.logs(self.control_ns, "dormant-activator", "activator"),
                self.logs(self.control_ns, "dormant-operator", "operator"),
                self.logs(self.model_ns, self.target, "model"),
                self.node.log_tails(10),
            ]
        )

    def remove(self) -> None:
        """End it quickly: the Deployments first (nothing recreates a pod), then every pod
        without a grace period (no checkpoint at the end of a test)."""
        for ns in (self.control_ns, self.model_ns):
            for kind in ("deployments", "statefulsets", "replicasets"):
                with contextlib.suppress(ApiException):
                    self.kube.delete(
                        f"/apis/apps/v1/namespaces/{ns}/{kind}", propagationPolicy="Background"
                    )
            for pod in self.kube.get(f"/api/v1/namespaces/{ns}/pods")["items"]:
                with contextlib.suppress(ApiException):
                    self.kube.delete(
                        f"/api/v1/namespaces/{ns}/pods/{pod['metadata']['name']}",
                        gracePeriodSeconds=0,
                    )


def _containers(doc: Doc) -> list[Doc]:
    spec = doc["spec"]["template"]["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def _adapt(docs: list[Doc], node: RealNode, activator_ip: str, states: Path) -> list[Doc]:
    """The rendered install with what the suite's cluster lacks supplied (module docstring)."""
    docs = copy.deepcopy(docs)
    api_ip = str(next(ipaddress.ip_network(node.service_cidr).hosts()))
    volumes: list[Doc] = []
    for doc in docs:
        kind, meta = doc["kind"], doc["metadata"]
        if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            for c in _containers(doc):
                if c["image"].split(":")[0].rsplit("/", 1)[-1] == "dormant":
                    c["image"] = node.images[-1]
                    c["imagePullPolicy"] = "Never"
        if kind == "Service" and meta["name"] == "dormant-activator":
            doc["spec"]["clusterIP"] = activator_ip
        if kind == "Deployment" and meta["name"] in ("dormant-operator", "dormant-activator"):
            # What cluster DNS would answer: the API server's Service name (kopf's in-cluster
            # login uses it) and the activator's (the operator's --activator URL).
            aliases = [{"ip": api_ip, "hostnames": ["kubernetes.default.svc"]}]
            for c in _containers(doc):
                if "--activator" in c["command"]:
                    url = c["command"][c["command"].index("--activator") + 1]
                    host = urllib.parse.urlsplit(url).hostname
                    aliases.append({"ip": activator_ip, "hostnames": [host]})
            doc["spec"]["template"]["spec"]["hostAliases"] = aliases
        if kind == "PersistentVolumeClaim":
            path = states / f"{meta['namespace']}-{meta['name']}"
            path.mkdir(parents=True, exist_ok=True)
            volumes.append(
                {
                    "apiVersion": "v1",
                    "kind": "PersistentVolume",
                    "metadata": {"name": f"{meta['namespace']}-{meta['name']}"},
                    "spec": {
                        "capacity": {"storage": doc["spec"]["resources"]["requests"]["storage"]},
                        "accessModes": doc["spec"]["accessModes"],
                        "persistentVolumeReclaimPolicy": "Retain",
                        "storageClassName": "",
                        "hostPath": {"path": str(path), "type": "Directory"},
                        "claimRef": {"namespace": meta["namespace"], "name": meta["name"]},
                    },
                }
            )
            doc["spec"]["storageClassName"] = ""
    return [*volumes, *docs]


def _secrets(docs: list[Doc], tokens: dict[str, str]) -> list[Doc]:
    """Every Secret the pods mount (the install docs create them by hand): the admin token,
    the model pods' control token; each in each namespace that mounts it."""
    wanted: set[tuple[str, str]] = set()
    for doc in docs:
        if doc["kind"] not in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            continue
        for volume in doc["spec"]["template"]["spec"].get("volumes", []):
            if "secret" in volume:
                wanted.add((doc["metadata"]["namespace"], volume["secret"]["secretName"]))
    return [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": ns},
            "stringData": {"token": tokens.get(name) or secrets.token_hex(32)},
        }
        for ns, name in sorted(wanted)
    ]


def _namespace_of(docs: list[Doc], kind: str, name: str) -> str:
    (doc,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return str(doc["metadata"]["namespace"])


def _wait_for_token(kube: Rest, ns: str, account: str) -> None:
    """Until ServiceAccount `account` has its token (pods using it are refused before)."""
    wait_until(
        f"a token for ServiceAccount {ns}/{account}",
        lambda: service_account_ready(kube, ns, account),
        timeout=60,
    )


def install(node: RealNode, states: Path, idle_after: str = "10s") -> Install:
    """deploy/base and the example policy on the real node; returns once the activators, the
    operator and the model are Ready and the policy routes to the model."""
    kube = node.kube
    m = Manifests(kube)
    rendered = render(BASE)
    activator_ip = f"10.248.{node.index}.250"
    docs = _adapt(rendered, node, activator_ip, states)
    tokens = {"dormant-admin": secrets.token_hex(32), "dormant-exec": secrets.token_hex(32)}
    (policy,) = [d for d in yaml.safe_load_all(POLICY.read_text()) if d]
    policy["spec"]["idleAfter"] = idle_after
    done = Install(
        node=node,
        policy=policy,
        control_ns=_namespace_of(docs, "Deployment", "dormant-activator"),
        model_ns=_namespace_of(docs, "Deployment", str(policy["spec"]["targetRef"]["name"])),
        activator_ip=activator_ip,
    )
    policy["metadata"]["namespace"] = done.model_ns
    first = [d for d in docs if d["kind"] in ("Namespace", "CustomResourceDefinition")]
    for doc in first:
        m.create(doc, exist_ok=True)
    for ns in (done.control_ns, done.model_ns):
        _wait_for_token(kube, ns, "default")
    for doc in _secrets(docs, tokens):
        m.create(doc)
    accounts = [d for d in docs if d["kind"] == "ServiceAccount"]
    for doc in accounts:
        m.create(doc)
    for doc in accounts:
        if doc.get("automountServiceAccountToken") is not False:
            _wait_for_token(kube, doc["metadata"]["namespace"], doc["metadata"]["name"])
    for doc in docs:
        if doc in first or doc in accounts:
            continue
        m.create(doc)
    wait_until(
        "the CRD to serve ScaleToZeroPolicy",
        lambda: m.create(policy, dry_run=True),
        timeout=60,
    )
    m.create(policy)
    wait_until(
        "two activators, an operator leading and the model Ready, the policy routing to it",
        lambda: (
            len(done.ready_pods(done.control_ns, "dormant-activator")) == 2
            and done.ready_pods(done.control_ns, "dormant-operator")
            and done.ready_pods(done.model_ns, done.target)
            and done.policy_status().get("phase") == "Ready"
        ),
        timeout=420,
        interval=1,
        diagnose=done.diagnose,
    )
    return done
