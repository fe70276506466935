"""The warm-pool bench's pure parts: its arguments, the traffic it sends, the /metrics it
reads and the report it writes. (Running it takes minutes: `make bench-pool`; its numbers
are in docs/measurements.md.)"""

from __future__ import annotations

import csv
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from loadtests.pool_bench import Plan, parse_args, parse_size
from loadtests.pool_parts import swap_seconds, zipf_plans
from loadtests.pool_report import (
    ChurnResult,
    SwapRow,
    format_bytes,
    render_report,
    write_churn_csv,
    write_swaps_csv,
)
from loadtests.report import Machine
from tests.conftest import ROOT

MACHINE = Machine(2, 2, "AMD EPYC", "Linux", "tiny")


def test_defaults_and_quick() -> None:
    full = Plan.from_args(parse_args([]))
    assert (full.size, full.users, full.requests, full.swap_samples) == ("small", 3, 60, 3)
    assert full.holds == (0, 512 << 20) and full.budget is None
    assert full.engines == ("hooks", "criu", "auto", "restart")
    quick = Plan.from_args(parse_args(["--quick"]))
    assert (quick.size, quick.requests, quick.holds, quick.max_tokens) == ("tiny", 24, (0,), 8)
    chosen = Plan.from_args(
        parse_args(["--hold", "0,1GiB", "--budget", "900MiB", "--engines", "auto,restart"])
    )
    assert chosen.holds == (0, 1 << 30) and chosen.budget == 900 << 20
    assert chosen.engines == ("auto", "restart")


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--users", "0"], "--users must be >= 1"),
        (["--requests", "2", "--users", "3"], "--requests (2) must be at least --users (3)"),
        (["--hold", "lots"], "expected a size like 512MiB"),
        (["--budget", "0"], "--budget must be a positive size"),
        (["--engines", "auto,llama"], "--engines takes hooks, criu, auto, restart"),
        (["--zipf-s", "-1"], "--zipf-s must be >= 0"),
        (["--max-seconds", "0"], "--max-seconds must be > 0"),
    ],
)
def test_bad_arguments_exit_2_with_the_reason(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        parse_args(argv)
    assert info.value.code == 2
    assert says in capsys.readouterr().err


def test_sizes() -> None:
    assert parse_size("0") == 0 and parse_size("512MiB") == 512 << 20
    assert parse_size("1.5 GiB") == 3 << 29 and parse_size("4096b") == 4096
    assert format_bytes(None) == "-" and format_bytes(512) == "512 B"
    assert format_bytes(512 << 20) == "512.0 MiB" and format_bytes(3 << 40) == "3072.0 GiB"


def test_the_traffic_is_seeded_zipf_dealt_round_the_users() -> None:
    plans = zipf_plans(3, 300, 1.0, seed=10)
    assert plans == zipf_plans(3, 300, 1.0, seed=10)  # the same for every engine
    assert [len(p) for p in plans] == [100, 100, 100]
    counts = Counter(name for plan in plans for name in plan)
    assert counts["a"] > counts["b"] > counts["c"] > 0  # the first is the most popular
    assert zipf_plans(2, 5, 1.0, seed=1)[0] != [] and len(zipf_plans(2, 5, 1.0, 1)[1]) == 2


def test_swap_seconds_are_read_from_metrics_by_engine_and_direction() -> None:
    metrics = "\n".join(
        [
            "# TYPE dormant_swap_seconds histogram",
            'dormant_swap_seconds_bucket{direction="in",engine="criu",le="0.5"} 2.0',
            'dormant_swap_seconds_count{direction="in",engine="criu"} 3.0',
            'dormant_swap_seconds_sum{direction="in",engine="criu"} 1.5',
            'dormant_swap_seconds_count{direction="out",engine="restart"} 1.0',
            'dormant_swap_seconds_sum{direction="out",engine="restart"} 0.25',
            'dormant_swaps_total{engine="criu",from="resident",to="hibernated",workload="a"} 1.0',
        ]
    )
    assert swap_seconds(metrics) == {("criu", "in"): (3, 1.5), ("restart", "out"): (1, 0.25)}


def _results() -> tuple[list[ChurnResult], list[SwapRow]]:
    criu = ChurnResult("criu", 6, 2.0, [0.02, 0.03, 0.5, 0.04, 0.6, 0.02], [0.5, 0.6], [], 2)
    criu.swap_seconds = {("criu", "in"): (2, 1.0), ("criu", "out"): (2, 0.8)}
    restart = ChurnResult(
        "restart", 6, 12.0, [0.02, 5.0, 0.03, 6.0, 0.02], [5.0, 6.0], ["HTTP 503: busy"], 2
    )
    restart.swap_seconds = {("boot", "in"): (2, 11.0), ("restart", "out"): (2, 3.0)}
    swaps = [
        SwapRow("criu", "refserver tiny", 280_000_000, [0.3, 0.25, 0.28], [0.31, 0.3, 0.4]),
        SwapRow("hooks", "refserver tiny + 512.0 MiB held", 537_919_488, [0.4], [0.3], "level 1"),
        SwapRow("criu", "-", None, note="not measured: engine auto chose restart"),
    ]
    return [criu, restart], swaps


def test_the_report_shows_both_engines_side_by_side_and_the_swap_table() -> None:
    churn, swaps = _results()
    text = render_report(churn, swaps, "3 workloads in room for 2", MACHINE, "1.0 2.0 3.0")
    lines = text.splitlines()
    assert lines[0] == "Swaps: seconds against bytes moved"
    criu_row = next(line for line in lines if line.startswith("criu    refserver tiny "))
    assert "267.0 MiB" in criu_row and "0.280 s" in criu_row and "0.310 s" in criu_row
    assert "1.00 GB/s" in criu_row  # 280 MB in 0.28 s
    assert "not measured: engine auto chose restart" in text
    assert "Zipf churn: 3 workloads in room for 2" in text
    cells = {tuple(line.split()[:2]): line.split() for line in lines if line.strip()}
    assert cells[("criu", "6/6")][2] == "3.00"  # 6 ok in 2 s: requests/s
    assert cells[("criu", "6/6")][3:5] == ["0.035", "s"]  # TTFT p50
    assert cells[("restart", "5/6")][2] == "0.42" and cells[("restart", "5/6")][-1] == "2"
    assert "criu/restart: 7.2x the requests/s" in text
    assert "in: criu 0.50 s x2; out: criu 0.40 s x2" in text
    assert "in: boot 5.50 s x2; out: restart 1.50 s x2" in text
    assert "restart failed: HTTP 503: busy" in text
    assert text.endswith("reference model size: tiny; load average 1.0 2.0 3.0")


def test_the_csv_files_stand_alone(tmp_path: Path) -> None:
    churn, swaps = _results()
    write_churn_csv(churn, MACHINE, tmp_path / "churn.csv")
    write_swaps_csv(swaps, MACHINE, tmp_path / "swaps.csv")
    with (tmp_path / "churn.csv").open(newline="") as f:
        rows = {r["engine"]: r for r in csv.DictReader(f)}
    assert rows["criu"]["requests_per_s"] == "3.000000" and rows["restart"]["ok"] == "5"
    assert rows["criu"]["cpu_model"] == "AMD EPYC"
    with (tmp_path / "swaps.csv").open(newline="") as f:
        table = list(csv.DictReader(f))
    assert table[0]["bytes_moved"] == "280000000" and table[0]["out_s"] == "0.3000 0.2500 0.2800"
    assert table[2]["bytes_moved"] == "" and table[2]["samples"] == "0"


def test_help_names_the_parts() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "loadtests.pool_bench", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "usage: python -m loadtests.pool_bench" in done.stdout
    for option in ("--hold", "--budget", "--engines", "--users", "--requests", "--quick"):
        assert option in done.stdout
