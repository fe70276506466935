"""The value types of Dormant's settings: how each kind of YAML value is read and checked
(with Dormant's own one-line messages) and how it is described in the JSON Schema.

Each type is ``Annotated[T, BeforeValidator(parse), WithJsonSchema(schema)]``: ``parse``
takes what YAML gives (``'5m'``, ``300``, a string or a list for a command) and returns
the Python value the rest of Dormant reads (seconds as a float, tuples) or calls
``reject`` with the reason; pydantic adds the key path. ``x-dormant-type`` in a schema
names the kind of value for the docs and the CRD schema (``activator.config.schema``).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn

from pydantic import BeforeValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

from warmpool.suspend import Hook
from warmpool.units import parse_size

__all__ = [
    "DURATION_PATTERN",
    "KINDS",
    "REAP_INTERVAL_MIN",
    "REJECTED",
    "RUNTIMES",
    "SIZE_PATTERN",
    "Args",
    "BodyBytes",
    "Bool",
    "Command",
    "Count",
    "CountOrZero",
    "DeviceKind",
    "Duration",
    "Engine",
    "Env",
    "ExistingFile",
    "HealthPath",
    "HookCall",
    "Hosts",
    "Kind",
    "Listen",
    "ListenOrEmpty",
    "LogFormat",
    "LogLevel",
    "Memory",
    "Models",
    "Name",
    "OnShutdown",
    "PathPrefix",
    "Port",
    "Priority",
    "ReapInterval",
    "RuntimeName",
    "Size",
    "SizeOrZero",
    "Str",
    "SuspendKind",
    "TemplatePath",
    "Timeout",
    "Tracing",
    "human_duration",
    "is_host_port",
    "listen_problem",
    "reject",
]

REJECTED = "dormant"
"""The pydantic error type of a value Dormant's own checks refused (see ``reject``)."""

DURATION_PATTERN = r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$"
"""A duration written as text: a number and an optional unit (ms, s, m, h; none = s)."""
_DURATION_RE = re.compile(DURATION_PATTERN)
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
REAP_INTERVAL_MIN = 0.05
"""Seconds: the shortest reap_interval (a smaller one keeps a CPU core busy)."""
_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9_.-]{0,61}[a-z0-9])?$")
_LISTEN_PATTERN = r"^.+:[0-9]{1,5}$"


def reject(message: str, at: str = "") -> NoReturn:
    """Refuse a value with ``message``; ``at`` extends the key path pydantic knows (a key
    of a mapping, an index of a list: ``"A"``, ``"[1]"``)."""
    raise PydanticCustomError(REJECTED, "{message}", {"message": message, "at": at})


def is_host_port(value: str) -> bool:
    """``HOST:PORT`` with a port from 1 to 65535."""
    host, sep, port = value.rpartition(":")
    return bool(sep and host and port.isdigit() and 0 < int(port) < 65536)


def _seconds(value: Any) -> float:
    if isinstance(value, bool):
        reject(f"expected a duration like '30s' or '5m', got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION_RE.match(str(value))
        if not match:
            reject(f"expected a duration like '30s' or '5m', got {value!r}")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if math.isnan(seconds) or math.isinf(seconds):
        reject(f"expected a finite duration like '30s' or '5m', got {value!r}")
    if seconds < 0:
        reject(f"must not be negative, got {value!r}")
    return seconds


def _duration_parser(minimum: float, *, zero_ok: bool) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        seconds = _seconds(value)
        if seconds < minimum:
            reject(f"must be at least {human_duration(minimum)}, got {value!r}")
        if seconds == 0 and not zero_ok:
            reject(f"must be more than 0, got {value!r}")
        return seconds

    return parse


def _duration_schema(minimum: float, *, zero_ok: bool) -> dict[str, Any]:
    number: dict[str, Any] = {"type": "number"}
    number["minimum" if zero_ok or minimum else "exclusiveMinimum"] = minimum
    return {
        "anyOf": [number, {"type": "string", "pattern": DURATION_PATTERN}],
        "x-dormant-type": "duration",
    }


Duration = Annotated[
    float,
    BeforeValidator(_duration_parser(0.0, zero_ok=True)),
    WithJsonSchema(_duration_schema(0.0, zero_ok=True)),
]
"""Seconds, >= 0: a number or '250ms', '30s', '5m', '1h'."""
Timeout = Annotated[
    float,
    BeforeValidator(_duration_parser(0.0, zero_ok=False)),
    WithJsonSchema(_duration_schema(0.0, zero_ok=False)),
]
"""Seconds, > 0."""
ReapInterval = Annotated[
    float,
    BeforeValidator(_duration_parser(REAP_INTERVAL_MIN, zero_ok=False)),
    WithJsonSchema(_duration_schema(REAP_INTERVAL_MIN, zero_ok=False)),
]
"""Seconds, >= REAP_INTERVAL_MIN."""


def human_duration(seconds: float) -> str:
    """A duration as the YAML would say it: 300.0 -> '5m', 0.05 -> '50ms'."""
    if seconds == 0:
        return "0s"
    for unit, size in (("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if seconds >= size and (seconds / size).is_integer():
            return f"{int(seconds / size)}{unit}"
    if seconds < 1 and (seconds * 1000).is_integer():
        return f"{int(seconds * 1000)}ms"
    return f"{seconds:g}s"


def _int_parser(minimum: int, maximum: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            reject(f"expected an integer, got {value!r}")
        if not minimum <= value <= maximum:
            reject(f"must be between {minimum} and {maximum}, got {value}")
        return value

    return parse


def _int_schema(minimum: int, maximum: int) -> WithJsonSchema:
    return WithJsonSchema({"type": "integer", "minimum": minimum, "maximum": maximum})


Port = Annotated[int, BeforeValidator(_int_parser(0, 65535)), _int_schema(0, 65535)]
Count = Annotated[int, BeforeValidator(_int_parser(1, 1_000_000)), _int_schema(1, 1_000_000)]
CountOrZero = Annotated[int, BeforeValidator(_int_parser(0, 1_000_000)), _int_schema(0, 1_000_000)]
BodyBytes = Annotated[int, BeforeValidator(_int_parser(1024, 1 << 30)), _int_schema(1024, 1 << 30)]


def _str(value: Any) -> str:
    if not isinstance(value, str):
        reject(f"expected a string, got {value!r}")
    return value


def _string_parser(check: Callable[[str], str]) -> Callable[[Any], str]:
    return lambda value: check(_str(value))


def _string_schema(**extra: Any) -> WithJsonSchema:
    return WithJsonSchema({"type": "string", **extra})


Str = Annotated[str, BeforeValidator(_str), _string_schema()]


def _choice_parser(
    choices: tuple[str, ...], special: Callable[[str], None] | None = None
) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if special and isinstance(value, str):
            special(value)
        if value not in choices:
            quoted = [repr(c) for c in choices]
            reject(f"must be {', '.join(quoted[:-1])} or {quoted[-1]} (got {value!r})")
        return str(value)

    return parse


def _choice_schema(choices: tuple[str, ...]) -> WithJsonSchema:
    return WithJsonSchema({"type": "string", "enum": list(choices)})


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        reject(f"expected true or false, got {value!r}")
    return value


Bool = Annotated[bool, BeforeValidator(_bool), WithJsonSchema({"type": "boolean"})]


def _placeholders(value: str, allowed: tuple[str, ...], at: str = "") -> None:
    try:
        value.format(**dict.fromkeys(allowed, ""))
    except (KeyError, IndexError, ValueError) as exc:
        names = ", ".join(f"{{{a}}}" for a in allowed)
        reject(f"bad placeholder {exc}; use {names} (and {{{{ }}}} for literal braces)", at)


_COMMAND_PLACEHOLDERS = ("port", "python", "state_dir", "name")
_PATH_PLACEHOLDERS = ("state_dir", "name")


def _argv(value: Any, *, non_empty: bool) -> tuple[str, ...]:
    if isinstance(value, str):
        value = value.split()
    items_ok = isinstance(value, list | tuple) and all(
        isinstance(v, str | int | float) for v in value
    )
    if not items_ok or (non_empty and not value):
        reject(f"expected a {'non-empty ' if non_empty else ''}list of strings")
    argv = tuple(str(v) for v in value)
    for i, arg in enumerate(argv):
        _placeholders(arg, _COMMAND_PLACEHOLDERS, f"[{i}]")
    return argv


def _argv_schema(min_items: int) -> WithJsonSchema:
    items = {"type": ["string", "number"]}
    return WithJsonSchema(
        {
            "anyOf": [
                {"type": "array", "items": items, "minItems": min_items},
                {"type": "string", "description": "split on whitespace"},
            ],
            "x-dormant-type": "argv",
        }
    )


Command = Annotated[
    tuple[str, ...], BeforeValidator(lambda v: _argv(v, non_empty=True)), _argv_schema(1)
]
Args = Annotated[
    tuple[str, ...], BeforeValidator(lambda v: _argv(v, non_empty=False)), _argv_schema(0)
]


def _names_parser(what: str, lower: bool = False) -> Callable[[Any], tuple[str, ...]]:
    def parse(value: Any) -> tuple[str, ...]:
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v for v in value):
            reject(f"expected a list of {what}")
        return tuple(v.lower() for v in value) if lower else tuple(value)

    return parse


_NAMES_SCHEMA = WithJsonSchema({"type": "array", "items": {"type": "string", "minLength": 1}})
Models = Annotated[tuple[str, ...], BeforeValidator(_names_parser("model names")), _NAMES_SCHEMA]
Hosts = Annotated[
    tuple[str, ...], BeforeValidator(_names_parser("host names", lower=True)), _NAMES_SCHEMA
]


def _env(value: Any) -> tuple[tuple[str, str], ...]:
    if isinstance(value, tuple):  # already parsed (a copy of a validated value)
        return value
    if not isinstance(value, dict):
        reject("expected a mapping of NAME: value")
    for key, item in value.items():
        if item is None or isinstance(item, list | dict):
            reject(f"expected a string or a number, got {item!r}", f"{key}")
    return tuple((str(k), str(v)) for k, v in value.items())


Env = Annotated[
    tuple[tuple[str, str], ...],
    BeforeValidator(_env),
    WithJsonSchema(
        {
            "type": "object",
            "additionalProperties": {"type": ["string", "number", "boolean"]},
            "x-dormant-type": "env",
        }
    ),
]


def _name(value: Any) -> str:
    if not isinstance(value, str) or not _NAME_RE.match(value):
        reject(f"use lowercase letters, digits, '-', '_', '.' (got {value!r})")
    return value


Name = Annotated[
    str, BeforeValidator(_name), WithJsonSchema({"type": "string", "pattern": _NAME_RE.pattern})
]


def _path_prefix(value: str) -> str:
    if value and (not value.startswith("/") or value.endswith("/")):
        reject(f"must start with '/' and not end with '/' ({value!r})")
    return value


def _health_path(value: str) -> str:
    if not value.startswith("/"):
        reject("must start with '/'")
    return value


def _template_path(value: str) -> str:
    _placeholders(value, _PATH_PLACEHOLDERS)
    return os.path.expanduser(value)


def _existing_file(value: str) -> str:
    if value and not Path(value).expanduser().is_file():
        reject(f"{value!r} does not exist")
    return str(Path(value).expanduser()) if value else value


def listen_problem(value: object) -> str:
    """Why ``value`` is not a HOST:PORT, the same for the config key and ``--listen``."""
    text = str(value)
    hint = f" (a port alone: write 127.0.0.1:{text})" if text.isdigit() else ""
    return f"expected HOST:PORT like 127.0.0.1:8080, got {text!r}{hint}"


def _listen_parser(empty_ok: bool) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if isinstance(value, int) and not isinstance(value, bool):
            reject(listen_problem(value))  # `listen: 8080` reads as a number
        value = _str(value)
        if empty_ok and value == "":
            return value
        if not is_host_port(value):
            reject(listen_problem(value))
        return value

    return check


Listen = Annotated[
    str,
    BeforeValidator(_listen_parser(False)),
    _string_schema(pattern=_LISTEN_PATTERN, **{"x-dormant-type": "address"}),
]
ListenOrEmpty = Annotated[
    str,
    BeforeValidator(_listen_parser(True)),
    _string_schema(pattern=f"^$|{_LISTEN_PATTERN}", **{"x-dormant-type": "address"}),
]
PathPrefix = Annotated[
    str,
    BeforeValidator(_string_parser(_path_prefix)),
    _string_schema(pattern=r"^$|^/.*[^/]$"),
]
HealthPath = Annotated[
    str, BeforeValidator(_string_parser(_health_path)), _string_schema(pattern="^/")
]
TemplatePath = Annotated[str, BeforeValidator(_string_parser(_template_path)), _string_schema()]
ExistingFile = Annotated[str, BeforeValidator(_string_parser(_existing_file)), _string_schema()]


def _no_leave(value: str) -> None:
    if value == "leave":
        reject(
            "'leave' is not supported: instances never outlive Dormant "
            "(that is what keeps a killed Dormant from leaving servers behind); "
            "use 'hibernate' to keep their state across a restart"
        )


KINDS = ("openai", "http", "jupyter")
"""What a workload is: routed by `model`, by path or Host, or a notebook server."""
_ENGINES = ("auto", "criu", "restart")
_LOG_LEVELS = ("debug", "info", "warning", "error")
_LOG_FORMATS = ("text", "json")
_TRACING = ("off", "otlp", "console")
_ON_SHUTDOWN = ("stop", "hibernate")
Kind = Annotated[str, BeforeValidator(_choice_parser(KINDS)), _choice_schema(KINDS)]
Engine = Annotated[str, BeforeValidator(_choice_parser(_ENGINES)), _choice_schema(_ENGINES)]
LogLevel = Annotated[str, BeforeValidator(_choice_parser(_LOG_LEVELS)), _choice_schema(_LOG_LEVELS)]
LogFormat = Annotated[
    str, BeforeValidator(_choice_parser(_LOG_FORMATS)), _choice_schema(_LOG_FORMATS)
]
Tracing = Annotated[str, BeforeValidator(_choice_parser(_TRACING)), _choice_schema(_TRACING)]
OnShutdown = Annotated[
    str, BeforeValidator(_choice_parser(_ON_SHUTDOWN, _no_leave)), _choice_schema(_ON_SHUTDOWN)
]
RUNTIMES = ("local", "kubernetes")
"""Where instances run: processes on this machine, or the pods of ScaleToZeroPolicies."""
RuntimeName = Annotated[str, BeforeValidator(_choice_parser(RUNTIMES)), _choice_schema(RUNTIMES)]


# -- the warm pool --------------------------------------------------------------------------

SIZE_PATTERN = r"^\s*(\d+(\.\d+)?|\.\d+)\s*([kKmMgGtT][iI]?[bB]?|[bB])?\s*$"
"""A size written as text: a number and an optional unit (B, KB/MB/GB/TB: powers of 1000;
KiB/MiB/GiB/TiB: powers of 1024)."""


def _size_parser(*, zero_ok: bool, auto_ok: bool = False) -> Callable[[Any], int | None]:
    def parse(value: Any) -> int | None:
        if auto_ok and value == "auto":
            return None
        try:
            size = parse_size(value)
        except ValueError as exc:
            reject(f"{exc}" + (" or 'auto'" if auto_ok else ""))
        if size == 0 and not zero_ok:
            reject(f"must be more than 0, got {value!r}")
        return size

    return parse


def _size_schema(*, zero_ok: bool, auto_ok: bool = False) -> WithJsonSchema:
    pattern = f"^auto$|{SIZE_PATTERN}" if auto_ok else SIZE_PATTERN
    return WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 0 if zero_ok else 1},
                {"type": "string", "pattern": pattern},
            ],
            "x-dormant-type": "memory" if auto_ok else "size",
        }
    )


Size = Annotated[int, BeforeValidator(_size_parser(zero_ok=False)), _size_schema(zero_ok=False)]
"""Bytes, > 0: a number of bytes or '6GiB', '900MiB', '1.5GB'."""
SizeOrZero = Annotated[int, BeforeValidator(_size_parser(zero_ok=True)), _size_schema(zero_ok=True)]
"""Bytes, >= 0."""
Memory = Annotated[
    int | None,
    BeforeValidator(_size_parser(zero_ok=False, auto_ok=True)),
    _size_schema(zero_ok=False, auto_ok=True),
]
"""Bytes, or None for 'auto' (measured while it runs)."""
Priority = Annotated[int, BeforeValidator(_int_parser(-1000, 1000)), _int_schema(-1000, 1000)]

_SUSPEND_KINDS = ("none", "cuda", "hooks")
_DEVICE_KINDS = ("auto", "cpu", "nvidia")
SuspendKind = Annotated[
    str, BeforeValidator(_choice_parser(_SUSPEND_KINDS)), _choice_schema(_SUSPEND_KINDS)
]
DeviceKind = Annotated[
    str, BeforeValidator(_choice_parser(_DEVICE_KINDS)), _choice_schema(_DEVICE_KINDS)
]


def _hook(value: str) -> str:
    try:
        return str(Hook.parse(value))
    except ValueError as exc:
        reject(str(exc))


HookCall = Annotated[
    str,
    BeforeValidator(_string_parser(_hook)),
    _string_schema(pattern=r"^(GET|POST|PUT|PATCH|DELETE) /"),
]
"""One HTTP call: 'METHOD /path?query'."""
