"""What does Dormant's proxy add? Direct vs through the activator, side by side in one run.

``python -m loadtests.bench_proxy [--duration 10] [--concurrency 1,16,64] [--out results]``

Starts one Dormant (``python -m activator up`` on a free loopback port, or ``--port``; a
temporary state directory; engine ``restart``) fronting :mod:`loadtests.upstream` (on a port
Dormant picks, or ``--upstream-port``), boots the upstream with a first request, reads its
port from the admin API, then for each response kind (``small``: a ~200-byte JSON body;
``stream``: 16 SSE events + ``[DONE]``) and each concurrency loads

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

Then paced SSE streams (``--streams``, :mod:`loadtests.bench_stream`): direct, Dormant and
nginx side by side; delivered %, added latency per chunk, CPU per million chunks.

Client, proxy and upstream share the same cores: the machine line says how many, and how
loaded they were at the start. Speed is measured here, never asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx

from loadtests.admin import AdminError
from loadtests.bench_stream import FIELDS, GOAL, run_paced
from loadtests.launcher import LocalDormant, StartError, port_arg
from loadtests.loadgen import LoadClient, choose_client
from loadtests.profiler import Profiler, find_py_spy
from loadtests.proxy_report import (
    GOAL_ADDED_P50_MS,
    GOAL_ADDED_P99_MS,
    GOAL_RPS_RATIO,
    ROW_FIELDS,
    SUMMARY_FIELDS,
    CaseResult,
    Comparison,
    machine_line,
    render_table,
    write_csv,
)

__all__ = ["KINDS", "main", "run_case", "split_duration"]

KINDS: tuple[str, ...] = ("small", "stream")
TARGETS: tuple[str, ...] = ("direct", "dormant")
MODEL = "echo"
PROFILE_CONCURRENCY = 16


def _dormant(
    workdir: Path, port: int | None = None, upstream_port: int | None = None
) -> LocalDormant:
    """Engine ``restart`` fronting loadtests.upstream as workload and model ``echo``, Dormant
    on ``port`` and the upstream on ``upstream_port`` (default: free ones)."""
    workload: dict[str, Any] = {
        "name": MODEL,
        "models": [MODEL],
        "command": ["{python}", "-m", "loadtests.upstream", "--port", "{port}"],
        "health_path": "/health",
        "idle_after": 0,
        "start_timeout": "60s",
    }
    if upstream_port:
        workload["port"] = upstream_port
    settings = {"admin_token": secrets.token_hex(16), "log_level": "warning"}
    return LocalDormant(workdir, "restart", workload, settings, isolated=True, port=port)


def _boot_upstream(dormant: LocalDormant, timeout: float = 90.0) -> int:
    """Send the first request (it boots the upstream); return the upstream's port."""
    response = httpx.post(
        f"{dormant.url}/v1/small", json={"model": MODEL}, timeout=timeout, trust_env=False
    )
    if response.status_code != 200:
        raise RuntimeError(
            f"first request through Dormant: {response.status_code} {response.text[:300]}\n"
            + dormant.log_tail()
        )
    return dormant.upstream_port()


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
    direct, dormant = TARGETS
    return (direct, dormant) if round_index % 2 == 0 else (dormant, direct)


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
    parser.add_argument(
        "--streams",
        default="64,256,1024",
        help="paced SSE stream counts, measured after the request/response cases "
        "(loadtests.bench_stream; default 64,256,1024; 0 skips them)",
    )
    parser.add_argument(
        "--stream-seconds", type=float, default=5.0, help="seconds per paced stream (default 5)"
    )
    parser.add_argument(
        "--stream-rounds", type=int, default=3, help="paced runs per cell, median (default 3)"
    )
    parser.add_argument(
        "--port", type=port_arg, help="Dormant's listen port on 127.0.0.1 (default: a free one)"
    )
    parser.add_argument(
        "--upstream-port",
        type=port_arg,
        help="the upstream's port on 127.0.0.1 (default: a free one Dormant picks)",
    )
    args = parser.parse_args(argv)
    if args.port is not None and args.port == args.upstream_port:
        parser.error(f"--port and --upstream-port must differ (both {args.port})")
    try:
        args.levels = [int(x) for x in args.concurrency.split(",") if x.strip()]
    except ValueError:
        parser.error(f"--concurrency: expected numbers like 1,16,64, got {args.concurrency!r}")
    try:
        args.stream_levels = [int(x) for x in args.streams.split(",") if x.strip() and x != "0"]
    except ValueError:
        parser.error(f"--streams: expected numbers like 64,256,1024, got {args.streams!r}")
    if not args.levels or min(args.levels) < 1:
        parser.error("--concurrency: at least one level, each >= 1")
    if args.duration <= 0:
        parser.error("--duration must be > 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; returns 0 when every case ran (whether or not the goal is met), 1
    when Dormant or its upstream did not start (the message carries Dormant's log tail)."""
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
        client, notes = choose_client(args.client, workdir, args.wrk_threads)
        for note in notes:
            report(note)
        py_spy = find_py_spy() if args.profile else None
        if args.profile and not py_spy:
            report("note: --profile: py-spy not installed (pip install py-spy); not profiling")
        if args.profile and PROFILE_CONCURRENCY not in args.levels:
            report(f"note: --profile: c={PROFILE_CONCURRENCY} not in --concurrency; not profiling")
        dormant = _dormant(workdir, args.port, args.upstream_port)
        try:
            t0 = time.monotonic()
            dormant.start()
            upstream_port = _boot_upstream(dormant)
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
        except (StartError, AdminError, RuntimeError) as exc:
            report(f"FAILED: {exc}")
            return 1
        finally:
            for note in dormant.stop(timeout=45.0):
                print(note, flush=True)
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
    if args.stream_levels:
        report("")
        report(GOAL)
        with tempfile.TemporaryDirectory(prefix="dormant-paced-") as tmp:
            rows = run_paced(
                args.stream_levels,
                args.stream_seconds,
                max(1, args.stream_rounds),
                Path(tmp),
                report,
            )
        write_csv(out / "bench_stream.csv", FIELDS, rows)
        report(f"wrote {out / 'bench_stream.csv'}")
    (out / "bench_proxy.txt").write_text("\n".join(report.lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
