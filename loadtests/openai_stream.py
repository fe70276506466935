"""One streamed OpenAI-compatible completion and its timing: TTFT, inter-token gaps, E2E.

A pure client: it speaks the OpenAI streaming shape (server-sent events ``data: {...}``
ending with ``data: [DONE]``) to Dormant or to a model server directly. Content is
``choices[0].text`` (completions) or ``choices[0].delta.content`` (chat).

Counting: every chunk that carries a content string is one token (servers send one chunk
per generated token; a byte-level token can decode to '' while a character is incomplete).
A chat chunk that announces the role, and finish or usage chunks without content, are not
tokens. TTFT is the time to the first *non-empty* content; ITL samples are the gaps between
consecutive token chunks from then on.
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
    "completion_request",
    "make_prompt",
    "parse_wake_header",
    "stream_completion",
]

WAKE_HEADER = "x-dormant-wake"
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
    text: str = ""
    done: bool = False
    wake: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class StreamError(Exception):
    """The stream carried something that is not a well-formed OpenAI chunk."""


def chunk_content(payload: Any) -> str | None:
    """The content of one parsed chunk; None when it carries no token (role announcement,
    finish or usage chunk)."""
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
    text = choice.get("text")
    delta = choice.get("delta")
    if text is None and isinstance(delta, dict):
        text = delta.get("content")
        if "role" in delta and not text:
            return None  # the opening chunk that only announces the assistant role
    return text if isinstance(text, str) else None


def _parse_line(line: str) -> object | str | None:
    """``_DONE`` for ``data: [DONE]``, the content of a token chunk, else None."""
    if not line.startswith("data:"):
        return None  # blank separators, comments (":"), event:/id:/retry: fields
    data = line[5:].strip()
    if data == "[DONE]":
        return _DONE
    try:
        payload = json.loads(data)
    except json.JSONDecodeError as exc:
        raise StreamError(f"malformed chunk ({exc.msg}): {data[:120]!r}") from None
    return chunk_content(payload)


class StreamTimer:
    """Feeds SSE lines with their arrival times and keeps TTFT and inter-token gaps."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.result = StreamResult()
        self._last: float | None = None
        self._pieces: list[str] = []

    def feed(self, line: str, now: float) -> bool:
        """Account for one line; True once ``data: [DONE]`` arrived."""
        content = _parse_line(line)
        if content is _DONE:
            self.result.done = True
            return True
        if not isinstance(content, str):
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
        """Close the account; a stream without [DONE] or without content is an error."""
        result = self.result
        result.e2e = now - self.started
        result.text = "".join(self._pieces)
        if error is None and not result.done:
            error = f"stream ended without data: [DONE] after {result.tokens} content chunks"
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
