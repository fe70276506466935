"""Paced SSE streams through Dormant, nginx and directly, side by side in one run.

``python -m loadtests.bench_stream [--streams 64,256,1024] [--seconds 5] [--rounds 3]``
(``make bench-proxy`` runs it after the request/response cases).

N concurrent streams of :mod:`loadtests.paced` (a ~140-byte chunk every 20 ms per stream,
all streams on one shared step, like a batched decode) are read by one client process:

- ``direct``: client -> upstream;
- ``dormant``: client -> ``dormant up`` (engine ``restart``, the model ``paced``) -> upstream;
- ``nginx``: client -> nginx (one worker, ``proxy_buffering off``, upstream keep-alive, access
  log on, as Dormant's is) -> upstream, when an nginx binary is found (PATH, or
  ``.deps/nginx`` which ``make bench-proxy`` fills from Debian's package without installing
  it).

Targets take turns within each round (the order rotates) so drift in machine load hits each
alike; each cell is the median over ``--rounds``. Per target and N: chunks delivered (by the
end of the stream plus a grace period) as a percentage of those the upstream was asked for,
latency per chunk p50/p99 (receive time minus the upstream's write time, one clock), the
added p50/p99 (target minus direct, same round) over all chunks and over the steady part
(once every stream has started: the decode without the burst of starts), first-chunk p99,
and the proxy's own CPU seconds per million chunks delivered (``/proc/PID/stat``
utime+stime of the proxy's processes only: not the client's, not the upstream's).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from loadtests.launcher import REPO, LocalDormant, free_port, stop_process
from loadtests.proxy_report import machine_line, write_csv

__all__ = ["FIELDS", "GOAL", "find_nginx", "main", "run_paced"]

GOAL = (
    "goal: at 256 streams added p50 <= 2 ms and p99 <= 10 ms; >= 99% delivered at 1,024; "
    "CPU per chunk <= 2x nginx"
)
FIELDS = (
    "streams",
    "target",
    "delivered_pct",
    "lat_p50_ms",
    "lat_p99_ms",
    "added_p50_ms",
    "added_p99_ms",
    "steady_p50_ms",
    "steady_p99_ms",
    "steady_added_p50_ms",
    "steady_added_p99_ms",
    "first_p99_ms",
    "cpu_s_per_m_chunks",
    "failed_streams",
    "rounds",
)
_TICKS = os.sysconf("SC_CLK_TCK")


def find_nginx() -> str | None:
    """An nginx binary: PATH, else the copy ``make bench-proxy`` unpacks into .deps/nginx."""
    found = shutil.which("nginx")
    local = REPO / ".deps" / "nginx" / "usr" / "sbin" / "nginx"
    return found or (str(local) if local.is_file() else None)


def _cpu_seconds(pids: Sequence[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / _TICKS


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry.name))
    return out


_NGINX_CONF = """\
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
worker_rlimit_nofile 16384;
events {{ worker_connections 8192; }}
http {{
    access_log {dir}/nginx-access.log;
    client_body_temp_path {dir}/body; proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fcgi; uwsgi_temp_path {dir}/uwsgi; scgi_temp_path {dir}/scgi;
    upstream paced {{ server 127.0.0.1:{upstream}; keepalive 256; }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://paced;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 600s;
        }}
    }}
}}
"""


@contextlib.contextmanager
def _nginx(binary: str, workdir: Path, upstream: int) -> Iterator[tuple[str, Callable[[], float]]]:
    port = free_port()
    conf = workdir / "nginx.conf"
    conf.write_text(_NGINX_CONF.format(dir=workdir, upstream=upstream, port=port))
    with open(workdir / "nginx-stderr.log", "wb") as stderr:
        proc = subprocess.Popen(
            [binary, "-p", str(workdir), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=stderr
        )
    try:
        _wait_port(port, proc)
        yield f"127.0.0.1:{port}", lambda: _cpu_seconds([proc.pid, *_children(proc.pid)])
    finally:
        stop_process(proc)


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listened on {port} within {timeout:.0f}s")


def _client(address: str, streams: int, seconds: float) -> dict[str, Any]:
    host, port = address.rsplit(":", 1)
    cmd = [sys.executable, "-m", "loadtests.paced", "client", "--host", host, "--port", port]
    cmd += ["--streams", str(streams), "--seconds", str(seconds)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120, cwd=REPO)
    if done.returncode != 0 or not done.stdout.strip():
        raise RuntimeError(f"paced client failed ({done.returncode}): {done.stderr[-800:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def _median(values: list[float]) -> float:
    values = [v for v in values if v == v]  # drop nan
    return statistics.median(values) if values else float("nan")


def _paced_dormant(workdir: Path, repo: Path | None = None) -> LocalDormant:
    """Dormant (engine ``restart``) serving the paced upstream as model ``paced``; from
    ``repo`` (another checkout) when given. The upstream runs as a script by path, so an
    older checkout without it serves the same one."""
    return LocalDormant(
        workdir,
        "restart",
        {
            "name": "paced",
            "models": ["paced"],
            "command": [
                "{python}",
                str(REPO / "loadtests" / "paced.py"),
                "upstream",
                "--port",
                "{port}",
            ],
            "health_path": "/health",
            "idle_after": 0,
            "start_timeout": "60s",
        },
        {"log_level": "warning"},
        isolated=True,
        repo=repo,
    )


def _started(stack: contextlib.ExitStack, dormant: LocalDormant) -> tuple[str, Callable[[], float]]:
    import httpx

    stack.enter_context(dormant)
    httpx.post(f"{dormant.url}/v1/paced?chunks=1", json={"model": "paced"}, timeout=60)
    assert dormant.proc is not None
    pid = dormant.proc.pid
    return f"127.0.0.1:{dormant.port}", lambda: _cpu_seconds([pid])


def run_paced(
    levels: Sequence[int],
    seconds: float,
    rounds: int,
    workdir: Path,
    say: Callable[[str], None],
    baseline: Path | None = None,
) -> list[dict[str, Any]]:
    """Every target at every level, ``rounds`` times; one summary row per (level, target).
    ``baseline``: another checkout whose Dormant is measured too, as target ``baseline``."""
    rows: list[dict[str, Any]] = []
    nginx_bin = find_nginx()
    with contextlib.ExitStack() as stack:
        dormant = _paced_dormant(workdir / "dormant")
        targets: dict[str, tuple[str, Callable[[], float] | None]] = {}
        targets["dormant"] = _started(stack, dormant)
        upstream = dormant.upstream_port()
        targets = {"direct": (f"127.0.0.1:{upstream}", None), **targets}
        if baseline is not None:
            targets["baseline"] = _started(stack, _paced_dormant(workdir / "baseline", baseline))
        if nginx_bin:
            ngx_dir = workdir / "nginx"
            ngx_dir.mkdir()
            targets["nginx"] = stack.enter_context(_nginx(nginx_bin, ngx_dir, upstream))
        else:
            say("nginx: not found (PATH or .deps/nginx); measured without it")
        names = list(targets)
        for level in levels:
            runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
            for r in range(rounds):
                order = names[r % len(names) :] + names[: r % len(names)]
                for name in order:
                    address, cpu = targets[name]
                    before = cpu() if cpu else 0.0
                    result = _client(address, level, seconds)
                    result["cpu"] = (cpu() - before) if cpu else float("nan")
                    runs[name].append(result)
                direct = runs["direct"][-1]
                for name in names:  # added = same round's target - direct
                    run = runs[name][-1]
                    run["added_p50"] = run["lat_p50_ms"] - direct["lat_p50_ms"]
                    run["added_p99"] = run["lat_p99_ms"] - direct["lat_p99_ms"]
                    run["steady_added_p50"] = run["steady_p50_ms"] - direct["steady_p50_ms"]
                    run["steady_added_p99"] = run["steady_p99_ms"] - direct["steady_p99_ms"]
            for name in names:
                rows.append(_summary(level, name, runs[name]))
                say(_line(rows[-1]))
    return rows


def _summary(level: int, name: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    def med(key: str) -> float:
        return _median([float(r[key]) for r in runs])

    per_m = [r["cpu"] / r["chunks_delivered"] * 1e6 for r in runs if r["chunks_delivered"]]
    return {
        "streams": level,
        "target": name,
        "delivered_pct": med("delivered_pct"),
        "lat_p50_ms": med("lat_p50_ms"),
        "lat_p99_ms": med("lat_p99_ms"),
        "added_p50_ms": med("added_p50") if name != "direct" else 0.0,
        "added_p99_ms": med("added_p99") if name != "direct" else 0.0,
        "steady_p50_ms": med("steady_p50_ms"),
        "steady_p99_ms": med("steady_p99_ms"),
        "steady_added_p50_ms": med("steady_added_p50"),
        "steady_added_p99_ms": med("steady_added_p99"),
        "first_p99_ms": med("first_p99_ms"),
        "cpu_s_per_m_chunks": _median(per_m) if name != "direct" else float("nan"),
        "failed_streams": max(int(r["failed_streams"]) for r in runs),
        "rounds": len(runs),
    }


def _line(row: dict[str, Any]) -> str:
    cpu = row["cpu_s_per_m_chunks"]
    return (
        f"  {row['streams']:5d} {row['target']:8} {row['delivered_pct']:6.2f}% delivered | "
        f"chunk p50 {row['lat_p50_ms']:6.2f} p99 {row['lat_p99_ms']:7.2f} ms, "
        f"added {row['added_p50_ms']:+6.2f} / {row['added_p99_ms']:+7.2f} | steady added "
        f"{row['steady_added_p50_ms']:+6.2f} / {row['steady_added_p99_ms']:+7.2f} | "
        f"first p99 {row['first_p99_ms']:7.1f} ms | "
        + (f"CPU {cpu:5.1f} s/M chunks" if cpu == cpu else "CPU n/a")
        + (f" | failed {row['failed_streams']}" if row["failed_streams"] else "")
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench_stream", description=__doc__)
    parser.add_argument("--streams", default="64,256,1024", help="levels (default 64,256,1024)")
    parser.add_argument("--seconds", type=float, default=5.0, help="per stream (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="median over (default 3)")
    parser.add_argument("--out", default="results")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="another checkout (e.g. a git worktree of an older commit) whose Dormant is "
        "measured in the same run, as target 'baseline'",
    )
    args = parser.parse_args(argv)
    levels = [int(x) for x in args.streams.split(",") if x.strip()]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []

    def say(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    say("paced SSE streams: direct vs Dormant vs nginx (one worker), same run")
    say(machine_line())
    say(GOAL)
    with tempfile.TemporaryDirectory(prefix="dormant-paced-") as tmp:
        rows = run_paced(levels, args.seconds, max(1, args.rounds), Path(tmp), say, args.baseline)
    write_csv(out / "bench_stream.csv", FIELDS, rows)
    (out / "bench_stream.txt").write_text("\n".join(lines) + "\n")
    say(f"wrote {out / 'bench_stream.csv'}, {out / 'bench_stream.txt'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
