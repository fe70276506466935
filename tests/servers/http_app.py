"""A small HTTP + WebSocket upstream for activator tests (Starlette on uvicorn).

GET /health, GET /info (headers seen, boot id, counters), WS /echo (echoes, counts
messages across the process's life), GET /stall (one chunk, then silence),
GET /slow (headers after --slow seconds), GET /big (1 MiB). `--boot-delay S`
sleeps before binding, to make cold boots slow on purpose.
"""

import argparse
import asyncio
import os
import time

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--boot-delay", type=float, default=0.0)
parser.add_argument("--slow", type=float, default=5.0)
parser.add_argument("--ballast", type=int, default=0, help="MiB of random state to hold")
args = parser.parse_args()
ballast = os.urandom(args.ballast << 20)

BOOT_ID = f"{os.getpid()}-{time.time_ns()}"
state = {"messages": 0, "requests": 0}


async def health(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


async def info(request: Request) -> JSONResponse:
    state["requests"] += 1
    return JSONResponse(
        {"boot_id": BOOT_ID, "path": request.url.path, **state, "headers": dict(request.headers)}
    )


async def stall(request: Request) -> StreamingResponse:
    async def body():  # type: ignore[no-untyped-def]
        yield b"first chunk\n"
        await asyncio.sleep(3600)

    return StreamingResponse(body(), media_type="text/plain")


async def slow(request: Request) -> PlainTextResponse:
    await asyncio.sleep(args.slow)
    return PlainTextResponse("slow")


async def big(request: Request) -> PlainTextResponse:
    return PlainTextResponse("x" * (1 << 20))


async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        while True:
            text = await websocket.receive_text()
            state["messages"] += 1
            await websocket.send_text(f"{state['messages']}:{text}")
    except WebSocketDisconnect:
        pass


app = Starlette(
    routes=[
        Route("/health", health),
        Route("/stall", stall),
        Route("/slow", slow),
        Route("/big", big),
        WebSocketRoute("/echo", echo),
        WebSocketRoute("/apps/echo/echo", echo),
        Route("/{path:path}", info, methods=["GET", "POST"]),
    ]
)

if __name__ == "__main__":
    time.sleep(args.boot_delay)
    print(f"http_app serving on {args.port}", flush=True)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", backlog=4096)
