"""The Kubernetes runtime: a workload's instance is a pod of its ScaleToZeroPolicy's target.

The target is a Deployment or StatefulSet whose pods run ``dormant exec`` (docs/exec.md): the
pod's supervisor restores the newest snapshot on the pod's claim, else boots the server,
answers ``/readyz`` on its control port, and checkpoints through its control API. One
``KubernetesRuntime`` serves one policy (its target, Service, engine); it implements
``warmpool.runtime.Runtime``:

* ``boot`` / ``restore`` — scale the target to 1 (the scale subresource), wait (bounded by
  the spec's start / restore timeout) for a pod that is Running, has an IP, is not
  terminating and whose supervisor answers ``/readyz`` 200; read its ``/status`` to learn
  whether it restored (``restored_from``) or booted; then **route to the pods** and return
  the pod as an instance at ``podIP:service.port``. Whether a pod restores is the pod's
  business: both calls return whatever came up.
* ``checkpoint`` — **route to the activator** (and wait until the Endpoints say so), drop
  the KV cache first when the policy asks (``POST /sleep?level=2``, ``POST /wake_up``: vLLM's
  sleep API), ``POST /checkpoint?wait=DRAIN`` on the supervisor (409 busy: the pod still
  serves, route back to it, ``CheckpointFailed``), scale to 0 and wait until the pod is gone.
* ``stop`` — route to the activator, scale to 0 (the supervisor checkpoints on SIGTERM when
  the pod is run with ``--on-term checkpoint``). ``detach()`` turns ``stop`` into "forget"
  (the activator is going away or the policy was deleted: the pods stay as they are).
* ``suspend`` / ``resume`` — through the supervisor; ``idle_for`` — the supervisor's
  ``GET /activity`` (warm traffic reaches the pod without the activator).

**Routing** has one writer, the operator: it writes the Service's core/v1 Endpoints by one
rule, the ready target pods when the Service's ``dormant.dev/route`` annotation says
``pods``, else the activator's address (``dormant.dev/activator``). This runtime only sets
that intent and waits, bounded by ``route_timeout``, until the Endpoints reflect it — so
traffic never reaches a pod being checkpointed, and reaches a woken pod only after the
activator's own probe of it passed.

API and HTTP errors are translated here (``KubeError``, ``StartFailed``, ...): callers
catch ``WarmpoolError`` only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from warmpool.errors import (
    CheckpointFailed,
    NotSupported,
    ResumeFailed,
    StartFailed,
    SuspendFailed,
    WarmpoolError,
)
from warmpool.kube.api import KubeApi, KubeError
from warmpool.kube.control import Paths, PodControl
from warmpool.kube.lease import LeaseKeeper
from warmpool.kube.pods import (
    ACTIVATOR_ANNOTATION,
    ROUTE_ACTIVATOR,
    ROUTE_ANNOTATION,
    ROUTE_PODS,
    ROUTED_IPS_ANNOTATION,
    PodInstance,
    describe_pods,
    endpoint_ips,
    pod_running,
)
from warmpool.kube.ratelog import RateLimitedLog
from warmpool.runtime import Capabilities, Instance, InstanceSpec, SnapshotInfo

__all__ = ["KubeOptions", "KubeTarget", "KubernetesRuntime"]

log = logging.getLogger("dormant.kubernetes")
_limited = RateLimitedLog(log, 30.0)

TRANSIENT = frozenset({0, 408, 429, 500, 502, 503, 504})
"""KubeError statuses worth retrying within a wake's deadline (0: the API server was not
reached)."""

_PATHS = {"Deployment": "deployments", "StatefulSet": "statefulsets"}


@dataclass(frozen=True)
class KubeTarget:
    """What one policy names: its target, Service and how it checkpoints."""

    namespace: str
    kind: str
    """Deployment or StatefulSet."""
    name: str
    service: str
    port: int
    """The port the target's pods serve on."""
    engine: str = "criu"
    """criu or cuda (checkpoint through the supervisor) or restart (nothing is kept)."""
    kv_cache: str = "keep"
    drain_timeout: float = 30.0
    """How long the supervisor may wait for the served port to be quiet at a checkpoint."""


@dataclass(frozen=True)
class KubeOptions:
    """How the activator reaches pods and asks for routes."""

    advertise: str
    """The activator's ``IP:PORT`` that Endpoints point at while no pod is routed."""
    control_port: int = 8081
    token: str = ""
    poll_interval: float = 1.0
    route_timeout: float = 30.0
    lease_duration: float = 15.0
    """How long a policy's Lease (warmpool.kube.lease) stays another activator's without being
    renewed before this one takes it over."""


#: Seconds between two looks at a waking target's pods (see KubernetesRuntime._up).
WAKE_POLL = 0.1


def _seconds_left(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


class KubernetesRuntime:
    """One policy's pods (see the module docstring). ``snapshot`` seeds ``latest`` (the
    policy's status.lastSnapshot); ``clock`` is for tests."""

    def __init__(
        self,
        api: KubeApi,
        client: httpx.AsyncClient,
        target: KubeTarget,
        options: KubeOptions,
        snapshot: SnapshotInfo | None = None,
        clock: Callable[[], float] = time.monotonic,
        lease: LeaseKeeper | None = None,
    ) -> None:
        if target.kind not in _PATHS:
            raise NotSupported(f"{target.kind} targets are not scaled (Deployment, StatefulSet)")
        self.api = api
        self.client = client
        self.target = target
        self.options = options
        self.control = PodControl(client, options.control_port, options.token)
        self._clock = clock
        self._snapshot = snapshot if target.engine != "restart" else None
        self._watchers: dict[PodInstance, asyncio.Task[None]] = {}
        self._detached = False
        self.lease = lease
        """The policy's Lease: only its holder scales, routes and checkpoints (None: always)."""
        self._routing: asyncio.Task[None] | None = None
        checkpoint = target.engine != "restart"
        self._capabilities = Capabilities(
            engine=target.engine,
            checkpoint=checkpoint,
            checkpoint_why="" if checkpoint else "the policy's checkpoint engine is 'restart'",
            suspend=True,
            suspend_why="",
        )
        ns, name = target.namespace, target.name
        self._scale_path = f"/apis/apps/v1/namespaces/{ns}/{_PATHS[target.kind]}/{name}/scale"
        self._service_path = f"/api/v1/namespaces/{ns}/services/{target.service}"
        self._endpoints_path = f"/api/v1/namespaces/{ns}/endpoints/{target.service}"
        self._pods_path = f"/api/v1/namespaces/{ns}/pods"

    @property
    def capabilities(self) -> Capabilities:
        return self._capabilities

    def latest(self, name: str) -> SnapshotInfo | None:
        return self._snapshot

    def set_aside(self, name: str, snapshot_id: str, reason: str) -> bool:
        """The pod's supervisor owns its volume's snapshots: nothing to do from here."""
        log.warning(
            "%s: snapshot %s should be set aside (%s); its pod owns it", name, snapshot_id, reason
        )
        return False

    @property
    def owner(self) -> bool:
        """Whether this activator owns the workload's lifecycle now (holds its Lease)."""
        return self.lease is None or self.lease.held

    def took_over(self) -> None:
        """Just became the holder, in the background: the Service's activator address
        becomes ours (the one before may be gone) and, when a pod we followed is serving,
        the route goes to it. The previous holder asks for that route when its wake ends;
        one that lost the Lease before then (an API-server outage outlasting the Lease)
        never does, and the Service would stay on the activators for good."""
        if self._detached:
            return
        serving = [instance for instance in self._watchers if instance.alive()]
        self._route_soon(serving[0].ip if serving else None)

    def detach(self) -> None:
        """From now on ``stop`` only forgets the pods: nothing is scaled or re-routed."""
        self._detached = True

    async def close(self) -> None:
        """Stop watching pods (the instances keep their last ``alive()``)."""
        tasks = list(self._watchers.values())
        self._watchers.clear()
        if self._routing is not None:
            tasks.append(self._routing)
            self._routing = None
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # -- the target ----------------------------------------------------------------------------
    def _what(self) -> str:
        t = self.target
        return f"{t.kind} {t.namespace}/{t.name}"

    async def replicas(self) -> tuple[int, str]:
        """The target's desired replicas and its pods' label selector (the scale subresource)."""
        scale = await self.api.get(self._scale_path)
        selector = str((scale.get("status") or {}).get("selector") or "")
        return int((scale.get("spec") or {}).get("replicas") or 0), selector

    async def wanted(self) -> bool:
        """Whether the target is scaled up (someone, or a replacement, wants it running), or
        (as the Lease's holder) another activator asked for a wake. A target scaled beyond one
        replica is scaled back to one by the holder: a policy's pods share one snapshot volume
        and its lock, so a second pod would wait for it and never be Ready."""
        try:
            replicas = (await self.replicas())[0]
        except KubeError as exc:  # e.g. the target does not exist (the operator says so)
            _limited.info(
                f"scale {self._what()}", "%s: cannot read its scale: %s", self._what(), exc
            )
            return False
        if replicas > 1 and self.owner and not self._detached:
            log.warning(
                "%s: scaled to %d replicas, but a ScaleToZeroPolicy serves one pod (one snapshot "
                "volume, one lock: the others would never be Ready); scaling it back to 1",
                self._what(),
                replicas,
            )
            with contextlib.suppress(KubeError):
                await self.api.merge(self._scale_path, {"spec": {"replicas": 1}})
        if replicas > 0:
            return True
        return self.lease is not None and self.owner and await self.lease.wake_requested()

    async def _scale(self, replicas: int) -> str:
        """Set the target's replicas; its pods' selector."""
        current, selector = await self.replicas()
        if current != replicas:
            await self.api.merge(self._scale_path, {"spec": {"replicas": replicas}})
            log.info("%s: scaled to %d", self._what(), replicas)
        if not selector:
            raise StartFailed(f"{self._what()}: its scale subresource has no label selector")
        return selector

    async def _pods(self, selector: str) -> list[dict[str, Any]]:
        found = await self.api.get(self._pods_path, labelSelector=selector)
        return list(found.get("items") or [])

    # -- routing -------------------------------------------------------------------------------
    async def _route(self, route: str, pod_ip: str = "") -> bool:
        """Ask for ``route`` (the Service's annotation) and wait, bounded by route_timeout,
        until the Endpoints reflect it; False when they did not in time."""
        annotations = {
            ROUTE_ANNOTATION: route,
            ACTIVATOR_ANNOTATION: self.options.advertise,
            ROUTED_IPS_ANNOTATION: pod_ip if route == ROUTE_PODS else "",
        }
        await self.api.merge(self._service_path, {"metadata": {"annotations": annotations}})
        activator = self.options.advertise.rpartition(":")[0].strip("[]")
        deadline = time.monotonic() + self.options.route_timeout
        while True:
            ips = endpoint_ips(await self.api.find(self._endpoints_path))
            done = pod_ip in ips if route == ROUTE_PODS else ips == {activator}
            if done:
                return True
            if time.monotonic() >= deadline:
                log.warning(
                    "%s: the Endpoints of Service %s still point at %s, not the %s, after "
                    "%.0fs: is `dormant operator` running?",
                    self._what(),
                    self.target.service,
                    sorted(ips) or "nothing",
                    route,
                    self.options.route_timeout,
                )
                return False
            await asyncio.sleep(self.options.poll_interval)

    async def _probe(self, pod: dict[str, Any]) -> PodInstance | str:
        """The pod as an instance when its supervisor is ready, else why not."""
        ip = pod["status"]["podIP"]
        name = pod["metadata"]["name"]
        try:
            code, body = await self.control.call("GET", ip, Paths.READYZ, 2.0)
        except KubeError as exc:
            return f"pod {name}: {exc}"
        if code != 200:
            return f"pod {name}: /readyz {code} {(body.get('error') or {}).get('code', '')}"
        code, status = await self.control.call("GET", ip, Paths.STATUS, 5.0)
        if code != 200:
            return f"pod {name}: /status answered {code}: {self.control.error(status)}"
        self._learn(status)
        started = status.get("started") or {}
        return PodInstance(
            pod=name,
            uid=pod["metadata"]["uid"],
            ip=ip,
            port=self.target.port,
            node=str(pod["spec"].get("nodeName", "")),
            restored_from=status.get("restored_from"),
            started=dict(started),
        )

    def _learn(self, status: dict[str, Any]) -> None:
        """Remember the newest usable snapshot the supervisor reports (for ``latest``)."""
        if self.target.engine == "restart":
            return
        usable = [
            s
            for s in status.get("snapshots") or []
            if isinstance(s, dict) and s.get("status") == "ok"
        ]
        newest = max(usable, key=lambda s: s.get("created") or 0, default=None)
        listed = status.get("snapshots")
        if newest is None and isinstance(listed, list):
            if all(isinstance(s, dict) and s.get("id") for s in listed):
                self._snapshot = None  # the store, after pruning, holds none usable
            return
        if newest is not None and newest.get("id"):
            self._snapshot = SnapshotInfo(
                str(newest["id"]),
                int(newest.get("bytes") or 0),
                float(newest.get("created") or time.time()),
                float(newest.get("checkpoint_seconds") or 0.0),
            )

    # -- waking --------------------------------------------------------------------------------
    async def boot(self, spec: InstanceSpec) -> PodInstance:
        return await self._up(spec, spec.start_timeout, "start")

    async def restore(self, spec: InstanceSpec) -> PodInstance | None:
        """Like boot: the pod restores when its claim holds a snapshot, else it boots (then
        the instance says so: ``restored_from`` is None)."""
        return await self._up(spec, spec.restore_timeout, "restore")

    async def _up(self, spec: InstanceSpec, timeout: float, what: str) -> PodInstance:
        """Scale to 1 (the holder) or ask the holder for a wake (another activator), then wait
        for a ready pod. An API server that does not answer (or answers 5xx/429) is retried
        with back-off until the deadline: a brief outage delays the wake, it does not fail it.

        While the pod comes up the loop looks every WAKE_POLL seconds, not every
        poll_interval: a wake is what a client waits for, and one look costs one list of the
        target's pods and one /readyz to a pod. The steps it passed are the instance's
        ``wake_phases``."""
        began = time.monotonic()
        deadline = began + timeout
        phases: dict[str, float] = {}

        def passed(step: str) -> None:
            phases.setdefault(step, round(time.monotonic() - began, 3))

        last = "no pod yet"
        backoff = WAKE_POLL
        selector = ""
        while True:
            try:
                if self.owner:
                    selector = await self._scale(1)
                else:
                    assert self.lease is not None
                    replicas, selector = await self.replicas()
                    if replicas == 0:
                        await self.lease.request_wake()
                passed("scaled")
                pods = await self._pods(selector) if selector else []
                backoff = WAKE_POLL
                if any((p.get("spec") or {}).get("nodeName") for p in pods):
                    passed("scheduled")
                candidates = [p for p in pods if pod_running(p)]
                if candidates:
                    passed("running")
                for pod in candidates:
                    found = await self._probe(pod)
                    if isinstance(found, PodInstance):
                        passed("ready")
                        found.wake_phases = phases
                        return self._serve(found)
                    last = found
                if not candidates:
                    last = describe_pods(pods) or last
                if not self.owner and self.lease is not None and not candidates:
                    last = f"waiting for {self.lease.holder or 'the holder'} to wake it"
            except KubeError as exc:
                if exc.status not in TRANSIENT:
                    raise StartFailed(f"{spec.name}: {exc}") from exc
                last = f"the API server: {exc}"
                _limited.warning(
                    f"up {self._what()}",
                    "%s: %s; retrying until the %s deadline",
                    self._what(),
                    exc,
                    what,
                )
                backoff = min(max(backoff, self.options.poll_interval) * 2, 5.0)
            if time.monotonic() >= deadline:
                raise StartFailed(
                    f"{spec.name}: no ready pod of {self._what()} after {timeout:.0f}s "
                    f"({what}; last seen: {last})"
                )
            await asyncio.sleep(min(backoff, _seconds_left(deadline)))

    def _serve(self, instance: PodInstance) -> PodInstance:
        """Ask for the route to the pod (after our own probe passed) without waiting for the
        Endpoints: the activator proxies the requests it holds to the pod itself, so a wake
        never waits for the operator. Then watch the pod."""
        log.info(
            "%s: pod %s at %s is ready (%s)%s",
            self._what(),
            instance.pod,
            instance.ip,
            f"restored from {instance.restored_from}" if instance.restored_from else "booted",
            "; " + ", ".join(f"{k} {v:.2f}s" for k, v in instance.wake_phases.items())
            if instance.wake_phases
            else "",
        )
        if self.owner and not self._detached:
            self._route_soon(instance.ip)
        self._watchers[instance] = asyncio.create_task(
            self._watch(instance), name=f"watch-{instance.pod}"
        )
        return instance

    def _route_soon(self, pod_ip: str | None) -> None:
        """In the background: ask for the route to ``pod_ip`` (None: only re-point the
        activator address at us), retrying while the API server does not answer, then note
        whether the Endpoints followed within route_timeout. Replaces an earlier one."""
        if self._routing is not None:
            self._routing.cancel()
        self._routing = asyncio.create_task(self._route_later(pod_ip), name="route")

    async def _route_later(self, pod_ip: str | None) -> None:
        backoff = self.options.poll_interval
        while True:
            try:
                if pod_ip is None:
                    annotations = {ACTIVATOR_ANNOTATION: self.options.advertise}
                    await self.api.merge(
                        self._service_path, {"metadata": {"annotations": annotations}}
                    )
                else:
                    await self._route(ROUTE_PODS, pod_ip)
                return
            except KubeError as exc:
                _limited.warning(
                    f"route {self._what()}",
                    "%s: cannot ask for the route of Service %s yet: %s",
                    self._what(),
                    self.target.service,
                    exc,
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    def _stop_routing(self) -> None:
        if self._routing is not None:
            self._routing.cancel()
            self._routing = None

    async def _watch(self, instance: PodInstance) -> None:
        """Until the pod is deleted, terminating or failed: then ``instance.gone``."""
        path = f"{self._pods_path}/{instance.pod}"
        while instance.alive():
            await asyncio.sleep(self.options.poll_interval)
            try:
                pod = await self.api.find(path)
            except KubeError as exc:
                _limited.info(
                    f"watch {self._what()}",
                    "%s: cannot read pod %s: %s",
                    self._what(),
                    instance.pod,
                    exc,
                )
                continue
            if pod is None or pod["metadata"]["uid"] != instance.uid:
                instance.gone(f"pod {instance.pod} was deleted")
            elif pod["metadata"].get("deletionTimestamp"):
                instance.gone(
                    f"pod {instance.pod} is terminating (scaled down, evicted or drained: its "
                    "supervisor checkpoints on SIGTERM and a replacement restores)"
                )
                await self._learn_while_terminating(instance)
            elif (pod.get("status") or {}).get("phase") in ("Failed", "Succeeded"):
                instance.gone(f"pod {instance.pod} is {pod['status']['phase']}")

    async def _learn_while_terminating(self, instance: PodInstance) -> None:
        """A terminating pod's supervisor checkpoints and prunes: follow its /status until it
        stops answering, so ``latest`` names what its volume holds afterwards (never a snapshot
        pruned meanwhile). Bounded by the pod's own grace period (600 s at most here)."""
        deadline = time.monotonic() + 600.0
        while time.monotonic() < deadline:
            try:
                code, status = await self.control.call("GET", instance.ip, Paths.STATUS, 5.0)
            except KubeError:
                return
            if code != 200:
                return
            self._learn(status)
            if status.get("state") in ("checkpointed", "stopped", "failed"):
                return
            await asyncio.sleep(self.options.poll_interval)

    def _unwatch(self, instance: PodInstance) -> None:
        task = self._watchers.pop(instance, None)
        if task is not None:
            task.cancel()

    @staticmethod
    def _own(instance: Instance) -> PodInstance:
        if not isinstance(instance, PodInstance):
            raise TypeError(f"not a pod instance: {instance!r}")
        return instance

    # -- hibernating ---------------------------------------------------------------------------
    async def checkpoint(self, instance: Instance) -> SnapshotInfo:
        pod = self._own(instance)
        if self.target.engine == "restart":
            raise NotSupported(f"cannot checkpoint: {self._capabilities.checkpoint_why}")
        if not self.owner:
            return await self._follow(pod)
        self._stop_routing()
        try:
            if not await self._route(ROUTE_ACTIVATOR):
                await self._route(ROUTE_PODS, pod.ip)
                raise CheckpointFailed(
                    f"the Endpoints of Service {self.target.service} did not move to the "
                    f"activator within {self.options.route_timeout:.0f}s; not checkpointing "
                    "a pod that may still get traffic",
                    pod,
                )
            if self.target.kv_cache == "drop":
                await self._drop_kv_cache(pod)
            info = await self._checkpoint(pod)
            self._unwatch(pod)
            pod.gone(f"pod {pod.pod} was checkpointed (snapshot {info.id})")
            self._snapshot = info
            await self._scale_down(pod, wait=True)
            return info
        except KubeError as exc:
            raise CheckpointFailed(f"{self._what()}: {exc}", pod if pod.alive() else None) from exc

    async def _follow(self, pod: PodInstance) -> SnapshotInfo:
        """Not the holder: the holder checkpoints (it sees the same idleness, from the pod's
        supervisor). Wait, bounded, for its snapshot; CheckpointFailed (still serving) when
        the pod is still serving after that."""
        deadline = time.monotonic() + self.options.route_timeout + self.target.drain_timeout
        holder = self.lease.holder if self.lease is not None else ""
        while time.monotonic() < deadline:
            try:
                code, status = await self.control.call("GET", pod.ip, Paths.STATUS, 5.0)
            except KubeError:
                code, status = 0, {}
            if code == 200 and status.get("state") == "checkpointed":
                self._learn(status)
                self._unwatch(pod)
                pod.gone(f"pod {pod.pod} was checkpointed by {holder or 'the holder'}")
                done = status.get("last_checkpoint") or {}
                if done.get("id"):
                    self._snapshot = SnapshotInfo(
                        str(done["id"]),
                        int(done.get("bytes") or 0),
                        float(done.get("at") or time.time()),
                        float(done.get("seconds") or 0.0),
                    )
                if self._snapshot is not None:
                    return self._snapshot
            if code == 0 and not pod.alive() and self._snapshot is not None:
                return self._snapshot  # gone before we saw its answer
            if code == 0 and await self._scaled_to_zero():
                # The holder checkpointed and scaled the target down between two looks:
                # hibernated, by the holder, with a snapshot this activator never saw.
                self._unwatch(pod)
                pod.gone(f"pod {pod.pod} was checkpointed by {holder or 'the holder'}")
                if self._snapshot is not None:
                    return self._snapshot
                return SnapshotInfo(f"(taken by {holder or 'the Lease holder'})", 0, time.time())
            await asyncio.sleep(self.options.poll_interval)
        raise CheckpointFailed(
            f"this activator does not hold the Lease of {self._what()} ({holder or 'nobody'} "
            "does) and the holder did not checkpoint the pod: it still serves",
            pod,
        )

    async def _scaled_to_zero(self) -> bool:
        try:
            return (await self.replicas())[0] == 0
        except KubeError:
            return False

    async def _checkpoint(self, pod: PodInstance) -> SnapshotInfo:
        drain = self.target.drain_timeout
        timeout = drain + 600.0  # the supervisor bounds the dump itself (its --grace)
        path = f"{Paths.CHECKPOINT}?wait={drain:g}"
        code, body = await self.control.call("POST", pod.ip, path, timeout)
        if code == 200:
            snap = body.get("snapshot") or {}
            return SnapshotInfo(
                str(snap.get("id")),
                int(snap.get("bytes") or 0),
                float(snap.get("at") or time.time()),
                float(snap.get("seconds") or 0.0),
            )
        what = "is busy (409)" if code == 409 else f"answered {code}"
        why = f"the supervisor of pod {pod.pod} {what}: {self.control.error(body)}"
        readyz, _ = await self.control.call("GET", pod.ip, Paths.READYZ, 2.0)
        if readyz == 200:  # busy (409), or the dump failed and CRIU resumed the server
            await self._route(ROUTE_PODS, pod.ip)
            raise CheckpointFailed(f"{why}; the pod still serves", pod)
        await self._scale_down(pod, wait=False)
        raise CheckpointFailed(f"{why}; the server is gone, the pod is scaled down", None)

    async def _drop_kv_cache(self, pod: PodInstance) -> None:
        """vLLM's sleep API: level 2 drops the KV cache (and reloads weights on wake). The
        connections are closed at once, so the supervisor does not count them as traffic
        still in its quiet period."""
        for call in ("/sleep?level=2", "/wake_up"):
            try:
                answer = await self.client.post(
                    pod.endpoint.url + call, headers={"Connection": "close"}, timeout=60.0
                )
                ok = answer.status_code == 200
            except httpx.HTTPError as exc:
                ok, answer = False, exc  # type: ignore[assignment]
            if not ok:
                log.warning(
                    "%s: kvCache drop: POST %s answered %s; checkpointing with the cache",
                    self._what(),
                    call,
                    getattr(answer, "status_code", answer),
                )
                return

    async def _scale_down(self, pod: PodInstance, wait: bool) -> None:
        await self._scale(0)
        if not wait:
            return
        path = f"{self._pods_path}/{pod.pod}"
        deadline = time.monotonic() + 120.0
        while time.monotonic() < deadline:
            found = await self.api.find(path)
            if found is None or found["metadata"]["uid"] != pod.uid:
                return
            await asyncio.sleep(self.options.poll_interval)
        log.warning("%s: pod %s is still there 120s after the scale to 0", self._what(), pod.pod)

    async def stop(self, instance: Instance) -> None:
        pod = self._own(instance)
        self._unwatch(pod)
        if self._detached or not self.owner:
            return
        self._stop_routing()
        try:
            await self._route(ROUTE_ACTIVATOR)
            await self._scale_down(pod, wait=False)
        except KubeError as exc:
            raise WarmpoolError(f"{self._what()}: could not scale to 0: {exc}") from exc
        pod.gone(f"pod {pod.pod} was scaled down")

    # -- suspend, activity ---------------------------------------------------------------------
    async def suspend(self, instance: Instance) -> None:
        await self._toggle(self._own(instance), Paths.SUSPEND, SuspendFailed)

    async def resume(self, instance: Instance) -> None:
        await self._toggle(self._own(instance), Paths.RESUME, ResumeFailed)

    async def _toggle(self, pod: PodInstance, what: str, error: type[WarmpoolError]) -> None:
        try:
            code, body = await self.control.call("POST", pod.ip, what, 600.0)
        except KubeError as exc:
            raise error(str(exc)) from exc
        if code == 501:
            raise NotSupported(f"pod {pod.pod}: {self.control.error(body)}")
        if code != 200:
            name = what.lstrip("/")
            raise error(f"pod {pod.pod}: {name} answered {code}: {self.control.error(body)}")

    async def idle_for(self, instance: Instance) -> float | None:
        """Seconds since the pod's served port carried data (0 while it is busy), from its
        supervisor; None when it cannot tell."""
        pod = self._own(instance)
        try:
            code, body = await self.control.call("GET", pod.ip, Paths.ACTIVITY, 5.0)
        except KubeError as exc:
            log.debug("%s: no activity reading: %s", self._what(), exc)
            return None
        if code != 200 or not isinstance(body.get("idle_s"), int | float):
            return None
        return 0.0 if body.get("busy") else float(body["idle_s"])
