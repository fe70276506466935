"""runtime local: the configured workloads as process trees on this machine.

The workloads come from the config file; they run under a ``LocalRuntime`` (PID namespaces,
cgroups, snapshots in the state directory) and, when ``device:`` is set, share a warm pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from activator.config.settings import ConfigError, Settings, pool_problems
from activator.errors import WakeFailed
from activator.notebooks import ActivityProbe
from activator.registry import Registry
from activator.sources import Served
from activator.specs import SpecFactory, spec_factory
from activator.workload import Workload
from snapshots import SnapshotStore
from warmpool import WarmpoolError, format_size, open_device
from warmpool.pool import Pool
from warmpool.process.cgroup import CgroupTree
from warmpool.process.privileges import problem as capabilities_problem
from warmpool.process.statelock import StateLock, held_here
from warmpool.runtimes.local import LocalRuntime

if TYPE_CHECKING:
    from pathlib import Path

    import httpx

    from activator.metrics import Metrics
    from warmpool.system import EngineSetup

__all__ = ["LocalSource", "make_pool", "open_source"]

log = logging.getLogger("dormant.activator")


def make_pool(settings: Settings, metrics: Metrics) -> Pool | None:
    """The warm pool of ``settings.device`` (None without one). Raises ConfigError when the
    device cannot be opened or a workload can never fit in its budget."""
    device_settings = settings.device
    if device_settings is None:
        return None
    try:
        device = open_device(
            device_settings.kind, device_settings.memory_budget, device_settings.index
        )
    except (ValueError, WarmpoolError) as exc:
        raise ConfigError(f"device: {exc}") from exc
    total = device_settings.memory_budget or device.total()
    budget = total - device_settings.reserve
    if budget <= 0:
        raise ConfigError(
            f"device.reserve: {format_size(device_settings.reserve)} leaves nothing of the "
            f"device's {format_size(total)}"
        )
    for problem in pool_problems(settings.workloads, budget):
        raise ConfigError(f"device: {problem}")
    metrics.pool_budget.set(budget)
    log.info("warm pool: %s, budget %s", device.kind, format_size(budget))
    return Pool(
        budget,
        device,
        kind=device.kind,
        max_defer=device_settings.max_defer,
        suspend_frees=device.kind != "cpu",
        on_thrash=lambda name: metrics.thrash.labels(name).inc(),
    )


def _expect(runtime: LocalRuntime, specs: list[SpecFactory]) -> None:
    """Tell the store what each workload starts now, before its state is read: a snapshot of
    another command, env or cwd is 'stale' (kept, never restored) from the start."""
    if runtime.engine is None:
        return  # no snapshots here
    for build in specs:
        try:
            runtime.expect(build())
        except WakeFailed as exc:  # its spec cannot be built yet: the first wake will say
            log.warning("%s", exc)


def _pool_metrics(pool: Pool, metrics: Metrics) -> None:
    for name, member in pool.view()["members"].items():
        metrics.device_memory.labels(name).set(member["held_bytes"] or 0)
    metrics.pool_used.set(pool.used())


class LocalSource:
    """The config's workloads on this machine (see the module docstring)."""

    def __init__(
        self, settings: Settings, engine: EngineSetup, metrics: Metrics, pool: Pool | None
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.metrics = metrics
        self.pool = pool

    @contextlib.asynccontextmanager
    async def workloads(self, client: httpx.AsyncClient) -> AsyncIterator[Served]:
        state_dir = self.settings.state_path
        # What an earlier Dormant left is cleaned only by the state dir's owner (`dormant up`
        # took its lock before anything started; any other caller takes it here).
        lock = None if held_here(state_dir) else StateLock(state_dir)
        if lock is not None and not lock.try_acquire():
            raise ConfigError(
                f"state_dir {state_dir} is in use by another Dormant ({lock.holder()})"
            )
        try:
            async with self._workloads(client, state_dir) as served:
                yield served
        finally:
            if lock is not None:
                lock.release()

    @contextlib.asynccontextmanager
    async def _workloads(self, client: httpx.AsyncClient, state_dir: Path) -> AsyncIterator[Served]:
        settings, setup, pool = self.settings, self.engine, self.pool
        store = SnapshotStore(state_dir / "snapshots")
        removed = store.clean_partial()
        if removed:
            log.warning("removed %d half-written snapshot(s) from an earlier crash", len(removed))
        runtime = LocalRuntime(
            store,
            state_dir / "work",
            setup.criu,
            client,
            CgroupTree(state_dir),
            engine_why=setup.choice.reason,
            pid_namespaces=setup.pidns[0],
            drop_caps=settings.drop_capabilities,
        )
        if runtime.caps is not None and (problem := capabilities_problem()) is not None:
            raise ConfigError(f"{problem}; or set drop_capabilities: false")
        if not setup.pidns[0]:
            log.warning(
                "instances run without a PID namespace of their own (%s): each is its "
                "command in a session of its own, stopped by its process group; nothing is "
                "checkpointed (engine restart)",
                setup.pidns[1],
            )
        await asyncio.to_thread(runtime.clean_leftovers)
        specs = [spec_factory(w, state_dir) for w in settings.workloads]
        await asyncio.to_thread(_expect, runtime, specs)
        workloads = [
            Workload(w, runtime, self.metrics, spec, pool=pool)
            for w, spec in zip(settings.workloads, specs, strict=True)
        ]
        if pool is not None:
            for workload in workloads:
                pool.join(workload, declared=workload.settings.memory or 0)
        log.info("engine: %s (%s)", setup.choice.name, setup.choice.reason)
        if runtime.cgroups is not None and not runtime.cgroups.available():
            log.warning(
                "instances run without cgroups (%s): a killed Dormant may leave a "
                "half-restored instance running until the next start",
                runtime.cgroups.why_not,
            )
        for w in workloads:
            log.info("workload %s: %s", w.name, w.state)
        metrics = self.metrics
        try:
            yield Served(
                Registry(workloads, pool),
                ActivityProbe(client, state_dir),
                after_tick=(lambda: _pool_metrics(pool, metrics)) if pool is not None else None,
            )
        finally:
            await asyncio.gather(*(w.shutdown(settings.on_shutdown) for w in workloads))
            if runtime.cgroups is not None:
                runtime.cgroups.close()  # the parent group, once no instance is left in it


def open_source(settings: Settings, engine: EngineSetup, metrics: Metrics) -> LocalSource:
    """runtime local, with its warm pool's device opened now (ConfigError if it cannot be)."""
    return LocalSource(settings, engine, metrics, make_pool(settings, metrics))
