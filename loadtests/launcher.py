"""A local Dormant for the bench: ``python -m activator up`` as a subprocess on a free port.

Only a process is started, never imported: the load tests stay a pure client. The config
serves one reference model (``examples.refserver``) as workload ``ref``; it is written as
JSON, which is YAML too.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

__all__ = ["REPO", "LocalDormant", "StartError", "free_port"]

REPO = Path(__file__).resolve().parents[1]
WORKLOAD = "ref"


class StartError(Exception):
    """Dormant exited or did not answer in time; the message carries its log's tail."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalDormant:
    """One ``dormant up`` with its own state dir, serving ``ref-SIZE`` as workload ``ref``.

    ``engine`` is ``auto`` (CRIU when usable) or ``restart``. The reference server's weights
    live in ``weights_dir`` so both engines (and later runs) share one generated file.
    """

    def __init__(self, workdir: Path, engine: str, size: str, weights_dir: Path) -> None:
        self.workdir = workdir
        self.engine = engine
        self.size = size
        self.model = f"ref-{size}"
        self.workload = WORKLOAD
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = workdir / "dormant.yaml"
        self.log_path = workdir / "dormant.log"
        self.weights_dir = weights_dir
        self.proc: subprocess.Popen[bytes] | None = None

    def config(self) -> dict[str, Any]:
        command = ["{python}", "-m", "examples.refserver", "--model", self.model]
        command += ["--size", self.size, "--port", "{port}"]
        command += ["--state-dir", str(self.weights_dir)]
        return {
            "listen": f"127.0.0.1:{self.port}",
            "state_dir": str(self.workdir / "state"),
            "engine": self.engine,
            "reap_interval": 0.2,
            "workloads": [
                {
                    "name": self.workload,
                    "models": [self.model],
                    "command": command,
                    "health_path": "/health",
                    "idle_after": 0,
                    "start_timeout": "600s",
                    "wake_timeout": "300s",
                }
            ],
        }

    def start(self, timeout: float = 60.0) -> LocalDormant:
        """Start Dormant and wait until ``/-/healthz`` answers 200."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.config(), indent=2))
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "activator", "up", "-c", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise StartError(f"dormant exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/-/healthz", timeout=1, trust_env=False).is_success:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise StartError(f"dormant did not answer /-/healthz in {timeout:g}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM (Dormant stops its workloads), wait; SIGKILL only if it hangs."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def __enter__(self) -> LocalDormant:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
