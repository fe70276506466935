"""The Runtime seam: everything a workload needs from wherever its instances run.

A ``Workload`` (activator/) owns one workload's state; it talks to instances only
through this protocol. A runtime must implement:

* ``boot(spec)`` — start the command and return once it answers its health check.
* ``restore(spec)`` — bring the newest usable snapshot back, or return None when there
  is none (a snapshot of another command, env or cwd is none: ``spec.fingerprint()``).
  A snapshot that fails to restore is retired by the runtime (marked bad) and
  ``RestoreFailed`` is raised; the workload then cold-boots. When the environment refused
  (a port taken, no file descriptors, no space, no permission, a timeout) the snapshot is
  kept and ``RestoreDeferred`` is raised: nothing boots over it
  (``warmpool.runtimes.verdict`` draws the line).
* ``checkpoint(instance)`` — capture a drained instance into a committed snapshot; the
  instance is gone afterwards. On failure ``CheckpointFailed`` says which instance (if
  any) is serving now.
* ``suspend`` / ``resume`` — park device memory in host RAM and back, where the
  runtime's engine can (``capabilities.suspend``); otherwise ``NotSupported``.
* ``stop(instance)``, ``latest(name)`` (the newest usable snapshot, for status and the
  initial state; ``RestoreDeferred`` when the store cannot be read now), ``capabilities``.
* ``set_aside(name, snapshot_id, reason)`` — take a snapshot that restores but whose
  restored process keeps dying out of use as *suspect* (kept, with the reason; never
  restored again). False when the runtime cannot (its snapshots live elsewhere).
* ``idle_for(instance)`` — seconds since the instance itself last carried traffic, for a
  runtime whose instances can be reached without the activator (a pod behind its Service:
  warm traffic bypasses the proxy); None when it cannot tell (local processes: the
  activator sees every request), and then the activator's own view stands.

Errors are warmpool's own (``WarmpoolError`` and below): a runtime translates
``OSError``, subprocess, snapshot-store and HTTP-client errors at this boundary.
An ``Instance`` carries its ``Endpoint``: nothing outside a runtime assumes loopback.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from snapshots.fingerprint import fingerprint

__all__ = [
    "PORT_PLACEHOLDER",
    "Capabilities",
    "Endpoint",
    "Instance",
    "InstanceSpec",
    "Runtime",
    "SnapshotInfo",
]


@dataclass(frozen=True)
class Endpoint:
    """Where an instance serves HTTP: ``scheme://host:port``."""

    host: str
    port: int
    scheme: str = "http"

    @property
    def authority(self) -> str:
        """``host:port``, with an IPv6 host in brackets."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        """``scheme://host:port`` (no trailing slash): append a path that starts with '/'."""
        return f"{self.scheme}://{self.authority}"

    def __str__(self) -> str:
        return self.url


PORT_PLACEHOLDER = "{port}"
"""Left in ``InstanceSpec.command`` where the port goes: the runtime that chooses the
port fills it in (``InstanceSpec.with_port``)."""


@dataclass(frozen=True)
class InstanceSpec:
    """How to run one workload's server, whatever the runtime. ``command`` is formatted
    except for ``{port}`` (PORT_PLACEHOLDER); ``port`` 0 lets the runtime choose one."""

    name: str
    command: Sequence[str]
    port: int = 0
    health_path: str = "/health"
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    start_timeout: float = 300.0
    """Seconds a cold boot may take until healthy."""
    stop_timeout: float = 10.0
    """Seconds between SIGTERM and SIGKILL."""
    checkpoint_timeout: float = 120.0
    """Seconds a checkpoint (dump and commit) may take."""
    restore_timeout: float = 60.0
    """Seconds a restore plus the first healthy answer may take."""
    keep_snapshots: int = 1
    """Usable snapshots kept after a checkpoint (older ones are deleted)."""
    suspend: str = "none"
    """The suspend engine: 'none', 'cuda' or 'hooks' (warmpool.suspend)."""
    hooks: Mapping[str, str] = field(default_factory=dict)
    """suspend 'hooks': {'sleep': 'POST /sleep?level=1', 'wake': 'POST /wake_up'}."""

    def fingerprint(self) -> dict[str, str]:
        """What this spec starts (``snapshots.fingerprint``): ``command`` as it stands
        (``{port}`` left in until ``with_port``), ``env`` and ``cwd``. A snapshot recorded
        with another fingerprint is not this workload's: never restored."""
        return fingerprint(self.command, self.env, str(self.cwd) if self.cwd else None)

    @property
    def told_port(self) -> bool:
        """Whether the command is told where to listen: ``{port}`` in it, or a fixed port
        (a command with neither cannot know the port the runtime chooses)."""
        return self.port != 0 or any(PORT_PLACEHOLDER in arg for arg in self.command)

    def with_port(self, port: int) -> InstanceSpec:
        """This spec on ``port``, with the port filled into the command."""
        command = tuple(arg.replace(PORT_PLACEHOLDER, str(port)) for arg in self.command)
        return replace(self, port=port, command=command)


@dataclass(frozen=True)
class Capabilities:
    """What a runtime can do here, and why not when it cannot."""

    engine: str
    """The checkpoint engine's name: 'criu', or 'restart' when there is none."""
    checkpoint: bool
    checkpoint_why: str = ""
    """Empty when ``checkpoint``; else why (and what to do)."""
    suspend: bool = False
    suspend_why: str = "suspend is not implemented by this runtime"


@dataclass(frozen=True)
class SnapshotInfo:
    """A committed snapshot, as a workload sees it."""

    id: str
    bytes: int
    created: float
    """Unix time."""
    checkpoint_seconds: float = 0.0


@runtime_checkable
class Instance(Protocol):
    """One running copy of a workload."""

    @property
    def endpoint(self) -> Endpoint: ...

    @property
    def restored_from(self) -> str | None:
        """The snapshot id it was restored from; None when it was booted."""
        ...

    def alive(self) -> bool: ...

    def exit_reason(self) -> str:
        """Why it is gone ('running' while alive), with its last output where known."""
        ...

    def describe(self) -> dict[str, Any]:
        """Runtime-specific facts for status pages (pid, pod, cgroup, ...): JSON values."""
        ...


class Runtime(Protocol):
    """Starts, checkpoints, restores and stops instances (see the module docstring)."""

    @property
    def capabilities(self) -> Capabilities: ...

    def latest(self, name: str) -> SnapshotInfo | None: ...

    def set_aside(self, name: str, snapshot_id: str, reason: str) -> bool: ...

    async def boot(self, spec: InstanceSpec) -> Instance: ...

    async def restore(self, spec: InstanceSpec) -> Instance | None: ...

    async def checkpoint(self, instance: Instance) -> SnapshotInfo: ...

    async def suspend(self, instance: Instance) -> None: ...

    async def resume(self, instance: Instance) -> None: ...

    async def stop(self, instance: Instance) -> None: ...

    async def idle_for(self, instance: Instance) -> float | None: ...
