"""Run a real `dormant up` in a subprocess for integration tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from loadtests.launcher import DormantProcess
from tests.conftest import ROOT, free_port


def ref_workload(name: str, model: str) -> dict[str, Any]:
    """A workload serving the tiny reference LLM (one torch thread: the tests share 2 cores)."""
    return {
        "name": name,
        "models": [model],
        "idle_after": 0,
        "start_timeout": "120s",
        "command": [
            "{python}",
            "-m",
            "examples.refserver",
            "--model",
            model,
            "--size",
            "tiny",
            "--threads",
            "1",
            "--port",
            "{port}",
            "--state-dir",
            "{state_dir}/refserver",
        ],
    }


class Dormant:
    """`python -m activator up -c CONFIG` with a private state dir, on a free loopback port.

    Starting, waiting for health and stopping are :class:`loadtests.launcher.DormantProcess`'s
    (the one launcher the benches and examples use too); this adds what tests ask of it.
    """

    def __init__(
        self,
        tmp: Path,
        workloads: list[dict[str, Any]],
        *,
        environ: dict[str, str] | None = None,
        **settings: Any,
    ) -> None:
        """``settings`` go into the config file; ``environ`` is added to Dormant's
        environment (which its instances inherit)."""
        self.tmp = tmp
        self.environ = {**os.environ, **(environ or {})}
        self.port = free_port()
        self.state = tmp / "state"
        self.process = DormantProcess(
            tmp,
            {
                "listen": f"127.0.0.1:{self.port}",
                "state_dir": str(self.state),
                "reap_interval": 0.2,
                "workloads": workloads,
                **settings,
            },
            env=self.environ,
        )
        self.url = self.process.url
        self.config = self.process.config_path
        self.log_path = self.process.log_path

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        """The last `dormant up` started (still there after it stopped or was killed)."""
        return self.process.proc

    def start(self, timeout: float = 60.0) -> Dormant:
        """Start (again, after a stop or a crash) and wait for ``/-/healthz``; a failure
        raises :class:`loadtests.launcher.StartError` with the log's tail."""
        self.process.start(timeout)
        return self

    def log(self) -> str:
        return self.process.log()

    def admin(self, method: str, path: str, timeout: float = 120.0, **kw: Any) -> httpx.Response:
        return httpx.request(method, f"{self.url}/-{path}", timeout=timeout, **kw)

    def workload(self, name: str) -> dict[str, Any]:
        response = self.admin("GET", f"/workloads/{name}")
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()
        return data

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "activator", *args, "--url", self.url],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
        )

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM by PID, wait ``timeout`` s, then SIGKILL."""
        self.process.stop(timeout)


def pid_alive(pid: int | None) -> bool:
    return (
        pid is not None
        and Path(f"/proc/{pid}").exists()
        and "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    )
