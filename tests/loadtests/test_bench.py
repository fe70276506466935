"""``python -m loadtests.bench --quick`` end to end: two real Dormants, CRIU and restart."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from loadtests.stats import SCHEMA_PATH
from snapshots import CriuEngine
from tests.conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]


def test_quick_bench_prints_the_table_and_writes_its_files(
    tmp_path: Path, criu: CriuEngine
) -> None:
    out = tmp_path / "results"
    command = [sys.executable, "-m", "loadtests.bench", "--quick", "--out", str(out)]
    command += ["--weights-dir", str(tmp_path / "weights")]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=360, cwd=ROOT, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for step in ("warm: headless locust", "wake (restore) 3/3", "cold boot 2/2", "wrote"):
        assert step in done.stderr, done.stderr
    assert "TTFT p50 ratios: cold/wake = " in done.stdout
    assert "reference model size: tiny" in done.stdout
    with (out / "bench.csv").open(newline="") as f:
        rows = {r["scenario"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"warm", "wake (restore)", "wake burst x3", "cold boot"}
    assert rows["cold boot"]["engine"] == "restart" and rows["cold boot"]["samples"] == "2"
    assert int(rows["wake (restore)"]["snapshot_bytes"]) > 0
    p50 = {scenario: float(row["ttft_p50_s"]) for scenario, row in rows.items()}
    assert 0 < p50["warm"] < p50["wake (restore)"] < p50["cold boot"]
    assert (out / "bench.png").read_bytes().startswith(b"\x89PNG")
    assert (out / "bench.txt").read_text().startswith("scenario")
    report = json.loads((out / "bench.json").read_text())
    jsonschema.validate(report, json.loads(SCHEMA_PATH.read_text()))
    by_name = {r["scenario"]: r for r in report["rows"]}
    assert by_name["warm"]["tpot_s"]["n"] > 0 and by_name["warm"]["output_tokens_per_s"] > 0
    assert by_name["cold boot"]["ttft_s"]["p95"] is None  # 2 samples support no p95
    assert (out / "logs" / "dormant-auto.log").stat().st_size > 0
    assert (out / "logs" / "dormant-restart.log").stat().st_size > 0
    assert (out / "locust" / "warm_stats.csv").exists()
