"""An HTTP server that dies like a restored process that lost a CPU feature.

GET /health answers; POST /v1/boot says this process's boot id; POST /v1/work runs an
illegal instruction (ud2), dying with SIGILL as a tile instruction without AMX permission
does, when the file --die-file
holds this process's boot id, else answers. A restored copy keeps the boot id of the
process that was dumped, a cold boot gets a new one: so once the test writes the dumped
process's id into the file, every restore of that snapshot dies on its first request and
a cold boot serves.
"""

import argparse
import ctypes
import mmap
import os
import time
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--die-file", required=True)
args = parser.parse_args()
BOOT_ID = f"{os.getpid()}-{time.time_ns()}"


async def health(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


async def boot(request: Request) -> PlainTextResponse:
    return PlainTextResponse(BOOT_ID)


async def work(request: Request) -> PlainTextResponse:
    try:
        doomed = Path(args.die_file).read_text().strip() == BOOT_ID
    except OSError:
        doomed = False
    if doomed:  # a real fault: kill(getpid(), SIGILL) would not end a namespace's PID 1
        code = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        code.write(b"\x0f\x0b")  # ud2
        address = ctypes.addressof(ctypes.c_char.from_buffer(code))
        ctypes.CFUNCTYPE(None)(address)()
    return PlainTextResponse(f"worked {BOOT_ID}")


app = Starlette(
    routes=[
        Route("/health", health),
        Route("/v1/boot", boot, methods=["POST"]),
        Route("/v1/work", work, methods=["POST"]),
    ]
)
uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")
