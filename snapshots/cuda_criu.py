"""GPU hibernation without NVIDIA's binaries: the driver parks device memory, CRIU the rest.

CRIU's own CUDA plugin execs NVIDIA's ``cuda-checkpoint`` tool, whose licence does not
let us ship it. ``CudaCriu`` does what NVIDIA's Dynamo Snapshot does instead:

dump
    find every CUDA process of the tree (``cuCheckpointProcessGetRestoreThreadId``
    succeeds only for those), then ``cuda_view.park`` them: refuse MIG and multi-GPU
    processes and a host without the RAM and disk for the bytes, lock and checkpoint each
    through the driver API (their device memory moves into their host memory), check
    that nothing of the tree still maps /dev/nvidia*; record their PIDs inside the
    instance's namespace in the images
    (``dormant-cuda.json``, covered by the manifest's digests), then ``criu dump`` with
    ``-L`` pointing at a directory without plugins (so CRIU's CUDA plugin never loads)
    and the options CUDA processes need (``CUDA_DUMP_OPTIONS``).
restore
    ``criu restore`` the same way, find the recorded processes again by their PIDs
    inside the namespace (CRIU restores those), then restore and unlock each through
    the driver API — at once, or later (``resume_on_restore=False``: the caller resumes
    with ``resume_tree`` when the first request comes; until then CUDA calls block).
    When the CUDA resume fails (e.g. out of device memory: such a process can never be
    resumed, NVIDIA/cuda-checkpoint#44) the restored tree is killed before the error.
restore stopped
    with ``--leave-stopped`` among the options, CRIU leaves every task stopped and the
    CUDA resume waits: the caller verifies the images meanwhile (as for CPU trees), then
    ``continue_restored`` continues the tree and resumes its CUDA processes (their
    restore threads must run for that).

A tree without CUDA processes (or a machine without the driver) is dumped exactly as
``CriuEngine`` dumps it: the CPU path does not change. ``dump`` and ``restore`` have
``CriuEngine``'s signatures, so a runtime uses either.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from snapshots.criu import CUDA_DUMP_OPTIONS, CUDA_RESTORE_OPTIONS, CriuEngine, CriuInfo
from snapshots.cuda import CudaCheckpoint, CudaDriver, resume_tree
from snapshots.cuda_view import Probes, park
from snapshots.errors import EngineDumpFailed, EngineRestoreFailed, EngineUnavailable
from snapshots.procfs import process_tree

__all__ = [
    "CUDA_PIDS_FILE",
    "CudaCriu",
    "device_files",
    "inner_to_outer",
    "ns_pids",
    "without_plugins",
]

log = logging.getLogger("dormant.snapshots")

CUDA_PIDS_FILE = "dormant-cuda.json"
"""In the images: the CUDA processes' PIDs inside the instance's namespace."""
_DEVICE_PREFIXES = ("/dev/nvidia", "/proc/driver/nvidia/")


def ns_pids(pid: int) -> tuple[int, ...]:
    """``pid``'s PIDs from our PID namespace inwards (``NSpid`` in /proc/PID/status):
    ``(41733, 1)`` for the server of an instance. Empty when the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("NSpid:"):
                return tuple(int(p) for p in line.split()[1:])
    except (OSError, ValueError):
        pass
    return ()


def inner_to_outer(root: int, inner: Iterable[int]) -> dict[int, int]:
    """Map PIDs as the instance sees them (its innermost namespace; 1 is the server) to
    PIDs as we see them, within the tree rooted at ``root``. Unknown PIDs are left out."""
    wanted = set(inner)
    found = {}
    for pid in process_tree(root):
        chain = ns_pids(pid)
        if chain and chain[-1] in wanted:
            found[chain[-1]] = pid
    return found


def device_files(pid: int) -> list[str]:
    """The NVIDIA device files ``pid`` has open (/dev/nvidia0, /dev/nvidia-caps/..., ...)."""
    found = []
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return []
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith(_DEVICE_PREFIXES):
            found.append(target)
    return sorted(set(found))


def without_plugins(libdir: Path) -> list[str]:
    """``-L DIR`` with DIR (created if needed) holding no CRIU plugin, so that CRIU's CUDA
    plugin, which would exec NVIDIA's cuda-checkpoint, does not load. Raises
    EngineUnavailable when DIR holds plugins."""
    libdir.mkdir(parents=True, exist_ok=True)
    plugins = sorted(p.name for p in libdir.glob("*.so"))
    if plugins:
        raise EngineUnavailable(
            f"{libdir} is meant to hold no CRIU plugin but holds {', '.join(plugins)}; "
            "remove them (Dormant parks GPU memory through the driver API itself)"
        )
    return ["-L", str(libdir)]


class CudaCriu:
    """CRIU for process trees that may hold CUDA processes (see the module docstring).

    ``driver`` defaults to ``CudaCheckpoint()``, loaded when first needed; where it
    cannot load (no NVIDIA driver) every tree is treated as a CPU tree."""

    name = "criu"

    def __init__(
        self,
        criu: CriuEngine,
        driver: CudaDriver | None = None,
        *,
        plugin_dir: Path | None = None,
        lock_timeout: float = 10.0,
        resume_on_restore: bool = True,
        probes: Probes | None = None,
    ) -> None:
        self.criu = criu
        self._driver = driver
        self._driver_problem = ""
        self.plugin_dir = plugin_dir
        self.lock_timeout = lock_timeout
        self.resume_on_restore = resume_on_restore
        self.probes = probes or Probes()
        self._stopped: dict[int, list[int]] = {}
        """Trees restored stopped, by root: their recorded CUDA PIDs, resumed when
        ``continue_restored`` continues them."""

    @property
    def info(self) -> CriuInfo:
        return self.criu.info

    @property
    def version(self) -> str:
        return self.criu.version

    def driver(self) -> CudaDriver | None:
        """The CUDA driver, or None (with ``why_no_driver``) where there is none."""
        if self._driver is None and not self._driver_problem:
            try:
                self._driver = CudaCheckpoint()
            except EngineUnavailable as exc:
                self._driver_problem = str(exc)
        return self._driver

    @property
    def why_no_driver(self) -> str:
        return self._driver_problem

    def _no_plugins(self, work: Path) -> list[str]:
        return without_plugins(self.plugin_dir or work.parent / "criu-no-plugins")

    def cuda_processes(self, pid: int) -> list[int]:
        """The CUDA processes of the tree rooted at ``pid`` (empty without a driver)."""
        driver = self.driver()
        if driver is None:
            return []
        return [p for p in process_tree(pid) if driver.is_cuda(p)]

    def dump(
        self, pid: int, images: Path, work: Path, timeout: float, options: Sequence[str] = ()
    ) -> float:
        """Checkpoint the tree rooted at ``pid`` into ``images`` (``CriuEngine.dump``),
        parking its CUDA processes' device memory first. On failure the tree keeps
        running with its device memory back (or the error says it could not)."""
        cuda = self.cuda_processes(pid)
        if not cuda:
            return self.criu.dump(pid, images, work, timeout, options)
        driver = self.driver()
        assert driver is not None
        inner = []
        for p in cuda:
            chain = ns_pids(p)
            if not chain:
                raise EngineDumpFailed(
                    f"CUDA process {p} of pid {pid}'s tree exited before the dump; try again"
                )
            inner.append(chain[-1])
        work.mkdir(parents=True, exist_ok=True)
        flags = [*options, *self._no_plugins(work), *CUDA_DUMP_OPTIONS]
        started = time.monotonic()
        try:
            tree = process_tree(pid)
            parked = park(driver, tree, cuda, self.lock_timeout, self.probes, images)
        except EngineDumpFailed as exc:
            raise EngineDumpFailed(f"cannot hibernate the CUDA processes of {pid}: {exc}") from exc
        log.info(
            "pid %d: device memory of CUDA processes %s parked in %.3fs",
            pid,
            list(parked.pids),
            parked.total,
        )
        try:
            images.mkdir(parents=True, exist_ok=True)
            (images / CUDA_PIDS_FILE).write_text(json.dumps({"pids": inner}))
            self.criu.dump(pid, images, work, timeout, flags)
        except (EngineDumpFailed, OSError) as exc:
            # CRIU leaves the tree running when a dump fails: give it its GPU memory back.
            try:
                resume_tree(driver, cuda)
            except EngineRestoreFailed as again:
                raise EngineDumpFailed(
                    f"{exc}; and its GPU memory could not be brought back ({again}): "
                    "the workload must be restarted"
                ) from exc
            if isinstance(exc, OSError):
                raise EngineDumpFailed(f"cannot write {images / CUDA_PIDS_FILE}: {exc}") from exc
            raise
        return time.monotonic() - started

    def restore(
        self,
        images: Path,
        work: Path,
        pipe_fd: int | None,
        pipe_inode: str | None,
        timeout: float,
        cgroup: Path | None = None,
        options: Sequence[str] = (),
    ) -> int:
        """``CriuEngine.restore``; then, for images with CUDA processes, their device
        memory goes back onto the GPU (unless ``resume_on_restore`` is False, or
        ``--leave-stopped`` is among ``options``: then ``continue_restored`` does it).
        When that fails the restored tree is killed, and EngineRestoreFailed says so."""
        try:
            recorded = json.loads((images / CUDA_PIDS_FILE).read_text())["pids"]
        except FileNotFoundError:
            return self.criu.restore(images, work, pipe_fd, pipe_inode, timeout, cgroup, options)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise EngineRestoreFailed(f"{images / CUDA_PIDS_FILE} is unreadable: {exc}") from exc
        driver = self.driver()
        if driver is None:
            raise EngineRestoreFailed(
                f"this snapshot holds CUDA processes but they cannot be resumed here: "
                f"{self._driver_problem}"
            )
        flags = [*options, *self._no_plugins(work), *CUDA_RESTORE_OPTIONS]
        root = self.criu.restore(images, work, pipe_fd, pipe_inode, timeout, cgroup, flags)
        if "--leave-stopped" in options:
            self._stopped[root] = list(recorded)
        elif self.resume_on_restore:
            self._resume_or_kill(root, recorded)
        return root

    def continue_restored(self, root: int) -> None:
        """Continue a tree restored with ``--leave-stopped`` (SIGCONT to every task), then
        resume its CUDA processes (unless ``resume_on_restore`` is False). A CPU tree is
        only continued. When the resume fails the tree is killed and EngineRestoreFailed raised."""
        for pid in process_tree(root):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        recorded = self._stopped.pop(root, None)
        if recorded and self.resume_on_restore:
            self._resume_or_kill(root, recorded)

    def forget_stopped(self, root: int) -> None:
        """A tree restored stopped was killed instead of continued (verification failed)."""
        self._stopped.pop(root, None)

    def _resume_or_kill(self, root: int, recorded: Sequence[int]) -> None:
        try:
            self.resume(root, recorded)
        except EngineRestoreFailed as exc:
            _kill_tree(root)
            raise EngineRestoreFailed(
                f"{exc}; the restored tree (pid {root}) was killed: a CUDA process whose "
                "resume failed cannot be resumed again (NVIDIA/cuda-checkpoint#44)"
            ) from exc

    def resume(self, root: int, inner: Sequence[int]) -> None:
        """Restore and unlock the recorded CUDA processes of the restored tree ``root``."""
        driver = self.driver()
        assert driver is not None
        found = inner_to_outer(root, inner)
        missing = sorted(set(inner) - set(found))
        if missing:
            raise EngineRestoreFailed(
                f"restored tree {root} lacks the CUDA processes {missing} (PIDs inside its "
                "namespace) recorded at checkpoint"
            )
        timing = resume_tree(driver, [found[p] for p in inner])
        log.info(
            "pid %d: device memory of CUDA processes %s back in %.3fs",
            root,
            list(timing.pids),
            timing.total,
        )


def _kill_tree(root: int) -> None:
    """SIGKILL every process of the tree rooted at ``root`` (the init of its own PID
    namespace: its end ends the rest) and reap ``root`` if it is our child."""
    for pid in reversed(process_tree(root)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(root, 0)
