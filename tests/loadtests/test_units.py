"""The load tests' pure parts: SSE timing, SLO gates, Zipf choice, samples and the report."""

from __future__ import annotations

import csv
import json
import random
from collections import Counter
from pathlib import Path

import pytest

from loadtests.gates import Gate, Summary, evaluate, parse_gates, standard_gates
from loadtests.openai_stream import (
    StreamTimer,
    chunk_content,
    chunk_finish_reason,
    completion_request,
    make_prompt,
    parse_wake_header,
)
from loadtests.report import Machine, Row, percentile, ratios, render_table, write_csv
from loadtests.samples import Sample, read_samples, write_samples
from loadtests.scenarios import ZipfPicker, parse_models


def _data(payload: object) -> str:
    return f"data: {json.dumps(payload)}"


def _completion(text: str) -> str:
    return _data({"object": "text_completion", "choices": [{"index": 0, "text": text}]})


def _chat(delta: dict[str, str]) -> str:
    return _data({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta}]})


def _feed(lines: list[tuple[float, str]]) -> StreamTimer:
    timer = StreamTimer(started=10.0)
    for now, line in lines:
        if timer.feed(line, now):
            break
    return timer


def test_completion_stream_ttft_gaps_and_tokens() -> None:
    timer = _feed(
        [
            (10.5, _completion("")),  # a byte that does not complete a character yet
            (10.6, ""),
            (10.7, _completion("Hé")),
            (10.75, _completion(" there")),
            (10.9, _completion("!")),
            (11.0, "data: [DONE]"),
        ]
    )
    result = timer.finish(11.1)
    assert result.ok and result.done
    assert result.ttft == pytest.approx(0.7)
    assert result.gaps == pytest.approx([0.05, 0.15])
    assert result.tokens == 4 and result.text == "Hé there!"
    assert result.e2e == pytest.approx(1.1)


def test_chat_stream_skips_the_role_chunk_and_the_finish_chunk() -> None:
    finish = _data({"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]})
    usage = _data({"choices": [], "usage": {"completion_tokens": 2}})
    timer = _feed(
        [
            (10.1, _chat({"role": "assistant", "content": ""})),
            (10.3, _chat({"content": "a"})),
            (10.4, _chat({"content": "b"})),
            (10.5, finish),
            (10.5, usage),
            (10.6, "data: [DONE]"),
        ]
    )
    result = timer.finish(10.6)
    assert result.ok and result.tokens == 2 and result.text == "ab"
    assert result.ttft == pytest.approx(0.3) and result.gaps == pytest.approx([0.1])


def test_a_finish_reason_completes_a_stream_without_done() -> None:
    """transformers serve: the closing chunk (completions: text '') is no token; no [DONE]."""
    closing = {"index": 0, "text": "", "finish_reason": "stop"}
    timer = _feed(
        [
            (10.2, _completion("a")),
            (10.3, _data({"choices": [{"index": 0, "text": "b", "finish_reason": None}]})),
            (10.4, _data({"choices": [closing], "usage": {"completion_tokens": 2}})),
        ]
    )
    result = timer.finish(10.5)
    assert result.ok and result.complete and not result.done
    assert result.finish_reason == "stop" and result.tokens == 2 and result.text == "ab"
    assert result.gaps == pytest.approx([0.1]) and result.e2e == pytest.approx(0.5)


def test_finish_reason_of_a_chunk() -> None:
    assert chunk_finish_reason({"choices": [{"delta": {}, "finish_reason": "length"}]}) == "length"
    assert chunk_finish_reason({"choices": [{"text": "x", "finish_reason": None}]}) is None
    assert chunk_finish_reason({"choices": [{"text": "x"}]}) is None
    assert chunk_finish_reason({"choices": [], "usage": {}}) is None
    # a last token may carry the finish_reason with it: it is still a token
    assert chunk_content({"choices": [{"text": "z", "finish_reason": "length"}]}) == "z"


def test_role_chunk_with_content_counts() -> None:
    assert chunk_content({"choices": [{"delta": {"role": "assistant", "content": "Hi"}}]}) == "Hi"
    assert chunk_content({"choices": [{"delta": {"role": "assistant"}}]}) is None


@pytest.mark.parametrize(
    ("lines", "error"),
    [
        (
            [_completion("ab"), _completion("")],
            "stream truncated: it ended without data: [DONE] or a finish_reason after 2 content"
            " chunks (2 characters; 2 chunks in all)",
        ),
        ([_completion(""), "data: [DONE]"], "stream finished without content"),
        (["data: {not json"], "malformed chunk"),
        ([_data({"error": {"message": "boom"}})], 'error chunk: {"message": "boom"}'),
        ([_data({"object": "x"})], "chunk has no choices list"),
    ],
)
def test_broken_streams_are_errors(lines: list[str], error: str) -> None:
    timer = StreamTimer(0.0)
    try:
        for line in lines:
            timer.feed(line, 1.0)
        result = timer.finish(2.0)
    except Exception as exc:  # the client turns parse errors into a failed result
        result = timer.finish(2.0, str(exc))
    assert not result.ok
    assert result.error is not None and result.error.startswith(error)


def test_request_shapes_and_prompt() -> None:
    path, body = completion_request("completions", "m", "hi", 3)
    assert path == "/v1/completions" and body["prompt"] == "hi" and body["stream"] is True
    path, body = completion_request("chat", "m", "hi", 3)
    assert path == "/v1/chat/completions" and body["messages"][0]["content"] == "hi"
    with pytest.raises(ValueError):
        completion_request("embeddings", "m", "hi", 3)
    prompt = make_prompt(50, salt="abc123")
    assert len(prompt) == 50 and prompt.startswith("abc123 ")
    assert make_prompt(50, "x") != make_prompt(50, "y")


def test_wake_header() -> None:
    assert parse_wake_header("restore; 0.842") == ("restore", 0.842)
    assert parse_wake_header("boot; 7.1") == ("boot", 7.1)
    assert parse_wake_header(None) is None and parse_wake_header("garbage") is None


def test_gates_parse_and_judge() -> None:
    gates = standard_gates(0.5, 2.0, 0.01) + parse_gates("TTFT-wake:p95=5, ITL:max=0.2")
    assert [str(g) for g in gates] == [
        "TTFT p50 <= 0.5 s",
        "TTFT p95 <= 2 s",
        "E2E fail_ratio <= 0.01",
        "TTFT-wake p95 <= 5 s",
        "ITL max <= 0.2 s",
    ]
    ttft = Summary()
    ttft.add({100: 90, 3000: 10}, 0)  # ms -> count
    e2e = Summary({500: 99, 900: 1}, failures=1)
    verdicts = evaluate(gates, {"TTFT": ttft, "E2E": e2e, "ITL": Summary({250: 1})})
    assert [v.passed for v in verdicts] == [True, False, True, False, False]
    assert str(verdicts[1]) == "SLO gate FAILED: TTFT p95 <= 2 s: measured 3 s, n=100"
    assert str(verdicts[2]) == "SLO gate passed: E2E fail_ratio <= 0.01 (measured 0.01, n=100)"
    assert str(verdicts[3]) == "SLO gate FAILED: TTFT-wake p95 <= 5 s: no TTFT-wake samples"
    assert ttft.value("avg") == pytest.approx(0.39)


@pytest.mark.parametrize(
    "spec", ["TTFT", "TTFT:p95", ":p95=1", "TTFT:p95=x", "TTFT:p42=1", "E2E:fail_ratio=2"]
)
def test_malformed_gates_are_refused(spec: str) -> None:
    with pytest.raises(ValueError):
        parse_gates(spec)


def test_gate_limits_are_checked() -> None:
    with pytest.raises(ValueError):
        Gate("TTFT", "p50", -1)


def test_zipf_prefers_the_first_models() -> None:
    picker = ZipfPicker(parse_models("a, b,c,d"), s=1.0, rng=random.Random(7))
    probabilities = picker.probabilities()
    assert probabilities["a"] == pytest.approx(1 / (1 + 1 / 2 + 1 / 3 + 1 / 4))
    counts = Counter(picker.pick() for _ in range(20_000))
    assert counts["a"] > counts["b"] > counts["c"] > counts["d"] > 0
    assert counts["a"] / 20_000 == pytest.approx(probabilities["a"], abs=0.02)
    assert Counter(ZipfPicker(["x", "y"], s=0).pick() for _ in range(2000))["y"] > 800
    with pytest.raises(ValueError):
        parse_models(" , ")


def test_samples_round_trip(tmp_path: Path) -> None:
    samples = [
        Sample("TTFT", "m", 0.123456, 8, True),
        Sample("E2E", "m", 1.5, 0, False, "HTTP 503"),
    ]
    write_samples(tmp_path / "s" / "samples.csv", samples)
    assert read_samples(tmp_path / "s" / "samples.csv") == samples


def test_report_table_ratios_and_csv(tmp_path: Path) -> None:
    rows = [
        Row("warm", "criu", "locust", [0.05, 0.04, 0.06]),
        Row("wake (restore)", "criu", "httpx", [1.0, 0.8], 290_000_000, [0.7, 0.9]),
        Row("cold boot", "restart", "httpx", [8.0], server_wake=[7.9]),
    ]
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5 and percentile([], 0.5) is None
    assert ratios(rows)["cold/wake"] == pytest.approx(8.0 / 0.9)
    assert ratios(rows)["wake/warm"] == pytest.approx(0.9 / 0.05)
    machine = Machine(2, 2, "Test CPU", "Linux", "tiny")
    table = render_table(rows, machine)
    assert "wake (restore)  criu" in table and "290.0 MB" in table
    assert "TTFT p50 ratios: cold/wake = 8.9x, wake/warm = 18.0x" in table
    assert "machine: 2 CPUs (2 usable), Test CPU" in table
    write_csv(rows, machine, tmp_path / "bench.csv")
    with (tmp_path / "bench.csv").open(newline="") as f:
        written = list(csv.DictReader(f))
    assert [r["scenario"] for r in written] == ["warm", "wake (restore)", "cold boot"]
    assert written[1]["ttft_p50_s"] == "0.900000" and written[1]["snapshot_bytes"] == "290000000"
