"""What the cluster should look like for one ScaleToZeroPolicy: a pure function of what the
operator observed (no clock, no I/O), so every rule is a row in a table test.

``plan(observed) -> Plan``: the selector-less Service to create when it is missing, the
Endpoints to write when they differ, the policy's status, and the Events to post.

**The Endpoints rule** (the operator is their only writer): the target's ready pods (Running,
with an IP, Ready, not terminating) that the activator itself probed (``dormant.dev/pod-ips``)
while the Service's ``dormant.dev/route`` annotation says ``pods``; in every other case —
route ``activator``, no annotation yet, or no such pod (evicted, crashed, terminating, or a
replacement the activator has not probed yet) — the activator's address from
``dormant.dev/activator``.
The activator's Kubernetes runtime sets the annotation and waits for the Endpoints to
follow, so its lifecycle keeps one owner and the Endpoints one writer.

**The status** comes from the activator's view of the workload (``GET /-/workloads/NAME``),
or, for a Job, from its pods; a policy that cannot be served (its spec, a model another
policy has, a Service with a selector, a missing target) is Degraded with a one-line message.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from activator.config.policy import Policy
from warmpool.kube.pods import (
    ACTIVATOR_ANNOTATION,
    ROUTE_ANNOTATION,
    ROUTE_PODS,
    ROUTED_IPS_ANNOTATION,
    pod_ready,
)
from warmpool.kube.resource import API_VERSION, KIND

__all__ = ["POLICY_LABEL", "Event", "Observed", "Plan", "phase_of", "plan", "template_problems"]

POLICY_LABEL = "dormant.dev/policy"
"""On the Service and Endpoints the operator creates: the policy they belong to."""

_PHASES = {
    "ready": "Ready",
    "starting": "Waking",
    "restoring": "Waking",
    "resuming": "Waking",
    "draining": "Hibernating",
    "checkpointing": "Hibernating",
    "suspending": "Hibernating",
    "hibernated": "Hibernated",
    "cold": "Hibernated",
    "suspended": "Suspended",
    "failed": "Failed",
}
_WAKE_REASONS = {"restore": "Restored", "boot": "Booted", "resume": "Resumed"}

Doc = Mapping[str, Any]


@dataclass(frozen=True)
class Event:
    type: str  # Normal or Warning
    reason: str
    message: str


@dataclass(frozen=True)
class Observed:
    """Everything the plan needs, read by the operator."""

    policy: Doc
    """The ScaleToZeroPolicy object (metadata, spec, status)."""
    parsed: Policy | None
    problem: str = ""
    """Why it cannot be served (parse error, a clash), or ''."""
    target: Doc | None = None
    service: Doc | None = None
    endpoints: Doc | None = None
    pods: Sequence[Doc] = ()
    """The target's pods (by its selector)."""
    activator: Doc | None = None
    """``GET /-/workloads/NAME`` on the activator; None when it did not answer it."""
    activator_problem: str = ""
    """Why there is no answer ('' when there is one)."""
    now: str = ""
    """RFC 3339, for conditions that change."""
    seen_checkpoint_failures: int | None = None
    """The activator's checkpoint_failures counter when the operator last looked (None: never);
    a higher one now is a CheckpointFailed Event."""


@dataclass(frozen=True)
class Plan:
    service: dict[str, Any] | None = None
    """A Service to create (it is missing)."""
    endpoints: dict[str, Any] | None = None
    """The Endpoints object to write (they differ), or None."""
    status: dict[str, Any] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)


def phase_of(state: str) -> str:
    """The policy's phase for an activator state."""
    return _PHASES.get(state, "Pending")


def _owner(policy: Doc) -> dict[str, Any]:
    meta = policy["metadata"]
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": meta["name"],
        "uid": meta.get("uid", ""),
        "controller": True,
        "blockOwnerDeletion": False,
    }


def _new_service(o: Observed, p: Policy) -> dict[str, Any]:
    assert p.service is not None
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": p.service.name,
            "namespace": p.namespace,
            "labels": {POLICY_LABEL: p.name},
            "ownerReferences": [_owner(o.policy)],
        },
        "spec": {"ports": [{"name": "http", "port": p.service.port, "protocol": "TCP"}]},
    }


def _ports(service: Doc, port: int) -> list[dict[str, Any]]:
    """One Endpoints port per Service port (same names, so Services map them), at ``port``."""
    out = []
    for sp in (service.get("spec") or {}).get("ports") or [{}]:
        entry: dict[str, Any] = {"port": port, "protocol": sp.get("protocol", "TCP")}
        if sp.get("name"):
            entry["name"] = sp["name"]
        out.append(entry)
    return out


def _address(value: str) -> tuple[str, int] | None:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def _subsets(o: Observed, p: Policy, service: Doc) -> tuple[list[dict[str, Any]], str]:
    """The Endpoints' subsets by the one rule, and where they point (pods / activator)."""
    assert p.service is not None
    annotations = (service.get("metadata") or {}).get("annotations") or {}
    probed = {ip for ip in str(annotations.get(ROUTED_IPS_ANNOTATION, "")).split(",") if ip}
    ready = sorted(
        (pod for pod in o.pods if pod_ready(pod) and pod["status"]["podIP"] in probed),
        key=lambda d: d["status"]["podIP"],
    )
    if annotations.get(ROUTE_ANNOTATION) == ROUTE_PODS and ready:
        addresses = [
            {
                "ip": pod["status"]["podIP"],
                "nodeName": pod["spec"].get("nodeName"),
                "targetRef": {
                    "kind": "Pod",
                    "name": pod["metadata"]["name"],
                    "namespace": pod["metadata"].get("namespace", p.namespace),
                    "uid": pod["metadata"].get("uid", ""),
                },
            }
            for pod in ready
        ]
        for a in addresses:
            if not a["nodeName"]:
                del a["nodeName"]
        return [{"addresses": addresses, "ports": _ports(service, p.service.port)}], "pods"
    activator = _address(str(annotations.get(ACTIVATOR_ANNOTATION, "")))
    if activator is None:
        return [], "activator"
    ip, port = activator
    return [{"addresses": [{"ip": ip}], "ports": _ports(service, port)}], "activator"


def _same_subsets(current: Doc | None, desired: list[dict[str, Any]]) -> bool:
    def norm(subsets: Any) -> list[tuple[Any, ...]]:
        out = []
        for s in subsets or []:
            ips = tuple(sorted(a.get("ip", "") for a in s.get("addresses") or []))
            ports = tuple(
                sorted(
                    (q.get("name", ""), q.get("port"), q.get("protocol", "TCP"))
                    for q in s.get("ports") or []
                )
            )
            out.append((ips, ports, bool(s.get("notReadyAddresses"))))
        return sorted(out)

    return current is not None and norm(current.get("subsets")) == norm(desired)


def _endpoints(o: Observed, p: Policy, subsets: list[dict[str, Any]]) -> dict[str, Any]:
    assert p.service is not None
    return {
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {
            "name": p.service.name,
            "namespace": p.namespace,
            "labels": {POLICY_LABEL: p.name},
        },
        "subsets": subsets,
    }


def template_problems(p: Policy, target: Doc) -> list[str]:
    """What the target's pod template says against the policy (the claim, the supervisor's
    --keep, --on-term and --done-on-exit: a Job's pods need it, so that a command that
    completes ends the Job; any other kind's must not have it, since a server exiting there is
    never "the work is done" and would remove every snapshot)."""
    spec = ((target.get("spec") or {}).get("template") or {}).get("spec") or {}
    problems = []
    if p.checkpoint.engine != "restart":
        claims = {
            (v.get("persistentVolumeClaim") or {}).get("claimName")
            for v in spec.get("volumes") or []
        }
        if p.checkpoint.volume_claim not in claims:
            problems.append(
                f"the pods of {p.target.kind} {p.target.name} do not mount claim "
                f"{p.checkpoint.volume_claim!r} (spec.checkpoint.volumeClaimName): their "
                "snapshots would not outlive them"
            )
    for container in (spec.get("containers") or [])[:1]:
        argv = [*container.get("command", []), *container.get("args", [])]
        if "exec" not in argv[:3]:
            problems.append(
                f"the pods of {p.target.kind} {p.target.name} do not run `dormant exec` "
                f"(command {shlex.join(argv[:4])!r}...): nothing checkpoints them"
            )
            continue
        own = argv[: argv.index("--")] if "--" in argv else argv
        keep = _flag(own, "--keep", "1")
        if keep != str(p.checkpoint.keep):
            problems.append(
                f"spec.checkpoint.keep is {p.checkpoint.keep} but the pods run dormant exec "
                f"--keep {keep}"
            )
        on_term = _flag(own, "--on-term", "checkpoint")
        wanted = "checkpoint" if p.on_eviction == "checkpoint" else "stop"
        if on_term != wanted:
            problems.append(
                f"spec.onEviction is {p.on_eviction} but the pods run dormant exec "
                f"--on-term {on_term} (use --on-term {wanted})"
            )
        done = "--done-on-exit" in own or _env_true(container, _DONE_ENV)
        if p.target.kind == "Job" and not done:
            problems.append(
                f"the pods of Job {p.target.name} run dormant exec without --done-on-exit: "
                "when its command completes, exec exits 4 (a failed pod: the Job runs it again "
                "from the last snapshot) instead of succeeding; add --done-on-exit"
            )
        elif p.target.kind != "Job" and done:
            problems.append(
                f"the pods of {p.target.kind} {p.target.name} run dormant exec with "
                "--done-on-exit: a server that exits 0 (a stray SIGTERM) would remove every "
                "snapshot; it is for Jobs only (remove it)"
            )
    return problems


_DONE_ENV = "DORMANT_EXEC_DONE_ON_EXIT"  # activator.supervisor.options.DONE_ENV


def _env_true(container: Doc, name: str) -> bool:
    for item in container.get("env") or []:
        if item.get("name") == name:
            return str(item.get("value", "")).strip().lower() in ("1", "true", "yes", "on")
    return False


def _flag(argv: list[str], name: str, default: str) -> str:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return str(argv[i + 1])
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
    return default


def _job_phase(target: Doc, pods: Sequence[Doc]) -> tuple[str, str]:
    status = target.get("status") or {}
    if status.get("succeeded"):
        return "Completed", "the Job succeeded"
    live = [pod for pod in pods if not pod["metadata"].get("deletionTimestamp")]
    if any(pod_ready(pod) for pod in live):
        return "Ready", "its pod runs"
    if live:
        return "Waking", "its pod is starting (restoring from the claim if it holds a snapshot)"
    if pods:
        return "Hibernating", "its pod is terminating (checkpointing on eviction)"
    return "Pending", "no pod"


def _conditions(
    previous: Sequence[Doc], wanted: dict[str, tuple[bool, str, str]], now: str
) -> list[dict[str, Any]]:
    old = {c.get("type"): c for c in previous or []}
    out = []
    for kind, (value, reason, message) in wanted.items():
        status = "True" if value else "False"
        before = old.get(kind) or {}
        since = before.get("lastTransitionTime") if before.get("status") == status else None
        condition = {"type": kind, "status": status, "reason": reason}
        if message:  # never "": kube-apiserver 1.20 reads an empty string in a patch as null
            condition["message"] = message[:1000]
        out.append({**condition, "lastTransitionTime": since or now})
    return out


def plan(o: Observed) -> Plan:
    """The plan for one policy (see the module docstring)."""
    meta = o.policy.get("metadata") or {}
    previous: Doc = o.policy.get("status") or {}
    p = o.parsed
    blocking: list[str] = [o.problem] if o.problem or p is None else []
    warnings: list[str] = []
    if p is not None and not blocking:
        if o.target is None:
            blocking.append(f"{p.target.kind} {p.target.name} not found in namespace {p.namespace}")
        else:
            warnings += template_problems(p, o.target)
    events: list[Event] = []
    service_doc: dict[str, Any] | None = None
    endpoints_doc: dict[str, Any] | None = None
    route = str(previous.get("route") or "activator")
    if p is not None and not blocking and p.service is not None:
        service = o.service
        if service is None:
            service = service_doc = _new_service(o, p)
        if (service.get("spec") or {}).get("selector"):
            blocking.append(
                f"Service {p.service.name} has a selector, so Kubernetes writes its Endpoints; "
                "Dormant needs it selector-less (remove spec.selector)"
            )
        else:
            subsets, route = _subsets(o, p, service)
            if not _same_subsets(o.endpoints, subsets):
                endpoints_doc = _endpoints(o, p, subsets)
                where = ", ".join(a["ip"] for s in subsets for a in s["addresses"]) or "nothing"
                events.append(
                    Event("Normal", "Routed", f"Service {p.service.name} -> {route} ({where})")
                )
    view = o.activator or {}
    if blocking:
        phase, message = "Degraded", blocking[0]
    elif p is not None and p.workload is None:
        phase, message = _job_phase(o.target or {}, o.pods)
    elif o.activator is None:
        phase = "Pending"
        message = f"the activator does not serve it yet ({o.activator_problem or 'no answer'})"
    else:
        phase = phase_of(str(view.get("state")))
        message = str((view.get("last_error") if phase == "Failed" else view.get("reason")) or "")
        live = [pod for pod in o.pods if not pod["metadata"].get("deletionTimestamp")]
        if phase in ("Hibernated", "Failed") and live:
            # at rest for the activator, but pods run (a new workload, an eviction's
            # replacement): it takes them over next
            phase = "Waking"
            message = f"taking over pod {live[0]['metadata']['name']}" + (
                f" ({message})" if message else ""
            )
    problems = blocking + warnings
    if warnings:
        message = "; ".join(([message] if message else []) + warnings)
    status: dict[str, Any] = {
        "observedGeneration": int(meta.get("generation") or 0),
        "route": route,
        "phase": phase,
    }
    if message:  # absent rather than "" (see _conditions)
        status["message"] = message[:1000]
    wake = view.get("last_wake") or previous.get("lastWake")
    if wake:
        status["lastWake"] = {
            "path": str(wake.get("path")),
            "seconds": float(wake.get("seconds") or 0),
        }
        phases = wake.get("phases")
        if isinstance(phases, dict) and phases:
            status["lastWake"]["phases"] = {str(k): float(v) for k, v in phases.items()}
    snapshot = _snapshot(view) or previous.get("lastSnapshot")
    if snapshot:
        status["lastSnapshot"] = dict(snapshot)
    status["conditions"] = _conditions(
        previous.get("conditions") or [],
        {
            "Ready": (phase == "Ready", phase, message),
            "Hibernated": (phase == "Hibernated", phase, message),
            "Waking": (phase == "Waking", phase, message),
            "Degraded": (
                bool(problems),
                "InvalidPolicy" if problems else "Valid",
                "; ".join(problems),
            ),
            "SnapshotAvailable": (
                bool(snapshot),
                "Committed" if snapshot else "None",
                f"snapshot {snapshot['id']}" if snapshot else "no snapshot yet",
            ),
        },
        o.now,
    )
    events += _transition_events(previous, status)
    failures = int((view.get("counters") or {}).get("checkpoint_failures") or 0)
    if o.seen_checkpoint_failures is not None and failures > o.seen_checkpoint_failures:
        events.append(
            Event("Warning", "CheckpointFailed", str(view.get("last_error") or "")[:1000])
        )
    return Plan(service=service_doc, endpoints=endpoints_doc, status=status, events=events)


def _snapshot(view: Doc) -> dict[str, Any] | None:
    last = view.get("last_checkpoint")
    if last and last.get("snapshot"):
        return {
            "id": str(last["snapshot"]),
            "bytes": int(last.get("bytes") or 0),
            "seconds": float(last.get("seconds") or 0),
        }
    snap = view.get("snapshot")
    if snap and snap.get("id"):
        return {"id": str(snap["id"]), "bytes": int(snap.get("bytes") or 0)}
    return None


def _transition_events(previous: Doc, status: dict[str, Any]) -> list[Event]:
    before, after = previous.get("phase"), status["phase"]
    events: list[Event] = []
    message = str(status.get("message", ""))
    if after == "Degraded" and (before != "Degraded" or previous.get("message") != message):
        events.append(Event("Warning", "InvalidPolicy", message))
    if before == after:
        return events
    if after == "Hibernated" and before in ("Hibernating", "Ready"):
        snap = status.get("lastSnapshot") or {}
        what = f"snapshot {snap['id']} ({snap.get('bytes', 0)} bytes)" if snap else "no snapshot"
        events.append(Event("Normal", "Hibernated", f"scaled to zero; {what}"))
    elif after == "Ready" and before in ("Waking", "Hibernated", "Pending", "Failed"):
        wake = status.get("lastWake") or {}
        reason = _WAKE_REASONS.get(str(wake.get("path")), "Ready")
        events.append(
            Event("Normal", reason, f"{wake.get('path', 'ready')} in {wake.get('seconds', 0):.2f}s")
        )
    elif after == "Failed":
        events.append(Event("Warning", "Failed", message))
    return events
