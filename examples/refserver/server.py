"""OpenAI-compatible HTTP API of the reference LLM server, with vLLM's sleep API.

`create_app` serves /health, /v1/models, /v1/completions and /v1/chat/completions over an
`Engine`. Each generation step runs in a worker thread so the event loop stays responsive, and
an async lock lets one request use the model at a time (others queue in arrival order).
Streaming responses are server-sent events, one chunk per token as it is produced; a client
that disconnects mid-stream stops its generation.

vLLM's sleep routes, over a `Residency`: `POST /sleep?level=1|2` (default 1), `POST /wake_up`
(optionally `?tags=weights` and/or `?tags=kv_cache`), `GET /is_sleeping` -> {"is_sleeping": bool};
both POSTs answer 200 with an empty body once done. A sleep waits for the requests already
admitted (running or queued) to finish, like vLLM's `mode=wait`; from the moment it is asked
for, new inference requests get 503 with an OpenAI-style error (code `model_sleeping`) until
every tag is awake. /health, /v1/models and /is_sleeping keep answering. `GET /memory` (the
reference server's own) reports bytes on the device and parked in host RAM and whether a sleep
is waiting for admitted requests; `GET /memory?verify=true` also checks the held memory's bytes.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from examples.refserver.engine import Engine, Generation
from examples.refserver.residency import TAGS, Residency, WakeFailed
from examples.refserver.tokenizer import StreamDecoder, encode

__all__ = ["CACHED_TOKENS_HEADER", "MAX_TOKENS_LIMIT", "RequestError", "chat_prompt", "create_app"]

MAX_TOKENS_LIMIT = 4096
CACHED_TOKENS_HEADER = "X-Refserver-Cached-Tokens"
_REQUIRED: Any = object()  # `_field` default of a field that must be present


class RequestError(Exception):
    """An error answered as an OpenAI-style JSON error (`kind` is its `type`)."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str,
        param: str | None = None,
        kind: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.kind = kind


def _error_response(
    status: int,
    message: str,
    code: str,
    param: str | None = None,
    kind: str = "invalid_request_error",
) -> Response:
    error = {"message": message, "type": kind, "param": param, "code": code}
    return JSONResponse({"error": error}, status_code=status)


def _sleeping() -> RequestError:
    return RequestError(
        503,
        "the model is sleeping (POST /sleep was called): POST /wake_up, then retry",
        "model_sleeping",
        kind="service_unavailable_error",
    )


def _field(body: dict[str, Any], name: str, types: tuple[type, ...], default: Any) -> Any:
    """Return body[name] (default when absent or null), checking its JSON type."""
    value = body.get(name)
    if value is None:
        if default is _REQUIRED:
            raise RequestError(400, f"missing required field '{name}'", "missing_field", name)
        return default
    if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
        names = "/".join(t.__name__ for t in types)
        raise RequestError(400, f"field '{name}' must be of type {names}", "invalid_type", name)
    return value


def chat_prompt(messages: Any) -> str:
    """Render chat messages with the server's fixed template, ending with the assistant tag."""
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "'messages' must be a non-empty array", "invalid_value", "messages")
    parts = []
    for message in messages:
        if not isinstance(message, dict):
            raise RequestError(400, "each message must be an object", "invalid_type", "messages")
        role = _field(message, "role", (str,), _REQUIRED)
        content = _field(message, "content", (str, list), _REQUIRED)
        if isinstance(content, list):
            if not all(isinstance(p, dict) and isinstance(p.get("text"), str) for p in content):
                raise RequestError(
                    400, "content parts must be text parts", "invalid_type", "messages"
                )
            content = "".join(p["text"] for p in content)
        parts.append(f"<|{role}|>\n{content}\n")
    return "".join(parts) + "<|assistant|>\n"


@dataclass(frozen=True)
class _Options:
    max_tokens: int
    temperature: float
    seed: int | None
    stream: bool
    include_usage: bool


def _options(body: dict[str, Any], max_tokens_field: str) -> _Options:
    max_tokens = _field(body, max_tokens_field, (int,), 16)
    if not 1 <= max_tokens <= MAX_TOKENS_LIMIT:
        message = f"{max_tokens_field} must be in 1..{MAX_TOKENS_LIMIT}"
        raise RequestError(400, message, "invalid_value", max_tokens_field)
    temperature = float(_field(body, "temperature", (int, float), 0.0))
    if not 0.0 <= temperature <= 2.0:
        raise RequestError(400, "temperature must be in 0..2", "invalid_value", "temperature")
    if _field(body, "n", (int,), 1) != 1:
        raise RequestError(400, "only n=1 is supported", "invalid_value", "n")
    stream_options = _field(body, "stream_options", (dict,), {})
    return _Options(
        max_tokens=max_tokens,
        temperature=temperature,
        seed=_field(body, "seed", (int,), None),
        stream=_field(body, "stream", (bool,), False),
        include_usage=_field(stream_options, "include_usage", (bool,), False),
    )


class _CompletionFormat:
    """Response shapes of /v1/completions."""

    object = "text_completion"
    chunk_object = "text_completion"
    id_prefix = "cmpl"

    def choice(self, text: str) -> dict[str, Any]:
        return {"index": 0, "text": text, "logprobs": None, "finish_reason": "length"}

    def opening(self) -> list[dict[str, Any]]:
        return []

    def piece(self, text: str, last: bool) -> dict[str, Any]:
        finish = "length" if last else None
        return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}

    def closing(self) -> list[dict[str, Any]]:
        return []


class _ChatFormat(_CompletionFormat):
    """Response shapes of /v1/chat/completions."""

    object = "chat.completion"
    chunk_object = "chat.completion.chunk"
    id_prefix = "chatcmpl"

    def choice(self, text: str) -> dict[str, Any]:
        message = {"role": "assistant", "content": text}
        return {"index": 0, "message": message, "logprobs": None, "finish_reason": "length"}

    def opening(self) -> list[dict[str, Any]]:
        delta = {"role": "assistant", "content": ""}
        return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}]

    def piece(self, text: str, last: bool) -> dict[str, Any]:
        return {"index": 0, "delta": {"content": text}, "logprobs": None, "finish_reason": None}

    def closing(self) -> list[dict[str, Any]]:
        return [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}]


class _ClosingStreamingResponse(StreamingResponse):
    """Closes its body generator, and the token generator it reads, when the response ends, even
    when the client went away or the body never started.

    Starlette abandons the generator on disconnect; closing it releases the model lock at once.
    """

    body_iterator: AsyncGenerator[str, None]

    def __init__(
        self,
        content: AsyncGenerator[str, None],
        steps: AsyncGenerator[Any, None],
        **kwargs: Any,
    ) -> None:
        super().__init__(content, **kwargs)
        self.steps = steps

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                await self.body_iterator.aclose()
            finally:
                await self.steps.aclose()


def _sse(payload: dict[str, Any] | str) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n"


def _usage(generation: Generation) -> dict[str, Any]:
    return {
        "prompt_tokens": generation.prompt_tokens,
        "completion_tokens": generation.max_tokens,
        "total_tokens": generation.prompt_tokens + generation.max_tokens,
        "prompt_tokens_details": {"cached_tokens": generation.cached_tokens},
    }


def _sleep_level(request: Request) -> int:
    level = request.query_params.get("level", "1")
    if level not in ("1", "2"):
        raise RequestError(400, f"level must be 1 or 2, not {level!r}", "invalid_value", "level")
    mode = request.query_params.get("mode", "wait")
    if mode != "wait":
        raise RequestError(
            400,
            f"mode {mode!r} is not supported: the reference server always finishes the requests"
            " it admitted, then sleeps (vLLM's mode=wait)",
            "invalid_value",
            "mode",
        )
    return int(level)


def _wake_tags(request: Request) -> list[str] | None:
    tags = request.query_params.getlist("tags")
    unknown = [t for t in tags if t not in TAGS]
    if unknown:
        message = f"unknown tag(s) {unknown}; tags are {list(TAGS)}"
        raise RequestError(400, message, "invalid_value", "tags")
    return tags or None


def create_app(engine: Engine, model_name: str, residency: Residency) -> FastAPI:
    """Return the FastAPI app serving `engine` under the model name `model_name`; `residency`
    (over the same model and cache) answers the sleep API."""
    app = FastAPI(title="refserver", docs_url=None, redoc_url=None, openapi_url=None)
    # A semaphore, not a Lock: a streamed request takes it in its handler's task and gives it
    # back in the task Starlette streams the body from. Both queue waiters in arrival order.
    lock = anyio.Semaphore(1)
    started = int(time.time())
    sleeps_pending = 0  # sleeps asked for and waiting for admitted requests to finish

    @app.exception_handler(RequestError)
    async def _request_error(_: Request, exc: RequestError) -> Response:
        return _error_response(exc.status, exc.message, exc.code, exc.param, exc.kind)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> Response:
        return _error_response(exc.status_code, str(exc.detail), "http_error")

    async def read_body(request: Request) -> dict[str, Any]:
        try:
            body = json.loads(await request.body())
        except ValueError as exc:
            raise RequestError(
                400, f"request body is not valid JSON: {exc}", "invalid_json"
            ) from exc
        if not isinstance(body, dict):
            raise RequestError(400, "request body must be a JSON object", "invalid_json")
        model = _field(body, "model", (str,), _REQUIRED)
        if model != model_name:
            raise RequestError(
                404, f"The model '{model}' does not exist", "model_not_found", "model"
            )
        return body

    def start(prompt: str, options: _Options) -> Generation:
        if sleeps_pending or residency.is_sleeping:
            raise _sleeping()
        ids = encode(prompt)
        if not ids:
            raise RequestError(400, "prompt must not be empty", "invalid_value", "prompt")
        if len(ids) + options.max_tokens > engine.n_positions:
            raise RequestError(
                400,
                f"{len(ids)} prompt tokens + {options.max_tokens} max_tokens exceed the model's"
                f" context of {engine.n_positions} tokens",
                "context_length_exceeded",
                "max_tokens",
            )
        return engine.start(ids, options.max_tokens, options.temperature, options.seed)

    async def tokens(generation: Generation) -> AsyncGenerator[tuple[int, bool], None]:
        """Yield (token id, is last) as steps complete in a worker thread, under the lock."""
        async with lock:
            if residency.is_sleeping:  # admitted after a sleep took its place in the queue
                raise _sleeping()
            while not generation.done:
                token = await anyio.to_thread.run_sync(generation.step)
                yield token, generation.done

    async def respond(
        generation: Generation, options: _Options, fmt: _CompletionFormat
    ) -> Response:
        ident, created = f"{fmt.id_prefix}-{uuid.uuid4().hex}", int(time.time())

        def envelope(obj: str, **fields: Any) -> dict[str, Any]:
            return {"id": ident, "object": obj, "created": created, "model": model_name, **fields}

        headers = {CACHED_TOKENS_HEADER: str(generation.cached_tokens)}
        decoder = StreamDecoder()
        # The first token is taken here, so the request holds its place in the model's queue
        # from admission on (a sleep asked for later waits for it) and an error is still a
        # plain HTTP error rather than a broken stream.
        steps = tokens(generation)
        try:
            first = await anext(steps)
        except BaseException:
            await steps.aclose()
            raise
        if not options.stream:
            text = [decoder.feed(first[0], final=first[1])]
            async with aclosing(steps):
                async for token, last in steps:
                    text.append(decoder.feed(token, final=last))
            choices = [fmt.choice("".join(text))]
            body = envelope(fmt.object, choices=choices, usage=_usage(generation))
            return JSONResponse(body, headers=headers)

        def chunk(choices: list[dict[str, Any]]) -> str:
            return _sse(envelope(fmt.chunk_object, choices=choices))

        async def events() -> AsyncGenerator[str, None]:
            for choice in fmt.opening():
                yield chunk([choice])
            token, last = first
            yield chunk([fmt.piece(decoder.feed(token, final=last), last)])
            async for token, last in steps:
                yield chunk([fmt.piece(decoder.feed(token, final=last), last)])
            for choice in fmt.closing():
                yield chunk([choice])
            if options.include_usage:
                yield _sse(envelope(fmt.chunk_object, choices=[], usage=_usage(generation)))
            yield _sse("[DONE]")

        return _ClosingStreamingResponse(
            events(), steps, media_type="text/event-stream", headers=headers
        )

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/sleep")
    async def sleep(request: Request) -> Response:
        nonlocal sleeps_pending
        level = _sleep_level(request)
        sleeps_pending += 1
        try:
            async with lock:  # after the admitted requests, and after a wake asked for earlier
                await anyio.to_thread.run_sync(residency.sleep, level)
        except (RuntimeError, MemoryError) as exc:  # host RAM for the parked copies
            message = f"could not sleep, the model stays awake: {exc}"
            raise RequestError(500, message, "sleep_failed", kind="server_error") from exc
        finally:
            sleeps_pending -= 1
        return Response(status_code=200)

    @app.post("/wake_up")
    async def wake_up(request: Request) -> Response:
        tags = _wake_tags(request)
        async with lock:
            try:
                await anyio.to_thread.run_sync(residency.wake, tags)
            except WakeFailed as exc:
                raise RequestError(
                    503, str(exc), "device_memory_exhausted", kind="service_unavailable_error"
                ) from exc
        return Response(status_code=200)

    @app.get("/is_sleeping")
    async def is_sleeping() -> dict[str, bool]:
        return {"is_sleeping": residency.is_sleeping}

    @app.get("/memory")
    async def memory(verify: bool = False) -> dict[str, Any]:
        report = await anyio.to_thread.run_sync(residency.memory)
        report["sleep_pending"] = sleeps_pending > 0
        if verify:
            report["held_intact"] = await anyio.to_thread.run_sync(residency.held_intact)
        return report

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        card = {"id": model_name, "object": "model", "created": started, "owned_by": "refserver"}
        return {"object": "list", "data": [card]}

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        body = await read_body(request)
        options = _options(body, "max_tokens")
        generation = start(_field(body, "prompt", (str,), _REQUIRED), options)
        return await respond(generation, options, _CompletionFormat())

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        body = await read_body(request)
        field = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
        options = _options(body, field)
        generation = start(chat_prompt(body.get("messages")), options)
        return await respond(generation, options, _ChatFormat())

    return app
