"""Plain-JSON calls to the API server through the official client's connection and credentials.

The generated typed models validate every field on the way in and out; a fake kubelet and
manifest tests want the objects exactly as the server sends them. Errors are the client's
own `ApiException` (with `.status`), so callers match on status codes as they would anyway.
"""

from __future__ import annotations

import json
from typing import Any

from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

__all__ = ["MERGE", "STRATEGIC", "ApiException", "Rest"]

MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"


class Rest:
    """`get/post/patch/put/delete` on API paths with dict bodies; answers are dicts."""

    def __init__(self, api: ApiClient, timeout: float = 30.0) -> None:
        self.api = api
        self.timeout = timeout

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: dict[str, Any] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        params = [(k, v) for k, v in (query or {}).items() if v is not None]
        method_, url, headers, body_, post = self.api.param_serialize(
            method,
            path,
            query_params=params,
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
        )
        resp = self.api.call_api(method_, url, headers, body_, post, _request_timeout=self.timeout)
        data = resp.read()
        if not 200 <= resp.status <= 299:
            raise ApiException(http_resp=resp, body=data.decode(errors="replace"))
        return json.loads(data) if data else {}

    def get(self, path: str, **query: Any) -> dict[str, Any]:
        return self.request("GET", path, query=query)

    def post(self, path: str, body: Any, **query: Any) -> dict[str, Any]:
        return self.request("POST", path, body, query)

    def put(self, path: str, body: Any, **query: Any) -> dict[str, Any]:
        return self.request("PUT", path, body, query)

    def patch(
        self, path: str, body: Any, content_type: str = MERGE, **query: Any
    ) -> dict[str, Any]:
        return self.request("PATCH", path, body, query, content_type)

    def delete(self, path: str, body: Any = None, **query: Any) -> dict[str, Any]:
        return self.request("DELETE", path, body, query)
