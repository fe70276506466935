"""A container's readinessProbe as the fake kubelet runs it (httpGet, tcpSocket, exec)."""

from __future__ import annotations

import socket
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .network import PodAddress
from .podspec import PodRefused

__all__ = ["Readiness", "run_probe"]


class Readiness:
    """Ready or not, after `successThreshold` successes / `failureThreshold` failures of
    probes every `periodSeconds` from `initialDelaySeconds` after each container start.
    Without a probe the container is ready while it runs."""

    def __init__(
        self, probe: dict[str, Any] | None, container: dict[str, Any], rewrite: Callable[[str], str]
    ) -> None:
        self.probe = _resolve(probe, container, rewrite) if probe else None
        self.ready = False
        self._next = 0.0
        self._successes = self._failures = 0

    def started(self, now: float) -> None:
        """The container (re)started: not ready until the probe says so."""
        self.ready = self.probe is None
        self._successes = self._failures = 0
        self._next = now + float((self.probe or {}).get("initialDelaySeconds", 0))

    def tick(self, now: float, address: PodAddress, env: dict[str, str], cwd: Path) -> None:
        if self.probe is None or now < self._next:
            return
        self._next = now + float(self.probe.get("periodSeconds", 10))
        if run_probe(self.probe, address, env, cwd):
            self._successes, self._failures = self._successes + 1, 0
            if self._successes >= int(self.probe.get("successThreshold", 1)):
                self.ready = True
        else:
            self._failures, self._successes = self._failures + 1, 0
            if self._failures >= int(self.probe.get("failureThreshold", 3)):
                self.ready = False


def _resolve(
    probe: dict[str, Any], container: dict[str, Any], rewrite: Callable[[str], str]
) -> dict[str, Any]:
    """Named ports to numbers, mount paths in exec commands rewritten."""
    probe = dict(probe)
    for kind in ("httpGet", "tcpSocket"):
        if kind in probe:
            action = dict(probe[kind])
            port = action.get("port")
            if port is None:
                raise PodRefused(f"readinessProbe.{kind} has no port")
            if isinstance(port, str) and not port.isdigit():
                named = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
                if port not in named:
                    raise PodRefused(f"readinessProbe names port {port!r}; the container lacks it")
                port = named[port]
            action["port"] = int(port)
            probe[kind] = action
    if "exec" in probe:
        probe["exec"] = {"command": [rewrite(a) for a in probe["exec"]["command"]]}
    return probe


def run_probe(probe: dict[str, Any], address: PodAddress, env: dict[str, str], cwd: Path) -> bool:
    """One probe against the pod at `address`, bounded by its timeoutSeconds (default 1):
    httpGet and tcpSocket from the node to the pod IP, exec inside the pod's network
    namespace."""
    ip = address.ip
    timeout = float(probe.get("timeoutSeconds", 1))
    if "httpGet" in probe:
        g = probe["httpGet"]
        scheme = g.get("scheme", "HTTP").lower()
        url = f"{scheme}://{g.get('host') or ip}:{g['port']}{g.get('path', '/')}"
        headers = {h["name"]: h["value"] for h in g.get("httpHeaders", [])}
        ctx = ssl._create_unverified_context() if scheme == "https" else None
        try:
            req = urllib.request.Request(url, headers=headers)
            with urllib.request.urlopen(req, timeout=timeout, context=ctx) as resp:
                return 200 <= resp.status < 400
        except urllib.error.HTTPError as exc:
            return 200 <= exc.code < 400
        except (OSError, ValueError):
            return False
    if "tcpSocket" in probe:
        t = probe["tcpSocket"]
        try:
            with socket.create_connection((t.get("host") or ip, t["port"]), timeout=timeout):
                return True
        except OSError:
            return False
    if "exec" in probe:
        try:
            done = subprocess.run(
                address.wrap(probe["exec"]["command"]),
                env=env,
                cwd=cwd,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
        return done.returncode == 0
    return True
