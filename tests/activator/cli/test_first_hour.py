"""What a new user trips over in the first hour (item 8 of that issue): a taken port, the
version, shell completion, `up --help`, `status/hibernate/wake -c`, config errors that name
the file and suggest by meaning, and routing of form bodies by their `model` field."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from activator.errors import BadRequest
from activator.routes.openai import parse_openai
from tests.conftest import ROOT

WORKLOAD = "workloads:\n  - name: a\n    models: [m]\n    command: [srv, --port, '{port}']\n"


def _dormant(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "activator", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        check=False,
    )


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def test_a_taken_port_is_one_line_before_anything_starts(busy_port: int, tmp_path: Path) -> None:
    done = _dormant(
        "up", "--listen", f"127.0.0.1:{busy_port}", "--state-dir", str(tmp_path / "state")
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"dormant: cannot listen on 127.0.0.1:{busy_port}: "), lines[0]
    assert "another `dormant up`?" in lines[0] and "serving on" not in done.stderr


def test_check_says_whether_listen_is_free(busy_port: int, tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(f"listen: 127.0.0.1:{busy_port}\n" + WORKLOAD.replace("srv", "true"))
    done = _dormant("check", "-c", str(config), "--state-dir", str(tmp_path / "s"))
    assert done.returncode == 1, done.stdout
    assert "NO  listen" in done.stdout and f"cannot listen on 127.0.0.1:{busy_port}" in done.stdout


def test_version_and_up_description() -> None:
    version = _dormant("--version")
    assert version.returncode == 0 and version.stdout.startswith("dormant 0."), version.stdout
    up = _dormant("up", "--help", env={"COLUMNS": "200"})
    assert "Start the activator: serve the config's workloads" in up.stdout


def test_bash_completion_completes_verbs_and_options(tmp_path: Path) -> None:
    script = tmp_path / "dormant.bash"
    script.write_text(_dormant("completion", "bash").stdout)
    probe = (
        f"source {script}; COMP_WORDS=(dormant hib); COMP_CWORD=1; _dormant;"
        ' echo "${COMPREPLY[@]}"; COMP_WORDS=(dormant status --t); COMP_CWORD=2; _dormant;'
        ' echo "${COMPREPLY[@]}"'
    )
    done = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=30)
    assert done.stdout.splitlines() == ["hibernate", "--token-file --timeout"], done.stderr


def test_status_with_c_talks_to_the_configs_listen_address(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tmp_path / "c.yaml"
    config.write_text(f"listen: 127.0.0.1:{port}\n" + WORKLOAD)
    for argv in (["status"], ["hibernate", "a"], ["wake", "a"]):
        done = _dormant(*argv, "-c", str(config), "--timeout", "2", env={"DORMANT_URL": ""})
        assert done.returncode == 1
        assert f"cannot reach the activator at http://127.0.0.1:{port} " in done.stderr


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            WORKLOAD + "    idle_timeout: 5m\n",
            "workloads[0].idle_timeout: unknown key (did you mean 'idle_after'?)",
        ),
        (
            "listen: 8080\n" + WORKLOAD,
            "listen: expected HOST:PORT like 127.0.0.1:8080, got '8080' (a port alone: write"
            " 127.0.0.1:8080)",
        ),
        ("criu_path: /nonexistent/criu\n" + WORKLOAD, "criu_path: '/nonexistent/criu' does not"),
        ("workloads: [\n", "c.yaml:2:1: not valid YAML: expected the node content"),
    ],
)
def test_config_errors_say_what_a_user_meant(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(text)
    done = _dormant("check", "-c", str(config))
    assert done.returncode == 2
    assert done.stderr.startswith("dormant: bad config: "), done.stderr
    assert message in done.stderr and "<unicode string>" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_listen_option_and_key_give_the_same_error() -> None:
    done = _dormant("up", "--listen", "8080")
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "dormant: bad config: --listen: expected HOST:PORT like 127.0.0.1:8080, got '8080'"
        " (a port alone: write 127.0.0.1:8080)"
    )


def test_a_multipart_body_is_routed_by_its_model_field() -> None:
    request = httpx.Request(
        "POST",
        "http://dormant/v1/audio/transcriptions",
        data={"model": "whisper-small", "response_format": "json"},
        files={"file": ("a.wav", b"RIFF\x00\x01\r\n--not-a-boundary", "audio/wav")},
    )
    body = request.read()
    assert parse_openai(body, request.headers["content-type"]) == ("whisper-small", False)
    assert parse_openai(b"model=m&stream=true", "application/x-www-form-urlencoded") == (
        "m",
        True,
    )
    no_model = httpx.Request("POST", "http://d/", files={"file": ("a", b"x")})
    with pytest.raises(BadRequest, match='needs a "model" field'):
        parse_openai(no_model.read(), no_model.headers["content-type"])
    assert parse_openai(b'{"model": "m", "stream": true}', "application/json") == ("m", True)
