"""Data plane: the activator proxy, workload state machines, admin API and CLI.

A lazy face (PEP 562): ``import activator`` loads nothing else; each name below is
imported from its module on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from activator.app import create_app
    from activator.config.settings import ConfigError, Settings, WorkloadSettings, load_settings
    from activator.errors import ActivatorError
    from activator.lease import Lease
    from activator.states import TRANSITIONS, State
    from activator.workload import Workload

_WHERE = {
    "ActivatorError": "activator.errors",
    "ConfigError": "activator.config.settings",
    "Lease": "activator.lease",
    "Settings": "activator.config.settings",
    "State": "activator.states",
    "TRANSITIONS": "activator.states",
    "Workload": "activator.workload",
    "WorkloadSettings": "activator.config.settings",
    "create_app": "activator.app",
    "load_settings": "activator.config.settings",
}

__all__ = [
    "TRANSITIONS",
    "ActivatorError",
    "ConfigError",
    "Lease",
    "Settings",
    "State",
    "Workload",
    "WorkloadSettings",
    "create_app",
    "load_settings",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'activator' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
