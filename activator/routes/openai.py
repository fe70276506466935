"""The OpenAI surface: ``GET /v1/models`` lists every configured model whatever its
workload's state (a hibernated model never disappears), ``GET /v1/models/{id}``, and every
``POST /v1/*`` routed by the ``model`` named in its body: a JSON object's ``model`` key, or
the ``model`` field of a form (``multipart/form-data``, as ``/v1/audio/transcriptions`` and
``/v1/images/edits`` send, or ``application/x-www-form-urlencoded``). The body is forwarded
byte for byte either way."""

from __future__ import annotations

import json
from collections.abc import Callable
from email.parser import BytesParser
from email.policy import HTTP
from urllib.parse import parse_qs

from fastapi import APIRouter, Request, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from activator.edge import Observer, answer_error
from activator.errors import BadRequest, MethodNotAllowed
from activator.registry import Registry, confined
from activator.routes.handoff import Handoff, read_body
from activator.workload import Workload

__all__ = ["OpenAIPosts", "openai_router", "parse_openai"]


def _form_fields(body: bytes, content_type: str) -> dict[str, str]:
    """The text fields of a form body (files are skipped; the body is bounded already)."""
    if content_type.lower().startswith("application/x-www-form-urlencoded"):
        try:
            pairs = parse_qs(body.decode("latin-1"), keep_blank_values=True)
        except ValueError as exc:
            raise BadRequest(f"request body is not a valid form: {exc}") from None
        return {k: v[0] for k, v in pairs.items()}
    head = f"Content-Type: {content_type}\r\n\r\n".encode("latin-1", "replace")
    message = BytesParser(policy=HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise BadRequest("request body is not a valid multipart form (no boundary?)")
    fields = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if isinstance(name, str) and part.get_filename() is None:
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                fields[name] = payload.decode("utf-8", "replace").strip()
    return fields


def parse_openai(body: bytes, content_type: str = "application/json") -> tuple[str, bool]:
    """The `model` a request names, and whether it asks for a stream: from a JSON object, or
    from a form's fields (``content_type`` multipart/form-data or urlencoded)."""
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind in ("multipart/form-data", "application/x-www-form-urlencoded"):
        fields = _form_fields(body, content_type)
        if not fields.get("model"):
            raise BadRequest('request form needs a "model" field naming the model to use')
        return fields["model"], fields.get("stream", "").lower() == "true"
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object")
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest('request body needs a "model" string naming the model to use')
    return model, data.get("stream") is True


class OpenAIPosts:
    """ASGI, in front of the framework: every ``POST /v1/*`` goes straight to the handler
    (read the body, find the model's workload, hand off), everything else to ``app``. A
    request that streams thousands of tokens costs the same through either; a burst of
    new streams costs noticeably less without the framework's routing, dependency and
    middleware layers per request (``make bench-proxy``). Errors take the one shape
    (``activator.edge``) and are observed as the framework's handlers would."""

    def __init__(
        self,
        app: ASGIApp,
        registry: Callable[[], Registry],
        handoff: Handoff,
        max_body: int,
        observe: Observer | None = None,
    ) -> None:
        self.app, self.registry, self.handoff = app, registry, handoff
        self.max_body, self.observe = max_body, observe

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or not scope["path"].startswith("/v1/")
        ):
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            try:
                response = await self.post(request)
            except Exception as exc:
                response = answer_error(request, exc, self.observe)
            await response(scope, receive, sending)
        except Exception as exc:
            if started:
                raise  # half answered: the connection is dropped, as the framework does
            await answer_error(request, exc, self.observe)(scope, receive, send)

    async def post(self, request: Request) -> Response:
        path = confined(request.scope["raw_path"].decode("latin-1"), "/v1")
        body = await read_body(request, self.max_body)
        model, stream = parse_openai(body, request.headers.get("content-type", ""))
        return await self.handoff(request, self.registry().by_model(model), body, stream, path)


def openai_router(registry: Callable[[], Registry], started: float) -> APIRouter:
    """``GET /v1/models``, ``GET /v1/models/{id}`` and the 405s of ``/v1/*`` (``POST`` is
    :class:`OpenAIPosts`'); ``started`` (epoch seconds) is every model's ``created``."""
    router = APIRouter()

    def model_entry(model: str, workload: Workload) -> dict[str, object]:
        return {
            "id": model,
            "object": "model",
            "created": int(started),
            "owned_by": "dormant",
            "dormant": {"workload": workload.name, "state": workload.state.value},
        }

    @router.get("/v1/models")
    async def list_models() -> dict[str, object]:
        """Every configured model, whatever its workload's state: hibernated models stay listed."""
        reg = registry()
        return {"object": "list", "data": [model_entry(m, reg.by_model(m)) for m in reg.models]}

    @router.get("/v1/models/{model:path}")
    async def get_model(model: str) -> dict[str, object]:
        return model_entry(model, registry().by_model(model))

    @router.api_route(
        "/v1/{path:path}",
        methods=["GET", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"],
        include_in_schema=False,
    )
    async def openai_wrong_method(request: Request, path: str) -> Response:
        allow = "GET" if path == "models" or path.startswith("models/") else "POST"
        raise MethodNotAllowed(
            f"{request.method} is not allowed on /v1/{path}; it takes {allow}",
            headers={"Allow": allow},
        )

    return router
