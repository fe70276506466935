"""Every accepted setting acts: each field is read somewhere outside the settings module.

A key that is parsed, validated and documented but never read is a lie in the docs
(``checkpoint_timeout`` and ``restore_timeout`` were such keys). The scan is by name,
over the code that can see settings at all: activator/ and deploy/ (warmpool and
snapshots cannot import activator; they get plain values, and their own attributes of
the same names, e.g. ``LocalRuntime.restore_timeout``, say nothing about the setting).

A field counts as read when, outside activator/settings*.py:
* ``X.field`` is read (``X`` not ``self``/``cls``: a class's own attribute is not a
  setting), or
* a function or property of the settings module is used there (``format_command``,
  ``Settings.port``, ``resolved_admin_token``) and reads the field itself, or
* the field goes into another one at load that is read (a notebook's ``python`` and
  ``args`` build its ``command``).
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from activator.config.settings import Settings, WorkloadSettings

ROOT = Path(__file__).resolve().parents[3]
SETTINGS_MODULES = {
    "activator/config/settings.py",
    "activator/config/types.py",
    "activator/config/schema.py",
}
SCANNED = ("activator", "deploy")

PENDING: dict[str, str] = {}
"""Fields whose reader is work in flight: name -> why; strict xfail, so the test says so
the day it lands (then remove the entry). Empty: checkpoint_timeout and restore_timeout
go through activator/specs.py, the metrics tokens through the app's /metrics check."""


def _used_names() -> set[str]:
    """Attribute reads (not on self/cls) and plain names used outside the settings module."""
    names: set[str] = set()
    for package in SCANNED:
        for path in (ROOT / package).rglob("*.py"):
            if str(path.relative_to(ROOT)) in SETTINGS_MODULES:
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
                    if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                        names.add(node.attr)
                elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
                    names.add(node.id)
                elif isinstance(node, ast.ImportFrom):
                    names |= {alias.name for alias in node.names}
    return names


def _settings_functions() -> dict[str, tuple[set[str], set[str]]]:
    """Each function of activator/config/settings.py: (attributes read, fields set at load)."""
    tree = ast.parse((ROOT / "activator" / "config" / "settings.py").read_text())
    out: dict[str, tuple[set[str], set[str]]] = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        reads, sets = set(), set()
        for sub in ast.walk(node):
            if isinstance(sub, ast.Attribute) and isinstance(sub.ctx, ast.Load):
                reads.add(sub.attr)
            if (
                isinstance(sub, ast.Call)
                and isinstance(sub.func, ast.Attribute)
                and sub.func.attr == "__setattr__"
                and len(sub.args) >= 2
                and isinstance(sub.args[1], ast.Constant)
            ):
                sets.add(str(sub.args[1].value))
        out[node.name] = (reads, sets)
    return out


def _acting(fields: set[str]) -> set[str]:
    used = _used_names()
    functions = _settings_functions()
    acting = fields & used
    for name, (reads, _sets) in functions.items():
        if name in used:  # format_command, resolved_admin_token, Settings.port, ...
            acting |= fields & reads
    changed = True
    while changed:  # fields that build another field at load act through it
        changed = False
        for reads, sets in functions.values():
            if sets & acting and not (fields & reads) <= acting:
                acting |= fields & reads
                changed = True
    return acting


ALL_FIELDS = sorted(
    {f.name for f in dataclasses.fields(Settings)}
    | {f.name for f in dataclasses.fields(WorkloadSettings)}
)


@pytest.mark.parametrize(
    "field",
    [
        pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=PENDING[name]))
        if name in PENDING
        else name
        for name in ALL_FIELDS
    ],
)
def test_every_setting_is_read_outside_the_settings_module(field: str) -> None:
    assert field in _acting(set(ALL_FIELDS)), (
        f"setting {field!r} is accepted and documented but nothing outside "
        "activator/config/settings.py reads it: make it act, or remove it"
    )


def test_the_scan_sees_reads_through_helpers_and_derived_fields() -> None:
    acting = _acting(set(ALL_FIELDS))
    assert "command" in acting  # through format_command, used by the workload
    assert {"python", "args"} <= acting  # through the command built at load
    assert "admin_token" in acting  # through resolved_admin_token
    # and it can say no: a name nobody reads
    assert "no_such_setting_anywhere" not in _acting({"no_such_setting_anywhere"})
