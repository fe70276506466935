"""Headless Locust against a real Dormant (tiny reference model, real CRIU): TTFT samples for a
warm and a woken model, SLO gates that pass and fail, the notebook scenario's refusal."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from loadtests.openai_stream import completion_request, stream_completion
from snapshots import CriuEngine
from tests.conftest import ROOT
from tests.integration.harness import Dormant, ref_workload

pytestmark = pytest.mark.timeout(300)

LOCUSTFILE = ROOT / "loadtests" / "locustfile.py"
MODEL = "ref-tiny"


@pytest.fixture(scope="module")
def dormant(tmp_path_factory: pytest.TempPathFactory, criu: CriuEngine) -> Iterator[Dormant]:
    d = Dormant(tmp_path_factory.mktemp("locust"), [ref_workload("ref", MODEL)])
    d.start()
    try:
        # boot the model first, so that the warm scenario's short run measures warm requests
        with httpx.Client(base_url=d.url, timeout=120, trust_env=False) as client:
            path, body = completion_request("completions", MODEL, "hi", 1)
            booted = stream_completion(client, path, body)
        assert booted.ok, booted.error
        yield d
    finally:
        d.stop()


def locust(
    url: str, csv_prefix: Path, *args: str, run_time: str = "8s", users: int = 2
) -> subprocess.CompletedProcess[str]:
    """A bounded headless run: few users, small max_tokens, a hard subprocess timeout."""
    command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless"]
    command += ["-u", str(users), "-r", str(users), "--run-time", run_time, "-H", url]
    command += ["--model", MODEL, "--max-tokens", "6", "--prompt-length", "32"]
    command += ["--csv", str(csv_prefix), *args]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=120, cwd=ROOT, check=False
    )


def stats_rows(csv_prefix: Path) -> dict[str, dict[str, str]]:
    """Locust's ``_stats.csv`` rows by request type (the Type column)."""
    with Path(f"{csv_prefix}_stats.csv").open(newline="") as f:
        return {row["Type"]: row for row in csv.DictReader(f) if row["Type"]}


def test_warm_then_wake_record_ttft_and_ttft_wake(dormant: Dormant, tmp_path: Path) -> None:
    warm = tmp_path / "warm"
    done = locust(
        dormant.url,
        warm,
        "--scenario",
        "warm",
        "--slo-ttft-p50",
        "30",
        "--slo-ttft-p95",
        "60",
        "--slo-fail-ratio",
        "0.01",
        "--slo",
        "ITL:p99=10,E2E:p95=60",
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "SLO gates: all 5 passed" in output
    assert "SLO gate passed: TTFT p50 <= 30 s (measured" in output
    rows = stats_rows(warm)
    assert int(rows["TTFT"]["Request Count"]) > 0, rows
    assert int(rows["ITL"]["Request Count"]) > 0, rows
    assert int(rows["E2E"]["Request Count"]) > 0 and rows["E2E"]["Failure Count"] == "0", rows
    assert float(rows["E2E"]["Average Content Size"]) > 0, "token counts recorded as length"

    restores = dormant.workload("ref")["counters"]["restores"]
    woken = tmp_path / "wake"
    samples = tmp_path / "wake_samples.csv"
    done = locust(
        dormant.url,
        woken,
        "--scenario",
        "wake",
        "--samples-out",
        str(samples),
        users=3,
        run_time="20s",  # the burst's restore plus warm requests after it, even on a busy machine
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "ref is hibernated after" in output
    rows = stats_rows(woken)
    assert int(rows["TTFT-wake"]["Request Count"]) == 3, rows  # the burst: one per user
    assert int(rows["TTFT"]["Request Count"]) > 0, rows  # warm requests after the wake
    assert rows["ADMIN"]["Name"] == "hibernate ref"
    view = dormant.workload("ref")
    assert view["counters"]["restores"] == restores + 1, view  # one restore for the burst
    with samples.open(newline="") as f:
        raw = list(csv.DictReader(f))
    wake_ttfts = [float(r["seconds"]) for r in raw if r["request_type"] == "TTFT-wake"]
    assert len(wake_ttfts) == 3 and all(t > 0 for t in wake_ttfts)


def test_impossible_gate_fails_with_the_measured_value(dormant: Dormant, tmp_path: Path) -> None:
    done = locust(
        dormant.url,
        tmp_path / "gate",
        "--slo-ttft-p50",
        "0.000001",
        "--slo-fail-ratio",
        "1",
        users=1,
        run_time="4s",
    )
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "SLO gate FAILED: TTFT p50 <= 1e-06 s: measured" in output
    assert "SLO gate passed: E2E fail_ratio <= 1 (measured 0, n=" in output
    assert "SLO gates: 1 of 2 FAILED" in output


def test_notebook_scenario_says_notebooks_are_not_available(
    dormant: Dormant, tmp_path: Path
) -> None:
    done = locust(dormant.url, tmp_path / "nb", "--scenario", "notebook", run_time="20s")
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert "notebook workloads are not available on this target" in output
    assert "no workload of kind 'jupyter' (kinds present: openai)" in output


def test_failures_are_recorded_as_failures(dormant: Dormant, tmp_path: Path) -> None:
    done = locust(
        dormant.url,
        tmp_path / "fail",
        "--model",
        "no-such-model",
        "--slo-fail-ratio",
        "0.5",
        "--no-prewarm",  # else the run stops before the first user (below)
        users=1,
        run_time="3s",
    )
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "SLO gate FAILED: E2E fail_ratio <= 0.5: measured 1" in output
    rows = stats_rows(tmp_path / "fail")
    assert "TTFT" not in rows
    assert int(rows["E2E"]["Failure Count"]) == int(rows["E2E"]["Request Count"]) > 0
    with Path(f"{tmp_path / 'fail'}_failures.csv").open(newline="") as f:
        errors = [row["Error"] for row in csv.DictReader(f)]
    assert any("HTTP 404" in e for e in errors), errors


def test_warm_prewarms_and_refuses_a_model_nobody_serves(dormant: Dormant, tmp_path: Path) -> None:
    done = locust(dormant.url, tmp_path / "none", "--model", "no-such-model", run_time="3s")
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert "pre-warm request for 'no-such-model' failed: HTTP 404" in output


def test_warm_scenario_measures_a_warm_model_after_a_hibernate(
    dormant: Dormant, tmp_path: Path
) -> None:
    """The model was hibernated: the pre-warm wakes it, so no measured request waited."""
    httpx.post(f"{dormant.url}/-/workloads/ref/hibernate", timeout=120).raise_for_status()
    report = tmp_path / "warm.json"
    done = locust(dormant.url, tmp_path / "warm", "--report-json", str(report), run_time="4s")
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "pre-warm: ref-tiny answered" in output
    rows = stats_rows(tmp_path / "warm")
    assert "TTFT-wake" not in rows and int(rows["TTFT"]["Request Count"]) > 0, rows
    data = json.loads(report.read_text())
    assert data["request_types"]["TPOT"]["n"] > 0 and data["output_tokens"] > 0


def test_wake_scenario_against_a_plain_server_fails_clearly(tmp_path: Path) -> None:
    """No admin API (here: nothing listening) -> exit 2 with the reason, no requests."""
    done = locust("http://127.0.0.1:9", tmp_path / "x", "--scenario", "wake", run_time="20s")
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert "wake scenario cannot start: GET http://127.0.0.1:9/-/workloads" in output


def test_bad_gate_option_is_refused_before_the_run(tmp_path: Path) -> None:
    done = locust("http://127.0.0.1:9", tmp_path / "x", "--slo", "TTFT:p42=1", run_time="20s")
    assert done.returncode != 0
    assert "unknown metric 'p42'" in done.stdout + done.stderr


def test_stream_client_times_chat_and_reports_http_errors(dormant: Dormant) -> None:
    with httpx.Client(base_url=dormant.url, timeout=60) as client:
        path, body = completion_request("chat", MODEL, "Hello there", 5)
        result = stream_completion(client, path, body)
        assert result.ok, result.error
        assert result.status == 200 and result.done and result.tokens == 5
        assert result.ttft is not None and 0 < result.ttft <= result.e2e
        assert len(result.gaps) <= 4  # one gap per token after the first non-empty one

        path, body = completion_request("chat", "no-such-model", "hi", 4)
        result = stream_completion(client, path, body)
    assert not result.ok and result.status == 404
    assert result.error is not None and result.error.startswith("HTTP 404")


def test_notebook_scenario_wakes_a_hibernated_notebook(tmp_path: Path, criu: CriuEngine) -> None:
    """The notebook scenario against a real `kind: jupyter` workload behind Dormant: it
    hibernates the notebook, then kernels are created and code runs over WebSockets."""
    d = Dormant(tmp_path, [{"name": "alice", "kind": "jupyter", "idle_after": 0}])
    d.start()
    try:
        # boot it (a bare GET of its API is a page's poll: it would not wake it)
        assert d.admin("POST", "/workloads/alice/wake").status_code == 200
        token = (d.state / "notebooks" / "alice" / "token").read_text().strip()
        done = locust(
            d.url,
            tmp_path / "nb",
            "--scenario",
            "notebook",
            "--notebook-token",
            token,
            run_time="8s",
            users=1,
        )
        rows = stats_rows(tmp_path / "nb")
        assert done.returncode == 0, done.stdout + done.stderr
        assert int(rows["ADMIN"]["Request Count"]) == 1 and int(rows["ADMIN"]["Failure Count"]) == 0
        assert int(rows["EXEC"]["Request Count"]) > 0 and int(rows["EXEC"]["Failure Count"]) == 0
        assert d.workload("alice")["counters"]["restores"] == 1
    finally:
        d.stop()
