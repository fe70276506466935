"""An OpenAI-compatible streaming upstream whose streams end in each way a server may end one.

``python tests/servers/openai_ends.py --port N`` (FastAPI on uvicorn). ``POST
/v1/completions`` and ``POST /v1/chat/completions`` stream ``max_tokens`` content chunks
(``t0 ``, ``t1 ``, ...); the model name picks the end:

- ``hf-serve``: the way Hugging Face ``transformers serve`` (5.x) streams: chunks serialised
  with ``exclude_none`` (a chat opening chunk with only the role; completion chunks without
  ``finish_reason``), several events sometimes in one write, a closing chunk with the
  ``finish_reason`` and the usage, then the response ends: no ``data: [DONE]``;
- ``openai``: a closing ``finish_reason`` chunk, then ``data: [DONE]``;
- ``done-only``: no ``finish_reason`` anywhere, ``data: [DONE]`` at the end;
- ``truncated``: the content chunks, then the response ends cleanly with neither;
- ``broken``: the content chunks, then the connection is aborted mid-response.

``GET /health`` answers 200. Anything else is FastAPI's 404/422.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

ENDS = ("hf-serve", "openai", "done-only", "truncated", "broken")
app = FastAPI()


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


def _chunk(chat: bool, model: str, choice: dict[str, Any], **extra: Any) -> str:
    return _sse(
        {
            "id": "req-1",
            "choices": [{**choice, "index": 0}],
            "created": int(time.time()),
            "model": model,
            "object": "chat.completion.chunk" if chat else "text_completion",
            **({"system_fingerprint": ""} if chat else {}),
            **extra,
        }
    )


async def _events(chat: bool, model: str, tokens: int) -> AsyncIterator[str]:
    if chat:
        yield _chunk(chat, model, {"delta": {"role": "assistant"}})
    pieces = [f"t{i} " for i in range(tokens)]
    buffered = ""
    for i, piece in enumerate(pieces):
        choice: dict[str, Any] = {"delta": {"content": piece}} if chat else {"text": piece}
        if model in ("openai", "done-only", "truncated", "broken"):
            choice["finish_reason"] = None  # explicit null, as OpenAI sends it
        event = _chunk(chat, model, choice)
        if model == "hf-serve" and i % 3 == 1:
            buffered = event  # sent with the next event in one write, as a queue batch is
            continue
        if model == "hf-serve" and i % 3 == 2:
            event = buffered + event
        yield event
        await asyncio.sleep(0.005)
    if buffered and len(pieces) % 3 == 2:
        yield buffered
    if model in ("truncated", "broken"):
        if model == "broken":
            raise RuntimeError("upstream died mid-stream (on purpose)")
        return
    if model in ("hf-serve", "openai"):
        closing: dict[str, Any] = {"delta": {}} if chat else {"text": ""}
        usage = {"prompt_tokens": 3, "completion_tokens": tokens, "total_tokens": 3 + tokens}
        yield _chunk(chat, model, {**closing, "finish_reason": "length"}, usage=usage)
    if model in ("openai", "done-only"):
        yield "data: [DONE]\n\n"


async def _stream(request: Request, chat: bool) -> StreamingResponse | JSONResponse:
    body = await request.json()
    model = str(body.get("model"))
    if model not in ENDS:
        message = f"model {model!r} not found; this server has {', '.join(ENDS)}"
        return JSONResponse({"error": {"message": message}}, status_code=404)
    tokens = int(body.get("max_tokens") or 4)
    return StreamingResponse(_events(chat, model, tokens), media_type="text/event-stream")


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/v1/completions", response_model=None)
async def completions(request: Request) -> StreamingResponse | JSONResponse:
    return await _stream(request, chat=False)


@app.post("/v1/chat/completions", response_model=None)
async def chat_completions(request: Request) -> StreamingResponse | JSONResponse:
    return await _stream(request, chat=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")
