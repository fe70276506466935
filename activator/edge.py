"""The edge of Dormant's two HTTP servers (the activator and ``dormant exec``'s control API):
the one JSON error shape, the mapping of every error to it, and bearer-token checks.

Errors are raised as ``ActivatorError`` subclasses (``activator.errors``) anywhere below and
turned into a response here, once: ``{"error": {"message", "type", "code"}}`` with the
error's status and headers. Starlette's own 404/405 and FastAPI's validation errors take
the same shape; an unexpected exception is a 500 that names only its type (the log has
the traceback).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from activator.errors import ActivatorError, BadRequest, MethodNotAllowed, NotFound, Unauthorized

__all__ = ["answer_error", "authorize", "error_response", "install_error_handlers"]

log = logging.getLogger("dormant.activator")

Observer = Callable[[Request, ActivatorError], None]
"""Called with each error before it is answered (the activator records its access line)."""


RETRY_AFTER = "5"
"""Retry-After (seconds) on a 503 or 504 that does not say better itself."""


def error_response(exc: ActivatorError) -> JSONResponse:
    """``exc`` in the one error shape, with its status and headers (a 503 or 504 always with
    a Retry-After: the client may come back; the body never names an internal address)."""
    headers = dict(exc.headers)
    if exc.status in (503, 504) and not any(k.lower() == "retry-after" for k in headers):
        headers["Retry-After"] = RETRY_AFTER
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


def authorize(request: Request, token: str, area: str = "admin API") -> None:
    """Nothing when ``token`` is empty or the request carries it as a bearer token
    (compared in constant time); else 401."""
    if not token:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), token.encode()):
        raise Unauthorized(
            f"{area}: missing or wrong bearer token (send 'Authorization: Bearer TOKEN')",
            headers={"WWW-Authenticate": "Bearer"},
        )


def _from_http_exception(request: Request, exc: HTTPException) -> ActivatorError:
    """Starlette's own 404/405 (routes no handler matched) in the one error shape."""
    path = request.scope.get("raw_path", b"").decode("latin-1") or request.url.path
    error: ActivatorError
    if exc.status_code == 404:
        error = NotFound(f"no route for {path} here")
    elif exc.status_code == 405:
        error = MethodNotAllowed(
            f"{request.method} is not allowed on {path}", headers=dict(exc.headers or {})
        )
    else:
        error = ActivatorError(str(exc.detail), headers=dict(exc.headers or {}))
        error.status, error.code = exc.status_code, f"http_{exc.status_code}"
    return error


def answer_error(request: Request, exc: Exception, observe: Observer | None = None) -> Response:
    """The answer to ``exc``: an ActivatorError in its shape (after ``observe``), anything
    else a logged 500 that names only its type."""
    if isinstance(exc, ActivatorError):
        if observe is not None:
            observe(request, exc)
        return error_response(exc)
    log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse(
        {
            "error": {
                "message": f"internal error: {type(exc).__name__}",
                "type": "server_error",
                "code": "internal_error",
            }
        },
        status_code=500,
    )


def install_error_handlers(app: FastAPI, observe: Observer | None = None) -> None:
    """Answer every error ``app`` raises in the one shape (see the module's docstring)."""

    @app.exception_handler(ActivatorError)
    async def _activator_error(request: Request, exc: ActivatorError) -> Response:
        return answer_error(request, exc, observe)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> Response:
        return await _activator_error(request, _from_http_exception(request, exc))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        return await _activator_error(request, BadRequest(f"invalid request: {exc.errors()}"))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        return answer_error(request, exc)
