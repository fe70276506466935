"""deploy.release: what a deleted policy gives back, as table tests (pure). The same rules run
against the real API server in tests/kube/test_operator.py."""

from __future__ import annotations

from typing import Any

import pytest

from activator.config.policy import parse_policy
from deploy.release import REPLICAS_ANNOTATION, Release, release, remember_replicas

Doc = dict[str, Any]


def policy(annotations: Doc | None = None, kind: str = "Deployment") -> Doc:
    spec: Doc = {
        "targetRef": {
            "apiVersion": "batch/v1" if kind == "Job" else "apps/v1",
            "kind": kind,
            "name": "app",
        },
        "checkpoint": {"engine": "restart"},
    }
    if kind != "Job":
        spec["service"] = {"name": "app", "port": 8000}
        spec["models"] = ["m"]
    return {
        "apiVersion": "dormant.dev/v1alpha1",
        "kind": "ScaleToZeroPolicy",
        "metadata": {
            "name": "p",
            "namespace": "ns",
            "uid": "u-1",
            "annotations": annotations or {},
            "creationTimestamp": "2026-12-01T00:00:00Z",
        },
        "spec": spec,
    }


def target(replicas: int | None, labels: Doc | None = None) -> Doc:
    spec: Doc = {"selector": {"matchLabels": {"app": "x"} if labels is None else labels}}
    if replicas is not None:
        spec["replicas"] = replicas
    return {"spec": spec}


HIBERNATED_SERVICE = {
    "metadata": {
        "annotations": {
            "dormant.dev/route": "activator",
            "dormant.dev/activator": "10.0.0.1:8080",
            "dormant.dev/pod-ips": "",
            "team": "kept",
        },
        "ownerReferences": [{"uid": "u-1", "kind": "ScaleToZeroPolicy"}, {"uid": "other"}],
    },
    "spec": {"ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
}
GIVEN_BACK = {
    "metadata": {
        "ownerReferences": [{"uid": "other"}],
        "annotations": {
            "dormant.dev/route": None,
            "dormant.dev/activator": None,
            "dormant.dev/pod-ips": None,
        },
    },
    "spec": {
        "selector": {"app": "x"},
        "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8000}],
    },
}


@pytest.mark.parametrize(
    ("annotations", "kind", "the_target", "service", "expected"),
    [
        # 1. replicas: at 0 -> what it had before the policy, at least 1
        ({REPLICAS_ANNOTATION: "3"}, "Deployment", target(0), None, Release(replicas=3)),
        ({REPLICAS_ANNOTATION: "0"}, "Deployment", target(0), None, Release(replicas=1)),
        ({}, "StatefulSet", target(0), None, Release(replicas=1)),
        ({REPLICAS_ANNOTATION: "junk"}, "Deployment", target(0), None, Release(replicas=1)),
        ({REPLICAS_ANNOTATION: "3"}, "Deployment", target(1), None, Release()),  # runs: as is
        ({}, "Deployment", target(None), None, Release()),  # default replicas is 1
        ({}, "Deployment", None, None, Release()),  # the target is gone
        ({}, "Job", target(0), None, Release()),  # nothing to scale
        # 2. the Service: selector and targetPort back, Dormant's marks gone
        ({}, "Deployment", target(1), HIBERNATED_SERVICE, Release(service_patch=GIVEN_BACK)),
        # a Service that already has a selector (someone restored it): left alone
        (
            {},
            "Deployment",
            target(1),
            {"metadata": {}, "spec": {"selector": {"a": "b"}, "ports": []}},
            Release(),
        ),
        # no target (or no matchLabels): only the owner reference and annotations go
        (
            {},
            "Deployment",
            None,
            HIBERNATED_SERVICE,
            Release(service_patch={"metadata": GIVEN_BACK["metadata"]}),
        ),
        (
            {},
            "Deployment",
            target(1, labels={}),
            HIBERNATED_SERVICE,
            Release(service_patch={"metadata": GIVEN_BACK["metadata"]}),
        ),
        # only our owner reference: the list goes (null in a merge patch)
        (
            {},
            "Deployment",
            target(1),
            {"metadata": {"ownerReferences": [{"uid": "u-1"}]}, "spec": {"selector": {"a": "b"}}},
            Release(service_patch={"metadata": {"ownerReferences": None}}),
        ),
    ],
)
def test_release(
    annotations: Doc, kind: str, the_target: Doc | None, service: Doc | None, expected: Release
) -> None:
    doc = policy(annotations, kind)
    assert release(doc, parse_policy(doc), the_target, service) == expected


@pytest.mark.parametrize(
    ("annotations", "the_target", "expected"),
    [
        ({}, target(2), {REPLICAS_ANNOTATION: "2"}),
        ({}, target(None), {REPLICAS_ANNOTATION: "1"}),
        ({}, target(0), {}),  # at 0 already (hibernated): nothing worth remembering
        ({REPLICAS_ANNOTATION: "2"}, target(1), {}),  # once
        ({}, None, {}),
    ],
)
def test_remember_replicas(annotations: Doc, the_target: Doc | None, expected: Doc) -> None:
    doc = policy(annotations)
    assert remember_replicas(doc, parse_policy(doc), the_target) == expected


def test_a_job_is_never_remembered() -> None:
    doc = policy({}, "Job")
    assert remember_replicas(doc, parse_policy(doc), target(1)) == {}
