"""Plain-JSON calls to a Kubernetes API server, with every foreign error translated here.

The official ``kubernetes`` client (the ``kube`` extra, imported only by this module and
only when a cluster is used) gives the connection, credentials and TLS; requests go through
``ApiClient.call_api`` with dict bodies, and answers are the objects as the server sends
them (no generated models). Its ``ApiException``, urllib3's connection errors and the
kubeconfig loader's ``ConfigException`` become ``KubeError`` (a ``WarmpoolError``) with the
HTTP status, so callers above match on warmpool's errors only.

Calls are blocking; ``KubeApi`` runs each in a thread (``asyncio.to_thread``), bounded by
``timeout`` seconds.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from warmpool.errors import WarmpoolError

__all__ = ["MERGE_PATCH", "KubeApi", "KubeError", "connect", "default_namespace"]

MERGE_PATCH = "application/merge-patch+json"
_SA_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class KubeError(WarmpoolError):
    """An API call failed: ``status`` is the HTTP status (0 when the server was not
    reached), the message says what was asked and what the server said."""

    def __init__(self, message: str, status: int = 0, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


def connect(kubeconfig: str = "") -> Any:
    """An ``ApiClient``: from ``kubeconfig`` when given, else the pod's service account
    inside a cluster, else $KUBECONFIG or ~/.kube/config. KubeError saying why otherwise
    (also when the ``kube`` extra is not installed)."""
    try:
        from kubernetes import client as k8s
        from kubernetes import config as k8s_config
        from kubernetes.config.config_exception import ConfigException
    except ImportError as exc:
        raise KubeError(
            f"runtime kubernetes needs the `kube` extra ({exc}): pip install 'dormant[kube]'"
        ) from exc
    # urllib3 logs a warning for each of its own retries (three per failed call): with the API
    # server away that is lines a second. Callers retry with back-off and say it once.
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    try:
        if kubeconfig:
            return k8s_config.new_client_from_config(config_file=kubeconfig)
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            configuration = k8s.Configuration()
            k8s_config.load_incluster_config(client_configuration=configuration)
            return k8s.ApiClient(configuration)
        return k8s_config.new_client_from_config()
    except (ConfigException, OSError, ValueError) as exc:
        where = kubeconfig or "the in-cluster service account or the default kubeconfig"
        raise KubeError(f"cannot use {where}: {exc}") from exc


def default_namespace(configured: str = "") -> str:
    """``configured``, else $POD_NAMESPACE, else the service account's, else 'default'."""
    if configured:
        return configured
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    try:
        return _SA_NAMESPACE.read_text().strip() or "default"
    except OSError:
        return "default"


def _message(body: bytes) -> str:
    """The server's Status message, else the body's start."""
    text = body.decode(errors="replace")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return text[:300]
    return str(data.get("message") or text[:300]) if isinstance(data, dict) else text[:300]


@dataclass
class KubeApi:
    """``get/post/patch/put/delete`` on API paths with dict bodies (see the module doc)."""

    client: Any  # kubernetes.client.ApiClient
    timeout: float = 30.0

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: dict[str, Any] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        """One blocking call; the answer as a dict. KubeError otherwise."""
        import urllib3
        from kubernetes.client.exceptions import ApiException

        params = [(k, v) for k, v in (query or {}).items() if v is not None]
        what = f"{method} {path}"
        try:
            method_, url, headers, body_, post = self.client.param_serialize(
                method,
                path,
                query_params=params,
                header_params={"Content-Type": content_type, "Accept": "application/json"},
                body=body,
                auth_settings=["BearerToken"],
            )
            resp = self.client.call_api(
                method_, url, headers, body_, post, _request_timeout=self.timeout
            )
            data = resp.read()
        except ApiException as exc:
            raise KubeError(f"{what}: {exc.reason}", exc.status or 0, str(exc.reason)) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise KubeError(f"{what}: the API server did not answer ({exc})") from exc
        if not 200 <= resp.status <= 299:
            message = _message(data)
            raise KubeError(f"{what}: {resp.status} {message}", resp.status, message)
        try:
            answer = json.loads(data) if data else {}
        except json.JSONDecodeError as exc:
            raise KubeError(f"{what}: the answer is not JSON ({exc})", resp.status) from exc
        return answer if isinstance(answer, dict) else {"items": answer}

    # -- async, in a thread ------------------------------------------------------------------
    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: dict[str, Any] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        return await asyncio.to_thread(self.call, method, path, body, query, content_type)

    async def get(self, path: str, **query: Any) -> dict[str, Any]:
        return await self.request("GET", path, query=query)

    async def find(self, path: str, **query: Any) -> dict[str, Any] | None:
        """GET, or None when it does not exist (404)."""
        try:
            return await self.get(path, **query)
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    async def post(self, path: str, body: Any, **query: Any) -> dict[str, Any]:
        return await self.request("POST", path, body, query)

    async def put(self, path: str, body: Any, **query: Any) -> dict[str, Any]:
        return await self.request("PUT", path, body, query)

    async def merge(self, path: str, body: Any, **query: Any) -> dict[str, Any]:
        """A JSON merge patch (RFC 7386): maps merge, null deletes a key."""
        return await self.request("PATCH", path, body, query, MERGE_PATCH)

    async def delete(self, path: str, **query: Any) -> dict[str, Any]:
        return await self.request("DELETE", path, query=query)

    def close(self) -> None:
        self.client.close()
