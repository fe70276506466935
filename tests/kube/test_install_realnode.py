"""Dormant installed on the real node from deploy/base (tests/kube/install.py): the activator,
the operator and the model as pods from the project's image, clients going through the model
Service's ClusterIP (kube-proxy), as issue 17's acceptance asks.

One install serves the module's tests, in order: answered warm; idle, so hibernated (the model
checkpointed, scaled to 0, the Service pointing at the activator); a request through the
Service restores it (X-Dormant-Wake: restore, the KV cache kept), several times, each wake's
seconds written to results/realnode-wake.json; and last, the policy deleted while hibernated:
the app answers again without anyone editing anything.
"""

from __future__ import annotations

import json
import signal
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .cluster import wait_until
from .install import Install, install
from .realnode import RealNode
from .rest import ApiException

# The first test also pays for the node (containerd imports the image) and the install.
pytestmark = [pytest.mark.kube, pytest.mark.slow, pytest.mark.timeout(1200)]

MODEL = "ref-small"
PROMPT = "Once upon a time in a land far away there lived a dormant model that " * 3
RESULTS = Path(__file__).resolve().parents[2] / "results"
WAKES = 5


@pytest.fixture(scope="module")
def installed(real_node: RealNode, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Install]:
    done = install(real_node, tmp_path_factory.mktemp("install-state"))
    try:
        yield done
    finally:
        print(done.diagnose())
        done.remove()


def _complete(done: Install, timeout: float = 150) -> httpx.Response:
    url = f"http://{done.service_ip()}:{done.service_port()}/v1/completions"
    return httpx.post(
        url, json={"model": MODEL, "prompt": PROMPT, "max_tokens": 4}, timeout=timeout
    )


class Traffic:
    """A client sending one completion after another to `url` (a ClusterIP: kube-proxy picks
    the pod) until stopped, every answer recorded: (seconds since start, status or error).

    Each request on a new connection: kube-proxy picks a backend per connection, so a client
    that keeps one connection alive stays on the pod it first reached even after the
    Endpoints moved, and when that pod is checkpointed a request sent at that moment is
    reset (measured here: 1 of 49 during an eviction). docs/kubernetes.md, "Drain and
    eviction", says what such clients need (a retry, as the OpenAI SDK does)."""

    def __init__(self, url: str, pause: float = 0.3) -> None:
        self.results: list[tuple[float, int | str]] = []
        self._stop = threading.Event()
        began = time.monotonic()

        def run() -> None:
            body = {"model": MODEL, "prompt": "Hello there", "max_tokens": 2}
            while not self._stop.is_set():
                try:
                    code: int | str = httpx.post(url, json=body, timeout=150).status_code
                except httpx.HTTPError as exc:
                    code = f"{type(exc).__name__}: {exc}"
                self.results.append((round(time.monotonic() - began, 2), code))
                self._stop.wait(pause)

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(160)

    def ok_since(self, n: int) -> int:
        return sum(1 for _, code in self.results[n:] if code == 200)

    def failed(self) -> list[tuple[float, int | str]]:
        return [r for r in self.results if r[1] != 200]


def _model_url(done: Install) -> str:
    return f"http://{done.service_ip()}:{done.service_port()}/v1/completions"


def _warm(done: Install) -> dict[str, Any]:
    """The model awake, Ready, the Service routing to it: a request each second (it wakes
    the model if it slept, and keeps it from idling meanwhile) until all three hold."""

    def warm() -> dict[str, Any] | None:
        assert _complete(done).status_code == 200
        ready = done.ready_pods(done.model_ns, done.target)
        return ready[0] if ready and done.policy_status().get("route") == "pods" else None

    pod = wait_until(
        "the model Ready and in its Service's Endpoints",
        warm,
        timeout=180,
        interval=1,
        diagnose=done.diagnose,
    )
    assert isinstance(pod, dict)
    return pod


def _evict(done: Install, pod: str) -> None:
    """What `kubectl drain` does to a pod: the Eviction API (policy/v1beta1 on 1.20)."""
    done.kube.post(
        f"/api/v1/namespaces/{done.model_ns}/pods/{pod}/eviction",
        {
            "apiVersion": "policy/v1beta1",
            "kind": "Eviction",
            "metadata": {"name": pod, "namespace": done.model_ns},
        },
    )


def _hibernated(done: Install) -> bool:
    return done.policy_status().get("phase") == "Hibernated" and not done.pods(
        done.model_ns, done.target
    )


def _wait_hibernated(done: Install) -> None:
    """Until idleAfter has passed and the model is checkpointed and scaled to 0."""
    wait_until(
        "the policy Hibernated, its pods gone",
        lambda: _hibernated(done),
        timeout=180,
        interval=0.5,
        diagnose=done.diagnose,
    )


def test_a_request_through_the_service_reaches_the_model(installed: Install) -> None:
    answer = _complete(installed)
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["text"]


def test_idle_hibernates_and_a_request_through_the_service_restores(installed: Install) -> None:
    """Each round: the policy's idleAfter passes, the model is checkpointed and scaled to 0;
    then one request through the Service's ClusterIP wakes it. It is answered by the same
    process (restored, not booted) with the prompt's KV cache still there."""
    done = installed
    wakes: list[dict[str, Any]] = []
    for _ in range(WAKES):
        _wait_hibernated(done)
        began = time.monotonic()
        answer = _complete(done)
        wall = time.monotonic() - began
        assert answer.status_code == 200, answer.text
        wake = answer.headers.get("x-dormant-wake", "")
        assert wake.startswith("restore"), (wake, done.diagnose())
        assert answer.json()["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
        status = wait_until(
            "the policy's lastWake",
            lambda: (s := done.policy_status()).get("lastWake") and s,
            timeout=30,
        )
        assert isinstance(status, dict)
        wakes.append({"client_seconds": wall, "header": wake, "lastWake": status.get("lastWake")})
    walls = [w["client_seconds"] for w in wakes]
    summary = {
        "node": "real (kubelet + containerd + runc, kube-proxy)",
        "wakes": wakes,
        "p50_client_seconds": statistics.median(walls),
        "max_client_seconds": max(walls),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "realnode-wake.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))


def test_an_eviction_during_traffic_through_the_service_fails_no_request(
    installed: Install,
) -> None:
    """`kubectl drain` evicts: the pod's supervisor stops being ready, kube-proxy moves the
    traffic (to the activator, which holds it), then the pod checkpoints; the replacement
    restores. Every request through the ClusterIP in the meantime is answered."""
    done = installed
    pod = _warm(done)
    name = pod["metadata"]["name"]
    traffic = Traffic(_model_url(done))
    try:
        time.sleep(2)
        _evict(done, name)
        evicted_at = len(traffic.results)
        replacement = wait_until(
            "a replacement pod Ready, five requests answered since",
            lambda: (
                (
                    ready := [
                        p
                        for p in done.ready_pods(done.model_ns, done.target)
                        if p["metadata"]["name"] != name
                    ]
                )
                and traffic.ok_since(evicted_at) >= 5
                and ready[0]
            ),
            timeout=240,
            interval=0.5,
            diagnose=done.diagnose,
        )
    finally:
        traffic.stop()
    assert isinstance(replacement, dict)
    print(f"{len(traffic.results)} requests during the eviction, failed: {traffic.failed()}")
    assert not traffic.failed(), (traffic.failed(), done.diagnose())
    log = done.node.container_log(done.model_ns, replacement["metadata"]["name"], "model")
    assert "restored from" in log, log[-3000:]


def test_a_rollout_of_the_activator_under_traffic_fails_no_request(installed: Install) -> None:
    """Traffic through the activator's own Service (the shared OpenAI endpoint, routing by
    model) while its Deployment rolls (`kubectl rollout restart`): two activators serve at
    every moment, none is cut off mid-request, and the model is not checkpointed by the one
    leaving (it stays the same pod)."""
    done = installed
    pod = _warm(done)
    before = {p["metadata"]["name"] for p in done.pods(done.control_ns, "dormant-activator")}
    traffic = Traffic(f"http://{done.activator_ip}:80/v1/completions")
    try:
        time.sleep(2)
        done.kube.patch(
            f"/apis/apps/v1/namespaces/{done.control_ns}/deployments/dormant-activator",
            {
                "spec": {
                    "template": {
                        "metadata": {
                            "annotations": {"kubectl.kubernetes.io/restartedAt": time.ctime()}
                        }
                    }
                }
            },
        )
        wait_until(
            "the rollout done: two new activators Ready, the old ones gone",
            lambda: (
                len(
                    [
                        p
                        for p in done.ready_pods(done.control_ns, "dormant-activator")
                        if p["metadata"]["name"] not in before
                    ]
                )
                == 2
                and not before
                & {p["metadata"]["name"] for p in done.pods(done.control_ns, "dormant-activator")}
            ),
            timeout=400,
            interval=1,
            diagnose=done.diagnose,
        )
        time.sleep(2)
    finally:
        traffic.stop()
    print(f"{len(traffic.results)} requests during the rollout, failed: {traffic.failed()}")
    assert len(traffic.results) > 10
    assert not traffic.failed(), (traffic.failed(), done.diagnose())
    names = {p["metadata"]["name"] for p in done.pods(done.model_ns, done.target)}
    assert names == {pod["metadata"]["name"]}, "the model was checkpointed or replaced"
    assert done.policy_status().get("phase") == "Ready", done.policy_status()


def test_a_wake_survives_the_api_server_going_away_for_25_seconds(installed: Install) -> None:
    """Hibernated; a request through the Service starts a wake; the API server stops
    answering (SIGSTOP: connections hang, as behind a dead load balancer) for 25 s. The
    request is held, the activator retries with back-off, and it is answered once the API
    server is back, within the policy's wakeTimeout (2 m)."""
    done = installed
    _wait_hibernated(done)
    url = _model_url(done)
    assert done.node.cluster is not None
    (apiserver,) = [p for p in done.node.cluster._procs if p.name == "kube-apiserver"]
    answers: list[httpx.Response | Exception] = []

    def ask() -> None:
        try:
            answers.append(
                httpx.post(
                    url, json={"model": MODEL, "prompt": PROMPT, "max_tokens": 4}, timeout=150
                )
            )
        except Exception as exc:
            answers.append(exc)

    client = threading.Thread(target=ask, daemon=True)
    began = time.monotonic()
    client.start()
    time.sleep(0.2)  # the activator has the request; the wake has begun
    apiserver.popen.send_signal(signal.SIGSTOP)
    try:
        time.sleep(25)
        assert not answers, f"answered while the API server was away: {answers}"
    finally:
        apiserver.popen.send_signal(signal.SIGCONT)
    client.join(150)
    took = time.monotonic() - began
    print(f"a wake with the API server away for 25 s: answered after {took:.1f} s")
    (answer,) = answers
    assert isinstance(answer, httpx.Response), (answer, done.diagnose())
    assert answer.status_code == 200, (answer.text, done.diagnose())
    assert answer.headers.get("x-dormant-wake", "").startswith("restore")
    assert took < 120


def test_with_the_leading_operator_killed_an_eviction_fails_no_request(
    installed: Install,
) -> None:
    """The leading operator's pod is killed (no grace: its Lease is not released), then the
    model pod is evicted with traffic running through the Service. The evicted pod serves on
    for its --term-delay (25 s, longer than the operator's 15 s Lease); meanwhile the other
    operator takes the Lease over and moves the Endpoints; the replacement restores. No
    request fails (with a 5 s --term-delay, 4 of 19 did: docs/kubernetes.md, "On a real
    node"). The takeover time and the answers go to results/realnode-operator-killed.json."""
    done = installed
    pod = _warm(done)
    lease_path = f"/apis/coordination.k8s.io/v1/namespaces/{done.model_ns}/leases/dormant-operator"
    leader = done.kube.get(lease_path)["spec"]["holderIdentity"]
    done.kube.delete(f"/api/v1/namespaces/{done.control_ns}/pods/{leader}", gracePeriodSeconds=0)
    name = pod["metadata"]["name"]
    traffic = Traffic(_model_url(done))
    began = time.monotonic()
    took_over: list[float] = []

    def settled() -> bool:
        if not took_over and done.kube.get(lease_path)["spec"].get("holderIdentity") not in (
            None,
            leader,
        ):
            took_over.append(time.monotonic() - began)
        replaced = [
            p for p in done.ready_pods(done.model_ns, done.target) if p["metadata"]["name"] != name
        ]
        return bool(replaced and took_over and traffic.ok_since(evicted_at) >= 5)

    try:
        time.sleep(1)
        _evict(done, name)
        evicted_at = len(traffic.results)
        wait_until(
            "a replacement pod Ready, another operator leading, five requests answered since",
            settled,
            timeout=240,
            interval=0.25,
            diagnose=done.diagnose,
        )
        time.sleep(3)
    finally:
        traffic.stop()
    failed = traffic.failed()
    report = {"requests": len(traffic.results), "took_over_s": took_over[0], "failed": failed}
    print(f"leader killed, then an eviction: {report}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "realnode-operator-killed.json").write_text(json.dumps(report, indent=1))
    assert not failed, (failed, done.diagnose())


def test_deleting_the_policy_while_hibernated_gives_the_app_back(installed: Install) -> None:
    """Last (it removes the policy): hibernated, then `kubectl delete` of the policy. The
    operator's finalizer scales the target back and gives the Service its selector: the app
    answers through the Service again, restored from its snapshot, and nobody hibernates it."""
    done = installed
    _wait_hibernated(done)
    path = (
        f"/apis/dormant.dev/v1alpha1/namespaces/{done.model_ns}"
        f"/scaletozeropolicies/{done.policy_name}"
    )
    done.kube.delete(path)

    def gone() -> bool:
        try:
            done.kube.get(path)
        except ApiException as exc:
            return exc.status == 404
        return False

    wait_until("the policy gone (its finalizer done)", gone, timeout=90, diagnose=done.diagnose)
    answer = wait_until(
        "the app answering through its Service",
        lambda: (r := _complete(done, timeout=30)).status_code == 200 and r,
        timeout=240,
        interval=1,
        diagnose=done.diagnose,
    )
    assert isinstance(answer, httpx.Response)
    (pod,) = done.ready_pods(done.model_ns, done.target)
    log = done.node.container_log(done.model_ns, pod["metadata"]["name"], "model")
    assert "restored from" in log, log[-3000:]
    # kube-proxy reads EndpointSlices: none mirrored from the operator's old Endpoints (the
    # activator's address) is left beside the one Kubernetes now makes for the pods.
    slices = done.kube.get(
        f"/apis/discovery.k8s.io/v1beta1/namespaces/{done.model_ns}/endpointslices",
        labelSelector=f"kubernetes.io/service-name={done.service}",
    )["items"]
    managers = [
        s["metadata"]["labels"].get("endpointslice.kubernetes.io/managed-by") for s in slices
    ]
    assert managers == ["endpointslice-controller.k8s.io"], slices
    time.sleep(15)  # longer than idleAfter: nobody hibernates it now
    assert [p["metadata"]["name"] for p in done.ready_pods(done.model_ns, done.target)] == [
        pod["metadata"]["name"]
    ]
    assert _complete(done).status_code == 200
