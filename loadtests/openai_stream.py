"""One streamed OpenAI-compatible completion and its timing: TTFT, inter-token gaps, E2E.

A pure client: it speaks the OpenAI streaming shape (server-sent events ``data: {...}``) to
Dormant or to a model server directly. Content is ``choices[0].text`` (completions) or
``choices[0].delta.content`` (chat).

A stream is complete when it says so, either way servers end one: ``data: [DONE]`` (OpenAI,
vLLM, llama.cpp, Dormant's reference server) or a chunk whose ``finish_reason`` is set,
followed by the end of the response (Hugging Face ``transformers serve``; the OpenAI SDK
accepts both). A response that ends with neither was cut short: an error.

Counting: every chunk that carries a content string is one token (servers send one chunk
per generated token; a byte-level token can decode to '' while a character is incomplete).
A chat chunk that announces the role, a chunk with a ``finish_reason`` and no content, and
usage chunks are not tokens. TTFT is the time to the first *non-empty* content; ITL samples
are the gaps between consecutive token chunks from then on.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx

__all__ = [
    "WAKE_HEADER",
    "StreamResult",
    "StreamTimer",
    "chunk_content",
    "chunk_finish_reason",
    "completion_request",
    "make_prompt",
    "parse_wake_header",
    "stream_completion",
]

WAKE_HEADER = "x-dormant-wake"
WAKE_COMMENT = ": dormant-wake "
"""A stream that waited for a wake with keep-alive comments (``wake_keepalive``, on by
default) had sent its headers before the wake: the wake comes as this SSE comment."""
_DONE = object()
_FILLER = "The quick brown fox jumps over the lazy dog while the activator keeps it warm. "


@dataclass
class StreamResult:
    """What one streamed request did. Times are seconds from just before the request was sent."""

    status: int = 0
    ttft: float | None = None
    gaps: list[float] = field(default_factory=list)
    e2e: float = 0.0
    tokens: int = 0
    chunks: int = 0
    text: str = ""
    done: bool = False
    finish_reason: str | None = None
    wake: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def complete(self) -> bool:
        """The server said the answer is whole: ``data: [DONE]`` or a ``finish_reason``."""
        return self.done or self.finish_reason is not None


class StreamError(Exception):
    """The stream carried something that is not a well-formed OpenAI chunk."""


def _first_choice(payload: Any) -> dict[str, Any] | None:
    """``choices[0]`` of a parsed chunk; None for a chunk without choices (usage)."""
    if not isinstance(payload, dict):
        raise StreamError(f"chunk is not a JSON object: {payload!r:.120}")
    if "error" in payload:
        raise StreamError(f"error chunk: {json.dumps(payload['error'])[:300]}")
    choices = payload.get("choices")
    if not isinstance(choices, list):
        raise StreamError(f"chunk has no choices list: {json.dumps(payload)[:200]}")
    if not choices:
        return None  # e.g. the usage chunk of stream_options.include_usage
    choice = choices[0]
    if not isinstance(choice, dict):
        raise StreamError(f"choice is not an object: {choice!r:.120}")
    return choice


def chunk_content(payload: Any) -> str | None:
    """The content of one parsed chunk; None when it carries no token (role announcement,
    finish or usage chunk)."""
    choice = _first_choice(payload)
    if choice is None:
        return None
    text = choice.get("text")
    delta = choice.get("delta")
    if text is None and isinstance(delta, dict):
        text = delta.get("content")
        if "role" in delta and not text:
            return None  # the opening chunk that only announces the assistant role
    if not isinstance(text, str):
        return None
    if not text and choice.get("finish_reason") is not None:
        return None  # the closing chunk: it says why generation stopped and carries no token
    return text


def chunk_finish_reason(payload: Any) -> str | None:
    """``choices[0].finish_reason`` of one parsed chunk (``"stop"``, ``"length"``, ...);
    None while generation goes on."""
    choice = _first_choice(payload)
    reason = None if choice is None else choice.get("finish_reason")
    return None if reason is None else str(reason)


def _parse_line(line: str) -> object | dict[str, Any] | None:
    """``_DONE`` for ``data: [DONE]``, the parsed chunk of another ``data:`` line, else None."""
    if not line.startswith("data:"):
        return None  # blank separators, comments (":"), event:/id:/retry: fields
    data = line[5:].strip()
    if data == "[DONE]":
        return _DONE
    try:
        payload = json.loads(data)
    except json.JSONDecodeError as exc:
        raise StreamError(f"malformed chunk ({exc.msg}): {data[:120]!r}") from None
    if not isinstance(payload, dict):
        raise StreamError(f"chunk is not a JSON object: {payload!r:.120}")
    return payload


class StreamTimer:
    """Feeds SSE lines with their arrival times and keeps TTFT and inter-token gaps."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.result = StreamResult()
        self._last: float | None = None
        self._pieces: list[str] = []

    def feed(self, line: str, now: float) -> bool:
        """Account for one line; True once ``data: [DONE]`` arrived (nothing follows it).

        A ``finish_reason`` completes the answer too, but the caller reads on to the end of
        the response (a usage chunk or ``[DONE]`` may follow)."""
        if line.startswith(WAKE_COMMENT):  # a wake announced in a waking stream's body
            self.result.wake = line[len(WAKE_COMMENT) :].strip()
            return False
        chunk = _parse_line(line)
        if chunk is _DONE:
            self.result.done = True
            return True
        if not isinstance(chunk, dict):
            return False
        self.result.chunks += 1
        content = chunk_content(chunk)
        reason = chunk_finish_reason(chunk)
        if reason is not None:
            self.result.finish_reason = reason
        if content is None:
            return False
        self.result.tokens += 1
        self._pieces.append(content)
        if self._last is not None:
            self.result.gaps.append(now - self._last)
            self._last = now
        elif content:
            self.result.ttft = now - self.started
            self._last = now
        return False

    def finish(self, now: float, error: str | None = None) -> StreamResult:
        """Close the account at the end of the response. A stream that ended with neither
        ``[DONE]`` nor a ``finish_reason`` was cut short, and one without content is
        empty: both are errors."""
        result = self.result
        result.e2e = now - self.started
        result.text = "".join(self._pieces)
        if error is None and not result.complete:
            error = (
                "stream truncated: it ended without data: [DONE] or a finish_reason after "
                f"{result.tokens} content chunks ({len(result.text)} characters; "
                f"{result.chunks} chunks in all)"
            )
        if error is None and result.ttft is None:
            error = f"stream finished without content ({result.tokens} empty content chunks)"
        result.error = error
        return result


def completion_request(
    api: str, model: str, prompt: str, max_tokens: int
) -> tuple[str, dict[str, Any]]:
    """The path and JSON body of a streamed request; ``api`` is 'completions' or 'chat'."""
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": max_tokens,
        "stream": True,
        "temperature": 0,
    }
    if api == "completions":
        return "/v1/completions", {**body, "prompt": prompt}
    if api == "chat":
        return "/v1/chat/completions", {**body, "messages": [{"role": "user", "content": prompt}]}
    raise ValueError(f"api must be 'completions' or 'chat' (got {api!r})")


def make_prompt(length: int, salt: str = "") -> str:
    """A prompt of exactly ``length`` characters that starts with ``salt``.

    A distinct salt per request defeats prefix caches, so TTFT includes the prefill.
    Byte-level tokenizers (the reference server's) see one token per character.
    """
    length = max(1, length)
    head = f"{salt} " if salt else ""
    body = head + _FILLER * (length // len(_FILLER) + 1)
    return body[:length]


def parse_wake_header(value: str | None) -> tuple[str, float] | None:
    """``'restore; 0.842'`` -> ``('restore', 0.842)``; None when absent or unreadable."""
    if not value:
        return None
    path, _, seconds = value.partition(";")
    try:
        return path.strip(), float(seconds)
    except ValueError:
        return None


def stream_completion(
    client: httpx.Client,
    path: str,
    body: dict[str, Any],
    headers: dict[str, str] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> StreamResult:
    """POST ``body`` to ``path`` with ``stream: true`` and time the answer. Never raises for
    HTTP or stream problems: they come back as ``StreamResult.error``."""
    started = clock()
    timer = StreamTimer(started)
    try:
        with client.stream("POST", path, json=body, headers=headers) as response:
            timer.result.status = response.status_code
            timer.result.wake = response.headers.get(WAKE_HEADER)
            if response.status_code != 200:
                detail = response.read().decode(errors="replace")[:300]
                return timer.finish(clock(), f"HTTP {response.status_code}: {detail}")
            lines: Iterable[str] = response.iter_lines()
            for line in lines:
                if timer.feed(line, clock()):
                    break
    except StreamError as exc:
        return timer.finish(clock(), str(exc))
    except httpx.HTTPError as exc:
        return timer.finish(clock(), f"{type(exc).__name__}: {exc}")
    return timer.finish(clock())
