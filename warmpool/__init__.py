"""Resource plane: runtimes (where instances run), their instances and lifecycle.

The seam is ``Runtime`` (warmpool/runtime.py); ``LocalRuntime`` runs instances as
process trees on this machine, ``FakeRuntime`` stands in for tests.

A lazy face (PEP 562): ``import warmpool`` loads nothing else; each name below is
imported from its module on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from warmpool.device import (
        CpuDevice,
        Device,
        Footprint,
        NvidiaDevice,
        device_findings,
        open_device,
    )
    from warmpool.errors import (
        CheckpointFailed,
        DeviceUnavailable,
        NotSupported,
        RestoreDeferred,
        RestoreFailed,
        ResumeFailed,
        StartFailed,
        SuspendFailed,
        WarmpoolError,
    )
    from warmpool.placement import (
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
    from warmpool.process.cgroup import CgroupTree
    from warmpool.process.health import wait_healthy
    from warmpool.process.instance import OutputTail, ProcessInstance, spawn
    from warmpool.runtime import (
        PORT_PLACEHOLDER,
        Capabilities,
        Endpoint,
        Instance,
        InstanceSpec,
        Runtime,
        SnapshotInfo,
    )
    from warmpool.runtimes.fake import FakeInstance, FakeRuntime
    from warmpool.runtimes.local import LocalRuntime, free_port
    from warmpool.suspend import CudaEngine, HooksEngine, SuspendEngine, SuspendTarget, make_engine
    from warmpool.system import EngineChoice, choose_engine, pid_namespaces_work
    from warmpool.units import format_size, parse_size

_WHERE = {
    "Capabilities": "warmpool.runtime",
    "CgroupTree": "warmpool.process.cgroup",
    "CheckpointFailed": "warmpool.errors",
    "CpuDevice": "warmpool.device",
    "CudaEngine": "warmpool.suspend",
    "Demotion": "warmpool.placement",
    "Device": "warmpool.device",
    "DeviceUnavailable": "warmpool.errors",
    "Endpoint": "warmpool.runtime",
    "EngineChoice": "warmpool.system",
    "FakeInstance": "warmpool.runtimes.fake",
    "FakeRuntime": "warmpool.runtimes.fake",
    "Footprint": "warmpool.device",
    "HooksEngine": "warmpool.suspend",
    "Instance": "warmpool.runtime",
    "InstanceSpec": "warmpool.runtime",
    "LocalRuntime": "warmpool.runtimes.local",
    "Member": "warmpool.placement",
    "NotSupported": "warmpool.errors",
    "NvidiaDevice": "warmpool.device",
    "OutputTail": "warmpool.process.instance",
    "PORT_PLACEHOLDER": "warmpool.runtime",
    "Plan": "warmpool.placement",
    "ProcessInstance": "warmpool.process.instance",
    "RestoreDeferred": "warmpool.errors",
    "RestoreFailed": "warmpool.errors",
    "ResumeFailed": "warmpool.errors",
    "Runtime": "warmpool.runtime",
    "SnapshotInfo": "warmpool.runtime",
    "StartFailed": "warmpool.errors",
    "SuspendEngine": "warmpool.suspend",
    "SuspendFailed": "warmpool.errors",
    "SuspendTarget": "warmpool.suspend",
    "Tier": "warmpool.placement",
    "Verdict": "warmpool.placement",
    "WarmpoolError": "warmpool.errors",
    "choose_engine": "warmpool.system",
    "choose_victims": "warmpool.placement",
    "device_findings": "warmpool.device",
    "fits_ever": "warmpool.placement",
    "format_size": "warmpool.units",
    "free_port": "warmpool.runtimes.local",
    "is_thrash": "warmpool.placement",
    "make_engine": "warmpool.suspend",
    "open_device": "warmpool.device",
    "parse_size": "warmpool.units",
    "pid_namespaces_work": "warmpool.system",
    "should_defer": "warmpool.placement",
    "spawn": "warmpool.process.instance",
    "wait_healthy": "warmpool.process.health",
}

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
    "RestoreDeferred",
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


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'warmpool' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
