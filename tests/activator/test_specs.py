"""A workload's settings become a runtime's InstanceSpec: every setting a runtime needs
is passed through (checkpoint_timeout and restore_timeout used to be dropped)."""

from __future__ import annotations

from pathlib import Path

from activator.config.settings import parse_settings
from activator.specs import spec_factory
from warmpool import PORT_PLACEHOLDER


def test_timeouts_and_pool_settings_reach_the_spec(tmp_path: Path) -> None:
    settings = parse_settings(
        {
            "device": {"memory_budget": "4GiB"},
            "workloads": [
                {
                    "name": "w",
                    "models": ["m"],
                    "command": ["serve", "--port", "{port}", "--dir", "{state_dir}"],
                    "checkpoint_timeout": "7s",
                    "restore_timeout": "9s",
                    "start_timeout": "11s",
                    "stop_timeout": "3s",
                    "keep_snapshots": 2,
                    "suspend": "hooks",
                    "hooks": {"sleep": "POST /sleep?level=2"},
                    "env": {"A": "1"},
                }
            ],
        }
    ).workloads[0]
    spec = spec_factory(settings, tmp_path)()
    assert spec.command == ("serve", "--port", PORT_PLACEHOLDER, "--dir", str(tmp_path))
    assert spec.with_port(8123).command[2] == "8123" and spec.with_port(8123).port == 8123
    assert (spec.checkpoint_timeout, spec.restore_timeout) == (7.0, 9.0)
    assert (spec.start_timeout, spec.stop_timeout, spec.keep_snapshots) == (11.0, 3.0, 2)
    assert spec.suspend == "hooks"
    assert spec.hooks == {"sleep": "POST /sleep?level=2", "wake": "POST /wake_up"}
    assert spec.env == {"A": "1"} and spec.port == 0


def test_a_notebook_server_runs_in_its_root_dir(tmp_path: Path) -> None:
    """So that its terminals start among the notebooks, not in Dormant's directory."""
    settings = parse_settings({"workloads": [{"name": "nb", "kind": "jupyter"}]}).workloads[0]
    spec = spec_factory(settings, tmp_path)()
    assert spec.cwd == tmp_path / "notebooks" / "nb" / "files" and spec.cwd.is_dir()
    assert "JUPYTER_TOKEN" in spec.env
    own = parse_settings(
        {"workloads": [{"name": "nb", "kind": "jupyter", "cwd": str(tmp_path)}]}
    ).workloads[0]
    assert spec_factory(own, tmp_path)().cwd == tmp_path
