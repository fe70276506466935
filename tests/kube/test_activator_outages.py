"""The activator when what it leans on is away (docs/failure-semantics.md, "Kubernetes"): the
API server unreachable during a cold request (through tests/kube/apiproxy.py, which only the
activator under test goes through), and the operator stopped during a wake."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import httpx
import pytest

from .apiproxy import ApiProxy
from .cluster import Cluster
from .fleet import MODEL_PODS, Fleet
from .workloads import pods, ready_pod

pytestmark = [pytest.mark.kube, pytest.mark.criu]


def _hibernate(f: Fleet, url: str) -> None:
    """Boot, hibernate once (a snapshot to restore), then never idle: the next request wakes."""
    f.until("the model's pod to be Ready", lambda: ready_pod(f.kube, f.ns, MODEL_PODS), 300)
    f.until("the activator to serve it", lambda: f.workload(url)["state"] == "ready", 60)
    f.kube.patch(f"{f.policies}/ref", {"spec": {"idleAfter": "2s"}})
    f.until("status Hibernated", lambda: f.status().get("phase") == "Hibernated", 180)
    f.until("the pod to be gone", lambda: not pods(f.kube, f.ns, MODEL_PODS), 120)
    f.kube.patch(f"{f.policies}/ref", {"spec": {"idleAfter": 0}})
    f.until(
        "the new generation to be served, hibernated",
        lambda: (w := f.workload(url))["idle_after_s"] == 0 and w["state"] == "hibernated",
        60,
    )


def _api_server(cluster: Cluster) -> tuple[str, int]:
    found = re.search(r'server: "https://([^"]+):(\d+)"', cluster.kubeconfig.read_text())
    assert found is not None
    return found.group(1), int(found.group(2))


def _problems(log: Path, since: int) -> list[str]:
    lines = log.read_text(errors="replace").splitlines()[since:]
    return [line for line in lines if " WARNING " in line or " ERROR " in line]


def test_a_cold_request_outlives_an_api_server_outage_and_a_longer_one_answers_cleanly(
    fleet: Fleet,
) -> None:
    f = fleet
    proxy = ApiProxy(f.network.gateway, _api_server(f.cluster))
    try:
        f.install(wakeTimeout="30s")
        proc, url = f.activator("activator", kubeconfig=f.kubeconfig(proxy.url))
        f.operator(url)
        _hibernate(f, url)

        # -- a brief outage: the request waits it out and is answered once the API is back --
        proxy.down()
        began = time.monotonic()
        answers: list[httpx.Response] = []
        asking = threading.Thread(target=lambda: answers.append(f.complete(url, timeout=60)))
        asking.start()
        time.sleep(6)
        assert not answers, answers[0].text  # held, not failed at once
        proxy.up()
        asking.join(60)
        took = time.monotonic() - began
        (answer,) = answers
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-dormant-wake"].startswith("restore; "), answer.headers
        assert took < 30, took
        print(f"cold request across a 6 s API outage: {took:.1f}s")

        # -- a longer one: the request ends within wakeTimeout, with Retry-After, no address --
        _hibernate(f, url)
        mark = len(proc.log_path.read_text(errors="replace").splitlines())
        proxy.down()
        began = time.monotonic()
        answer = f.complete(url, timeout=90)
        took = time.monotonic() - began
        problems = _problems(proc.log_path, mark)
        proxy.up()
        assert answer.status_code in (503, 504), answer.text
        assert int(answer.headers["retry-after"]) >= 1
        body = answer.text
        assert f.network.gateway not in body and "https://" not in body, body
        assert not re.search(r"\b\d+\.\d+\.\d+\.\d+\b", body), body
        assert 25 <= took < 40, took
        # one line per distinct problem per interval, not a few a second
        assert len(problems) <= 12, "\n".join(problems)
        print(f"{took:.1f}s outage: {answer.status_code} {body}; {len(problems)} warning lines")
        f.until("the wake to finish once the API is back", lambda: f.replicas() == 1, 60)
    finally:
        proxy.close()


def test_a_wake_does_not_wait_for_the_operator(fleet: Fleet) -> None:
    """The operator writes the Endpoints; a held request is proxied to the probed pod by the
    activator itself, so a wake with the operator down still answers within wakeTimeout."""
    f = fleet
    f.install(wakeTimeout="30s")
    _, url = f.activator("activator")  # route_timeout 60s: longer than wakeTimeout
    operator = f.operator(url)
    _hibernate(f, url)
    operator.stop()
    began = time.monotonic()
    answer = f.complete(url, timeout=90)
    took = time.monotonic() - began
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-dormant-wake"].startswith("restore; ")
    assert took < 30, took
    print(f"wake with the operator stopped: {took:.1f}s")
