"""OpenTelemetry traces (``tracing:``), with the real SDK: a real ``dormant up`` prints its
spans (``tracing: console``); each request is one span, a child of the client's W3C
``traceparent``, and a request that waited for a wake has a ``wake`` child span. Off, the
SDK is never imported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT
from tests.integration.harness import Dormant

pytest.importorskip("opentelemetry.sdk", reason="the otel extra is not installed")

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"

SERVER = (
    "import http.server, sys\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        self.send_response(200); self.send_header('Content-Length', '2')\n"
    "        self.end_headers(); self.wfile.write(b'ok')\n"
    "    def log_message(self, *a): pass\n"
    "http.server.ThreadingHTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()\n"
)


def _spans(log: str) -> list[dict[str, Any]]:
    """Every JSON span the console exporter printed among the log lines."""
    decoder, spans, at = json.JSONDecoder(), [], 0
    while (at := log.find("{\n", at)) >= 0:
        try:
            value, end = decoder.raw_decode(log, at)
        except json.JSONDecodeError:
            at += 1
            continue
        if isinstance(value, dict) and "context" in value:
            spans.append(value)
        at = end
    return spans


def test_a_request_is_a_span_and_its_wake_a_child(tmp_path: Path) -> None:
    server = tmp_path / "server.py"
    server.write_text(SERVER)
    workload = {
        "name": "web",
        "kind": "http",
        "path_prefix": "/web",
        "strip_prefix": True,
        "command": [sys.executable, str(server), "{port}"],
        "health_path": "/",
        "idle_after": 0,
    }
    d = Dormant(tmp_path, [workload], tracing="console", engine="restart").start()
    try:
        headers = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}
        cold = httpx.get(f"{d.url}/web/", headers=headers, timeout=60)
        assert cold.status_code == 200 and cold.headers["x-dormant-wake"].startswith("boot")
        warm = httpx.get(f"{d.url}/web/", timeout=60)
        assert warm.status_code == 200 and "x-dormant-wake" not in warm.headers
    finally:
        d.stop()
    spans = _spans(d.log())
    requests = [
        s for s in spans if s["name"] == "HTTP GET" and s["attributes"]["url.path"] == "/web/"
    ]
    assert len(requests) == 2, d.log()[-3000:]
    first, second = requests
    assert first["context"]["trace_id"] == f"0x{TRACE_ID}"
    assert first["parent_id"] == f"0x{PARENT_ID}"
    assert first["attributes"]["dormant.workload"] == "web"
    assert first["attributes"]["http.response.status_code"] == 200
    assert first["attributes"]["dormant.outcome"] == "ok"
    assert second["context"]["trace_id"] != first["context"]["trace_id"]
    wakes = [s for s in spans if s["name"] == "wake"]
    assert len(wakes) == 1, wakes
    [wake] = wakes
    assert wake["parent_id"] == first["context"]["span_id"]
    assert wake["context"]["trace_id"] == first["context"]["trace_id"]
    assert wake["attributes"]["dormant.wake.path"] == "boot"
    assert wake["attributes"]["dormant.wake.seconds"] > 0


def test_off_the_sdk_is_never_imported() -> None:
    code = (
        "import sys\n"
        "from activator.tracing import make_tracer\n"
        "import activator.app\n"
        "assert make_tracer('off') is None\n"
        "print([m for m in sys.modules if m.startswith('opentelemetry.sdk')])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_an_unknown_tracing_value_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("tracing: jaeger\nworkloads: [{name: a, models: [m], command: x}]\n")
    done = subprocess.run(
        [sys.executable, "-m", "activator", "check", "-c", str(config)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 2
    assert "tracing:" in done.stderr and "otlp" in done.stderr
