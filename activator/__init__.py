"""Data plane: the activator proxy, workload state machines, admin API and CLI."""

from .app import create_app
from .errors import ActivatorError
from .lease import Lease
from .settings import ConfigError, Settings, WorkloadSettings, load_settings
from .states import TRANSITIONS, State
from .workload import Workload

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
