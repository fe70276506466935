"""A carried CRIU's shared libraries reach criu alone: $DORMANT_CRIU_LIBRARY_PATH is put on
LD_LIBRARY_PATH for the criu processes Dormant runs, never for Dormant itself or anything
else it starts (the device check used to export it for the whole run). The criu here is a
stand-in script that writes down the LD_LIBRARY_PATH it was given."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from snapshots.criu import CRIU_LIBRARY_PATH, CriuEngine, criu_env, probe_criu

FAKE_CRIU = """#!/bin/sh
echo "$1 LD=${LD_LIBRARY_PATH:-}" >> "$FAKE_CRIU_LOG"
case "$1" in
    --version) echo "Version: 4.2.1" ;;
    check) echo "Looks good." ;;
esac
exit 0
"""


@pytest.fixture
def fake_criu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    script, log = tmp_path / "criu", tmp_path / "criu.log"
    script.write_text(FAKE_CRIU)
    script.chmod(0o755)
    monkeypatch.setenv("FAKE_CRIU_LOG", str(log))
    monkeypatch.delenv("LD_LIBRARY_PATH", raising=False)
    return script, log


def test_criu_env_puts_the_libraries_first_for_criu_only() -> None:
    assert criu_env({"PATH": "/bin"}) is None  # unset: criu inherits as before
    env = criu_env({CRIU_LIBRARY_PATH: "/carry/criu/lib", "LD_LIBRARY_PATH": "/usr/local/lib"})
    assert env is not None and env["LD_LIBRARY_PATH"] == "/carry/criu/lib:/usr/local/lib"


def test_criu_gets_the_libraries_and_nothing_else_does(
    fake_criu: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script, log = fake_criu
    monkeypatch.setenv(CRIU_LIBRARY_PATH, "/carry/criu/lib")
    info = probe_criu(script)
    assert info.usable, info.why_not()
    CriuEngine(info).dump(os.getpid(), tmp_path / "images", tmp_path / "work", timeout=10)
    lines = log.read_text().splitlines()
    assert lines == [
        "--version LD=/carry/criu/lib",
        "check LD=/carry/criu/lib",
        "dump LD=/carry/criu/lib",
    ]
    assert "LD_LIBRARY_PATH" not in os.environ  # Dormant's own environment is untouched
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.environ.get('LD_LIBRARY_PATH', ''))"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert child.stdout.strip() == ""  # nor is what it starts (a server)


def test_without_the_variable_criu_inherits_the_environment(fake_criu: tuple[Path, Path]) -> None:
    script, log = fake_criu
    probe_criu(script)
    assert log.read_text().splitlines() == ["--version LD=", "check LD="]
