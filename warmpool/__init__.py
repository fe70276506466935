"""Resource plane: instances on this machine and their lifecycle."""

from .device import CpuDevice, Device, Footprint, NvidiaDevice, device_findings, open_device
from .errors import (
    CheckpointFailed,
    DeviceUnavailable,
    NotSupported,
    RestoreFailed,
    ResumeFailed,
    StartFailed,
    SuspendFailed,
    WarmpoolError,
)
from .health import wait_healthy
from .instance import Instance, OutputTail, spawn
from .local import LocalRuntime
from .placement import (
    Demotion,
    Member,
    Plan,
    Tier,
    Verdict,
    choose_victims,
    fits_ever,
    is_thrash,
    should_defer,
)
from .runtime import Capabilities, Endpoint, InstanceSpec, Runtime, SnapshotInfo
from .suspend import CudaEngine, HooksEngine, SuspendEngine, SuspendTarget, make_engine
from .system import EngineChoice, choose_engine, pid_namespaces_work
from .units import format_size, parse_size

__all__ = [
    "Capabilities",
    "CheckpointFailed",
    "CpuDevice",
    "CudaEngine",
    "Demotion",
    "Device",
    "DeviceUnavailable",
    "Endpoint",
    "EngineChoice",
    "Footprint",
    "HooksEngine",
    "Instance",
    "InstanceSpec",
    "LocalRuntime",
    "Member",
    "NotSupported",
    "NvidiaDevice",
    "OutputTail",
    "Plan",
    "RestoreFailed",
    "ResumeFailed",
    "Runtime",
    "SnapshotInfo",
    "StartFailed",
    "SuspendEngine",
    "SuspendFailed",
    "SuspendTarget",
    "Tier",
    "Verdict",
    "WarmpoolError",
    "choose_engine",
    "choose_victims",
    "device_findings",
    "fits_ever",
    "format_size",
    "is_thrash",
    "make_engine",
    "open_device",
    "parse_size",
    "pid_namespaces_work",
    "should_defer",
    "spawn",
    "wait_healthy",
]
