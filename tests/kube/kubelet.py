"""A FAKE kubelet (and scheduler) for the `kube` tests: no real kubelet can run on these machines.

There is no container runtime, no cgroup delegation and no network plugin here, so the suite
runs a real API server and controller manager (tests/kube/cluster.py) and this class plays
the node. It does what the control plane sees a kubelet do, with real processes:

* **Node**: registers a Node object (Ready, capacity from `capacity`) and keeps it.
* **Scheduling**: binds (a Binding) each pending pod of the namespaces it serves to its node,
  unless the node is cordoned (`spec.unschedulable`). Resources, affinity, taints and
  nodeSelector are ignored. Several FakeKubelets may serve one namespace (a drain test moves
  pods from one node to another); the first Binding wins.
* **Running**: the pod's single container's `command + args` (with Kubernetes' `$(VAR)`
  expansion) run as a local process in its own session, cwd = the repository root (the
  "image" is this checkout), PATH starting with this virtualenv's bin. The env is the
  container's `env` and `envFrom` (`value`, `fieldRef` for metadata.name/namespace/uid,
  labels/annotations, spec.nodeName/serviceAccountName, status.podIP/hostIP;
  `configMapKeyRef`, `secretKeyRef`) plus HOSTNAME and KUBERNETES_SERVICE_HOST/PORT.
  Init containers, sidecars and `resourceFieldRef` are refused with a Failed pod and a
  message. Output goes to `logs/NS_POD_UID.log` under `root`.
* **Pod network**: each pod gets its own network namespace on the session's bridge
  (tests/kube/network.py) with its own IP (10.244.N.x), kept across container restarts; the
  container's process runs in it (`nsenter --net`), so it binds 0.0.0.0 or its pod IP (the
  downward API's `fieldRef: status.podIP`) as in a real pod, and its loopback is its own.
  `status.podIP`/`podIPs` carry it; `hostIP` and the node's InternalIP are the bridge's
  gateway address, where pods reach the host (the API server listens there:
  KUBERNETES_SERVICE_HOST/PORT say so).
* **Volumes**: a `persistentVolumeClaim` volume is the directory `root/claims/NS/CLAIM`,
  the same for every pod that mounts the claim (that is what lets a replacement pod restore
  from it); the PVC object must exist (its phase is not checked: nothing provisions volumes
  here). `emptyDir`, `configMap` and `secret` volumes are per-pod directories. Nothing is
  mounted: **mount paths are rewritten** — every occurrence of a volumeMount's `mountPath`
  (as a path prefix) in the command, args, env values, workingDir and configMap/secret file
  contents is replaced by the local directory (`subPath` honoured). hostPath and other
  volume types are refused (Failed pod with a message).
* **Status**: phase Running with podIP, startTime, containerStatuses and the conditions
  PodScheduled, Initialized, ContainersReady, Ready. Readiness follows the container's
  `readinessProbe` (httpGet against podIP:port, tcpSocket, exec in the pod's network
  namespace; initialDelaySeconds,
  periodSeconds, timeoutSeconds, success/failureThreshold honoured); without one the pod is
  Ready while the process runs. Liveness and startup probes are not run.
* **Exit**: with restartPolicy Always (Deployments, StatefulSets), or OnFailure and a non-zero
  exit, the process is restarted after a back-off (0.5 s doubling to 10 s) and restartCount
  grows; otherwise the phase becomes Succeeded (exit 0) or Failed, which completes Jobs.
* **Deletion** (scale-down, `kubectl delete`, the Eviction API, namespace deletion): once the
  pod has a deletionTimestamp, SIGTERM goes to the container's main process; after it exits,
  or after `metadata.deletionGracePeriodSeconds` (from the pod's
  terminationGracePeriodSeconds or the caller's override), SIGKILL goes to the process's whole
  session (as tearing down a container's PID namespace would), then the pod is deleted with
  grace 0. preStop hooks are not run. `terminations[POD]` records what happened.

One background thread polls the API every `interval` seconds (no watch: a poll is simpler to
stop and cannot miss a window); `stop()` ends the thread and kills what it started.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from kubernetes.client import ApiClient

from .network import PodAddress, PodNetwork
from .podspec import ContainerPlan, NotYet, PodRefused, plan_container
from .podstatus import ContainerFacts, pod_status
from .probes import Readiness
from .rest import ApiException, Rest

__all__ = ["FakeKubelet", "PodRefused", "Termination"]

VENV_BIN = Path(sys.executable).parent
_BACKOFF_START, _BACKOFF_MAX = 0.5, 10.0


@dataclass
class Termination:
    """How a pod's process ended once its pod was deleted."""

    sigterm_at: float | None  # monotonic time SIGTERM was sent (None: the process had exited)
    grace: float  # seconds it was given
    exit_code: int | None = None  # as Popen reports it: -15 = died of SIGTERM, -9 = SIGKILL
    killed: bool = False  # True if the grace period ran out and SIGKILL was needed


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class _Run:
    """What the fake kubelet knows about one pod on its node."""

    uid: str
    namespace: str
    name: str
    pod: dict[str, Any]
    address: PodAddress
    log: Path
    scratch: Path
    started: str = field(default_factory=_now)
    plan: ContainerPlan | None = None
    readiness: Readiness | None = None
    popen: subprocess.Popen[bytes] | None = None
    container_started: str = ""
    restarts: int = 0
    backoff: float = _BACKOFF_START
    restart_at: float | None = None
    last_exit: tuple[int, str, str] | None = None  # Popen code, started, finished
    phase: str = "Pending"
    message: str = ""
    was_ready: bool = False
    ready_since: str = field(default_factory=_now)
    termination: Termination | None = None
    deadline: float | None = None
    reported: dict[str, Any] | None = None

    @property
    def ip(self) -> str:
        return self.address.ip

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None


class FakeKubelet:
    """Plays the node `node` for the pods of `namespaces` (all namespaces if None)."""

    def __init__(
        self,
        api: ApiClient,
        root: Path,
        *,
        network: PodNetwork,
        node: str = "fake-node",
        namespaces: Iterable[str] | None = None,
        interval: float = 0.2,
        capacity: dict[str, str] | None = None,
    ) -> None:
        self.rest = Rest(api)
        self.root = root
        self.network = network
        self.node = node
        self.namespaces = set(namespaces) if namespaces is not None else None
        self.interval = interval
        self.capacity = {"cpu": "2", "memory": "24Gi", "pods": "110", **(capacity or {})}
        server = urlparse(api.configuration.host)
        self._base_env = {
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
            # the "image" is this checkout: its code, not wherever the virtualenv points
            "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
            "HOME": os.environ.get("HOME", "/root"),
            "LANG": "C.UTF-8",
            "KUBERNETES_SERVICE_HOST": server.hostname or network.gateway,
            "KUBERNETES_SERVICE_PORT": str(server.port or 443),
        }
        self.terminations: dict[str, Termination] = {}
        self.errors: list[str] = []  # unexpected loop errors, for the test's failure message
        self._runs: dict[str, _Run] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- public ----------------------------------------------------------------------------
    def start(self) -> FakeKubelet:
        for sub in ("claims", "logs", "pods"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._register_node()
        self._thread = threading.Thread(target=self._loop, name=f"kubelet-{self.node}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop polling, SIGTERM every process still running, SIGKILL after `timeout`, then
        remove the node and its pods (what the pod GC does for a deleted node), so that their
        namespaces can be deleted."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout + 30)
        with self._lock:
            runs = list(self._runs.values())
        for run in runs:
            if run.running and run.popen is not None:
                with contextlib.suppress(ProcessLookupError):
                    run.popen.send_signal(signal.SIGTERM)
        end = time.monotonic() + timeout
        for run in runs:
            self._reap(run, max(0.0, end - time.monotonic()))
            self._forget(run)
        with contextlib.suppress(ApiException):
            mine = self.rest.get("/api/v1/pods", fieldSelector=f"spec.nodeName={self.node}")
            for pod in mine.get("items", []):
                if self._serves(pod):
                    meta = pod["metadata"]
                    self._delete_now(meta["namespace"], meta["name"], meta["uid"])
        with contextlib.suppress(ApiException):
            self.rest.delete(f"/api/v1/nodes/{self.node}")

    def claim_dir(self, namespace: str, claim: str) -> Path:
        """The local directory that stands for PersistentVolumeClaim NAMESPACE/CLAIM."""
        return self.root / "claims" / namespace / claim

    def log(self, pod: str) -> str:
        """Everything the pod's process(es) printed (the newest pod of that name)."""
        paths = sorted(self.root.glob(f"logs/*_{pod}_*.log"), key=lambda p: p.stat().st_mtime)
        return paths[-1].read_text(errors="replace") if paths else ""

    def pod_ip(self, namespace: str, pod: str) -> str | None:
        with self._lock:
            for run in self._runs.values():
                if (run.namespace, run.name) == (namespace, pod):
                    return run.ip
        return None

    def set_unschedulable(self, value: bool) -> None:
        """Cordon (True) or uncordon the node, as `kubectl cordon` does."""
        self.rest.patch(f"/api/v1/nodes/{self.node}", {"spec": {"unschedulable": value}})

    # -- node ------------------------------------------------------------------------------
    def _register_node(self) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.node,
                "labels": {
                    "kubernetes.io/hostname": self.node,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "dormant.dev/fake-kubelet": "true",
                },
            },
        }
        try:
            self.rest.post("/api/v1/nodes", body)
        except ApiException as exc:
            if exc.status != 409:
                raise
        now = _now()
        ready = {
            "type": "Ready",
            "status": "True",
            "reason": "KubeletReady",
            "message": "fake kubelet (tests/kube/kubelet.py)",
            "lastHeartbeatTime": now,
            "lastTransitionTime": now,
        }
        info = {
            "architecture": "amd64",
            "bootID": "fake",
            "containerRuntimeVersion": "fake://0",
            "kernelVersion": os.uname().release,
            "kubeProxyVersion": "none",
            "kubeletVersion": "fake",
            "machineID": "fake",
            "operatingSystem": "linux",
            "osImage": "this checkout",
            "systemUUID": "fake",
        }
        addresses = [
            {"type": "InternalIP", "address": self.network.gateway},
            {"type": "Hostname", "address": self.node},
        ]
        status = {
            "capacity": self.capacity,
            "allocatable": self.capacity,
            "addresses": addresses,
            "conditions": [ready],
            "nodeInfo": info,
        }
        self.rest.patch(f"/api/v1/nodes/{self.node}/status", {"status": status})

    # -- loop ------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._tick()
            except Exception as exc:  # keep playing the node; the test sees .errors
                if len(self.errors) < 100:
                    self.errors.append(f"{type(exc).__name__}: {exc}")
            self._stop.wait(self.interval)

    def _serves(self, pod: dict[str, Any]) -> bool:
        return self.namespaces is None or pod["metadata"]["namespace"] in self.namespaces

    def _tick(self) -> None:
        node = self.rest.get(f"/api/v1/nodes/{self.node}")
        if not node.get("spec", {}).get("unschedulable"):
            pending = self.rest.get("/api/v1/pods", fieldSelector="spec.nodeName=")
            for pod in pending.get("items", []):
                if self._serves(pod) and not pod["metadata"].get("deletionTimestamp"):
                    self._bind(pod)
        mine = self.rest.get("/api/v1/pods", fieldSelector=f"spec.nodeName={self.node}")
        pods = {p["metadata"]["uid"]: p for p in mine.get("items", []) if self._serves(p)}
        for uid in [uid for uid in self._runs if uid not in pods]:
            # Deleted with grace 0 by someone else: the container just dies.
            gone = self._runs[uid]
            self._kill(gone)
            self._forget(gone)
        for uid, pod in pods.items():
            run = self._runs.get(uid)
            if run is None:
                if pod["metadata"].get("deletionTimestamp"):
                    self._delete_now(pod["metadata"]["namespace"], pod["metadata"]["name"], uid)
                elif pod.get("status", {}).get("phase") not in ("Succeeded", "Failed"):
                    self._admit(pod)
                continue
            run.pod = pod
            if pod["metadata"].get("deletionTimestamp"):
                self._terminate(run)
                continue
            self._supervise(run)
            if run.readiness is not None and run.plan is not None and run.running:
                run.readiness.tick(time.monotonic(), run.address, run.plan.env, run.plan.cwd)
            self._report(run)

    def _bind(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        body = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.node},
        }
        path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/binding"
        try:
            self.rest.post(path, body)
        except ApiException as exc:
            if exc.status not in (404, 409):  # gone, or another node bound it first
                raise

    # -- start -----------------------------------------------------------------------------
    def _admit(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        address = self.network.take()  # NetworkUnavailable: a loop error the test sees
        run = _Run(
            uid=uid,
            namespace=ns,
            name=name,
            pod=pod,
            address=address,
            log=self.root / "logs" / f"{ns}_{name}_{uid[:8]}.log",
            scratch=self.root / "pods" / uid,
        )
        try:
            run.plan = plan_container(
                self.rest,
                pod,
                ip=run.ip,
                host_ip=self.network.gateway,
                node=self.node,
                scratch=run.scratch,
                claim_dir=self.claim_dir,
                base_env={**self._base_env, "HOSTNAME": name},
            )
            run.readiness = Readiness(
                run.plan.container.get("readinessProbe"), run.plan.container, run.plan.rewrite
            )
        except NotYet:  # e.g. the claim does not exist yet: try again next tick
            self.network.give(run.address)
            shutil.rmtree(run.scratch, ignore_errors=True)
            return
        except PodRefused as exc:
            run.phase, run.message = "Failed", f"fake kubelet: {exc}"
        with self._lock:
            self._runs[uid] = run
        if run.plan is not None and run.phase != "Failed":
            self._spawn(run)
        self._report(run)

    def _spawn(self, run: _Run) -> None:
        assert run.plan is not None and run.readiness is not None
        with run.log.open("ab") as out:
            out.write(f"--- fake kubelet: start {run.plan.argv!r} on {run.ip}\n".encode())
            out.flush()
            try:
                run.popen = subprocess.Popen(
                    run.address.wrap(run.plan.argv),
                    env=run.plan.env,
                    cwd=run.plan.cwd,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as exc:
                out.write(f"--- fake kubelet: cannot start: {exc}\n".encode())
                run.last_exit = (128, _now(), _now())
                self._exited(run, 128)
                return
        run.container_started = _now()
        run.phase = "Running"
        run.readiness.started(time.monotonic())

    # -- running ---------------------------------------------------------------------------
    def _supervise(self, run: _Run) -> None:
        if run.restart_at is not None and time.monotonic() >= run.restart_at:
            run.restart_at = None
            run.restarts += 1
            self._spawn(run)
            return
        if run.popen is None:
            return
        code = run.popen.poll()
        if code is None:
            return
        self._kill_session(run)
        run.popen = None
        run.last_exit = (code, run.container_started, _now())
        self._exited(run, code)

    def _exited(self, run: _Run, code: int) -> None:
        policy = run.pod["spec"].get("restartPolicy", "Always")
        if policy == "Always" or (policy == "OnFailure" and code != 0):
            run.restart_at = time.monotonic() + run.backoff
            run.backoff = min(_BACKOFF_MAX, run.backoff * 2)
        else:
            run.phase = "Succeeded" if code == 0 else "Failed"

    def _report(self, run: _Run) -> None:
        """Patch the pod's status when it changed (Ready's transition time kept)."""
        running = run.running
        ready = running and run.readiness is not None and run.readiness.ready
        if ready != run.was_ready:
            run.was_ready, run.ready_since = ready, _now()
        container = run.pod["spec"]["containers"][0] if run.pod["spec"].get("containers") else {}
        status = pod_status(
            ContainerFacts(
                uid=run.uid,
                ip=run.ip,
                host_ip=self.network.gateway,
                phase=run.phase,
                message=run.message,
                name=container.get("name", "?"),
                image=container.get("image", ""),
                running=running,
                ready=ready,
                restarts=run.restarts,
                started=run.started,
                container_started=run.container_started,
                ready_since=run.ready_since,
                last_exit=run.last_exit,
                backing_off=run.restart_at is not None,
            )
        )
        if status == run.reported:
            return
        path = f"/api/v1/namespaces/{run.namespace}/pods/{run.name}/status"
        try:
            self.rest.patch(path, {"status": status})
        except ApiException as exc:
            if exc.status in (404, 409):
                return
            raise
        run.reported = status

    # -- stop ------------------------------------------------------------------------------
    def _terminate(self, run: _Run) -> None:
        """SIGTERM once; when the process is gone or the grace period is over, SIGKILL what
        is left and delete the pod for good."""
        if run.termination is None:
            meta, spec = run.pod["metadata"], run.pod["spec"]
            grace = meta.get("deletionGracePeriodSeconds")
            if grace is None:
                grace = spec.get("terminationGracePeriodSeconds", 30)
            alive = run.running
            now = time.monotonic()
            run.termination = Termination(sigterm_at=now if alive else None, grace=grace)
            run.deadline = now + float(grace)
            run.restart_at = None
            if alive and run.popen is not None:
                with contextlib.suppress(ProcessLookupError):
                    run.popen.send_signal(signal.SIGTERM)
            with self._lock:
                self.terminations[run.name] = run.termination
        assert run.deadline is not None
        if run.running:
            if time.monotonic() < run.deadline:
                return
            run.termination.killed = True
        self._kill(run)
        self._delete_now(run.namespace, run.name, run.uid)
        self._forget(run)

    def _kill(self, run: _Run) -> None:
        """SIGKILL the whole session (the container's PID namespace going away) and reap."""
        if run.popen is not None:
            self._kill_session(run)
            code = self._reap(run, 5.0)
            if run.termination is not None:
                run.termination.exit_code = code
        elif run.termination is not None and run.last_exit is not None:
            run.termination.exit_code = run.last_exit[0]

    def _kill_session(self, run: _Run) -> None:
        """SIGKILL what is left of the process's session (its children, orphans)."""
        if run.popen is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(run.popen.pid, signal.SIGKILL)

    def _reap(self, run: _Run, timeout: float) -> int | None:
        if run.popen is None:
            return None
        try:
            return run.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self._kill_session(run)
            return run.popen.wait(5)

    def _delete_now(self, namespace: str, name: str, uid: str) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "gracePeriodSeconds": 0,
            "preconditions": {"uid": uid},
        }
        try:
            self.rest.delete(f"/api/v1/namespaces/{namespace}/pods/{name}", body)
        except ApiException as exc:
            if exc.status not in (404, 409):
                raise

    def _forget(self, run: _Run) -> None:
        with self._lock:
            self._runs.pop(run.uid, None)
        self.network.give(run.address)
        shutil.rmtree(run.scratch, ignore_errors=True)
