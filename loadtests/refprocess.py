"""A reference server started directly (no Dormant), and the PSS of a process tree.

For the benches that measure the reference server itself: started with
``python -m examples.refserver`` as a process (never imported: the load tests stay a pure
client), waited for with a deadline, stopped by PID.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from loadtests.launcher import REPO, free_port, stop_process

__all__ = ["ServerError", "pss", "reference_server", "server_command", "tree_pss"]

KV_CACHE_TOKENS = 1024
"""The servers' prefix KV cache bound: keeps their footprint near what was measured."""


class ServerError(Exception):
    """The reference server exited or did not answer in time; the message says why."""


def pss(pid: int) -> int:
    """PSS of one process in bytes (0 once gone)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def tree_pss(pid: int) -> int:
    """PSS of ``pid`` and its descendants (from /proc/PID/task/*/children)."""
    total, queue = 0, [pid]
    while queue:
        current = queue.pop()
        total += pss(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                queue += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
    return total


def server_command(model: str, size: str, weights: Path, port: str, hold: int) -> list[str]:
    """The reference server's command line (``port`` may be Dormant's ``{port}``)."""
    command = ["-m", "examples.refserver", "--model", model, "--size", size, "--port", port]
    command += ["--state-dir", str(weights), "--kv-cache-tokens", str(KV_CACHE_TOKENS)]
    return command + (["--hold-device-memory", str(hold)] if hold else [])


@contextmanager
def reference_server(
    workdir: Path, model: str, size: str, weights: Path, hold: int
) -> Iterator[tuple[str, int]]:
    """A reference server started directly; yields (url, pid); stopped by PID afterwards."""
    port = free_port()
    log_path = workdir / f"{model}.log"
    command = [sys.executable, *server_command(model, size, weights, str(port), hold)]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        with httpx.Client(timeout=2, trust_env=False) as client:
            while True:
                if proc.poll() is not None:
                    tail = log_path.read_text(errors="replace")[-1500:]
                    raise ServerError(f"{model} exited with {proc.returncode}: {tail}")
                if time.monotonic() > deadline:
                    raise ServerError(f"{model} did not answer /health within 600s; see {log_path}")
                try:
                    if client.get(f"{url}/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
        yield url, proc.pid
    finally:
        stop_process(proc, 30)
