"""runtime kubernetes: the workloads are the ScaleToZeroPolicies of one namespace.

``prepare(settings)`` checks what a cluster needs before anything starts (a ConfigError, exit
2, otherwise); ``serve(setup, ...)`` is the lifespan's part: it lists the policies, serves each
one it can through its own ``KubernetesRuntime`` (warmpool/runtimes/kubernetes.py), and keeps the
registry current with a watch:

* a new policy is served at once; a changed one (a new generation) is replaced: the old
  workload stops taking requests, finishes those in flight and is dropped, the new one
  takes the pods over as they are;
* a deleted one is removed the same way; its pods are left as they are (deleting a policy
  stops Dormant's management, it does not stop the model);
* a policy that cannot be served (its spec, or a model, target or Service an older policy
  has) is skipped with a log line; the operator writes why into its status.

The registry is dynamic, and each workload still has one owner: the watch is the only
writer of the registry, one ``Workload`` per policy owns its lifecycle, and a replaced one
is out of the registry before its successor is in.

**Adoption**: a workload at rest whose target is scaled up (pods that run without a wake:
at the activator's start, after an eviction, a manual ``kubectl scale``) is woken; the wake
finds the running pod, so the activator and the cluster agree again.

The policies are followed by ``warmpool.kube.watch.PolicyWatch`` (a list, then a watch in
a thread, events through a bounded queue).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

from activator.config.policy import Policy, PolicyError, parse_policy, serving
from activator.config.secrets import read_token_file
from activator.config.settings import ConfigError, Settings
from activator.metrics import Metrics
from activator.registry import Registry
from activator.sources import Served
from activator.specs import spec_factory
from activator.states import State
from activator.workload import Workload
from warmpool.kube.api import KubeApi, KubeError, connect, default_namespace
from warmpool.kube.lease import LeaseKeeper
from warmpool.kube.watch import PolicyWatch
from warmpool.runtime import SnapshotInfo
from warmpool.runtimes.kubernetes import KubeOptions, KubernetesRuntime, KubeTarget

if TYPE_CHECKING:
    from warmpool.system import EngineSetup

__all__ = ["ClusterSetup", "ClusterSource", "ClusterWorkloads", "open_source", "prepare", "serve"]

log = logging.getLogger("dormant.cluster")

TOKEN_ENV = "DORMANT_EXEC_TOKEN"
HANDOVER_WAIT = 6.0
"""On SIGTERM: the longest wait for another activator to take the released Leases (one that
runs looks at them every 2 s at most)."""
HANDOVER_SETTLE = 5.0
"""After another activator took the Leases on SIGTERM: seconds more for the operator to move
the Endpoints to it and for the nodes' proxies to follow, before this one stops accepting."""
_AT_REST = frozenset({State.COLD, State.HIBERNATED, State.FAILED})


@dataclass(frozen=True)
class ClusterSetup:
    """What runtime kubernetes needs, checked before the activator starts."""

    namespace: str
    api: KubeApi
    options: KubeOptions


def _token(settings: Settings) -> str:
    path = settings.cluster.control_token_file
    if path:
        token = read_token_file(path, "kubernetes.control_token_file")
    else:
        token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise ConfigError(
            "kubernetes.control_token_file: required (or $DORMANT_EXEC_TOKEN): the pods' "
            "`dormant exec` control API answers others than loopback only with its token"
        )
    return token


def _advertise(settings: Settings) -> str:
    address = settings.cluster.advertise
    if not address:
        pod_ip = os.environ.get("POD_IP", "")
        if not pod_ip:
            raise ConfigError(
                "kubernetes.advertise: required outside a pod (no $POD_IP): the IP:PORT where "
                "Services reach this activator"
            )
        address = f"{pod_ip}:{settings.port}"
    host = address.rpartition(":")[0].strip("[]")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(
            f"kubernetes.advertise: {address!r} must be an IP:PORT (Endpoints hold addresses)"
        ) from None
    if ip.is_loopback or ip.is_unspecified:
        raise ConfigError(
            f"kubernetes.advertise: {address!r}: Endpoints cannot point at a loopback or "
            "wildcard address; give the activator's pod IP (or the address Services reach)"
        )
    return address


def prepare(settings: Settings) -> ClusterSetup:
    """Check the kubernetes section and connect (ConfigError saying what is wrong)."""
    cluster = settings.cluster
    options = KubeOptions(
        advertise=_advertise(settings),
        control_port=cluster.control_port,
        token=_token(settings),
        poll_interval=cluster.poll_interval,
        route_timeout=cluster.route_timeout,
        lease_duration=cluster.lease_duration,
    )
    try:
        api = KubeApi(connect(cluster.kubeconfig))
    except KubeError as exc:
        raise ConfigError(f"kubernetes.kubeconfig: {exc}") from exc
    return ClusterSetup(default_namespace(cluster.namespace), api, options)


@dataclass
class _Served:
    policy: Policy
    workload: Workload
    runtime: KubernetesRuntime
    lease: LeaseKeeper


class ClusterWorkloads:
    """The served policies of one namespace (see the module docstring)."""

    def __init__(
        self,
        setup: ClusterSetup,
        settings: Settings,
        metrics: Metrics,
        client: httpx.AsyncClient,
    ) -> None:
        self.setup = setup
        self.settings = settings
        self.metrics = metrics
        self.client = client
        self.registry = Registry([])
        self._served: dict[str, _Served] = {}
        self._objects: dict[str, dict[str, Any]] = {}
        self.refused: dict[str, str] = {}
        """Policies not served, and why (the operator reports the same in their status)."""
        self._watch = PolicyWatch(setup.api, setup.namespace)
        self._tasks: list[asyncio.Task[None]] = []
        self._leaving: set[asyncio.Task[None]] = set()
        self._wakes: dict[str, asyncio.Task[Any]] = {}
        self._leases: dict[str, LeaseKeeper] = {}
        """One Lease keeper per served policy, kept across its generations (a changed policy
        is served on by the same owner)."""

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        """List and serve the policies, then follow them."""
        items = await self._watch.start()
        await self._apply_list(items)
        self._tasks = [
            asyncio.create_task(self._consume(self._watch), name="policy-events"),
            asyncio.create_task(self._adopt_loop(), name="adopt"),
        ]
        log.info(
            "serving the ScaleToZeroPolicies of namespace %s: %s",
            self.setup.namespace,
            ", ".join(sorted(self._served)) or "none yet",
        )

    async def stop(self, on_shutdown: str) -> None:
        """Stop following; 'hibernate' checkpoints the ready workloads, 'stop' leaves every
        pod as it is (they are the cluster's, not this process's)."""
        await self._watch.stop()
        for task in [*self._tasks, *self._wakes.values()]:
            task.cancel()
        for task in [*self._tasks, *self._wakes.values()]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        served = list(self._served.values())
        if on_shutdown == "hibernate":
            await asyncio.gather(
                *(s.workload.shutdown("hibernate") for s in served), return_exceptions=True
            )
        for s in served:
            s.runtime.detach()
        await asyncio.gather(*(s.workload.stop() for s in served), return_exceptions=True)
        await asyncio.gather(*(s.runtime.close() for s in served), return_exceptions=True)
        for task in list(self._leaving):
            task.cancel()
        # released: another activator takes each policy over at once, not after a duration
        await asyncio.gather(*(lease.stop() for lease in self._leases.values()))
        self._leases.clear()
        self.setup.api.close()

    async def hand_over(self) -> None:
        """SIGTERM, before anything stops: release every Lease so another activator owns the
        policies at once (and its address goes into their Services), then wait (at most
        HANDOVER_WAIT, or a lease duration when shorter) until each is taken and the Endpoints
        had a moment to follow (HANDOVER_SETTLE). Requests held here meanwhile ask the new
        holder; with no other activator the Leases come back after a duration."""
        leases = list(self._leases.values())
        if not leases:
            return
        await asyncio.gather(*(lease.hand_over() for lease in leases), return_exceptions=True)
        options = self.setup.options
        wait = min(options.lease_duration, HANDOVER_WAIT)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if all(lease.taken_by_another() for lease in leases):
                await asyncio.sleep(min(HANDOVER_SETTLE, max(0.0, deadline - time.monotonic())))
                log.info("handed the policies over to %s", leases[0].holder)
                return
            await asyncio.sleep(max(options.poll_interval, 0.2))
            await asyncio.gather(*(lease.tick() for lease in leases), return_exceptions=True)
        log.info("no other activator took the policies over within %.0fs", wait)

    # -- the policies --------------------------------------------------------------------------
    async def _apply_list(self, items: Iterable[dict[str, Any]]) -> None:
        self._objects = {o["metadata"]["name"]: o for o in items}
        await self._sync()

    async def _apply_event(self, kind: str, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        if kind == "DELETED":
            self._objects.pop(name, None)
        else:
            self._objects[name] = obj
        await self._sync()

    async def _sync(self) -> None:
        """Make the registry serve exactly the servable policies among ``_objects``."""
        parsed: list[Policy] = []
        refused: dict[str, str] = {}
        for name, obj in self._objects.items():
            try:
                policy = parse_policy(obj)
            except PolicyError as exc:
                refused[name] = str(exc)
                continue
            if policy.workload is not None:  # Jobs run their pods themselves
                parsed.append(policy)
        wanted, clashes = serving(parsed)
        refused |= clashes
        for name, why in refused.items():
            if self.refused.get(name) != why:
                log.warning("policy %s/%s is not served: %s", self.setup.namespace, name, why)
        self.refused = refused
        desired = {p.name: p for p in wanted}
        for name in [n for n in self._served if n not in desired]:
            self._leave(name, "the policy was deleted or cannot be served")
        for name, policy in desired.items():
            current = self._served.get(name)
            if current is not None and (current.policy.uid, current.policy.generation) == (
                policy.uid,
                policy.generation,
            ):
                continue
            if current is not None:
                self._leave(name, f"the policy changed (generation {policy.generation})")
            self._add(policy)
        for name in [n for n in self._leases if n not in desired]:
            lease = self._leases.pop(name)
            task = asyncio.create_task(lease.stop(), name=f"release-{name}")
            self._leaving.add(task)
            task.add_done_callback(self._leaving.discard)

    def _add(self, policy: Policy) -> None:
        assert policy.workload is not None and policy.service is not None
        snapshot = None
        if policy.last_snapshot:
            s = policy.last_snapshot
            snapshot = SnapshotInfo(
                str(s["id"]), int(s.get("bytes") or 0), 0.0, float(s.get("seconds") or 0.0)
            )
        target = KubeTarget(
            namespace=policy.namespace or self.setup.namespace,
            kind=policy.target.kind,
            name=policy.target.name,
            service=policy.service.name,
            port=policy.service.port,
            engine=policy.checkpoint.engine,
            kv_cache=policy.kv_cache,
            drain_timeout=policy.workload.drain_timeout,
        )
        lease = self._leases.get(policy.name)
        if lease is None or lease.namespace != target.namespace:
            lease = LeaseKeeper(
                self.setup.api,
                target.namespace,
                policy.name,
                self.setup.options.advertise,
                self.setup.options.lease_duration,
            )
            self._leases[policy.name] = lease
        runtime = KubernetesRuntime(
            self.setup.api, self.client, target, self.setup.options, snapshot=snapshot, lease=lease
        )
        lease.on_acquired = runtime.took_over
        lease.start()
        state_dir = self.settings.state_path
        workload = Workload(
            policy.workload, runtime, self.metrics, spec_factory(policy.workload, state_dir)
        )
        self.registry.add(workload)
        self._served[policy.name] = _Served(policy, workload, runtime, lease)
        log.info(
            "policy %s: serving %s (%s %s, Service %s:%d), %s",
            policy.name,
            ", ".join(policy.workload.models),
            target.kind,
            target.name,
            target.service,
            target.port,
            workload.state,
        )

    def _leave(self, name: str, why: str) -> None:
        """Out of the registry now; requests in flight finish (bounded by drain_timeout);
        then dropped, its pods left as they are."""
        served = self._served.pop(name)
        self.registry.remove(name)
        served.runtime.detach()
        wake = self._wakes.pop(name, None)
        if wake is not None:
            wake.cancel()
        log.info("policy %s: no longer served here (%s)", name, why)

        async def drain() -> None:
            deadline = time.monotonic() + served.workload.settings.drain_timeout
            while served.workload.in_flight and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            await served.workload.stop()
            await served.runtime.close()
            successor = self._served.get(name)
            if successor is not None:  # the state gauge is per name: its successor's again
                self.metrics.set_state(name, successor.workload.state)

        task = asyncio.create_task(drain(), name=f"leave-{name}")
        self._leaving.add(task)
        task.add_done_callback(self._leaving.discard)

    # -- adoption ------------------------------------------------------------------------------
    async def _adopt_loop(self) -> None:
        interval = max(self.setup.options.poll_interval, 0.2)
        while True:
            for name, served in list(self._served.items()):
                try:
                    await self._adopt(name, served)
                except Exception:
                    log.exception("policy %s: adoption check failed", name)
            await asyncio.sleep(interval)

    async def _adopt(self, name: str, served: _Served) -> None:
        running = self._wakes.get(name)
        if running is not None and not running.done():
            return
        wanted = await served.runtime.wanted()  # also scales a target above 1 back to 1
        if served.workload.state not in _AT_REST or not wanted:
            return
        if self._served.get(name) is not served or served.workload.state not in _AT_REST:
            return  # changed while we asked
        log.info("policy %s: its target is scaled up; taking its pod over", name)

        async def wake() -> None:
            try:
                await served.workload.wake()
            except Exception as exc:  # logged; the next check tries again
                log.warning("policy %s: could not take its pod over: %s", name, exc)

        self._wakes[name] = asyncio.create_task(wake(), name=f"adopt-{name}")

    # -- following the policies ----------------------------------------------------------------
    async def _consume(self, watch: PolicyWatch) -> None:
        while True:
            kind, payload = await watch.next()
            try:
                if kind == "list":
                    await self._apply_list(payload)
                else:
                    await self._apply_event(kind, payload)
            except Exception:
                log.exception("could not apply a policy %s", kind.lower())


@contextlib.asynccontextmanager
async def serve(
    setup: ClusterSetup, settings: Settings, metrics: Metrics, client: httpx.AsyncClient
) -> AsyncIterator[ClusterWorkloads]:
    """The lifespan's part: the served workloads while the activator runs."""
    workloads = ClusterWorkloads(setup, settings, metrics, client)
    try:
        await workloads.start()
    except KubeError as exc:
        setup.api.close()
        raise ConfigError(f"kubernetes: cannot list ScaleToZeroPolicies: {exc}") from exc
    try:
        yield workloads
    finally:
        await workloads.stop(settings.on_shutdown)


@dataclass(frozen=True)
class ClusterSource:
    """The namespace's policies as workloads (a ``Source``, see activator.sources)."""

    setup: ClusterSetup
    settings: Settings
    metrics: Metrics

    @contextlib.asynccontextmanager
    async def workloads(self, client: httpx.AsyncClient) -> AsyncIterator[Served]:
        async with serve(self.setup, self.settings, self.metrics, client) as served:
            yield Served(served.registry, hand_over=served.hand_over)


def open_source(settings: Settings, engine: EngineSetup, metrics: Metrics) -> ClusterSource:
    """runtime kubernetes: its settings checked and the cluster connected now (ConfigError)."""
    return ClusterSource(prepare(settings), settings, metrics)
