"""Resource plane: runtimes (where instances run), their instances and lifecycle.

The seam is ``Runtime`` (warmpool/runtime.py); ``LocalRuntime`` runs instances as
process trees on this machine, ``FakeRuntime`` stands in for tests.
"""

from .cgroup import CgroupTree
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
from .fake import FakeInstance, FakeRuntime
from .health import wait_healthy
from .instance import OutputTail, ProcessInstance, spawn
from .local import LocalRuntime, free_port
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
from .runtime import (
    PORT_PLACEHOLDER,
    Capabilities,
    Endpoint,
    Instance,
    InstanceSpec,
    Runtime,
    SnapshotInfo,
)
from .suspend import CudaEngine, HooksEngine, SuspendEngine, SuspendTarget, make_engine
from .system import EngineChoice, choose_engine, pid_namespaces_work
from .units import format_size, parse_size

__all__ = [
    "PORT_PLACEHOLDER",
    "Capabilities",
    "CgroupTree",
    "CheckpointFailed",
    "CpuDevice",
    "CudaEngine",
    "Demotion",
    "Device",
    "DeviceUnavailable",
    "Endpoint",
    "EngineChoice",
    "FakeInstance",
    "FakeRuntime",
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
    "ProcessInstance",
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
    "free_port",
    "is_thrash",
    "make_engine",
    "open_device",
    "parse_size",
    "pid_namespaces_work",
    "should_defer",
    "spawn",
    "wait_healthy",
]
