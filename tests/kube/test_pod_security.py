"""deploy/'s pods against the Pod Security level their namespace enforces: the activator and the
operator are `restricted` (dormant-system), the model pods need `privileged` (dormant). The
suite's API server (1.20) has no PodSecurity admission, so the rules are tests/kube/
podsecurity.py's (the Kubernetes "Pod Security Standards" page as data), table-tested here
and shown to fail where they must. Rendered, not applied."""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from .identities import SERVED, SYSTEM
from .kustomize import render, render_kubectl
from .podsecurity import LEVELS, pod_of, violations

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUSTOMIZATIONS = [
    DEPLOY / "base",
    *sorted(p.parent for p in (DEPLOY / "overlays").glob("*/kustomization.yaml")),
]
ENFORCE = "pod-security.kubernetes.io/enforce"
Doc = dict[str, Any]


def namespace_violations(docs: list[Doc]) -> list[str]:
    """Each pod template that breaks the level its namespace enforces (a namespace the docs do
    not create, or one without the label, enforces nothing: `privileged`)."""
    levels = {
        d["metadata"]["name"]: (d["metadata"].get("labels") or {}).get(ENFORCE, "privileged")
        for d in docs
        if d["kind"] == "Namespace"
    }
    out = []
    for doc in docs:
        pod = pod_of(doc)
        if pod is None:
            continue
        namespace = doc["metadata"].get("namespace", "default")
        level = levels.get(namespace, "privileged")
        out += [
            f"{doc['kind']} {namespace}/{doc['metadata']['name']} ({level}): {v}"
            for v in violations(pod, level)
        ]
    return out


def _with_pdb(tmp_path: Path) -> list[Doc]:
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": [os.path.relpath(DEPLOY / "base", tmp_path)],
                "components": [os.path.relpath(DEPLOY / "components" / "activator-pdb", tmp_path)],
            }
        )
    )
    return render_kubectl(tmp_path)


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=[p.name for p in KUSTOMIZATIONS])
def test_every_pod_meets_the_level_its_namespace_enforces(directory: Path) -> None:
    docs = render(directory)
    assert namespace_violations(docs) == []
    namespaces = {
        d["metadata"]["name"]: d["metadata"]["labels"] for d in docs if d["kind"] == "Namespace"
    }
    # The control plane's namespace is restricted in every mode, pinned to a release's rules;
    # the models' stays privileged (and warns at baseline).
    system = namespaces[SYSTEM]
    assert system[ENFORCE] == "restricted"
    assert system[f"{ENFORCE}-version"].startswith("v1.")
    assert system["pod-security.kubernetes.io/audit"] == "restricted"
    assert system["pod-security.kubernetes.io/warn"] == "restricted"
    assert namespaces[SERVED][ENFORCE] == "privileged"
    # ... and the check is not vacuous: both control-plane Deployments are in it.
    restricted = {
        d["metadata"]["name"]
        for d in docs
        if pod_of(d) is not None and d["metadata"]["namespace"] == SYSTEM
    }
    assert restricted == {"dormant-activator", "dormant-operator"}


@pytest.mark.skipif(not shutil.which("kubectl"), reason="kubectl renders kustomize components")
def test_the_pdb_component_stays_in_the_restricted_namespace(tmp_path: Path) -> None:
    docs = _with_pdb(tmp_path)
    (pdb,) = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    assert pdb["metadata"]["namespace"] == SYSTEM
    assert namespace_violations(docs) == []


def test_the_model_pod_would_be_refused_in_the_control_planes_namespace() -> None:
    """The check can fail: the model pod breaks baseline and restricted (CRIU's capabilities,
    seccomp and AppArmor unconfined, root), so moved into dormant-system it is reported."""
    docs = render(DEPLOY / "base")
    (model,) = [
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "ref-model"
    ]
    pod = pod_of(model)
    assert pod is not None
    assert violations(pod, "privileged") == []
    broken = {(v.level, v.control) for v in violations(pod, "restricted")}
    assert broken == {
        ("baseline", "Capabilities"),
        ("baseline", "AppArmor"),
        ("baseline", "Seccomp"),
        ("restricted", "Privilege Escalation"),
        ("restricted", "Running as Non-root"),
        ("restricted", "Running as Non-root user"),
        ("restricted", "Seccomp"),
        ("restricted", "Capabilities"),
    }
    moved = copy.deepcopy(docs)
    for doc in moved:
        if doc["kind"] == "Deployment" and doc["metadata"]["name"] == "ref-model":
            doc["metadata"]["namespace"] = SYSTEM
    found = namespace_violations(moved)
    assert found and all(f.startswith(f"Deployment {SYSTEM}/ref-model (restricted)") for f in found)


# -- the rules themselves -------------------------------------------------------------------

#: A pod that meets `restricted`; each case below changes one thing.
GOOD: Doc = {
    "metadata": {"name": "p"},
    "spec": {
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [
            {
                "name": "c",
                "image": "x",
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "capabilities": {"drop": ["ALL"]},
                },
            }
        ],
        "volumes": [{"name": "v", "emptyDir": {}}],
    },
}


def _pod(change: dict[str, Any]) -> Doc:
    """GOOD with dotted paths set (`c.` = the container's; a None value deletes)."""
    pod = copy.deepcopy(GOOD)
    for path, value in change.items():
        node = pod["spec"]["containers"][0] if path.startswith("c.") else pod
        keys = path.removeprefix("c.").split("/")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        if value is None:
            node.pop(keys[-1], None)
        else:
            node[keys[-1]] = value
    return pod


RULES = [
    # (what, change to GOOD, the lowest level that refuses it, the controls it breaks at
    # restricted; at a lower level that refuses it, some of those)
    ("the restricted pod", {}, "", ""),
    ("hostNetwork", {"spec/hostNetwork": True}, "baseline", "Host Namespaces"),
    ("hostPID", {"spec/hostPID": True}, "baseline", "Host Namespaces"),
    ("privileged", {"c.securityContext/privileged": True}, "baseline", "Privileged Containers"),
    (
        "SYS_ADMIN",
        {"c.securityContext/capabilities/add": ["SYS_ADMIN"]},
        "baseline",
        "Capabilities",
    ),
    (
        "CHOWN added",
        {"c.securityContext/capabilities/add": ["CHOWN"]},
        "restricted",
        "Capabilities",
    ),
    ("NET_BIND_SERVICE", {"c.securityContext/capabilities/add": ["NET_BIND_SERVICE"]}, "", ""),
    ("nothing dropped", {"c.securityContext/capabilities": None}, "restricted", "Capabilities"),
    (
        "a hostPath volume",
        {"spec/volumes": [{"name": "h", "hostPath": {"path": "/"}}]},
        "baseline",
        "HostPath Volumes, Volume Types",
    ),
    (
        "an nfs volume",
        {"spec/volumes": [{"name": "n", "nfs": {"server": "s", "path": "/"}}]},
        "restricted",
        "Volume Types",
    ),
    ("a host port", {"c.ports": [{"containerPort": 80, "hostPort": 80}]}, "baseline", "Host Ports"),
    (
        "AppArmor unconfined",
        {
            "metadata/annotations": {
                "container.apparmor.security.beta.kubernetes.io/c": "unconfined"
            }
        },
        "baseline",
        "AppArmor",
    ),
    (
        "AppArmor runtime/default",
        {
            "metadata/annotations": {
                "container.apparmor.security.beta.kubernetes.io/c": "runtime/default"
            }
        },
        "",
        "",
    ),
    (
        "SELinux spc_t",
        {"c.securityContext/seLinuxOptions": {"type": "spc_t"}},
        "baseline",
        "SELinux",
    ),
    (
        "procMount Unmasked",
        {"c.securityContext/procMount": "Unmasked"},
        "baseline",
        "/proc Mount Type",
    ),
    (
        "seccomp Unconfined",
        {"c.securityContext/seccompProfile": {"type": "Unconfined"}},
        "baseline",
        "Seccomp",
    ),
    ("no seccomp profile", {"spec/securityContext/seccompProfile": None}, "restricted", "Seccomp"),
    (
        "seccomp per container",
        {
            "spec/securityContext/seccompProfile": None,
            "c.securityContext/seccompProfile": {"type": "Localhost", "localhostProfile": "p.json"},
        },
        "",
        "",
    ),
    (
        "an unsafe sysctl",
        {"spec/securityContext/sysctls": [{"name": "kernel.msgmax", "value": "1"}]},
        "baseline",
        "Sysctls",
    ),
    (
        "a safe sysctl",
        {"spec/securityContext/sysctls": [{"name": "net.ipv4.tcp_syncookies", "value": "1"}]},
        "",
        "",
    ),
    (
        "privilege escalation",
        {"c.securityContext/allowPrivilegeEscalation": None},
        "restricted",
        "Privilege Escalation",
    ),
    (
        "root allowed",
        {"spec/securityContext/runAsNonRoot": None},
        "restricted",
        "Running as Non-root",
    ),
    (
        "non-root per container",
        {"spec/securityContext/runAsNonRoot": None, "c.securityContext/runAsNonRoot": True},
        "",
        "",
    ),
    (
        "a container opts out",
        {"c.securityContext/runAsNonRoot": False},
        "restricted",
        "Running as Non-root",
    ),
    ("uid 0", {"c.securityContext/runAsUser": 0}, "restricted", "Running as Non-root user"),
]


@pytest.mark.parametrize(
    ("what", "change", "refused_from", "controls"), RULES, ids=[r[0] for r in RULES]
)
def test_pod_security_rules(
    what: str, change: dict[str, Any], refused_from: str, controls: str
) -> None:
    pod = _pod(change)
    expected = set(controls.split(", ")) if controls else set()
    for level in LEVELS:
        found = {v.control for v in violations(pod, level)}
        if not refused_from or LEVELS.index(level) < LEVELS.index(refused_from):
            assert found == set(), (what, level, found)
        elif level == "restricted":
            assert found == expected, (what, level, found)
        else:
            assert found and found <= expected, (what, level, found)
