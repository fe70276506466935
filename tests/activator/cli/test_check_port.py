"""`dormant check -c`: a command that is never told its port (no {port}, no fixed `port:`)
is warned about; one with either is not."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from activator.check import workload_findings
from activator.config.settings import load_settings
from tests.conftest import ROOT


def _config(tmp_path: Path) -> Path:
    workloads = [
        {"name": "told", "models": ["a"], "command": ["{python}", "-m", "x", "--port", "{port}"]},
        {"name": "fixed", "models": ["b"], "command": ["{python}", "-m", "x"], "port": 9000},
        {"name": "untold", "models": ["c"], "command": ["{python}", "-m", "x", "--port", "9001"]},
    ]
    path = tmp_path / "dormant.yaml"
    path.write_text(yaml.safe_dump({"workloads": workloads, "engine": "restart"}))
    return path


def test_a_command_without_port_is_warned_about(tmp_path: Path) -> None:
    settings = load_settings(_config(tmp_path), state_dir=str(tmp_path / "state"))
    found = {f.item: f for f in workload_findings(settings)}
    assert "told: port" not in found and "fixed: port" not in found
    warning = found["untold: port"]
    assert warning.ok and warning.warning, "a warning, not a failure"
    assert "no {port}" in warning.detail and "--port {port}" in warning.detail
    shown = subprocess.run(
        [sys.executable, "-m", "activator", "check", "-c", str(_config(tmp_path))],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": str(tmp_path)},
    )
    line = next(ln for ln in shown.stdout.splitlines() if "untold: port" in ln)
    assert line.startswith("!!"), line
