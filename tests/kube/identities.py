"""deploy/base/rbac.yaml installed for real in a test namespace, and its service accounts' own
tokens (the TokenRequest API), so that tests act as the activator and the operator with
exactly the rights the manifests grant, through the API server's RBAC authorizer.

`install(kube, namespace)` creates the ServiceAccounts, Roles and RoleBindings in `namespace`
and the cluster-wide grants under names suffixed with the namespace (several tests' installs
coexist); it returns what it created so that `uninstall` can delete the cluster-wide objects
(the namespaced ones go with the namespace).
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

__all__ = ["RBAC_KINDS", "install", "kubeconfig_for", "rest_as", "token", "uninstall"]

ROOT = Path(__file__).resolve().parents[2]
RBAC_KINDS = ("ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding")
Doc = dict[str, Any]


def rbac_docs(namespace: str, directory: Path = ROOT / "deploy" / "base") -> list[Doc]:
    """The RBAC objects of a kustomization, moved from `dormant` to `namespace`."""
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
            meta["namespace"] = namespace
        for subject in doc.get("subjects") or []:
            subject["namespace"] = namespace
        out.append(doc)
    return out


def install(kube: Rest, namespace: str, directory: Path = ROOT / "deploy" / "base") -> list[Doc]:
    m = Manifests(kube)
    docs = rbac_docs(namespace, directory)
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


def rest_as(cluster: Cluster, kube: Rest, namespace: str, account: str, workdir: Path) -> Rest:
    """Plain-JSON access as the service account NAMESPACE/ACCOUNT, once RBAC lets it read
    its own namespace's policies (each binding reaches the authorizer on its own)."""
    config = kubeconfig_for(
        cluster, token(kube, namespace, account), workdir / f"{account}.kubeconfig", namespace
    )
    rest = Rest(k8s_config.new_client_from_config(config_file=str(config)))
    wait_until(
        f"RBAC to let {account} read its namespace's policies",
        lambda: (
            rest.get(f"/apis/dormant.dev/v1alpha1/namespaces/{namespace}/scaletozeropolicies")
            is not None
        ),
        timeout=30,
    )
    return rest
