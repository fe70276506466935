"""When do we give resources back? A pure rule, and the loop that applies it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable

from .states import State
from .workload import Workload

__all__ = ["Reaper", "should_hibernate"]

log = logging.getLogger("dormant.idle")


def should_hibernate(
    *, state: State, in_flight: int, waiting: int, idle_for: float, idle_after: float
) -> bool:
    """A ready workload with nothing in flight or queued, idle for ``idle_after`` seconds
    (0 disables idle hibernation)."""
    return (
        idle_after > 0
        and state is State.READY
        and in_flight == 0
        and waiting == 0
        and idle_for >= idle_after
    )


class Reaper:
    """Every ``interval`` seconds: notice dead instances, hibernate idle workloads."""

    def __init__(self, workloads: Iterable[Workload], interval: float) -> None:
        self._workloads = list(workloads)
        self._interval = interval
        self._running: dict[str, asyncio.Task[State]] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="idle-reaper")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._running.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def tick(self) -> None:
        for workload in self._workloads:
            workload.check_alive()
            busy = self._running.get(workload.name)
            if busy is not None and not busy.done():
                continue
            if should_hibernate(
                state=workload.state,
                in_flight=workload.in_flight,
                waiting=workload.waiting,
                idle_for=workload.idle_for(),
                idle_after=workload.settings.idle_after,
            ):
                task = asyncio.create_task(self._hibernate(workload), name=f"idle-{workload.name}")
                self._running[workload.name] = task

    async def _hibernate(self, workload: Workload) -> State:
        try:
            return await workload.hibernate(f"idle for {workload.idle_for():.0f}s")
        except Exception as exc:  # logged, and the workload keeps serving
            log.warning("%s: idle hibernation did not happen: %s", workload.name, exc)
            return workload.state

    async def _loop(self) -> None:
        while True:
            try:
                self.tick()
            except Exception:
                log.exception("idle reaper tick failed")
            await asyncio.sleep(self._interval)
