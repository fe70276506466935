"""What a ScaleToZeroPolicy asks for, read through the one settings definition.

A ``ScaleToZeroPolicy`` (``dormant.dev/v1alpha1``, namespaced) names a target (a Deployment,
StatefulSet or Job whose pods run ``dormant exec``), the selector-less Service Dormant
routes, the models it serves and the workload settings that act in a cluster. Its spec is
turned into a ``WorkloadSettings`` by ``parse_settings`` — the same loader, types and
one-line errors as a workload in the YAML file — so the CRD schema (``deploy/crd.py``, built
from ``activator.config.schema.workload_crd_schema`` and ``SPEC_KEYS``), the activator (runtime
kubernetes) and the operator (status) agree on every field. Errors read
``spec.idleAfter: expected a duration like '30s' or '5m', got 'soon'``.

Which workload settings a policy carries (``SPEC_KEYS``) and which it does not, and why
(``LEFT_OUT``), is stated here; a test checks every field is in one of them.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from activator.config.errors import ConfigError

if TYPE_CHECKING:
    from activator.config.settings import WorkloadSettings
from warmpool.kube.resource import API_VERSION, GROUP, KIND, PLURAL, VERSION

__all__ = [
    "API_VERSION",
    "ENGINES",
    "GROUP",
    "KIND",
    "KV_CACHE",
    "LEFT_OUT",
    "ON_EVICTION",
    "PLURAL",
    "SPEC_KEYS",
    "TARGET_KINDS",
    "VERSION",
    "CheckpointRef",
    "Policy",
    "PolicyError",
    "ServiceRef",
    "TargetRef",
    "camel",
    "parse_policy",
    "serving",
]

TARGET_KINDS = ("Deployment", "StatefulSet", "Job")
ENGINES = ("criu", "cuda", "restart")
"""criu: the pod's supervisor checkpoints to the claim; cuda: the same for a GPU process (its
device memory goes to host RAM first); restart: nothing is kept (scale to 0, cold boot)."""
KV_CACHE = ("keep", "drop")
ON_EVICTION = ("checkpoint", "ignore")

SPEC_KEYS: dict[str, str] = {
    "models": "models",
    "idle_after": "idleAfter",
    "wake_timeout": "wakeTimeout",
    "queue_depth": "queueDepth",
    "max_in_flight": "maxInFlight",
    "start_timeout": "startTimeout",
    "restore_timeout": "restoreTimeout",
    "checkpoint_timeout": "checkpointTimeout",
    "drain_timeout": "drainTimeout",
    "retry_backoff": "retryBackoff",
    "connect_timeout": "connectTimeout",
    "first_byte_timeout": "firstByteTimeout",
    "stream_idle_timeout": "streamIdleTimeout",
    "wake_keepalive": "wakeKeepalive",
}
"""Workload settings a policy's spec carries (as camelCase keys): each acts in the activator
for a cluster workload (routing, the wait queue, the idle reaper, the bounds of a wake, a
drain and a checkpoint through the pod's supervisor). ``keep_snapshots`` is
``spec.checkpoint.keep``."""

LEFT_OUT: dict[str, str] = {
    "name": "the policy's metadata.name",
    "keep_snapshots": "spec.checkpoint.keep",
    "command": "the target's pod template runs it (under dormant exec)",
    "port": "the pods' served port is spec.service.port",
    "health_path": "the pod's supervisor answers /readyz for it (dormant exec --health-path)",
    "env": "the target's pod template",
    "cwd": "the target's pod template",
    "stop_timeout": "the pod's terminationGracePeriodSeconds",
    "kind": "v1alpha1 serves OpenAI workloads, routed by model",
    "path_prefix": "v1alpha1 routes by model only",
    "strip_prefix": "v1alpha1 routes by model only",
    "hosts": "v1alpha1 routes by model only",
    "memory": "the warm pool shares one machine's device; in a cluster each pod has its own",
    "pin": "the warm pool's (idleAfter 0 keeps a workload up); the scheduler places pods",
    "priority": "the warm pool's; Kubernetes' PriorityClass orders pods",
    "min_resident": "the warm pool's anti-thrash rule; no shared device in a cluster",
    "suspend": "the pod's supervisor (dormant exec --suspend)",
    "hooks": "the pod's supervisor (dormant exec --hook-sleep/--hook-wake)",
    "root_dir": "notebook workloads are not served by policies in v1alpha1",
    "python": "notebook workloads are not served by policies in v1alpha1",
    "args": "notebook workloads are not served by policies in v1alpha1",
    "token_file": "notebook workloads are not served by policies in v1alpha1",
}
"""Workload settings a policy does not carry, and why."""

_OWN_KEYS = ("targetRef", "service", "checkpoint", "kvCache", "onEviction")
_CAMEL = re.compile(r"_([a-z])")


class PolicyError(ValueError):
    """A policy Dormant cannot serve; the message is one line with the key path."""


def camel(snake: str) -> str:
    """``idle_after`` -> ``idleAfter``."""
    return _CAMEL.sub(lambda m: m.group(1).upper(), snake)


@dataclass(frozen=True)
class TargetRef:
    """The workload whose pods the policy scales: a Deployment, StatefulSet or Job."""

    kind: str
    name: str
    api_version: str

    @property
    def scalable(self) -> bool:
        """Deployments and StatefulSets scale (to 0 and back); a Job runs its pod itself."""
        return self.kind != "Job"


@dataclass(frozen=True)
class ServiceRef:
    """The selector-less Service whose Endpoints the operator writes, and the port the
    target's pods serve on (the Endpoints' port while they are ready)."""

    name: str
    port: int


@dataclass(frozen=True)
class CheckpointRef:
    engine: str
    volume_claim: str
    keep: int


@dataclass(frozen=True)
class Policy:
    """A ScaleToZeroPolicy as Dormant reads it."""

    namespace: str
    name: str
    uid: str
    generation: int
    created: str
    """metadata.creationTimestamp (RFC 3339): the older policy keeps a contested model."""
    target: TargetRef
    service: ServiceRef | None
    checkpoint: CheckpointRef
    kv_cache: str
    on_eviction: str
    workload: WorkloadSettings | None
    """What the activator serves; None for a Job (it runs its pod itself: no routing, no
    scaling; the pod's supervisor checkpoints it on eviction and its replacement resumes)."""
    last_snapshot: Mapping[str, Any] | None = None
    """status.lastSnapshot, as the operator last wrote it."""


def _fail(message: str, at: str) -> PolicyError:
    return PolicyError(f"{at}: {message}")


def _mapping(value: Any, at: str, required: bool = True) -> dict[str, Any]:
    if value is None and not required:
        return {}
    if not isinstance(value, Mapping):
        raise _fail("required" if value is None else "expected a mapping", at)
    return dict(value)


def _choice(value: Any, choices: tuple[str, ...], at: str, default: str) -> str:
    if value is None:
        return default
    if value not in choices:
        raise _fail(f"must be one of {', '.join(choices)} (got {value!r})", at)
    return str(value)


def _unknown(data: Mapping[str, Any], allowed: Iterable[str], at: str) -> None:
    allowed = list(allowed)
    for key in data:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise _fail(f"unknown key{hint}", f"{at}.{key}")


def _name(value: Any, at: str) -> str:
    if not isinstance(value, str) or not value:
        raise _fail("required (a name)", at)
    return value


def _target(spec: Mapping[str, Any]) -> TargetRef:
    ref = _mapping(spec.get("targetRef"), "spec.targetRef")
    _unknown(ref, ("apiVersion", "kind", "name"), "spec.targetRef")
    kind = ref.get("kind")
    if kind not in TARGET_KINDS:
        got = "required" if kind is None else f"got {kind!r}"
        raise _fail(f"must be one of {', '.join(TARGET_KINDS)} ({got})", "spec.targetRef.kind")
    default_api = "batch/v1" if kind == "Job" else "apps/v1"
    api_version = ref.get("apiVersion") or default_api
    if api_version != default_api:
        raise _fail(f"a {kind} is {default_api} (got {api_version!r})", "spec.targetRef.apiVersion")
    return TargetRef(kind, _name(ref.get("name"), "spec.targetRef.name"), api_version)


def _service(spec: Mapping[str, Any], target: TargetRef) -> ServiceRef | None:
    if spec.get("service") is None:
        if target.scalable:
            raise _fail(
                f"required for a {target.kind} target: the selector-less Service whose "
                "Endpoints Dormant switches between the pods and the activator",
                "spec.service",
            )
        return None
    ref = _mapping(spec["service"], "spec.service")
    _unknown(ref, ("name", "port"), "spec.service")
    port = ref.get("port")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise _fail(f"expected the pods' served port, 1-65535 (got {port!r})", "spec.service.port")
    return ServiceRef(_name(ref.get("name"), "spec.service.name"), port)


def _checkpoint(spec: Mapping[str, Any]) -> CheckpointRef:
    ref = _mapping(spec.get("checkpoint"), "spec.checkpoint", required=False)
    _unknown(ref, ("engine", "volumeClaimName", "keep"), "spec.checkpoint")
    engine = _choice(ref.get("engine"), ENGINES, "spec.checkpoint.engine", "criu")
    claim = ref.get("volumeClaimName", "")
    if not isinstance(claim, str) or (engine != "restart" and not claim):
        raise _fail(
            "required with a checkpoint engine: the claim the pods' snapshots live on",
            "spec.checkpoint.volumeClaimName",
        )
    keep = ref.get("keep", 1)
    return CheckpointRef(engine, claim, keep)


def _workload(name: str, spec: Mapping[str, Any], target: TargetRef, keep: Any) -> WorkloadSettings:
    entry: dict[str, Any] = {
        "name": name,
        "kind": "openai",
        # Nothing runs here: the pods of the target run their command under dormant exec.
        "command": [f"(pods of {target.kind}/{target.name})"],
        "keep_snapshots": keep,
    }
    for snake, key in SPEC_KEYS.items():
        if key in spec:
            entry[snake] = spec[key]
    try:
        # the settings definition is imported when a policy is parsed, not when this module
        # is: the operator's pure plan reads policies without it
        from activator.config.settings import parse_settings

        settings = parse_settings({"workloads": [entry]}, "policy")
    except ConfigError as exc:
        raise PolicyError(_spec_path(str(exc))) from None
    return settings.workloads[0]


def _spec_path(message: str) -> str:
    """``workloads[0].idle_after: ...`` -> ``spec.idleAfter: ...``."""
    path, sep, rest = message.partition(": ")
    if not sep or not path.startswith("workloads[0]"):
        return message
    key = path.removeprefix("workloads[0]").lstrip(".")
    head, dot, tail = key.partition(".")
    if head == "name":
        return f"metadata.name: {rest}"
    if head == "keep_snapshots":
        return f"spec.checkpoint.keep: {rest}"
    if head in SPEC_KEYS:
        return f"spec.{SPEC_KEYS[head]}{dot}{tail}: {rest}"
    return f"spec: {rest}" if not head else f"spec.{camel(head)}{dot}{tail}: {rest}"


def parse_policy(obj: Mapping[str, Any]) -> Policy:
    """A ScaleToZeroPolicy object (as the API server sends it) as a ``Policy``; PolicyError
    with one line naming the key path otherwise."""
    meta = _mapping(obj.get("metadata"), "metadata")
    spec = _mapping(obj.get("spec"), "spec")
    _unknown(spec, [*_OWN_KEYS, *SPEC_KEYS.values()], "spec")
    name = _name(meta.get("name"), "metadata.name")
    target = _target(spec)
    service = _service(spec, target)
    checkpoint = _checkpoint(spec)
    workload: WorkloadSettings | None = None
    if target.scalable:
        if not spec.get("models"):
            raise _fail("required: the OpenAI model names its pods serve", "spec.models")
        workload = _workload(name, spec, target, checkpoint.keep)
        checkpoint = dataclasses.replace(checkpoint, keep=workload.keep_snapshots)
    elif spec.get("models"):
        raise _fail("a Job's pods are not routed by model (leave models out)", "spec.models")
    else:  # the settings are still checked, so a typo is reported the same way
        checked = _workload(name, {**spec, "models": ["-"]}, target, checkpoint.keep)
        checkpoint = dataclasses.replace(checkpoint, keep=checked.keep_snapshots)
    status = obj.get("status") if isinstance(obj.get("status"), Mapping) else {}
    snapshot = status.get("lastSnapshot") if isinstance(status, Mapping) else None
    return Policy(
        namespace=str(meta.get("namespace", "")),
        name=name,
        uid=str(meta.get("uid", "")),
        generation=int(meta.get("generation") or 0),
        created=str(meta.get("creationTimestamp", "")),
        target=target,
        service=service,
        checkpoint=checkpoint,
        kv_cache=_choice(spec.get("kvCache"), KV_CACHE, "spec.kvCache", "keep"),
        on_eviction=_choice(spec.get("onEviction"), ON_EVICTION, "spec.onEviction", "checkpoint"),
        workload=workload,
        last_snapshot=snapshot if isinstance(snapshot, Mapping) and snapshot.get("id") else None,
    )


def serving(policies: Iterable[Policy]) -> tuple[list[Policy], dict[str, str]]:
    """Which policies of one namespace are served, and why the others are not: a model
    named by two policies stays with the older one (creationTimestamp, then name); so does
    a Service or a target claimed twice."""
    served: list[Policy] = []
    refused: dict[str, str] = {}
    owners: dict[tuple[str, str], str] = {}
    for policy in sorted(policies, key=lambda p: (p.created, p.name)):
        models = policy.workload.models if policy.workload is not None else ()
        claims = [("model", m) for m in models]
        claims.append(("target", f"{policy.target.kind}/{policy.target.name}"))
        if policy.service is not None:
            claims.append(("Service", policy.service.name))
        clash = next((c for c in claims if c in owners), None)
        if clash is not None:
            what, value = clash
            refused[policy.name] = (
                f"{what} {value!r} is already managed by policy {owners[clash]!r} (the older "
                "one keeps it); give this policy its own"
            )
            continue
        for claim in claims:
            owners[claim] = policy.name
        served.append(policy)
    return served, refused
