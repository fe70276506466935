"""The OpenAI surface: ``GET /v1/models`` lists every configured model whatever its
workload's state (a hibernated model never disappears), ``GET /v1/models/{id}``, and every
``POST /v1/*`` routed by the ``model`` named in its JSON body."""

from __future__ import annotations

import json
from collections.abc import Callable

from fastapi import APIRouter, Request, Response

from activator.errors import BadRequest, MethodNotAllowed
from activator.registry import Registry, confined
from activator.routes.handoff import Handoff, read_body
from activator.workload import Workload

__all__ = ["openai_router", "parse_openai"]


def parse_openai(body: bytes) -> tuple[str, bool]:
    """The `model` a request names, and whether it asks for a stream."""
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


def openai_router(
    registry: Callable[[], Registry], handoff: Handoff, max_body: int, started: float
) -> APIRouter:
    """The routes above; ``started`` (epoch seconds) is every model's ``created``."""
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

    @router.post("/v1/{path:path}")
    async def openai(request: Request, path: str) -> Response:
        path = confined(request.scope["raw_path"].decode("latin-1"), "/v1")
        body = await read_body(request, max_body)
        model, stream = parse_openai(body)
        return await handoff(request, registry().by_model(model), body, stream, path)

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
