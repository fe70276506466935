"""The path table. What an upstream receives for each request
target a client may send, through a real `dormant up`, over HTTP and WebSocket.

The upstream (tests/servers/raw_echo.py) reports the request-target exactly as it
arrived. Requests are written on raw sockets: HTTP clients normalise paths (dot
segments, percent-encoding) before sending, which is the thing under test here.
The rule: the path is forwarded byte for byte (less a stripped prefix); a path whose
decoded, normalised form routes elsewhere or climbs out of its prefix is refused
with 400 in the JSON error shape; a raw non-ASCII byte is refused with 400.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import TESTS
from tests.integration.harness import Dormant
from tests.integration.wire import access_lines, read_body, read_head

ECHO = ["{python}", str(TESTS / "servers" / "raw_echo.py"), "--port", "{port}"]


def _echo(name: str, prefix: str, strip: bool) -> dict[str, object]:
    return {
        "name": name,
        "kind": "http",
        "path_prefix": prefix,
        "strip_prefix": strip,
        "command": ECHO,
        "idle_after": 0,
    }


@pytest.fixture(scope="module")
def dormant(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dormant]:
    d = Dormant(
        tmp_path_factory.mktemp("paths"),
        [
            _echo("strip", "/apps/e1", True),
            _echo("keep", "/apps/e2", False),
            _echo("inner", "/apps/e2/inner", False),
        ],
    )
    d.start()
    yield d
    d.stop()


def http_target(
    d: Dormant, method: str, target: bytes, body: bytes = b"", extra: bytes = b""
) -> tuple[int, dict]:
    """Send ``target`` verbatim (``extra``: more header lines); (status, JSON body)."""
    with socket.create_connection(("127.0.0.1", d.port), timeout=60) as sock:
        sock.sendall(
            method.encode() + b" " + target + b" HTTP/1.1\r\n"
            b"Host: 127.0.0.1\r\nConnection: close\r\n" + extra + b""
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        status, headers, rest = read_head(sock)
        data = read_body(sock, headers, rest)
    assert headers.get("x-request-id"), "every answer is traceable"
    return status, json.loads(data)


def ws_target(d: Dormant, target: bytes) -> tuple[int, dict]:
    """Open a WebSocket to ``target`` verbatim; (101, the upstream's first message) or
    (status, JSON body) of a refused upgrade."""
    key = base64.b64encode(os.urandom(16))
    with socket.create_connection(("127.0.0.1", d.port), timeout=60) as sock:
        sock.sendall(
            b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: " + key + b"\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        status, headers, rest = read_head(sock)
        if status != 101:
            return status, json.loads(read_body(sock, headers, rest))
        assert headers.get("x-request-id"), "the accepted upgrade is traceable too"
        while len(rest) < 2:
            rest += sock.recv(65536)
        length, start = rest[1] & 0x7F, 2
        if length == 126:
            while len(rest) < 4:
                rest += sock.recv(65536)
            length, start = struct.unpack("!H", rest[2:4])[0], 4
        while len(rest) < start + length:
            rest += sock.recv(65536)
        message = json.loads(rest[start : start + length])
        sock.sendall(struct.pack("!BB", 0x88, 0x82) + b"\0\0\0\0" + struct.pack("!H", 1000))
    return 101, message


REFUSED = 400

# (suffix after the prefix, what the upstream receives after the prefix, or REFUSED)
TABLE: list[tuple[bytes, bytes | int]] = [
    (b"/x%2541.txt", b"/x%2541.txt"),  # the report: %25 decoded twice overwrote xA.txt
    (b"/a%20b", b"/a%20b"),
    (b"/caf%C3%A9", b"/caf%C3%A9"),  # non-ASCII, percent-encoded UTF-8
    (b"/caf\xc3\xa9", REFUSED),  # non-ASCII raw bytes on the wire
    (b"/%252e%252e/admin", b"/%252e%252e/admin"),  # double encoding: a file named %2e%2e
    (b"/%2e%2e/admin", REFUSED),
    (b"/%2E%2E/%2e%2e/admin", REFUSED),
    (b"/..%2fadmin", REFUSED),
    (b"/..%2f..%2fadmin", REFUSED),
    (b"/%2e%2e%2f%2e%2e%2fadmin", REFUSED),
    (b"/..%5cadmin", REFUSED),  # a backslash some servers read as '/'
    (b"/../e1/x", REFUSED),  # climbs out, even to come back
    (b"/a/../b", b"/a/../b"),  # stays inside: forwarded as written
    (b"/a/%2e%2e/b", b"/a/%2e%2e/b"),
    (b"/./x", b"/./x"),
    (b"/a/.", b"/a/."),
    (b"/a%2fb", b"/a%2fb"),  # an encoded slash stays encoded
    (b"/a%5cb", b"/a%5cb"),
    (b"//x", b"//x"),
    (b"/a//b", b"/a//b"),
    (b"/x;y=1", b"/x;y=1"),
    (b"/a/..;/b", b"/a/..;/b"),
    (b"/..;/admin", REFUSED),  # '..;' is '..' to some servers
    (b"/a%zzb", b"/a%zzb"),  # not an escape: passed through
    (b"/a%00b", b"/a%00b"),
    (b"/q?a=%41&b=%2e%2e/../x", b"/q?a=%41&b=%2e%2e/../x"),  # the query is raw too
    (b"", b""),  # the prefix itself
]

PREFIXES = {"strip": b"/apps/e1", "keep": b"/apps/e2"}


@pytest.mark.parametrize("transport", ["http", "ws"])
@pytest.mark.parametrize("workload", ["strip", "keep"])
@pytest.mark.parametrize(("suffix", "upstream"), TABLE, ids=[repr(s)[2:-1] for s, _ in TABLE])
def test_path_table(
    dormant: Dormant, transport: str, workload: str, suffix: bytes, upstream: bytes | int
) -> None:
    target = PREFIXES[workload] + suffix
    if isinstance(upstream, int):
        expected: bytes | int = upstream
    elif workload == "keep":
        expected = target
    else:
        expected = upstream if upstream.startswith(b"/") else b"/" + upstream
    if transport == "http":
        status, body = http_target(dormant, "PUT", target, b"file contents")
    else:
        status, body = ws_target(dormant, target)
    if isinstance(expected, int):
        assert status == expected, body
        assert body["error"]["code"] in ("bad_path", "bad_request"), body
        return
    assert status in (200, 101), body
    assert body["target"].encode("latin-1") == expected
    if transport == "http":
        assert body["method"] == "PUT" and body["body_bytes"] == len(b"file contents")


@pytest.mark.parametrize(
    ("target", "status"),
    [
        (b"/apps/%65%31/x", REFUSED),  # the prefix itself encoded: routes only once decoded
        (b"/apps%2fe1/x", REFUSED),
        (b"/apps/e1%2fx", REFUSED),
        (b"/apps/e1/../e2/x", REFUSED),  # another workload once normalised
        (b"/apps/e2/x/../inner/y", REFUSED),  # a longer prefix once normalised
        (b"/apps/e2/inner/y", b"/apps/e2/inner/y"),
        (b"/apps/e1x/y", 404),  # a prefix is a whole segment
        (b"/elsewhere/%2e%2e/apps/e1/x", REFUSED),
        (b"/nowhere", 404),
    ],
    ids=lambda v: repr(v)[2:-1] if isinstance(v, bytes) else str(v),
)
@pytest.mark.parametrize("transport", ["http", "ws"])
def test_routing_is_decided_on_the_normalised_path(
    dormant: Dormant, transport: str, target: bytes, status: bytes | int
) -> None:
    got, body = (
        http_target(dormant, "GET", target) if transport == "http" else ws_target(dormant, target)
    )
    if isinstance(status, int):
        assert got == status, body
        assert set(body) == {"error"} and body["error"]["message"], body
    else:
        assert got in (200, 101) and body["target"].encode() == status, body


def test_openai_paths_stay_under_v1(dormant: Dormant) -> None:
    """/v1/* is routed by model, but its path is a boundary too."""
    for target in (b"/v1/%2e%2e/admin", b"/v1/..%2fadmin", b"/v1/../v1/completions"):
        with socket.create_connection(("127.0.0.1", dormant.port), timeout=30) as sock:
            body = b'{"model": "nope"}'
            sock.sendall(
                b"POST " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body
            )
            status, headers, rest = read_head(sock)
            answer = json.loads(read_body(sock, headers, rest))
        assert status == 400 and answer["error"]["code"] == "bad_path", (target, answer)


def test_metrics_are_open_without_any_token(dormant: Dormant) -> None:
    response = httpx.get(f"{dormant.url}/metrics", timeout=10)
    assert response.status_code == 200 and "dormant_requests_total" in response.text


def test_a_refusal_has_one_access_line(dormant: Dormant) -> None:
    target = b"/apps/e1/%2e%2e/%2e%2e/admin"
    status, _ = http_target(dormant, "GET", target, extra=b"X-Request-Id: paths-refused\r\n")
    assert status == 400
    lines = access_lines(dormant, "paths-refused")
    assert len(lines) == 1, lines
    assert f"path={target.decode()} status=400 upstream=- outcome=bad_path" in lines[0]
