"""A drain (here the Eviction API, as `kubectl drain` uses it) loses no request: on SIGTERM the
pod's supervisor stops being ready and serves on for --term-delay while the Endpoints move, and
only then waits for quiet and dumps (docs/kubernetes.md, "Drains").

The client plays kube-proxy: it sends each request to an address of the Service's Endpoints as
they were PROXY_LAG seconds ago (a node's proxy follows the Endpoints with such a lag), so a
request that reaches the old pod after its SIGTERM is exactly what a real node produces."""

from __future__ import annotations

import random
import threading
import time

import httpx
import pytest

from .fleet import MODEL, MODEL_PODS, Fleet
from .workloads import ready_pod

pytestmark = [pytest.mark.kube, pytest.mark.criu]

PROXY_LAG = 1.0


class LaggingProxyView:
    """The Service's Endpoints as a node's proxy sees them: PROXY_LAG seconds late."""

    def __init__(self, fleet: Fleet) -> None:
        self._history: list[tuple[float, set[str]]] = [(time.monotonic(), fleet.endpoints())]
        self._stop = threading.Event()

        def follow() -> None:
            while not self._stop.wait(0.1):
                try:
                    self._history.append((time.monotonic(), fleet.endpoints()))
                except Exception:
                    continue

        self._thread = threading.Thread(target=follow, daemon=True)
        self._thread.start()

    def address(self) -> str:
        now = time.monotonic()
        seen = [eps for at, eps in self._history if at <= now - PROXY_LAG and eps]
        return random.choice(sorted(seen[-1] if seen else self._history[0][1]))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def test_requests_through_the_service_during_an_eviction_all_succeed(fleet: Fleet) -> None:
    f = fleet
    f.install(wakeTimeout="2m")
    _, url = f.activator("activator")
    f.operator(url)
    first = f.until("the pod to be Ready", lambda: ready_pod(f.kube, f.ns, MODEL_PODS), 300)
    ip = first["status"]["podIP"]
    f.until("the Endpoints at the pod", lambda: f.endpoints() == {f"{ip}:8000"}, 60)
    view = LaggingProxyView(f)
    results: list[tuple[str, int | str]] = []

    def ask() -> None:
        address = view.address()
        body = {"model": MODEL, "prompt": "Hello there", "max_tokens": 2}
        try:
            code: int | str = httpx.post(
                f"http://{address}/v1/completions", json=body, timeout=120
            ).status_code
        except httpx.HTTPError as exc:
            code = type(exc).__name__
        results.append((address, code))

    try:
        ask()
        time.sleep(2.3)  # the served port is quiet (2 s): nothing would hold the dump back
        name = first["metadata"]["name"]
        f.kube.post(
            f"/api/v1/namespaces/{f.ns}/pods/{name}/eviction",
            {
                "apiVersion": "policy/v1beta1",
                "kind": "Eviction",
                "metadata": {"name": name, "namespace": f.ns},
            },
        )
        time.sleep(0.3)
        deadline = time.monotonic() + 180
        served_after = 0
        while served_after < 5 and time.monotonic() < deadline:
            ask()
            replacement = ready_pod(f.kube, f.ns, MODEL_PODS, not_named=name)
            if replacement is not None and results[-1][1] == 200:
                served_after += 1
            time.sleep(0.4)
    finally:
        view.stop()
    failed = [r for r in results if r[1] != 200]
    at_old_pod = [r for r in results[1:] if r[0] == f"{ip}:8000"]
    print(f"{len(results)} requests, {len(at_old_pod)} sent to the evicted pod, failed: {failed}")
    assert at_old_pod, "no request reached the evicted pod after its SIGTERM: nothing tested"
    assert not failed, (failed, f.diagnose())
    assert served_after == 5, f.diagnose()
    assert "committed" in f.kubelet.log(name), f.kubelet.log(name)[-2000:]
