"""Config: valid files load into frozen settings; bad ones fail with the key path and reason."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from activator.settings import ConfigError, load_settings, parse_settings

GOOD = {"workloads": [{"name": "a", "models": ["m-a"], "command": ["srv", "--port", "{port}"]}]}


def test_embedded_default_loads(tmp_path: Path) -> None:
    settings = load_settings(None, state_dir=str(tmp_path))
    assert settings.listen == "127.0.0.1:8080"
    assert [w.name for w in settings.workloads] == ["ref"]
    assert settings.workloads[0].models == ("ref-small",)
    assert settings.state_dir == str(tmp_path.resolve())


def test_durations_and_defaults() -> None:
    data = {
        "workloads": [
            {
                **GOOD["workloads"][0],
                "idle_after": "5m",
                "wake_timeout": "250ms",
                "start_timeout": 30,
            }
        ]
    }
    w = parse_settings(data).workloads[0]
    assert (w.idle_after, w.wake_timeout, w.start_timeout) == (300.0, 0.25, 30.0)
    assert w.queue_depth == 256 and w.health_path == "/health"
    with pytest.raises(dataclasses.FrozenInstanceError):
        w.idle_after = 1  # type: ignore[misc]


def _bad(patch: dict, workload_patch: dict | None = None) -> dict:
    workload = {**GOOD["workloads"][0], **(workload_patch or {})}
    return {**GOOD, "workloads": [workload], **patch}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "expected a mapping at the top level"),
        ({"workloads": []}, "workloads: expected a non-empty list"),
        (_bad({"lisen": "x"}), "lisen: unknown key (did you mean 'listen'?)"),
        (_bad({"listen": "8080"}), "listen: expected HOST:PORT"),
        (_bad({"listen": ""}), "listen: expected HOST:PORT"),
        (_bad({"admin_listen": "9090"}), "admin_listen: expected HOST:PORT"),
        (_bad({"engine": "magic"}), "engine: must be 'auto', 'criu' or 'restart'"),
        (_bad({"on_shutdown": "pause"}), "on_shutdown: must be 'stop' or 'hibernate'"),
        (_bad({"on_shutdown": "leave"}), "'leave' is not supported: instances never outlive"),
        (
            _bad({}, {"idel_after": 3}),
            "workloads[0].idel_after: unknown key (did you mean 'idle_after'?)",
        ),
        (_bad({}, {"idle_after": "soon"}), "workloads[0].idle_after: expected a duration"),
        (_bad({}, {"idle_after": -1}), "workloads[0].idle_after: must not be negative"),
        (_bad({}, {"port": 70000}), "workloads[0].port: must be between 0 and 65535"),
        (_bad({}, {"queue_depth": True}), "workloads[0].queue_depth: expected an integer"),
        (_bad({}, {"models": []}), "workloads[0].models: an 'openai' workload needs"),
        (_bad({}, {"name": "Bad Name"}), "workloads[0].name: use lowercase"),
        (_bad({}, {"command": []}), "workloads[0].command: expected a non-empty list"),
        (_bad({}, {"command": ["x", "{prot}"]}), "bad placeholder 'prot'"),
        (_bad({}, {"health_path": "health"}), "workloads[0].health_path: must start with '/'"),
        (
            {"workloads": [GOOD["workloads"][0], GOOD["workloads"][0]]},
            "workloads[1].name: duplicate",
        ),
        (
            {"workloads": [GOOD["workloads"][0], {**GOOD["workloads"][0], "name": "b"}]},
            "workloads[1].models: 'm-a' is already served by 'a'",
        ),
    ],
)
def test_bad_config_names_key_and_problem(data: object, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_settings(data)
    assert message in str(info.value)


def test_cli_bad_config_exits_2_with_one_message_and_no_traceback(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump(_bad({}, {"idle_after": "soon"})))
    done = subprocess.run(
        [sys.executable, "-m", "activator", "up", "-c", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        "dormant: bad config: workloads[0].idle_after: "
        "expected a duration like '30s' or '5m', got 'soon'"
    ]


def test_cli_unreadable_or_invalid_yaml(tmp_path: Path) -> None:
    missing = subprocess.run(
        [sys.executable, "-m", "activator", "up", "-c", str(tmp_path / "nope.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 2 and "cannot read" in missing.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("workloads: [\n")
    done = subprocess.run(
        [sys.executable, "-m", "activator", "up", "-c", str(broken)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (
        done.returncode == 2 and "not valid YAML" in done.stderr and "Traceback" not in done.stderr
    )
