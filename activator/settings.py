"""Settings: YAML validated once into frozen dataclasses.

Every field has a default and a one-line doc. A bad file fails at load with the
key path and the reason (``workloads[1].idle_after: expected a duration like
'30s' or '5m', got 'soon'``), never a traceback.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import yaml

from .jupyter import base_path, jupyter_command

__all__ = ["DEFAULT_CONFIG", "ConfigError", "Settings", "WorkloadSettings", "load_settings"]

DEFAULT_CONFIG = Path(__file__).with_name("default.yaml")
_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9_.-]{0,61}[a-z0-9])?$")
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key path and the problem."""


@dataclass(frozen=True)
class WorkloadSettings:
    """One workload: a server Dormant starts, hibernates and wakes."""

    name: str
    """Unique name; used in admin URLs and snapshot directories."""
    command: tuple[str, ...]
    """argv; may use {port}, {python}, {state_dir}, {name} (kind jupyter: built by Dormant)."""
    models: tuple[str, ...] = ()
    """OpenAI model names this workload serves (routes /v1/* by the `model` field)."""
    kind: str = "openai"
    """'openai' (routed by the JSON `model` field), 'http' (routed by path_prefix / hosts) or
    'jupyter' (a notebook server Dormant runs, served under /notebooks/NAME/)."""
    path_prefix: str = ""
    """kind http: requests whose path starts with this prefix go here (e.g. '/apps/grafana')."""
    strip_prefix: bool = False
    """kind http: remove path_prefix before forwarding."""
    hosts: tuple[str, ...] = ()
    """kind http: requests whose Host header (without port) is one of these go here."""
    port: int = 0
    """Upstream port on 127.0.0.1; 0 = pick a free one at start."""
    health_path: str = "/health"
    """GET path that answers 200 once the server is ready."""
    env: tuple[tuple[str, str], ...] = ()
    """Extra environment variables for the command."""
    cwd: str | None = None
    """Working directory for the command (default: Dormant's)."""
    idle_after: float = 300.0
    """Seconds with nothing in flight before it is hibernated; 0 = never."""
    start_timeout: float = 300.0
    """Seconds a cold boot may take until healthy."""
    wake_timeout: float = 120.0
    """Seconds a request may wait in the queue for a wake before 504."""
    queue_depth: int = 256
    """Requests that may wait (for a wake or a free slot); more get 503 + Retry-After."""
    max_in_flight: int = 0
    """Requests forwarded at once; more wait in the queue (0 = no limit)."""
    connect_timeout: float = 10.0
    """Seconds to connect to the upstream."""
    first_byte_timeout: float = 300.0
    """Seconds from forwarding a request to the upstream's response headers."""
    stream_idle_timeout: float = 300.0
    """Seconds a response body may go without a byte; there is no total-duration limit."""
    wake_keepalive: float = 0.0
    """For `stream: true` requests that wait for a wake: send an SSE comment this often
    (seconds) until the first real chunk, so clients and proxies do not time out (0 = off)."""
    drain_timeout: float = 30.0
    """Seconds to wait for in-flight requests before giving up a hibernation."""
    checkpoint_timeout: float = 120.0
    """Seconds a CRIU dump may take."""
    restore_timeout: float = 60.0
    """Seconds a CRIU restore plus first health answer may take."""
    stop_timeout: float = 10.0
    """Seconds between SIGTERM and SIGKILL when stopping."""
    retry_backoff: float = 5.0
    """After a failed start, seconds during which requests fail fast with the reason."""
    keep_snapshots: int = 1
    """Verified snapshots kept per workload (older ones are deleted)."""
    root_dir: str = ""
    """kind jupyter: the notebook directory served; may use {state_dir}, {name}
    (default {state_dir}/notebooks/{name}/files, created at start)."""
    python: str = ""
    """kind jupyter: the Python that runs jupyter_server and the kernels (default: Dormant's)."""
    args: tuple[str, ...] = ()
    """kind jupyter: extra `jupyter server` arguments, after Dormant's own (so they win)."""
    token_file: str = ""
    """kind jupyter: file holding the Jupyter token (default: generated at first start into
    {state_dir}/notebooks/{name}/token, mode 0600)."""


@dataclass(frozen=True)
class Settings:
    """The whole activator."""

    workloads: tuple[WorkloadSettings, ...]
    """What Dormant fronts."""
    listen: str = "127.0.0.1:8080"
    """HOST:PORT the activator listens on."""
    state_dir: str = ""
    """Snapshots, logs, generated models (default $DORMANT_STATE_DIR or ~/.local/state/dormant)."""
    engine: str = "auto"
    """'auto' (CRIU when it works here, else restart), 'criu' (required) or 'restart'."""
    criu_path: str = ""
    """A criu binary to use instead of searching (see `dormant check`)."""
    admin_token: str = ""
    """Bearer token required on /-/* admin routes (empty = none)."""
    admin_token_file: str = ""
    """File holding the admin token (wins over admin_token)."""
    reap_interval: float = 1.0
    """Seconds between idle checks."""
    max_body_bytes: int = 8 << 20
    """Largest request body accepted on /v1/* (bytes)."""
    log_level: str = "info"
    """debug, info, warning or error."""
    on_shutdown: str = "stop"
    """What happens to running workloads when Dormant stops: 'stop' or 'hibernate'.
    (Instances never outlive Dormant: that is what keeps a crash from leaving orphans.)"""
    admin_listen: str = ""
    """HOST:PORT for the admin API (/-/*) alone; empty = on `listen` with everything else."""

    @property
    def host(self) -> str:
        return self.listen.rsplit(":", 1)[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir).expanduser()

    def workload(self, name: str) -> WorkloadSettings | None:
        return next((w for w in self.workloads if w.name == name), None)

    def resolved_admin_token(self) -> str:
        if self.admin_token_file:
            return Path(self.admin_token_file).expanduser().read_text().strip()
        return self.admin_token or os.environ.get("DORMANT_ADMIN_TOKEN", "")


# -- parsing ---------------------------------------------------------------------------


def _duration(value: Any, path: str) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"{path}: expected a duration like '30s' or '5m', got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION_RE.match(str(value))
        if not match:
            raise ConfigError(f"{path}: expected a duration like '30s' or '5m', got {value!r}")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds < 0:
        raise ConfigError(f"{path}: must not be negative, got {value!r}")
    return seconds


def _integer(value: Any, path: str, minimum: int, maximum: int = 2**31) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{path}: expected an integer, got {value!r}")
    if not minimum <= value <= maximum:
        raise ConfigError(f"{path}: must be between {minimum} and {maximum}, got {value}")
    return value


def _string(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{path}: expected a string, got {value!r}")
    return value


def _check_keys(data: dict[str, Any], allowed: list[str], path: str) -> None:
    for key in data:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = (
                f" (did you mean {close[0]!r}?)" if close else f"; known keys: {', '.join(allowed)}"
            )
            raise ConfigError(f"{path}{'.' if path else ''}{key}: unknown key{hint}")


_DURATIONS = {
    "connect_timeout",
    "first_byte_timeout",
    "stream_idle_timeout",
    "wake_keepalive",
    "idle_after",
    "start_timeout",
    "wake_timeout",
    "drain_timeout",
    "checkpoint_timeout",
    "restore_timeout",
    "stop_timeout",
    "retry_backoff",
    "reap_interval",
}


_KINDS = ("openai", "http", "jupyter")
_JUPYTER_ONLY = ("root_dir", "python", "args", "token_file")
_NOT_FOR_JUPYTER = {
    "command": "Dormant builds it; use 'args' for extra arguments and 'python' for the interpreter",
    "models": "notebook servers are routed by path, not by model",
    "path_prefix": "it is always /notebooks/NAME",
    "strip_prefix": "Jupyter's base_url includes the prefix",
    "hosts": "notebook servers are routed by path (/notebooks/NAME/)",
    "health_path": "it is always /notebooks/NAME/api",
}


def _argv(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = value.split()
    if not isinstance(value, list) or not all(isinstance(v, str | int | float) for v in value):
        raise ConfigError(f"{where}: expected a list of strings")
    return tuple(str(v) for v in value)


def _placeholders(value: str, where: str, allowed: tuple[str, ...]) -> None:
    try:
        value.format(**dict.fromkeys(allowed, ""))
    except (KeyError, IndexError, ValueError) as exc:
        names = ", ".join(f"{{{a}}}" for a in allowed)
        raise ConfigError(
            f"{where}: bad placeholder {exc}; use {names} (and {{{{ }}}} for literal braces)"
        ) from None


def _check_kind_keys(data: dict[str, Any], path: str) -> None:
    """The kind first (it decides what else is needed), then keys only one kind uses."""
    if data.get("kind", "openai") not in _KINDS:
        raise ConfigError(
            f"{path}.kind: must be 'openai', 'http' or 'jupyter' (got {data['kind']!r})"
        )
    if data.get("kind") == "jupyter":
        for key, why in _NOT_FOR_JUPYTER.items():
            if key in data:
                raise ConfigError(f"{path}.{key}: not used by a 'jupyter' workload ({why})")
        return
    for key in _JUPYTER_ONLY:
        if key in data:
            raise ConfigError(f"{path}.{key}: only for workloads of kind 'jupyter'")


def _workload(data: Any, path: str) -> WorkloadSettings:
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping, got {type(data).__name__}")
    _check_keys(data, [f.name for f in fields(WorkloadSettings)], path)
    _check_kind_keys(data, path)
    for required in ("name",) if data.get("kind") == "jupyter" else ("name", "command"):
        if required not in data:
            raise ConfigError(f"{path}.{required}: required")
    out: dict[str, Any] = {}
    for key, value in data.items():
        where = f"{path}.{key}"
        if key in _DURATIONS:
            out[key] = _duration(value, where)
        elif key == "name":
            if not isinstance(value, str) or not _NAME_RE.match(value):
                raise ConfigError(
                    f"{where}: use lowercase letters, digits, '-', '_', '.' (got {value!r})"
                )
            out[key] = value
        elif key == "command":
            if isinstance(value, str):
                value = value.split()
            if (
                not isinstance(value, list)
                or not value
                or not all(isinstance(v, str | int | float) for v in value)
            ):
                raise ConfigError(f"{where}: expected a non-empty list of strings")
            out[key] = tuple(str(v) for v in value)
        elif key == "models":
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                raise ConfigError(f"{where}: expected a list of model names")
            out[key] = tuple(value)
        elif key == "kind":
            out[key] = value  # checked first, in _check_kind_keys
        elif key == "args":
            out[key] = _argv(value, where)
            for i, arg in enumerate(out[key]):
                _placeholders(arg, f"{where}[{i}]", ("port", "python", "state_dir", "name"))
        elif key in ("python", "root_dir"):
            if not _string(value, where):
                raise ConfigError(f"{where}: must not be empty")
            _placeholders(value, where, ("state_dir", "name"))
            out[key] = os.path.expanduser(value)
        elif key == "token_file":
            if not Path(_string(value, where)).expanduser().is_file():
                raise ConfigError(f"{where}: {value!r} does not exist")
            out[key] = str(Path(value).expanduser())
        elif key == "path_prefix":
            if value and (not _string(value, where).startswith("/") or value.endswith("/")):
                raise ConfigError(f"{where}: must start with '/' and not end with '/' ({value!r})")
            out[key] = value
        elif key == "strip_prefix":
            if not isinstance(value, bool):
                raise ConfigError(f"{where}: expected true or false, got {value!r}")
            out[key] = value
        elif key == "hosts":
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                raise ConfigError(f"{where}: expected a list of host names")
            out[key] = tuple(v.lower() for v in value)
        elif key == "port":
            out[key] = _integer(value, where, 0, 65535)
        elif key in ("queue_depth", "keep_snapshots"):
            out[key] = _integer(value, where, 1, 1_000_000)
        elif key == "max_in_flight":
            out[key] = _integer(value, where, 0, 1_000_000)
        elif key == "env":
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: expected a mapping of NAME: value")
            out[key] = tuple((str(k), str(v)) for k, v in value.items())
        elif key == "health_path":
            if not _string(value, where).startswith("/"):
                raise ConfigError(f"{where}: must start with '/'")
            out[key] = value
        else:
            out[key] = _string(value, where)
    if out.get("kind") == "jupyter":
        name = out["name"]
        out["command"] = jupyter_command(
            name, out.get("python", ""), out.get("root_dir", ""), out.get("args", ())
        )
        out["path_prefix"] = base_path(name)
        out["health_path"] = base_path(name) + "/api"  # answers without the token
    workload = WorkloadSettings(**out)
    format_command(workload, 1, Path("."))  # placeholders are checked at load, not at boot
    if workload.kind == "openai" and not workload.models:
        raise ConfigError(f"{path}.models: an 'openai' workload needs at least one model name")
    if workload.kind == "http" and not (workload.path_prefix or workload.hosts):
        raise ConfigError(f"{path}: an 'http' workload needs a path_prefix or hosts to route by")
    return workload


def parse_settings(data: Any, source: str = "config") -> Settings:
    """Validate a parsed YAML document."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    _check_keys(data, [f.name for f in fields(Settings)], "")
    raw = data.get("workloads")
    if not isinstance(raw, list) or not raw:
        raise ConfigError("workloads: expected a non-empty list")
    workloads = tuple(_workload(w, f"workloads[{i}]") for i, w in enumerate(raw))
    seen_names: set[str] = set()
    seen_models: dict[str, str] = {}
    for i, w in enumerate(workloads):
        if w.name in seen_names:
            raise ConfigError(f"workloads[{i}].name: duplicate name {w.name!r}")
        seen_names.add(w.name)
        for model in w.models:
            if model in seen_models:
                raise ConfigError(
                    f"workloads[{i}].models: {model!r} is already served by {seen_models[model]!r}"
                )
            seen_models[model] = w.name
    routes: dict[str, str] = {}
    for i, w in enumerate(workloads):
        paths = [f"path {w.path_prefix}"] if w.path_prefix else []
        for route in paths + [f"host {h}" for h in w.hosts]:
            if route in routes:
                raise ConfigError(f"workloads[{i}]: {route} is already routed to {routes[route]!r}")
            routes[route] = w.name
    out: dict[str, Any] = {"workloads": workloads}
    for key, value in data.items():
        if key == "workloads":
            continue
        if key in _DURATIONS:
            out[key] = _duration(value, key)
        elif key == "max_body_bytes":
            out[key] = _integer(value, key, 1024, 1 << 30)
        elif key == "engine":
            if value not in ("auto", "criu", "restart"):
                raise ConfigError(f"engine: must be 'auto', 'criu' or 'restart' (got {value!r})")
            out[key] = value
        elif key == "log_level":
            if value not in ("debug", "info", "warning", "error"):
                raise ConfigError(
                    f"log_level: must be debug, info, warning or error (got {value!r})"
                )
            out[key] = value
        elif key in ("listen", "admin_listen"):
            # admin_listen may be empty (admin API on `listen`); listen may not
            empty_ok = key == "admin_listen" and value == ""
            out[key] = "" if empty_ok else parse_listen(_string(value, key), key)
        elif key == "on_shutdown":
            if value == "leave":
                raise ConfigError(
                    "on_shutdown: 'leave' is not supported: instances never outlive Dormant "
                    "(that is what keeps a killed Dormant from leaving servers behind); "
                    "use 'hibernate' to keep their state across a restart"
                )
            if value not in ("stop", "hibernate"):
                raise ConfigError(f"on_shutdown: must be 'stop' or 'hibernate' (got {value!r})")
            out[key] = value
        else:
            out[key] = _string(value, key)
    settings = Settings(**out)
    if settings.admin_token_file and not Path(settings.admin_token_file).expanduser().is_file():
        raise ConfigError(f"admin_token_file: {settings.admin_token_file!r} does not exist")
    return settings


def parse_listen(value: str, path: str = "listen") -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{path}: expected HOST:PORT like 127.0.0.1:8080, got {value!r}")
    return value


def default_state_dir() -> str:
    if env := os.environ.get("DORMANT_STATE_DIR"):
        return env
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return os.path.join(base, "dormant")


def load_settings(
    path: str | os.PathLike[str] | None = None,
    *,
    listen: str | None = None,
    state_dir: str | None = None,
) -> Settings:
    """Read and validate a YAML file (the embedded default when ``path`` is None).
    ``listen`` and ``state_dir`` override the file."""
    source = Path(path) if path else DEFAULT_CONFIG
    try:
        text = source.read_text()
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read ({exc.strerror or exc})") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    settings = parse_settings(data, str(source))
    overrides: dict[str, Any] = {}
    if listen:
        overrides["listen"] = parse_listen(listen, "--listen")
    chosen_state = state_dir or settings.state_dir or default_state_dir()
    overrides["state_dir"] = str(Path(chosen_state).expanduser().resolve())
    return replace(settings, **overrides)


def format_command(workload: WorkloadSettings, port: int, state_dir: Path) -> tuple[str, ...]:
    """The workload's argv with placeholders filled in."""
    values = {
        "port": str(port),
        "python": sys.executable,
        "state_dir": str(state_dir),
        "name": workload.name,
    }
    try:
        return tuple(arg.format(**values) for arg in workload.command)
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(
            f"workload {workload.name}: command: bad placeholder {exc}; use {{port}}, {{python}}, "
            "{state_dir} or {name}"
        ) from exc
