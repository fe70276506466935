"""What must not change when the code moves: the config's JSON Schema (and a workload's CRD
schema), the config reference (docs/config.md), and every verb's `--help`. The files under
tests/golden/ were written by the code before the house moved (one package per program);
a change to any of these surfaces is a change for users and updates its golden file on
purpose."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from activator.config.schema import config_reference

ROOT = Path(__file__).resolve().parents[3]
GOLDEN = ROOT / "tests" / "golden"
VERBS = ["", "up", "status", "hibernate", "wake", "snapshots", "check", "config", "bench"]
VERBS += ["exec", "operator", "completion"]


def _cli(*args: str) -> str:
    env = {**os.environ, "COLUMNS": "80"}
    done = subprocess.run(
        [sys.executable, "-m", "activator", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )
    return done.stdout + done.stderr


def test_config_schema_is_unchanged() -> None:
    assert _cli("config", "schema") == (GOLDEN / "config-schema.json").read_text()


def test_workload_crd_schema_is_unchanged() -> None:
    assert _cli("config", "schema", "--crd") == (GOLDEN / "config-schema-crd.json").read_text()


def test_config_reference_is_unchanged() -> None:
    """Byte for byte, but for the one line that names the module it is generated from
    (the settings moved from activator/settings.py to activator/config/settings.py)."""
    golden = (GOLDEN / "config-docs.md").read_text()
    moved = golden.replace("from activator/settings.py by", "from activator/config/settings.py by")
    assert moved != golden  # the exception above is exactly one line
    assert config_reference() == moved
    assert _cli("config", "docs") == moved


@pytest.mark.parametrize("verb", VERBS)
def test_help_is_unchanged(verb: str) -> None:
    args = [verb, "--help"] if verb else ["--help"]
    name = f"help-{verb}.txt" if verb else "help.txt"
    assert _cli(*args) == (GOLDEN / name).read_text()
