"""Dormant's admin API as the load tests need it: list, inspect and hibernate workloads."""

from __future__ import annotations

from typing import Any

import httpx

__all__ = ["AdminClient", "AdminError"]


class AdminError(Exception):
    """The admin API refused or could not be reached; the message says which and why."""


class AdminClient:
    """A synchronous client for ``/-/workloads`` on ``base_url`` (optionally with a token)."""

    def __init__(self, base_url: str, token: str = "", timeout: float = 300.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout, trust_env=False
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str) -> Any:
        url = f"{self.base_url}{path}"
        try:
            response = self._http.request(method, path)
        except httpx.HTTPError as exc:
            raise AdminError(f"{method} {url}: {type(exc).__name__}: {exc}") from exc
        if response.status_code != 200:
            raise AdminError(
                f"{method} {url}: HTTP {response.status_code}: {response.text[:300]}"
                + (" (is this a Dormant activator?)" if response.status_code == 404 else "")
            )
        try:
            return response.json()
        except ValueError as exc:
            raise AdminError(f"{method} {url}: answer is not JSON: {response.text[:200]}") from exc

    def engine(self) -> dict[str, Any]:
        """The snapshot engine Dormant chose: ``{"name": "criu" | "restart", "reason": ...}``."""
        data = self._call("GET", "/-/workloads")
        engine = data.get("engine") if isinstance(data, dict) else None
        return engine if isinstance(engine, dict) else {}

    def workloads(self) -> list[dict[str, Any]]:
        """``GET /-/workloads``: every workload's view."""
        data = self._call("GET", "/-/workloads")
        return list(data.get("workloads", [])) if isinstance(data, dict) else []

    def workload(self, name: str) -> dict[str, Any]:
        """``GET /-/workloads/NAME``: state, counters, last_wake, snapshot, last_checkpoint."""
        data: dict[str, Any] = self._call("GET", f"/-/workloads/{name}")
        return data

    def hibernate(self, name: str) -> dict[str, Any]:
        """``POST /-/workloads/NAME/hibernate`` (synchronous); the workload's view after it."""
        data: dict[str, Any] = self._call("POST", f"/-/workloads/{name}/hibernate")
        return data

    def wake(self, name: str) -> dict[str, Any]:
        """``POST /-/workloads/NAME/wake``; the workload's view once it is ready."""
        data: dict[str, Any] = self._call("POST", f"/-/workloads/{name}/wake")
        return data

    def workload_for_model(self, model: str) -> str:
        """The name of the workload serving ``model``."""
        for view in self.workloads():
            if model in view.get("models", []):
                return str(view["name"])
        raise AdminError(f"no workload on {self.base_url} serves model {model!r}")
