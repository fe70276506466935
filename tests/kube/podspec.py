"""What the fake kubelet runs for a pod: its container as a local command line, env and cwd.

See tests/kube/kubelet.py for the whole picture. Volumes are local directories and mount
paths are rewritten (every occurrence of a volumeMount's `mountPath`, as a path prefix, in
the command, args, env values, workingDir, probe commands and configMap/secret file contents
becomes the local directory), since nothing can be mounted for a process that is not in a
container.
"""

from __future__ import annotations

import base64
import contextlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .rest import ApiException, Rest

__all__ = ["ContainerPlan", "NotYet", "PodRefused", "Rewriter", "expand", "plan_container"]

ROOT = Path(__file__).resolve().parents[2]
_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


class PodRefused(Exception):
    """The pod uses something this fake cannot do; it becomes Failed with this message."""


class NotYet(Exception):
    """Something the pod needs does not exist yet; the kubelet tries again next tick."""


@dataclass(frozen=True)
class ContainerPlan:
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    container: dict[str, Any]  # the spec, for its name, image, ports and probes
    rewrite: Rewriter


class Rewriter:
    """Replace mount paths (as path prefixes) by local directories in strings."""

    def __init__(self, mounts: dict[str, Path]) -> None:
        ordered = sorted(mounts.items(), key=lambda kv: -len(kv[0]))
        self._map = {k: str(v) for k, v in ordered}
        alternatives = "|".join(re.escape(k) for k, _ in ordered)
        self._re = re.compile(rf"(?<![\w./-])({alternatives})(?=/|$|[^\w.-])") if ordered else None

    def __call__(self, text: str) -> str:
        if self._re is None:
            return text
        return self._re.sub(lambda m: self._map[m.group(1)], text)


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: known vars are replaced, `$$` is a `$`, rest kept."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _VAR.sub(sub, text)


def plan_container(
    rest: Rest,
    pod: dict[str, Any],
    *,
    ip: str,
    host_ip: str,
    node: str,
    scratch: Path,
    claim_dir: Callable[[str, str], Path],
    base_env: dict[str, str],
) -> ContainerPlan:
    """The local command for the pod's only container; PodRefused or NotYet otherwise."""
    spec = pod["spec"]
    if spec.get("initContainers"):
        raise PodRefused("init containers are not supported")
    containers = spec.get("containers", [])
    if len(containers) != 1:
        raise PodRefused(f"exactly one container is supported, the pod has {len(containers)}")
    c = containers[0]
    if not c.get("command"):
        raise PodRefused(f"container {c['name']!r} has no command: no image entrypoints here")
    objects = _Objects(rest, pod["metadata"]["namespace"])
    rewrite = Rewriter(_volumes(objects, pod, c, scratch, claim_dir))
    env = {k: rewrite(v) for k, v in _env(objects, pod, c, ip, host_ip, node).items()}
    argv = [rewrite(expand(a, env)) for a in [*c["command"], *c.get("args", [])]]
    cwd = Path(rewrite(c["workingDir"])) if c.get("workingDir") else ROOT
    if not cwd.is_dir():
        raise PodRefused(f"workingDir {c['workingDir']!r} is not a mounted volume here")
    return ContainerPlan(argv, {**base_env, **env}, cwd, c, rewrite)


class _Objects:
    """ConfigMaps, Secrets and claims of the pod's namespace, as a kubelet reads them."""

    def __init__(self, rest: Rest, namespace: str) -> None:
        self.rest, self.namespace = rest, namespace

    def get(self, what: str, optional: bool = False) -> dict[str, Any]:
        try:
            return self.rest.get(f"/api/v1/namespaces/{self.namespace}/{what}")
        except ApiException as exc:
            if exc.status == 404:
                if optional:
                    return {}
                raise NotYet(f"{what} not found") from exc
            raise

    def data(self, kind: str, name: str, optional: bool) -> dict[str, bytes]:
        obj = self.get(f"{kind}/{name}", optional)
        if kind == "secrets":
            return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
        data = {k: v.encode() for k, v in (obj.get("data") or {}).items()}
        return data | {k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()}


def _volumes(
    objects: _Objects,
    pod: dict[str, Any],
    container: dict[str, Any],
    scratch: Path,
    claim_dir: Callable[[str, str], Path],
) -> dict[str, Path]:
    """mountPath -> local directory (or file, for subPath) for each volumeMount; configMap
    and secret volumes get their files (with mount paths rewritten)."""
    local: dict[str, Path] = {}
    projected: list[dict[str, Any]] = []
    for vol in pod["spec"].get("volumes", []):
        name = vol["name"]
        if "persistentVolumeClaim" in vol:
            claim = vol["persistentVolumeClaim"]["claimName"]
            objects.get(f"persistentvolumeclaims/{claim}")
            path = claim_dir(objects.namespace, claim)
        elif "emptyDir" in vol:
            path = scratch / "volumes" / name
        elif "configMap" in vol or "secret" in vol:
            path = scratch / "volumes" / name
            projected.append(vol)
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
    rewrite = Rewriter(mounts)
    for vol in projected:
        if "configMap" in vol:
            src = vol["configMap"]
            data = objects.data("configmaps", src["name"], src.get("optional", False))
        else:
            src = vol["secret"]
            data = objects.data("secrets", src["secretName"], src.get("optional", False))
        for item in src.get("items") or [{"key": k, "path": k} for k in data]:
            if item["key"] not in data:
                raise PodRefused(f"volume {vol['name']!r}: no key {item['key']!r}")
            dest = local[vol["name"]] / item["path"]
            dest.parent.mkdir(parents=True, exist_ok=True)
            raw = data[item["key"]]
            with contextlib.suppress(UnicodeDecodeError):
                raw = rewrite(raw.decode()).encode()
            dest.write_bytes(raw)
    return mounts


def _env(
    objects: _Objects, pod: dict[str, Any], c: dict[str, Any], ip: str, host_ip: str, node: str
) -> dict[str, str]:
    env: dict[str, str] = {}
    for src in c.get("envFrom", []):
        prefix = src.get("prefix", "")
        for kind, ref_key in (("configmaps", "configMapRef"), ("secrets", "secretRef")):
            if ref_key in src:
                ref = src[ref_key]
                data = objects.data(kind, ref["name"], ref.get("optional", False))
                env |= {prefix + k: v.decode() for k, v in data.items()}
    for var in c.get("env", []):
        name = var["name"]
        if "valueFrom" not in var:
            env[name] = expand(var.get("value", ""), env)
            continue
        vf = var["valueFrom"]
        if "fieldRef" in vf:
            env[name] = _field(pod, vf["fieldRef"]["fieldPath"], ip, host_ip, node)
        elif "configMapKeyRef" in vf or "secretKeyRef" in vf:
            secret = "secretKeyRef" in vf
            ref = vf["secretKeyRef" if secret else "configMapKeyRef"]
            kind = "secrets" if secret else "configmaps"
            value = objects.data(kind, ref["name"], ref.get("optional", False)).get(ref["key"])
            if value is None:
                if ref.get("optional"):
                    continue
                raise NotYet(f"key {ref['key']!r} not in {kind}/{ref['name']}")
            env[name] = value.decode()
        else:
            raise PodRefused(f"env {name}: only fieldRef, configMapKeyRef and secretKeyRef")
    return env


def _field(pod: dict[str, Any], path: str, ip: str, host_ip: str, node: str) -> str:
    """The downward API's `fieldRef`."""
    meta, spec = pod["metadata"], pod["spec"]
    simple = {
        "metadata.name": meta["name"],
        "metadata.namespace": meta["namespace"],
        "metadata.uid": meta["uid"],
        "spec.nodeName": node,
        "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
        "status.podIP": ip,
        "status.hostIP": host_ip,
    }
    if path in simple:
        return str(simple[path])
    m = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if m:
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    raise PodRefused(f"fieldRef {path!r} is not supported")
