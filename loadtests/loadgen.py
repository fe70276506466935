"""Closed-loop HTTP load generators: ``wrk`` (with a Lua script) or asyncio + httpx.

Each connection sends its next request when the previous response has fully arrived, and a
latency is measured to the last byte. A :class:`Run` keeps latencies as (ms, weight)
samples: wrk's quantile function sampled at 1,090 points (so rounds can be merged), or every
request's latency to the microsecond for the Python client.
"""

from __future__ import annotations

import asyncio
import math
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import httpx

__all__ = ["LoadClient", "PythonClient", "Run", "WrkClient", "choose_client", "percentile"]

_LUA = """\
wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"

local function emit(latency, q, width)
  io.write(string.format("@@q %.4f %.6f %d\\n", q, width, latency:percentile(q)))
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("@@summary %d %d %d %d %d %d %d\\n", summary.requests,
    summary.duration, e.connect, e.read, e.write, e.status, e.timeout))
  -- The quantile function at the midpoints of 990 bins of 0.1% and 100 tail bins of 0.01%.
  for i = 0, 989 do emit(latency, (i + 0.5) * 0.1, 0.1) end
  for i = 0, 99 do emit(latency, 99 + (i + 0.5) * 0.01, 0.01) end
end
"""


@dataclass
class Run:
    """One load run against one target: latencies as (ms, weight) samples."""

    requests: int
    errors: int
    seconds: float
    samples: list[tuple[float, float]]


def percentile(samples: Sequence[tuple[float, float]], p: float) -> float:
    """The smallest value whose cumulative weight reaches p% of the total (nan if empty)."""
    total = sum(w for _, w in samples)
    if total <= 0:
        return math.nan
    need = total * p / 100.0
    acc = 0.0
    ordered = sorted(samples)
    for value, weight in ordered:
        acc += weight
        if acc >= need - 1e-9:
            return value
    return ordered[-1][0]


class LoadClient(Protocol):
    name: str
    integer_seconds: bool

    def run(self, url: str, body: bytes, concurrency: int, seconds: float) -> Run: ...


class WrkClient:
    """wrk with a Lua script: POST body, and done() prints a summary and quantiles."""

    name = "wrk"
    integer_seconds = True

    def __init__(self, wrk: str, workdir: Path, threads: int) -> None:
        self.wrk = wrk
        self.workdir = workdir
        self.threads = threads
        self._scripts: dict[bytes, Path] = {}

    def _script(self, body: bytes) -> Path:
        if body not in self._scripts:
            path = self.workdir / f"wrk-{len(self._scripts)}.lua"
            path.write_text(_LUA.format(body=_lua_string(body.decode())))
            self._scripts[body] = path
        return self._scripts[body]

    def run(self, url: str, body: bytes, concurrency: int, seconds: float) -> Run:
        secs = max(1, round(seconds))
        cmd = [
            self.wrk,
            "-t",
            str(max(1, min(self.threads, concurrency))),
            "-c",
            str(concurrency),
            "-d",
            f"{secs}s",
            "--timeout",
            "10s",
            "-s",
            str(self._script(body)),
            url,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=secs + 60, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
        return _parse_wrk(proc.stdout)


def _lua_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _parse_wrk(stdout: str) -> Run:
    summary: list[int] | None = None
    quantiles: list[tuple[float, float]] = []
    for line in stdout.splitlines():
        if line.startswith("@@summary "):
            summary = [int(x) for x in line.split()[1:]]
        elif line.startswith("@@q "):
            _, _, width, value_us = line.split()
            quantiles.append((float(value_us) / 1000.0, float(width)))
    if summary is None:
        raise RuntimeError(f"wrk printed no summary:\n{stdout[-1000:]}")
    requests, duration_us, *errors = summary
    samples = [(value, requests * width / 100.0) for value, width in quantiles] if requests else []
    return Run(requests=requests, errors=sum(errors), seconds=duration_us / 1e6, samples=samples)


class PythonClient:
    """asyncio + httpx, one coroutine per connection; itself a bottleneck on few cores."""

    name = "python"
    integer_seconds = False

    def run(self, url: str, body: bytes, concurrency: int, seconds: float) -> Run:
        try:
            import uvloop

            factory = uvloop.new_event_loop
        except ImportError:  # pragma: no cover - uvicorn[standard] brings uvloop
            factory = None
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(_python_load(url, body, concurrency, seconds))


async def _python_load(url: str, body: bytes, concurrency: int, seconds: float) -> Run:
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"content-type": "application/json"}
    async with httpx.AsyncClient(limits=limits, timeout=10.0, trust_env=False) as client:
        start = time.perf_counter()
        deadline = start + seconds

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                try:
                    async with client.stream("POST", url, content=body, headers=headers) as r:
                        async for _ in r.aiter_raw():
                            pass
                except httpx.HTTPError:
                    errors += 1
                    continue
                if r.status_code >= 400:
                    errors += 1
                latencies.append((time.perf_counter() - t0) * 1000.0)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    counts = Counter(round(v, 3) for v in latencies)
    return Run(
        requests=len(latencies),
        errors=errors,
        seconds=elapsed,
        samples=[(v, float(n)) for v, n in counts.items()],
    )


def choose_client(choice: str, workdir: Path, threads: int) -> tuple[LoadClient, list[str]]:
    """The client for ``--client`` (auto, wrk or python) and notes on which and why."""
    wrk = shutil.which("wrk")
    if choice == "wrk" and not wrk:
        raise SystemExit("bench_proxy: --client wrk, but wrk is not on PATH (apt-get install wrk)")
    if choice != "python" and wrk:
        return WrkClient(wrk, workdir, threads), [f"client: wrk ({wrk}), {threads} thread(s)"]
    notes = []
    if choice == "auto":
        notes.append("note: wrk not found on PATH (apt-get install wrk); using the Python client")
    notes.append(
        "client: python (asyncio + httpx) -- NOTE: the Python client is itself a bottleneck on "
        "a small machine; req/s and tail latency are the client's as much as the server's"
    )
    return PythonClient(), notes
