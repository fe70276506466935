"""`dormant check -c FILE`: besides the machine, whether each workload can start here —
its program (argv[0] after placeholders, on PATH or as a path), a notebook's `python`
(and that it has jupyter_server) and `root_dir`, a `cwd` — with what to do when not."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from activator.check import workload_findings
from activator.config.settings import load_settings


def _config(tmp_path: Path) -> Path:
    not_executable = tmp_path / "not-executable"
    not_executable.write_text("#!/bin/sh\n")
    no_jupyter = tmp_path / "python-without-jupyter"
    no_jupyter.write_text("#!/bin/sh\nexit 1\n")
    no_jupyter.chmod(0o755)
    (tmp_path / "notebooks").mkdir()
    workloads = [
        {"name": "ok", "models": ["m1"], "command": ["{python}", "-m", "x"]},
        {"name": "onpath", "models": ["m2"], "command": ["sh", "-c", "exit"]},
        {"name": "missing", "models": ["m3"], "command": ["no-such-program-dormant"]},
        {"name": "nopath", "models": ["m4"], "command": ["{state_dir}/bin/server"]},
        {"name": "noexec", "models": ["m5"], "command": [str(not_executable)]},
        {"name": "nocwd", "models": ["m6"], "command": ["sh"], "cwd": str(tmp_path / "nope")},
        {"name": "nb", "kind": "jupyter", "root_dir": str(tmp_path / "notebooks")},
        {"name": "nb-badpy", "kind": "jupyter", "python": str(tmp_path / "no" / "python")},
        {"name": "nb-nojup", "kind": "jupyter", "python": str(no_jupyter)},
        {"name": "nb-noroot", "kind": "jupyter", "root_dir": "{state_dir}/missing/{name}"},
    ]
    path = tmp_path / "dormant.yaml"
    path.write_text(yaml.safe_dump({"workloads": workloads, "engine": "restart"}))
    return path


def test_workload_findings_say_what_is_missing_and_what_to_do(tmp_path: Path) -> None:
    state = tmp_path / "state"
    settings = load_settings(_config(tmp_path), state_dir=str(state))
    found = {f.item: (f.ok, f.detail) for f in workload_findings(settings)}
    assert found["ok: command"] == (True, sys.executable)
    assert found["onpath: command"][0] and found["onpath: command"][1].endswith("/sh")
    assert found["missing: command"] == (
        False,
        "'no-such-program-dormant' is not on PATH: install it, or give its full path in command",
    )
    assert found["nopath: command"] == (
        False,
        f"{state}/bin/server does not exist: install it or fix command",
    )
    assert found["noexec: command"] == (
        False,
        f"{tmp_path}/not-executable is not executable: chmod +x it",
    )
    assert found["nocwd: cwd"] == (
        False,
        f"{tmp_path}/nope is not a directory: create it or fix cwd",
    )
    assert found["nb: python"][0] and "jupyter_server" in found["nb: python"][1]
    assert found["nb: root_dir"] == (True, str(tmp_path / "notebooks"))
    assert found["nb-badpy: python"] == (
        False,
        f"{tmp_path}/no/python does not exist: install it or fix python",
    )
    assert found["nb-nojup: python"][0] is False
    assert "cannot import jupyter_server and ipykernel: run `" in found["nb-nojup: python"][1]
    assert found["nb-badpy: root_dir"][0], "the default root_dir is created at start"
    assert found["nb-noroot: root_dir"] == (
        False,
        f"{state}/missing/nb-noroot is not a directory: create it or fix root_dir",
    )


def test_cli_check_prints_ok_and_no_lines_and_exits_1(tmp_path: Path) -> None:
    config = _config(tmp_path)
    done = subprocess.run(
        [
            *(sys.executable, "-m", "activator", "check", "-c", str(config)),
            "--state-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert any(line.startswith("ok  ok: command ") for line in lines), lines
    assert any(
        line.startswith("NO  missing: command ") and line.endswith("give its full path in command")
        for line in lines
    ), lines
    assert any(line.startswith("ok  state_dir ") for line in lines), lines


def test_cli_check_of_the_default_config_passes(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "activator", "check", "--state-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert any(line.startswith("ok  ref: command ") for line in done.stdout.splitlines())
