"""Notebook servers: how Dormant runs `jupyter server`, and how it asks one what it is doing.

A ``kind: jupyter`` workload is an ``http`` workload whose command Dormant builds
(``jupyter_command``: pure, in ``activator.config.jupyter``, re-exported here), routed under
``/notebooks/NAME`` without stripping the prefix (Jupyter's ``base_url`` includes it).
At every start or restore, ``prepare`` makes the directories the server needs and hands
it its token through the environment, never on the command line (where ``ps`` shows it)
and never in a URL.

Before the idle reaper hibernates a notebook server it asks the server itself
(``ActivityProbe``): a kernel that is busy computing keeps it awake however long it
runs, even with no client connected, and so does a kernel or terminal that produced
output more recently than the proxy saw its user act. Jupyter's own server-wide
``last_activity`` is not asked: every poll of an open page refreshes it. The answer is
reduced to a ``JupyterActivity``; what to do with it is a pure rule in
``activator.reaper``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import shutil
import stat
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from activator.config.jupyter import (
    BASE_PATH,
    DEFAULT_ROOT_DIR,
    JUPYTER_OPTIONS,
    base_path,
    jupyter_command,
)
from activator.config.secrets import read_token_file
from warmpool import Endpoint

if TYPE_CHECKING:
    from activator.config.settings import WorkloadSettings

__all__ = [
    "BASE_PATH",
    "DEFAULT_ROOT_DIR",
    "JUPYTER_OPTIONS",
    "TERMINAL_SHELL",
    "ActivityProbe",
    "JupyterActivity",
    "ProbeFailed",
    "activity_from",
    "base_path",
    "ensure_token",
    "jupyter_command",
    "prepare",
    "read_token",
    "root_dir",
    "runtime_dir",
    "terminal_shell",
    "token_path",
]

log = logging.getLogger("dormant.notebooks")

TERMINAL_SHELL = "bash"
"""The shell Jupyter terminals run unless the workload's env sets SHELL (see terminal_shell)."""

_TOKEN_BYTES = 24
_SOCKET_PATH_MAX = 107  # sun_path, minus the terminating NUL
_KERNEL_SOCKET_SUFFIX = len("/kernel-") + 36 + len("-ipc-") + 5  # uuid, up to 5 digits


class ProbeFailed(Exception):
    """The notebook server did not say what it is doing (unreachable, refused, odd answer)."""


@dataclass(frozen=True)
class JupyterActivity:
    """What a Jupyter server reports about itself."""

    busy_kernels: int
    """Kernels whose execution_state is 'busy' (running code) right now."""
    idle_for: float
    """Seconds since a kernel or terminal last did something (kernel messages other than
    Jupyter's untracked housekeeping, terminal input or output); infinite when there is
    neither."""


# -- configuration (pure) ------------------------------------------------------------------


def token_path(workload: WorkloadSettings, state_dir: Path) -> Path:
    """The file holding the workload's Jupyter token: its ``token_file``, or
    STATE_DIR/notebooks/NAME/token (generated at first start, mode 0600)."""
    if workload.token_file:
        return Path(workload.token_file).expanduser()
    return state_dir / "notebooks" / workload.name / "token"


def root_dir(workload: WorkloadSettings, state_dir: Path) -> Path:
    """The directory the notebook server serves (relative paths are under ``cwd``)."""
    template = workload.root_dir or DEFAULT_ROOT_DIR
    path = Path(template.format(state_dir=state_dir, name=workload.name))
    return path if path.is_absolute() else Path(workload.cwd or ".") / path


def runtime_dir(workload: WorkloadSettings, state_dir: Path) -> Path:
    """JUPYTER_RUNTIME_DIR: kernel connection files and the kernels' unix sockets.

    STATE_DIR/notebooks/NAME/runtime when a kernel's socket path there fits in a unix
    socket address (107 bytes); otherwise a private directory directly in the system's
    temporary directory, ``dormant-UID-DIGEST`` (DIGEST: of the path it stands for)."""
    preferred = state_dir / "notebooks" / workload.name / "runtime"
    if len(os.fsencode(preferred)) + _KERNEL_SOCKET_SUFFIX <= _SOCKET_PATH_MAX:
        return preferred
    digest = hashlib.sha256(str(preferred).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"dormant-{os.getuid()}-{digest}"


def activity_from(
    kernels: Sequence[Mapping[str, Any]],
    terminals: Sequence[Mapping[str, Any]],
    now: datetime,
) -> JupyterActivity:
    """Reduce ``GET api/kernels`` and ``GET api/terminals`` answers to a JupyterActivity.

    Raises ValueError (or KeyError, TypeError) on answers that are not Jupyter's."""
    stamps = [
        _parse_time(k["last_activity"]) for k in (*kernels, *terminals) if "last_activity" in k
    ]
    busy = sum(1 for k in kernels if k["execution_state"] == "busy")
    if not stamps:
        return JupyterActivity(busy, float("inf"))
    return JupyterActivity(busy, max(0.0, (now - max(stamps)).total_seconds()))


def _parse_time(value: Any) -> datetime:
    stamp = datetime.fromisoformat(str(value))
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)


# -- effects ---------------------------------------------------------------------------------


def _private_dir(path: Path) -> None:
    """Create ``path`` (0700) and make sure nobody else owns or can enter it."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise OSError(f"{path} is not a directory owned by uid {os.getuid()}; refusing to use it")
    if info.st_mode & 0o077:
        path.chmod(0o700)


def read_token(path: Path) -> str:
    """The token in ``path`` (surrounding whitespace removed); OSError when unreadable,
    ValueError when empty."""
    return read_token_file(path, "the notebook's token file", "a notebook server needs a token")


def ensure_token(workload: WorkloadSettings, state_dir: Path) -> Path:
    """The workload's token file, generated now when the config names none (at start,
    so that its path can be shown before the first request). Raises OSError or
    ValueError."""
    path = token_path(workload, state_dir)
    if workload.token_file:
        read_token(path)
    else:
        _ensure_token(path)
    return path


def _ensure_token(path: Path) -> str:
    if not path.exists():
        _private_dir(path.parent)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(_TOKEN_BYTES) + "\n")
        log.info("generated a Jupyter token in %s", path)
    return read_token(path)


def prepare(workload: WorkloadSettings, state_dir: Path) -> dict[str, str]:
    """Before a start or a restore: create the directories, generate the token when the
    config names no ``token_file``, and return the environment the server needs
    (JUPYTER_TOKEN, JUPYTER_RUNTIME_DIR, SHELL). Raises OSError or ValueError."""
    path = token_path(workload, state_dir)
    token = read_token(path) if workload.token_file else _ensure_token(path)
    runtime = runtime_dir(workload, state_dir)
    _private_dir(runtime)
    if not workload.root_dir:
        root_dir(workload, state_dir).mkdir(parents=True, exist_ok=True)
    return {"JUPYTER_TOKEN": token, "JUPYTER_RUNTIME_DIR": str(runtime), **terminal_shell(workload)}


def terminal_shell(workload: WorkloadSettings) -> dict[str, str]:
    """``SHELL`` for the server's terminals: bash, unless the workload's ``env`` names one.

    Jupyter runs ``$SHELL`` in a terminal, or ``sh`` when it is unset (as it is under
    systemd or CI). Debian's sh (dash) keeps /dev/tty open, and CRIU refuses to
    checkpoint a session whose /dev/tty is held that way: every hibernation would fail
    while a terminal is open. bash does not, so Dormant chooses it rather than inherit
    whatever its own environment says."""
    if any(key == "SHELL" for key, _ in workload.env):
        return {}
    bash = shutil.which(TERMINAL_SHELL)
    if bash is None:
        log.warning(
            "%s: no %s on PATH; terminals run Jupyter's default shell, which may keep the "
            "server from hibernating while a terminal is open",
            workload.name,
            TERMINAL_SHELL,
        )
        return {}
    return {"SHELL": bash}


class ActivityProbe:
    """Asks a notebook server (at its endpoint, with its token) what it is doing.

    ``GET api/kernels`` and ``GET api/terminals`` (with ``no_track_activity``, so that
    asking is not itself activity) give each kernel's execution_state and last activity,
    and each terminal's last activity (a server without terminals answers 404: none)."""

    def __init__(self, client: httpx.AsyncClient, state_dir: Path, timeout: float = 5.0) -> None:
        self._client = client
        self._state_dir = state_dir
        self._timeout = timeout

    async def __call__(self, workload: WorkloadSettings, endpoint: Endpoint) -> JupyterActivity:
        """Raises ProbeFailed with the reason."""
        try:
            token = read_token(token_path(workload, self._state_dir))
        except (OSError, ValueError) as exc:
            raise ProbeFailed(f"cannot read the token: {exc}") from exc
        api = f"{endpoint.url}{base_path(workload.name)}/api"
        headers = {"Authorization": f"token {token}"}
        try:
            quiet = {"no_track_activity": "1"}
            kernels = await self._get(api, "/kernels", headers, quiet)
            terminals = await self._get(api, "/terminals", headers, quiet, missing=[])
            if not isinstance(kernels, list) or not isinstance(terminals, list):
                raise ValueError("unexpected JSON shape")
            return activity_from(kernels, terminals, datetime.now(UTC))
        except httpx.HTTPError as exc:
            raise ProbeFailed(f"{type(exc).__name__}: {exc}") from exc
        except (ValueError, KeyError, TypeError) as exc:
            raise ProbeFailed(f"not a Jupyter answer: {exc!r}") from exc

    async def _get(
        self,
        api: str,
        path: str,
        headers: dict[str, str],
        params: dict[str, str],
        missing: Any = None,
    ) -> Any:
        response = await self._client.get(
            api + path, headers=headers, params=params, timeout=self._timeout
        )
        if response.status_code == 404 and missing is not None:
            return missing
        if response.status_code != 200:
            raise ProbeFailed(f"GET api{path} answered {response.status_code}")
        return response.json()
