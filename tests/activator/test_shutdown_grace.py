"""SIGTERM while a request is held for a wake: the activator stops accepting, lets the held
request finish (bounded by shutdown_timeout), then exits. A real `dormant up` and a real
(slow-starting) server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from tests.conftest import ROOT, free_port

SLOW_SERVER = """
import http.server, sys, time
time.sleep(4)  # a wake that takes a while
class H(http.server.BaseHTTPRequestHandler):
    def _ok(self):
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        self._ok()
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._ok()
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def test_a_request_held_for_a_wake_finishes_after_sigterm(tmp_path: Path) -> None:
    server = tmp_path / "slow.py"
    server.write_text(SLOW_SERVER)
    port = free_port()
    config = tmp_path / "c.yaml"
    config.write_text(
        f"listen: 127.0.0.1:{port}\nengine: restart\nshutdown_timeout: 30s\nworkloads:\n"
        f"  - {{name: a, models: [m], command: [{sys.executable}, {server}, '{{port}}'], "
        "wake_timeout: 60s}\n"
    )
    log = tmp_path / "dormant.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "activator", "up", "-c", str(config)],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    answers: list[httpx.Response | Exception] = []
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=5, trust_env=False)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)

        def ask() -> None:
            try:
                answers.append(
                    httpx.post(
                        f"http://127.0.0.1:{port}/v1/completions",
                        json={"model": "m", "prompt": "hi"},
                        timeout=60,
                        trust_env=False,
                    )
                )
            except Exception as exc:
                answers.append(exc)

        asking = threading.Thread(target=ask)
        asking.start()
        time.sleep(1.0)  # held: the server is still starting
        assert not answers
        proc.send_signal(signal.SIGTERM)
        asking.join(60)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    (answer,) = answers
    assert isinstance(answer, httpx.Response), (answer, log.read_text())
    assert answer.status_code == 200, (answer.text, log.read_text())
    assert answer.headers["x-dormant-wake"].startswith("boot"), answer.headers
