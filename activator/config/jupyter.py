"""How Dormant runs `jupyter server`: the command and the paths, as pure functions.

Nothing here touches a file or a process, and nothing is imported from the rest of
Dormant: the settings use it to build a ``kind: jupyter`` workload's command at load,
``activator.notebooks`` (token files, directories, the activity probe) re-exports it.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "BASE_PATH",
    "DEFAULT_ROOT_DIR",
    "JUPYTER_OPTIONS",
    "base_path",
    "health_path",
    "jupyter_command",
]

BASE_PATH = "/notebooks"
"""Every notebook server is served under BASE_PATH/NAME/."""

DEFAULT_ROOT_DIR = "{state_dir}/notebooks/{name}/files"
"""Where notebooks live when the config names no root_dir (created at start)."""

JUPYTER_OPTIONS: tuple[str, ...] = (
    "--ServerApp.open_browser=False",
    # Dormant runs as root where CRIU needs it, and its instances with it.
    "--ServerApp.allow_root=True",
    # The port is Dormant's to choose; never wander to another one.
    "--ServerApp.port_retries=0",
    # Clients reach Jupyter through Dormant with their own Host header (e.g. a public
    # name); Jupyter's DNS-rebinding guard would answer 403 to every non-local name.
    # The server itself only listens on 127.0.0.1 and its token auth stays on.
    "--ServerApp.allow_remote_access=True",
    # Hibernation makes wall-clock time jump: whatever counts idle time by the clock
    # would see hours of "inactivity" after a wake and shut things down. Dormant does
    # the idle handling; these are all off (their defaults, made explicit so a user's
    # jupyter_server_config.py cannot turn them on behind Dormant's back).
    "--ServerApp.shutdown_no_activity_timeout=0",
    "--MappingKernelManager.cull_idle_timeout=0",
    "--TerminalManager.cull_inactive_timeout=0",
    # Kernels talk to the server over unix sockets inside the checkpointed tree, so the
    # server and its kernels are dumped and restored together (tcp would need
    # --tcp-established and iptables).
    "--KernelManager.transport=ipc",
)
"""Dormant's fixed `jupyter server` settings (user `args` come after and may override)."""


def base_path(name: str) -> str:
    """The path prefix of notebook server ``name``: ``/notebooks/NAME`` (no trailing slash)."""
    return f"{BASE_PATH}/{name}"


def health_path(name: str) -> str:
    """The path that answers 200 once notebook server ``name`` is up (without the token)."""
    return base_path(name) + "/api"


def jupyter_command(name: str, python: str, root: str, args: Sequence[str]) -> tuple[str, ...]:
    """The argv template of notebook server ``name`` (placeholders filled at start).

    ``python`` runs ``-m jupyter_server`` (and, through the default kernel spec, the
    kernels); ``root`` is the directory served; ``args`` come last so they win."""
    return (
        python or "{python}",
        "-m",
        "jupyter_server",
        "--ServerApp.ip=127.0.0.1",
        "--ServerApp.port={port}",
        f"--ServerApp.base_url={base_path(name)}/",
        f"--ServerApp.root_dir={root or DEFAULT_ROOT_DIR}",
        *JUPYTER_OPTIONS,
        *args,
    )
