"""The notebook scenario's kernel client against a real Jupyter server (skipped without one)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from loadtests.notebook import KernelSession, notebook_workloads, unavailable_message
from tests.conftest import free_port

pytestmark = pytest.mark.timeout(120)
TOKEN = "loadtests-token"


@pytest.fixture(scope="module")
def jupyter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    pytest.importorskip("jupyter_server")
    pytest.importorskip("ipykernel")
    root = tmp_path_factory.mktemp("notebooks")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = root / "jupyter.log"
    command = [sys.executable, "-m", "jupyter_server", "--allow-root", "--ServerApp.ip=127.0.0.1"]
    command += [f"--ServerApp.port={port}", f"--ServerApp.root_dir={root}"]
    command += [f"--IdentityProvider.token={TOKEN}", "--ServerApp.open_browser=False"]
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"jupyter server exited {proc.returncode}:\n{log.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"jupyter server not up in time:\n{log.read_text()}")
            try:
                headers = {"Authorization": f"token {TOKEN}"}
                if httpx.get(f"{url}/api/status", headers=headers, timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_execute_over_the_kernel_websocket(jupyter: str) -> None:
    kernel = KernelSession(jupyter, TOKEN, timeout=60)
    kernel.open()
    try:
        result = kernel.execute("print(6 * 7)")
        assert result.ok and result.output == "42\n"
        assert result.first_output is not None and 0 < result.first_output <= result.e2e
        failed = kernel.execute("1 / 0")
        assert not failed.ok and failed.error is not None
        assert failed.error.startswith("ZeroDivisionError")
    finally:
        kernel.close()
    assert kernel.kernel_id is None


def test_which_workloads_are_notebooks(tmp_path: Path) -> None:
    views = [{"name": "ref", "kind": "openai"}, {"name": "lab", "kind": "jupyter"}]
    assert notebook_workloads(views) == [views[1]]
    message = unavailable_message("http://x", views[:1])
    assert "no workload of kind 'jupyter' (kinds present: openai)" in message
