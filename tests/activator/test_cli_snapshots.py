"""`dormant snapshots list|inspect|verify|delete` on a real store, through the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from snapshots import SnapshotStore
from tests.conftest import ROOT


def _cli(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "activator", "snapshots", *args, "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def test_snapshots_cli(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "snapshots")
    with store.begin("model-x") as pending:
        (pending.path / "pages-1.img").write_bytes(b"p" * 4096)
        snap = store.commit(pending, engine="criu", engine_version="4.2.1")

    listed = _cli(tmp_path, "list")
    assert listed.returncode == 0 and snap.id in listed.stdout and "model-x" in listed.stdout
    inspected = json.loads(_cli(tmp_path, "inspect", snap.id).stdout)
    assert inspected["files"]["pages-1.img"]["size"] == 4096
    assert _cli(tmp_path, "verify", snap.id).returncode == 0

    (snap.path / "pages-1.img").write_bytes(b"q" * 4096)
    bad = _cli(tmp_path, "verify", snap.id)
    assert bad.returncode == 1 and "sha256 mismatch" in bad.stdout

    missing = _cli(tmp_path, "inspect", "no-such-id")
    assert missing.returncode == 1 and "no snapshot 'no-such-id'" in missing.stderr
    assert "Traceback" not in missing.stderr

    assert _cli(tmp_path, "delete", snap.id).returncode == 0
    assert snap.id not in _cli(tmp_path, "list").stdout
