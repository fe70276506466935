"""Every answer is traceable: one request id and one access-log line per request.

``AccessLog`` wraps the whole application (outside Starlette's error middleware), so
the activator's own answers (400, 404, 405, 408, 413, 503, 504, 401, /v1/models, /-/*,
/metrics) carry ``X-Request-Id`` and are logged exactly like proxied ones. Handlers
fill in what only they know (workload, outcome, wake, upstream status) on the request's
``AccessRecord``; the line is written once, when the exchange is over::

    request_id=… workload=… method=… path=… status=… upstream=… outcome=… wake=…
    ttfb_ms=… duration_ms=… bytes=…      (one line)

``status`` is what the client got; ``upstream`` what the upstream answered ('-' when
nothing did); ``outcome`` says how it ended: ``ok``, an error code (``queue_full``,
``wake_failed``, ``bad_path``, ...), ``upstream_broke`` (the upstream died mid-body),
``upstream_timeout``, ``client_gone``. ``wake`` has the ``X-Dormant-Wake`` header's
form, quoted: ``wake="restore; 0.412"``.

A response the proxy must abort (the upstream broke mid-body) is ended without its
final chunk: the connection is dropped so the client can tell it is incomplete.
"""

from __future__ import annotations

import contextvars
import logging
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from activator.lease import WakeRecord
from activator.metrics import Metrics

if TYPE_CHECKING:
    from activator.tracing import RequestTracer

__all__ = [
    "AccessLog",
    "AccessRecord",
    "TracedFastAPI",
    "access_line",
    "fresh_request_id",
    "record",
    "wake_header",
]

access = logging.getLogger("dormant.access")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_KEY = "dormant.access"
_MAX_PATH = 512

# set in the task that returned without finishing its response on purpose; uvicorn
# then logs "ASGI callable returned without completing response" in that same task
_aborting: contextvars.ContextVar[bool] = contextvars.ContextVar("dormant_aborting", default=False)


def wake_header(waited: WakeRecord) -> str:
    """The one form of a wake, in the header, the SSE comment and the log: 'restore; 0.412'."""
    return f"{waited.path}; {waited.seconds:.3f}"


def fresh_request_id(given: str = "") -> str:
    """``given`` (the client's X-Request-Id) when it is sane, else a fresh one."""
    return given if _REQUEST_ID.match(given) else uuid.uuid4().hex[:16]


@dataclass
class AccessRecord:
    """What one request's access line will say; handlers fill in what they know."""

    request_id: str
    workload: str = ""
    outcome: str = ""
    """Empty: derived from the status ('ok' below 500)."""
    upstream: int = 0
    """The upstream's status; 0 when no upstream answered."""
    wake: WakeRecord | None = None
    ttfb: float | None = None
    """Seconds from forwarding to the upstream's response headers."""
    aborted: bool = False
    """Set by the proxy: end the response without its final chunk (drop the connection)."""
    relayed: int = 0
    """Body bytes the proxy wrote below ASGI (activator.downstream), not through ``send``."""


def record(connection: HTTPConnection) -> AccessRecord:
    """The request's record (a fresh one when it did not come through AccessLog)."""
    found = connection.scope.get(_KEY)
    if found is None:
        found = connection.scope[_KEY] = AccessRecord(
            fresh_request_id(connection.headers.get("x-request-id", ""))
        )
    assert isinstance(found, AccessRecord)
    return found


def _printable(path: bytes) -> str:
    text = path.decode("ascii", "backslashreplace")
    return text if len(text) <= _MAX_PATH else text[:_MAX_PATH] + "…"


def access_line(
    rec: AccessRecord,
    method: str,
    raw_path: bytes,
    status: int,
    duration: float,
    sent: int,
) -> None:
    """Log the one access line for an exchange (also used for refusals made before any
    ASGI application ran, such as 431 and 408 from the HTTP protocol)."""
    outcome = rec.outcome or ("ok" if 0 < status < 500 else "error")
    if not access.isEnabledFor(logging.INFO):
        return
    path = _printable(raw_path)
    ttfb_ms = round(rec.ttfb * 1000, 1) if rec.ttfb is not None else None
    fields = {  # the same values as structured fields, for log_format: json
        "request_id": rec.request_id,
        "workload": rec.workload or None,
        "method": method,
        "path": path,
        "status": status,
        "upstream": rec.upstream or None,
        "outcome": outcome,
        "wake": wake_header(rec.wake) if rec.wake else None,
        "ttfb_ms": ttfb_ms,
        "duration_ms": round(duration * 1000, 1),
        "bytes": sent,
    }
    access.info(
        "request_id=%s workload=%s method=%s path=%s status=%d upstream=%s outcome=%s "
        "wake=%s ttfb_ms=%s duration_ms=%.1f bytes=%d",
        rec.request_id,
        rec.workload or "-",
        method,
        path,
        status,
        rec.upstream or "-",
        outcome,
        f'"{wake_header(rec.wake)}"' if rec.wake else "-",
        "-" if ttfb_ms is None else f"{ttfb_ms:.1f}",
        duration * 1000,
        sent,
        extra={"fields": fields},
    )


def metric_outcome(outcome: str) -> str:
    """``dormant_requests_total``'s outcome label: every upstream failure is one value."""
    return "upstream_error" if outcome.startswith("upstream_") else outcome


class _QuietAbort(logging.Filter):
    """Drops uvicorn's error line for a response the activator aborted on purpose (it
    has its own access line, with the outcome)."""

    def filter(self, rec: logging.LogRecord) -> bool:
        return not (_aborting.get() and "without completing response" in rec.getMessage())


_QUIET = _QuietAbort()


class AccessLog:
    """ASGI middleware: request id in and out, one access line, the request counter."""

    def __init__(
        self,
        app: ASGIApp,
        metrics: Metrics | None = None,
        tracer: RequestTracer | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.tracer = tracer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        given = ""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                given = value.decode("latin-1")
                break
        rec = AccessRecord(fresh_request_id(given))
        scope[_KEY] = rec
        rid = rec.request_id.encode()
        started = time.monotonic()
        method = scope.get("method", "GET") if scope["type"] == "http" else "WEBSOCKET"
        span = None
        if self.tracer is not None:  # off: this test is all a request pays
            span = self.tracer.start(method, scope["path"], scope["headers"])
        status, sent, complete = 0, 0, False

        async def traced_send(message: Message) -> None:
            nonlocal status, sent, complete
            kind = message["type"]
            if kind in ("http.response.start", "websocket.http.response.start"):
                status = message["status"]
                message["headers"] = _with_request_id(message.get("headers", ()), rid)
            elif kind in ("http.response.body", "websocket.http.response.body"):
                sent += len(message.get("body", b""))
                if not message.get("more_body", False):
                    if rec.aborted:
                        if message.get("body"):
                            await send({**message, "more_body": True})
                        return  # no final chunk: the client sees a truncated response
                    complete = True
            elif kind == "websocket.accept":
                status = 101
                message["headers"] = _with_request_id(message.get("headers", ()), rid)
            elif kind == "websocket.close" and not status:
                status = 403  # closed before the handshake: uvicorn answers 403
            await send(message)

        try:
            await self.app(scope, receive, traced_send)
        except Exception:
            rec.outcome = rec.outcome or "internal_error"
            if not complete:
                raise
            # already answered (a 500 by the error handler, which logged the traceback)
        finally:
            if (
                status
                and not complete
                and not rec.aborted
                and scope["type"] == "http"
                and rec.outcome in ("", "ok", "upstream_error")
            ):
                rec.outcome = "client_gone"  # it left before the end of the answer
            if rec.aborted and not complete:
                _aborting.set(True)
                uvicorn_errors = logging.getLogger("uvicorn.error")
                if _QUIET not in uvicorn_errors.filters:
                    uvicorn_errors.addFilter(_QUIET)
            access_line(
                rec,
                method,
                scope.get("raw_path") or scope["path"].encode(),
                status or 500,
                time.monotonic() - started,
                sent + rec.relayed,
            )
            outcome = rec.outcome or ("ok" if 0 < status < 500 else "error")
            if self.metrics is not None and rec.workload and scope["type"] == "http":
                self.metrics.requests.labels(rec.workload, metric_outcome(outcome)).inc()
            if span is not None and self.tracer is not None:
                self.tracer.finish(span, rec, status or 500, outcome)


def _with_request_id(headers: Any, rid: bytes) -> list[tuple[bytes, bytes]]:
    out = [(k, v) for k, v in headers if k.lower() != b"x-request-id"]
    out.append((b"x-request-id", rid))
    return out


class TracedFastAPI(FastAPI):
    """A FastAPI app whose outermost layer is ``AccessLog`` (outside even Starlette's
    error middleware, so a 500 is traced too). ``access_metrics`` counts requests;
    ``access_tracer`` (when tracing is on) gives each a span."""

    access_metrics: Metrics | None = None
    access_tracer: RequestTracer | None = None
    front: Callable[[ASGIApp], ASGIApp] | None = None
    """An ASGI layer between AccessLog and the framework (the activator's OpenAI posts)."""

    def build_middleware_stack(self) -> ASGIApp:
        inner = super().build_middleware_stack()
        if self.front is not None:
            inner = self.front(inner)
        return AccessLog(inner, self.access_metrics, self.access_tracer)
