"""What giving a workload back looks like when its ScaleToZeroPolicy is deleted: a pure
function of what the operator read (no clock, no I/O), so each rule is a row in a table test.

A policy carries the operator's finalizer (``dormant.dev/release``), so deleting it runs
``release`` before the object goes. Without it, a policy deleted while its target is
hibernated left the app down for good: the target at 0 replicas, the selector-less Service
pointing at the activator, which no longer knows the workload (404), and nobody writing
Endpoints any more. The rules, in the order they apply:

1. **Replicas.** A Deployment or StatefulSet at 0 replicas is scaled to the replicas it had
   when the policy first saw it (``dormant.dev/replicas-before`` on the policy), at least 1.
   A target that runs is left as it is; a Job has nothing to scale.
2. **The Service** (the policy's, when it exists and is selector-less) gets the target's pod
   selector and ``targetPort`` = the port the pods serve on (``spec.service.port``), so
   Kubernetes' own Endpoints controller routes to the ready pods from now on; Dormant's route
   annotations go, and so does an owner reference to the policy (a Service the operator
   created would otherwise be garbage-collected with the policy, taking the app's address
   with it). Without a target (deleted, or no matchLabels) the Service is left selector-less:
   only the owner reference and the annotations go.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from activator.config.policy import Policy
from warmpool.kube.pods import ACTIVATOR_ANNOTATION, ROUTE_ANNOTATION, ROUTED_IPS_ANNOTATION

__all__ = ["FINALIZER", "REPLICAS_ANNOTATION", "Release", "release", "remember_replicas"]

FINALIZER = "dormant.dev/release"
"""On every policy the operator serves: deleting it waits for ``release`` to be applied."""
REPLICAS_ANNOTATION = "dormant.dev/replicas-before"
"""On the policy: the target's replicas when the operator first saw it running."""

Doc = Mapping[str, Any]


@dataclass(frozen=True)
class Release:
    replicas: int | None = None
    """Scale the target to this (its scale subresource), or leave it (None)."""
    service_patch: dict[str, Any] | None = None
    """A JSON merge patch for the policy's Service, or None."""

    @property
    def empty(self) -> bool:
        return self.replicas is None and self.service_patch is None


def remember_replicas(policy: Doc, p: Policy, target: Doc | None) -> dict[str, str]:
    """The annotation to add to the policy (once): the target's replicas while it runs."""
    annotations = (policy.get("metadata") or {}).get("annotations") or {}
    if target is None or not p.target.scalable or REPLICAS_ANNOTATION in annotations:
        return {}
    replicas = int((target.get("spec") or {}).get("replicas", 1) or 0)
    return {REPLICAS_ANNOTATION: str(replicas)} if replicas >= 1 else {}


def _replicas(policy: Doc, p: Policy, target: Doc | None) -> int | None:
    if target is None or not p.target.scalable:
        return None
    if int((target.get("spec") or {}).get("replicas", 1) or 0) > 0:
        return None
    annotations = (policy.get("metadata") or {}).get("annotations") or {}
    try:
        before = int(annotations.get(REPLICAS_ANNOTATION, "1"))
    except ValueError:
        before = 1
    return max(1, before)


def _service_patch(policy: Doc, p: Policy, target: Doc | None, service: Doc) -> dict[str, Any]:
    assert p.service is not None
    meta = service.get("metadata") or {}
    uid = (policy.get("metadata") or {}).get("uid", "")
    patch: dict[str, Any] = {}
    owners = list(meta.get("ownerReferences") or [])
    kept = [o for o in owners if o.get("uid") != uid]
    if len(kept) != len(owners):
        patch.setdefault("metadata", {})["ownerReferences"] = kept or None
    ours = (ROUTE_ANNOTATION, ACTIVATOR_ANNOTATION, ROUTED_IPS_ANNOTATION)
    dropped = {k: None for k in ours if k in (meta.get("annotations") or {})}
    if dropped:
        patch.setdefault("metadata", {})["annotations"] = dropped
    spec = service.get("spec") or {}
    selector = ((target or {}).get("spec") or {}).get("selector", {}).get("matchLabels") or {}
    if selector and not spec.get("selector"):
        ports = [{**port, "targetPort": p.service.port} for port in spec.get("ports") or []]
        patch["spec"] = {"selector": dict(selector), "ports": ports}
    return patch


def release(policy: Doc, p: Policy, target: Doc | None, service: Doc | None) -> Release:
    """What to do before policy ``p``'s finalizer goes (see the module docstring)."""
    patch = None
    if p.service is not None and service is not None:
        patch = _service_patch(policy, p, target, service) or None
    return Release(replicas=_replicas(policy, p, target), service_patch=patch)
