"""Send rendered manifests to the test API server (create, server-side dry run, replace).

Paths come from the server's own discovery, so any kind it serves works, custom resources
included once their CRD is established; a kind it does not serve is an error that says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .rest import ApiException, Rest

__all__ = ["Manifests", "UnknownKind"]

Doc = dict[str, Any]


class UnknownKind(LookupError):
    """The API server does not serve this apiVersion/kind."""


@dataclass(frozen=True)
class _Resource:
    base: str  # /api/v1 or /apis/GROUP/VERSION
    plural: str
    namespaced: bool


class Manifests:
    """Create manifests as they are (namespaces from the manifests themselves)."""

    def __init__(self, rest: Rest) -> None:
        self.rest = rest
        self._cache: dict[str, dict[str, _Resource]] = {}

    def resource(self, api_version: str, kind: str) -> _Resource:
        if api_version not in self._cache:
            base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
            try:
                found = self.rest.get(base)
            except ApiException as exc:
                if exc.status == 404:
                    raise UnknownKind(f"the API server does not serve {api_version}") from exc
                raise
            self._cache[api_version] = {
                r["kind"]: _Resource(base, r["name"], r["namespaced"])
                for r in found.get("resources", [])
                if "/" not in r["name"]
            }
        kinds = self._cache[api_version]
        if kind not in kinds:
            self._cache.pop(api_version)  # a CRD may be established later
            raise UnknownKind(f"the API server serves no {kind} in {api_version}")
        return kinds[kind]

    def path(self, doc: Doc, name: bool = False) -> str:
        res = self.resource(doc["apiVersion"], doc["kind"])
        meta = doc.get("metadata", {})
        path = res.base
        if res.namespaced:
            path += f"/namespaces/{meta.get('namespace') or 'default'}"
        path += f"/{res.plural}"
        return f"{path}/{meta['name']}" if name else path

    def create(self, doc: Doc, *, dry_run: bool = False, exist_ok: bool = False) -> Doc:
        """POST the manifest; with dry_run the server validates and admits it, stores nothing."""
        try:
            return self.rest.post(self.path(doc), doc, dryRun="All" if dry_run else None)
        except ApiException as exc:
            if exc.status == 409 and exist_ok:
                return self.rest.get(self.path(doc, name=True))
            raise

    def delete(self, doc: Doc) -> None:
        try:
            self.rest.delete(self.path(doc, name=True))
        except ApiException as exc:
            if exc.status != 404:
                raise
