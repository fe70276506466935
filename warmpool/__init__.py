"""Resource plane: instances on this machine and their lifecycle."""

from .errors import CheckpointFailed, NotSupported, RestoreFailed, StartFailed, WarmpoolError
from .health import wait_healthy
from .instance import Instance, OutputTail, spawn
from .local import LocalRuntime
from .runtime import Capabilities, Endpoint, InstanceSpec, Runtime, SnapshotInfo
from .system import EngineChoice, choose_engine, pid_namespaces_work

__all__ = [
    "Capabilities",
    "CheckpointFailed",
    "Endpoint",
    "EngineChoice",
    "Instance",
    "InstanceSpec",
    "LocalRuntime",
    "NotSupported",
    "OutputTail",
    "RestoreFailed",
    "Runtime",
    "SnapshotInfo",
    "StartFailed",
    "WarmpoolError",
    "choose_engine",
    "pid_namespaces_work",
    "spawn",
    "wait_healthy",
]
