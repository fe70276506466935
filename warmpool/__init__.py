"""Resource plane: instances on this machine and their lifecycle."""

from .errors import StartFailed, WarmpoolError
from .health import wait_healthy
from .instance import Instance, InstanceSpec, OutputTail, spawn
from .local import LocalRuntime
from .system import EngineChoice, choose_engine, pid_namespaces_work

__all__ = [
    "EngineChoice",
    "Instance",
    "InstanceSpec",
    "LocalRuntime",
    "OutputTail",
    "StartFailed",
    "WarmpoolError",
    "choose_engine",
    "pid_namespaces_work",
    "spawn",
    "wait_healthy",
]
