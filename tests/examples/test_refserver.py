"""The reference LLM server as a real process: OpenAI endpoints, streaming, prefix cache, errors."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from examples.refserver import Engine, PrefixKVCache, decode, encode, load_model
from tests.conftest import ROOT, free_port

pytestmark = pytest.mark.timeout(60)

MODEL = "tiny-test"


class Server:
    def __init__(self, url: str, state_dir: Path, log: Path) -> None:
        self.url, self.state_dir, self.log = url, state_dir, log


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("refserver")
    port, log = free_port(), tmp / "server.log"
    cmd = [sys.executable, "-m", "examples.refserver", "--size", "tiny", "--model", MODEL]
    cmd += ["--port", str(port), "--state-dir", str(tmp / "state")]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 45
        while True:
            if proc.poll() is not None:
                pytest.fail(f"refserver exited with {proc.returncode}:\n{log.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"refserver not healthy in time:\n{log.read_text()}")
            try:
                if httpx.get(f"{url}/health", timeout=1).json() == {"status": "ok"}:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        yield Server(url, tmp / "state", log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def _events(response: httpx.Response) -> Iterator[tuple[float, Any]]:
    """(arrival time, parsed payload or "[DONE]") for each SSE event of a streamed response."""
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line.removeprefix("data: ")
            yield time.monotonic(), data if data == "[DONE]" else json.loads(data)


def test_ready_line_health_and_models(server: Server, client: httpx.Client) -> None:
    assert "refserver: ready model=tiny-test size=tiny port=" in server.log.read_text()
    assert client.get("/health").json() == {"status": "ok"}
    models = client.get("/v1/models").json()
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == [MODEL]


def test_completion_returns_max_tokens_of_printable_text(client: httpx.Client) -> None:
    prompt = "Non-stream completion test: "
    r = client.post("/v1/completions", json={"model": MODEL, "prompt": prompt, "max_tokens": 12})
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "text_completion" and body["model"] == MODEL
    assert body["id"].startswith("cmpl-") and isinstance(body["created"], int)
    [choice] = body["choices"]
    assert choice["finish_reason"] == "length" and choice["index"] == 0
    assert len(choice["text"]) == 12 and choice["text"].isprintable()
    assert body["usage"] == {
        "prompt_tokens": len(prompt),
        "completion_tokens": 12,
        "total_tokens": len(prompt) + 12,
        "prompt_tokens_details": {"cached_tokens": 0},
    }
    assert r.headers["x-refserver-cached-tokens"] == "0"


def test_greedy_is_deterministic_and_seeded_sampling_reproducible(client: httpx.Client) -> None:
    def text(**kw: object) -> str:
        r = client.post("/v1/completions", json={"model": MODEL, "prompt": "Determinism", **kw})
        return r.json()["choices"][0]["text"]

    assert text(max_tokens=20) == text(max_tokens=20)
    assert text(max_tokens=20, temperature=1.0, seed=11) == text(
        max_tokens=20, temperature=1.0, seed=11
    )
    # The default is 16 tokens.
    assert len(text()) == 16


def test_completion_stream_is_incremental_then_usage_then_done(client: httpx.Client) -> None:
    n = 300
    request = {"model": MODEL, "prompt": "Stream me", "max_tokens": n, "stream": True}
    request["stream_options"] = {"include_usage": True}
    began = time.monotonic()
    with client.stream("POST", "/v1/completions", json=request) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = list(_events(r))
    *chunks, (_, usage_chunk), (_, done) = events
    assert done == "[DONE]"
    assert len(chunks) == n
    texts = [c["choices"][0]["text"] for _, c in chunks]
    assert all(len(t) == 1 and t.isprintable() for t in texts)
    finishes = [c["choices"][0]["finish_reason"] for _, c in chunks]
    assert finishes == [None] * (n - 1) + ["length"]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["completion_tokens"] == n
    # Tokens arrive as they are produced: the first long before the last.
    first, last = chunks[0][0] - began, chunks[-1][0] - began
    assert first < last / 3, (first, last)


def test_chat_completion_stream_and_non_stream(client: httpx.Client) -> None:
    messages = [
        {"role": "system", "content": "You are a test."},
        {"role": "user", "content": [{"type": "text", "text": "Hello there"}]},
    ]
    request = {"model": MODEL, "messages": messages, "max_tokens": 8}
    body = client.post("/v1/chat/completions", json=request).json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    message = body["choices"][0]["message"]
    assert message["role"] == "assistant" and len(message["content"]) == 8
    assert body["choices"][0]["finish_reason"] == "length"

    with client.stream("POST", "/v1/chat/completions", json={**request, "stream": True}) as r:
        events = [payload for _, payload in _events(r)]
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[0] == {"role": "assistant", "content": ""}
    content = [d["content"] for d in deltas[1:-1]]
    assert len(content) == 8 and "".join(content) == message["content"]
    assert deltas[-1] == {} and chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_prefix_cache_hits_on_an_extended_prompt_with_unchanged_output(
    server: Server, client: httpx.Client
) -> None:
    prompt = "".join(chr(32 + (i * 7) % 95) for i in range(200))
    longer = prompt + " extension" * 5  # 50 more characters

    def complete(text: str) -> httpx.Response:
        return client.post(
            "/v1/completions", json={"model": MODEL, "prompt": text, "max_tokens": 24}
        )

    first, second = complete(prompt), complete(longer)
    assert first.json()["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    cached = second.json()["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached >= 200
    assert second.headers["x-refserver-cached-tokens"] == str(cached)

    # The same weights, in-process and without any cache, give the same greedy text.
    engine = Engine(load_model(server.state_dir, "tiny", seed=0), PrefixKVCache(max_entries=0))
    generation = engine.start(encode(longer), 24)
    while not generation.done:
        generation.step()
    assert second.json()["choices"][0]["text"] == decode(generation.tokens)


def test_health_stays_responsive_while_concurrent_requests_queue(
    server: Server, client: httpx.Client
) -> None:
    def complete(prompt: str) -> str:
        r = client.post(
            "/v1/completions", json={"model": MODEL, "prompt": prompt, "max_tokens": 400}
        )
        return r.json()["choices"][0]["text"]

    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(complete, f"concurrent {i}") for i in range(2)]
        latencies = []
        with httpx.Client(base_url=server.url, timeout=5) as other:
            while not all(f.done() for f in futures):
                began = time.monotonic()
                assert other.get("/health").status_code == 200
                latencies.append(time.monotonic() - began)
                time.sleep(0.02)
        texts = [f.result() for f in futures]
    assert len(latencies) >= 3
    assert max(latencies) < 0.5, latencies
    assert [len(t) for t in texts] == [400, 400]


def test_client_disconnect_stops_a_stream(server: Server, client: httpx.Client) -> None:
    request = {"model": MODEL, "prompt": "disconnect", "max_tokens": 480}
    began = time.monotonic()
    client.post("/v1/completions", json=request)
    full = time.monotonic() - began

    with (
        httpx.Client(base_url=server.url, timeout=30) as own,
        own.stream("POST", "/v1/completions", json={**request, "stream": True}) as r,
    ):
        next(r.iter_lines())
    # Leaving the block without reading the rest closed the connection; the model lock is free.
    began = time.monotonic()
    r = client.post("/v1/completions", json={"model": MODEL, "prompt": "after", "max_tokens": 1})
    assert r.status_code == 200
    assert time.monotonic() - began < full / 2, (time.monotonic() - began, full)


@pytest.mark.parametrize(
    ("path", "payload", "status", "code"),
    [
        ("/v1/completions", b"{not json", 400, "invalid_json"),
        ("/v1/completions", b"[1, 2]", 400, "invalid_json"),
        ("/v1/completions", {"model": "other", "prompt": "x"}, 404, "model_not_found"),
        ("/v1/completions", {"prompt": "x"}, 400, "missing_field"),
        ("/v1/completions", {"model": MODEL}, 400, "missing_field"),
        ("/v1/completions", {"model": MODEL, "prompt": 5}, 400, "invalid_type"),
        ("/v1/completions", {"model": MODEL, "prompt": ""}, 400, "invalid_value"),
        ("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 0}, 400, "invalid_value"),
        (
            "/v1/completions",
            {"model": MODEL, "prompt": "x", "max_tokens": 4097},
            400,
            "invalid_value",
        ),
        (
            "/v1/completions",
            {"model": MODEL, "prompt": "x", "max_tokens": "3"},
            400,
            "invalid_type",
        ),
        ("/v1/completions", {"model": MODEL, "prompt": "x", "stream": "yes"}, 400, "invalid_type"),
        (
            "/v1/completions",
            {"model": MODEL, "prompt": "x" * 500, "max_tokens": 100},
            400,
            "context_length_exceeded",
        ),
        ("/v1/chat/completions", {"model": MODEL, "messages": []}, 400, "invalid_value"),
        (
            "/v1/chat/completions",
            {"model": MODEL, "messages": [{"role": "user"}]},
            400,
            "missing_field",
        ),
        ("/v1/chat/completions", {"model": "other", "messages": []}, 404, "model_not_found"),
    ],
)
def test_bad_requests_get_openai_style_errors(
    client: httpx.Client, path: str, payload: object, status: int, code: str
) -> None:
    if isinstance(payload, bytes):
        r = client.post(path, content=payload, headers={"content-type": "application/json"})
    else:
        r = client.post(path, json=payload)
    assert r.status_code == status
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
