"""Notebook servers without a server: the idle rule and Jupyter's answers as tables,
the config of a `jupyter` workload, the command Dormant builds, and the token and
directories prepared before a start."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from activator.config.settings import (
    ConfigError,
    WorkloadSettings,
    format_command,
    load_settings,
    parse_settings,
)
from activator.notebooks import (
    ActivityProbe,
    JupyterActivity,
    ProbeFailed,
    activity_from,
    ensure_token,
    prepare,
    root_dir,
    runtime_dir,
    terminal_shell,
    token_path,
)
from tests.conftest import ROOT, free_port
from warmpool import Endpoint

NOW = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)


def _stamp(seconds_ago: float) -> str:
    return (NOW - timedelta(seconds=seconds_ago)).isoformat().replace("+00:00", "Z")


@pytest.mark.parametrize(
    ("kernels", "terminals", "expected"),
    [
        ([], [], JupyterActivity(0, float("inf"))),  # nothing there: no activity at all
        (
            [
                {"execution_state": "busy", "last_activity": _stamp(400)},
                {"execution_state": "idle", "last_activity": _stamp(5)},
            ],
            [],
            JupyterActivity(1, 5.0),
        ),
        (
            [{"execution_state": "idle", "last_activity": _stamp(300)}],
            [{"name": "1", "last_activity": _stamp(2)}],  # a terminal printing
            JupyterActivity(0, 2.0),
        ),
        (
            [
                {"execution_state": "starting", "last_activity": _stamp(1)},
                {"execution_state": "busy"},  # no last_activity: still counted as busy
            ],
            [],
            JupyterActivity(1, 1.0),
        ),
        # a clock slightly ahead is not negative idleness
        ([{"execution_state": "idle", "last_activity": _stamp(-3)}], [], JupyterActivity(0, 0.0)),
    ],
)
def test_activity_from_jupyter_answers(
    kernels: list[dict[str, Any]], terminals: list[dict[str, Any]], expected: JupyterActivity
) -> None:
    """Kernels and terminals only: Jupyter's server-wide last_activity (api/status) is
    refreshed by every poll of an open page, so it is not asked."""
    assert activity_from(kernels, terminals, NOW) == expected


def test_activity_from_rejects_what_is_not_jupyter() -> None:
    with pytest.raises(KeyError):
        activity_from([{"last_activity": _stamp(1)}], [], NOW)
    with pytest.raises(ValueError):
        activity_from([{"execution_state": "idle", "last_activity": "yesterday"}], [], NOW)


def _jupyter(**extra: Any) -> WorkloadSettings:
    data = {"workloads": [{"name": "alice", "kind": "jupyter", **extra}]}
    return parse_settings(data).workloads[0]


def test_ensure_token_makes_the_token_at_start_once(tmp_path: Path) -> None:
    """`dormant up` shows the token's path before the first request: the file is there."""
    w = _jupyter()
    path = ensure_token(w, tmp_path)
    assert path == token_path(w, tmp_path) and path.stat().st_mode & 0o777 == 0o600
    token = path.read_text()
    assert ensure_token(w, tmp_path) == path and path.read_text() == token
    assert prepare(w, tmp_path)["JUPYTER_TOKEN"] == token.strip(), "the server gets that one"
    shutil.rmtree(runtime_dir(w, tmp_path))


def test_jupyter_workload_is_routed_and_commanded_by_dormant() -> None:
    w = _jupyter(idle_after="10m", args=["--ServerApp.max_body_size=1000"])
    assert (w.path_prefix, w.strip_prefix, w.health_path) == (
        "/notebooks/alice",
        False,
        "/notebooks/alice/api",
    )
    argv = format_command(w, 4321, Path("/srv/state"))
    assert argv[:3] == (sys.executable, "-m", "jupyter_server")
    for option in (
        "--ServerApp.ip=127.0.0.1",
        "--ServerApp.port=4321",
        "--ServerApp.base_url=/notebooks/alice/",
        "--ServerApp.root_dir=/srv/state/notebooks/alice/files",
        "--KernelManager.transport=ipc",
        "--MappingKernelManager.cull_idle_timeout=0",
        "--ServerApp.shutdown_no_activity_timeout=0",
    ):
        assert option in argv
    assert argv[-1] == "--ServerApp.max_body_size=1000", "user args come last, so they win"
    assert not any("token" in arg.lower() for arg in argv), "the token never goes in argv"

    other = _jupyter(python="/opt/venv/bin/python", root_dir="{state_dir}/nb/{name}")
    argv = format_command(other, 1, Path("/s"))
    assert argv[0] == "/opt/venv/bin/python" and "--ServerApp.root_dir=/s/nb/alice" in argv


@pytest.mark.parametrize(
    ("workload", "message"),
    [
        (
            {"kind": "jupyter", "command": ["x"]},
            "workloads[0].command: not used by a 'jupyter' workload (Dormant builds it;",
        ),
        ({"kind": "jupyter", "models": ["m"]}, "workloads[0].models: not used by a 'jupyter'"),
        ({"kind": "jupyter", "path_prefix": "/x"}, "workloads[0].path_prefix: not used by"),
        ({"kind": "jupyter", "health_path": "/x"}, "workloads[0].health_path: not used by"),
        ({"kind": "jupyter", "tokn_file": "x"}, "did you mean 'token_file'?"),
        ({"kind": "jupyter", "token_file": "/nope/token"}, "token_file: '/nope/token' does not"),
        ({"kind": "jupyter", "root_dir": "{home}/nb"}, "root_dir: bad placeholder 'home'"),
        ({"kind": "jupyter", "args": {"a": 1}}, "workloads[0].args: expected a list of strings"),
        ({"kind": "jupyter", "python": ""}, "workloads[0].python: must not be empty"),
        ({"kind": "notebook"}, "kind: must be 'openai', 'http' or 'jupyter'"),
        (
            {"kind": "http", "path_prefix": "/a", "command": ["x"], "root_dir": "/tmp"},
            "workloads[0].root_dir: only for workloads of kind 'jupyter'",
        ),
        ({"models": ["m"], "command": ["x"], "token_file": "/t"}, "token_file: only for"),
        ({"kind": "http", "path_prefix": "/a"}, "workloads[0].command: required"),
    ],
)
def test_bad_jupyter_config_names_key_and_problem(workload: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_settings({"workloads": [{"name": "alice", **workload}]})
    assert message in str(info.value)


def test_route_clash_with_a_notebook_is_caught() -> None:
    data = {
        "workloads": [
            {"name": "alice", "kind": "jupyter"},
            {"name": "web", "kind": "http", "path_prefix": "/notebooks/alice", "command": ["x"]},
        ]
    }
    with pytest.raises(ConfigError, match=r"path /notebooks/alice is already routed to 'alice'"):
        parse_settings(data)


def test_prepare_generates_a_private_token_once(tmp_path: Path) -> None:
    w = _jupyter()
    env = prepare(w, tmp_path)
    path = token_path(w, tmp_path)
    assert path == tmp_path / "notebooks" / "alice" / "token"
    assert path.stat().st_mode & 0o777 == 0o600
    assert len(env["JUPYTER_TOKEN"]) == 48 and env["JUPYTER_TOKEN"] == path.read_text().strip()
    assert prepare(w, tmp_path)["JUPYTER_TOKEN"] == env["JUPYTER_TOKEN"], "generated once"
    runtime = Path(env["JUPYTER_RUNTIME_DIR"])
    try:
        assert runtime == runtime_dir(w, tmp_path) and runtime.stat().st_mode & 0o777 == 0o700
        assert root_dir(w, tmp_path).is_dir()
    finally:
        shutil.rmtree(runtime)  # may be outside tmp_path (a short path for the sockets)


def test_terminals_get_bash_unless_the_workload_names_a_shell(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dormant's own SHELL (here sh, as under systemd or CI) is not what terminals run:
    dash holds /dev/tty and CRIU cannot checkpoint that."""
    monkeypatch.setenv("SHELL", "/bin/sh")
    env = prepare(_jupyter(), tmp_path)
    shutil.rmtree(env["JUPYTER_RUNTIME_DIR"])
    assert env["SHELL"] == shutil.which("bash")
    assert terminal_shell(_jupyter(env={"SHELL": "/bin/zsh"})) == {}, "the workload's env wins"
    monkeypatch.setenv("PATH", str(tmp_path))  # no bash to be found
    assert terminal_shell(_jupyter()) == {}


def test_prepare_reads_the_configured_token_file(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("  s3cret \n")
    w = _jupyter(token_file=str(token), root_dir=str(tmp_path / "mine"))
    env = prepare(w, tmp_path / "state")
    shutil.rmtree(env["JUPYTER_RUNTIME_DIR"])
    assert env["JUPYTER_TOKEN"] == "s3cret"
    assert not (tmp_path / "mine").exists(), "a configured root_dir is the user's to create"
    token.write_text("\n")
    with pytest.raises(ValueError, match="is empty"):
        prepare(w, tmp_path / "state")


def test_runtime_dir_fits_a_unix_socket_path(tmp_path: Path) -> None:
    w = _jupyter()
    assert runtime_dir(w, Path("/var/lib/dormant")) == Path(
        "/var/lib/dormant/notebooks/alice/runtime"
    )
    deep = tmp_path / ("d" * 80)
    short = runtime_dir(w, deep)
    assert short.name.startswith(f"dormant-{os.getuid()}-") and len(str(short)) < 60
    assert runtime_dir(w, deep) == short, "the same directory at every start and restore"
    assert runtime_dir(w, tmp_path / ("e" * 80)) != short, "another state dir, another one"
    assert runtime_dir(_jupyter(name="bob"), deep) != short, "another notebook, another one"


def test_probe_failures_are_probe_failed(tmp_path: Path) -> None:
    w = _jupyter()

    async def ask(state_dir: Path) -> JupyterActivity:
        async with httpx.AsyncClient() as client:
            return await ActivityProbe(client, state_dir, timeout=2)(
                w, Endpoint("127.0.0.1", free_port())
            )

    with pytest.raises(ProbeFailed, match="cannot read the token"):
        asyncio.run(ask(tmp_path))
    shutil.rmtree(prepare(w, tmp_path)["JUPYTER_RUNTIME_DIR"])
    with pytest.raises(ProbeFailed, match="ConnectError"):  # nothing listens there
        asyncio.run(ask(tmp_path))


def test_example_config_loads(tmp_path: Path) -> None:
    settings = load_settings(ROOT / "examples" / "notebooks.yaml", state_dir=str(tmp_path))
    kinds = {w.name: (w.kind, w.path_prefix, w.idle_after) for w in settings.workloads}
    assert kinds["alice"] == ("jupyter", "/notebooks/alice", 600.0)
    assert kinds["bob"] == ("jupyter", "/notebooks/bob", 600.0)
    assert kinds["ref"][0] == "openai"
