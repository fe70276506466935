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
import sys
import tempfile
from pathlib import Path

import httpx

from loadtests.admin import AdminError
from loadtests.bench import BenchError, Progress, default_weights_dir
from loadtests.launcher import StartError
from loadtests.pool_parts import PoolBench
from loadtests.pool_plan import Plan
from loadtests.pool_report import (
    ChurnResult,
    SwapRow,
    format_bytes,
    render_report,
    write_churn_csv,
    write_swaps_csv,
)
from loadtests.refprocess import ServerError
from loadtests.report import Machine

__all__ = ["Plan", "main", "parse_args", "parse_size"]

BUDGET_FACTOR, DECLARED_FACTOR = 2.75, 1.25
"""Budget and each workload's declared memory, in units of one server's measured PSS."""
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
    say = Progress("pool-bench")
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
    except (BenchError, ServerError, StartError, AdminError, httpx.HTTPError) as exc:
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
