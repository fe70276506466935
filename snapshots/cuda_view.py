"""What the host says around a CUDA suspend, and the checks that use it.

``park`` is the one way Dormant takes a tree's device memory off the GPU (the ``cuda``
suspend engine and ``CudaCriu``'s dump both use it):

1. refuse processes the driver cannot checkpoint, from NVML's view (``gpu_refusal``: a
   process on several GPUs, on a MIG-enabled GPU);
2. refuse when the host cannot take the bytes (``room_problem``): a suspend lands all
   device memory in host RAM; a hibernation lands it in host RAM first, then on disk;
3. ``suspend_tree``;
4. afterwards no process of the tree may still map ``/dev/nvidia*``: one that does is a
   CUDA process the driver did not report (its memory would be lost to a dump, and stays
   on the device): everything is resumed and EngineDumpFailed raised.

The effects (NVML, /proc, statvfs) are ``Probes``; tests pass fakes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from snapshots.cuda import CudaDriver, TreeTiming, gpu_refusal, resume_tree, suspend_tree
from snapshots.errors import EngineDumpFailed, EngineRestoreFailed

__all__ = [
    "GpuView",
    "Probes",
    "disk_free",
    "host_ram_free",
    "nvidia_mappings",
    "nvml_view",
    "park",
    "room_problem",
    "tree_rss",
]

log = logging.getLogger("dormant.snapshots")

_GiB = 1 << 30


@dataclass(frozen=True)
class GpuView:
    """NVML's view of some processes: the GPUs each holds memory on, its device bytes
    (None where NVML gives no figure), the GPUs with MIG enabled; ``why`` when NVML could
    not be asked (then nothing is known and nothing is refused)."""

    gpus: dict[int, set[int]] = field(default_factory=dict)
    used: dict[int, int | None] = field(default_factory=dict)
    mig: set[int] = field(default_factory=set)
    why: str = ""

    def device_bytes(self, pids: Sequence[int]) -> int | None:
        """Device bytes of ``pids`` together; None when NVML lacks a figure for one."""
        figures = [self.used.get(pid) for pid in pids]
        if not figures or any(f is None for f in figures):
            return None
        return sum(f or 0 for f in figures)


def nvml_view(pids: Sequence[int]) -> GpuView:
    """Ask NVML (nvidia-ml-py, imported lazily) which GPUs ``pids`` hold memory on. PIDs
    as NVML reports them: Dormant's own where it shares the host PID namespace."""
    try:
        import pynvml  # type: ignore[import-not-found, unused-ignore]

        pynvml.nvmlInit()
    except Exception as exc:  # no nvidia-ml-py, no driver
        return GpuView(why=f"NVML unavailable: {exc}")
    wanted = set(pids)
    view = GpuView()
    try:
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            try:
                if pynvml.nvmlDeviceGetMigMode(handle)[0]:
                    view.mig.add(index)
            except Exception:  # NVMLError_NotSupported: no MIG on this GPU
                pass
            for proc in _compute_processes(pynvml, handle):
                pid = int(proc.pid)
                if pid in wanted:
                    view.gpus.setdefault(pid, set()).add(index)
                    mem = proc.usedGpuMemory
                    if mem is None or view.used.get(pid, 0) is None:
                        view.used[pid] = None
                    else:
                        view.used[pid] = (view.used.get(pid) or 0) + int(mem)
    except Exception as exc:
        return GpuView(why=f"NVML failed: {exc}")
    finally:
        pynvml.nvmlShutdown()
    return view


def _compute_processes(pynvml: Any, handle: Any) -> list[Any]:
    return list(pynvml.nvmlDeviceGetComputeRunningProcesses(handle))


def nvidia_mappings(pid: int) -> list[str]:
    """The ``/dev/nvidia*`` files ``pid`` maps (/proc/PID/maps); empty when none or gone."""
    try:
        text = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return []
    found = {line.split(maxsplit=5)[5] for line in text.splitlines() if " /dev/nvidia" in line}
    return sorted(found)


def host_ram_free() -> int:
    """MemAvailable from /proc/meminfo (bytes); 0 when unreadable."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def disk_free(path: Path) -> int:
    """Bytes free to us where ``path`` (or its nearest existing parent) lives."""
    for candidate in (path, *path.parents):
        try:
            st = os.statvfs(candidate)
        except OSError:
            continue
        return st.f_bavail * st.f_frsize
    return 0


def tree_rss(pids: Sequence[int]) -> int:
    """Resident host memory of ``pids`` together (VmRSS), a floor for their dump."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            continue
    return total


def room_problem(
    device_bytes: int, ram_free: int, disk_need: int | None = None, disk_free: int = 0
) -> str:
    """Pure: why the host cannot take ``device_bytes`` of parked device memory (in RAM)
    and, for a hibernation, ``disk_need`` bytes of images (on disk); empty when it can."""
    problems = []
    if device_bytes > ram_free:
        problems.append(
            f"parking {device_bytes / _GiB:.1f} GiB of device memory needs as much host RAM "
            f"but {ram_free / _GiB:.1f} GiB is available"
        )
    if disk_need is not None and disk_need > disk_free:
        problems.append(
            f"the snapshot needs about {disk_need / _GiB:.1f} GiB on disk (device memory "
            f"and the process's host memory) but {disk_free / _GiB:.1f} GiB is free"
        )
    return "; ".join(problems)


@dataclass(frozen=True)
class Probes:
    """The effects ``park`` uses (replace any of them in tests)."""

    view: Callable[[Sequence[int]], GpuView] = nvml_view
    mappings: Callable[[int], list[str]] = nvidia_mappings
    ram_free: Callable[[], int] = host_ram_free
    disk_free: Callable[[Path], int] = disk_free
    rss: Callable[[Sequence[int]], int] = tree_rss


def park(
    driver: CudaDriver,
    tree: Sequence[int],
    cuda: Sequence[int],
    lock_timeout: float,
    probes: Probes,
    images: Path | None = None,
) -> TreeTiming:
    """Check, suspend and verify (see the module docstring) the CUDA processes ``cuda``
    of the process tree ``tree``. ``images``: where a hibernation will write (its disk is
    checked too). Raises EngineDumpFailed with the tree left running."""
    view = probes.view(cuda)
    if view.why:
        log.info("no NVML view of pids %s (%s): nothing refused on it", list(cuda), view.why)
    refusal = gpu_refusal(view.gpus, view.mig)
    if refusal:
        raise EngineDumpFailed(refusal)
    need = view.device_bytes(cuda)
    if need is None:
        log.info("device bytes of pids %s unknown: host room not checked", list(cuda))
    else:
        disk_need = disk_room = None
        if images is not None:
            disk_need, disk_room = need + probes.rss(tree), probes.disk_free(images)
        problem = room_problem(need, probes.ram_free(), disk_need, disk_room or 0)
        if problem:
            raise EngineDumpFailed(f"{problem}; nothing was changed")
    timing = suspend_tree(driver, cuda, lock_timeout)
    still = {pid: found for pid in tree if (found := probes.mappings(pid))}
    if still:
        pid, files = next(iter(still.items()))
        why = (
            f"pid {pid} still maps {', '.join(files)} after the suspend: the driver did not "
            "report it as a CUDA process, so its device memory was not parked"
        )
        try:
            resume_tree(driver, cuda)
        except EngineRestoreFailed as exc:
            raise EngineDumpFailed(
                f"{why}; and the tree's GPU memory could not be brought back ({exc}): the "
                "workload must be restarted"
            ) from exc
        raise EngineDumpFailed(f"{why}; the tree was left running")
    return timing
