"""What does Dormant's proxy add? Direct vs through the activator, side by side in one run.

``python -m loadtests.bench_proxy [--duration 10] [--concurrency 1,16,64] [--out results]``

Starts one Dormant (``python -m activator up``, a free port, a temporary state directory,
engine ``restart``) fronting :mod:`loadtests.upstream`, boots the upstream with a first
request, reads its port from the admin API, then for each response kind (``small``: a
~200-byte JSON body; ``stream``: 16 SSE events + ``[DONE]``) and each concurrency loads

- ``direct``: client -> upstream port, and
- ``dormant``: client -> activator -> upstream,

alternating the two in ABBA order (direct, dormant, dormant, direct; ``--rounds``) so drift
in machine load hits both alike. Each target gets ``--duration`` seconds per case in total.

The load generator is ``wrk`` (closed loop: each connection sends its next request when the
previous response has fully arrived; latency is to the last byte) when it is on PATH, else a
Python asyncio + httpx client, which is itself a bottleneck on a small machine (``--client``
picks one). Percentiles over several rounds are merged from each round's quantile function
sampled at 1,090 points (exact for the Python client).

Reports p50, p99 (ms) and req/s per target, the added p50/p99 and the throughput ratio,
against the goal: added p50 <= 1 ms, added p99 <= 5 ms, throughput >= 80% of direct.
Writes ``bench_proxy.csv`` (one row per case and target), ``bench_proxy_summary.csv`` (one
row per case), ``bench_proxy.txt`` (the printed report) and ``dormant.log`` into ``--out``.
``--profile`` samples the activator with py-spy during the c=16 small case (if installed).

Client, proxy and upstream share the same cores: the machine line says how many, and how
loaded they were at the start. Speed is measured here, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import math
import os
import platform
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import httpx

__all__ = [
    "GOAL_ADDED_P50_MS",
    "GOAL_ADDED_P99_MS",
    "GOAL_RPS_RATIO",
    "KINDS",
    "CaseResult",
    "Run",
    "main",
    "percentile",
]

ROOT = Path(__file__).resolve().parents[1]
KINDS: tuple[str, ...] = ("small", "stream")
TARGETS: tuple[str, ...] = ("direct", "dormant")
MODEL = "echo"
GOAL_ADDED_P50_MS = 1.0
GOAL_ADDED_P99_MS = 5.0
GOAL_RPS_RATIO = 0.80
PROFILE_CONCURRENCY = 16
ROW_FIELDS = (
    "kind",
    "concurrency",
    "target",
    "client",
    "rounds",
    "seconds",
    "requests",
    "errors",
    "rps",
    "p50_ms",
    "p99_ms",
)
SUMMARY_FIELDS = (
    "kind",
    "concurrency",
    "client",
    "direct_p50_ms",
    "direct_p99_ms",
    "direct_rps",
    "dormant_p50_ms",
    "dormant_p99_ms",
    "dormant_rps",
    "added_p50_ms",
    "added_p99_ms",
    "rps_ratio",
    "goal",
    "profiled",
)

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


# -- results -----------------------------------------------------------------------------


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


@dataclass
class CaseResult:
    """All runs of one target in one case (kind x concurrency), merged."""

    kind: str
    concurrency: int
    target: str
    client: str
    runs: list[Run] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return sum(r.requests for r in self.runs)

    @property
    def errors(self) -> int:
        return sum(r.errors for r in self.runs)

    @property
    def seconds(self) -> float:
        return sum(r.seconds for r in self.runs)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    def _samples(self) -> list[tuple[float, float]]:
        return [s for r in self.runs for s in r.samples]

    @property
    def p50(self) -> float:
        return percentile(self._samples(), 50)

    @property
    def p99(self) -> float:
        return percentile(self._samples(), 99)

    def row(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "concurrency": self.concurrency,
            "target": self.target,
            "client": self.client,
            "rounds": len(self.runs),
            "seconds": f"{self.seconds:.3f}",
            "requests": self.requests,
            "errors": self.errors,
            "rps": f"{self.rps:.1f}",
            "p50_ms": f"{self.p50:.3f}",
            "p99_ms": f"{self.p99:.3f}",
        }


@dataclass
class Comparison:
    """Direct vs dormant for one case, and the verdict against the goal."""

    direct: CaseResult
    dormant: CaseResult
    profiled: bool = False

    @property
    def added_p50(self) -> float:
        return self.dormant.p50 - self.direct.p50

    @property
    def added_p99(self) -> float:
        return self.dormant.p99 - self.direct.p99

    @property
    def ratio(self) -> float:
        return self.dormant.rps / self.direct.rps if self.direct.rps > 0 else math.nan

    def verdict(self) -> str:
        bad = [r for r in (self.direct, self.dormant) if r.errors or not r.requests]
        if bad:
            return "invalid: " + ", ".join(f"{r.target} {r.errors} errors" for r in bad)
        missed = []
        if not self.added_p50 <= GOAL_ADDED_P50_MS:
            missed.append("p50")
        if not self.added_p99 <= GOAL_ADDED_P99_MS:
            missed.append("p99")
        if not self.ratio >= GOAL_RPS_RATIO:
            missed.append("req/s")
        return "met" if not missed else "not met (" + ", ".join(missed) + ")"

    def row(self) -> dict[str, object]:
        return {
            "kind": self.direct.kind,
            "concurrency": self.direct.concurrency,
            "client": self.direct.client,
            "direct_p50_ms": f"{self.direct.p50:.3f}",
            "direct_p99_ms": f"{self.direct.p99:.3f}",
            "direct_rps": f"{self.direct.rps:.1f}",
            "dormant_p50_ms": f"{self.dormant.p50:.3f}",
            "dormant_p99_ms": f"{self.dormant.p99:.3f}",
            "dormant_rps": f"{self.dormant.rps:.1f}",
            "added_p50_ms": f"{self.added_p50:.3f}",
            "added_p99_ms": f"{self.added_p99:.3f}",
            "rps_ratio": f"{self.ratio:.3f}",
            "goal": self.verdict(),
            "profiled": int(self.profiled),
        }


# -- load generators ---------------------------------------------------------------------


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


# -- the activator -----------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Dormant:
    """One ``python -m activator up`` subprocess fronting loadtests.upstream (engine restart)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = secrets.token_hex(16)
        self.log_path = workdir / "dormant.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.upstream_pid: int | None = None
        self.upstream_port: int | None = None

    def _config(self) -> str:
        state = self.workdir / "state"
        return (
            f"listen: 127.0.0.1:{self.port}\n"
            f"state_dir: {state}\n"
            f"admin_token: {self.token}\n"
            "engine: restart\n"
            "log_level: warning\n"
            "workloads:\n"
            f"  - name: {MODEL}\n"
            f"    models: [{MODEL}]\n"
            '    command: ["{python}", "-m", "loadtests.upstream", "--port", "{port}"]\n'
            "    health_path: /health\n"
            "    idle_after: 0\n"
            "    start_timeout: 60s\n"
        )

    def start(self, timeout: float = 60.0) -> None:
        config = self.workdir / "dormant.yaml"
        config.write_text(self._config())
        env = {k: v for k, v in os.environ.items() if not k.startswith("DORMANT_")}
        env["PYTHONUNBUFFERED"] = "1"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "activator", "up", "-c", str(config)],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C reaches the bench, which stops Dormant itself
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"Dormant exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/-/healthz", timeout=1.0, trust_env=False).is_success:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"Dormant not healthy within {timeout:.0f}s:\n{self.log_tail()}")

    def boot_upstream(self, timeout: float = 90.0) -> int:
        """Send the first request (it boots the upstream); return the upstream's port."""
        response = httpx.post(
            f"{self.url}/v1/small", json={"model": MODEL}, timeout=timeout, trust_env=False
        )
        if response.status_code != 200:
            raise RuntimeError(
                f"first request through Dormant: {response.status_code} {response.text[:300]}\n"
                + self.log_tail()
            )
        view = httpx.get(
            f"{self.url}/-/workloads/{MODEL}",
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=10.0,
            trust_env=False,
        ).json()
        if not view.get("port"):
            raise RuntimeError(f"admin API shows no upstream port: {view}")
        self.upstream_port = int(view["port"])
        self.upstream_pid = view.get("pid")
        return self.upstream_port

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 45.0) -> None:
        """SIGTERM and wait (Dormant stops the upstream); SIGKILL if it hangs."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            print(f"note: Dormant did not stop within {timeout:.0f}s; killing it", flush=True)
            self.proc.kill()
            self.proc.wait()
        self._check_upstream_gone()

    def _check_upstream_gone(self, timeout: float = 10.0) -> None:
        pid = self.upstream_pid
        if not pid:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _is_our_upstream(pid, self.upstream_port):
                return
            time.sleep(0.1)
        print(f"note: Dormant left its upstream (pid {pid}) running; stopping it", flush=True)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)


def _is_our_upstream(pid: int, port: int | None) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if stat.rsplit(")", 1)[-1].split()[0] == "Z":
        return False
    return b"loadtests.upstream" in cmdline and str(port).encode() in cmdline


# -- profiling ---------------------------------------------------------------------------


def find_py_spy() -> str | None:
    """py-spy on PATH or next to this interpreter, or None."""
    here = Path(sys.executable).with_name("py-spy")
    return shutil.which("py-spy") or (str(here) if here.exists() else None)


class Profiler:
    """py-spy sampling the activator: a flamegraph SVG and raw stacks (for a top list)."""

    def __init__(self, py_spy: str, pid: int, out: Path, label: str) -> None:
        self.out = out
        self.svg = out / f"profile_{label}.svg"
        self.raw = out / f"profile_{label}.txt"
        self.top = out / f"profile_{label}_top.txt"
        common = [py_spy, "record", "--pid", str(pid), "--rate", "200", "--nonblocking"]
        self.procs = [
            subprocess.Popen(
                [*common, "--format", fmt, "--output", str(path)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            for fmt, path in (("flamegraph", self.svg), ("raw", self.raw))
        ]

    def stop(self) -> list[str]:
        notes = []
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
            try:
                _, err = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
            if proc.returncode not in (0, -signal.SIGINT):
                notes.append(
                    f"py-spy exited {proc.returncode}: {err.decode(errors='replace')[-300:]}"
                )
        if self.raw.exists():
            self.top.write_text(_top_from_collapsed(self.raw.read_text()))
            notes.append(f"profile: {self.svg}, {self.raw} (collapsed stacks), {self.top}")
        return notes


def _top_from_collapsed(text: str, n: int = 30) -> str:
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        samples += count
        own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count
    out = [f"{samples} samples of the activator's threads (idle excluded)", "", "self %  function"]
    out += [f"{100 * c / samples:6.1f}  {f}" for f, c in own.most_common(n)] if samples else []
    out += ["", "total %  function (inclusive)"]
    out += [f"{100 * c / samples:7.1f}  {f}" for f, c in total.most_common(n)] if samples else []
    return "\n".join(out) + "\n"


# -- the benchmark -----------------------------------------------------------------------


def _bodies() -> dict[str, bytes]:
    return {
        "small": b'{"model":"%s","prompt":"hi","max_tokens":8}' % MODEL.encode(),
        "stream": b'{"model":"%s","prompt":"hi","max_tokens":16,"stream":true}' % MODEL.encode(),
    }


def split_duration(duration: float, rounds: int, integer: bool) -> list[float]:
    """Per-round seconds summing to duration (whole seconds for wrk, at least one round)."""
    rounds = max(1, rounds)
    if not integer:
        return [duration / rounds] * rounds
    whole = max(1, round(duration))
    base, extra = divmod(whole, rounds)
    return [float(base + (1 if i < extra else 0)) for i in range(rounds) if base or i < extra]


def _order(round_index: int) -> tuple[str, str]:
    return TARGETS if round_index % 2 == 0 else TARGETS[::-1]


def run_case(
    client: LoadClient,
    urls: dict[str, str],
    kind: str,
    concurrency: int,
    duration: float,
    rounds: int,
    profile: tuple[str, int, Path] | None = None,
) -> tuple[CaseResult, CaseResult, list[str]]:
    """Both targets for one case, alternating per round (ABBA...)."""
    body = _bodies()[kind]
    results = {t: CaseResult(kind, concurrency, t, client.name) for t in TARGETS}
    parts = split_duration(duration, rounds, client.integer_seconds)
    dormant_left = len(parts)
    profiler: Profiler | None = None
    notes: list[str] = []
    try:
        for i, seconds in enumerate(parts):
            for target in _order(i):
                if target == "dormant" and profile and profiler is None:
                    py_spy, pid, out = profile
                    profiler = Profiler(py_spy, pid, out, f"{kind}_c{concurrency}")
                    time.sleep(0.5)  # let py-spy attach before the load starts
                run = client.run(f"{urls[target]}/v1/{kind}", body, concurrency, seconds)
                results[target].runs.append(run)
                if target == "dormant":
                    dormant_left -= 1
                    if dormant_left == 0 and profiler is not None:
                        notes += profiler.stop()
                        profiler = None
    finally:
        if profiler is not None:
            profiler.stop()
    return results["direct"], results["dormant"], notes


def _fmt(value: float, digits: int = 2) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def render_table(comparisons: Sequence[Comparison]) -> str:
    """The comparison table, one line per case."""
    head = [
        "kind",
        "c",
        "direct p50",
        "p99",
        "req/s",
        "dormant p50",
        "p99",
        "req/s",
        "+p50 ms",
        "+p99 ms",
        "ratio",
        "goal",
    ]
    rows = [head]
    for c in comparisons:
        d, p = c.direct, c.dormant
        rows.append(
            [
                d.kind,
                str(d.concurrency),
                _fmt(d.p50),
                _fmt(d.p99),
                f"{d.rps:.0f}",
                _fmt(p.p50),
                _fmt(p.p99),
                f"{p.rps:.0f}",
                f"{c.added_p50:+.2f}",
                f"{c.added_p99:+.2f}",
                f"{100 * c.ratio:.0f}%",
                c.verdict() + (" [profiled]" if c.profiled else ""),
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = []
    for n, r in enumerate(rows):
        cells = [
            cell.ljust(w) if i in (0, len(head) - 1) else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(r, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("-" * len(lines[0]))
    return "\n".join(lines)


def write_csv(path: Path, fields: Sequence[str], rows: Sequence[dict[str, object]]) -> None:
    """Rows as CSV with a header."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields))
        writer.writeheader()
        writer.writerows(rows)


def machine_line() -> str:
    """Cores and load: client, proxy and upstream all run on this machine."""
    load = os.getloadavg()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"machine: nproc {cpus}, loadavg at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, "
        f"Python {platform.python_version()}, {platform.machine()}; client, proxy and upstream "
        "share these cores"
    )


def _choose_client(choice: str, workdir: Path, threads: int) -> tuple[LoadClient, list[str]]:
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


class _Report:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, line: str = "") -> None:
        print(line, flush=True)
        self.lines.append(line)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.bench_proxy",
        description="Direct vs through Dormant: added latency and throughput, side by side.",
    )
    parser.add_argument(
        "--duration", type=float, default=10.0, help="seconds per target per case (default 10)"
    )
    parser.add_argument(
        "--concurrency", default="1,16,64", help="comma-separated connections (default 1,16,64)"
    )
    parser.add_argument("--out", default="results", help="output directory (default results)")
    parser.add_argument(
        "--client",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="load generator: wrk if on PATH, else Python (default auto)",
    )
    parser.add_argument(
        "--rounds", type=int, default=2, help="alternations per case, ABBA order (default 2)"
    )
    parser.add_argument(
        "--warmup", type=float, default=1.0, help="seconds of warm-up per kind and target"
    )
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (default 1)")
    parser.add_argument(
        "--profile",
        action="store_true",
        help=f"py-spy the activator during the c={PROFILE_CONCURRENCY} small case",
    )
    args = parser.parse_args(argv)
    try:
        args.levels = [int(x) for x in args.concurrency.split(",") if x.strip()]
    except ValueError:
        parser.error(f"--concurrency: expected numbers like 1,16,64, got {args.concurrency!r}")
    if not args.levels or min(args.levels) < 1:
        parser.error("--concurrency: at least one level, each >= 1")
    if args.duration <= 0:
        parser.error("--duration must be > 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; returns 0 when every case ran (whether or not the goal is met)."""
    args = _parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = _Report()
    report("Dormant proxy overhead: direct (client -> upstream) vs through the activator")
    report(machine_line())
    report(
        f"goal: added p50 <= {GOAL_ADDED_P50_MS:g} ms, added p99 <= {GOAL_ADDED_P99_MS:g} ms, "
        f"throughput >= {100 * GOAL_RPS_RATIO:.0f}% of direct"
    )
    comparisons: list[Comparison] = []
    with (
        tempfile.TemporaryDirectory(prefix="dormant-bench-") as tmp,
        _sigterm_as_interrupt(),
    ):
        workdir = Path(tmp)
        client, notes = _choose_client(args.client, workdir, args.wrk_threads)
        for note in notes:
            report(note)
        py_spy = find_py_spy() if args.profile else None
        if args.profile and not py_spy:
            report("note: --profile: py-spy not installed (pip install py-spy); not profiling")
        if args.profile and PROFILE_CONCURRENCY not in args.levels:
            report(f"note: --profile: c={PROFILE_CONCURRENCY} not in --concurrency; not profiling")
        dormant = Dormant(workdir)
        try:
            t0 = time.monotonic()
            dormant.start()
            upstream_port = dormant.boot_upstream()
            report(
                f"dormant: pid {dormant.proc.pid if dormant.proc else '?'} on {dormant.url}, "
                f"engine restart; upstream on 127.0.0.1:{upstream_port} "
                f"(booted in {time.monotonic() - t0:.1f}s)"
            )
            urls = {"direct": f"http://127.0.0.1:{upstream_port}", "dormant": dormant.url}
            parts = split_duration(args.duration, args.rounds, client.integer_seconds)
            report(
                f"runs: {len(parts)} round(s) per target per case "
                f"({'+'.join(f'{p:g}' for p in parts)} s), direct/dormant alternating (ABBA)"
            )
            if args.warmup > 0:
                for kind, body in _bodies().items():
                    for target in TARGETS:
                        client.run(f"{urls[target]}/v1/{kind}", body, max(args.levels), args.warmup)
            for kind in KINDS:
                for level in args.levels:
                    profile = None
                    if py_spy and dormant.proc and kind == "small" and level == PROFILE_CONCURRENCY:
                        profile = (py_spy, dormant.proc.pid, out)
                    direct, proxied, case_notes = run_case(
                        client, urls, kind, level, args.duration, args.rounds, profile
                    )
                    comparisons.append(Comparison(direct, proxied, profiled=profile is not None))
                    print(
                        f"  {kind:6} c={level:<3} direct {direct.rps:8.0f} req/s  "
                        f"dormant {proxied.rps:8.0f} req/s",
                        flush=True,
                    )
                    for note in case_notes:
                        report(note)
        except KeyboardInterrupt:
            report("interrupted; stopping Dormant")
            raise
        finally:
            dormant.stop()
            with contextlib.suppress(OSError):
                shutil.copyfile(dormant.log_path, out / "dormant.log")
    load = os.getloadavg()
    report("")
    report(render_table(comparisons))
    report("")
    report(
        "latencies in ms to the last byte; +p50/+p99 = dormant - direct; ratio = dormant req/s "
        "/ direct req/s"
    )
    report(f"loadavg at end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    rows = [r.row() for c in comparisons for r in (c.direct, c.dormant)]
    write_csv(out / "bench_proxy.csv", ROW_FIELDS, rows)
    write_csv(out / "bench_proxy_summary.csv", SUMMARY_FIELDS, [c.row() for c in comparisons])
    report(f"wrote {out / 'bench_proxy.csv'}, {out / 'bench_proxy_summary.csv'}")
    (out / "bench_proxy.txt").write_text("\n".join(report.lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
