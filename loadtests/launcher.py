"""Start ``dormant up`` with a config, wait for ``/-/healthz``, stop it by PID.

The one launcher of a local Dormant for the benches, the notebook example and the test
harness. Only a process is started, never imported: the load tests stay a pure client.

* :class:`DormantProcess`: one ``python -m activator up -c CONFIG`` with its log file, a
  bounded wait for health (:class:`StartError` with the log's tail when it exits or stays
  silent) and a bounded stop (SIGTERM, then SIGKILL) of exactly the process it started.
* :class:`LocalDormant`: a :class:`DormantProcess` serving one workload from its own state
  directory, as the benches use it (:meth:`LocalDormant.reference` serves the reference
  model ``examples.refserver`` as workload ``ref``).

Configs are written as JSON, which is YAML too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from loadtests.admin import AdminClient, AdminError

__all__ = [
    "REPO",
    "DormantProcess",
    "LocalDormant",
    "StartError",
    "check_port",
    "free_port",
    "port_arg",
    "stop_process",
]

REPO = Path(__file__).resolve().parents[1]
LOOPBACK = "127.0.0.1"


class StartError(Exception):
    """Dormant exited or did not answer in time; the message carries its log's tail."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def check_port(port: int, what: str = "port") -> None:
    """Raise :class:`StartError` when something already listens on 127.0.0.1:``port``.

    ``SO_REUSEADDR`` as servers bind: a port whose last connections linger in TIME_WAIT
    (a Dormant just stopped on it) counts as free, since the server's own bind succeeds.
    """
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((LOOPBACK, port))
        except OSError as exc:
            raise StartError(
                f"{what} {port} is not free on {LOOPBACK} ({exc.strerror}); "
                "pick another or leave it out for a free one"
            ) from None


def port_arg(text: str) -> int:
    """An ``argparse`` type for port options: 1..65535."""
    port = int(text) if text.isdigit() else -1
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"expected a TCP port 1-65535, got {text!r}")
    return port


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM to a process this one started, ``timeout`` seconds, then SIGKILL."""
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def _listen_port(config: Mapping[str, Any]) -> int:
    listen = str(config.get("listen", ""))
    host, _, port = listen.rpartition(":")
    if host.strip("[]") not in (LOOPBACK, "localhost") or not port.isdigit():
        raise ValueError(f"the launcher needs listen: {LOOPBACK}:PORT, got {listen!r}")
    return int(port)


class DormantProcess:
    """``python -m activator up -c CONFIG`` as a subprocess of this one.

    ``config`` (top-level keys, ``listen`` on 127.0.0.1) is written to ``workdir/dormant.yaml``
    at once; Dormant's output is appended to ``workdir/dormant.log``. ``env`` is Dormant's
    whole environment (default: this one's), which its instances inherit. ``isolated``
    starts it in its own session (a Ctrl-C reaches only the caller, which stops it), with
    no stdin and unbuffered output. ``repo`` runs Dormant from another checkout (its
    directory, first on PYTHONPATH), e.g. an older commit measured beside this one.

    :meth:`start` may be called again after :meth:`stop` or a crash: it is the same config,
    port and log.
    """

    def __init__(
        self,
        workdir: Path,
        config: Mapping[str, Any],
        *,
        env: Mapping[str, str] | None = None,
        isolated: bool = False,
        repo: Path | None = None,
    ) -> None:
        self.workdir = workdir
        self.repo = repo or REPO
        self.port = _listen_port(config)
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.config_path = workdir / "dormant.yaml"
        self.log_path = workdir / "dormant.log"
        self.env = dict(env) if env is not None else None
        self.isolated = isolated
        self.proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(dict(config), indent=2))

    def start(self, timeout: float = 60.0) -> None:
        """Start Dormant and wait until ``/-/healthz`` answers 200.

        Raises :class:`StartError` (with the log's tail) when the port is taken, when Dormant
        exits first, or after ``timeout`` seconds without health; it is stopped then.
        """
        if self.running:
            raise StartError(f"dormant is already running (pid {self.pid}) on {self.url}")
        check_port(self.port, "listen port")
        env = dict(self.env if self.env is not None else os.environ)
        if self.isolated:
            env["PYTHONUNBUFFERED"] = "1"
        if self.repo != REPO:
            env["PYTHONPATH"] = os.pathsep.join(
                filter(None, [str(self.repo), env.get("PYTHONPATH")])
            )
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "activator", "up", "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL if self.isolated else None,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.repo,
                env=env,
                start_new_session=self.isolated,
            )
        self._wait_healthy(self.proc, timeout)

    def _wait_healthy(self, proc: subprocess.Popen[bytes], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=1.0, trust_env=False) as client:
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    raise StartError(
                        f"dormant exited with {proc.returncode} before it was healthy "
                        f"(config {self.config_path}); its log:\n{self.log_tail()}"
                    )
                try:
                    if client.get(f"{self.url}/-/healthz").status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
        self.stop()
        raise StartError(
            f"dormant did not answer {self.url}/-/healthz within {timeout:g}s; stopped it. "
            f"Its log:\n{self.log_tail()}"
        )

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        """Everything Dormant wrote so far ('' before the first start)."""
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 30) -> str:
        text = self.log()
        return "\n".join(text.splitlines()[-lines:]) if text else "(the log is empty)"

    def stop(self, timeout: float = 60.0) -> list[str]:
        """SIGTERM the process this started (Dormant stops its workloads) and wait up to
        ``timeout`` s; SIGKILL only if it hangs. Returns notes on anything that needed force.
        Nothing to do when it is not running (never started, stopped, or crashed)."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return []
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
            return []
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            return [f"note: Dormant (pid {proc.pid}) did not stop within {timeout:g}s; killed it"]


class LocalDormant:
    """One ``dormant up`` with its own state dir, serving one workload.

    ``engine`` is ``auto`` (CRIU when usable) or ``restart``; ``workload`` is the workload's
    config entry (its ``name`` and first model become :attr:`workload` and :attr:`model`)
    and ``settings`` further top-level config keys (an ``admin_token`` there is used for the
    admin API too). ``port`` is Dormant's listen port (default: a free one). ``isolated``
    starts Dormant in its own session with none of this environment's ``DORMANT_*``
    variables, so the config alone decides.
    """

    def __init__(
        self,
        workdir: Path,
        engine: str,
        workload: dict[str, Any],
        settings: dict[str, Any] | None = None,
        *,
        isolated: bool = False,
        port: int | None = None,
        repo: Path | None = None,
    ) -> None:
        self.workdir = workdir
        self.repo = repo
        self.engine = engine
        self.workload = str(workload["name"])
        self.model = str(workload["models"][0])
        self.settings = settings or {}
        self.isolated = isolated
        self.port = port or free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.config_path = workdir / "dormant.yaml"
        self.log_path = workdir / "dormant.log"
        self.process: DormantProcess | None = None
        self._workload_entry = workload
        self._upstream: tuple[int, bytes] | None = None

    @classmethod
    def reference(
        cls,
        workdir: Path,
        engine: str,
        size: str,
        weights_dir: Path,
        *,
        port: int | None = None,
        upstream_port: int | None = None,
    ) -> LocalDormant:
        """Serving ``ref-SIZE`` as workload ``ref`` (on ``upstream_port``, default: a free
        one Dormant picks).

        The reference server's weights live in ``weights_dir`` so both engines (and later
        runs) share one generated file.
        """
        model = f"ref-{size}"
        command = ["{python}", "-m", "examples.refserver", "--model", model]
        command += ["--size", size, "--port", "{port}"]
        command += ["--state-dir", str(weights_dir)]
        workload: dict[str, Any] = {
            "name": "ref",
            "models": [model],
            "command": command,
            "health_path": "/health",
            "idle_after": 0,
            "start_timeout": "600s",
            "wake_timeout": "300s",
        }
        if upstream_port:
            workload["port"] = upstream_port
        return cls(workdir, engine, workload, {"reap_interval": 0.2}, port=port)

    def config(self) -> dict[str, Any]:
        return {
            "listen": f"{LOOPBACK}:{self.port}",
            "state_dir": str(self.workdir / "state"),
            "engine": self.engine,
            **self.settings,
            "workloads": [self._workload_entry],
        }

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        return self.process.proc if self.process is not None else None

    def start(self, timeout: float = 60.0) -> LocalDormant:
        """Write the config, start Dormant and wait until ``/-/healthz`` answers 200."""
        env = None
        if self.isolated:
            env = {k: v for k, v in os.environ.items() if not k.startswith("DORMANT_")}
        if (upstream := self._workload_entry.get("port")) and isinstance(upstream, int):
            check_port(upstream, f"workload {self.workload}'s port")
        self.process = DormantProcess(
            self.workdir, self.config(), env=env, isolated=self.isolated, repo=self.repo
        )
        self.process.start(timeout)
        return self

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
        if self.process is None:
            return "(not started)"
        return self.process.log_tail(lines)

    def stop(self, timeout: float = 60.0) -> list[str]:
        """SIGTERM (Dormant stops its workloads), wait; SIGKILL only if it hangs.

        Returns notes on anything that needed force, including a workload that
        :meth:`upstream_port` saw and Dormant left running (it gets a SIGTERM).
        """
        if self.process is None or not self.process.running:
            return []
        notes = self.process.stop(timeout)
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
