"""How a stream ends, against a real upstream (tests/servers/openai_ends.py on uvicorn).

``transformers serve`` ends a stream with a ``finish_reason`` chunk and no ``data: [DONE]``;
the OpenAI SDK accepts that, so the load tests must too, and still tell a stream that was
cut short from a complete one. Driven by the stream client and by the real Locust user.
"""

from __future__ import annotations

import csv
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from loadtests.openai_stream import StreamResult, completion_request, stream_completion
from tests.conftest import ROOT, TESTS, free_port

pytestmark = pytest.mark.timeout(180)

LOCUSTFILE = ROOT / "loadtests" / "locustfile.py"
TOKENS = 5  # "t0 " .. "t4 ": 15 characters


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(TESTS / "servers" / "openai_ends.py"), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,  # the 'broken' stream logs the error it raises on purpose
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"openai_ends.py exited with {proc.returncode}"
            try:
                if httpx.get(f"{url}/health", timeout=1, trust_env=False).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "openai_ends.py did not answer /health in 60s"
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _stream(url: str, api: str, model: str) -> StreamResult:
    with httpx.Client(base_url=url, timeout=30, trust_env=False) as client:
        path, body = completion_request(api, model, "Hello", TOKENS)
        return stream_completion(client, path, body)


@pytest.mark.parametrize("api", ["chat", "completions"])
@pytest.mark.parametrize(
    ("model", "done", "finish_reason"),
    [("hf-serve", False, "length"), ("openai", True, "length"), ("done-only", True, None)],
)
def test_either_end_completes_a_stream(
    upstream: str, api: str, model: str, done: bool, finish_reason: str | None
) -> None:
    result = _stream(upstream, api, model)
    assert result.ok, result.error
    assert result.complete and result.status == 200
    assert (result.done, result.finish_reason) == (done, finish_reason)
    # the role chunk and the closing chunk (chat: empty delta; completions: text "") are
    # not tokens, so the count is what the server generated
    assert result.tokens == TOKENS, result
    assert result.text == "t0 t1 t2 t3 t4 "
    assert len(result.gaps) == TOKENS - 1
    assert result.ttft is not None and 0 < result.ttft <= result.e2e


@pytest.mark.parametrize("api", ["chat", "completions"])
def test_a_truncated_stream_is_an_error_with_the_true_count(upstream: str, api: str) -> None:
    result = _stream(upstream, api, "truncated")
    assert not result.ok and not result.complete
    chunks = TOKENS + (1 if api == "chat" else 0)  # chat opens with a role chunk
    assert result.error == (
        "stream truncated: it ended without data: [DONE] or a finish_reason after "
        f"{TOKENS} content chunks (15 characters; {chunks} chunks in all)"
    )
    assert result.ttft is not None  # content had arrived, and was timed


def test_an_aborted_stream_is_an_error(upstream: str) -> None:
    result = _stream(upstream, "chat", "broken")
    assert not result.ok
    assert result.error is not None and result.error.startswith("RemoteProtocolError")


def _locust(url: str, prefix: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless"]
    command += ["-u", "1", "-r", "1", "--run-time", "3s", "-H", url, "--think-time", "0.1"]
    command += ["--max-tokens", str(TOKENS), "--csv", str(prefix), *args]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=120, cwd=ROOT, check=False
    )


def _rows(prefix: Path) -> dict[str, dict[str, str]]:
    with Path(f"{prefix}_stats.csv").open(newline="") as f:
        return {row["Type"]: row for row in csv.DictReader(f) if row["Type"]}


def test_locust_counts_transformers_serve_streams_as_successes(
    upstream: str, tmp_path: Path
) -> None:
    prefix = tmp_path / "hf"
    done = _locust(upstream, prefix, "--api", "chat", "--model", "hf-serve")
    done.check_returncode()
    rows = _rows(prefix)
    assert int(rows["E2E"]["Request Count"]) > 0, rows
    assert rows["E2E"]["Failure Count"] == "0", rows
    assert rows["TTFT"]["Request Count"] == rows["E2E"]["Request Count"], rows
    assert float(rows["E2E"]["Average Content Size"]) == TOKENS, rows


def test_locust_counts_truncated_streams_as_failures(upstream: str, tmp_path: Path) -> None:
    prefix = tmp_path / "cut"
    done = _locust(
        upstream,
        prefix,
        "--api",
        "completions",
        "--model",
        "truncated",
        "--slo-fail-ratio",
        "0",
        "--no-prewarm",  # the pre-warm would refuse to start on a model that always fails
    )
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "SLO gate FAILED: E2E fail_ratio <= 0: measured 1" in output
    rows = _rows(prefix)
    assert int(rows["E2E"]["Failure Count"]) == int(rows["E2E"]["Request Count"]) > 0, rows
    with Path(f"{prefix}_failures.csv").open(newline="") as f:
        errors = {row["Error"] for row in csv.DictReader(f)}
    assert errors == {
        "RequestFailed('stream truncated: it ended without data: [DONE] or a finish_reason "
        f"after {TOKENS} content chunks (15 characters; {TOKENS} chunks in all)')"
    }, errors
