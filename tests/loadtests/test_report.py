"""The load-test reports: n beside every percentile, no percentile the sample cannot support,
TPOT / ITL / output tokens/s, failed samples in the table, and JSON that validates against
the schema the project ships (loadtests/report.schema.json)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import jsonschema
import pytest

from loadtests.bench import add_result, fill_from_samples
from loadtests.gates import Summary
from loadtests.openai_stream import StreamResult
from loadtests.report import Machine, Row, render_table, to_json, write_chart, write_csv
from loadtests.samples import Sample
from loadtests.stats import SCHEMA_PATH, describe, locust_report, min_samples, write_json

MACHINE = Machine(2, 2, "Test CPU", "Linux", "tiny")


def _validate(report: dict[str, object]) -> None:
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(report, schema, cls=jsonschema.Draft202012Validator)


@pytest.mark.parametrize(
    ("q", "needs"), [(0.0, 1), (0.5, 1), (0.9, 10), (0.95, 20), (0.99, 100), (0.999, 1000)]
)
def test_min_samples(q: float, needs: int) -> None:
    assert min_samples(q) == needs


@pytest.mark.parametrize(
    ("n", "p50", "p95", "p99"),
    [
        (0, "n/a (n=0)", "n/a (n=0)", "n/a (n=0)"),
        (5, "0.300 s (n=5)", "n/a (n=5)", "n/a (n=5)"),
        (19, "1.000 s (n=19)", "n/a (n=19)", "n/a (n=19)"),
        (20, "1.050 s (n=20)", "1.905 s (n=20)", "n/a (n=20)"),
        (100, "5.050 s (n=100)", "9.505 s (n=100)", "9.901 s (n=100)"),
    ],
)
def test_a_percentile_is_shown_with_its_n_and_only_when_n_supports_it(
    n: int, p50: str, p95: str, p99: str
) -> None:
    stat = describe([0.1 * i for i in range(1, n + 1)])
    assert (stat.show("p50"), stat.show("p95"), stat.show("p99")) == (p50, p95, p99)
    assert stat.as_dict()["n"] == n


def _rows() -> list[Row]:
    warm = Row("warm", "criu", "locust, 1 user, 5s", duration_s=5.0)
    samples = [Sample("TTFT", "m", 0.05 + i / 1000, 4, True) for i in range(25)]
    samples += [Sample("TPOT", "m", 0.02, 0, True) for _ in range(25)]
    samples += [Sample("ITL", "m", 0.02, 0, True) for _ in range(75)]
    samples += [Sample("E2E", "m", 0.11, 4, True) for _ in range(25)]
    samples += [Sample("E2E", "m", 0.5, 0, False, "HTTP 503: queue full")]
    fill_from_samples(warm, samples, "TTFT")
    wake = Row("wake (restore)", "criu", "httpx", snapshot_bytes=290_000_000)
    for ttft in (0.9, 1.0, 0.8):
        add_result(wake, StreamResult(200, ttft, [0.02, 0.03, 0.025], ttft + 0.075, 4))
    wake.server_wake = [0.7, 0.8, 0.9]
    cold = Row("cold boot", "-", "-", note="FAILED: Dormant exited; log: results/logs/x.log")
    return [warm, wake, cold]


def test_bench_table_has_tpot_itl_throughput_and_failures() -> None:
    rows = _rows()
    warm, wake, _ = rows
    assert len(warm.ttfts) == 25 and len(warm.failures) == 1 and warm.requests == 26
    assert warm.output_tokens_per_s == pytest.approx(100 / 5.0)
    assert wake.tpots == pytest.approx([0.025] * 3)
    assert wake.output_tokens_per_s == pytest.approx(12 / (0.975 + 1.075 + 0.875))
    table = render_table(rows, MACHINE)
    header = table.splitlines()[0]
    for column in ("ok/failed", "TTFT p50", "TTFT p95", "TPOT p50", "ITL p95", "out tok/s"):
        assert column in header
    warm_line = next(line for line in table.splitlines() if line.startswith("warm"))
    assert "25/1" in warm_line and "(n=25)" in warm_line and "20.0" in warm_line
    wake_line = next(line for line in table.splitlines() if line.startswith("wake"))
    assert "0.900 s (n=3)" in wake_line and "n/a (n=3)" in wake_line  # no p95 of 3 samples
    assert "warm: 1 failed: HTTP 503: queue full" in table
    assert "cold boot: FAILED: Dormant exited; log: results/logs/x.log" in table


def test_bench_json_validates_and_csv_leaves_unsupported_percentiles_empty(
    tmp_path: Path,
) -> None:
    rows = _rows()
    report = to_json(rows, MACHINE)
    _validate(report)
    write_json(tmp_path / "bench.json", report)
    back = json.loads((tmp_path / "bench.json").read_text())
    by_name = {r["scenario"]: r for r in back["rows"]}
    assert by_name["wake (restore)"]["ttft_s"]["n"] == 3
    assert by_name["wake (restore)"]["ttft_s"]["p95"] is None
    assert by_name["warm"]["ttft_s"]["p95"] is not None and by_name["warm"]["failed"] == 1
    assert by_name["wake (restore)"]["tpot_s"]["p50"] == pytest.approx(0.025)
    assert by_name["cold boot"]["ttft_s"] == {
        "n": 0,
        "mean": None,
        "p50": None,
        "p90": None,
        "p95": None,
        "p99": None,
    }
    write_csv(rows, MACHINE, tmp_path / "bench.csv")
    with (tmp_path / "bench.csv").open(newline="") as f:
        written = {r["scenario"]: r for r in csv.DictReader(f)}
    assert written["wake (restore)"]["ttft_p95_s"] == "" and written["warm"]["failed"] == "1"
    assert written["warm"]["ttft_p95_s"] != "" and written["wake (restore)"]["itl_n"] == "9"
    write_chart(rows, MACHINE, tmp_path / "bench.png")
    assert (tmp_path / "bench.png").read_bytes().startswith(b"\x89PNG")


def test_a_report_that_breaks_the_schema_is_refused() -> None:
    report = to_json(_rows(), MACHINE)
    report["rows"][0]["ttft_s"]["p95"] = "fast"  # type: ignore[index]
    with pytest.raises(jsonschema.ValidationError):
        _validate(report)


def test_locust_report_validates_and_carries_n_and_throughput() -> None:
    summaries = {
        "TTFT": Summary({50: 4}, 0, 32),
        "E2E": Summary({200: 4, 900: 1}, 1, 32),
        "ITL": Summary({20: 28}),
    }
    report = locust_report("warm", summaries, 4.0)
    report["aborted"] = None
    _validate(report)
    assert report["output_tokens"] == 32 and report["output_tokens_per_s"] == 8.0
    assert report["request_types"]["E2E"]["n"] == 5
    assert report["request_types"]["E2E"]["failures"] == 1
    assert report["request_types"]["TTFT"]["p95"] is None  # 4 samples
    assert report["request_types"]["ITL"]["p95"] == pytest.approx(0.02)  # 28 samples


def test_a_bench_that_cannot_start_still_writes_its_report(tmp_path: Path) -> None:
    """A real failure (the listen port is taken): every row says FAILED and why, the table,
    CSV and JSON are written, and the exit status is 1."""
    import socket
    import subprocess
    import sys

    from tests.conftest import ROOT

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = tmp_path / "results"
        command = [sys.executable, "-m", "loadtests.bench", "--quick", "--out", str(out)]
        done = subprocess.run(
            [*command, "--port", str(port), "--weights-dir", str(tmp_path / "w")],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
            check=False,
        )
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"listen port {port} is not free" in done.stdout
    report = json.loads((out / "bench.json").read_text())
    _validate(report)
    scenarios = [r["scenario"] for r in report["rows"]]
    assert scenarios == ["warm", "wake (restore)", "wake burst x3", "cold boot"]
    assert all(r["note"].startswith("FAILED: ") for r in report["rows"])
    assert (out / "bench.txt").exists() and (out / "bench.csv").exists()


def test_a_failed_phase_keeps_its_rows_and_its_log(tmp_path: Path) -> None:
    """Injected: the first row is measured, then the step after it fails (as a wake that
    breaks does). The measured row stays, the others say FAILED with the kept log's path."""
    from loadtests import bench

    plan = bench.Plan.from_args(bench.parse_args(["--quick"]))
    runner = bench.Bench(plan, tmp_path / "out", tmp_path, bench.Progress())
    workdir = tmp_path / "tmp" / "auto"
    workdir.mkdir(parents=True)
    (workdir / "dormant.log").write_text("restore failed: criu said no\n")

    def run(_: Path, rows: list[Row]) -> list[Row]:
        rows.append(Row("warm", "criu", "locust", [0.05, 0.06]))
        raise bench.BenchError("streamed request to ref-tiny failed: HTTP 502")

    runner.run_criu = run  # type: ignore[method-assign]
    rows: list[Row] = []
    assert runner.phase(workdir, "auto", rows, ["warm", "wake (restore)", "wake burst x3"]) is False
    kept = tmp_path / "out" / "logs" / "dormant-auto.log"
    assert kept.read_text() == "restore failed: criu said no\n"
    assert [r.scenario for r in rows] == ["warm", "wake (restore)", "wake burst x3"]
    assert rows[0].ttfts == [0.05, 0.06]
    assert (
        rows[1].note
        == f"FAILED: streamed request to ref-tiny failed: HTTP 502; Dormant's log: {kept}"
    )
