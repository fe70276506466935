"""The local runtime: boot, checkpoint, restore and stop instances on this machine."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from pathlib import Path

import httpx

from snapshots import (
    CriuEngine,
    RestoreFailed,
    Snapshot,
    SnapshotCorrupt,
    SnapshotStore,
    changed_files,
    kill_leftovers,
    mapped_files,
    process_tree,
    stdio_pipe_inode,
)

from .errors import StartFailed
from .health import wait_healthy
from .instance import Instance, InstanceSpec, adopt_restored, spawn

__all__ = ["LocalRuntime"]

log = logging.getLogger("dormant.warmpool")


class LocalRuntime:
    """Local processes. ``engine`` is None when no checkpoint engine is usable:
    then hibernating means stopping, and waking means booting (the ``restart`` engine)."""

    def __init__(
        self,
        store: SnapshotStore,
        work_dir: Path,
        engine: CriuEngine | None,
        client: httpx.AsyncClient,
        checkpoint_timeout: float = 120.0,
        restore_timeout: float = 60.0,
    ) -> None:
        self.store = store
        self.work_dir = Path(work_dir)
        self.engine = engine
        self.client = client
        self.checkpoint_timeout = checkpoint_timeout
        self.restore_timeout = restore_timeout

    def clean_leftovers(self) -> list[int]:
        """At start: end criu processes a killed predecessor left (see kill_leftovers)."""
        killed = kill_leftovers(self.work_dir) if self.work_dir.exists() else []
        if killed:
            log.warning("ended %d leftover criu process(es): %s", len(killed), killed)
        return killed

    @property
    def engine_name(self) -> str:
        return self.engine.name if self.engine else "restart"

    async def boot(self, spec: InstanceSpec) -> Instance:
        """Start the command and wait until it is healthy (or fail with its output)."""
        instance = spawn(spec)
        try:
            await wait_healthy(instance, self.client, spec.start_timeout)
        except BaseException:
            await asyncio.to_thread(instance.stop)
            raise
        return instance

    async def stop(self, instance: Instance) -> None:
        await asyncio.to_thread(instance.stop)

    async def checkpoint(self, instance: Instance, keep: int = 1) -> Snapshot:
        """Dump the (drained) instance into a committed snapshot; the instance is gone
        afterwards. On failure CRIU resumes the tree, so it keeps serving."""
        if self.engine is None:
            raise RuntimeError("checkpoint() needs a checkpoint engine")
        snapshot = await asyncio.to_thread(self._checkpoint, instance, self.engine)
        pruned = await asyncio.to_thread(self.store.prune, instance.spec.name, keep)
        if pruned:
            log.info("%s: pruned snapshots %s", instance.spec.name, ", ".join(pruned))
        return snapshot

    def _checkpoint(self, instance: Instance, engine: CriuEngine) -> Snapshot:
        spec = instance.spec
        files = mapped_files(process_tree(instance.pid))
        pipe = stdio_pipe_inode(instance.pid)
        with self.store.begin(spec.name) as pending:
            seconds = engine.dump(
                instance.pid,
                pending.path / "images",
                self.work_dir / spec.name / "dump",
                self.checkpoint_timeout,
            )
            instance.forget()
            return self.store.commit(
                pending,
                engine=engine.name,
                engine_version=engine.version,
                checkpoint_seconds=seconds,
                meta={
                    "port": spec.port,
                    "stdio_pipe": pipe,
                    "files": files,
                    "health_path": spec.health_path,
                },
            )

    async def restore(self, snapshot: Snapshot, spec: InstanceSpec) -> Instance:
        """Verify the snapshot (digests, then the files the process had mapped), restore
        it, and wait until it answers. Raises SnapshotCorrupt before CRIU runs when
        verification fails, RestoreFailed when CRIU or the health check does."""
        if self.engine is None:
            raise RuntimeError("restore() needs a checkpoint engine")
        spec = dataclasses.replace(spec, port=int(snapshot.manifest.meta.get("port", spec.port)))
        instance = await asyncio.to_thread(self._restore, snapshot, spec, self.engine)
        try:
            await wait_healthy(instance, self.client, self.restore_timeout)
        except StartFailed as exc:
            await asyncio.to_thread(instance.stop)
            raise RestoreFailed(f"restored {spec.name} did not answer: {exc}") from exc
        return instance

    def _restore(self, snapshot: Snapshot, spec: InstanceSpec, engine: CriuEngine) -> Instance:
        started = time.monotonic()
        self.store.verify(snapshot)
        problems = changed_files(dict(snapshot.manifest.meta.get("files", {})))
        if problems:
            raise SnapshotCorrupt(snapshot.id, [f"changed since checkpoint: {p}" for p in problems])
        verified = time.monotonic()
        read_fd, write_fd = os.pipe()
        try:
            pid = engine.restore(
                snapshot.path / "images",
                self.work_dir / spec.name / "restore",
                write_fd,
                snapshot.manifest.meta.get("stdio_pipe"),
                self.restore_timeout,
            )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        log.info(
            "%s: restored snapshot %s as pid %d (verify %.3fs, criu %.3fs)",
            spec.name,
            snapshot.id,
            pid,
            verified - started,
            time.monotonic() - verified,
        )
        return adopt_restored(spec, pid, read_fd, snapshot.id)
