"""The framing table: requests whose framing is ambiguous (two Hosts, two lengths, a
coding the upstream would read otherwise, bytes two parsers split differently), written
on raw sockets to a real `dormant up` fronting echo upstreams that record every request
line that reaches them (tests/servers/raw_echo.py --record).

Each row asserts what the client gets (400 in the JSON error shape, one access line) and
that nothing reached an upstream. A proxy that routes on one reading of a request while
its upstream acts on another is how requests are smuggled past it: RFC 9112 §3.2, §6.1,
§6.3, §7.1. Control rows (valid framing that looks alike) are forwarded, which is what
shows the recording works. The rules: activator/framing.py (and llhttp's own).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import TESTS
from tests.integration.harness import Dormant
from tests.integration.wire import access_lines, read_body, read_head

ECHO = ["{python}", str(TESTS / "servers" / "raw_echo.py"), "--port", "{port}"]


@pytest.fixture(scope="module")
def framed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Dormant, list[Path]]]:
    tmp = tmp_path_factory.mktemp("framing")
    records = [tmp / "raw.received", tmp / "hosted.received"]
    d = Dormant(
        tmp,
        [
            {
                "name": "raw",
                "kind": "http",
                "path_prefix": "/raw",
                "command": [*ECHO, "--record", str(records[0])],
                "idle_after": 0,
            },
            {
                "name": "hosted",
                "kind": "http",
                "hosts": ["svc.example"],
                "command": [*ECHO, "--record", str(records[1])],
                "idle_after": 0,
            },
        ],
    )
    d.start()
    try:
        for target, host in ((b"/raw/wake", b"127.0.0.1"), (b"/h/wake", b"svc.example")):
            status, _, _ = _send(d, b"GET " + target + b" HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
            assert status == 200  # both awake: forwarding is live
        yield d, records
    finally:
        d.stop()


def _send(d: Dormant, request: bytes) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", d.port), timeout=60) as sock:
        sock.sendall(request)
        status, headers, rest = read_head(sock)
        return status, headers, read_body(sock, headers, rest)


CL3 = b"Content-Length: 3\r\n"
TE = b"Transfer-Encoding: chunked\r\n"
CHUNKED = b"3\r\nabc\r\n0\r\n\r\n"
H = b"Host: 127.0.0.1\r\n"

# (id, the request after its request line, or the whole request with MARK for its target,
# the status the client gets)
MARK = b"<target>"
ROWS: list[tuple[str, bytes, int]] = [
    # -- Host (RFC 9112 §3.2) ------------------------------------------------------------
    ("dup-host", b"Host: svc.example\r\nHost: other.example\r\n\r\n", 400),  # the report
    ("dup-host-same", H + H + b"\r\n", 400),
    ("dup-host-routed-last", b"Host: other.example\r\nHost: svc.example\r\n\r\n", 400),
    ("no-host-1.1", b"X-A: b\r\n\r\n", 400),
    ("host-list", b"Host: svc.example, other.example\r\n\r\n", 400),
    ("host-userinfo", b"Host: user@svc.example\r\n\r\n", 400),
    ("host-space-colon", b"Host : svc.example\r\n\r\n", 400),
    ("host-obs-fold", b"Host: svc.example\r\n other.example\r\n\r\n", 400),
    # -- absolute-form targets (§3.2.2) ------------------------------------------------------
    ("abs-other-host", b"GET http://other.example" + MARK + b" HTTP/1.1\r\n" + H + b"\r\n", 400),
    (
        "abs-routed-host",
        b"GET http://127.0.0.1" + MARK + b" HTTP/1.1\r\nHost: svc.example\r\n\r\n",
        400,
    ),
    ("abs-userinfo", b"GET http://u@127.0.0.1" + MARK + b" HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("abs-scheme", b"GET ftp://127.0.0.1" + MARK + b" HTTP/1.1\r\n" + H + b"\r\n", 400),
    # -- Transfer-Encoding (§6.1) ------------------------------------------------------------
    ("te-identity-chunked", H + b"Transfer-Encoding: identity, chunked\r\n\r\n" + CHUNKED, 400),
    ("te-gzip-chunked", H + b"Transfer-Encoding: gzip, chunked\r\n\r\n" + CHUNKED, 400),
    ("te-two-lines", H + b"Transfer-Encoding: gzip\r\n" + TE + b"\r\n" + CHUNKED, 400),
    ("te-twice", H + TE + TE + b"\r\n" + CHUNKED, 400),
    ("te-comma", H + b"Transfer-Encoding: ,chunked\r\n\r\n" + CHUNKED, 400),
    ("te-chunked-identity", H + b"Transfer-Encoding: chunked, identity\r\n\r\n" + CHUNKED, 400),
    ("te-gzip", H + b"Transfer-Encoding: gzip\r\n\r\nabc", 400),
    ("te-xchunked", H + b"Transfer-Encoding: xchunked\r\n\r\n" + CHUNKED, 400),
    ("te-space-colon", H + b"Transfer-Encoding : chunked\r\n\r\n" + CHUNKED, 400),
    ("te-and-cl", H + TE + CL3 + b"\r\n" + CHUNKED, 400),
    ("cl-and-te", H + CL3 + TE + b"\r\n" + CHUNKED, 400),
    ("te-http-1.0", b"POST " + MARK + b" HTTP/1.0\r\n" + H + TE + b"\r\n" + CHUNKED, 400),
    # -- Content-Length (§6.3, §8.6) ---------------------------------------------------------
    ("cl-dup-different", H + CL3 + b"Content-Length: 4\r\n\r\nabcd", 400),
    ("cl-dup-same", H + CL3 + CL3 + b"\r\nabc", 400),
    ("cl-list", H + b"Content-Length: 3, 3\r\n\r\nabc", 400),
    ("cl-plus", H + b"Content-Length: +3\r\n\r\nabc", 400),
    ("cl-minus", H + b"Content-Length: -3\r\n\r\nabc", 400),
    ("cl-trailing-junk", H + b"Content-Length: 3x\r\n\r\nabc", 400),
    ("cl-leading-junk", H + b"Content-Length: x3\r\n\r\nabc", 400),
    ("cl-hex", H + b"Content-Length: 0x3\r\n\r\nabc", 400),
    ("cl-overflow", H + b"Content-Length: 99999999999999999999999\r\n\r\nabc", 400),
    ("cl-empty", H + b"Content-Length: \r\n\r\nabc", 400),
    ("cl-space-colon", H + b"Content-Length : 3\r\n\r\nabc", 400),
    # -- line endings, folding, bytes in values (§2.2, §5.2, §5.5) ---------------------------
    ("obs-fold", H + b"X-A: b\r\n c\r\n\r\n", 400),
    ("obs-fold-tab", H + b"X-A: b\r\n\tc\r\n\r\n", 400),
    ("bare-lf-request-line", b"GET " + MARK + b" HTTP/1.1\n" + H + b"\r\n", 400),
    ("bare-lf-header", b"Host: 127.0.0.1\nX-A: b\r\n\r\n", 400),
    ("bare-cr-header", b"Host: 127.0.0.1\rX-A: b\r\n\r\n", 400),
    ("nul-in-value", H + b"X-A: b\x00c\r\n\r\n", 400),
    ("cr-in-value", H + b"X-A: b\rc\r\n\r\n", 400),
    ("ctl-in-value", H + b"X-A: b\x01c\r\n\r\n", 400),
    ("space-before-colon", H + b"X-A : b\r\n\r\n", 400),
    # -- chunked bodies (§7.1) ----------------------------------------------------------------
    ("chunk-size-junk", H + TE + b"\r\n3x\r\nabc\r\n0\r\n\r\n", 400),
    ("chunk-size-overflow", H + TE + b"\r\n10000000000000003\r\nabc\r\n0\r\n\r\n", 400),
    ("chunk-size-minus", H + TE + b"\r\n-3\r\nabc\r\n0\r\n\r\n", 400),
    ("chunk-size-hex-prefix", H + TE + b"\r\n0x3\r\nabc\r\n0\r\n\r\n", 400),
    ("chunk-size-space", H + TE + b"\r\n3 \r\nabc\r\n0\r\n\r\n", 400),
    ("chunk-size-bare-lf", H + TE + b"\r\n3\nabc\r\n0\r\n\r\n", 400),
    ("chunk-data-too-long", H + TE + b"\r\n3\r\nabcX\r\n0\r\n\r\n", 400),
    ("chunk-ext-nul", H + TE + b"\r\n3;\x00\r\nabc\r\n0\r\n\r\n", 400),
    ("trailer-obs-fold", H + TE + b"\r\n3\r\nabc\r\n0\r\nX: a\r\n b\r\n\r\n", 400),
    # -- the request line --------------------------------------------------------------------
    ("http-2.0", b"GET " + MARK + b" HTTP/2.0\r\n" + H + b"\r\n", 400),
    ("http-1.2", b"GET " + MARK + b" HTTP/1.2\r\n" + H + b"\r\n", 400),
    ("connect", b"CONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n", 400),
    # -- controls: valid framing that looks alike is forwarded ---------------------------------
    ("ok-chunked", H + TE + b"\r\n" + CHUNKED, 200),
    ("ok-chunked-any-case", H + b"Transfer-Encoding: Chunked\r\n\r\n" + CHUNKED, 200),
    ("ok-chunk-ext", H + TE + b'\r\n3;a="b c"\r\nabc\r\n0\r\n\r\n', 200),
    ("ok-cl-leading-zeros", H + b"Content-Length: 003\r\n\r\nabc", 200),
    ("ok-abs-same-host", b"GET http://127.0.0.1" + MARK + b" HTTP/1.1\r\n" + H + b"\r\n", 200),
    ("ok-http-1.0-no-host", b"GET " + MARK + b" HTTP/1.0\r\n\r\n", 200),
    ("ok-host-port", b"Host: 127.0.0.1:8080\r\n\r\n", 200),
    ("ok-host-routed", b"Host: svc.example\r\n\r\n", 200),
]


def _request(row_id: str, rest: bytes) -> tuple[bytes, bytes]:
    """(what the upstream would see of it, the whole request). A row naming svc.example
    targets /h/ROW (routed by Host), else /raw/ROW (by path prefix)."""
    if rest.startswith(b"CONNECT "):
        return b"CONNECT ", rest
    target = (b"/h/" if b"svc.example" in rest else b"/raw/") + row_id.encode()
    if MARK in rest:
        return target, rest.replace(MARK, target)
    method = b"POST" if b"Content-Length" in rest or b"Transfer-Encoding" in rest else b"GET"
    return target, method + b" " + target + b" HTTP/1.1\r\n" + rest


@pytest.mark.parametrize(("row_id", "rest", "status"), ROWS, ids=[r[0] for r in ROWS])
def test_framing_table(
    framed: tuple[Dormant, list[Path]], row_id: str, rest: bytes, status: int
) -> None:
    d, records = framed
    marker, request = _request(row_id, rest)
    got, headers, body = _send(d, request)
    received = b"".join(r.read_bytes() for r in records if r.exists())
    rid = headers.get("x-request-id", "")
    assert rid, "every answer is traceable"
    if status == 200:
        assert got == 200, body
        assert marker in received, "the control row reached its upstream"
        return
    assert (got, marker in received) == (status, False), body
    error = json.loads(body)["error"]
    assert error["code"] == "bad_request" and error["message"], error
    assert headers.get("connection") == "close"
    (line,) = access_lines(d, rid)
    assert " status=400 upstream=- outcome=bad_request " in line, line
