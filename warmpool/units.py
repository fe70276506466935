"""Sizes in config and status: ``"6GiB"``, ``"900MiB"``, ``"1.5GB"``, ``4096`` → bytes, and back.

Pure functions; the settings use ``parse_size`` to validate ``device.memory_budget``,
``device.reserve`` and a workload's declared ``memory``.
"""

from __future__ import annotations

import math
import re

__all__ = ["format_size", "parse_size"]

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "ki": 1 << 10,
    "kib": 1 << 10,
    "mi": 1 << 20,
    "mib": 1 << 20,
    "gi": 1 << 30,
    "gib": 1 << 30,
    "ti": 1 << 40,
    "tib": 1 << 40,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*([a-zA-Z]*)\s*$")
_EXPECTED = "expected a size like '6GiB', '900MiB', '1.5GB' or a number of bytes"


def parse_size(value: object) -> int:
    """Bytes from an int (bytes) or a string with an optional unit.

    Units: B, K/KB, M/MB, G/GB, T/TB (powers of 1000) and KiB, MiB, GiB, TiB (powers of
    1024), case-insensitive. Fractions are allowed with a unit and rounded down to whole
    bytes. Raises ValueError saying what was expected and what was given (a bool, a
    negative size or an unknown unit included)."""
    if isinstance(value, bool):
        raise ValueError(f"{_EXPECTED}, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a size cannot be negative, got {value}")
        return value
    if isinstance(value, float):
        if not math.isfinite(value) or value < 0 or value != int(value):
            raise ValueError(f"{_EXPECTED}, got {value!r}")
        return int(value)
    if not isinstance(value, str):
        raise ValueError(f"{_EXPECTED}, got {value!r}")
    match = _SIZE_RE.match(value)
    if not match:
        raise ValueError(f"{_EXPECTED}, got {value!r}")
    number, unit = match.groups()
    factor = _UNITS.get(unit.lower())
    if factor is None:
        raise ValueError(f"unknown size unit {unit!r} in {value!r}; {_EXPECTED}")
    if "." in number and factor == 1:
        raise ValueError(f"a number of bytes must be whole, got {value!r}")
    return int(float(number) * factor) if "." in number else int(number) * factor


def format_size(size: int | None) -> str:
    """``1536`` → ``'1.5KiB'``, ``6 << 30`` → ``'6.0GiB'``; None → ``'?'`` (not measured)."""
    if size is None:
        return "?"
    if size < 1024:
        return f"{size}B"
    value = float(size)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            return f"{value:.1f}{unit}"
    raise AssertionError("unreachable")
