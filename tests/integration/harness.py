"""Run a real `dormant up` in a subprocess for integration tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

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
    """`python -m activator up -c CONFIG` with a private state dir, on a free loopback port."""

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
        self.url = f"http://127.0.0.1:{self.port}"
        self.state = tmp / "state"
        self.config = tmp / "dormant.yaml"
        self.config.write_text(
            yaml.safe_dump(
                {
                    "listen": f"127.0.0.1:{self.port}",
                    "state_dir": str(self.state),
                    "reap_interval": 0.2,
                    "workloads": workloads,
                    **settings,
                }
            )
        )
        self.log_path = tmp / "dormant.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> Dormant:
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child for its lifetime
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "activator", "up", "-c", str(self.config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=self.environ,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"dormant exited {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/-/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"dormant not up after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

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

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def pid_alive(pid: int | None) -> bool:
    return (
        pid is not None
        and Path(f"/proc/{pid}").exists()
        and "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    )
