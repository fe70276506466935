"""Two activators serve one namespace at once (docs/kubernetes.md, "Ownership"): each
proxies, only the holder of a policy's Lease scales, routes and checkpoints; the other takes the
Lease over when the holder is gone. Real `dormant up` processes, the suite's API server, the
fake node and real CRIU in the pod."""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest

from .fleet import MODEL_PODS, Fleet, PhaseLog
from .workloads import pods, ready_pod

pytestmark = [pytest.mark.kube, pytest.mark.criu]

LEASE = 4.0


def test_two_activators_checkpoint_once_and_the_survivor_takes_over(fleet: Fleet) -> None:
    f = fleet
    f.install()
    a, a_url = f.activator("activator-a", lease_duration=f"{LEASE:g}s")
    address_a = a_url.removeprefix("http://")
    f.until("the model's pod to be Ready", lambda: ready_pod(f.kube, f.ns, MODEL_PODS), 300)
    f.until("activator A to hold the Lease", lambda: f.lease_holder() == address_a, 60)
    f.until("A to serve the pod", lambda: f.workload(a_url)["state"] == "ready", 60)
    b, b_url = f.activator("activator-b", lease_duration=f"{LEASE:g}s")
    f.operator(b_url)
    f.until("B to adopt the pod A woke", lambda: f.workload(b_url)["state"] == "ready", 60)
    assert f.lease_holder() == address_a
    phases = PhaseLog(f)
    try:
        _idle_then_kill_the_holder(f, a, b, a_url, b_url, phases)
    finally:
        phases.stop()


def _idle_then_kill_the_holder(
    f: Fleet, a: Any, b: Any, a_url: str, b_url: str, phases: PhaseLog
) -> None:
    # -- idle: both see it (the pod's supervisor tells them); exactly one checkpoints --------
    f.kube.patch(f"{f.policies}/ref", {"spec": {"idleAfter": "3s"}})
    f.until("status Hibernated", lambda: f.status().get("phase") == "Hibernated", 180)
    f.until("the pod to be gone", lambda: not pods(f.kube, f.ns, MODEL_PODS), 120)
    f.until("B to follow", lambda: f.workload(b_url)["state"] == "hibernated", 60)
    assert f.workload(a_url)["state"] == "hibernated"
    assert f.committed() == 1, f.diagnose()
    for proc in (a, b):
        text = proc.log_path.read_text()
        assert "busy (409)" not in text and "checkpoint failed" not in text, proc.log(60)
    assert f.workload(a_url)["counters"]["checkpoint_failures"] == 0
    assert f.workload(b_url)["counters"]["checkpoint_failures"] == 0

    # -- a cold request at B (not the holder): B asks A, A wakes it, B answers --------------
    answer = f.complete(b_url, timeout=120)
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-dormant-wake"].startswith("restore; "), answer.headers
    assert f.lease_holder() == a_url.removeprefix("http://")
    f.until("status Hibernated again", lambda: f.status().get("phase") == "Hibernated", 180)
    f.until("the pod to be gone again", lambda: not pods(f.kube, f.ns, MODEL_PODS), 120)
    f.until("B to follow again", lambda: f.workload(b_url)["state"] == "hibernated", 60)
    assert f.committed() == 2, f.diagnose()

    # -- the holder dies: B takes the Lease within its duration and wakes on demand ----------
    a.proc.send_signal(signal.SIGKILL)
    a.proc.wait(10)
    began = time.monotonic()
    answer = f.complete(b_url, timeout=LEASE + 90)
    took = time.monotonic() - began
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-dormant-wake"].startswith("restore; "), answer.headers
    assert f.lease_holder() == b_url.removeprefix("http://")
    assert took < LEASE + 60, took
    f.until("status Ready", lambda: f.status().get("phase") == "Ready", 60)
    seen = phases.stop()
    assert "Failed" not in seen, (seen, f.diagnose())
    assert f.committed() == 2
    print(f"phases {seen}; wake through B after A died: {took:.1f}s")


def test_a_graceful_exit_hands_the_lease_over_at_once(fleet: Fleet) -> None:
    """A rollout: the old activator releases its Leases as it exits; the new one holds them
    within one renewal, not after a whole duration."""
    f = fleet
    f.install(idleAfter=0)
    a, a_url = f.activator("activator-a", lease_duration="30s")
    f.until("A to hold the Lease", lambda: f.lease_holder() == a_url.removeprefix("http://"), 60)
    _, b_url = f.activator("activator-b", lease_duration="30s")
    f.until("B to serve the policy", lambda: f.workload(b_url)["state"] in ("ready", "cold"), 60)
    began = time.monotonic()
    a.stop()
    assert "lease dormant-policy-ref: handed over" in a.log_path.read_text(), a.log()
    f.until("B to hold the Lease", lambda: f.lease_holder() == b_url.removeprefix("http://"), 25)
    assert time.monotonic() - began < 25


def test_a_target_scaled_to_two_is_scaled_back_to_one_with_the_reason(fleet: Fleet) -> None:
    """A policy's pods share one snapshot volume and its lock: a second pod would wait for it
    and never be Ready. The Lease's holder refuses the second replica and says why."""
    f = fleet
    f.install()
    proc, url = f.activator("activator")
    f.until("the model's pod to be Ready", lambda: ready_pod(f.kube, f.ns, MODEL_PODS), 300)
    f.until("the activator to serve it", lambda: f.workload(url)["state"] == "ready", 60)
    f.kube.patch(
        f"/apis/apps/v1/namespaces/{f.ns}/deployments/ref-model/scale",
        {"spec": {"replicas": 2}},
    )
    f.until("the target back at one replica", lambda: f.replicas() == 1, 15)
    assert "serves one pod" in proc.log_path.read_text(), proc.log()
    f.until("one pod left", lambda: len(pods(f.kube, f.ns, MODEL_PODS)) == 1, 60)
    assert f.workload(url)["state"] == "ready"


def test_a_rollout_hands_a_hibernated_policy_over_without_refusing_a_request(
    fleet: Fleet,
) -> None:
    """SIGTERM to the holder (a rollout): it releases the Lease while it still accepts, the
    other takes it and its address goes into the Service, and only then does the old one stop
    accepting. A request sent through the Service (a proxy view 1 s late) meanwhile succeeds."""
    f = fleet
    f.install()
    a, a_url = f.activator("activator-a", lease_duration="30s")
    f.until("the model's pod to be Ready", lambda: ready_pod(f.kube, f.ns, MODEL_PODS), 300)
    f.until("A to hold the Lease", lambda: f.lease_holder() == a_url.removeprefix("http://"), 60)
    _, b_url = f.activator("activator-b", lease_duration="30s")
    f.operator(b_url)
    f.until("B to adopt the pod", lambda: f.workload(b_url)["state"] == "ready", 60)
    f.kube.patch(f"{f.policies}/ref", {"spec": {"idleAfter": "2s"}})
    f.until("the pod to be gone", lambda: not pods(f.kube, f.ns, MODEL_PODS), 180)
    f.kube.patch(f"{f.policies}/ref", {"spec": {"idleAfter": 0}})
    address_a, address_b = a_url.removeprefix("http://"), b_url.removeprefix("http://")
    f.until("the Service at A", lambda: f.endpoints() == {address_a}, 60)
    f.until(
        "B at the new generation, hibernated",
        lambda: (w := f.workload(b_url))["idle_after_s"] == 0 and w["state"] == "hibernated",
        60,
    )

    a.proc.send_signal(signal.SIGTERM)  # the rollout removes the old pod
    f.until("B to hold the Lease", lambda: f.lease_holder() == address_b, 20)
    f.until("the Service at B", lambda: f.endpoints() == {address_b}, 5)
    # what a node's proxy still sends to A just after the move is answered (A accepts on for
    # a few seconds after B took over; B wakes the workload for it)
    answer = f.complete(a_url, timeout=120)
    assert answer.status_code == 200, answer.text
    a.proc.wait(60)
    answer = f.complete(f"http://{address_b}", timeout=120)
    assert answer.status_code == 200, answer.text
    assert "handed over" in a.log_path.read_text(), a.log()
