"""The activator's exception tree (``activator.edge`` maps it to HTTP, once).

Every error answers with one JSON shape, OpenAI-style, because most clients are
OpenAI clients::

    {"error": {"message": "...", "type": "...", "code": "...", "workload": "..."}}
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

__all__ = [
    "ActivatorError",
    "BadPath",
    "BadRequest",
    "ClientGone",
    "Conflict",
    "HeadersTooLarge",
    "MethodNotAllowed",
    "NotAwake",
    "NotFound",
    "OperationFailed",
    "PayloadTooLarge",
    "QueueFull",
    "RequestTimeout",
    "Unauthorized",
    "UpstreamError",
    "UpstreamTimeout",
    "WakeFailed",
    "WakeTimeout",
    "scrub",
]

_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>()]+")
_HOST_ARG = re.compile(r"\bhost=(['\"])[^'\"]*\1")
_CANDIDATE = re.compile(r"\[?[0-9A-Fa-f:.%]*[:.][0-9A-Fa-f:.%]*\]?(?::\d+)?")


def _address(match: re.Match[str]) -> str:
    text = match.group(0)
    host = text
    if host.startswith("["):  # [v6]:port
        host = host[1 : host.find("]")] if "]" in host else host[1:]
    elif host.count(":") == 1:  # v4:port
        host = host.split(":")[0]
    try:
        ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return text  # a time, a version, a ratio: not an address
    return "<address>"


def scrub(text: str) -> str:
    """``text`` without URLs and IP addresses (an error body goes to any client: the API
    server's, a pod's or a node's address is nobody's business outside; the log keeps them)."""
    text = _HOST_ARG.sub("host=<address>", _URL.sub("<url>", text))
    return _CANDIDATE.sub(_address, text)


class ActivatorError(Exception):
    """Base: carries the HTTP status, a machine-readable code and a human message."""

    status = 500
    code = "internal_error"
    type = "server_error"

    def __init__(
        self,
        message: str,
        *,
        workload: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.workload = workload
        self.headers = headers or {}
        self.extra = extra or {}

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {
            "message": scrub(self.message),
            "type": self.type,
            "code": self.code,
        }
        if self.workload:
            error["workload"] = self.workload
        error.update(self.extra)
        return {"error": error}


class BadRequest(ActivatorError):
    status, code, type = 400, "bad_request", "invalid_request_error"


class BadPath(BadRequest):
    """The path is routed differently once decoded and normalised (``%2e%2e``, ``..%2f``,
    ``..;``), or climbs out of its workload's prefix: refused rather than guessed."""

    code = "bad_path"


class Unauthorized(ActivatorError):
    status, code, type = 401, "unauthorized", "authentication_error"


class NotFound(ActivatorError):
    status, code, type = 404, "not_found", "invalid_request_error"


class MethodNotAllowed(ActivatorError):
    """The route exists, not for this method; ``Allow`` names the ones it takes."""

    status, code, type = 405, "method_not_allowed", "invalid_request_error"


class RequestTimeout(ActivatorError):
    """The client sent its request head or body too slowly."""

    status, code, type = 408, "request_timeout", "invalid_request_error"


class HeadersTooLarge(ActivatorError):
    status, code, type = 431, "headers_too_large", "invalid_request_error"


class PayloadTooLarge(ActivatorError):
    status, code, type = 413, "payload_too_large", "invalid_request_error"


class QueueFull(ActivatorError):
    """Too many requests already wait for this workload: retry later."""

    status, code, type = 503, "queue_full", "overloaded_error"


class WakeFailed(ActivatorError):
    """The workload could not be started or restored."""

    status, code, type = 503, "wake_failed", "server_error"


class NotAwake(ActivatorError):
    """The workload sleeps and this request does not wake it: a page's background
    refresh of a notebook (see ``activator.activity``). Retry after a user action.

    409, not 503: JupyterLab answers a 503 (or 424) from its kernel, session and terminal
    polls with a "Server Connection Error" dialog, meant for a JupyterHub server that is
    gone; any other error it retries quietly, with backoff."""

    status, code, type = 409, "not_awake", "invalid_request_error"


class WakeTimeout(ActivatorError):
    """The request waited ``wake_timeout`` for the workload to become ready."""

    status, code, type = 504, "wake_timeout", "timeout_error"


class UpstreamError(ActivatorError):
    status, code, type = 502, "upstream_error", "server_error"


class UpstreamTimeout(ActivatorError):
    status, code, type = 504, "upstream_timeout", "timeout_error"


class ClientGone(ActivatorError):
    """The client disconnected while its request waited (nginx's 499; never seen by it)."""

    status, code, type = 499, "client_gone", "invalid_request_error"


class Conflict(ActivatorError):
    status, code, type = 409, "conflict", "invalid_request_error"


class OperationFailed(ActivatorError):
    """An admin operation (hibernate, wake) failed; the message says what state remains."""

    status, code, type = 500, "operation_failed", "server_error"
