"""The proxy benchmark runs end to end: a real Dormant, a real upstream, both targets.

Only that it produces numbers is checked; how fast anything is gets measured, not asserted.
The Python client is forced so the test does not need wrk.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from loadtests.bench_proxy import _dormant, split_duration
from loadtests.bench_stream import find_nginx
from loadtests.launcher import LocalDormant
from loadtests.loadgen import percentile

ROOT = Path(__file__).resolve().parents[2]


def test_percentile_and_split() -> None:
    samples = [(float(v), 1.0) for v in range(1, 101)]
    assert percentile(samples, 50) == 50.0
    assert percentile(samples, 99) == 99.0
    assert percentile([(2.0, 3.0), (1.0, 1.0)], 50) == 2.0
    assert split_duration(5, 2, integer=True) == [3.0, 2.0]
    assert split_duration(1, 2, integer=True) == [1.0]
    assert split_duration(1, 2, integer=False) == [0.5, 0.5]


def test_the_proxy_dormant_fronts_the_upstream_and_the_bench_one_the_reference(
    tmp_path: Path,
) -> None:
    proxy = _dormant(tmp_path)
    config = proxy.config()
    assert (proxy.workload, proxy.model, proxy.engine, proxy.isolated) == (
        "echo",
        "echo",
        "restart",
        True,
    )
    assert len(config["admin_token"]) == 32 and config["log_level"] == "warning"
    assert config["workloads"][0]["command"][:3] == ["{python}", "-m", "loadtests.upstream"]
    ref = LocalDormant.reference(tmp_path, "auto", "small", tmp_path / "weights")
    assert (ref.workload, ref.model, ref.isolated) == ("ref", "ref-small", False)
    assert ref.config()["reap_interval"] == 0.2 and "admin_token" not in ref.config()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_bench_proxy_writes_direct_and_dormant_rows(tmp_path: Path) -> None:
    out = tmp_path / "results"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadtests.bench_proxy",
            "--duration",
            "1",
            "--concurrency",
            "1",
            "--client",
            "python",
            "--warmup",
            "0",
            "--streams",
            "8",
            "--stream-seconds",
            "1",
            "--stream-rounds",
            "1",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "goal: added p50 <= 1 ms" in proc.stdout
    with open(out / "bench_proxy.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    got = {(r["kind"], r["target"]): r for r in rows}
    assert set(got) == {(k, t) for k in ("small", "stream") for t in ("direct", "dormant")}
    for (kind, target), row in got.items():
        assert row["concurrency"] == "1"
        assert row["client"] == "python"
        assert float(row["rps"]) > 0, (kind, target, row)
        assert int(row["errors"]) == 0, (kind, target, row)
        assert float(row["p50_ms"]) > 0 and float(row["p99_ms"]) >= float(row["p50_ms"])
    with open(out / "bench_proxy_summary.csv", newline="") as f:
        summary = list(csv.DictReader(f))
    assert [r["kind"] for r in summary] == ["small", "stream"]
    assert all(r["goal"].startswith(("met", "not met")) for r in summary)
    assert (out / "bench_proxy.txt").is_file()
    # the paced streams: every target delivered every chunk, the proxies' CPU is counted
    with open(out / "bench_stream.csv", newline="") as f:
        paced = {r["target"]: r for r in csv.DictReader(f)}
    targets = {"direct", "dormant"} | ({"nginx"} if find_nginx() else set())
    assert set(paced) == targets, proc.stdout[-2000:]
    for target, row in paced.items():
        assert row["streams"] == "8" and float(row["delivered_pct"]) == 100.0, row
        assert 0 < float(row["lat_p50_ms"]) <= float(row["lat_p99_ms"]), row
        assert int(row["failed_streams"]) == 0, row
        if target != "direct":
            assert float(row["cpu_s_per_m_chunks"]) > 0, row
    if not find_nginx():
        assert "nginx: not found" in proc.stdout
