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
* **Pod IP**: each pod gets its own loopback address 127.0.N.x (N fixed per process), kept
  across container restarts and handed to the process only as the downward API would
  (`fieldRef: status.podIP`, e.g. env POD_IP); the process must bind that address.
  `status.podIP`/`podIPs` carry it; `hostIP` is 127.0.0.1.
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
  `readinessProbe` (httpGet against podIP:port, tcpSocket, exec; initialDelaySeconds,
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

import base64
import contextlib
import datetime as dt
import os
import random
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from kubernetes.client import ApiClient

from .rest import ApiException, Rest

__all__ = ["FakeKubelet", "PodRefused", "Termination"]

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent

_BACKOFF_START, _BACKOFF_MAX = 0.5, 10.0
_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


class PodRefused(Exception):
    """The pod uses something this fake cannot do; it becomes Failed with this message."""


@dataclass
class Termination:
    """How a pod's process ended once its pod was deleted."""

    sigterm_at: float | None  # monotonic time SIGTERM was sent (None: the process had exited)
    grace: float  # seconds it was given
    exit_code: int | None = None  # as Popen reports it: -15 = died of SIGTERM, -9 = SIGKILL
    killed: bool = False  # True if the grace period ran out and SIGKILL was needed


class _IPs:
    """Loopback pod addresses 127.0.N.2-254, N random per test process; freed addresses are
    reused last (sockets in TIME_WAIT)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        third = random.randint(10, 250)
        self._free = [f"127.0.{third}.{i}" for i in range(2, 255)]

    def take(self) -> str:
        with self._lock:
            if not self._free:
                raise PodRefused("no free loopback pod IP left (253 pods at once)")
            return self._free.pop(0)

    def give(self, ip: str) -> None:
        with self._lock:
            self._free.append(ip)


_IP_POOL = _IPs()


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class _Run:
    """What the fake kubelet knows about one pod on its node."""

    uid: str
    namespace: str
    name: str
    pod: dict[str, Any]
    ip: str
    log: Path
    scratch: Path
    started: str = field(default_factory=_now)
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path = ROOT
    popen: subprocess.Popen[bytes] | None = None
    container_started: str = ""
    restarts: int = 0
    backoff: float = _BACKOFF_START
    restart_at: float | None = None
    last_exit: tuple[int, str, str] | None = None  # code, started, finished
    phase: str = "Pending"
    message: str = ""
    ready: bool = False
    ready_since: str = field(default_factory=_now)
    probe: dict[str, Any] | None = None
    next_probe: float = 0.0
    successes: int = 0
    failures: int = 0
    termination: Termination | None = None
    deadline: float | None = None
    last_status: dict[str, Any] | None = None


class FakeKubelet:
    """Plays the node `node` for the pods of `namespaces` (all namespaces if None)."""

    def __init__(
        self,
        api: ApiClient,
        root: Path,
        *,
        node: str = "fake-node",
        namespaces: Iterable[str] | None = None,
        interval: float = 0.2,
        capacity: dict[str, str] | None = None,
        api_server: str | None = None,
    ) -> None:
        self.rest = Rest(api)
        self.root = root
        self.node = node
        self.namespaces = set(namespaces) if namespaces is not None else None
        self.interval = interval
        self.capacity = {"cpu": "2", "memory": "24Gi", "pods": "110", **(capacity or {})}
        server = urlparse(api_server or api.configuration.host)
        self._service_env = {
            "KUBERNETES_SERVICE_HOST": server.hostname or "127.0.0.1",
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
        """Stop polling, SIGTERM every process still running, SIGKILL after `timeout`."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout + 30)
        with self._lock:
            runs = list(self._runs.values())
        for run in runs:
            if run.popen is not None and run.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    run.popen.send_signal(signal.SIGTERM)
        end = time.monotonic() + timeout
        for run in runs:
            self._reap(run, max(0.0, end - time.monotonic()))
            _IP_POOL.give(run.ip)
        self._runs.clear()
        # The node goes away with its pods (what the pod GC does for a deleted node), so that
        # their namespaces can be deleted.
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
        self.rest.patch(
            f"/api/v1/nodes/{self.node}/status",
            {
                "status": {
                    "capacity": self.capacity,
                    "allocatable": self.capacity,
                    "addresses": [
                        {"type": "InternalIP", "address": "127.0.0.1"},
                        {"type": "Hostname", "address": self.node},
                    ],
                    "conditions": [
                        {
                            "type": "Ready",
                            "status": "True",
                            "reason": "KubeletReady",
                            "message": "fake kubelet (tests/kube/kubelet.py)",
                            "lastHeartbeatTime": now,
                            "lastTransitionTime": now,
                        }
                    ],
                    "nodeInfo": {
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
                    },
                }
            },
        )

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
        with self._lock:
            gone = [uid for uid in self._runs if uid not in pods]
        for uid in gone:  # deleted with grace 0 by someone else: the container just dies
            dead = self._runs[uid]
            self._kill(dead)
            self._forget(dead)
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
            self._probe(run)
            self._report(run)

    def _bind(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        body = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.node},
        }
        try:
            self.rest.post(
                f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/binding", body
            )
        except ApiException as exc:
            if exc.status not in (404, 409):  # gone, or another node bound it first
                raise

    # -- start -----------------------------------------------------------------------------
    def _admit(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        ip = _IP_POOL.take()
        run = _Run(
            uid=uid,
            namespace=ns,
            name=name,
            pod=pod,
            ip=ip,
            log=self.root / "logs" / f"{ns}_{name}_{uid[:8]}.log",
            scratch=self.root / "pods" / uid,
        )
        with self._lock:
            self._runs[uid] = run
        try:
            self._prepare(run)
        except PodRefused as exc:
            run.phase, run.message = "Failed", f"fake kubelet: {exc}"
            self._report(run)
            return
        except _NotYet as exc:  # e.g. the PVC does not exist yet: try again next tick
            with self._lock:
                del self._runs[uid]
            _IP_POOL.give(ip)
            run.message = str(exc)
            return
        self._spawn(run)
        self._report(run)

    def _prepare(self, run: _Run) -> None:
        spec = run.pod["spec"]
        if spec.get("initContainers"):
            raise PodRefused("init containers are not supported")
        containers = spec.get("containers", [])
        if len(containers) != 1:
            raise PodRefused(f"exactly one container is supported, the pod has {len(containers)}")
        c = containers[0]
        if not c.get("command"):
            raise PodRefused(
                f"container {c['name']!r} has no command: this fake has no image entrypoints"
            )
        mounts = self._volumes(run, c)
        env = self._env(run, c)
        rewrite = _Rewriter(mounts)
        env = {k: rewrite(v) for k, v in env.items()}
        argv = [rewrite(_expand(a, env)) for a in [*c["command"], *c.get("args", [])]]
        cwd = Path(rewrite(c["workingDir"])) if c.get("workingDir") else ROOT
        if not cwd.is_dir():
            raise PodRefused(f"workingDir {c['workingDir']!r} is not a mounted volume here")
        base = {
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": os.environ.get("HOME", "/root"),
            "LANG": "C.UTF-8",
            "HOSTNAME": run.name,
            **self._service_env,
        }
        run.env, run.argv, run.cwd = {**base, **env}, argv, cwd
        run.probe = c.get("readinessProbe")
        if run.probe:
            run.probe = _resolve_probe(run.probe, c, rewrite)
            run.next_probe = time.monotonic() + float(run.probe.get("initialDelaySeconds", 0))

    def _volumes(self, run: _Run, container: dict[str, Any]) -> dict[str, Path]:
        """mountPath -> local directory (or file, for subPath) for each volumeMount."""
        local: dict[str, Path] = {}
        for vol in run.pod["spec"].get("volumes", []):
            name = vol["name"]
            if "persistentVolumeClaim" in vol:
                claim = vol["persistentVolumeClaim"]["claimName"]
                try:
                    self.rest.get(
                        f"/api/v1/namespaces/{run.namespace}/persistentvolumeclaims/{claim}"
                    )
                except ApiException as exc:
                    if exc.status == 404:
                        raise _NotYet(f"PersistentVolumeClaim {claim!r} not found") from exc
                    raise
                path = self.claim_dir(run.namespace, claim)
            elif "emptyDir" in vol:
                path = run.scratch / "volumes" / name
            elif "configMap" in vol or "secret" in vol:
                path = run.scratch / "volumes" / name  # files written below, once mounts are known
            else:
                kind = next((k for k in vol if k != "name"), "?")
                raise PodRefused(f"volume {name!r}: {kind} volumes are not supported")
            path.mkdir(parents=True, exist_ok=True)
            local[name] = path
        mounts: dict[str, Path] = {}
        for m in container.get("volumeMounts", []):
            if m["name"] not in local:
                raise PodRefused(f"volumeMount {m['mountPath']!r} names no volume {m['name']!r}")
            target = local[m["name"]]
            if m.get("subPath"):
                target = target / m["subPath"]
            mounts[m["mountPath"].rstrip("/") or "/"] = target
        rewrite = _Rewriter(mounts)
        for vol in run.pod["spec"].get("volumes", []):
            if "configMap" in vol or "secret" in vol:
                self._project(run, vol, local[vol["name"]], rewrite)
        return mounts

    def _project(self, run: _Run, vol: dict[str, Any], path: Path, rewrite: _Rewriter) -> None:
        if "configMap" in vol:
            src = vol["configMap"]
            obj = self._optional(f"configmaps/{src['name']}", run, src.get("optional", False))
            data = {k: v.encode() for k, v in (obj.get("data") or {}).items()}
            data |= {k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()}
        else:
            src = vol["secret"]
            obj = self._optional(f"secrets/{src['secretName']}", run, src.get("optional", False))
            data = {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
        items = src.get("items") or [{"key": k, "path": k} for k in data]
        for item in items:
            if item["key"] not in data:
                raise PodRefused(f"volume {vol['name']!r}: no key {item['key']!r}")
            dest = path / item["path"]
            dest.parent.mkdir(parents=True, exist_ok=True)
            raw = data[item["key"]]
            with contextlib.suppress(UnicodeDecodeError):
                raw = rewrite(raw.decode()).encode()
            dest.write_bytes(raw)

    def _optional(self, what: str, run: _Run, optional: bool) -> dict[str, Any]:
        try:
            return self.rest.get(f"/api/v1/namespaces/{run.namespace}/{what}")
        except ApiException as exc:
            if exc.status == 404:
                if optional:
                    return {}
                raise _NotYet(f"{what} not found") from exc
            raise

    def _env(self, run: _Run, c: dict[str, Any]) -> dict[str, str]:
        env: dict[str, str] = {}
        for src in c.get("envFrom", []):
            prefix = src.get("prefix", "")
            if "configMapRef" in src:
                ref = src["configMapRef"]
                obj = self._optional(f"configmaps/{ref['name']}", run, ref.get("optional", False))
                env |= {prefix + k: v for k, v in (obj.get("data") or {}).items()}
            elif "secretRef" in src:
                ref = src["secretRef"]
                obj = self._optional(f"secrets/{ref['name']}", run, ref.get("optional", False))
                env |= {
                    prefix + k: base64.b64decode(v).decode()
                    for k, v in (obj.get("data") or {}).items()
                }
        for var in c.get("env", []):
            name = var["name"]
            if "valueFrom" not in var:
                env[name] = _expand(var.get("value", ""), env)
                continue
            vf = var["valueFrom"]
            if "fieldRef" in vf:
                env[name] = self._field(run, vf["fieldRef"]["fieldPath"])
            elif "configMapKeyRef" in vf or "secretKeyRef" in vf:
                secret = "secretKeyRef" in vf
                ref = vf["secretKeyRef" if secret else "configMapKeyRef"]
                obj = self._optional(
                    f"{'secrets' if secret else 'configmaps'}/{ref['name']}",
                    run,
                    ref.get("optional", False),
                )
                value = (obj.get("data") or {}).get(ref["key"])
                if value is None:
                    if ref.get("optional"):
                        continue
                    raise _NotYet(f"key {ref['key']!r} not in {ref['name']!r}")
                env[name] = base64.b64decode(value).decode() if secret else value
            else:
                raise PodRefused(f"env {name}: only fieldRef/configMapKeyRef/secretKeyRef")
        return env

    def _field(self, run: _Run, path: str) -> str:
        meta, spec = run.pod["metadata"], run.pod["spec"]
        simple = {
            "metadata.name": meta["name"],
            "metadata.namespace": meta["namespace"],
            "metadata.uid": meta["uid"],
            "spec.nodeName": self.node,
            "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
            "status.podIP": run.ip,
            "status.hostIP": "127.0.0.1",
        }
        if path in simple:
            return simple[path]
        m = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
        if m:
            return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
        raise PodRefused(f"fieldRef {path!r} is not supported")

    def _spawn(self, run: _Run) -> None:
        run.log.parent.mkdir(parents=True, exist_ok=True)
        with run.log.open("ab") as out:
            out.write(f"--- fake kubelet: start {run.argv!r} on {run.ip}\n".encode())
            out.flush()
            try:
                run.popen = subprocess.Popen(
                    run.argv,
                    env=run.env,
                    cwd=run.cwd,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as exc:
                run.popen = None
                run.last_exit = (128, _now(), _now())
                out.write(f"--- fake kubelet: cannot start: {exc}\n".encode())
                self._exited(run, 128)
                return
        run.container_started = _now()
        run.phase = "Running"
        run.ready = False
        run.successes = run.failures = 0

    # -- running ---------------------------------------------------------------------------
    def _supervise(self, run: _Run) -> None:
        if run.restart_at is not None and time.monotonic() >= run.restart_at:
            run.restart_at = None
            run.restarts += 1
            self._spawn(run)
            if run.probe:
                run.next_probe = time.monotonic() + float(run.probe.get("initialDelaySeconds", 0))
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
        run.ready = False
        policy = run.pod["spec"].get("restartPolicy", "Always")
        if policy == "Always" or (policy == "OnFailure" and code != 0):
            run.restart_at = time.monotonic() + run.backoff
            run.backoff = min(_BACKOFF_MAX, run.backoff * 2)
        else:
            run.phase = "Succeeded" if code == 0 else "Failed"

    def _probe(self, run: _Run) -> None:
        if run.phase != "Running" or run.popen is None:
            return
        if not run.probe:
            run.ready = True
            return
        now = time.monotonic()
        if now < run.next_probe:
            return
        p = run.probe
        run.next_probe = now + float(p.get("periodSeconds", 10))
        ok = _run_probe(p, run)
        if ok:
            run.successes, run.failures = run.successes + 1, 0
            if run.successes >= int(p.get("successThreshold", 1)):
                run.ready = True
        else:
            run.failures, run.successes = run.failures + 1, 0
            if run.failures >= int(p.get("failureThreshold", 3)):
                run.ready = False

    def _report(self, run: _Run) -> None:
        c = run.pod["spec"]["containers"][0]
        now = _now()
        running = run.popen is not None and run.popen.poll() is None
        if running:
            state: dict[str, Any] = {"running": {"startedAt": run.container_started}}
        elif run.last_exit is not None and run.restart_at is None:
            code, started, finished = run.last_exit
            state = {"terminated": _terminated(code, started, finished)}
        elif run.restart_at is not None:
            state = {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off restarting"}}
        else:
            state = {"waiting": {"reason": "ContainerCreating", "message": run.message}}
        last_state: dict[str, Any] = {}
        if run.last_exit is not None and (running or run.restart_at is not None):
            last_state = {"terminated": _terminated(*run.last_exit)}
        ready = run.ready and running
        status_ready = "True" if ready else "False"
        if run.last_status is None or _cond(run.last_status, "Ready") != status_ready:
            run.ready_since = now
        conditions = [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": run.started},
            {"type": "Initialized", "status": "True", "lastTransitionTime": run.started},
            {
                "type": "ContainersReady",
                "status": status_ready,
                "lastTransitionTime": run.ready_since,
            },
            {"type": "Ready", "status": status_ready, "lastTransitionTime": run.ready_since},
        ]
        status: dict[str, Any] = {
            "phase": run.phase,
            "hostIP": "127.0.0.1",
            "podIP": run.ip,
            "podIPs": [{"ip": run.ip}],
            "startTime": run.started,
            "conditions": conditions,
            "containerStatuses": [
                {
                    "name": c["name"],
                    "image": c.get("image", ""),
                    "imageID": "",
                    "containerID": f"fake://{run.uid}/{run.restarts}",
                    "ready": ready,
                    "started": running,
                    "restartCount": run.restarts,
                    "state": state,
                    "lastState": last_state,
                }
            ],
        }
        if run.phase == "Failed" and run.message:
            status["message"], status["reason"] = run.message, "FakeKubelet"
        comparable = {**status, "conditions": [{**c, "lastTransitionTime": ""} for c in conditions]}
        if comparable == run.last_status:
            return
        try:
            self.rest.patch(
                f"/api/v1/namespaces/{run.namespace}/pods/{run.name}/status", {"status": status}
            )
        except ApiException as exc:
            if exc.status in (404, 409):
                return
            raise
        run.last_status = comparable

    # -- stop ------------------------------------------------------------------------------
    def _terminate(self, run: _Run) -> None:
        if run.termination is None:
            meta, spec = run.pod["metadata"], run.pod["spec"]
            grace = meta.get("deletionGracePeriodSeconds")
            if grace is None:
                grace = spec.get("terminationGracePeriodSeconds", 30)
            alive = run.popen is not None and run.popen.poll() is None
            run.termination = Termination(
                sigterm_at=time.monotonic() if alive else None, grace=grace
            )
            run.deadline = time.monotonic() + float(grace)
            run.restart_at = None
            if alive and run.popen is not None:
                with contextlib.suppress(ProcessLookupError):
                    run.popen.send_signal(signal.SIGTERM)
            with self._lock:
                self.terminations[run.name] = run.termination
        assert run.deadline is not None
        if run.popen is not None and run.popen.poll() is None:
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
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(run.popen.pid, signal.SIGKILL)
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
        _IP_POOL.give(run.ip)
        shutil.rmtree(run.scratch, ignore_errors=True)


class _NotYet(Exception):
    """Something the pod needs does not exist yet; the kubelet tries again next tick."""


class _Rewriter:
    """Replace mount paths (as path prefixes) by local directories in strings."""

    def __init__(self, mounts: dict[str, Path]) -> None:
        self.mounts = sorted(mounts.items(), key=lambda kv: -len(kv[0]))
        if self.mounts:
            alternatives = "|".join(re.escape(k) for k, _ in self.mounts)
            self._re: re.Pattern[str] | None = re.compile(
                rf"(?<![\w./-])({alternatives})(?=/|$|[^\w.-])"
            )
        else:
            self._re = None
        self._map = {k: str(v) for k, v in self.mounts}

    def __call__(self, text: str) -> str:
        if self._re is None:
            return text
        return self._re.sub(lambda m: self._map[m.group(1)], text)


def _expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: known vars are replaced, `$$` is a `$`, rest kept."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _VAR.sub(sub, text)


def _terminated(code: int, started: str, finished: str) -> dict[str, Any]:
    exit_code = 128 - code if code < 0 else code  # killed by signal N -> 128 + N, as runtimes say
    return {
        "exitCode": exit_code,
        "reason": "Completed" if code == 0 else "Error",
        "startedAt": started,
        "finishedAt": finished,
    }


def _cond(status: dict[str, Any], kind: str) -> str | None:
    for c in status.get("conditions", []):
        if c["type"] == kind:
            return str(c["status"])
    return None


def _resolve_probe(
    probe: dict[str, Any], container: dict[str, Any], rewrite: _Rewriter
) -> dict[str, Any]:
    probe = dict(probe)
    for kind in ("httpGet", "tcpSocket"):
        if kind in probe:
            action = dict(probe[kind])
            port = action.get("port")
            if port is None:
                raise PodRefused(f"readinessProbe.{kind} has no port")
            if isinstance(port, str) and not port.isdigit():
                named = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
                if port not in named:
                    raise PodRefused(
                        f"readinessProbe names port {port!r}, which the container lacks"
                    )
                port = named[port]
            action["port"] = int(port)
            probe[kind] = action
    if "exec" in probe:
        probe["exec"] = {"command": [rewrite(a) for a in probe["exec"]["command"]]}
    return probe


def _run_probe(probe: dict[str, Any], run: _Run) -> bool:
    timeout = float(probe.get("timeoutSeconds", 1))
    if "httpGet" in probe:
        g = probe["httpGet"]
        scheme = g.get("scheme", "HTTP").lower()
        host = g.get("host") or run.ip
        url = f"{scheme}://{host}:{g['port']}{g.get('path', '/')}"
        headers = {h["name"]: h["value"] for h in g.get("httpHeaders", [])}
        ctx = ssl._create_unverified_context() if scheme == "https" else None
        try:
            with urllib.request.urlopen(
                urllib.request.Request(url, headers=headers), timeout=timeout, context=ctx
            ) as resp:
                return 200 <= resp.status < 400
        except urllib.error.HTTPError as exc:
            return 200 <= exc.code < 400
        except (OSError, ValueError):
            return False
    if "tcpSocket" in probe:
        t = probe["tcpSocket"]
        try:
            with socket.create_connection((t.get("host") or run.ip, t["port"]), timeout=timeout):
                return True
        except OSError:
            return False
    if "exec" in probe:
        try:
            done = subprocess.run(
                probe["exec"]["command"],
                env=run.env,
                cwd=run.cwd,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
        return done.returncode == 0
    return True
