"""A pod as Dormant sees it: whether it is ready, the Endpoints' addresses, the route intent
on a policy's Service, and a pod serving a workload as a runtime ``Instance``. Pure facts over
the objects as the API server sends them (plain dicts): the Kubernetes runtime and the
operator's plan read them the same way."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from warmpool.runtime import Endpoint

__all__ = [
    "ACTIVATOR_ANNOTATION",
    "ROUTED_IPS_ANNOTATION",
    "ROUTE_ACTIVATOR",
    "ROUTE_ANNOTATION",
    "ROUTE_PODS",
    "PodInstance",
    "describe_pods",
    "endpoint_ips",
    "pod_ready",
    "pod_running",
]

ROUTE_ANNOTATION = "dormant.dev/route"
"""On the policy's Service: where the activator wants traffic (``pods`` or ``activator``)."""
ACTIVATOR_ANNOTATION = "dormant.dev/activator"
"""On the policy's Service: the activator's ``IP:PORT`` for the Endpoints."""
ROUTED_IPS_ANNOTATION = "dormant.dev/pod-ips"
"""On the policy's Service, with route ``pods``: the pod IPs the activator itself probed
(comma-separated). Only those become endpoints: a replacement pod (after an eviction) is
not, however Ready, until the activator's own probe of it passed."""
ROUTE_PODS, ROUTE_ACTIVATOR = "pods", "activator"


def pod_ready(pod: Mapping[str, Any]) -> bool:
    """Running, with an IP, not terminating, and its Ready condition True."""
    status = pod.get("status") or {}
    if pod.get("metadata", {}).get("deletionTimestamp") or not status.get("podIP"):
        return False
    conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
    return status.get("phase") == "Running" and conditions.get("Ready") == "True"


def endpoint_ips(endpoints: Mapping[str, Any] | None) -> set[str]:
    """The ready addresses of a core/v1 Endpoints object."""
    ips: set[str] = set()
    for subset in (endpoints or {}).get("subsets") or []:
        ips |= {a.get("ip", "") for a in subset.get("addresses") or []}
    return ips


@dataclass(eq=False)
class PodInstance:
    """A pod serving a workload. ``alive()`` turns false once the pod is deleted,
    terminating or failed (noticed by the runtime's watch of it)."""

    pod: str
    uid: str
    ip: str
    port: int
    node: str
    restored_from: str | None
    started: dict[str, Any] = field(default_factory=dict)
    """The supervisor's account of the start (how, snapshot, seconds)."""
    wake_phases: dict[str, float] = field(default_factory=dict)
    """When the wake that found this pod passed each step, in seconds since it began:
    scaled (the scale request answered), scheduled (the pod has a node), running (its
    container runs, it has an IP), ready (its supervisor answered /readyz: restored or
    booted and healthy)."""
    _alive: bool = True
    _why: str = "running"

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(self.ip, self.port)

    def alive(self) -> bool:
        return self._alive

    def exit_reason(self) -> str:
        return self._why

    def gone(self, why: str) -> None:
        if self._alive:
            self._alive, self._why = False, why

    def describe(self) -> dict[str, Any]:
        return {
            "pod": self.pod,
            "ip": self.ip,
            "node": self.node,
            "started": self.started,
            "wake_phases": self.wake_phases,
        }


def pod_running(pod: Mapping[str, Any]) -> bool:
    """Running with an IP and not terminating (Ready may lag: its supervisor decides)."""
    status = pod.get("status") or {}
    terminating = bool(pod.get("metadata", {}).get("deletionTimestamp"))
    return not terminating and status.get("phase") == "Running" and bool(status.get("podIP"))


def describe_pods(pods: list[dict[str, Any]]) -> str:
    """``pod a Running, pod b terminating`` (at most five), for messages."""
    parts = []
    for pod in pods[:5]:
        status = pod.get("status") or {}
        terminating = pod["metadata"].get("deletionTimestamp")
        parts.append(
            f"pod {pod['metadata']['name']} {'terminating' if terminating else status.get('phase')}"
        )
    return ", ".join(parts)
