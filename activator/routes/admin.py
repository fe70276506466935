"""The admin API under /-/: workloads, hibernate, wake, snapshots, health; and /metrics.
Bearer-token protected (compared in constant time) except the health probes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from fastapi import APIRouter, Request, Response

from activator.edge import authorize
from activator.errors import NotFound, OperationFailed
from activator.metrics import Metrics
from activator.registry import Registry
from snapshots import SnapshotError, SnapshotStore
from warmpool import WarmpoolError
from warmpool.system import EngineSetup

__all__ = ["admin_router", "health_router", "metrics_router"]


def health_router(registry: Callable[[], Registry]) -> APIRouter:
    """Liveness and readiness: open, and served on every listener."""
    router = APIRouter(prefix="/-")

    @router.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz")
    async def readyz() -> dict[str, object]:
        return {"status": "ok", "workloads": len(registry())}

    return router


def admin_router(registry: Callable[[], Registry], token: str, engine: EngineSetup) -> APIRouter:
    """Workloads, hibernate, wake: behind the bearer token when one is set."""
    router = APIRouter(prefix="/-")

    @router.get("/workloads")
    async def workloads(request: Request) -> dict[str, object]:
        authorize(request, token)
        reg = registry()
        return {
            "engine": {"name": engine.choice.name, "reason": engine.choice.reason},
            "pool": reg.pool.view() if reg.pool is not None else None,
            "workloads": [w.view() for w in reg],
        }

    @router.get("/workloads/{name}")
    async def workload_detail(request: Request, name: str) -> dict[str, object]:
        authorize(request, token)
        return registry().by_name(name).view()

    @router.post("/workloads/{name}/hibernate")
    async def hibernate(request: Request, name: str) -> dict[str, object]:
        authorize(request, token)
        workload = registry().by_name(name)
        try:
            await workload.hibernate("admin request")
        except WarmpoolError as exc:
            raise OperationFailed(
                f"hibernate failed: {exc}; {name} is {workload.state}", workload=name
            ) from exc
        return workload.view()

    @router.get("/snapshots")
    async def snapshots(request: Request, workload: str | None = None) -> dict[str, object]:
        """The snapshot store this activator uses (an absolute path) and every entry in
        it with its status and reason: `dormant snapshots` asks here, to read that store."""
        authorize(request, token)
        settings = getattr(request.app.state, "settings", None)
        if settings is None:
            raise NotFound("this listener does not know the activator's snapshot store")
        root = (settings.state_path / "snapshots").resolve()
        try:
            entries = await asyncio.to_thread(SnapshotStore(root).entries, workload)
        except SnapshotError as exc:
            raise OperationFailed(f"reading the snapshot store {root} failed: {exc}") from exc
        return {"store": str(root), "entries": [e.to_dict() for e in entries]}

    @router.post("/workloads/{name}/wake")
    async def wake(request: Request, name: str) -> dict[str, object]:
        authorize(request, token)
        workload = registry().by_name(name)
        await workload.wake()
        return workload.view()

    return router


def metrics_router(metrics: Metrics, token: str) -> APIRouter:
    """Prometheus at ``GET /metrics``, behind ``token`` when one is set."""
    router = APIRouter()

    @router.get("/metrics")
    async def prometheus(request: Request) -> Response:
        authorize(request, token, "/metrics")
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    return router
