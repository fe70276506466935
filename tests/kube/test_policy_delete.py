"""Deleting a ScaleToZeroPolicy while its model is hibernated, end to end: the scene of
tests/kube/test_scale_to_zero.py (real API server and controller manager, the fake node, real
CRIU in the pod, the activator and the operator as host processes). Issue 17: the app stayed
down (0 replicas, Endpoints at an activator answering 404) until a human edited Endpoints."""

from __future__ import annotations

import time

import pytest

from .rest import ApiException
from .test_scale_to_zero import MODEL_PODS, PROMPT, Scene, scene  # noqa: F401
from .workloads import pods, ready_pod

pytestmark = [pytest.mark.kube, pytest.mark.criu]


def test_deleting_a_hibernated_policy_brings_the_model_back(scene: Scene) -> None:  # noqa: F811
    s = scene
    first = s.until(
        "the model's first pod to be Ready (a boot)",
        lambda: ready_pod(s.kube, s.ns, MODEL_PODS),
        300,
    )
    first_ip = first["status"]["podIP"]
    s.until("the Endpoints to point at the pod", lambda: s.endpoints() == {f"{first_ip}:8000"})
    assert s.complete(s.url, PROMPT).status_code == 200

    # -- hibernated by the activator: checkpoint, 0 replicas, Endpoints at the activator ------
    s.kube.patch(f"{s.policies}/ref", {"spec": {"idleAfter": "3s"}})
    s.until("status Hibernated", lambda: s.status().get("phase") == "Hibernated", 180)
    s.until("the pod to be gone", lambda: not pods(s.kube, s.ns, MODEL_PODS), 120)
    assert s.replicas() == 0
    assert s.endpoints() == {s.url.removeprefix("http://")}

    # -- the policy is deleted -----------------------------------------------------------------
    s.kube.delete(f"{s.policies}/ref")

    def gone() -> bool:
        try:
            s.policy()
        except ApiException as exc:
            return exc.status == 404
        return False

    s.until("the policy to be gone (the operator's finalizer removed)", gone, 60)
    assert s.replicas() == 1
    service = s.kube.get(f"/api/v1/namespaces/{s.ns}/services/ref-model")
    assert service["spec"]["selector"] == {"app.kubernetes.io/name": "ref-model"}
    # Kubernetes' Endpoints controller now routes to the ready pod, on the served port; the
    # pod restored the snapshot from its claim by itself (dormant exec).
    pod = s.until(
        "a Ready pod in the Service's Endpoints",
        lambda: (
            (p := ready_pod(s.kube, s.ns, MODEL_PODS))
            and s.endpoints() == {f"{p['status']['podIP']}:8000"}
            and p
        ),
        240,
    )
    ip = pod["status"]["podIP"]
    answer = s.complete(f"http://{ip}:8000", PROMPT + "And then?")
    assert answer.status_code == 200, answer.text
    assert "restored from" in s.kubelet.log(pod["metadata"]["name"])
    # Nobody hibernates it again: the activator let go of the workload with its policy.
    time.sleep(8)
    assert s.replicas() == 1 and s.endpoints() == {f"{ip}:8000"}
    assert s.complete(f"http://{ip}:8000", "Hello").status_code == 200
