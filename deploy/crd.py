"""The ScaleToZeroPolicy CRD, generated from the settings definition.

    python -m deploy.crd > deploy/base/crd.yaml

The spec's workload settings are ``activator.config.schema.workload_crd_schema()``'s
properties for the keys a policy carries (``activator.config.policy.SPEC_KEYS``, camelCased), so
the API server checks them with the same types, ranges, patterns and enums as the YAML file;
the rest (targetRef, service, checkpoint, kvCache, onEviction, status) is stated here. What a
structural schema cannot say (a Deployment needs a Service, a claim with a checkpoint engine,
models unique in a namespace) is checked by ``activator.config.policy.parse_policy`` and reported
in the policy's status (Degraded, with the message). tests/deploy/test_crd.py fails when
deploy/base/crd.yaml is stale.
"""

from __future__ import annotations

import copy
import sys
from typing import Any

import yaml

from activator.config.policy import ENGINES, KV_CACHE, ON_EVICTION, SPEC_KEYS, TARGET_KINDS
from activator.config.schema import workload_crd_schema
from warmpool.kube.resource import GROUP, KIND, PLURAL, VERSION

__all__ = ["CONDITIONS", "PHASES", "crd", "main", "render"]

PHASES = ("Pending", "Waking", "Ready", "Hibernating", "Hibernated", "Degraded", "Failed")
"""status.phase: what the activator says of the workload (Degraded: the policy cannot be
served as written; Failed: the last wake or checkpoint failed, see message)."""
CONDITIONS = ("Ready", "Hibernated", "Waking", "Degraded", "SnapshotAvailable")

_HEADER = """\
# ScaleToZeroPolicy: which workload Dormant scales to zero, and how.
# Generated from the settings definition by `python -m deploy.crd > deploy/base/crd.yaml`;
# do not edit by hand (tests/deploy/test_crd.py fails when this file is stale).
"""


def _string(description: str, **extra: Any) -> dict[str, Any]:
    return {"type": "string", "description": description, **extra}


def _spec() -> dict[str, Any]:
    workload = workload_crd_schema()["properties"]
    props: dict[str, Any] = {
        "targetRef": {
            "type": "object",
            "description": "The workload whose pods run `dormant exec`: Deployments and "
            "StatefulSets are scaled to 0 and back; a Job runs its pod itself (its pod is "
            "checkpointed on eviction and the replacement resumes).",
            "required": ["kind", "name"],
            "properties": {
                "apiVersion": _string("apps/v1 (Deployment, StatefulSet) or batch/v1 (Job)."),
                "kind": _string("Deployment, StatefulSet or Job.", enum=list(TARGET_KINDS)),
                "name": _string("Its name, in the policy's namespace.", minLength=1),
            },
        },
        "service": {
            "type": "object",
            "description": "The selector-less Service clients use: the operator writes its "
            "Endpoints (the ready pods while the activator routes to them, else the "
            "activator). Required for Deployments and StatefulSets.",
            "required": ["name", "port"],
            "properties": {
                "name": _string("The Service's name (created when missing).", minLength=1),
                "port": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": 65535,
                    "description": "The port the target's pods serve on.",
                },
            },
        },
    }
    for snake, key in SPEC_KEYS.items():
        prop = copy.deepcopy(workload[snake])
        if snake == "models":
            prop.pop("default", None)
            prop["description"] = (
                "OpenAI model names its pods serve: the activator routes /v1/* by the "
                "`model` field (required but for Jobs)."
            )
        props[key] = prop
    keep = copy.deepcopy(workload["keep_snapshots"])
    keep["description"] = (
        "Verified snapshots kept on the claim: the pods' `dormant exec --keep` (the "
        "operator reports a difference)."
    )
    props["checkpoint"] = {
        "type": "object",
        "description": "How the pods' state is kept.",
        "properties": {
            "engine": _string(
                "criu: checkpoint to the claim on hibernation and eviction; cuda: the same "
                "for a GPU process (device memory to host RAM first); restart: nothing is "
                "kept (scale to 0, cold boot).",
                enum=list(ENGINES),
                default="criu",
            ),
            "volumeClaimName": _string(
                "The PersistentVolumeClaim the pods' snapshots (and mapped files such as "
                "weights) live on; required with criu and cuda."
            ),
            "keep": keep,
        },
    }
    props["kvCache"] = _string(
        "keep: the KV cache is in the snapshot; drop: the server is asked to drop it first "
        "(vLLM's sleep API: POST /sleep?level=2 then POST /wake_up) for a smaller snapshot.",
        enum=list(KV_CACHE),
        default="keep",
    )
    props["onEviction"] = _string(
        "checkpoint: an evicted or drained pod is checkpointed before it exits and its "
        "replacement restores (the pods' `dormant exec --on-term`); ignore: it just stops.",
        enum=list(ON_EVICTION),
        default="checkpoint",
    )
    return {
        "type": "object",
        "description": "What Dormant scales to zero and how (docs/kubernetes.md).",
        "required": ["targetRef"],
        "properties": props,
    }


def _status() -> dict[str, Any]:
    number = {"type": "number"}
    return {
        "type": "object",
        "description": "Written by the operator (dormant operator).",
        "properties": {
            "phase": _string(f"One of {', '.join(PHASES)}."),
            "message": _string("Why, in one line (what to do when it is Degraded or Failed)."),
            "route": _string(
                "Where the Service's Endpoints point now: pods or activator.",
                enum=["pods", "activator"],
            ),
            "observedGeneration": {"type": "integer", "format": "int64"},
            "conditions": {
                "type": "array",
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["type"],
                "items": {
                    "type": "object",
                    "required": ["type", "status"],
                    "properties": {
                        "type": _string(f"One of {', '.join(CONDITIONS)}."),
                        "status": _string(
                            "True, False or Unknown.", enum=["True", "False", "Unknown"]
                        ),
                        "reason": _string("CamelCase reason."),
                        "message": _string("Details."),
                        "lastTransitionTime": {"type": "string", "format": "date-time"},
                    },
                },
            },
            "lastWake": {
                "type": "object",
                "description": "How the workload last became ready.",
                "properties": {
                    "path": _string("boot, restore or resume."),
                    "seconds": {**number, "description": "From the first waiting request."},
                    "phases": {
                        "type": "object",
                        "description": "When the wake passed each step, in seconds since it "
                        "began: scaled, scheduled, running, ready.",
                        "additionalProperties": number,
                    },
                },
            },
            "lastSnapshot": {
                "type": "object",
                "description": "The last committed snapshot.",
                "properties": {
                    "id": _string("Its id on the claim."),
                    "bytes": {"type": "integer", "format": "int64"},
                    "seconds": {**number, "description": "The checkpoint's duration."},
                },
            },
        },
    }


def crd() -> dict[str, Any]:
    """The CustomResourceDefinition manifest."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{PLURAL}.{GROUP}",
            "labels": {"app.kubernetes.io/part-of": "dormant"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": KIND.lower(),
                "shortNames": ["stz"],
                "categories": ["dormant"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": "Target", "type": "string", "jsonPath": ".spec.targetRef.name"},
                        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                        {
                            "name": "Last wake",
                            "type": "string",
                            "jsonPath": ".status.lastWake.path",
                        },
                        {
                            "name": "Snapshot",
                            "type": "string",
                            "jsonPath": ".status.lastSnapshot.id",
                        },
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {"spec": _spec(), "status": _status()},
                        }
                    },
                }
            ],
        },
    }


def render() -> str:
    """deploy/base/crd.yaml's text."""
    body = yaml.safe_dump(crd(), sort_keys=False, width=100, allow_unicode=True)
    return _HEADER + body


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
