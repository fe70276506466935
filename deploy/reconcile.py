"""The operator's reconcile of one policy: read what ``deploy.plan`` needs, plan, apply.

Read: the policy, its siblings (a model, target or Service two policies claim stays with
the older one), the target and its pods (by its selector), the Service and its Endpoints,
the activator's view of the workload (``GET /-/workloads/NAME``). Apply, thinly: create the
Service when it is missing, write the Endpoints, patch the status subresource (a merge patch:
what the plan leaves out is removed), post Events. One reconcile at a time per policy; a failed
one is logged and the next trigger or the timer tries again. ``known`` maps the pods' labels and
the Services' names back to policies for the event handlers.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from activator.config.policy import (
    Policy,
    PolicyError,
    parse_policy,
    serving,
)
from deploy.plan import Event, Observed, Plan, plan
from deploy.release import Release, release, remember_replicas
from deploy.unserved import unserved
from warmpool.kube.api import KubeApi, KubeError
from warmpool.kube.resource import GROUP, VERSION, collection_path

__all__ = ["OperatorSettings", "Reconciler"]

log = logging.getLogger("dormant.operator")

_TARGETS = {"Deployment": "deployments", "StatefulSet": "statefulsets", "Job": "jobs"}
MIRROR_LABEL = "endpointslice.kubernetes.io/managed-by"
MIRROR_CONTROLLER = "endpointslicemirroring-controller.k8s.io"


@dataclass(frozen=True)
class OperatorSettings:
    """What ``dormant operator`` is told (its command line)."""

    namespace: str
    """The namespace whose policies it reconciles."""
    activator: str = ""
    """The activator's admin base URL (``http://dormant-activator.dormant-system:9090``);
    empty: no status from the activator (phase Pending)."""
    admin_token: str = ""
    kubeconfig: str = ""
    interval: float = 5.0
    """Seconds between two status refreshes of a policy."""
    identity: str = ""
    """This replica's name in the leader-election Lease (its pod name)."""
    lease_duration: float = 15.0
    """Seconds a leader's Lease stays valid without renewal: how long a crashed leader
    blocks the replicas standing by (they take over within this plus a retry)."""
    health_listen: str = ""
    """HOST:PORT of /healthz (kopf's liveness endpoint while leading; a plain answer while
    standing by); empty: none."""


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _labels_match(selector: Mapping[str, str], labels: Mapping[str, str] | None) -> bool:
    return bool(selector) and all((labels or {}).get(k) == v for k, v in selector.items())


@dataclass
class _Known:
    """What the event handlers need to find a policy from a pod or a Service."""

    selector: dict[str, str] = field(default_factory=dict)
    service: str = ""


class Reconciler:
    """The thin effects around ``deploy.plan.plan`` (see the module docstring)."""

    def __init__(self, settings: OperatorSettings, api: KubeApi, client: httpx.AsyncClient) -> None:
        self.settings = settings
        self.api = api
        self.client = client
        self.known: dict[tuple[str, str], _Known] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._failures: dict[tuple[str, str], int] = {}

    def _policies(self, namespace: str) -> str:
        return collection_path(namespace)

    # -- triggers ------------------------------------------------------------------------------
    def policies_for_pod(self, namespace: str, labels: Mapping[str, str] | None) -> list[str]:
        return [
            name
            for (ns, name), known in self.known.items()
            if ns == namespace and _labels_match(known.selector, labels)
        ]

    def policies_for_service(self, namespace: str, service: str) -> list[str]:
        return [n for (ns, n), k in self.known.items() if ns == namespace and k.service == service]

    def forget(self, namespace: str, name: str) -> None:
        self.known.pop((namespace, name), None)
        self._failures.pop((namespace, name), None)

    async def reconcile(self, namespace: str, name: str) -> Plan | None:
        """Read, plan, apply for one policy; one at a time per policy. Never raises: a
        failure is logged (and the next trigger or the timer tries again)."""
        key = (namespace, name)
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            try:
                return await self._reconcile(namespace, name)
            except Exception as exc:  # never let one policy stop the operator
                log.warning("policy %s/%s: reconcile failed: %s", namespace, name, exc)
                return None

    async def release(self, namespace: str, name: str, obj: dict[str, Any]) -> Release | None:
        """Give a deleted policy's target back (``deploy.release``); raises on a failed call
        so that kopf retries and the finalizer stays until it is done."""
        key = (namespace, name)
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            try:
                p = parse_policy(obj)
            except PolicyError as exc:  # never served: nothing of it to give back
                log.info("policy %s/%s deleted (it was invalid: %s)", namespace, name, exc)
                self.forget(namespace, name)
                return None
            kind = _TARGETS[p.target.kind]
            group = "batch" if p.target.kind == "Job" else "apps"
            target_path = f"/apis/{group}/v1/namespaces/{namespace}/{kind}/{p.target.name}"
            target = await self.api.find(target_path)
            service_path = (
                f"/api/v1/namespaces/{namespace}/services/{p.service.name}" if p.service else ""
            )
            service = await self.api.find(service_path) if service_path else None
            result = release(obj, p, target, service)
            if result.replicas is not None:
                await self.api.merge(
                    f"{target_path}/scale", {"spec": {"replicas": result.replicas}}
                )
                log.info(
                    "policy %s/%s deleted: %s %s scaled back to %d",
                    namespace,
                    name,
                    p.target.kind,
                    p.target.name,
                    result.replicas,
                )
            if result.service_patch is not None:
                await self.api.merge(service_path, result.service_patch)
                log.info(
                    "policy %s/%s deleted: Service %s handed back to Kubernetes%s",
                    namespace,
                    name,
                    p.service.name if p.service else "",
                    " (its selector restored)" if "spec" in result.service_patch else "",
                )
                if p.service is not None and "spec" in result.service_patch:
                    await self._drop_mirrored_slices(namespace, p.service.name)
            self.forget(namespace, name)
            return result

    async def _drop_mirrored_slices(self, namespace: str, service: str) -> None:
        """Delete the EndpointSlices that the mirroring controller made from the Endpoints
        the operator wrote while the Service had no selector. Measured on a real node
        (kube-controller-manager 1.20): once the selector is back, such a slice (the
        activator's address) can stay beside the one Kubernetes makes for the pods, and
        kube-proxy then sends some requests to the activator, which no longer serves the
        workload (404). An API server without the discovery API, or without the grant, is
        logged and skipped: the rest of the release is done."""
        selector = f"{MIRROR_LABEL}={MIRROR_CONTROLLER},kubernetes.io/service-name={service}"
        for version in ("v1", "v1beta1"):
            base = f"/apis/discovery.k8s.io/{version}/namespaces/{namespace}/endpointslices"
            try:
                found = await self.api.get(base, labelSelector=selector)
                for item in found.get("items") or []:
                    await self.api.delete(f"{base}/{item['metadata']['name']}")
                    log.info(
                        "Service %s/%s: removed the mirrored EndpointSlice %s",
                        namespace,
                        service,
                        item["metadata"]["name"],
                    )
                return
            except KubeError as exc:
                if exc.status == 404:
                    continue  # this API version is not served here; try the older one
                log.warning(
                    "Service %s/%s: cannot remove the EndpointSlices mirrored from its old "
                    "Endpoints (%s); kube-proxy may still send some requests to the activator "
                    "until they are deleted",
                    namespace,
                    service,
                    exc,
                )
                return

    async def mark_unserved(self, grace: float) -> int:
        """Say so in the status of each policy no install serves (``deploy.unserved``); the
        number marked. Raises KubeError (403 without the cluster-wide grant)."""
        found = await self.api.get(f"/apis/{GROUP}/{VERSION}/scaletozeropolicies")
        now = dt.datetime.now(dt.UTC)
        marked = 0
        for namespace, name, status in unserved(
            found.get("items") or [], self.settings.namespace, now, grace
        ):
            try:
                await self.api.merge(
                    f"{self._policies(namespace)}/{name}/status", {"status": status}
                )
            except KubeError as exc:
                if exc.status == 404:
                    continue
                raise
            log.warning("policy %s/%s: %s", namespace, name, status["message"])
            marked += 1
        return marked

    # -- reading -------------------------------------------------------------------------------
    async def _reconcile(self, namespace: str, name: str) -> Plan | None:
        obj = await self.api.find(f"{self._policies(namespace)}/{name}")
        if obj is None or obj["metadata"].get("deletionTimestamp"):
            # being deleted: ``release`` gives the target back; writing Endpoints now would
            # undo what it hands to Kubernetes
            return None
        parsed, problem = await self._parse(namespace, obj)
        observed = await self._observe(namespace, obj, parsed, problem)
        result = plan(observed)
        await self._apply(namespace, obj, result)
        if parsed is not None and not problem:
            remembered = remember_replicas(obj, parsed, observed.target)
            if remembered:
                await self.api.merge(
                    f"{self._policies(namespace)}/{name}",
                    {"metadata": {"annotations": remembered}},
                )
        if observed.activator is not None:
            counters = observed.activator.get("counters") or {}
            self._failures[(namespace, name)] = int(counters.get("checkpoint_failures") or 0)
        return result

    async def _parse(self, namespace: str, obj: dict[str, Any]) -> tuple[Policy | None, str]:
        """The policy, or why it cannot be served (its spec; a clash with an older one)."""
        try:
            policy = parse_policy(obj)
        except PolicyError as exc:
            return None, str(exc)
        others: list[Policy] = []
        for item in (await self.api.get(self._policies(namespace))).get("items") or []:
            with contextlib.suppress(PolicyError):
                others.append(parse_policy(item))
        _, refused = serving(others)
        return policy, refused.get(policy.name, "")

    async def _observe(
        self, namespace: str, obj: dict[str, Any], p: Policy | None, problem: str
    ) -> Observed:
        name = obj["metadata"]["name"]
        key = (namespace, name)
        base = Observed(policy=obj, parsed=p, problem=problem, now=_now())
        if p is None:
            self.known.pop(key, None)
            return base
        kind = _TARGETS[p.target.kind]
        group = "batch" if p.target.kind == "Job" else "apps"
        target = await self.api.find(
            f"/apis/{group}/v1/namespaces/{namespace}/{kind}/{p.target.name}"
        )
        selector = dict(
            ((target or {}).get("spec") or {}).get("selector", {}).get("matchLabels") or {}
        )
        self.known[key] = _Known(selector, p.service.name if p.service else "")
        pods: Sequence[dict[str, Any]] = []
        if selector:
            query = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
            found = await self.api.get(f"/api/v1/namespaces/{namespace}/pods", labelSelector=query)
            pods = list(found.get("items") or [])
        service = endpoints = None
        if p.service is not None:
            service = await self.api.find(
                f"/api/v1/namespaces/{namespace}/services/{p.service.name}"
            )
            endpoints = await self.api.find(
                f"/api/v1/namespaces/{namespace}/endpoints/{p.service.name}"
            )
        view, why = (None, "")
        if p.workload is not None and not problem:
            view, why = await self._activator(name)
        return Observed(
            policy=obj,
            parsed=p,
            problem=problem,
            target=target,
            service=service,
            endpoints=endpoints,
            pods=pods,
            activator=view,
            activator_problem=why,
            now=base.now,
            seen_checkpoint_failures=self._failures.get(key),
        )

    async def _activator(self, name: str) -> tuple[dict[str, Any] | None, str]:
        """The activator's view of workload ``name`` (``GET /-/workloads/NAME``), or why not."""
        if not self.settings.activator:
            return None, "no --activator given"
        url = f"{self.settings.activator.rstrip('/')}/-/workloads/{name}"
        token = self.settings.admin_token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            answer = await self.client.get(url, headers=headers, timeout=5.0)
        except httpx.HTTPError as exc:
            return None, f"{url}: {type(exc).__name__}"
        if answer.status_code == 404:
            return None, "it does not list it yet"
        if answer.status_code != 200:
            return None, f"{url} answered {answer.status_code}"
        try:
            body = answer.json()
        except ValueError:
            return None, f"{url} answered no JSON"
        return (body, "") if isinstance(body, dict) else (None, f"{url}: unexpected answer")

    # -- applying ------------------------------------------------------------------------------
    async def _apply(self, namespace: str, obj: dict[str, Any], result: Plan) -> None:
        name = obj["metadata"]["name"]
        if result.service is not None:
            try:
                await self.api.post(f"/api/v1/namespaces/{namespace}/services", result.service)
                log.info("policy %s: created Service %s", name, result.service["metadata"]["name"])
            except KubeError as exc:
                if exc.status != 409:
                    raise
        if result.endpoints is not None:
            await self._write_endpoints(namespace, result.endpoints)
        current = obj.get("status") or {}
        if _status_changed(current, result.status):
            # a merge patch: what the plan leaves out is removed (null), the rest replaced
            patch = {**dict.fromkeys(current), **result.status}
            await self.api.merge(f"{self._policies(namespace)}/{name}/status", {"status": patch})
        for event in result.events:
            await self._post_event(namespace, obj, event)

    async def _write_endpoints(self, namespace: str, body: dict[str, Any]) -> None:
        path = f"/api/v1/namespaces/{namespace}/endpoints/{body['metadata']['name']}"
        try:
            await self.api.merge(
                path,
                {"metadata": {"labels": body["metadata"]["labels"]}, "subsets": body["subsets"]},
            )
        except KubeError as exc:
            if exc.status != 404:
                raise
            await self.api.post(f"/api/v1/namespaces/{namespace}/endpoints", body)

    async def _post_event(self, namespace: str, obj: dict[str, Any], event: Event) -> None:
        meta = obj["metadata"]
        now = _now()
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": namespace},
            "involvedObject": {
                "apiVersion": obj.get("apiVersion", f"{GROUP}/{VERSION}"),
                "kind": obj.get("kind", "ScaleToZeroPolicy"),
                "name": meta["name"],
                "namespace": namespace,
                "uid": meta.get("uid", ""),
            },
            "reason": event.reason,
            "message": event.message[:1024],
            "type": event.type,
            "source": {"component": "dormant-operator"},
            "reportingComponent": "dormant-operator",
            "reportingInstance": socket.gethostname()[:128],
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self.api.post(f"/api/v1/namespaces/{namespace}/events", body)
        except KubeError as exc:  # an Event is worth a log line, not a failed reconcile
            log.warning("policy %s: could not post Event %s: %s", meta["name"], event.reason, exc)
        log.info("policy %s: %s %s: %s", meta["name"], event.type, event.reason, event.message)


def _status_changed(current: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    return dict(current) != dict(wanted)
