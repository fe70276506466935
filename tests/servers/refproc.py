"""Start a real reference LLM server (examples.refserver) for a test, and ask it things."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import free_port
from warmpool import Endpoint

ROOT = Path(__file__).resolve().parents[2]


class RefServer:
    """A running reference server: its process, endpoint and log."""

    def __init__(self, proc: subprocess.Popen[bytes], endpoint: Endpoint, model: str, log: Path):
        self.proc, self.endpoint, self.model, self.log = proc, endpoint, model, log

    @property
    def pid(self) -> int:
        return self.proc.pid

    def complete(self, prompt: str, max_tokens: int = 12, timeout: float = 120) -> httpx.Response:
        """A greedy completion (temperature 0: the same prompt gives the same text)."""
        body = {"model": self.model, "prompt": prompt, "max_tokens": max_tokens}
        return httpx.post(f"{self.endpoint.url}/v1/completions", json=body, timeout=timeout)

    def text(self, prompt: str, max_tokens: int = 12) -> str:
        response = self.complete(prompt, max_tokens)
        assert response.status_code == 200, response.text
        return str(response.json()["choices"][0]["text"])

    def get(self, path: str) -> Any:
        response = httpx.get(f"{self.endpoint.url}{path}", timeout=30)
        response.raise_for_status()
        return response.json()


@contextmanager
def refserver(
    tmp: Path, *args: str, model: str = "ref-test", size: str = "tiny", start_timeout: float = 120
) -> Iterator[RefServer]:
    """``python -m examples.refserver`` on a free loopback port, healthy, then stopped."""
    port, log = free_port(), tmp / f"refserver-{model}.log"
    cmd = [sys.executable, "-m", "examples.refserver", "--size", size, "--model", model]
    cmd += ["--port", str(port), "--state-dir", str(tmp / "refserver-state"), *args]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    server = RefServer(proc, Endpoint("127.0.0.1", port), model, log)
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"refserver exited with {proc.returncode}:\n{log.read_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"refserver not healthy in {start_timeout}s:\n{log.read_text()}")
            try:
                if httpx.get(f"{server.endpoint.url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
