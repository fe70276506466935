"""deploy/base/rbac.yaml installed for real in a test namespace, and its service accounts' own
tokens (the TokenRequest API), so that tests act as the activator and the operator with
exactly the rights the manifests grant, through the API server's RBAC authorizer.

The base has two namespaces: `dormant`, the served one (the policies, the Roles, the model's
ServiceAccount), and `dormant-system`, the control plane's (the activator's and the operator's
ServiceAccounts). `install(kube, namespace, system=SYSTEM)` puts them in a test's
`namespace` and `system` (one namespace for both when `system` is not given, as tests that
only need the rights do); the cluster-wide grants get names suffixed with `namespace` (several
tests' installs coexist). It returns what it created so that `uninstall` can delete the
cluster-wide objects (the namespaced ones go with their namespaces).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from kubernetes import config as k8s_config

from .cluster import Cluster, wait_until
from .kustomize import render
from .manifests import Manifests
from .rest import Rest

__all__ = [
    "RBAC_KINDS",
    "SERVED",
    "SYSTEM",
    "install",
    "kubeconfig_for",
    "rest_as",
    "token",
    "uninstall",
]

ROOT = Path(__file__).resolve().parents[2]
#: The base's namespaces: the one it serves and the control plane's.
SERVED, SYSTEM = "dormant", "dormant-system"
RBAC_KINDS = ("ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding")
Doc = dict[str, Any]


def rbac_docs(
    namespace: str, directory: Path = ROOT / "deploy" / "base", system: str = ""
) -> list[Doc]:
    """The RBAC objects of a kustomization, moved from `dormant` to `namespace` and from
    `dormant-system` to `system` (to `namespace` as well when `system` is empty)."""
    moved = {SERVED: namespace, SYSTEM: system or namespace}
    out = []
    for doc in render(directory):
        if doc["kind"] not in RBAC_KINDS:
            continue
        doc = copy.deepcopy(doc)
        meta = doc["metadata"]
        if doc["kind"].startswith("Cluster"):
            meta["name"] = f"{meta['name']}-{namespace}"
            if doc["kind"] == "ClusterRoleBinding":
                doc["roleRef"]["name"] = f"{doc['roleRef']['name']}-{namespace}"
        else:
            meta["namespace"] = moved[meta["namespace"]]
        for subject in doc.get("subjects") or []:
            subject["namespace"] = moved[subject["namespace"]]
        out.append(doc)
    return out


def install(
    kube: Rest, namespace: str, directory: Path = ROOT / "deploy" / "base", system: str = ""
) -> list[Doc]:
    m = Manifests(kube)
    docs = rbac_docs(namespace, directory, system)
    for doc in docs:
        if doc["kind"].startswith("Cluster"):
            m.delete(doc)  # a previous run's, with older rules
        m.create(doc, exist_ok=True)
    return docs


def uninstall(kube: Rest, docs: list[Doc]) -> None:
    m = Manifests(kube)
    for doc in docs:
        if doc["kind"].startswith("Cluster"):
            m.delete(doc)


def token(kube: Rest, namespace: str, account: str, seconds: int = 3600) -> str:
    """A token for NAMESPACE/ACCOUNT from the TokenRequest API (what a projected volume gets)."""
    answer = kube.post(
        f"/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token",
        {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": seconds},
        },
    )
    return str(answer["status"]["token"])


def kubeconfig_for(cluster: Cluster, bearer: str, path: Path, namespace: str) -> Path:
    """A kubeconfig that authenticates with `bearer` only (no admin fallback)."""
    path.write_text(
        f"""apiVersion: v1
kind: Config
clusters:
- name: test
  cluster: {{server: "{cluster.server}", certificate-authority: "{cluster.ca_file}"}}
users:
- name: sa
  user: {{token: "{bearer}"}}
contexts:
- name: test
  context: {{cluster: test, user: sa, namespace: {namespace}}}
current-context: test
"""
    )
    path.chmod(0o600)
    return path


def rest_as(
    cluster: Cluster, kube: Rest, namespace: str, account: str, workdir: Path, served: str = ""
) -> Rest:
    """Plain-JSON access as the service account NAMESPACE/ACCOUNT, once RBAC lets it read the
    policies of `served` (default: its own namespace; each binding reaches the authorizer on
    its own)."""
    served = served or namespace
    config = kubeconfig_for(
        cluster, token(kube, namespace, account), workdir / f"{account}.kubeconfig", namespace
    )
    rest = Rest(k8s_config.new_client_from_config(config_file=str(config)))
    wait_until(
        f"RBAC to let {account} read the policies of {served}",
        lambda: (
            rest.get(f"/apis/dormant.dev/v1alpha1/namespaces/{served}/scaletozeropolicies")
            is not None
        ),
        timeout=30,
    )
    return rest
