"""``python -m loadtests.pool_bench`` (``make bench-pool``): three models sharing room for two.

Three measurements, one run, on the reference model (default size ``small``; ``--quick``:
``tiny``, fewer samples):

1. **hooks**: for each ``--hold`` size, one reference server started directly (no Dormant)
   with that much extra memory held beside its weights: ``POST /sleep?level=1`` and
   ``POST /wake_up`` timed against the bytes parked in host RAM (``GET /memory``). On CPU the
   device *is* host RAM, so level 1 frees nothing (the pool hibernates instead): this is the
   cost of the engine's copy, measured where it runs. The first server (``--hold`` 0) is also
   the probe: the PSS of its process tree after a few requests, M, sizes the pool (unless
   ``--budget``).
2. **criu**: one Dormant (no pool) with a workload per ``--hold`` size: hibernate / wake
   through the admin API, checkpoint and restore seconds against the snapshot's bytes.
3. **churn**: the same seeded Zipf traffic (``--users`` concurrent streaming users,
   ``--requests`` in all, the first model the most popular) against a Dormant pooling three
   workloads under ``device: {kind: cpu, memory_budget: 2.75 M}``, each declaring
   ``memory: 1.25 M`` (two fit, three never do) — first on ``engine: auto`` (CRIU), then on
   ``engine: restart`` (what llama-swap does: stop one, cold-boot the other). Requests/s,
   TTFT p50/p95 (all requests, and those that waited for a swap), swaps, and the mean swap
   seconds by engine from ``/metrics``.

Prints the tables, the machine and the load average; writes ``pool_bench.txt``,
``pool_churn.csv`` and ``pool_swaps.csv`` under ``--out``. A pure client: it starts
``python -m activator`` and ``python -m examples.refserver`` as processes, reads /proc, and
imports nothing from the project. Every process it starts is stopped by PID.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from random import Random
from typing import Any

import httpx

from loadtests.admin import AdminClient, AdminError
from loadtests.bench import BenchError, default_weights_dir
from loadtests.launcher import REPO, DormantProcess, StartError, free_port
from loadtests.openai_stream import completion_request, make_prompt, stream_completion
from loadtests.pool_report import (
    ChurnResult,
    SwapRow,
    format_bytes,
    render_report,
    write_churn_csv,
    write_swaps_csv,
)
from loadtests.report import Machine
from loadtests.scenarios import ZipfPicker

__all__ = ["Plan", "main", "parse_args", "parse_size", "zipf_plans"]

WORKLOADS = ("a", "b", "c")
"""The churn's workloads, the first the most popular."""
BUDGET_FACTOR, DECLARED_FACTOR = 2.75, 1.25
"""Budget and each workload's declared memory, in units of one server's measured PSS."""
KV_CACHE_TOKENS = 1024
"""The servers' prefix KV cache bound: keeps their footprint near what was measured."""
_UNITS = {"": 1, "b": 1, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30}


def parse_size(text: str) -> int:
    """``512MiB`` -> bytes (B, KiB, MiB, GiB or a whole number of bytes)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise argparse.ArgumentTypeError(f"expected a size like 512MiB or 2GiB, got {text!r}")
    return int(float(match.group(1)) * _UNITS[unit])


def parse_sizes(text: str) -> list[int]:
    sizes = [parse_size(part) for part in text.split(",") if part.strip()]
    if not sizes:
        raise argparse.ArgumentTypeError("give at least one size, e.g. 0,512MiB")
    return sizes


@dataclass(frozen=True)
class Plan:
    """How much to measure."""

    size: str
    users: int
    requests: int
    zipf_s: float
    seed: int
    holds: tuple[int, ...]
    swap_samples: int
    max_tokens: int
    prompt_length: int
    max_seconds: float
    budget: int | None
    engines: tuple[str, ...]

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Plan:
        quick = args.quick
        return cls(
            size=args.size or ("tiny" if quick else "small"),
            users=args.users,
            requests=args.requests or (24 if quick else 60),
            zipf_s=args.zipf_s,
            seed=args.seed,
            holds=tuple(args.hold if args.hold is not None else ([0] if quick else [0, 512 << 20])),
            swap_samples=args.swap_samples or (2 if quick else 3),
            max_tokens=args.max_tokens or (8 if quick else 16),
            prompt_length=args.prompt_length,
            max_seconds=args.max_seconds,
            budget=args.budget,
            engines=tuple(args.engines),
        )


def zipf_plans(users: int, requests: int, s: float, seed: int) -> list[list[str]]:
    """Which workload each user asks for, request by request: ``requests`` Zipf draws over
    WORKLOADS from a seeded generator, dealt round the users (the same for every engine)."""
    picker = ZipfPicker(list(WORKLOADS), s, Random(seed))
    draws = [picker.pick() for _ in range(requests)]
    return [draws[u::users] for u in range(users)]


class Progress:
    """One line per step on stderr, with the time since the bench started."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def __call__(self, message: str) -> None:
        print(f"[pool-bench {time.monotonic() - self.started:6.1f}s] {message}", file=sys.stderr)
        sys.stderr.flush()


# -- processes and memory --------------------------------------------------------------------


def _pss(pid: int) -> int:
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
        total += _pss(current)
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
                    raise BenchError(f"{model} exited with {proc.returncode}: {tail}")
                if time.monotonic() > deadline:
                    raise BenchError(f"{model} did not answer /health within 600s; see {log_path}")
                try:
                    if client.get(f"{url}/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
        yield url, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _post(client: httpx.Client, url: str, what: str, **kw: Any) -> httpx.Response:
    response = client.post(url, **kw)
    if response.status_code != 200:
        raise BenchError(f"{what}: HTTP {response.status_code}: {response.text[:300]}")
    return response


class PoolBench:
    """Runs the plan's parts; every server and Dormant it starts is stopped before it returns."""

    def __init__(self, plan: Plan, weights: Path, say: Progress) -> None:
        self.plan, self.weights, self.say = plan, weights, say

    def _model(self, name: str) -> str:
        return f"ref-{self.plan.size}-{name}"

    def _greedy(self, client: httpx.Client, url: str, model: str, prompt: str) -> str:
        body = {"model": model, "prompt": prompt, "max_tokens": 16, "temperature": 0}
        data = _post(client, f"{url}/v1/completions", f"{model} completion", json=body).json()
        return str(data["choices"][0]["text"])

    # -- 1. hooks: sleep level 1 / wake_up on a server started directly ----------------------

    def probe(self, workdir: Path) -> int:
        """M: the PSS of one server (nothing held) after a few requests."""
        model = self._model("probe")
        self.say(f"probe: {model}: starting it directly")
        with (
            reference_server(workdir, model, self.plan.size, self.weights, 0) as (url, pid),
            httpx.Client(timeout=600, trust_env=False) as client,
        ):
            for i in range(3):
                self._greedy(client, url, model, f"{i} probe: " + "tell me more. " * 8)
            probe = tree_pss(pid)
        self.say(f"probe: one server holds {format_bytes(probe)} (PSS)")
        return probe

    def hooks(self, workdir: Path) -> tuple[list[SwapRow], int]:
        """One row per hold size; and M, the PSS of the server holding nothing extra after a
        few requests (0 when no hold size is 0)."""
        rows, probe = [], 0
        for hold in self.plan.holds:
            model = self._model(f"hooks-{hold >> 20}m")
            self.say(f"hooks: {model} (held {format_bytes(hold)}): starting it directly")
            with (
                reference_server(workdir, model, self.plan.size, self.weights, hold) as (url, pid),
                httpx.Client(timeout=600, trust_env=False) as client,
            ):
                prompt = "The pool keeps the cache: " + "tell me more. " * 8
                before = [self._greedy(client, url, model, f"{i} {prompt}") for i in range(3)]
                if hold == 0 and not probe:
                    probe = tree_pss(pid)
                    self.say(f"hooks: one server holds {format_bytes(probe)} (PSS, the probe)")
                row = SwapRow("hooks", self._what(hold), None)
                for _ in range(self.plan.swap_samples):
                    began = time.perf_counter()
                    _post(client, f"{url}/sleep", "sleep", params={"level": 1})
                    row.out_s.append(time.perf_counter() - began)
                    parked = client.get(f"{url}/memory").json()["host_bytes"]
                    row.bytes_moved = sum(int(v) for v in parked.values())
                    began = time.perf_counter()
                    _post(client, f"{url}/wake_up", "wake_up")
                    row.in_s.append(time.perf_counter() - began)
                after = [self._greedy(client, url, model, f"{i} {prompt}") for i in range(3)]
                row.note = "sleep level 1; on CPU it frees nothing; greedy outputs " + (
                    "identical before and after" if after == before else "DIFFER after a wake"
                )
                self.say(f"hooks: {row.what}: out {row.out_s}, in {row.in_s}")
                rows.append(row)
        return rows, probe

    def _what(self, hold: int) -> str:
        return f"refserver {self.plan.size}" + (f" + {format_bytes(hold)} held" if hold else "")

    # -- 2. criu: hibernate / wake through the admin API -------------------------------------

    def _workload(self, name: str, hold: int = 0, memory: int | None = None) -> dict[str, Any]:
        model = self._model(name)
        entry: dict[str, Any] = {
            "name": name,
            "models": [model],
            "command": [
                "{python}",
                *server_command(model, self.plan.size, self.weights, "{port}", hold),
            ],
            "health_path": "/health",
            "idle_after": 0,
            "start_timeout": "600s",
            "wake_timeout": "600s",
        }
        if memory is not None:
            entry["memory"] = memory
        return entry

    def _dormant(
        self, workdir: Path, engine: str, workloads: list[dict[str, Any]], **extra: Any
    ) -> DormantProcess:
        config = {
            "listen": f"127.0.0.1:{free_port()}",
            "state_dir": str(workdir / "state"),
            "engine": engine,
            "reap_interval": 0.2,
            "workloads": workloads,
            **extra,
        }
        return DormantProcess(workdir, config)

    def criu(self, workdir: Path) -> list[SwapRow]:
        names = {f"hold{i}": hold for i, hold in enumerate(self.plan.holds)}
        dormant = self._dormant(workdir, "auto", [self._workload(n, h) for n, h in names.items()])
        dormant.start()
        try:
            with AdminClient(dormant.url, timeout=900) as admin:
                engine = admin.engine()
                if engine.get("name") != "criu":
                    why = f"engine auto chose {engine.get('name')}: {engine.get('reason')}"
                    self.say(f"criu: not measured ({why})")
                    return [SwapRow("criu", "-", None, note=f"not measured: {why}")]
                rows = []
                for name, hold in names.items():
                    rows.append(self._criu_cycles(admin, name, hold))
                    admin.hibernate(name)  # give its memory back before the next one
                return rows
        finally:
            dormant.stop()

    def _criu_cycles(self, admin: AdminClient, name: str, hold: int) -> SwapRow:
        self.say(f"criu: {name} (held {format_bytes(hold)}): boot, then hibernate/wake cycles")
        admin.wake(name)
        row = SwapRow("criu", self._what(hold), None)
        for _ in range(self.plan.swap_samples):
            view = admin.hibernate(name)
            checkpoint = view.get("last_checkpoint") or {}
            if view.get("state") != "hibernated" or not checkpoint:
                raise BenchError(f"criu: {name} did not hibernate: {view.get('last_error')}")
            row.out_s.append(float(checkpoint["seconds"]))
            row.bytes_moved = int(checkpoint["bytes"])
            view = admin.wake(name)
            wake = view.get("last_wake") or {}
            if wake.get("path") != "restore":
                row.note = (
                    f"a wake was a {wake.get('path')} ({view.get('last_error')}); not counted"
                )
                continue
            row.in_s.append(float(wake["seconds"]))
        row.note = row.note or "checkpoint = criu dump + commit; restore = verify + criu restore"
        self.say(
            f"criu: {row.what}: {format_bytes(row.bytes_moved)}; out {row.out_s}, in {row.in_s}"
        )
        return row

    # -- 3. the churn --------------------------------------------------------------------------

    def churn(self, workdir: Path, engine: str, budget: int, declared: int) -> ChurnResult:
        workloads = [self._workload(n, memory=declared) for n in WORKLOADS]
        device = {"kind": "cpu", "memory_budget": budget}
        dormant = self._dormant(workdir, engine, workloads, device=device)
        dormant.start()
        try:
            with AdminClient(dormant.url, timeout=900) as admin:
                used = str(admin.engine().get("name", engine))
                result = ChurnResult(used, self.plan.requests)
                if engine != "restart" and used != "criu":
                    result.note = f"engine auto chose {used}: {admin.engine().get('reason')}"
                for name in reversed(WORKLOADS):  # warm-up, not measured: a and b stay resident
                    self.say(f"churn {used}: warm-up: {name}")
                    admin.wake(name)
                before = self._counters(admin, dormant.url)
                self._drive(dormant.url, result)
                after = self._counters(admin, dormant.url)
            result.swaps = after[0] - before[0]
            result.swap_seconds = {
                key: (
                    count - before[1].get(key, (0, 0.0))[0],
                    total - before[1].get(key, (0, 0.0))[1],
                )
                for key, (count, total) in after[1].items()
            }
            self.say(
                f"churn {used}: {result.ok}/{result.planned} ok in {result.seconds:.1f}s, "
                f"{result.swaps} swaps"
            )
            return result
        finally:
            dormant.stop()

    @staticmethod
    def _counters(
        admin: AdminClient, url: str
    ) -> tuple[int, dict[tuple[str, str], tuple[int, float]]]:
        swaps = sum(int(w["counters"].get("swaps_out", 0)) for w in admin.workloads())
        with httpx.Client(timeout=30, trust_env=False) as client:
            text = client.get(f"{url}/metrics").text
        return swaps, swap_seconds(text)

    def _drive(self, url: str, result: ChurnResult) -> None:
        plans = zipf_plans(self.plan.users, self.plan.requests, self.plan.zipf_s, self.plan.seed)
        deadline = time.monotonic() + self.plan.max_seconds

        def user(plan: list[str]) -> list[tuple[bool, float | None, str | None, str | None]]:
            done = []
            with httpx.Client(base_url=url, timeout=600, trust_env=False) as client:
                for name in plan:
                    if time.monotonic() > deadline:
                        break
                    prompt = make_prompt(self.plan.prompt_length, salt=uuid.uuid4().hex[:12])
                    path, body = completion_request(
                        "completions", self._model(name), prompt, self.plan.max_tokens
                    )
                    r = stream_completion(client, path, body)
                    done.append((r.ok, r.ttft, r.wake, r.error))
            return done

        began = time.monotonic()
        with ThreadPoolExecutor(self.plan.users) as pool:
            answers = [a for run in pool.map(user, plans) for a in run]
        result.seconds = time.monotonic() - began
        for ok, ttft, wake, error in answers:
            if ok and ttft is not None:
                result.ttfts.append(ttft)
                if wake:
                    result.waited.append(ttft)
            else:
                result.failures.append(error or "no first token")
        if len(answers) < result.planned:
            result.note = (
                f"cut short at --max-seconds {self.plan.max_seconds:g}: "
                f"{len(answers)} of {result.planned} requests sent"
            )


def swap_seconds(metrics: str) -> dict[tuple[str, str], tuple[int, float]]:
    """``dormant_swap_seconds`` count and sum by (engine, direction), from /metrics text."""
    found: dict[tuple[str, str], list[float]] = {}
    pattern = re.compile(r"^dormant_swap_seconds_(count|sum)\{([^}]*)\} (\S+)$", re.MULTILINE)
    for kind, labels, value in pattern.findall(metrics):
        named = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        slot = found.setdefault((named["engine"], named["direction"]), [0.0, 0.0])
        slot[0 if kind == "count" else 1] = float(value)
    return {key: (int(count), total) for key, (count, total) in found.items()}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.pool_bench",
        description="Three models sharing room for two: Zipf churn with CRIU vs restart, and "
        "swap seconds against bytes moved per engine (criu, hooks).",
    )
    parser.add_argument("--out", type=Path, default=Path("results"), help="results directory")
    parser.add_argument("--size", choices=["tiny", "small"], help="reference model size")
    parser.add_argument("--users", type=int, default=3, help="concurrent streaming users")
    parser.add_argument("--requests", type=int, help="churn requests per engine (default 60)")
    parser.add_argument("--zipf-s", type=float, default=1.0, help="Zipf exponent (default 1)")
    parser.add_argument("--seed", type=int, default=10, help="seed of the Zipf draws")
    parser.add_argument(
        "--hold",
        type=parse_sizes,
        help="extra memory each swap-table server holds, comma-separated (default 0,512MiB)",
    )
    parser.add_argument("--swap-samples", type=int, help="swap cycles per size (default 3)")
    parser.add_argument("--max-tokens", type=int, help="max_tokens per request (default 16)")
    parser.add_argument("--prompt-length", type=int, default=64, help="prompt characters")
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=900.0,
        help="no new churn request after this long, per engine (default 900)",
    )
    parser.add_argument(
        "--budget",
        type=parse_size,
        help=f"the pool's memory_budget (default {BUDGET_FACTOR} x one server's measured PSS)",
    )
    parser.add_argument(
        "--engines",
        type=lambda t: [e.strip() for e in t.split(",") if e.strip()],
        default=["hooks", "criu", "auto", "restart"],
        help="what to run, comma-separated: hooks, criu (the swap table), auto, restart "
        "(the churn); default all",
    )
    parser.add_argument(
        "--weights-dir",
        type=Path,
        help="reference model weights (default $DORMANT_STATE_DIR/refserver or .state/refserver)",
    )
    parser.add_argument("--quick", action="store_true", help="size tiny, fewer samples: for tests")
    args = parser.parse_args(argv)
    for name in ("users", "requests", "swap_samples", "max_tokens", "prompt_length"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.requests is not None and args.requests < args.users:
        parser.error(f"--requests ({args.requests}) must be at least --users ({args.users})")
    if args.zipf_s < 0:
        parser.error("--zipf-s must be >= 0")
    if args.max_seconds <= 0:
        parser.error("--max-seconds must be > 0")
    unknown = sorted(set(args.engines) - {"hooks", "criu", "auto", "restart"})
    if unknown or not args.engines:
        parser.error(f"--engines takes hooks, criu, auto, restart; got {','.join(args.engines)}")
    if args.budget is not None and args.budget <= 0:
        parser.error("--budget must be a positive size")
    return args


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.1f} {five:.1f} {fifteen:.1f}"


def main(argv: list[str] | None = None) -> int:
    """Run the bench; 0 when every part ran, 1 when a step failed."""
    args = parse_args(argv)
    plan = Plan.from_args(args)
    say = Progress()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    weights = (args.weights_dir or default_weights_dir()).resolve()
    machine = Machine.here(plan.size)
    loads = [_load()]
    say(f"plan: {plan}; weights in {weights}; results in {out}; load average {loads[0]}")
    bench = PoolBench(plan, weights, say)
    churn: list[ChurnResult] = []
    swaps: list[SwapRow] = []
    setup = ""
    try:
        with tempfile.TemporaryDirectory(prefix="dormant-pool-bench-") as tmp:
            work = Path(tmp)
            probe = 0
            if "hooks" in plan.engines:
                rows, probe = bench.hooks(work)
                swaps += rows
            if "criu" in plan.engines:
                swaps += bench.criu(work / "criu")
            churning = [e for e in ("auto", "restart") if e in plan.engines]
            if churning and plan.budget is None and not probe:
                probe = bench.probe(work)
            budget = plan.budget or int(BUDGET_FACTOR * probe)
            declared = int(budget * DECLARED_FACTOR / BUDGET_FACTOR)
            setup = (
                f"3 workloads ({plan.size}), each declaring {format_bytes(declared)}, in a "
                f"budget of {format_bytes(budget)} (room for 2); {plan.users} users, "
                f"{plan.requests} streamed requests, Zipf s={plan.zipf_s:g}, seed {plan.seed}"
            )
            for engine in churning:
                say(f"churn: engine {engine}: {setup}")
                churn.append(bench.churn(work / engine, engine, budget, declared))
                loads.append(_load())
    except (BenchError, StartError, AdminError, httpx.HTTPError) as exc:
        say(f"FAILED: {type(exc).__name__}: {exc}")
        return 1
    loads.append(_load())
    text = render_report(churn, swaps, setup, machine, " / ".join(loads))
    print(text)
    (out / "pool_bench.txt").write_text(text + "\n")
    if churn:
        write_churn_csv(churn, machine, out / "pool_churn.csv")
    if swaps:
        write_swaps_csv(swaps, machine, out / "pool_swaps.csv")
    say(f"wrote {out}/pool_bench.txt, pool_churn.csv, pool_swaps.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
