"""The pod's entrypoint supervisor (``dormant exec``): one served command and its lifecycle.

One owner: every change of ``phase`` goes through ``_to``, checked against ``TRANSITIONS``;
lifecycle operations (start, checkpoint, restore, suspend, resume, terminate) run one at a
time under ``_lock``, and an operation asked for while another runs is refused (409), never
queued. The supervisor reaches the server only through the ``Runtime`` seam and reads the
served port's activity from the kernel (``warmpool.process.sockets``): it is not in the data path.

A checkpoint waits (bounded) until the served port is quiet (``warmpool.process.quiet`` says
exactly when); through the API it then answers 409 while still busy. On SIGTERM
(``terminate``) it waits at most ``drain_timeout``, then checkpoints anyway: the pod is going
away, and keeping the state is better than losing it with the request.

On SIGTERM the pod first stops being ready and serves on for ``term_delay`` (traffic moves
first: Endpoints and proxies lag), then waits for quiet and dumps.

SIGTERM's deadline is ``grace``: it cuts what is in the way. An operation of the control API
waiting for quiet is cut at once (answered 409 ``terminating``); a sleep or wake hook in flight
(``--suspend hooks``) is cut once SIGTERM's quiet budget (``drain_timeout``) is spent, and so are
the hooks ``terminate`` calls itself; a start (restore or boot) is cancelled. Only a dump
already running is let finish: it is bounded by ``grace - drain_timeout`` from its own start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx

import warmpool.lifecycle as rules
from activator.errors import ActivatorError, Conflict, OperationFailed
from activator.supervisor.activity import PortWatch
from activator.supervisor.states import SERVING, TRANSITIONS, ExitCode, Phase
from warmpool import (
    CheckpointFailed,
    Instance,
    InstanceSpec,
    NotSupported,
    ProcessInstance,
    RestoreDeferred,
    ResumeFailed,
    Runtime,
    WarmpoolError,
)
from warmpool.process.quiet import bind_problem
from warmpool.process.sockets import PortActivity, port_activity

P = Phase

__all__ = ["Busy", "PortInUse", "Supervisor", "SupervisorSettings", "Terminating", "Unsupported"]

log = logging.getLogger("dormant.exec")


class Busy(Conflict):
    """The served port has requests in flight: not checkpointed."""

    code = "busy"


class Unsupported(ActivatorError):
    status, code, type = 501, "not_supported", "invalid_request_error"


class Terminating(Conflict):
    """SIGTERM came first: the operation was refused or cut; the supervisor checkpoints (or
    stops, per --on-term) on its own before it exits."""

    code = "terminating"


class PortInUse(Conflict):
    """Another process listens on the served port: nothing was restored or booted."""

    code = "port_in_use"


@dataclass(frozen=True)
class SupervisorSettings:
    """How the supervisor behaves around its server (times in seconds)."""

    quiet: float = 2.0
    """No data on any connection for this long (and nothing unanswered) = quiet."""
    drain_timeout: float = 10.0
    """On SIGTERM: the longest wait for quiet before checkpointing anyway."""
    grace: float = 25.0
    """On SIGTERM: everything (quiet wait, checkpoint, commit) should end within this."""
    health_timeout: float = 2.0
    """One readiness check of the server's health path."""
    on_term: str = "checkpoint"
    """'checkpoint' or 'stop'."""
    term_delay: float = 0.0
    """On SIGTERM, first: readiness fails at once and the server serves on for this long, so
    that Endpoints and every node's proxy stop sending before the quiet wait and the dump."""
    restore_attempts: int = 1
    """Snapshots tried, newest first, before booting (a failed one is marked bad)."""


class Supervisor:
    """Owns one served command through ``runtime``; ``spec.port`` is the served port."""

    def __init__(
        self,
        runtime: Runtime,
        spec: InstanceSpec,
        client: httpx.AsyncClient,
        settings: SupervisorSettings,
        *,
        read_activity: Callable[[int], PortActivity] = port_activity,
        snapshots: Callable[[], list[dict[str, Any]]] = list,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.runtime, self.spec, self.client, self.settings = runtime, spec, client, settings
        self._snapshots, self._clock = snapshots, clock
        self.phase, self.reason = P.WAITING, "waiting for the snapshot volume's lock"
        self._since = clock()
        self._lock = asyncio.Lock()
        self._instance: Instance | None = None
        self._bringup: asyncio.Task[Any] | None = None
        self.terminating = False
        self.died = asyncio.Event()
        self.finished = False
        """The served command exited by itself with status 0 (a Job's command completed)."""
        self.started: dict[str, Any] | None = None
        self.last_checkpoint: dict[str, Any] | None = None
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.watcher = PortWatch(spec.port, settings.quiet, read_activity, clock)
        self._health: tuple[float, bool, str] = (float("-inf"), False, "")
        self._cuttable: tuple[asyncio.Timeout, str] | None = None
        """The running operation's wait SIGTERM may cut, and its kind ('quiet' or 'hook')."""
        self._hooks_by: float | None = None
        """Once terminating: the loop time by which every hook must have answered."""

    # -- state -----------------------------------------------------------------------------

    def _to(self, phase: Phase, reason: str = "") -> None:
        if phase not in TRANSITIONS[self.phase]:
            raise RuntimeError(f"illegal transition {self.phase} -> {phase} ({reason})")
        log.info("%s -> %s%s", self.phase, phase, f": {reason}" if reason else "")
        self.phase, self.reason, self._since = phase, reason, self._clock()

    def _error(self, message: str) -> None:
        self.last_error, self.last_error_at = message, time.time()
        log.error("%s", message)

    def _refuse_if_busy(self, what: str) -> None:
        if self.terminating:
            raise Terminating(f"cannot {what}: the supervisor is terminating (SIGTERM)")
        if self._lock.locked():
            raise Conflict(f"cannot {what} now: {self.phase} ({self.reason}); retry when done")

    @contextlib.asynccontextmanager
    async def _bounded(self, kind: str) -> AsyncIterator[None]:
        """A wait of an operation that SIGTERM may cut (TimeoutError): a 'quiet' wait at once,
        a 'hook' once SIGTERM's quiet budget is spent (``terminate``). A CUDA driver call
        cannot be cut half way (it runs in a thread): it keeps its own bounds."""
        if kind == "hook" and self.spec.suspend != "hooks":
            yield
            return
        async with asyncio.timeout_at(self._cut_at(kind)) as bound:
            self._cuttable = (bound, kind)
            try:
                yield
            finally:
                self._cuttable = None

    def _cut_at(self, kind: str) -> float | None:
        """The loop time by which a wait of ``kind`` must end; None until SIGTERM."""
        if not self.terminating or self._hooks_by is None:
            return None
        return asyncio.get_running_loop().time() if kind == "quiet" else self._hooks_by

    def _cut_what_is_in_the_way(self) -> None:
        """SIGTERM: cancel a start; shorten the running operation's wait (``_bounded``)."""
        if self._bringup is not None and not self._bringup.done():
            self._bringup.cancel()
        if self._cuttable is not None:
            bound, kind = self._cuttable
            at = self._cut_at(kind)
            assert at is not None
            when = bound.when()
            bound.reschedule(at if when is None else min(when, at))
            log.info("SIGTERM: cutting the %s wait of %s", kind, self.phase)

    # -- bringing the server up -----------------------------------------------------------

    async def start(self) -> None:
        """Restore the newest usable snapshot, else boot; returns when the server is ready
        or the start failed (``phase`` says which). Cancelled by ``terminate``."""
        self._bringup = asyncio.current_task()
        try:
            async with self._lock:
                await self._bring_up()
        finally:
            self._bringup = None  # the task may go on (a test's): never cancel it later

    async def _bring_up(self) -> None:
        try:
            await self._restore_or_boot()
        except asyncio.CancelledError:
            # the runtime stopped whatever it had started; a server that was already up
            # stays for ``terminate`` to checkpoint
            if self.phase is not P.READY:
                why = "cancelled: SIGTERM while starting (the snapshots are as they were)"
                self._to(P.STOPPED, why)
            raise

    async def _restore_or_boot(self) -> None:
        taken = await self.watcher.read()
        if taken is not None and taken.listeners:
            where = ", ".join(f"{s.local[0]}:{s.local[1]}" for s in taken.listeners)
            message = (
                f"port {self.spec.port} is taken by another process (listening on {where}); "
                "stop it or choose another --port (nothing was restored, no snapshot touched)"
            )
            if self.phase is not P.WAITING:  # POST /restore: the phase stays as it was
                self._error(message)
                raise PortInUse(f"{message}; then POST /restore again")
            self._to(P.FAILED, f"port {self.spec.port} is already in use ({where})")
            self._error(message)
            return
        started = self._clock()
        command = " ".join(self.spec.with_port(self.spec.port).command)
        steps = rules.Steps(
            restoring=lambda latest: self._to(P.RESTORING, f"restoring snapshot {latest.id}"),
            restore_failed=lambda exc: self._error(f"restore failed, snapshot marked bad: {exc}"),
            booting=lambda why: self._to(P.BOOTING, f"booting {command[:200]}"),
        )
        try:
            instance = await rules.restore_or_boot(
                self.runtime,
                self.spec,
                steps,
                attempts=self.settings.restore_attempts,
            )
        except RestoreDeferred as exc:
            # the environment refused; the snapshot is kept and nothing booted over it
            if P.FAILED in TRANSITIONS[self.phase]:
                self._to(P.FAILED, "the restore was deferred; the snapshot is kept")
            self._error(f"restore deferred (the snapshot is kept): {exc}")
            return
        except Exception as exc:  # a WarmpoolError, or anything the runtime let through
            self._to(P.FAILED, "the boot failed")
            self._error(f"boot failed: {exc}")
            return
        await self._up(instance, "restored" if instance.restored_from else "booted", started)

    async def _up(self, instance: Instance, how: str, started: float) -> None:
        self._instance = instance
        seconds = self._clock() - started
        snapshot = instance.restored_from
        self.started = {"how": how, "snapshot": snapshot, "seconds": round(seconds, 3)}
        self.started["at"] = time.time()
        what = f"restored from {snapshot}" if how == "restored" else "booted"
        self._to(P.READY, f"{what} in {seconds:.2f}s")
        self.watcher.touch()
        activity = await self.watcher.read()
        problem = bind_problem(activity.listeners, self.spec.port) if activity else None
        if problem is not None:
            log.warning("%s", problem[1])

    # -- operations (the control API) ------------------------------------------------------

    async def checkpoint(self, wait: float = 0.0) -> dict[str, Any]:
        """Checkpoint once the served port is quiet (waiting up to ``wait`` s; else Busy)."""
        if self.phase is P.CHECKPOINTED and self.last_checkpoint is not None:
            return {"action": "none", "state": self.phase.value, "snapshot": self.last_checkpoint}
        self._refuse_if_busy("checkpoint")
        async with self._lock:
            if self.phase not in SERVING:
                raise Conflict(f"nothing to checkpoint: {self.phase} ({self.reason})")
            if self.phase is P.SUSPENDED:
                await self._resume()
            if wait > 0:
                log.info("checkpoint: waiting up to %gs for the served port to be quiet", wait)
            try:
                async with self._bounded("quiet"):
                    reasons = await self.watcher.wait_quiet(wait)
            except TimeoutError:
                raise Terminating(
                    "not checkpointed: SIGTERM came while waiting for the served port to be "
                    "quiet; the supervisor checkpoints on its own before it exits"
                ) from None
            if reasons:
                raise Busy(
                    f"the served port has requests in flight, not checkpointing: "
                    f"{'; '.join(reasons[:5])}",
                    extra={"reasons": reasons[:20]},
                )
            info = await self._checkpoint()
        return {"action": "checkpointed", "state": self.phase.value, "snapshot": info}

    async def _checkpoint(self) -> dict[str, Any]:
        assert self._instance is not None
        self._to(P.CHECKPOINTING, "dump and commit")
        try:
            info = await self.runtime.checkpoint(self._instance)
        except NotSupported as exc:
            self._to(P.READY, "still serving: this runtime cannot checkpoint")
            raise Unsupported(f"cannot checkpoint here: {exc}") from exc
        except CheckpointFailed as exc:
            self._instance = rules.survivor(exc, self._instance)
            if self._instance is not None:
                self._to(P.READY, "the checkpoint failed; still serving")
            else:
                self._to(P.FAILED, "the checkpoint failed and the server is gone")
            self._error(f"checkpoint failed: {exc}")
            raise OperationFailed(f"checkpoint failed: {exc}; state now {self.phase}") from exc
        self._instance = None
        self.last_checkpoint = {
            "id": info.id,
            "bytes": info.bytes,
            "seconds": round(info.checkpoint_seconds, 3),
            "at": time.time(),
        }
        self._to(P.CHECKPOINTED, f"snapshot {info.id} committed ({info.bytes} bytes)")
        return self.last_checkpoint

    async def restore(self) -> dict[str, Any]:
        """Restore the newest snapshot, else boot (after a checkpoint or a failure)."""
        if self.phase is P.READY:
            return {"action": "none", "state": self.phase.value, "started": self.started}
        self._refuse_if_busy("restore")
        if self.phase not in (P.CHECKPOINTED, P.FAILED):
            raise Conflict(f"cannot restore while {self.phase} ({self.reason})")
        task = asyncio.ensure_future(self.start())
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            raise OperationFailed("cancelled: the supervisor is terminating") from None
        if self.phase is not P.READY or self.started is None:
            raise OperationFailed(f"neither a restore nor a boot worked: {self.last_error}")
        return {"action": self.started["how"], "state": self.phase.value, "started": self.started}

    async def suspend(self) -> dict[str, Any]:
        if self.spec.suspend == "none":
            raise Unsupported("suspend is off: start dormant exec with --suspend hooks or cuda")
        if self.phase is P.SUSPENDED:
            return {"action": "none", "state": self.phase.value}
        self._refuse_if_busy("suspend")
        async with self._lock:
            if self.phase is not P.READY or self._instance is None:
                raise Conflict(f"cannot suspend while {self.phase} ({self.reason})")
            self._to(P.SUSPENDING, f"engine {self.spec.suspend}")
            started = self._clock()
            try:
                async with self._bounded("hook"):
                    await self.runtime.suspend(self._instance)
            except TimeoutError:
                self._to(P.READY, "the suspend was cut by SIGTERM; treated as still serving")
                self._error("suspend cut: its hook had not answered when SIGTERM's time ran out")
                raise Terminating("suspend cut by SIGTERM; the server is checkpointed") from None
            except WarmpoolError as exc:
                self._to(P.READY, "the suspend failed; still serving")
                self._error(f"suspend failed: {exc}")
                error = Unsupported if isinstance(exc, NotSupported) else OperationFailed
                raise error(f"suspend failed: {exc}") from exc
            seconds = self._clock() - started
            self._to(P.SUSPENDED, f"device memory parked in host RAM in {seconds:.2f}s")
        return {"action": "suspended", "state": self.phase.value, "seconds": round(seconds, 3)}

    async def resume(self) -> dict[str, Any]:
        if self.phase is P.READY:
            return {"action": "none", "state": self.phase.value}
        self._refuse_if_busy("resume")
        async with self._lock:
            if self.phase is not P.SUSPENDED:
                raise Conflict(f"cannot resume while {self.phase} ({self.reason})")
            seconds = await self._resume()
        return {"action": "resumed", "state": self.phase.value, "seconds": round(seconds, 3)}

    async def _resume(self) -> float:
        assert self._instance is not None
        self._to(P.RESUMING, f"engine {self.spec.suspend}")
        started = self._clock()
        try:
            async with self._bounded("hook"):
                exc = await rules.resume_or_stop(self.runtime, self._instance)
        except TimeoutError:
            await self._stop_quietly()  # half woken: what it holds cannot be trusted
            exc = ResumeFailed("the wake did not finish within what SIGTERM's --grace left")
        if exc is not None:
            self._instance = None
            self._to(P.FAILED, "the resume failed; the server was stopped (POST /restore)")
            self._error(f"resume failed: {exc}")
            raise OperationFailed(f"resume failed, server stopped: {exc}") from exc
        seconds = self._clock() - started
        self._to(P.READY, f"resumed in {seconds:.2f}s")
        return seconds

    async def close(self) -> None:
        """Stop whatever still runs (the supervisor is leaving on an unexpected error)."""
        if self._instance is not None:
            log.warning("stopping the server: the supervisor is exiting")
            await self._stop_quietly()

    async def _stop_quietly(self) -> None:
        if self._instance is not None:
            with contextlib.suppress(WarmpoolError):
                await self.runtime.stop(self._instance)
            self._instance = None

    # -- watching and terminating ----------------------------------------------------------

    async def watch(self, interval: float = 1.0) -> None:
        """Until cancelled: notice a server that exits by itself (sets ``died``) and sample
        the served port's activity while serving."""
        while True:
            await asyncio.sleep(interval)
            if self.phase not in SERVING or self._lock.locked() or self.terminating:
                continue
            if self._instance is not None and not self._instance.alive():
                why = self._instance.exit_reason()
                if isinstance(self._instance, ProcessInstance):
                    self.finished = self._instance.poll() == 0
                await self._stop_quietly()  # releases what the runtime holds for it
                self._to(P.FAILED, "the served command exited")
                self._error(f"the served command exited by itself: {why}")
                self.died.set()
                return
            await self.watcher.read()

    async def terminate(self) -> int:
        """SIGTERM: checkpoint (or stop, per ``on_term``) within ``grace``; the exit code."""
        self.terminating = True
        deadline = self._clock() + self.settings.grace
        self._hooks_by = asyncio.get_running_loop().time() + self.settings.drain_timeout
        self._cut_what_is_in_the_way()
        if self._bringup is not None and not self._bringup.done():
            with contextlib.suppress(asyncio.CancelledError):
                await self._bringup
        async with self._lock:
            if self.phase is P.CHECKPOINTED:
                return ExitCode.OK
            if self.phase not in SERVING:
                failed = self.phase is P.FAILED
                if self.phase is not P.STOPPED:
                    self._to(P.STOPPED, f"terminated while {self.phase}")
                # nothing ran, so nothing new to save: the snapshots are as they were
                return ExitCode.CHECKPOINT_FAILED if failed else ExitCode.OK
            await self._move_traffic_away()
            if self.settings.on_term == "stop":
                return await self._stop("SIGTERM with --on-term stop")
            return await self._checkpoint_on_term(deadline)

    async def _move_traffic_away(self) -> None:
        """Readiness already fails (``terminating``): serve on for ``term_delay`` while the
        Endpoints and the proxies that read them catch up; a request routed by a stale view
        meanwhile is still answered, not cut by the dump."""
        delay = self.settings.term_delay
        if delay > 0:
            self.reason = f"SIGTERM: not ready; serving on {delay:g}s while traffic moves away"
            log.info("SIGTERM: readiness fails now; serving on %.1fs before the quiet wait", delay)
            await asyncio.sleep(delay)

    async def _stop(self, why: str) -> int:
        self._to(P.STOPPING, why)
        await self._stop_quietly()
        self._to(P.STOPPED, why)
        return ExitCode.OK

    async def _checkpoint_on_term(self, deadline: float) -> int:
        """Resume and quiet within ``drain_timeout`` of SIGTERM (so that the dump gets the
        rest of ``grace``), checkpoint; again (at most 3 times) when a failed attempt left
        the server serving and the time left allows another."""
        quiet_by = min(deadline, self._clock() + self.settings.drain_timeout)
        try:
            if self.phase is P.SUSPENDED:
                await self._resume()
            for attempt in range(1, 4):
                began = self._clock()
                until = quiet_by if attempt == 1 else deadline
                wait = min(self.settings.drain_timeout, max(0.0, until - began))
                log.info("waiting up to %.1fs for the served port to be quiet", wait)
                reasons = await self.watcher.wait_quiet(wait)
                if reasons:
                    log.warning("checkpointing anyway after %.1fs: %s", wait, "; ".join(reasons))
                try:
                    await self._checkpoint()
                    return ExitCode.OK
                except OperationFailed:
                    left = deadline - self._clock()
                    if self.phase is not P.READY or left < 2 * (self._clock() - began):
                        break
                    log.warning("checkpoint attempt %d failed; %.1fs left: again", attempt, left)
        except (OperationFailed, Unsupported) as exc:
            self._error(f"SIGTERM: {exc}")
        if self._instance is not None:
            await self._stop(f"SIGTERM: the checkpoint failed ({self.last_error})")
        elif self.phase is not P.STOPPED:
            self._to(P.STOPPED, "SIGTERM: the checkpoint failed")
        return ExitCode.CHECKPOINT_FAILED

    # -- views -----------------------------------------------------------------------------

    async def readiness(self) -> tuple[bool, str, str]:
        """(ready, code, why): ready only when serving and the health path answers 200."""
        if self.terminating:
            return False, "terminating", "SIGTERM: traffic moves away before the checkpoint"
        if self.phase is not P.READY or self._instance is None:
            return False, self.phase.value, self.reason
        if not self._instance.alive():
            return False, "exited", self._instance.exit_reason()
        at, ok, why = self._health
        if self._clock() - at > 1.0:
            url = self._instance.endpoint.url + self.spec.health_path
            try:
                response = await self.client.get(url, timeout=self.settings.health_timeout)
                ok, why = response.status_code == 200, f"{url} answered {response.status_code}"
            except httpx.HTTPError as exc:
                ok, why = False, f"{url}: {type(exc).__name__}"
            self._health = (self._clock(), ok, why)
        return (True, "ready", self.reason) if ok else (False, "unhealthy", why)

    def status(self) -> dict[str, Any]:
        instance = self._instance
        facts = instance.describe() if instance is not None else {}
        caps = self.runtime.capabilities
        return {
            "name": self.spec.name,
            "state": self.phase.value,
            "reason": self.reason,
            "since_s": round(self._clock() - self._since, 3),
            "started": self.started,
            "restored_from": instance.restored_from if instance is not None else None,
            "pid": facts.get("pid"),
            "port": self.spec.port,
            "endpoint": instance.endpoint.url if instance is not None else None,
            "instance": facts or None,
            "engine": {"checkpoint": caps.engine, "why": caps.checkpoint_why or None},
            "suspend": self.spec.suspend,
            "on_term": self.settings.on_term,
            "terminating": self.terminating,
            "last_checkpoint": self.last_checkpoint,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "snapshots": self._snapshots(),
            "activity": self.watcher.view(),
        }
