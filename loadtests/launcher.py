"""A local Dormant for the benches: ``python -m activator up`` as a subprocess on a free port.

Only a process is started, never imported: the load tests stay a pure client. The config
serves one workload (for the TTFT bench, the reference model ``examples.refserver`` as
workload ``ref``: :meth:`LocalDormant.reference`); it is written as JSON, which is YAML too.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from loadtests.admin import AdminClient, AdminError

__all__ = ["REPO", "LocalDormant", "StartError", "free_port"]

REPO = Path(__file__).resolve().parents[1]


class StartError(Exception):
    """Dormant exited or did not answer in time; the message carries its log's tail."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalDormant:
    """One ``dormant up`` with its own state dir, serving one workload.

    ``engine`` is ``auto`` (CRIU when usable) or ``restart``; ``workload`` is the workload's
    config entry (its ``name`` and first model become :attr:`workload` and :attr:`model`)
    and ``settings`` further top-level config keys (an ``admin_token`` there is used for the
    admin API too). ``isolated`` starts Dormant in its own session (a Ctrl-C reaches only the
    caller, which stops it), with no stdin, unbuffered output and none of this environment's
    ``DORMANT_*`` variables, so the config alone decides.
    """

    def __init__(
        self,
        workdir: Path,
        engine: str,
        workload: dict[str, Any],
        settings: dict[str, Any] | None = None,
        *,
        isolated: bool = False,
    ) -> None:
        self.workdir = workdir
        self.engine = engine
        self.workload = str(workload["name"])
        self.model = str(workload["models"][0])
        self.settings = settings or {}
        self.isolated = isolated
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = workdir / "dormant.yaml"
        self.log_path = workdir / "dormant.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._workload_entry = workload
        self._upstream: tuple[int, bytes] | None = None

    @classmethod
    def reference(cls, workdir: Path, engine: str, size: str, weights_dir: Path) -> LocalDormant:
        """Serving ``ref-SIZE`` as workload ``ref``.

        The reference server's weights live in ``weights_dir`` so both engines (and later
        runs) share one generated file.
        """
        model = f"ref-{size}"
        command = ["{python}", "-m", "examples.refserver", "--model", model]
        command += ["--size", size, "--port", "{port}"]
        command += ["--state-dir", str(weights_dir)]
        workload = {
            "name": "ref",
            "models": [model],
            "command": command,
            "health_path": "/health",
            "idle_after": 0,
            "start_timeout": "600s",
            "wake_timeout": "300s",
        }
        return cls(workdir, engine, workload, {"reap_interval": 0.2})

    def config(self) -> dict[str, Any]:
        return {
            "listen": f"127.0.0.1:{self.port}",
            "state_dir": str(self.workdir / "state"),
            "engine": self.engine,
            **self.settings,
            "workloads": [self._workload_entry],
        }

    def start(self, timeout: float = 60.0) -> LocalDormant:
        """Start Dormant and wait until ``/-/healthz`` answers 200."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.config(), indent=2))
        env = None
        if self.isolated:
            env = {k: v for k, v in os.environ.items() if not k.startswith("DORMANT_")}
            env["PYTHONUNBUFFERED"] = "1"
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "activator", "up", "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL if self.isolated else None,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env=env,
                start_new_session=self.isolated,
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

    def upstream_port(self, timeout: float = 10.0) -> int:
        """The running workload's port, from the admin API.

        Its pid is remembered too, so that :meth:`stop` makes sure that process is gone.
        """
        token = str(self.settings.get("admin_token", ""))
        with AdminClient(self.url, token, timeout=timeout) as admin:
            view = admin.workload(self.workload)
        if not view.get("port"):
            raise AdminError(f"admin API shows no upstream port: {view}")
        if pid := view.get("pid"):
            with contextlib.suppress(OSError):
                self._upstream = (int(pid), Path(f"/proc/{pid}/cmdline").read_bytes())
        return int(view["port"])

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 60.0) -> list[str]:
        """SIGTERM (Dormant stops its workloads), wait; SIGKILL only if it hangs.

        Returns notes on anything that needed force, including a workload that
        :meth:`upstream_port` saw and Dormant left running (it gets a SIGTERM).
        """
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return []
        notes = []
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            notes.append(f"note: Dormant did not stop within {timeout:.0f}s; killing it")
            proc.kill()
            proc.wait(10)
        if self._upstream is not None:
            notes += _stop_leftover(*self._upstream)
        return notes

    def __enter__(self) -> LocalDormant:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _stop_leftover(pid: int, cmdline: bytes, timeout: float = 10.0) -> list[str]:
    """SIGTERM ``pid`` if, ``timeout`` s on, it still runs ``cmdline`` (and is no zombie)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _runs(pid, cmdline):
            return []
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    return [f"note: Dormant left its upstream (pid {pid}) running; stopping it"]


def _runs(pid: int, cmdline: bytes) -> bool:
    try:
        now = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return now == cmdline and stat.rsplit(")", 1)[-1].split()[0] != "Z"
