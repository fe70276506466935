"""Where the activator's workloads come from, chosen by the ``runtime:`` setting's name.

Each source is a module named in ``SOURCES`` (imported only when chosen, so the Kubernetes
client stays an optional extra for local users) with one function::

    open_source(settings, engine, metrics) -> Source

that checks what it needs *now* (a ``ConfigError`` before anything starts) and returns a
``Source``: ``workloads(client)``, an async context manager that serves the workloads while
the activator runs and shuts them down (``on_shutdown``) at its exit.

Both sources get the same idle reaper from ``serve_workloads``; they differ only in what they give
it: local workloads have an activity probe for notebooks (the token files are in this
machine's state directory) and a warm pool whose metrics are sampled after each tick;
cluster workloads are model servers whose pods report their own activity.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from activator.reaper import Probe, Reaper

if TYPE_CHECKING:
    import httpx

    from activator.config.settings import Settings
    from activator.metrics import Metrics
    from activator.registry import Registry
    from warmpool.system import EngineSetup

__all__ = ["SOURCES", "Served", "Source", "open_source", "serve_workloads"]

SOURCES = {
    "local": "activator.sources.local",
    "kubernetes": "activator.sources.kubernetes",
}
"""runtime name -> the module whose ``open_source`` builds it."""


@dataclass(frozen=True)
class Served:
    """What a source serves while the activator runs, and what its reaper needs."""

    registry: Registry
    probe: Probe | None = None
    after_tick: Callable[[], None] | None = None
    hand_over: Callable[[], Awaitable[None]] | None = None
    """On SIGTERM, before the activator stops accepting: give up what another activator can
    take over (runtime kubernetes: the policies' Leases), bounded; None: nothing to give."""


class Source(Protocol):
    def workloads(self, client: httpx.AsyncClient) -> AbstractAsyncContextManager[Served]: ...


def open_source(settings: Settings, engine: EngineSetup, metrics: Metrics) -> Source:
    """The source ``settings.runtime`` names, checked and ready to serve."""
    module = importlib.import_module(SOURCES[settings.runtime])
    source: Source = module.open_source(settings, engine, metrics)
    return source


@contextlib.asynccontextmanager
async def serve_workloads(
    source: Source, settings: Settings, client: httpx.AsyncClient
) -> AsyncIterator[Served]:
    """The source's workloads with their idle reaper; at the end the reaper stops first,
    then the source shuts its workloads down."""
    async with source.workloads(client) as served:
        reaper = Reaper(
            served.registry, settings.reap_interval, served.probe, after_tick=served.after_tick
        )
        reaper.start()
        try:
            yield served
        finally:
            await reaper.stop()
