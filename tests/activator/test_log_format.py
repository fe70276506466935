"""``log_format: json``: one JSON object a line, the access line's fields (request id first
of all) as keys; ``text`` stays the readable line. A real ``dormant up`` is started."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from activator.access import AccessRecord, access_line
from activator.logformat import JsonFormatter
from tests.conftest import ROOT, free_port

UP = [sys.executable, "-m", "activator", "up"]


def test_json_formatter_puts_the_access_fields_on_the_line() -> None:
    captured: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = captured.append  # type: ignore[method-assign]
    logger = logging.getLogger("dormant.access")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        access_line(AccessRecord("abc123", workload="ref"), "POST", b"/v1/x", 200, 0.0123, 42)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    (record,) = captured
    line = json.loads(JsonFormatter().format(record))
    assert line["request_id"] == "abc123" and line["workload"] == "ref"
    assert line["status"] == 200 and line["bytes"] == 42 and line["duration_ms"] == 12.3
    assert line["level"] == "info" and line["logger"] == "dormant.access"
    assert line["message"].startswith("request_id=abc123 workload=ref method=POST")


def test_dormant_up_logs_json_lines_with_request_ids(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "c.yaml"
    config.write_text(
        f"listen: 127.0.0.1:{port}\nlog_format: json\nworkloads:\n"
        "  - {name: a, models: [m], command: [srv, --port, '{port}']}\n"
    )
    log = tmp_path / "dormant.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*UP, "-c", str(config), "--state-dir", str(tmp_path / "state")],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                answer = httpx.get(
                    f"http://127.0.0.1:{port}/v1/models",
                    headers={"X-Request-Id": "first-hour-1"},
                    timeout=5,
                    trust_env=False,
                )
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
        assert answer.status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    logged = [line for line in log.read_text().splitlines() if line.startswith("{")]
    lines = [json.loads(line) for line in logged]  # every log line is one JSON object
    assert lines, log.read_text()
    access = [line for line in lines if line.get("request_id") == "first-hour-1"]
    assert len(access) == 1, lines
    assert access[0]["path"] == "/v1/models" and access[0]["status"] == 200
    not_json = [
        line for line in log.read_text().splitlines() if not line.startswith(("{", "dormant: "))
    ]
    assert not not_json, not_json
