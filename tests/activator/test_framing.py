"""activator.framing's rules, table-tested on parsed heads (names lowercased, as uvicorn
gives them). The same rules end to end, on raw sockets through a real `dormant up` with
nothing forwarded: tests/integration/test_framing.py."""

from __future__ import annotations

import pytest

from activator.framing import framing_error

H = (b"host", b"svc.example")
TE = (b"transfer-encoding", b"chunked")
CL = (b"content-length", b"3")

# (method, target, version, headers, a word of the refusal or None when it is fine)
ROWS: list[tuple[bytes, bytes, str, list[tuple[bytes, bytes]], str | None]] = [
    (b"GET", b"/x", "1.1", [H], None),
    (b"GET", b"/x", "1.1", [H, (b"x-a", b"b")], None),
    (b"GET", b"/x", "1.0", [], None),  # HTTP/1.0 needs no Host
    (b"GET", b"/x", "1.1", [(b"host", b"")], None),  # empty is valid (RFC 9110 §7.2)
    (b"GET", b"/x", "1.1", [(b"host", b"127.0.0.1:8080")], None),
    (b"GET", b"/x", "1.1", [(b"host", b"[::1]:8080")], None),
    (b"GET", b"/x", "1.1", [(b"host", b"my_host.local")], None),
    (b"GET", b"/x", "1.1", [(b"host", b"Svc.Example:")], None),  # an empty port is valid
    (b"POST", b"/x", "1.1", [H, TE], None),
    (b"POST", b"/x", "1.1", [H, (b"transfer-encoding", b"Chunked")], None),
    (b"POST", b"/x", "1.1", [H, CL], None),
    (b"POST", b"/x", "1.1", [H, (b"content-length", b"003")], None),
    (b"GET", b"http://svc.example/x", "1.1", [H], None),
    (b"GET", b"HTTPS://SVC.example/x", "1.1", [H], None),
    (b"OPTIONS", b"*", "1.1", [H], None),  # left to the router
    # 1. the version
    (b"GET", b"/x", "2.0", [H], "HTTP/2.0"),
    (b"GET", b"/x", "0.9", [], "HTTP/0.9"),
    # 2. CONNECT
    (b"CONNECT", b"svc.example:443", "1.1", [(b"host", b"svc.example:443")], "CONNECT"),
    # 3. Host
    (b"GET", b"/x", "1.1", [], "needs a Host"),
    (b"GET", b"/x", "1.1", [H, (b"host", b"other.example")], "2 Host"),
    (b"GET", b"/x", "1.1", [H, H], "2 Host"),
    (b"GET", b"/x", "1.0", [H, H], "2 Host"),
    (b"GET", b"/x", "1.1", [(b"host", b"svc.example, other.example")], "not a host"),
    (b"GET", b"/x", "1.1", [(b"host", b"user@svc.example")], "not a host"),
    (b"GET", b"/x", "1.1", [(b"host", b"svc.example/x")], "not a host"),
    (b"GET", b"/x", "1.1", [(b"host", b"svc.example:8a")], "not a host"),
    (b"GET", b"/x", "1.1", [(b"host", b"\xffsvc")], "not a host"),
    # 4. Transfer-Encoding
    (b"POST", b"/x", "1.0", [H, TE], "not HTTP/1.0"),
    (b"POST", b"/x", "1.1", [H, (b"transfer-encoding", b"identity, chunked")], "not supported"),
    (b"POST", b"/x", "1.1", [H, (b"transfer-encoding", b"gzip, chunked")], "not supported"),
    (b"POST", b"/x", "1.1", [H, (b"transfer-encoding", b",chunked")], "not supported"),
    (b"POST", b"/x", "1.1", [H, (b"transfer-encoding", b"gzip")], "not supported"),
    (b"POST", b"/x", "1.1", [H, (b"transfer-encoding", b"gzip"), TE], "not supported"),
    (b"POST", b"/x", "1.1", [H, TE, TE], "not supported"),
    (b"POST", b"/x", "1.1", [H, TE, CL], "both"),
    (b"POST", b"/x", "1.1", [H, CL, TE], "both"),
    # 5. Content-Length
    (b"POST", b"/x", "1.1", [H, CL, CL], "2 Content-Length"),
    (b"POST", b"/x", "1.1", [H, CL, (b"content-length", b"4")], "2 Content-Length"),
    (b"POST", b"/x", "1.1", [H, (b"content-length", b"+3")], "not a number"),
    (b"POST", b"/x", "1.1", [H, (b"content-length", b"3, 3")], "not a number"),
    (b"POST", b"/x", "1.1", [H, (b"content-length", b"")], "not a number"),
    (b"POST", b"/x", "1.1", [H, (b"content-length", "٣".encode())], "not a number"),
    # 6. absolute-form
    (b"GET", b"http://other.example/x", "1.1", [H], "names 'other.example'"),
    (b"GET", b"http://svc.example:81/x", "1.1", [H], "names 'svc.example:81'"),
    (b"GET", b"http://svc.example/x", "1.0", [], "names 'svc.example'"),
    (b"GET", b"http://u@svc.example/x", "1.1", [H], "userinfo"),
    (b"GET", b"ftp://svc.example/x", "1.1", [H], "scheme 'ftp'"),
]


@pytest.mark.parametrize(("method", "target", "version", "headers", "refused"), ROWS)
def test_framing_error(
    method: bytes,
    target: bytes,
    version: str,
    headers: list[tuple[bytes, bytes]],
    refused: str | None,
) -> None:
    problem = framing_error(method, target, version, headers)
    if refused is None:
        assert problem is None
    else:
        assert problem is not None and refused in problem, problem
