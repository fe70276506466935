"""examples/notebook_bench.py end to end, small: real Dormants (CRIU, then restart), a real
notebook server and kernel, a few MB of NumPy state; and its port options."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from snapshots import CriuEngine
from tests.conftest import ROOT, free_port


def _bench(*args: str, timeout: float = 500) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "examples.notebook_bench", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        check=False,
    )


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_one_cycle_prints_the_table_on_the_ports_asked_for(
    tmp_path: Path, criu: CriuEngine
) -> None:
    work = tmp_path / "w"
    port, server_port = free_port(), free_port()
    done = _bench(
        "--mb",
        "4",
        "--repeat",
        "1",
        "--work-dir",
        str(work),
        "--keep",
        "--port",
        str(port),
        "--server-port",
        str(server_port),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("notebook holding a 4 MB NumPy array")
    for row in (
        "hibernate: admin call (drain + dump + commit)",
        "wake: admin wake until ready",
        "  of which restore (verify + CRIU + health)",
        "cold boot + new kernel + allocate again (state lost)",
    ):
        assert row in done.stdout, done.stdout
    for engine in ("c", "r"):  # both Dormants listened where they were told
        config = (work / engine / "dormant.yaml").read_text()
        assert f'"listen": "127.0.0.1:{port}"' in config
        assert f'"port": {server_port}' in config


@pytest.mark.skipif(os.geteuid() != 0, reason="notebook_bench refuses to run without root")
def test_a_taken_port_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = _bench("--mb", "1", "--work-dir", str(tmp_path), "--port", str(port), timeout=60)
        taken = _bench("--mb", "1", "--work-dir", str(tmp_path), "--server-port", str(port))
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"notebook_bench: listen port {port} is not free on 127.0.0.1" in done.stderr
    assert taken.returncode == 1, taken.stdout + taken.stderr
    assert f"the notebook server's port {port} is not free" in taken.stderr
    bad = _bench("--port", "70000", timeout=60)
    assert bad.returncode == 2 and "--port: expected a TCP port 1-65535" in bad.stderr
