"""``dormant exec``, composed: options, the snapshot volume's lock, the runtime, the control
server and the signals, in one visible place (``run``).

Order: check that the served command's capabilities can be dropped (unless --keep-caps) →
bind the control address (so probes answer at once) → wait for the volume's lock →
clean what a killed predecessor left → restore or boot → serve until SIGTERM/SIGINT or the
server exits → checkpoint or stop → stop the control server → release the lock → exit code.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import uvicorn

from activator.supervisor.api import create_control_app
from activator.supervisor.lifecycle import Supervisor
from activator.supervisor.options import ExecOptions, UsageError
from activator.supervisor.states import ExitCode, after_server_exit
from snapshots import (
    CriuEngine,
    SnapshotError,
    SnapshotStore,
)
from warmpool import CgroupTree, LocalRuntime
from warmpool.process.privileges import problem as capabilities_problem
from warmpool.process.statelock import StateLock as VolumeLock
from warmpool.system import probe_engine

__all__ = ["VolumeLock", "run"]

log = logging.getLogger("dormant.exec")


def _engine(requested: str) -> tuple[CriuEngine | None, str]:
    """The checkpoint engine (None: restart) and why; UsageError when criu is demanded
    but cannot work."""
    try:
        setup = probe_engine(requested)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    if not setup.pidns[0]:
        raise UsageError(f"cannot run the command in its own PID namespace: {setup.pidns[1]}")
    return setup.criu, setup.choice.reason


def _capabilities(keep: bool) -> None:
    """UsageError when the served command's capabilities are to be dropped but cannot be."""
    if not keep and (problem := capabilities_problem()) is not None:
        raise UsageError(f"{problem}; or pass --keep-caps to serve the command with them")


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UsageError(f"--control {host}:{port}: cannot listen ({exc.strerror or exc})") from exc
    sock.listen(128)
    sock.set_inheritable(False)
    return sock


def run(options: ExecOptions) -> int:
    """Run ``dormant exec`` to the end; returns the exit code (``ExitCode``)."""
    logging.basicConfig(
        level=options.log_level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        store = SnapshotStore(options.snapshots)
        engine, why = _engine(options.engine)
        _capabilities(options.keep_caps)
        control = _listen(*options.control)
    except (UsageError, SnapshotError) as exc:
        print(f"dormant exec: {exc}", file=sys.stderr, flush=True)
        return ExitCode.USAGE
    log.info("checkpoint engine: %s (%s)", engine.name if engine else "restart", why)
    if options.keep_caps:
        log.warning("--keep-caps: the served command has every capability exec has")
    if not options.token:
        log.warning("no control token: the control API answers only on loopback")
    if engine is not None and not os.access(".", os.W_OK):
        # CRIU's parasite mounts a /proc for the served PID namespace at ./proc.crtools, in
        # the served program's working directory (measured on a real node: a read-only root
        # filesystem makes every dump fail with "Can't create a directory (-30)").
        log.warning(
            "the working directory %s is not writable: CRIU cannot dump the served command "
            "from here (it makes a directory there); start dormant exec in a writable one "
            "(Kubernetes: workingDir on the snapshot claim, as deploy/base/model.yaml does)",
            os.getcwd(),
        )
    return asyncio.run(_main(options, store, engine, why, control))


def _snapshot_list(store: SnapshotStore, name: str) -> list[dict[str, Any]]:
    try:
        entries = store.entries(name)[:20]
    except SnapshotError as exc:
        return [{"error": str(exc)}]
    return [{k: v for k, v in e.to_dict().items() if k != "path"} for e in entries]


@contextlib.contextmanager
def _signals(loop: asyncio.AbstractEventLoop, term: asyncio.Event) -> Iterator[None]:
    def handle(sig: signal.Signals) -> None:
        if term.is_set():
            log.warning("%s again: already terminating; the checkpoint goes on", sig.name)
        else:
            log.info("%s: terminating", sig.name)
            term.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, handle, sig)
    try:
        yield
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def _main(
    options: ExecOptions,
    store: SnapshotStore,
    engine: CriuEngine | None,
    engine_why: str,
    control: socket.socket,
) -> int:
    term = asyncio.Event()
    lock = VolumeLock(options.snapshots)
    async with httpx.AsyncClient(timeout=None, trust_env=False) as client:
        runtime = LocalRuntime(
            store,
            options.snapshots / ".work",
            engine,
            client,
            CgroupTree(options.snapshots),
            engine_why=engine_why,
            drop_caps=not options.keep_caps,
        )
        supervisor = Supervisor(
            runtime,
            options.spec(),
            client,
            options.settings(),
            snapshots=lambda: _snapshot_list(store, options.name),
        )
        app = create_control_app(supervisor, options.token)
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
        server = _ControlServer(config)
        serving = asyncio.ensure_future(server.serve(sockets=[control]))
        log.info("control API on http://%s:%d", *options.control)
        try:
            with _signals(asyncio.get_running_loop(), term):
                return await _lifecycle(options, store, runtime, supervisor, lock, term)
        finally:
            await supervisor.close()  # before the lock goes: never two servers per volume
            server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(serving, 10)
            lock.release()


async def _lifecycle(
    options: ExecOptions,
    store: SnapshotStore,
    runtime: LocalRuntime,
    supervisor: Supervisor,
    lock: VolumeLock,
    term: asyncio.Event,
) -> int:
    deadline = time.monotonic() + options.lock_timeout
    next_note = 0.0
    while not lock.try_acquire():
        now = time.monotonic()
        if term.is_set():
            log.info("terminated while waiting for %s", lock.path)
            return ExitCode.OK
        if now >= deadline:
            log.error(
                "%s is still held by %s after %.0fs: another instance of this snapshot volume "
                "runs (is the old pod still checkpointing?); exiting to be restarted",
                lock.path,
                lock.holder(),
                options.lock_timeout,
            )
            return ExitCode.LOCK_TIMEOUT
        if now >= next_note:
            log.info(
                "waiting for %s, held by %s (its checkpoint must end first)",
                lock.path,
                lock.holder(),
            )
            supervisor.reason = f"waiting for {lock.path}, held by {lock.holder()}"
            next_note = now + 5.0
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(term.wait(), 0.2)
    removed = await asyncio.to_thread(store.clean_partial)
    if removed:
        log.warning("removed %d half-written snapshot(s) left by a crash", len(removed))
    await asyncio.to_thread(runtime.clean_leftovers)

    start = asyncio.ensure_future(supervisor.start())
    stop = asyncio.ensure_future(term.wait())
    await asyncio.wait({start, stop}, return_when=asyncio.FIRST_COMPLETED)
    if term.is_set():
        return await supervisor.terminate()
    if supervisor.started is None:
        stop.cancel()
        if start.exception() is not None:  # a bug, not a failure the runtime reported
            log.error("the start failed unexpectedly", exc_info=start.exception())
        return ExitCode.START_FAILED
    watch = asyncio.ensure_future(supervisor.watch(0.5))
    died = asyncio.ensure_future(supervisor.died.wait())
    try:
        await asyncio.wait({stop, died}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
    if supervisor.died.is_set() and not term.is_set():
        stop.cancel()
        after = after_server_exit(supervisor.finished, options.done_on_exit)
        if after.remove_snapshots:
            # a Job's work is done: a snapshot taken before the end must not be restored
            pruned = await asyncio.to_thread(store.prune, options.name, 0)
            log.info("%s; snapshots removed: %s", after.why, pruned or "none")
        else:
            log.warning("%s", after.why)
        return after.code
    died.cancel()
    return await supervisor.terminate()


class _ControlServer(uvicorn.Server):
    """uvicorn without its own signal handlers: the supervisor's decide what SIGTERM does."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield
