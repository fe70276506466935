"""The control API of a pod's ``dormant exec`` supervisor (docs/exec.md), as the Kubernetes
runtime calls it: ``/readyz``, ``/status``, ``/checkpoint``, ``/suspend``, ``/resume``,
``/activity`` on the pod IP and the control port, with the bearer token. A pod that does not
answer is a ``KubeError`` (a ``WarmpoolError``); an answer is its status and JSON body."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from warmpool.kube.api import KubeError

__all__ = ["Paths", "PodControl"]


class Paths:
    """The control API's paths: served by ``activator.supervisor.api``, called from here."""

    HEALTHZ = "/healthz"
    READYZ = "/readyz"
    STATUS = "/status"
    ACTIVITY = "/activity"
    CHECKPOINT = "/checkpoint"
    RESTORE = "/restore"
    SUSPEND = "/suspend"
    RESUME = "/resume"


@dataclass(frozen=True)
class PodControl:
    client: httpx.AsyncClient
    port: int = 8081
    token: str = ""

    def url(self, ip: str, path: str) -> str:
        host = f"[{ip}]" if ":" in ip else ip
        return f"http://{host}:{self.port}{path}"

    async def call(
        self, method: str, ip: str, path: str, timeout: float
    ) -> tuple[int, dict[str, Any]]:
        """(status, JSON body) of one call; KubeError when the pod was not reached."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            answer = await self.client.request(
                method, self.url(ip, path), headers=headers, timeout=timeout
            )
        except httpx.HTTPError as exc:
            raise KubeError(f"{method} {path} on {ip}: {type(exc).__name__}: {exc}") from exc
        try:
            body = answer.json()
        except ValueError:
            body = {}
        return answer.status_code, body if isinstance(body, dict) else {}

    @staticmethod
    def error(body: dict[str, Any]) -> str:
        """The message of the supervisor's one error shape (else the body's start)."""
        error = body.get("error") or {}
        return str(error.get("message") or body)[:500]
