"""The loop that gives resources back: it applies the pure idle rules of
``warmpool.idle``.

``should_hibernate`` judges from what the proxy sees: requests in flight or queued,
and the last activity (requests, WebSocket messages). A notebook server can be busy
with none of that (a kernel computing for an hour, nobody connected), so before a
``jupyter`` workload is hibernated the reaper also asks the server itself, and
``server_keeps_awake`` decides from its answer.

Traffic can also reach an instance without the proxy (with runtime kubernetes, warm
requests go to the pod through its Service): before any hibernation the reaper asks the
runtime how long the instance itself has been idle (``Workload.server_idle_for``), and a
more recent activity there counts as activity (``note_activity``). Runtimes that cannot
tell (local processes, reached only through the proxy) say None and change nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable

from activator.config.settings import WorkloadSettings
from activator.notebooks import JupyterActivity, ProbeFailed
from activator.states import State
from activator.workload import Workload
from warmpool import Endpoint
from warmpool.idle import server_keeps_awake, should_hibernate

__all__ = ["Probe", "Reaper"]

log = logging.getLogger("dormant.idle")

Probe = Callable[[WorkloadSettings, Endpoint], Awaitable[JupyterActivity]]
"""Asks a notebook server at its endpoint what it is doing (see notebooks.ActivityProbe);
raises ProbeFailed."""


class Reaper:
    """Every ``interval`` seconds: notice dead instances, hibernate idle workloads.
    ``probe`` (when given) is asked about ``jupyter`` workloads before they hibernate.
    After a failed attempt the next one waits at least another ``idle_after``."""

    def __init__(
        self,
        workloads: Iterable[Workload],
        interval: float,
        probe: Probe | None = None,
        after_tick: Callable[[], None] | None = None,
    ) -> None:
        self._workloads = workloads  # read at every tick: a registry may change
        self._after_tick = after_tick
        self._interval = interval
        self._probe = probe
        self._running: dict[str, asyncio.Task[State]] = {}
        self._retry_at: dict[str, float] = {}  # after a failed attempt: not before (monotonic)
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
        for workload in list(self._workloads):
            workload.check_alive()
            busy = self._running.get(workload.name)
            if busy is not None and not busy.done():
                continue
            if time.monotonic() < self._retry_at.get(workload.name, 0.0):
                continue
            if self._idle(workload):
                task = asyncio.create_task(self._hibernate(workload), name=f"idle-{workload.name}")
                self._running[workload.name] = task
        if self._after_tick is not None:
            self._after_tick()

    @staticmethod
    def _idle(workload: Workload) -> bool:
        return should_hibernate(
            serving=workload.state is State.READY,
            in_flight=workload.in_flight,
            waiting=workload.waiting,
            idle_for=workload.idle_for(),
            idle_after=workload.settings.idle_after,
        )

    async def _ask(self, workload: Workload) -> JupyterActivity | None:
        """The notebook server's own view, or None when it cannot be had."""
        endpoint = workload.endpoint
        if self._probe is None or endpoint is None:
            return None
        try:
            return await self._probe(workload.settings, endpoint)
        except ProbeFailed as exc:
            log.warning("%s: notebook server did not say what it is doing: %s", workload.name, exc)
            return None

    async def _hibernate(self, workload: Workload) -> State:
        seen = await workload.server_idle_for()
        if seen is not None and seen < workload.settings.idle_after:
            log.debug("%s: kept awake (its server saw traffic %.1fs ago)", workload.name, seen)
            workload.note_activity(seen)
            return workload.state
        if workload.settings.kind == "jupyter":
            activity = await self._ask(workload)
            ago = server_keeps_awake(
                busy=activity.busy_kernels if activity else None,
                server_idle_for=activity.idle_for if activity else 0.0,
                idle_for=workload.idle_for(),
                idle_after=workload.settings.idle_after,
            )
            if activity is not None and ago is not None:
                log.debug(
                    "%s: kept awake (%d busy kernels, Jupyter active %.1fs ago)",
                    workload.name,
                    activity.busy_kernels,
                    ago,
                )
                workload.note_activity(ago)
                return workload.state
            if not self._idle(workload):  # a request came in while we asked
                return workload.state
        try:
            return await workload.hibernate(f"idle for {workload.idle_for():.0f}s")
        except Exception as exc:  # logged, and the workload keeps serving
            # Try again after another idle period, not at every tick: a dump that fails
            # freezes the server each time, and the cause rarely goes away by itself.
            self._retry_at[workload.name] = time.monotonic() + workload.settings.idle_after
            log.warning(
                "%s: idle hibernation did not happen (next try in %.0fs at the earliest): %s",
                workload.name,
                workload.settings.idle_after,
                exc,
            )
            return workload.state

    async def _loop(self) -> None:
        while True:
            try:
                self.tick()
            except Exception:
                log.exception("idle reaper tick failed")
            await asyncio.sleep(self._interval)
