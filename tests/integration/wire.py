"""Raw HTTP on a socket, for tests where a client library would rewrite what is sent
(paths, Expect, trickled bytes), and the access log of a running `dormant up`."""

from __future__ import annotations

import socket
import time

from tests.integration.harness import Dormant

__all__ = ["access_lines", "read_body", "read_head"]


def read_head(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before a response head: {data!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, rest


def read_body(sock: socket.socket, headers: dict[str, str], rest: bytes) -> bytes:
    """Content-Length or chunked bodies (what uvicorn sends)."""
    if "content-length" in headers:
        while len(rest) < int(headers["content-length"]):
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
        return rest
    data = rest
    while not data.endswith(b"0\r\n\r\n"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    body, pos = b"", 0
    while True:
        size_end = data.index(b"\r\n", pos)
        size = int(data[pos:size_end], 16)
        if size == 0:
            return body
        body += data[size_end + 2 : size_end + 2 + size]
        pos = size_end + 2 + size + 2


def access_lines(d: Dormant, request_id: str, timeout: float = 10.0) -> list[str]:
    """The access lines for ``request_id`` (written just after the answer: wait a little)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [
            line
            for line in d.log().splitlines()
            if "dormant.access" in line and f"request_id={request_id} " in line
        ]
        if lines or time.monotonic() > deadline:
            time.sleep(0.2)  # a second line would be a bug: give it the chance to show
            return [
                line
                for line in d.log().splitlines()
                if "dormant.access" in line and f"request_id={request_id} " in line
            ]
        time.sleep(0.05)
