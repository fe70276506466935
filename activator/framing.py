"""Is a request's framing unambiguous? The head checks a proxy owes RFC 9112 before it
forwards a byte: what Dormant routes on must be what the upstream receives.

llhttp (through httptools, ``activator.limits``) already refuses most ambiguous framing:
obs-fold, a bare LF or CR, a duplicate or malformed ``Content-Length``, ``Content-Length``
with ``Transfer-Encoding``, a chunk size with junk or that overflows, a NUL or control
byte in a value, a space before the colon. ``framing_error`` refuses what it lets
through, on the parsed head (names lowercased), rules in the order they apply:

1. The version is HTTP/1.0 or HTTP/1.1 (llhttp takes ``HTTP/2.0`` and HTTP/0.9 lines).
2. ``CONNECT`` is refused: Dormant is not a forward proxy.
3. ``Host``: exactly one field line in HTTP/1.1, at most one in HTTP/1.0 (RFC 9112
   §3.2), with a valid ``uri-host[:port]`` value (RFC 3986; empty is valid).
4. ``Transfer-Encoding``: none in HTTP/1.0 (§6.1); else one field line whose value is
   exactly ``chunked`` (any case), the only coding Dormant decodes (``identity, chunked``
   and ``gzip, chunked`` are refused: the upstream would get a body it cannot read).
5. ``Content-Length``: one field line of digits, never beside ``Transfer-Encoding`` (§6.3).
6. An absolute-form target (§3.2.2) is ``http`` or ``https``, without userinfo, naming
   the same authority as ``Host`` (Dormant routes on ``Host``; an upstream may use the
   target's). Other forms than origin-form and absolute-form are left to the router
   (``OPTIONS *`` finds no route: 404).

A request that breaks one is answered ``400`` and its connection closed; nothing of it is
forwarded. The message says what was wrong and what to send instead.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["framing_error"]

_VERSIONS = frozenset({"1.0", "1.1"})
_HOST = re.compile(
    rb"(?:\[[0-9A-Fa-f:.]+\]|\[v[0-9A-Fa-f]+\.[A-Za-z0-9\-._~!$&'()*+,;=:]+\]"
    rb"|[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})*"  # reg-name chars, or an IP-literal
    rb"(?::[0-9]*)?"
)
_ABSOLUTE = re.compile(rb"([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)")


def _fields(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    return [value for key, value in headers if key == name]


def _host_error(version: str, hosts: list[bytes]) -> str | None:
    if len(hosts) > 1:
        return f"the request has {len(hosts)} Host header fields; send exactly one (RFC 9112 §3.2)"
    if not hosts:
        return None if version == "1.0" else "an HTTP/1.1 request needs a Host header field"
    if not _HOST.fullmatch(hosts[0].strip(b" \t")):
        return (
            f"the Host header field {hosts[0][:100]!r} is not a host[:port]; "
            "send a host name or an IP address, and a port"
        )
    return None


def _transfer_error(version: str, codings: list[bytes], lengths: list[bytes]) -> str | None:
    if not codings:
        return None
    if version == "1.0":
        return "Transfer-Encoding is not HTTP/1.0; send Content-Length, or use HTTP/1.1"
    if len(codings) > 1 or codings[0].strip(b" \t").lower() != b"chunked":
        value = b", ".join(codings)[:100]
        return (
            f"Transfer-Encoding {value!r} is not supported; send the body with "
            "'Transfer-Encoding: chunked' alone, or with Content-Length"
        )
    if lengths:
        return "the request has both Transfer-Encoding and Content-Length; send one of them"
    return None


def _target_error(target: bytes, hosts: list[bytes]) -> str | None:
    found = _ABSOLUTE.match(target)
    if found is None:
        return None
    scheme, authority = found.group(1).lower(), found.group(2)
    if scheme not in (b"http", b"https"):
        return f"the request target's scheme {scheme.decode()!r} is not http; send a path"
    if b"@" in authority:
        return "the request target has userinfo ('user@'); send a path, and credentials in a header"
    host = hosts[0].strip(b" \t") if hosts else b""
    if authority.lower() != host.lower():
        return (
            f"the request target names {authority[:100].decode('latin-1')!r} but Host is "
            f"{host[:100].decode('latin-1')!r}; send a path (origin-form) with the right Host"
        )
    return None


def _length_error(lengths: list[bytes]) -> str | None:
    if len(lengths) > 1:
        return f"the request has {len(lengths)} Content-Length fields; send exactly one"
    if lengths and not lengths[0].strip(b" \t").isdigit():
        return f"Content-Length {lengths[0][:40]!r} is not a number of bytes"
    return None


def framing_error(
    method: bytes, target: bytes, version: str, headers: Sequence[tuple[bytes, bytes]]
) -> str | None:
    """Why this request head is ambiguous (see the module docstring), or None when it is
    not. ``headers`` are the field lines as received, names lowercased."""
    if version not in _VERSIONS:
        return f"HTTP/{version} is not spoken here; send HTTP/1.1 (or HTTP/1.0)"
    if method.upper() == b"CONNECT":
        return "CONNECT is not supported: Dormant is not a forward proxy"
    hosts = _fields(headers, b"host")
    return (
        _host_error(version, hosts)
        or _transfer_error(
            version, _fields(headers, b"transfer-encoding"), _fields(headers, b"content-length")
        )
        or _length_error(_fields(headers, b"content-length"))
        or _target_error(target, hosts)
    )
