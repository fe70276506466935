"""The local runtime: instances are process trees on this machine, snapshots are CRIU
images in the state directory. Implements ``warmpool.runtime.Runtime``.

Every instance runs in its own PID namespace and, where cgroup v2 is writable, in its
own cgroup (``warmpool.process.cgroup``): the next start ends whatever a killed Dormant left.
Foreign errors (OSError, CRIU, the snapshot store) are translated here into warmpool's;
a failed restore is judged by ``warmpool.runtimes.verdict``: the snapshot is retired
(``RestoreFailed``) only when it is what failed, else kept (``RestoreDeferred``).

Without PID namespaces (not root: the ``restart`` engine) an instance is its command in a
session of its own, stopped by its process group; there is nothing to checkpoint then.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import httpx

from snapshots import (
    CriuEngine,
    EngineDumpFailed,
    Snapshot,
    SnapshotCorrupt,
    SnapshotError,
    SnapshotStore,
    changed_files,
    kill_leftovers,
    mapped_files,
    process_tree,
    stdio_pipe_inode,
)
from snapshots.cuda_criu import CudaCriu
from snapshots.errors import CommitFailed
from warmpool.errors import (
    CheckpointFailed,
    NotSupported,
    RestoreDeferred,
    RestoreFailed,
    StartFailed,
    WarmpoolError,
)
from warmpool.process.cgroup import CgroupTree
from warmpool.process.cgroup import remove as remove_cgroup
from warmpool.process.health import wait_healthy
from warmpool.process.instance import ProcessInstance, adopt_restored, spawn
from warmpool.process.privileges import held, kept
from warmpool.process.quiet import listen_problem, port_taken
from warmpool.process.sockets import port_activity, tree_listeners
from warmpool.runtime import Capabilities, Instance, InstanceSpec, SnapshotInfo
from warmpool.runtimes.verdict import verdict
from warmpool.suspend import SuspendEngine, SuspendTarget, make_engine

__all__ = ["LocalRuntime", "free_port"]

log = logging.getLogger("dormant.warmpool")

T = TypeVar("T")

RETRY_AFTER = 5.0
"""Seconds a client is told to wait (``Retry-After``) after the environment refused a restore."""
_LISTEN_CHECK = 0.25
"""Seconds between two looks at where a booting tree listens."""


def free_port() -> int:
    """A port nothing listens on right now, on loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _info(snapshot: Snapshot) -> SnapshotInfo:
    m = snapshot.manifest
    return SnapshotInfo(m.id, m.total_bytes, m.created, m.checkpoint_seconds)


async def _in_thread(work: Callable[[], T], undo: Callable[[T], None]) -> T:
    """Run blocking ``work`` in a thread. If the caller is cancelled meanwhile (Dormant
    shutting down), wait for the thread and ``undo`` what it made: a process tree that
    finished starting after nobody wanted it must not be left running."""
    task = asyncio.ensure_future(asyncio.to_thread(work))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):  # the work failed by itself: nothing to undo
            undo(await task)
        raise


class LocalRuntime:
    """Local processes. ``engine`` is None when no checkpoint engine is usable (the
    ``restart`` engine): then ``checkpoint`` is not supported and ``restore`` finds nothing.
    CRIU is used through ``snapshots.cuda_criu.CudaCriu`` (GPU processes included)."""

    def __init__(
        self,
        store: SnapshotStore,
        work_dir: Path,
        engine: CriuEngine | None,
        client: httpx.AsyncClient,
        cgroups: CgroupTree | None = None,
        engine_why: str = "",
        pid_namespaces: bool = True,
        drop_caps: bool = False,
    ) -> None:
        self.store = store
        self.pid_namespaces = pid_namespaces
        """False: instances run without a PID namespace of their own (not root)."""
        self.caps = kept(checkpointed=engine is not None) if drop_caps and pid_namespaces else None
        """The only capabilities a booted command keeps (``warmpool.process.privileges``; a
        restored one gets back the bounding set it was dumped with); None: it keeps all."""
        self.work_dir = Path(work_dir)
        # CUDA-aware CRIU: a tree with CUDA processes has its device memory parked through
        # the driver API around the dump (no NVIDIA binaries); any other tree, or a machine
        # without the driver, is dumped exactly as plain CRIU would.
        self.engine = CudaCriu(engine) if engine is not None else None
        self.client = client
        self.cgroups = cgroups
        why = engine_why or "no usable checkpoint engine (see `dormant check`)"
        self._capabilities = Capabilities(
            engine=engine.name if engine else "restart",
            checkpoint=engine is not None,
            checkpoint_why="" if engine else why,
            suspend=True,
            suspend_why="",
        )
        self._engines: dict[str, SuspendEngine] = {}

    @property
    def capabilities(self) -> Capabilities:
        return self._capabilities

    def clean_leftovers(self) -> list[str]:
        """At start: end what a killed predecessor left — criu processes (by their
        markers) and instance trees (by their cgroups). Returns what was ended."""
        ended = (
            [f"criu pid {p}" for p in kill_leftovers(self.work_dir)]
            if self.work_dir.exists()
            else []
        )
        if self.cgroups is not None:
            ended += [f"cgroup {g}" for g in self.cgroups.clean()]
        if ended:
            log.warning("ended what an earlier Dormant left running: %s", ", ".join(ended))
        return ended

    # -- snapshots -------------------------------------------------------------------------

    def latest(self, name: str) -> SnapshotInfo | None:
        """The newest usable snapshot; RestoreDeferred when the store cannot be read now
        (too many open files, permission denied): "cannot tell" is not "none"."""
        if self.engine is None:
            return None
        snapshot = self._latest(name)
        return _info(snapshot) if snapshot else None

    def _latest(self, name: str) -> Snapshot | None:
        try:
            return self.store.latest(name)
        except SnapshotError as exc:
            raise RestoreDeferred(
                f"{name}: cannot read the snapshot store now ({exc}); its snapshots are kept, "
                "nothing was restored or booted over them",
                retry_after=RETRY_AFTER,
            ) from exc

    def expect(self, spec: InstanceSpec) -> None:
        """What ``spec`` starts, for the store: snapshots of another command, env or cwd
        are 'stale' from now on (kept, listed, never restored). Never raises."""
        if self.engine is not None:
            try:
                self.store.expect(spec.name, spec.fingerprint())
            except (SnapshotError, OSError, ValueError) as exc:
                log.warning("%s: cannot record what it starts: %s", spec.name, exc)

    def set_aside(self, name: str, snapshot_id: str, reason: str) -> bool:
        """Set ``snapshot_id`` aside as suspect (``ID.suspect``, kept with the reason):
        what it restores dies soon after. False when it is not a usable snapshot of
        ``name`` any more."""
        try:
            snapshot = self.store.get(snapshot_id)
        except SnapshotError as exc:
            log.warning("%s: cannot set snapshot %s aside: %s", name, snapshot_id, exc)
            return False
        if snapshot.workload != name:
            return False
        self.store.mark_suspect(snapshot, reason)
        return True

    def _retire(self, snapshot: Snapshot, reason: str) -> None:
        try:
            self.store.mark_bad(snapshot, reason)
        except (SnapshotError, OSError) as exc:
            log.error("%s: could not mark snapshot %s bad: %s", snapshot.workload, snapshot.id, exc)

    # -- boot --------------------------------------------------------------------------------

    def _group(self, name: str) -> Path | None:
        return self.cgroups.create(name) if self.cgroups is not None else None

    async def boot(self, spec: InstanceSpec) -> ProcessInstance:
        """Start the command (on a free port when ``spec.port`` is 0) and wait until it
        is healthy, or fail with its output. Fails fast, in one line, when the tree
        listens where it cannot be reached (``warmpool.process.quiet.listen_problem``)."""
        told, fingerprint = spec.told_port, spec.fingerprint()
        try:
            spec = spec.with_port(spec.port or free_port())
            group = self._group(spec.name)
        except OSError as exc:
            raise StartFailed(f"{spec.name}: cannot prepare its start: {exc}") from exc
        try:
            instance = spawn(spec, group, pid_namespace=self.pid_namespaces, caps=self.caps)
        except OSError as exc:
            if group is not None:
                remove_cgroup(group)
            raise StartFailed(f"{spec.name}: cannot run {spec.command[0]!r}: {exc}") from exc
        instance.fingerprint = fingerprint
        try:
            await self._serving(instance, spec, told)
            if self.caps is not None and (
                extra := await asyncio.to_thread(held, instance.pid, self.caps)
            ):
                raise StartFailed(
                    f"{spec.name}: runs with capabilities that setpriv should have dropped "
                    f"({', '.join(extra)}); stopped rather than served with them"
                )
        except BaseException:
            await asyncio.to_thread(instance.stop)
            raise
        return instance

    async def _serving(self, instance: ProcessInstance, spec: InstanceSpec, told: bool) -> None:
        """``wait_healthy``, looking meanwhile where the tree listens (see ``boot``)."""
        healthy = asyncio.ensure_future(
            wait_healthy(instance, spec, self.client, spec.start_timeout)
        )
        try:
            while True:
                done, _ = await asyncio.wait({healthy}, timeout=_LISTEN_CHECK)
                if done:
                    healthy.result()
                    return
                problem = await asyncio.to_thread(self._listen_problem, instance, told)
                if problem is not None:
                    raise StartFailed(f"{spec.name}: {problem}")
        except OSError as exc:
            raise StartFailed(f"{spec.name}: its health could not be checked: {exc}") from exc
        finally:
            if not healthy.done():
                healthy.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await healthy

    @staticmethod
    def _listen_problem(instance: ProcessInstance, told: bool) -> str | None:
        try:
            listeners = tree_listeners(process_tree(instance.pid))
        except (WarmpoolError, OSError):
            return None  # cannot tell: the health check decides
        return listen_problem(listeners, instance.spec.port, told=told)

    async def stop(self, instance: Instance) -> None:
        await asyncio.to_thread(self._own(instance).stop)

    async def idle_for(self, instance: Instance) -> float | None:
        """Local servers are reached only through the activator: None (its view stands)."""
        return None

    @staticmethod
    def _own(instance: Instance) -> ProcessInstance:
        if not isinstance(instance, ProcessInstance):
            raise TypeError(f"not a local instance: {instance!r}")
        return instance

    # -- checkpoint --------------------------------------------------------------------------

    async def checkpoint(self, instance: Instance) -> SnapshotInfo:
        """Dump the (drained) instance into a committed snapshot; it is gone afterwards.

        When the dump fails CRIU resumes the tree, which keeps serving. When the dump
        succeeded but the commit failed (disk full, I/O error), the tree is already gone:
        it is restored at once from the uncommitted images, which are then discarded;
        ``CheckpointFailed.instance`` is that replacement (or None, and the message says
        the state was lost, when even that fails)."""
        if self.engine is None:
            raise NotSupported(f"cannot checkpoint: {self._capabilities.checkpoint_why}")
        local = self._own(instance)
        spec = local.spec
        outcome = await asyncio.to_thread(self._checkpoint, local, self.engine)
        if isinstance(outcome, Snapshot):
            await asyncio.to_thread(self._prune, spec)
            return _info(outcome)
        replacement, why = outcome
        if replacement is not None:
            try:
                await wait_healthy(replacement, replacement.spec, self.client, spec.restore_timeout)
            except StartFailed as exc:
                await asyncio.to_thread(replacement.stop)
                replacement = None
                why += f"; the restored copy did not answer ({exc})"
        if replacement is None:
            raise CheckpointFailed(
                f"{why}; the process state is lost (the last committed snapshot, if any, "
                "stays usable)"
            )
        raise CheckpointFailed(
            f"{why}; restored from the uncommitted images, still serving", replacement
        )

    def _checkpoint(
        self, instance: ProcessInstance, engine: CudaCriu
    ) -> Snapshot | tuple[ProcessInstance | None, str]:
        spec = instance.spec
        try:
            files = mapped_files(process_tree(instance.pid))
            pipe = stdio_pipe_inode(instance.pid)
            with self.store.begin(spec.name) as pending:
                try:
                    seconds = engine.dump(
                        instance.pid,
                        pending.path / "images",
                        self.work_dir / spec.name / "dump",
                        spec.checkpoint_timeout,
                    )
                except EngineDumpFailed as exc:
                    raise CheckpointFailed(
                        str(exc), instance if instance.alive() else None
                    ) from exc
                instance.forget()
                meta: dict[str, Any] = {
                    "port": spec.port,
                    "stdio_pipe": pipe,
                    "files": files,
                    "health_path": spec.health_path,
                }
                if instance.fingerprint is not None:
                    meta["fingerprint"] = instance.fingerprint
                try:
                    return self.store.commit(
                        pending,
                        engine=engine.name,
                        engine_version=engine.version,
                        checkpoint_seconds=seconds,
                        meta=meta,
                    )
                except CommitFailed as exc:
                    log.error("%s: %s; restoring from the uncommitted images", spec.name, exc)
                    try:
                        restored = self._criu_restore(
                            pending.path / "images", meta, spec, f"uncommitted {pending.id}"
                        )
                        restored.fingerprint = instance.fingerprint
                        replacement: ProcessInstance | None = restored
                    except (SnapshotError, OSError) as restore_exc:
                        log.error(
                            "%s: restore from uncommitted images failed: %s", spec.name, restore_exc
                        )
                        replacement = None
                    finally:
                        self.store.discard(pending)
                    return replacement, f"the snapshot could not be committed: {exc}"
        except (SnapshotError, OSError) as exc:
            raise CheckpointFailed(
                f"checkpoint of {spec.name} failed: {exc}", instance if instance.alive() else None
            ) from exc

    def _prune(self, spec: InstanceSpec) -> None:
        try:
            pruned = self.store.prune(spec.name, spec.keep_snapshots)
        except (SnapshotError, OSError) as exc:
            log.warning("%s: pruning old snapshots failed: %s", spec.name, exc)
            return
        if pruned:
            log.info("%s: pruned snapshots %s", spec.name, ", ".join(pruned))

    # -- restore ------------------------------------------------------------------------------

    async def restore(self, spec: InstanceSpec) -> ProcessInstance | None:
        """Restore the newest usable snapshot of what ``spec`` starts (its fingerprint) and
        wait until it answers; None when there is none. When the snapshot is what failed
        (``verdict``) it is marked bad and RestoreFailed raised; when the environment
        refused (its port taken, the store unreadable now, EMFILE, ENOSPC, EPERM, a
        timeout) it is kept and RestoreDeferred raised."""
        if self.engine is None:
            return None
        self.expect(spec)
        snapshot = await asyncio.to_thread(self._latest, spec.name)
        if snapshot is None:
            return None
        taken = await asyncio.to_thread(self._port_taken, snapshot)
        if taken is not None:
            raise RestoreDeferred(
                f"snapshot {snapshot.id} not restored: {taken}; the snapshot is kept",
                snapshot.id,
                RETRY_AFTER,
            )
        started = time.monotonic()
        try:
            instance = await _in_thread(
                lambda: self._verified_restore(snapshot, spec), lambda inst: inst.stop()
            )
            remaining = spec.restore_timeout - (time.monotonic() - started)
            try:
                await wait_healthy(instance, instance.spec, self.client, max(remaining, 0.0))
            except BaseException:
                await asyncio.to_thread(instance.stop)
                raise
        except (SnapshotError, StartFailed, OSError) as exc:
            judged = verdict(exc)
            if not judged.retire:
                raise RestoreDeferred(
                    f"snapshot {snapshot.id} not restored, {judged.why}: {exc}; the snapshot "
                    "is kept, retry later",
                    snapshot.id,
                    RETRY_AFTER,
                ) from exc
            await asyncio.to_thread(self._retire, snapshot, str(exc))
            raise RestoreFailed(
                f"restore of snapshot {snapshot.id} failed ({judged.why}): {exc}", snapshot.id
            ) from exc
        instance.fingerprint = spec.fingerprint()
        return instance

    @staticmethod
    def _port_taken(snapshot: Snapshot) -> str | None:
        """Whether another process listens on the port the snapshot's server will take
        back (CRIU would fail with "Can't bind inet socket"); None when free or unknown."""
        port = snapshot.manifest.meta.get("port")
        if not isinstance(port, int):
            return None
        try:
            activity = port_activity(port, own_pid=0)
        except (WarmpoolError, OSError):
            return None  # cannot tell: CRIU will say, and the verdict judges that
        return port_taken(activity.listeners, port)

    def _verified_restore(self, snapshot: Snapshot, spec: InstanceSpec) -> ProcessInstance:
        """Check the files the process had mapped (before CRIU runs: CRIU would refuse them
        less clearly), then restore while the images' digests are verified beside it.

        CRIU leaves the restored tree stopped (``--leave-stopped``): not one instruction
        of it runs before every digest matched; then it is continued, else killed and
        SnapshotCorrupt raised. Verification thus costs almost nothing of the wake without
        a corrupt image ever running (docs/measurements.md). For a snapshot of CUDA
        processes the same holds: their device memory is resumed only once the tree is
        continued, after every digest matched."""
        started = time.monotonic()
        meta = snapshot.manifest.meta
        problems = changed_files(dict(meta.get("files", {})))
        if problems:
            raise SnapshotCorrupt(snapshot.id, [f"changed since checkpoint: {p}" for p in problems])
        images = snapshot.path / "images"
        engine = self.engine
        assert engine is not None

        def discard(stopped: ProcessInstance) -> None:  # a digest did not match
            stopped.kill()
            engine.forget_stopped(stopped.pid)

        instance = self.store.verify_during(
            snapshot,
            lambda: self._criu_restore(images, meta, spec, snapshot.id, leave_stopped=True),
            discard,
        )
        try:
            # SIGCONT to every task; a CUDA tree's device memory then goes back to the GPU
            engine.continue_restored(instance.pid)
        except BaseException:
            instance.kill()
            raise
        log.info(
            "%s: restored snapshot %s as pid %d (verified and restored in %.3fs)",
            spec.name,
            snapshot.id,
            instance.pid,
            time.monotonic() - started,
        )
        return instance

    def _criu_restore(
        self,
        images: Path,
        meta: Mapping[str, Any],
        spec: InstanceSpec,
        label: str,
        *,
        leave_stopped: bool = False,
    ) -> ProcessInstance:
        """CRIU-restore ``images`` (a snapshot's or uncommitted ones) into a new cgroup;
        ``leave_stopped``: every task of the tree stays stopped (see continue_stopped)."""
        assert self.engine is not None
        spec = spec.with_port(int(str(meta.get("port", spec.port))))
        group = self._group(spec.name)
        read_fd, write_fd = os.pipe()
        try:
            pipe = meta.get("stdio_pipe")
            pid = self.engine.restore(
                images,
                self.work_dir / spec.name / "restore",
                write_fd,
                pipe if isinstance(pipe, str) else None,
                spec.restore_timeout,
                group,
                ("--leave-stopped",) if leave_stopped else (),
            )
        except BaseException:
            os.close(read_fd)
            if group is not None:
                remove_cgroup(group)
            raise
        finally:
            os.close(write_fd)
        return adopt_restored(spec, pid, read_fd, label, group)

    # -- suspend -----------------------------------------------------------------------------

    def _engine(self, spec: InstanceSpec) -> SuspendEngine:
        """The suspend engine the instance's spec names (one per workload, kept)."""
        engine = self._engines.get(spec.name)
        if engine is None:
            try:
                made = make_engine(spec.suspend, client=self.client, hooks=spec.hooks)
            except ValueError as exc:
                raise NotSupported(f"{spec.name}: {exc}") from exc
            if made is None:
                raise NotSupported(f"{spec.name}: its suspend engine is 'none'")
            engine = self._engines[spec.name] = made
        return engine

    async def suspend(self, instance: Instance) -> None:
        """Park the instance's device memory in host RAM with its suspend engine; raises
        SuspendFailed (it still serves where the engine could leave it so) or NotSupported."""
        local = self._own(instance)
        toggle = await self._engine(local.spec).suspend(SuspendTarget.of(local.spec.name, local))
        log.info("%s: suspended by %s in %.3fs", local.spec.name, toggle.engine, toggle.seconds)

    async def resume(self, instance: Instance) -> None:
        local = self._own(instance)
        toggle = await self._engine(local.spec).resume(SuspendTarget.of(local.spec.name, local))
        log.info("%s: resumed by %s in %.3fs", local.spec.name, toggle.engine, toggle.seconds)
