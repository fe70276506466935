"""Device accounting: how much memory the pool has, and how much each instance holds.

Two devices, chosen by name (``open_device``): ``nvidia`` (NVML, through nvidia-ml-py,
imported lazily; no driver is an answer, never a crash) and ``cpu`` (a configured
budget; an instance's footprint is its cgroup's memory if it has one, else the PSS of
its process tree). A figure that cannot be had is ``Footprint.bytes is None`` with the
reason: the pool then uses the workload's declared ``memory``.

PIDs here are as Dormant sees them (the first ``NSpid`` entry): instances run in PID
namespaces of their own, where the server is PID 1 (``snapshots.cuda_criu.ns_pids`` and
``inner_to_outer`` translate).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from snapshots import EngineUnavailable, process_tree
from snapshots.cuda import CheckpointSupport, CudaCheckpoint, checkpoint_support
from snapshots.cuda_criu import ns_pids
from warmpool.errors import DeviceUnavailable

__all__ = [
    "Accounting",
    "CpuDevice",
    "Device",
    "DeviceFinding",
    "Footprint",
    "GpuMemory",
    "NvidiaDevice",
    "attribute",
    "cgroup_memory",
    "device_findings",
    "memory_accounting",
    "open_device",
    "other_gpu_finding",
    "process_cgroup",
    "pss",
]


@dataclass(frozen=True)
class Footprint:
    """Memory one instance holds. ``bytes`` is None when it cannot be measured here;
    ``reason`` then says why (and is a note otherwise)."""

    bytes: int | None
    source: str
    """'nvml', 'cgroup v2', 'cgroup v1', 'pss' — where the figure comes from."""
    reason: str = ""

    @property
    def available(self) -> bool:
        return self.bytes is not None


@dataclass(frozen=True)
class DeviceFinding:
    """One line of `dormant check` about the device."""

    item: str
    ok: bool
    detail: str


@runtime_checkable
class Device(Protocol):
    """The memory the pool shares."""

    kind: str

    def total(self) -> int:
        """Bytes the device offers (before the configured reserve)."""
        ...

    def used_by(self, pids: Sequence[int], cgroup: Path | None = None) -> Footprint:
        """What the process trees rooted at ``pids`` hold (``cgroup``: their cgroup)."""
        ...

    def describe(self) -> dict[str, Any]:
        """Facts for status pages: JSON values."""
        ...


# ---- /proc and cgroups -----------------------------------------------------------


def _read_int(path: Path) -> int:
    return int(path.read_text().strip())


def cgroup_memory(path: Path) -> Footprint:
    """The memory charged to a cgroup: v2 ``memory.current`` or v1
    ``memory.usage_in_bytes`` (both count page cache the group touched, e.g. mmapped
    weights)."""
    for name, source in (("memory.current", "cgroup v2"), ("memory.usage_in_bytes", "cgroup v1")):
        try:
            return Footprint(_read_int(path / name), source)
        except FileNotFoundError:
            continue
        except (OSError, ValueError) as exc:
            return Footprint(None, source, f"cannot read {path / name}: {exc}")
    return Footprint(
        None, "cgroup", f"{path} has no memory.current (v2) or memory.usage_in_bytes (v1)"
    )


def process_cgroup(pid: int, accounting: Accounting | None = None) -> Path | None:
    """The directory of ``pid``'s memory cgroup: in cgroup v2 when it has the memory
    controller, else in the v1 memory hierarchy; None where there is neither."""
    how = accounting or memory_accounting()
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        hid, controllers, rel = line.split(":", 2)
        if how.root is not None and hid == "0":
            return how.root / rel.lstrip("/")
        if how.root is None and how.v1_root is not None and "memory" in controllers.split(","):
            return how.v1_root / rel.lstrip("/")
    return None


def _pss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def pss(pids: Sequence[int]) -> Footprint:
    """The proportional set size of the process trees rooted at ``pids`` (shared pages
    divided among their sharers, so trees can be summed)."""
    seen: set[int] = set()
    total_kib, counted = 0, 0
    for root in pids:
        for pid in process_tree(root):
            if pid in seen:
                continue
            seen.add(pid)
            kib = _pss_kib(pid)
            if kib is not None:
                total_kib += kib
                counted += 1
    if not counted:
        return Footprint(
            None, "pss", f"no readable /proc/PID/smaps_rollup for pids {list(pids)} (gone?)"
        )
    return Footprint(total_kib * 1024, "pss")


@dataclass(frozen=True)
class Accounting:
    """How this machine measures an instance's memory."""

    method: str
    """'cgroup v2' (instances get v2 groups with the memory controller) or 'pss'."""
    root: Path | None
    """The cgroup v2 mount, when it has the memory controller."""
    v1_root: Path | None
    """The cgroup v1 memory hierarchy's mount, if any (a group there is measured too)."""
    detail: str


def memory_accounting(mountinfo: str | None = None) -> Accounting:
    """cgroup v2's ``memory.current`` when its hierarchy has the memory controller (the
    local runtime puts each instance in a v2 group), else the PSS of each instance's
    process tree. ``mountinfo`` is /proc/self/mountinfo's text (read when None)."""
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            mountinfo = ""
    v2_mount = v1_mount = None
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        if tail[0] == "cgroup2" and v2_mount is None:
            v2_mount = Path(fields[4])
        elif tail[0] == "cgroup" and "memory" in tail[2].split(","):
            v1_mount = Path(fields[4])
    if v2_mount is not None:
        try:
            controllers = (v2_mount / "cgroup.controllers").read_text().split()
        except OSError:
            controllers = []
        if "memory" in controllers:
            return Accounting(
                "cgroup v2",
                v2_mount,
                v1_mount,
                f"memory.current of each instance's cgroup (cgroup v2 at {v2_mount})",
            )
    why = (
        f"cgroup v2 at {v2_mount} has no memory controller"
        if v2_mount is not None
        else "no cgroup v2 hierarchy"
    )
    if v1_mount is not None:
        why += f"; the cgroup v1 memory hierarchy at {v1_mount} is not used for instances"
    return Accounting("pss", None, v1_mount, f"the PSS of each instance's process tree ({why})")


# ---- CPU -------------------------------------------------------------------------


class CpuDevice:
    """Host memory with a configured budget (``device.memory_budget``)."""

    kind = "cpu"

    def __init__(self, budget: int) -> None:
        if budget <= 0:
            raise ValueError(
                f"device.memory_budget must be a positive size to pool on CPU, got {budget}"
            )
        self.budget = budget

    def total(self) -> int:
        return self.budget

    def used_by(self, pids: Sequence[int], cgroup: Path | None = None) -> Footprint:
        """The cgroup's memory when ``cgroup`` is given and readable, else the PSS."""
        if cgroup is not None:
            measured = cgroup_memory(cgroup)
            if measured.available:
                return measured
            fallback = pss(pids)
            return Footprint(fallback.bytes, fallback.source, f"{measured.reason}; used PSS")
        return pss(pids)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "budget_bytes": self.budget,
            "accounting": memory_accounting().method,
        }


# ---- NVIDIA ----------------------------------------------------------------------


@dataclass(frozen=True)
class GpuMemory:
    total: int
    free: int
    used: int


def attribute(
    reported: Sequence[tuple[int, int | None]], trees: Mapping[int, tuple[int, ...]]
) -> Footprint:
    """Pure: sum NVML's per-process figures (``(pid, bytes or None)``) over the processes
    of our trees (``pid as Dormant sees it -> its NSpid chain``).

    The driver knows no PID namespaces: it reports PIDs of its own (host) namespace, or
    of the caller's on newer drivers, sometimes with no memory figure inside containers.
    A reported PID is ours when it is one of our processes as Dormant sees it."""
    ours = [(pid, used) for pid, used in reported if pid in trees]
    if not ours:
        foreign = [pid for pid, _ in reported if not Path(f"/proc/{pid}").exists()]
        if foreign:
            return Footprint(
                None,
                "nvml",
                f"NVML reports PIDs {foreign[:5]} that Dormant cannot see (the driver "
                "speaks the host's PID namespace and Dormant runs in another one): "
                "per-process memory is unavailable here; declare `memory:` or run "
                "Dormant in the host PID namespace",
            )
        return Footprint(0, "nvml", "no process of this instance holds device memory")
    if any(used is None for _, used in ours):
        return Footprint(
            None,
            "nvml",
            "NVML lists the instance's processes but gives no memory figure for them "
            "(common inside containers); declare `memory:`",
        )
    total = sum(used or 0 for _, used in ours)
    if total == 0:
        return Footprint(
            None,
            "nvml",
            "NVML reports 0 bytes for the instance's processes (inside containers it often "
            "does); declare `memory:`",
        )
    inner = ", ".join(f"{pid} (pid {trees[pid][-1]} inside)" for pid, _ in ours if trees[pid])
    return Footprint(total, "nvml", f"processes {inner}")


def _nvml() -> Any:
    """pynvml, initialised; raises DeviceUnavailable with the reason."""
    try:
        import pynvml  # nvidia-ml-py
    except ImportError as exc:
        raise DeviceUnavailable("nvidia-ml-py is not installed") from exc
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, _DriverNotLoaded, ...
        raise DeviceUnavailable(f"no NVIDIA driver or GPU: {exc}") from exc
    return pynvml


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class NvidiaDevice:
    """One NVIDIA GPU through NVML. Raises DeviceUnavailable when there is no driver."""

    kind = "nvidia"

    def __init__(self, index: int = 0) -> None:
        self._nvml = _nvml()
        try:
            self._handle = self._nvml.nvmlDeviceGetHandleByIndex(index)
            self.name = _text(self._nvml.nvmlDeviceGetName(self._handle))
            self.driver = _text(self._nvml.nvmlSystemGetDriverVersion())
        except Exception as exc:
            self._nvml.nvmlShutdown()
            raise DeviceUnavailable(f"NVIDIA GPU {index}: {exc}") from exc
        self.index = index

    def close(self) -> None:
        self._nvml.nvmlShutdown()

    def memory(self) -> GpuMemory:
        info = self._nvml.nvmlDeviceGetMemoryInfo(self._handle)
        return GpuMemory(int(info.total), int(info.free), int(info.used))

    def total(self) -> int:
        return self.memory().total

    def processes(self) -> list[tuple[int, int | None]]:
        """(pid, bytes or None) of every compute process on this GPU, as NVML says."""
        return [
            (int(p.pid), None if p.usedGpuMemory is None else int(p.usedGpuMemory))
            for p in self._nvml.nvmlDeviceGetComputeRunningProcesses(self._handle)
        ]

    def used_by(self, pids: Sequence[int], cgroup: Path | None = None) -> Footprint:
        trees = {pid: ns_pids(pid) for root in pids for pid in process_tree(root)}
        try:
            reported = self.processes()
        except Exception as exc:
            return Footprint(None, "nvml", f"nvmlDeviceGetComputeRunningProcesses: {exc}")
        return attribute(reported, trees)

    def mig_enabled(self) -> bool:
        try:
            current, _pending = self._nvml.nvmlDeviceGetMigMode(self._handle)
        except Exception:  # NVMLError_NotSupported on GPUs without MIG
            return False
        return bool(current)

    def describe(self) -> dict[str, Any]:
        mem = self.memory()
        return {
            "kind": self.kind,
            "index": self.index,
            "name": self.name,
            "driver": self.driver,
            "total_bytes": mem.total,
            "used_bytes": mem.used,
            "mig": self.mig_enabled(),
        }


def open_device(kind: str = "auto", memory_budget: int | None = None, index: int = 0) -> Device:
    """The device by name: 'nvidia', 'cpu', or 'auto' (NVIDIA when NVML answers, else
    CPU). CPU needs ``memory_budget``; raises ValueError (config) or DeviceUnavailable."""
    if kind not in ("auto", "nvidia", "cpu"):
        raise ValueError(f"device kind must be auto, nvidia or cpu, got {kind!r}")
    if kind in ("auto", "nvidia"):
        try:
            return NvidiaDevice(index)
        except DeviceUnavailable:
            if kind == "nvidia":
                raise
    if memory_budget is None:
        raise ValueError("device.memory_budget is required to pool on CPU (e.g. 6GiB)")
    return CpuDevice(memory_budget)


def _gpu_findings() -> list[DeviceFinding]:
    try:
        nvml = _nvml()
    except DeviceUnavailable as exc:
        return [DeviceFinding("GPU (NVML)", False, str(exc))]
    try:
        count = nvml.nvmlDeviceGetCount()
        driver = _text(nvml.nvmlSystemGetDriverVersion())
        found = []
        for i in range(count):
            dev = NvidiaDevice(i)
            try:
                d = dev.describe()
            finally:
                dev.close()
            found.append(
                DeviceFinding(
                    f"GPU {i}",
                    not d["mig"],
                    f"{d['name']}, {d['total_bytes'] >> 20} MiB, {d['used_bytes'] >> 20} MiB used"
                    + ("; MIG enabled: the cuda engine refuses MIG processes" if d["mig"] else ""),
                )
            )
    except Exception as exc:
        return [DeviceFinding("GPU (NVML)", False, f"NVML failed: {exc}")]
    finally:
        nvml.nvmlShutdown()
    support = checkpoint_support(driver)
    api, api_why = support.api, support.api_why
    if api:
        try:  # the version allows it; does the driver library load and answer?
            CudaCheckpoint()
        except EngineUnavailable as exc:
            api, api_why = False, f"{api_why}, but {exc}"
    return [
        DeviceFinding("GPU (NVML)", True, f"{count} device(s), driver {driver}"),
        *found,
        DeviceFinding("CUDA checkpoint API", api, api_why),
        other_gpu_finding(support),
    ]


def other_gpu_finding(support: CheckpointSupport) -> DeviceFinding:
    """Pure: what `dormant check` says about restoring onto another GPU. Dormant passes
    no restore arguments to the driver, so a process always comes back on the GPU it
    left, whatever the driver allows: the line says so instead of a bare 'ok'."""
    allows = "would allow another" if support.other_gpu else "could not do otherwise"
    return DeviceFinding(
        "restore onto another GPU",
        True,
        "not used: Dormant passes the driver no restore arguments, so a CUDA process "
        f"resumes on the GPU it left (the driver {allows}: {support.other_gpu_why})",
    )


def device_findings() -> list[DeviceFinding]:
    """What `dormant check` says about devices: NVIDIA GPUs (driver, CUDA checkpoint API,
    restore onto another GPU) and how CPU memory is measured."""
    how = memory_accounting()
    cpu = DeviceFinding("memory accounting (CPU)", True, f"{how.method}: {how.detail}")
    return [*_gpu_findings(), cpu]
