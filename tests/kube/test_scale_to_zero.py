"""Scale to zero on Kubernetes, end to end: a real API server and controller manager, the fake
kubelet (tests/kube/kubelet.py: it plays the node, with real processes in their own network
namespaces), real CRIU in the pods, the activator (`dormant up`, runtime kubernetes) and
`dormant operator` as host processes, both reaching the API server and the pods through the
pod network's gateway.

The model is deploy/base/model.yaml as shipped (its Deployment, claim and selector-less
Service) with the tiny reference model on one thread; the policy is
deploy/examples/ref-policy.yaml with short timeouts. What the fake kubelet cannot do is said
in its docstring (no images, no mounts: mount paths are rewritten to local directories).
"""

from __future__ import annotations

import json
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from .cluster import Cluster, free_port, wait_until
from .kubelet import FakeKubelet
from .kustomize import render
from .manifests import Manifests
from .network import PodNetwork
from .rest import ApiException, Rest
from .workloads import endpoint_addresses, pods, ready_pod, replicas

pytestmark = [pytest.mark.kube, pytest.mark.criu]

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "deploy" / "base"
POLICY = ROOT / "deploy" / "examples" / "ref-policy.yaml"
MODEL = "ref-small"
MODEL_PODS = "app.kubernetes.io/name=ref-model"  # deploy/base/model.yaml's pod labels
PROMPT = "Once upon a time in a land far away there lived a dormant model that " * 3
Doc = dict[str, Any]


@dataclass
class Timings:
    """Wall time of each phase, printed at the end (pytest -s) and kept in the test's dir."""

    path: Path
    started: float = field(default_factory=time.monotonic)
    marks: dict[str, float] = field(default_factory=dict)

    def mark(self, what: str) -> None:
        self.marks[what] = round(time.monotonic() - self.started, 2)
        self.path.write_text(json.dumps(self.marks, indent=1))
        print(f"[{self.marks[what]:7.2f}s] {what}", flush=True)


class HostProcess:
    """`python -m activator ...` on the host, its output in a file, ended by its pid."""

    def __init__(self, name: str, argv: list[str], log: Path) -> None:
        self.name, self.log_path = name, log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "activator", *argv],
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def log(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        text = [
            line for line in text if "dormant.access" not in line and "kopf.objects" not in line
        ]
        return f"--- {self.name} (exit {self.proc.poll()})\n" + "\n".join(text[-lines:])

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def _crd(kube: Rest) -> Manifests:
    m = Manifests(kube)
    (crd,) = [d for d in render(BASE) if d["kind"] == "CustomResourceDefinition"]
    try:
        m.create(crd)
    except ApiException as exc:
        if exc.status != 409:
            raise
        current = kube.get(m.path(crd, name=True))
        kube.put(
            m.path(crd, name=True),
            {
                **crd,
                "metadata": {
                    **crd["metadata"],
                    "resourceVersion": current["metadata"]["resourceVersion"],
                },
            },
        )
    wait_until(
        "the ScaleToZeroPolicy CRD to be served",
        lambda: m.resource("dormant.dev/v1alpha1", "ScaleToZeroPolicy"),
        timeout=60,
    )
    return m


def _model_objects(namespace: str) -> list[Doc]:
    """deploy/base/model.yaml's claim, Deployment and Service, in the test's namespace, with
    the tiny model on one thread and a shorter grace period."""
    out = []
    for doc in render(BASE):
        if doc["metadata"]["name"] not in ("ref-model", "ref-model-state"):
            continue
        doc["metadata"]["namespace"] = namespace
        if doc["kind"] == "Deployment":
            spec = doc["spec"]["template"]["spec"]
            (c,) = spec["containers"]
            cmd = c["command"]
            cmd[cmd.index("--size") + 1] = "tiny"
            cmd[cmd.index("--grace") + 1] = "50"
            cmd += ["--threads", "1"]
            spec["terminationGracePeriodSeconds"] = 60
        out.append(doc)
    return out


def _policy(namespace: str, **spec: Any) -> Doc:
    (doc,) = [d for d in yaml.safe_load_all(POLICY.read_text()) if d]
    doc["metadata"]["namespace"] = namespace
    doc["spec"].update(spec)
    return dict(doc)


@dataclass
class Scene:
    kube: Rest
    ns: str
    kubelet: FakeKubelet
    activator: HostProcess
    operator: HostProcess
    url: str
    admin_token: str
    cluster: Cluster
    policies: str = ""

    def diagnose(self) -> str:
        return "\n".join(
            [
                f"kubelet errors: {self.kubelet.errors}",
                self.activator.log(60),
                self.operator.log(40),
                *(
                    f"--- pod {name}\n{self.kubelet.log(name)[-3000:]}"
                    for name in (
                        p["metadata"]["name"] for p in pods(self.kube, self.ns, MODEL_PODS)
                    )
                ),
                self.cluster.log_tails(5),
            ]
        )

    def until(self, what: str, check: Any, timeout: float = 120) -> Any:
        def alive_and(check: Any) -> Any:
            for proc in (self.activator, self.operator):
                if not proc.alive():  # pytest.fail is not retried by wait_until
                    pytest.fail(
                        f"the {proc.name} exited while waiting for {what}\n{self.diagnose()}"
                    )
            return check()

        return wait_until(
            what, lambda: alive_and(check), timeout=timeout, interval=0.3, diagnose=self.diagnose
        )

    def policy(self, name: str = "ref") -> Doc:
        return self.kube.get(f"{self.policies}/{name}")

    def status(self, name: str = "ref") -> Doc:
        return dict(self.policy(name).get("status") or {})

    def endpoints(self) -> set[str]:
        return endpoint_addresses(self.kube, self.ns, "ref-model")

    def replicas(self) -> int:
        return replicas(self.kube, self.ns, "ref-model")

    def admin(self, method: str, path: str) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.admin_token}"}
        return httpx.request(method, f"{self.url}{path}", headers=headers, timeout=300)

    def workload(self) -> Doc:
        answer = self.admin("GET", "/-/workloads/ref")
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    def complete(self, base: str, prompt: str) -> httpx.Response:
        body = {"model": MODEL, "prompt": prompt, "max_tokens": 4}
        return httpx.post(f"{base}/v1/completions", json=body, timeout=300)

    def events(self) -> list[str]:
        found = self.kube.get(
            f"/api/v1/namespaces/{self.ns}/events",
            fieldSelector="involvedObject.kind=ScaleToZeroPolicy,involvedObject.name=ref",
        )
        return [e["reason"] for e in found.get("items") or []]


@pytest.fixture
def scene(
    criu: Any,  # a usable CRIU, or skip (fail with DORMANT_REQUIRE_CRIU=1): the pods need it
    kube_cluster: Cluster,
    pod_network: PodNetwork,
    kube: Rest,
    namespace: str,
    kubelet: FakeKubelet,
    tmp_path: Path,
) -> Iterator[Scene]:
    ns = namespace
    _crd(kube)
    exec_token, admin_token = secrets.token_hex(16), secrets.token_hex(16)
    kube.post(
        f"/api/v1/namespaces/{ns}/secrets",
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "dormant-exec"},
            "stringData": {"token": exec_token},
        },
    )
    for doc in _model_objects(ns):
        Manifests(kube).create(doc)
    policies = f"/apis/dormant.dev/v1alpha1/namespaces/{ns}/scaletozeropolicies"
    kube.post(
        policies,
        _policy(
            ns,
            idleAfter=0,  # never, until the test sets it
            startTimeout="5m",
            restoreTimeout="3m",
            wakeTimeout="5m",
            drainTimeout="1s",  # how long a pod's supervisor waits for quiet (the busy case)
        ),
    )
    port = free_port(pod_network.gateway)
    (tmp_path / "exec-token").write_text(exec_token)
    (tmp_path / "admin-token").write_text(admin_token)
    config = {
        "listen": f"{pod_network.gateway}:{port}",
        "state_dir": str(tmp_path / "activator"),
        "engine": "restart",
        "admin_token": admin_token,
        "reap_interval": 0.5,
        "log_level": "info",
        "runtime": "kubernetes",
        "kubernetes": {
            "namespace": ns,
            "kubeconfig": str(kube_cluster.kubeconfig),
            "advertise": f"{pod_network.gateway}:{port}",
            "control_token_file": str(tmp_path / "exec-token"),
            "poll_interval": 0.2,
            "route_timeout": "60s",
        },
    }
    (tmp_path / "activator.yaml").write_text(yaml.safe_dump(config))
    url = f"http://{pod_network.gateway}:{port}"
    activator = HostProcess(
        "activator", ["up", "-c", str(tmp_path / "activator.yaml")], tmp_path / "activator.log"
    )
    operator = HostProcess(
        "operator",
        [
            "operator",
            "--namespace",
            ns,
            "--activator",
            url,
            "--admin-token-file",
            str(tmp_path / "admin-token"),
            "--kubeconfig",
            str(kube_cluster.kubeconfig),
            "--interval",
            "1",
        ],
        tmp_path / "operator.log",
    )
    scene = Scene(kube, ns, kubelet, activator, operator, url, admin_token, kube_cluster, policies)
    try:
        yield scene
    finally:
        operator.stop()
        activator.stop()
        print(scene.activator.log(15))
        print(scene.operator.log(15))


def test_a_model_scales_to_zero_restores_with_its_kv_cache_and_survives_an_eviction(
    scene: Scene, tmp_path: Path
) -> None:
    s, t = scene, Timings(tmp_path / "timings.json")
    # -- the pod boots; the activator takes it over and routes to it ---------------------------
    first = s.until(
        "the model's first pod to be Ready (a boot)",
        lambda: ready_pod(s.kube, s.ns, MODEL_PODS),
        300,
    )
    first_ip = first["status"]["podIP"]
    s.until("the Endpoints to point at the pod", lambda: s.endpoints() == {f"{first_ip}:8000"})
    s.until("status Ready", lambda: s.status().get("phase") == "Ready")
    t.mark("booted, routed to the pod, status Ready")

    # -- a request through the activator is served by the pod ---------------------------------
    answer = s.complete(s.url, PROMPT)
    assert answer.status_code == 200, answer.text
    assert answer.json()["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert s.workload()["endpoint"] == f"http://{first_ip}:8000"
    # Warm traffic bypasses the activator: the Endpoints' address is the pod itself.
    (warm,) = s.endpoints()
    direct = s.complete(f"http://{warm}", "Hello")
    assert direct.status_code == 200 and "x-dormant-wake" not in direct.headers
    t.mark("served through the activator and directly")

    # -- a pod with a request in flight is not checkpointed: it serves on, routed again ------
    with socket.create_connection((first_ip, 8000), timeout=10) as busy:
        busy.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")  # not answered yet
        refused = s.admin("POST", "/-/workloads/ref/hibernate")
        assert refused.status_code == 500, refused.text
        assert "busy" in refused.text and "still serves" in refused.text, refused.text
    assert s.workload()["state"] == "ready" and s.replicas() == 1
    s.until("the Endpoints back at the pod", lambda: s.endpoints() == {f"{first_ip}:8000"})
    s.until("a CheckpointFailed Event", lambda: "CheckpointFailed" in s.events())
    t.mark("a busy pod was not checkpointed; routed back to it")

    # -- idle: checkpoint to the claim, replicas 0, Endpoints to the activator -----------------
    # A changed policy is picked up: the new workload takes the running pod over.
    s.kube.patch(f"{s.policies}/ref", {"spec": {"idleAfter": "3s"}})
    activator_address = s.url.removeprefix("http://")
    s.until("status Hibernated", lambda: s.status().get("phase") == "Hibernated", 180)
    assert s.replicas() == 0
    s.until("the pod to be gone", lambda: not pods(s.kube, s.ns, MODEL_PODS), 120)
    assert s.endpoints() == {activator_address}
    assert s.status()["route"] == "activator"
    snapshot = s.status()["lastSnapshot"]
    claim = s.kubelet.claim_dir(s.ns, "ref-model-state")
    assert (claim / "snapshots" / "server" / snapshot["id"] / "manifest.json").is_file(), snapshot
    assert s.kubelet.terminations[first["metadata"]["name"]].exit_code == 0
    t.mark(f"hibernated: snapshot {snapshot['id']} ({snapshot['bytes']} bytes)")

    # -- a request to the Service's address (the activator now) wakes it: a restore -----------
    (cold,) = s.endpoints()
    answer = s.complete(f"http://{cold}", PROMPT + "And then?")
    assert answer.status_code == 200, answer.text
    wake = answer.headers.get("x-dormant-wake", "")
    assert wake.startswith("restore; "), wake
    cached = answer.json()["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached > 0, "the KV cache did not survive the checkpoint"
    assert s.replicas() == 1
    # The activator answers once its own probe of the pod passed; the kubelet's readiness
    # probe (and so the pod's Ready condition) may follow a moment later.
    second = s.until("the woken pod to be Ready", lambda: ready_pod(s.kube, s.ns, MODEL_PODS), 30)
    assert second["metadata"]["name"] != first["metadata"]["name"]
    second_ip = second["status"]["podIP"]
    started = s.workload()["instance"]["started"]
    assert started["how"] == "restored" and started["snapshot"] == snapshot["id"], started
    s.until("the Endpoints to point at the new pod", lambda: s.endpoints() == {f"{second_ip}:8000"})
    t.mark(f"woken by a request: {wake}, cached_tokens {cached}")
    s.until("status Ready after the restore", lambda: s.status().get("phase") == "Ready")
    assert s.status()["lastWake"]["path"] == "restore"
    # Where the wake's seconds went, step by step, in order, within the wake's own duration.
    phases = s.status()["lastWake"]["phases"]
    steps = ["scaled", "scheduled", "running", "ready"]  # the API server sorts the keys
    assert sorted(phases) == sorted(steps), phases
    assert [phases[step] for step in steps] == sorted(phases.values()), phases
    assert phases["ready"] <= s.status()["lastWake"]["seconds"] + 0.5, s.status()["lastWake"]

    # -- a policy change (never idle now) is picked up; the pod is taken over as it is --------
    s.kube.patch(f"{s.policies}/ref", {"spec": {"idleAfter": 0}})
    s.until(
        "the activator to serve the new generation",
        lambda: s.workload()["idle_after_s"] == 0 and s.workload()["state"] == "ready",
    )
    assert s.workload()["endpoint"] == f"http://{second_ip}:8000"

    # -- eviction: the pod checkpoints before it exits, the replacement restores --------------
    name = second["metadata"]["name"]
    s.kube.post(
        f"/api/v1/namespaces/{s.ns}/pods/{name}/eviction",
        {
            "apiVersion": "policy/v1beta1",
            "kind": "Eviction",
            "metadata": {"name": name, "namespace": s.ns},
        },
    )
    s.until(
        "the Endpoints to leave the evicted pod",
        lambda: f"{second_ip}:8000" not in s.endpoints(),
        30,
    )
    t.mark("evicted; Endpoints left the pod")
    third = s.until(
        "the replacement pod to be Ready",
        lambda: ready_pod(s.kube, s.ns, MODEL_PODS, not_named=name),
        240,
    )
    term = s.until(
        "the evicted pod to be gone",
        lambda: (
            s.kubelet.terminations.get(name)
            if name not in {p["metadata"]["name"] for p in pods(s.kube, s.ns, MODEL_PODS)}
            else None
        ),
        120,
    )
    assert term.exit_code == 0 and not term.killed, term
    assert "committed" in s.kubelet.log(name), s.kubelet.log(name)[-2000:]
    third_ip = third["status"]["podIP"]
    s.until(
        "the Endpoints to point at the replacement",
        lambda: s.endpoints() == {f"{third_ip}:8000"},
        120,
    )
    # The operator routes to a pod only once the activator probed it, and the activator's
    # workload is ready a moment after asking for that route.
    view = s.until(
        "the activator's workload to be ready on the replacement",
        lambda: (w := s.workload())["state"] == "ready" and w["instance"] and w,
        30,
    )
    started = view["instance"]["started"]
    assert started["how"] == "restored" and started["snapshot"] != snapshot["id"], started
    answer = s.complete(s.url, PROMPT + "And then?")
    assert answer.status_code == 200, answer.text
    assert answer.json()["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
    t.mark(f"the replacement restored snapshot {started['snapshot']}")

    # -- kvCache: drop: the server drops it before the checkpoint (vLLM's sleep API) ---------
    s.kube.patch(f"{s.policies}/ref", {"spec": {"idleAfter": "2s", "kvCache": "drop"}})
    s.until("status Hibernated again", lambda: s.status().get("phase") == "Hibernated", 180)
    dropped = s.status()["lastSnapshot"]
    answer = s.complete(s.url, PROMPT + "And then?")
    assert answer.status_code == 200 and answer.headers["x-dormant-wake"].startswith("restore; ")
    assert answer.json()["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    s.kube.patch(f"{s.policies}/ref", {"spec": {"idleAfter": 0}})
    t.mark(f"kvCache drop: snapshot {dropped['id']} restored without the cache")

    # -- invalid policies: refused by the schema, or Degraded with the reason -----------------
    bad = _policy(s.ns, kvCache="sometimes")
    bad["metadata"]["name"] = "bad-schema"
    with pytest.raises(ApiException) as refused:
        s.kube.post(s.policies, bad)
    assert refused.value.status == 422 and "spec.kvCache" in (refused.value.body or "")
    clash = _policy(s.ns, service={"name": "other", "port": 8000})
    clash["metadata"]["name"] = "clash"
    lost = _policy(
        s.ns,
        models=["other-model"],
        targetRef={"kind": "Deployment", "name": "nope"},
        service={"name": "nope", "port": 8000},
    )
    lost["metadata"]["name"] = "lost"
    for doc in (clash, lost):
        s.kube.post(s.policies, doc)
    s.until("the clash to be Degraded", lambda: s.status("clash").get("phase") == "Degraded")
    assert "model 'ref-small' is already managed by policy 'ref'" in s.status("clash")["message"]
    s.until("the lost target to be Degraded", lambda: s.status("lost").get("phase") == "Degraded")
    assert s.status("lost")["message"] == "Deployment nope not found in namespace " + s.ns
    s.until("the valid policy to be Ready still", lambda: s.status().get("phase") == "Ready")
    reasons = s.events()
    assert {"Hibernated", "Restored", "Routed"} <= set(reasons), reasons
    t.mark("invalid policies refused or Degraded; the operator goes on")


def test_a_jobs_pod_evicted_mid_count_resumes_its_count(
    criu: Any,
    kube_cluster: Cluster,
    kube: Rest,
    namespace: str,
    kubelet: FakeKubelet,
    tmp_path: Path,
) -> None:
    ns, t = namespace, Timings(tmp_path / "timings.json")
    kube.post(
        f"/api/v1/namespaces/{ns}/persistentvolumeclaims",
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "count-state"},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
    )
    command = [
        "dormant",
        "exec",
        "--snapshots",
        "/var/lib/count/snapshots",
        "--port",
        "8000",
        "--grace",
        "50",
        "--done-on-exit",  # a Job's opt-in: its command completing ends the Job
        "--",
        "python",
        "tests/kube/counter_job.py",
        "--port",
        "{port}",
    ]
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "count"},
        "spec": {
            "backoffLimit": 2,
            "template": {
                "metadata": {"labels": {"app": "count"}},
                "spec": {
                    "restartPolicy": "Never",
                    "terminationGracePeriodSeconds": 60,
                    "containers": [
                        {
                            "name": "count",
                            "image": "dormant:0.1.0",
                            "command": command,
                            "volumeMounts": [{"name": "state", "mountPath": "/var/lib/count"}],
                            "readinessProbe": {
                                "httpGet": {"path": "/readyz", "port": 8081},
                                "periodSeconds": 1,
                            },
                        }
                    ],
                    "volumes": [
                        {"name": "state", "persistentVolumeClaim": {"claimName": "count-state"}}
                    ],
                },
            },
        },
    }
    kube.post(f"/apis/batch/v1/namespaces/{ns}/jobs", job)

    def counted(pod: str) -> list[int]:
        return [
            int(line.rsplit(" ", 1)[1])
            for line in kubelet.log(pod).splitlines()
            if "] count " in line or line.startswith("count ")
        ]

    first = wait_until(
        "the Job's pod to count past 8",
        lambda: next(
            (p for p in pods(kube, ns, "count") if len(counted(p["metadata"]["name"])) > 8), None
        ),
        timeout=180,
        diagnose=lambda: str(kubelet.errors),
    )
    name = first["metadata"]["name"]
    t.mark("counting")
    kube.post(
        f"/api/v1/namespaces/{ns}/pods/{name}/eviction",
        {
            "apiVersion": "policy/v1beta1",
            "kind": "Eviction",
            "metadata": {"name": name, "namespace": ns},
        },
    )
    term = wait_until(
        "the evicted pod to be gone",
        lambda: (
            kubelet.terminations.get(name)
            if name not in {p["metadata"]["name"] for p in pods(kube, ns, "count")}
            else None
        ),
        timeout=120,
    )
    assert term.exit_code == 0 and not term.killed, kubelet.log(name)[-2000:]
    before = counted(name)
    t.mark(f"evicted at count {before[-1]}, checkpointed")
    replacement = wait_until(
        "the replacement to count on",
        lambda: next(
            (
                p
                for p in pods(kube, ns, "count")
                if p["metadata"]["name"] != name and len(counted(p["metadata"]["name"])) >= 3
            ),
            None,
        ),
        timeout=180,
        diagnose=lambda: str(kubelet.errors),
    )
    after = counted(replacement["metadata"]["name"])
    # From the checkpoint, not from 1: the next number (a line still in the old pod's pipe
    # when it exited may be missing from its log).
    assert before[-1] < after[0] <= before[-1] + 3, (before[-5:], after[:5])
    assert after == list(range(after[0], after[0] + len(after)))
    assert "restored from" in kubelet.log(replacement["metadata"]["name"])
    t.mark(f"the replacement resumed at {after[0]}")
    kube.delete(
        f"/apis/batch/v1/namespaces/{ns}/jobs/count",
        {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"},
    )
