"""An upstream that streams as fast as the socket takes it, and says how much it wrote.

Raw asyncio, HTTP/1.1 keep-alive:

* ``GET /health``: 200.
* ``GET /fire?mib=N``: ``text/event-stream``, chunked, N MiB of a deterministic byte
  pattern (:func:`pattern`) in 16 KiB chunks, written only when the socket's buffer has room
  (so what it has written is what the path to the client has taken).
* ``GET /written``: JSON ``{"written": bytes of /fire bodies written so far, "open": /fire
  bodies not yet finished, "closed_early": /fire bodies whose connection went first}``.

Usage: firehose.py --port PORT
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json

CHUNK = 16 * 1024
STATS = {"written": 0, "open": 0, "closed_early": 0}


def pattern(index: int) -> bytes:
    """The ``index``-th 16 KiB chunk of every /fire body."""
    seed = hashlib.sha256(b"%d" % index).digest()
    return (seed * (CHUNK // len(seed) + 1))[:CHUNK]


def body_digest(mib: int) -> str:
    """sha256 of a whole ``/fire?mib=N`` body."""
    digest = hashlib.sha256()
    for i in range(mib * 1024 * 1024 // CHUNK):
        digest.update(pattern(i))
    return digest.hexdigest()


async def fire(writer: asyncio.StreamWriter, mib: int) -> None:
    writer.write(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    STATS["open"] += 1
    try:
        for i in range(mib * 1024 * 1024 // CHUNK):
            data = pattern(i)
            writer.write(b"%x\r\n%b\r\n" % (len(data), data))
            await writer.drain()
            STATS["written"] += len(data)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
    except ConnectionError:
        STATS["closed_early"] += 1
        raise
    finally:
        STATS["open"] -= 1


def answer(writer: asyncio.StreamWriter, status: str, body: bytes) -> None:
    writer.write(
        b"HTTP/1.1 %s\r\ncontent-length: %d\r\n\r\n%b" % (status.encode(), len(body), body)
    )


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            target = head.split(b" ", 2)[1].decode()
            path, _, query = target.partition("?")
            if path == "/fire":
                await fire(writer, int(query.partition("mib=")[2] or "1"))
            elif path == "/written":
                answer(writer, "200 OK", json.dumps(STATS).encode())
            elif path == "/health":
                answer(writer, "200 OK", b"ok")
            else:
                answer(writer, "404 Not Found", b"")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main(port: int) -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(main(parser.parse_args().port))
