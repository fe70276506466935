"""Config: valid files load into frozen settings; bad ones fail with the key path and reason."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import ConfigDict, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass as pydantic_dataclass

from activator.config.settings import ConfigError, _config_error, load_settings, parse_settings
from activator.config.types import Count

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


# -- values that make no sense ----------------------------------------------

TIMEOUTS = [
    "wake_timeout",
    "start_timeout",
    "connect_timeout",
    "first_byte_timeout",
    "stream_idle_timeout",
    "drain_timeout",
    "checkpoint_timeout",
    "restore_timeout",
    "stop_timeout",
]
MAY_BE_ZERO = ["idle_after", "wake_keepalive", "retry_backoff"]


@pytest.mark.parametrize("key", TIMEOUTS + MAY_BE_ZERO)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), "nan", ".inf"])
def test_durations_must_be_finite(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=rf"^workloads\[0\]\.{key}: expected a "):
        parse_settings(_bad({}, {key: value}))


@pytest.mark.parametrize("key", TIMEOUTS)
@pytest.mark.parametrize("value", [0, 0.0, "0s", "0ms"])
def test_timeouts_must_be_more_than_zero(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=rf"^workloads\[0\]\.{key}: must be more than 0"):
        parse_settings(_bad({}, {key: value}))


@pytest.mark.parametrize("key", MAY_BE_ZERO)
def test_some_durations_may_be_zero(key: str) -> None:
    assert getattr(parse_settings(_bad({}, {key: "0s"})).workloads[0], key) == 0.0


def test_yaml_nan_and_inf_are_refused() -> None:
    text = yaml.safe_dump(GOOD) + "reap_interval: .inf\n"
    with pytest.raises(ConfigError, match=r"^reap_interval: expected a finite duration"):
        parse_settings(yaml.safe_load(text))
    data = yaml.safe_load("workloads: [{name: a, models: [m], command: [x], wake_timeout: .nan}]\n")
    with pytest.raises(ConfigError, match=r"^workloads\[0\]\.wake_timeout: expected a finite"):
        parse_settings(data)


@pytest.mark.parametrize("value", [0, "0s", "10ms", 0.049])
def test_reap_interval_has_a_floor(value: object) -> None:
    with pytest.raises(ConfigError, match=r"^reap_interval: must be at least 50ms"):
        parse_settings(_bad({"reap_interval": value}))
    assert parse_settings(_bad({"reap_interval": "50ms"})).reap_interval == 0.05


# -- ports --------------------------------------------------------------------


def _two(port_a: int, port_b: int) -> dict:
    a = {**GOOD["workloads"][0], "port": port_a}
    b = {**GOOD["workloads"][0], "name": "b", "models": ["m-b"], "port": port_b}
    return {"workloads": [a, b]}


def test_two_workloads_on_one_port_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"^workloads\[1\]\.port: 8001 is already the port"):
        parse_settings(_two(8001, 8001))
    assert [w.port for w in parse_settings(_two(0, 0)).workloads] == [0, 0]  # 0: each its own
    assert [w.port for w in parse_settings(_two(8001, 8002)).workloads] == [8001, 8002]


@pytest.mark.parametrize(
    ("top", "port", "key"),
    [
        ({}, 8080, "listen"),  # the default listen, 127.0.0.1:8080
        ({"listen": "0.0.0.0:9000"}, 9000, "listen"),
        ({"listen": "10.1.2.3:9000"}, 9000, "listen"),  # the command may bind every address
        ({"admin_listen": "127.0.0.1:9090"}, 9090, "admin_listen"),
    ],
)
def test_a_workload_on_dormants_own_port_is_an_error(top: dict, port: int, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_settings(_bad(top, {"port": port}))
    assert str(info.value).startswith(f"workloads[0].port: {port} is Dormant's own {key} port")


def test_the_listen_override_is_checked_against_workload_ports(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(_bad({}, {"port": 9123})))
    with pytest.raises(ConfigError, match=r"^workloads\[0\]\.port: 9123 is Dormant's own"):
        load_settings(cfg, listen="127.0.0.1:9123", state_dir=str(tmp_path))
    assert load_settings(cfg, listen="127.0.0.1:9124", state_dir=str(tmp_path)).port == 9124


@pytest.mark.parametrize(
    ("listen", "admin", "clash"),
    [
        ("127.0.0.1:8080", "127.0.0.1:8080", True),
        ("127.0.0.1:8080", "0.0.0.0:8080", True),
        ("[::]:8080", "127.0.0.1:8080", True),
        ("localhost:8080", "127.0.0.1:8080", True),  # a name may be the same address
        ("127.0.0.1:8080", "127.0.0.2:8080", False),
        ("127.0.0.1:8080", "127.0.0.1:9090", False),
    ],
)
def test_admin_listen_must_not_collide_with_listen(listen: str, admin: str, clash: bool) -> None:
    data = _bad({"listen": listen, "admin_listen": admin})
    if clash:
        with pytest.raises(ConfigError, match=r"^admin_listen: .* collides with listen"):
            parse_settings(data)
    else:
        assert parse_settings(data).admin_listen == admin


# -- token files and the state directory ---------------------------------


def test_an_empty_admin_token_file_refuses_to_start(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("  \n")
    settings = parse_settings(_bad({"admin_token_file": str(token)}))
    with pytest.raises(ConfigError, match=r"^admin_token_file: .* is empty; put the token"):
        settings.resolved_admin_token()
    token.write_text("s3cret\n")
    assert settings.resolved_admin_token() == "s3cret"


def test_metrics_token_mirrors_the_admin_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DORMANT_METRICS_TOKEN", raising=False)
    assert parse_settings(GOOD).resolved_metrics_token() == ""
    assert parse_settings(_bad({"metrics_token": "m"})).resolved_metrics_token() == "m"
    monkeypatch.setenv("DORMANT_METRICS_TOKEN", "from-env")
    assert parse_settings(GOOD).resolved_metrics_token() == "from-env"
    token = tmp_path / "metrics"
    token.write_text("from-file\n")
    settings = parse_settings(_bad({"metrics_token": "m", "metrics_token_file": str(token)}))
    assert settings.resolved_metrics_token() == "from-file"  # the file wins
    token.write_text("")
    with pytest.raises(ConfigError, match=r"^metrics_token_file: .* is empty"):
        settings.check_token_files()
    with pytest.raises(ConfigError, match=r"^metrics_token_file: '/nope' does not exist"):
        parse_settings(_bad({"metrics_token_file": "/nope"}))


def _up(cfg: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "activator", "up", "-c", str(cfg), *extra],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_empty_admin_token_file_exits_2_before_starting(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(_bad({"admin_token_file": str(token), "listen": "127.0.0.1:1"})))
    done = _up(cfg, "--state-dir", str(tmp_path / "state"))
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"dormant: bad config: admin_token_file: {str(token)!r} is empty; put the token in it "
        "(or remove admin_token_file to run without one)"
    ]


def test_cli_unusable_state_dir_exits_2_with_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(_bad({"listen": "127.0.0.1:1"})))
    done = _up(cfg, "--state-dir", str(blocker / "state"))
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr
    assert lines[0].startswith(f"dormant: bad config: state_dir: cannot use '{blocker}/state' (")
    assert lines[0].endswith(
        "choose a writable directory with state_dir in the config or --state-dir"
    )


def test_check_state_dir(tmp_path: Path) -> None:
    from activator.check import check_state_dir, state_dir_finding

    target = tmp_path / "deep" / "state"
    assert state_dir_finding(target).ok and "created at start" in state_dir_finding(target).detail
    check_state_dir(target)
    assert target.is_dir() and list(target.iterdir()) == []  # the probe file is gone
    (tmp_path / "f").write_text("")
    with pytest.raises(ConfigError, match=r"^state_dir: cannot use .*Not a directory"):
        check_state_dir(tmp_path / "f" / "state")
    assert not state_dir_finding(tmp_path / "f").ok


# -- the values other code reads ---------------------------------------------------------------


def test_types_other_code_relies_on() -> None:
    data = _bad(
        {"reap_interval": 2},
        {
            "command": "srv --port {port}",
            "env": {"A": 1, "B": "x"},
            "kind": "http",
            "hosts": ["Grafana.Example.com"],
            "idle_after": 60,
            "cwd": "/tmp",
        },
    )
    settings = parse_settings(data)
    w = settings.workloads[0]
    assert isinstance(settings.workloads, tuple) and settings.reap_interval == 2.0
    assert w.command == ("srv", "--port", "{port}") and isinstance(w.command, tuple)
    assert w.env == (("A", "1"), ("B", "x"))
    assert w.hosts == ("grafana.example.com",) and w.models == ("m-a",)
    assert isinstance(w.idle_after, float) and isinstance(w.queue_depth, int)
    assert w.cwd == "/tmp" and parse_settings(GOOD).workloads[0].cwd is None
    assert (settings.host, settings.port) == ("127.0.0.1", 8080)
    assert dataclasses.replace(settings, state_dir="/x").state_path == Path("/x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.listen = "x"  # type: ignore[misc]
    assert hash(settings) == hash(parse_settings(data))


@pytest.mark.parametrize(
    ("workload", "message"),
    [
        ({"env": {"A": None}}, "workloads[0].env.A: expected a string or a number, got None"),
        ({"env": ["A=1"]}, "workloads[0].env: expected a mapping of NAME: value"),
        ({"command": ["x", 1.5, "{port}"], "wake_timeout": "1.5m"}, None),
        ({"cwd": 5}, "workloads[0].cwd: expected a string, got 5"),
        ({"strip_prefix": "yes"}, "workloads[0].strip_prefix: expected true or false, got 'yes'"),
        ({"kind": "http"}, "workloads[0]: an 'http' workload needs a path_prefix or hosts"),
        ({"kind": "http", "path_prefix": "/a/"}, "workloads[0].path_prefix: must start with '/'"),
        ({"command": ["x", "{prot}"]}, "workloads[0].command[1]: bad placeholder 'prot'; use"),
    ],
)
def test_more_bad_values(workload: dict, message: str | None) -> None:
    if message is None:
        w = parse_settings(_bad({}, workload)).workloads[0]
        assert w.command == ("x", "1.5", "{port}") and w.wake_timeout == 90.0
        return
    with pytest.raises(ConfigError) as info:
        parse_settings(_bad({}, workload))
    assert str(info.value).startswith(message)


def test_unknown_key_without_a_close_match_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError) as info:
        parse_settings(_bad({"zzz": 1}))
    assert str(info.value).startswith("zzz: unknown key; known keys: workloads, listen,")


@pydantic_dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class _Device:
    slots: Count = 1


@pydantic_dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class _Top:
    device: _Device = dataclasses.field(default_factory=_Device)


def test_a_nested_section_reports_its_key_path() -> None:
    """How a future family of settings (e.g. `device:`) reads its errors."""

    def error(data: object) -> str:
        with pytest.raises(ValidationError) as info:
            TypeAdapter(_Top).validate_python(data)
        return str(_config_error(info.value))

    assert error({"device": {"slots": 0}}) == "device.slots: must be between 1 and 1000000, got 0"
    assert error({"device": {"slot": 2}}) == "device.slot: unknown key"
