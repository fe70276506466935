"""What to run for a workload: its settings turned into a runtime's ``InstanceSpec``.

Called before every boot or restore (a notebook server's token and runtime directory
are made ready here), so a ``Workload`` never touches paths or files itself.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import activator.notebooks as notebooks
from activator.config.settings import WorkloadSettings, format_command
from activator.errors import WakeFailed
from warmpool import PORT_PLACEHOLDER, InstanceSpec

__all__ = ["SpecFactory", "spec_factory"]

_PORT: Any = PORT_PLACEHOLDER  # {port} stays for the runtime, which chooses the port

SpecFactory = Callable[[], InstanceSpec]
"""Builds the spec for the next boot or restore; raises WakeFailed with the reason."""


def spec_factory(settings: WorkloadSettings, state_dir: Path) -> SpecFactory:
    """The spec factory of one workload. ``port`` 0 lets the runtime choose a port."""

    def build() -> InstanceSpec:
        env = dict(settings.env)
        if settings.kind == "jupyter":
            try:
                env.update(notebooks.prepare(settings, state_dir))
            except (OSError, ValueError) as exc:
                raise WakeFailed(
                    f"{settings.name}: cannot prepare the notebook server: {exc}",
                    workload=settings.name,
                ) from exc
        cwd = Path(settings.cwd) if settings.cwd else None
        if cwd is None and settings.kind == "jupyter":
            # Terminals start in the server's working directory: make it the notebook
            # directory (when that is absolute, so the server's own root_dir still resolves).
            root = notebooks.root_dir(settings, state_dir)
            cwd = root if root.is_absolute() else None
        return InstanceSpec(
            name=settings.name,
            command=format_command(settings, _PORT, state_dir),
            port=settings.port,
            health_path=settings.health_path,
            env=env,
            cwd=cwd,
            start_timeout=settings.start_timeout,
            stop_timeout=settings.stop_timeout,
            checkpoint_timeout=settings.checkpoint_timeout,
            restore_timeout=settings.restore_timeout,
            keep_snapshots=settings.keep_snapshots,
            suspend=settings.suspend,
            hooks={"sleep": settings.hooks.sleep, "wake": settings.hooks.wake},
        )

    return build
