"""Notebook hibernation against a cold restart, for a kernel holding a big NumPy array.

Starts a real Dormant (``python -m activator up``) with one notebook server, creates a
kernel through it and allocates ``a = numpy.random.rand(N)`` (500 MB by default). Then,
``--repeat`` times: hibernate through the admin API (CRIU dump of the server with its
kernel) and wake with the next request, timing the hibernation, the snapshot size, the
first HTTP response after it and the first kernel output. For comparison, the state is
then rebuilt the way it must be without a checkpoint: restart the kernel and allocate
again, and a second Dormant with ``engine: restart`` (hibernate = stop, wake = cold boot
of the server, then a new kernel and the allocation). Prints a table.

    .venv/bin/python -m examples.notebook_bench [--mb 500] [--repeat 3] [--port N]

A measurement, not a test: numbers depend on the machine (CPU, memory bandwidth, the
disk under the state directory).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from websockets.sync.client import ClientConnection, connect

from loadtests.launcher import DormantProcess, StartError, check_port, free_port, port_arg
from loadtests.notebook import execute_request

NAME = "bench"


class Dormant:
    """A `dormant up` subprocess with one notebook server (on loopback), started and stopped
    by :class:`loadtests.launcher.DormantProcess`.

    ``port`` is Dormant's listen port and ``server_port`` the notebook server's (default:
    free ones).
    """

    def __init__(
        self, work: Path, engine: str, port: int | None = None, server_port: int | None = None
    ) -> None:
        self.admin_token = secrets.token_hex(16)
        self.token = secrets.token_hex(24)
        work.mkdir(parents=True, exist_ok=True)
        (work / "admin-token").write_text(self.admin_token)
        (work / "token").write_text(self.token)
        (work / "token").chmod(0o600)
        workload: dict[str, Any] = {
            "name": NAME,
            "kind": "jupyter",
            "idle_after": 0,
            "token_file": str(work / "token"),
            "checkpoint_timeout": "10m",
            "restore_timeout": "10m",
        }
        if server_port:
            check_port(server_port, "the notebook server's port")
            workload["port"] = server_port
        self.process = DormantProcess(
            work,
            {
                "listen": f"127.0.0.1:{port or free_port()}",
                "state_dir": str(work / "s"),
                "engine": engine,
                "admin_token_file": str(work / "admin-token"),
                "workloads": [workload],
            },
        )
        self.url = self.process.url

    def __enter__(self) -> Dormant:
        self.process.start(timeout=60)
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.stop(timeout=60)

    def admin(self, method: str, path: str) -> dict[str, Any]:
        response = httpx.request(
            method,
            f"{self.url}/-{path}",
            headers={"Authorization": f"Bearer {self.admin_token}"},
            timeout=600,
        )
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    @property
    def api(self) -> str:
        return f"{self.url}/notebooks/{NAME}/api"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}"}


class Kernel:
    """A kernel on the notebook server behind ``dormant``, driven over its WebSocket."""

    def __init__(self, dormant: Dormant) -> None:
        self.dormant = dormant
        self.session = uuid.uuid4().hex
        response = httpx.post(f"{dormant.api}/kernels", json={}, headers=dormant.auth, timeout=600)
        response.raise_for_status()
        self.id = str(response.json()["id"])

    def connect(self) -> ClientConnection:
        """The kernel's channels (connecting wakes a hibernated server); use with `with`."""
        uri = self.dormant.api.replace("http://", "ws://", 1)
        return connect(
            f"{uri}/kernels/{self.id}/channels?session_id={self.session}",
            additional_headers=self.dormant.auth,
            open_timeout=600,
            max_size=None,
        )

    def execute(self, ws: ClientConnection, code: str, timeout: float = 600) -> tuple[str, float]:
        """Run ``code``; returns its stream output and the seconds to its first output
        (to the reply when there is none)."""
        msg_id = uuid.uuid4().hex
        started = time.perf_counter()
        ws.send(json.dumps(execute_request(self.session, code, msg_id=msg_id, username="bench")))
        text, first, replied, idle = "", None, False, False
        while not (replied and idle):
            message = json.loads(ws.recv(timeout=timeout))
            if message.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = message["header"]["msg_type"]
            if kind == "stream":
                first = first or time.perf_counter() - started
                text += message["content"]["text"]
            elif kind == "error":
                raise RuntimeError(f"{message['content']['ename']}: {message['content']['evalue']}")
            elif kind == "execute_reply":
                replied = True
                first = first or time.perf_counter() - started
            elif kind == "status" and message["content"]["execution_state"] == "idle":
                idle = True
        assert first is not None
        return text, first


def _timed(action: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    result = action()
    return result, time.perf_counter() - started


def _allocate(kernel: Kernel, n: int) -> None:
    code = f"import numpy\na = numpy.random.rand({n})\nprint(a.nbytes)"
    with kernel.connect() as ws:
        text, _ = kernel.execute(ws, code)
    assert int(text) == n * 8, text


def _criu_cycles(
    work: Path, n: int, repeat: int, ports: tuple[int | None, int | None] = (None, None)
) -> dict[str, list[float]]:
    rows: dict[str, list[float]] = {}

    def add(key: str, value: float) -> None:
        rows.setdefault(key, []).append(value)

    with Dormant(work / "c", "criu", *ports) as dormant:
        kernel = Kernel(dormant)
        _, seconds = _timed(lambda: _allocate(kernel, n))
        add("allocate the array in a fresh kernel (incl. connect)", seconds)
        with kernel.connect() as ws:
            checksum, _ = kernel.execute(ws, "print(float(a.sum()))")
        for _ in range(repeat):
            view, seconds = _timed(lambda: dormant.admin("POST", f"/workloads/{NAME}/hibernate"))
            assert view["state"] == "hibernated", view
            add("hibernate: admin call (drain + dump + commit)", seconds)
            add("  of which CRIU dump", view["last_checkpoint"]["seconds"])
            add("snapshot size (MB)", view["last_checkpoint"]["bytes"] / 1e6)
            # a poll (GET api/kernels) no longer wakes a notebook: what the user does does;
            # the admin wake returns once it is ready, like the first user action would
            view, seconds = _timed(lambda: dormant.admin("POST", f"/workloads/{NAME}/wake"))
            assert view["state"] == "ready", view
            add("wake: admin wake until ready", seconds)
            view = dormant.admin("GET", f"/workloads/{NAME}")
            assert view["last_wake"]["path"] == "restore", view
            add("  of which restore (verify + CRIU + health)", view["last_wake"]["seconds"])
            started = time.perf_counter()
            with kernel.connect() as ws:
                text, _ = kernel.execute(ws, "print(float(a.sum()))")
                add("then: WebSocket connect + a.sum() output", time.perf_counter() - started)
            assert text == checksum, (text, checksum)
        # Without a checkpoint the state must be rebuilt: restart the kernel, recompute.
        started = time.perf_counter()
        response = httpx.post(
            f"{dormant.api}/kernels/{kernel.id}/restart", headers=dormant.auth, timeout=600
        )
        response.raise_for_status()
        _allocate(kernel, n)
        add("kernel restart + allocate again (state lost)", time.perf_counter() - started)

    with Dormant(work / "r", "restart", *ports) as dormant:
        Kernel(dormant)  # boots the server once
        assert dormant.admin("POST", f"/workloads/{NAME}/hibernate")["state"] == "cold"
        started = time.perf_counter()
        view = dormant.admin("POST", f"/workloads/{NAME}/wake")  # returns once it is ready
        assert view["state"] == "ready", view
        add("cold boot: admin wake until ready", time.perf_counter() - started)
        _allocate(Kernel(dormant), n)
        add("cold boot + new kernel + allocate again (state lost)", time.perf_counter() - started)
    return rows


def _table(rows: dict[str, list[float]]) -> str:
    width = max(len(k) for k in rows)
    lines = [f"{'measurement':<{width}}  {'median':>9}  {'min':>9}  {'max':>9}  runs"]
    for key, values in rows.items():
        unit = "" if key.startswith("snapshot") else " s"
        cells = [statistics.median(values), min(values), max(values)]
        lines.append(
            f"{key:<{width}}  "
            + "  ".join(f"{v:>7.2f}{unit:>2}" for v in cells)
            + f"  {len(values)}"
        )
    return "\n".join(lines)


@contextmanager
def _work_dir(given: str | None, keep: bool) -> Iterator[Path]:
    # Short, so that the kernels' unix sockets fit under it (else Dormant puts them in
    # a /tmp/dormant-UID-DIGEST directory, which stays behind).
    path = Path(given) if given else Path(tempfile.mkdtemp(prefix="dnb-"))
    try:
        yield path
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(prog="python -m examples.notebook_bench", description=__doc__)
    parser.add_argument("--mb", type=float, default=500, help="array size in MB (float64)")
    parser.add_argument("--repeat", type=int, default=3, help="hibernate/wake cycles")
    parser.add_argument("--work-dir", help="state and logs here (default: a short temporary dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir afterwards")
    parser.add_argument(
        "--port", type=port_arg, help="Dormant's listen port on 127.0.0.1 (default: a free one)"
    )
    parser.add_argument(
        "--server-port", type=port_arg, help="the notebook server's port (default: a free one)"
    )
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("notebook_bench: CRIU needs root", file=sys.stderr)
        return 2
    n = int(args.mb * 1e6 / 8)
    with _work_dir(args.work_dir, args.keep) as work:
        try:
            rows = _criu_cycles(work, n, args.repeat, (args.port, args.server_port))
        except StartError as exc:
            print(f"notebook_bench: {exc}", file=sys.stderr)
            return 1
    print(
        f"notebook holding a {args.mb:.0f} MB NumPy array (numpy.random.rand({n:_})), "
        f"{os.cpu_count()} CPUs"
    )
    print(_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
