"""Render deploy/'s kustomizations: with `kubectl kustomize` when it is there, else in Python.

kubectl (1.32, kustomize 5.5) is on these machines but no project file installs it (Debian
has only kubectl 1.20, whose kustomize 2.0 reads a different kustomization format). So the
tests render with kubectl when it exists, and otherwise with `render_python`: the small part
of kustomize that deploy/ uses (resources, namespace, configMapGenerator without hashes and
with its own namespace, strategic-merge `patches` by path or inline, `$patch: delete`
included). Where kubectl
exists, a test checks that both agree, so the fallback cannot drift from what users get.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

__all__ = ["CLUSTER_SCOPED", "KustomizeError", "render", "render_kubectl", "render_python"]

Doc = dict[str, Any]

#: Kinds kustomize does not give a namespace to (those deploy/ uses, and their neighbours).
CLUSTER_SCOPED = frozenset(
    {
        "Namespace",
        "CustomResourceDefinition",
        "ClusterRole",
        "ClusterRoleBinding",
        "PersistentVolume",
        "StorageClass",
        "PriorityClass",
        "RuntimeClass",
        "Node",
        "ValidatingWebhookConfiguration",
        "MutatingWebhookConfiguration",
        "APIService",
    }
)


class KustomizeError(RuntimeError):
    """A kustomization could not be rendered (the message says where and why)."""


def render(directory: Path) -> list[Doc]:
    """The manifests `kubectl kustomize DIRECTORY` gives (kubectl if present, else Python)."""
    if shutil.which("kubectl"):
        return render_kubectl(directory)
    return render_python(directory)


def render_kubectl(directory: Path) -> list[Doc]:
    done = subprocess.run(
        ["kubectl", "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        raise KustomizeError(f"kubectl kustomize {directory}: {done.stderr.strip()}")
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def render_python(directory: Path) -> list[Doc]:
    path = directory / "kustomization.yaml"
    if not path.is_file():
        raise KustomizeError(f"{directory}: no kustomization.yaml")
    k = yaml.safe_load(path.read_text()) or {}
    known = {"apiVersion", "kind", "namespace", "resources", "configMapGenerator", "patches"}
    if unknown := set(k) - known:
        raise KustomizeError(f"{path}: render_python does not know {sorted(unknown)}")
    docs: list[Doc] = []
    for res in k.get("resources", []):
        target = (directory / res).resolve()
        if target.is_dir():
            docs += render_python(target)
        else:
            docs += [d for d in yaml.safe_load_all(target.read_text()) if d]
    for gen in k.get("configMapGenerator", []):
        docs.append(_config_map(directory, gen))
    if ns := k.get("namespace"):
        for doc in docs:
            if doc["kind"] not in CLUSTER_SCOPED:
                doc.setdefault("metadata", {})["namespace"] = ns
    for patch in k.get("patches", []):
        if set(patch) == {"path"}:
            text = (directory / patch["path"]).read_text()
        elif set(patch) == {"patch"}:
            text = patch["patch"]
        else:
            raise KustomizeError(f"{path}: only `patches: [{{path: FILE}} | {{patch: YAML}}]`")
        for p in yaml.safe_load_all(text):
            if p:
                _apply(docs, p, path)
    return docs


def _config_map(directory: Path, gen: dict[str, Any]) -> Doc:
    options = gen.get("options", {})
    if not options.get("disableNameSuffixHash"):
        raise KustomizeError("render_python needs disableNameSuffixHash: true")
    data: dict[str, str] = {}
    for entry in gen.get("files", []):
        key, _, rel = entry.partition("=") if "=" in entry else (Path(entry).name, "", entry)
        data[key] = (directory / rel).read_text()
    data |= dict(item.split("=", 1) for item in gen.get("literals", []))
    meta: dict[str, Any] = {"name": gen["name"]}
    if gen.get("namespace"):
        meta["namespace"] = gen["namespace"]
    if options.get("labels"):
        meta["labels"] = dict(options["labels"])
    if options.get("annotations"):
        meta["annotations"] = dict(options["annotations"])
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data}


def _apply(docs: list[Doc], patch: Doc, where: Path) -> None:
    meta = patch["metadata"]
    for n, doc in enumerate(docs):
        if (
            doc["kind"] == patch["kind"]
            and doc["metadata"]["name"] == meta["name"]
            and meta.get("namespace", doc["metadata"].get("namespace"))
            == doc["metadata"].get("namespace")
        ):
            if patch.get("$patch") == "delete":
                del docs[n]
                return
            merged = _merge(doc, patch)
            doc.clear()
            doc.update(merged)
            return
    raise KustomizeError(
        f"{where}: patch for {patch['kind']} {meta.get('namespace', '')}/{meta['name']} "
        "matches nothing"
    )


def _merge(base: Any, patch: Any) -> Any:
    """Strategic merge as deploy/ needs it: maps merge, lists of named maps merge by name
    (new items first, as kustomize does), other lists are replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = copy.deepcopy(base)
        for key, value in patch.items():
            out[key] = _merge(base[key], value) if key in base else copy.deepcopy(value)
        return out
    named = isinstance(base, list) and isinstance(patch, list)
    if named and all(isinstance(i, dict) and "name" in i for i in [*base, *patch]):
        out_list = [copy.deepcopy(i) for i in base]
        added = []
        for item in patch:
            idx = next((n for n, b in enumerate(out_list) if b["name"] == item["name"]), None)
            if idx is None:
                added.append(copy.deepcopy(item))
            else:
                out_list[idx] = _merge(out_list[idx], item)
        return added + out_list  # kustomize puts a patch's new items first
    return copy.deepcopy(patch)
