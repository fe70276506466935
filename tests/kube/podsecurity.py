"""The Pod Security Standards' `baseline` and `restricted` levels as data, and a check of a pod
(or a workload's pod template) against a level: what the PodSecurity admission would refuse.

The suite's API server is 1.20, which has no PodSecurity admission (1.23 on, GA in 1.25), so
deploy/'s pods are checked here instead. Each control below is one row of the tables of
"Pod Security Standards" (https://kubernetes.io/docs/concepts/security/pod-security-standards/),
with the page's name, its restricted fields (paths as the page writes them) and its allowed
values; Linux pods only (the restricted level's Windows exemptions are left out). The levels
are cumulative: `restricted` is every `baseline` control plus its own.

Paths: dotted fields; `[*]` is every item of a list; `[PREFIX*]` every entry of a map whose
key starts with PREFIX. A field that is not there is `None` (the page's "undefined/nil").
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["CONTROLS", "LEVELS", "Control", "Violation", "pod_of", "violations"]

#: The levels from the most to the least permissive.
LEVELS = ("privileged", "baseline", "restricted")

#: Baseline: capabilities that may be added beyond the runtime's default set.
BASELINE_CAPABILITIES = frozenset(
    {
        "AUDIT_WRITE",
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "FSETID",
        "KILL",
        "MKNOD",
        "NET_BIND_SERVICE",
        "SETFCAP",
        "SETGID",
        "SETPCAP",
        "SETUID",
        "SYS_CHROOT",
    }
)
#: Baseline: the "safe" sysctls.
SAFE_SYSCTLS = frozenset(
    {
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
    }
)
#: Baseline: SELinux types a container may ask for.
SELINUX_TYPES = frozenset(
    {"container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
)
#: Restricted: the volume types allowed (every other one, hostPath included, is refused).
RESTRICTED_VOLUMES = frozenset(
    {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }
)
_CONTAINERS = ("containers", "initContainers", "ephemeralContainers")


def _each(field: str) -> tuple[str, ...]:
    """FIELD of every container, init container and ephemeral container."""
    return tuple(f"spec.{kind}[*].{field}" for kind in _CONTAINERS)


def _unset_or(*values: Any) -> Callable[[Any], bool]:
    return lambda v: v is None or v in values


@dataclass(frozen=True)
class Control:
    """One control of the page: its level and name, the fields it restricts and what a field
    may hold. With `pod_default`, a container field that is undefined takes the pod-level
    field's value (runAsNonRoot, seccompProfile: "container fields may be undefined/nil if the
    pod-level field is set")."""

    level: str
    name: str
    fields: tuple[str, ...]
    allowed: Callable[[Any], bool]
    pod_default: str = ""


CONTROLS: tuple[Control, ...] = (
    # -- baseline ----------------------------------------------------------------------------
    Control(
        "baseline",
        "HostProcess",
        (
            "spec.securityContext.windowsOptions.hostProcess",
            *_each("securityContext.windowsOptions.hostProcess"),
        ),
        _unset_or(False),
    ),
    Control(
        "baseline",
        "Host Namespaces",
        ("spec.hostNetwork", "spec.hostPID", "spec.hostIPC"),
        _unset_or(False),
    ),
    Control(
        "baseline", "Privileged Containers", _each("securityContext.privileged"), _unset_or(False)
    ),
    Control(
        "baseline",
        "Capabilities",
        _each("securityContext.capabilities.add[*]"),
        lambda v: v in BASELINE_CAPABILITIES,
    ),
    Control("baseline", "HostPath Volumes", ("spec.volumes[*].hostPath",), _unset_or()),
    Control("baseline", "Host Ports", _each("ports[*].hostPort"), _unset_or(0)),
    Control(
        "baseline",
        "AppArmor",
        (
            "spec.securityContext.appArmorProfile.type",
            *_each("securityContext.appArmorProfile.type"),
            "metadata.annotations[container.apparmor.security.beta.kubernetes.io/*]",
        ),
        lambda v: (
            v is None
            or v in ("RuntimeDefault", "Localhost", "runtime/default")
            or str(v).startswith("localhost/")
        ),
    ),
    Control(
        "baseline",
        "SELinux",
        ("spec.securityContext.seLinuxOptions.type", *_each("securityContext.seLinuxOptions.type")),
        lambda v: v in (None, "") or v in SELINUX_TYPES,
    ),
    Control(
        "baseline",
        "SELinux",
        (
            "spec.securityContext.seLinuxOptions.user",
            *_each("securityContext.seLinuxOptions.user"),
            "spec.securityContext.seLinuxOptions.role",
            *_each("securityContext.seLinuxOptions.role"),
        ),
        lambda v: v in (None, ""),
    ),
    Control(
        "baseline", "/proc Mount Type", _each("securityContext.procMount"), _unset_or("Default")
    ),
    Control(
        "baseline",
        "Seccomp",
        ("spec.securityContext.seccompProfile.type", *_each("securityContext.seccompProfile.type")),
        _unset_or("RuntimeDefault", "Localhost"),
    ),
    Control(
        "baseline",
        "Sysctls",
        ("spec.securityContext.sysctls[*].name",),
        lambda v: v in SAFE_SYSCTLS,
    ),
    # -- restricted --------------------------------------------------------------------------
    Control(
        "restricted",
        "Volume Types",
        ("spec.volumes[*]",),
        lambda v: set(v) - {"name"} <= RESTRICTED_VOLUMES,
    ),
    Control(
        "restricted",
        "Privilege Escalation",
        _each("securityContext.allowPrivilegeEscalation"),
        lambda v: v is False,
    ),
    Control(
        "restricted",
        "Running as Non-root",
        _each("securityContext.runAsNonRoot"),
        lambda v: v is True,
        pod_default="spec.securityContext.runAsNonRoot",
    ),
    Control(
        "restricted",
        "Running as Non-root user",
        ("spec.securityContext.runAsUser", *_each("securityContext.runAsUser")),
        lambda v: v != 0,
    ),
    Control(
        "restricted",
        "Seccomp",
        _each("securityContext.seccompProfile.type"),
        lambda v: v in ("RuntimeDefault", "Localhost"),
        pod_default="spec.securityContext.seccompProfile.type",
    ),
    Control(
        "restricted",
        "Capabilities",
        _each("securityContext.capabilities.drop"),
        lambda v: isinstance(v, list) and "ALL" in v,
    ),
    Control(
        "restricted",
        "Capabilities",
        _each("securityContext.capabilities.add[*]"),
        lambda v: v == "NET_BIND_SERVICE",
    ),
)


@dataclass(frozen=True)
class Violation:
    """A field of a pod outside what a control allows."""

    level: str
    control: str
    field: str
    value: Any

    def __str__(self) -> str:
        return f"{self.level} {self.control}: {self.field} = {self.value!r}"


_TOKEN = re.compile(r"\[[^\]]*\]|[^.\[]+")


def _walk(node: Any, tokens: list[str], where: str) -> Iterator[tuple[str, Any]]:
    """(concrete path, value) for each match of the path; None where a field is missing."""
    if not tokens:
        yield where, node
        return
    head, rest = tokens[0], tokens[1:]
    if head.startswith("["):
        pattern = head[1:-1]
        if pattern == "*":
            for n, item in enumerate(node if isinstance(node, list) else []):
                yield from _walk(item, rest, f"{where}[{n}]")
        else:  # a map's entries by key prefix
            prefix = pattern.removesuffix("*")
            for k, item in (node if isinstance(node, Mapping) else {}).items():
                if str(k).startswith(prefix):
                    yield from _walk(item, rest, f"{where}[{k}]")
        return
    where = f"{where}.{head}".lstrip(".")
    child = node.get(head) if isinstance(node, Mapping) else None
    if child is None and rest:
        if not any(t.startswith("[") for t in rest):  # a missing field: undefined
            yield ".".join([where, *rest]), None
        return  # a missing list or map: no items
    yield from _walk(child, rest, where)


def _values(pod: Mapping[str, Any], path: str) -> Iterator[tuple[str, Any]]:
    return _walk(pod, _TOKEN.findall(path), "")


def violations(pod: Mapping[str, Any], level: str) -> list[Violation]:
    """What a pod ({metadata, spec}) breaks of LEVEL (and of the levels below it)."""
    applies = LEVELS[1 : LEVELS.index(level) + 1]
    out = []
    for control in CONTROLS:
        if control.level not in applies:
            continue
        default = (
            next(_values(pod, control.pod_default), ("", None))[1] if control.pod_default else None
        )
        for path in control.fields:
            for where, value in _values(pod, path):
                if value is None and control.pod_default:
                    value = default
                if not control.allowed(value):
                    out.append(Violation(control.level, control.name, where, value))
    return out


#: The kinds whose pods come from a template, and where the template is.
_TEMPLATES = {
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}


def pod_of(doc: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The pod a manifest makes (a Pod's self, a workload's template); None for other kinds."""
    if doc.get("kind") == "Pod":
        return doc
    if doc.get("kind") not in _TEMPLATES:
        return None
    node: Any = doc
    for key in _TEMPLATES[str(doc["kind"])]:
        node = node.get(key) or {}
    return dict(node)
