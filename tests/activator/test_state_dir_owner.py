"""A state directory (its snapshot store, a workload's directory in it) that another
user owns or that group or others may write is refused before anything starts — whoever can
write there can replace a snapshot that Dormant would restore as its own process. `dormant up`
exits 2 with one line; `dormant check` reports the same finding."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from activator.check import check_state_dir, ownership_problem, state_dir_finding
from activator.config.settings import ConfigError
from tests.conftest import ROOT

ME = os.geteuid()
OTHER = 65534  # nobody
DIR = stat.S_IFDIR


@pytest.mark.parametrize(
    ("mode", "owner", "problem"),
    [
        (DIR | 0o700, ME, ""),
        (DIR | 0o755, ME, ""),
        (DIR | 0o755, 0, ""),  # root's: as OpenSSH, root may own it
        (DIR | 0o700, OTHER, f"is owned by uid {OTHER}, not by this user (uid {ME}) or root"),
        (DIR | 0o775, ME, "is writable by group (mode 0775)"),
        (DIR | 0o757, ME, "is writable by others (mode 0757)"),
        (DIR | 0o777, ME, "is writable by group and others (mode 0777)"),
        (DIR | 0o1777, ME, "is writable by group and others (mode 1777)"),  # sticky: still
        (stat.S_IFREG | 0o600, ME, "is not a directory"),
    ],
)
def test_ownership_problem(mode: int, owner: int, problem: str) -> None:
    assert ownership_problem(mode, owner, ME) == problem


def test_a_fresh_state_dir_is_created_private_and_accepted(tmp_path: Path) -> None:
    old = os.umask(0o002)  # a umask that makes group-writable directories
    try:
        check_state_dir(tmp_path / "state")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700
    assert state_dir_finding(tmp_path / "state").ok


def _layouts(tmp_path: Path) -> dict[str, tuple[Path, Path]]:
    """name -> (state dir, the directory that makes it unsafe)."""
    out = {}
    for case in ("state-other", "state-777", "store-other", "store-777", "workload-777"):
        state = tmp_path / case / "state"
        state.mkdir(parents=True, mode=0o700)
        out[case] = (state, state)
    (tmp_path / "state-other" / "state").chmod(0o700)
    os.chown(tmp_path / "state-other" / "state", OTHER, OTHER)
    (tmp_path / "state-777" / "state").chmod(0o777)
    for case in ("store-other", "store-777"):
        store = tmp_path / case / "state" / "snapshots"
        store.mkdir(mode=0o700)
        out[case] = (out[case][0], store)
    os.chown(tmp_path / "store-other" / "state" / "snapshots", OTHER, OTHER)
    (tmp_path / "store-777" / "state" / "snapshots").chmod(0o777)
    wl = tmp_path / "workload-777" / "state" / "snapshots" / "qwen"
    wl.mkdir(parents=True, mode=0o700)
    wl.chmod(0o777)
    out["workload-777"] = (out["workload-777"][0], wl)
    return out


def test_refused_when_another_user_owns_it_or_others_can_write(tmp_path: Path) -> None:
    for case, (state, culprit) in _layouts(tmp_path).items():
        with pytest.raises(ConfigError) as caught:
            check_state_dir(state)
        message = str(caught.value)
        assert message.startswith(f"state_dir: {culprit} is "), (case, message)
        assert "\n" not in message
        assert message.endswith("or choose another state_dir"), (case, message)
        finding = state_dir_finding(state)
        assert not finding.ok and finding.detail == message.removeprefix("state_dir: "), case


def test_a_link_to_another_users_directory_is_judged_by_its_target(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, OTHER, OTHER)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "snapshots").symlink_to(theirs, target_is_directory=True)
    with pytest.raises(ConfigError, match=f"snapshots is owned by uid {OTHER}"):
        check_state_dir(state)
    link = tmp_path / "state-link"
    link.symlink_to(theirs, target_is_directory=True)
    with pytest.raises(ConfigError, match=f"state-link is owned by uid {OTHER}"):
        check_state_dir(link)


def test_the_state_dirs_own_parents_are_not_judged(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # like /tmp
    check_state_dir(shared / "state")
    assert state_dir_finding(shared / "state").ok


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "dormant.yaml"
    workloads = [{"name": "w", "models": ["m"], "command": ["sh", "-c", "sleep 60"]}]
    path.write_text(yaml.safe_dump({"engine": "restart", "workloads": workloads}))
    return path


def _dormant(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "activator", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT,
    )


def test_up_exits_2_with_one_line_and_check_says_the_same(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "snapshots").mkdir(parents=True, mode=0o700)
    state.chmod(0o700)
    os.chown(state / "snapshots", OTHER, OTHER)
    config = _config(tmp_path)
    up = _dormant("up", "-c", str(config), "--state-dir", str(state), "--listen", "127.0.0.1:1")
    assert up.returncode == 2, up.stderr
    lines = up.stderr.strip().splitlines()
    assert len(lines) == 1, up.stderr
    assert lines[0].startswith(f"dormant: bad config: state_dir: {state}/snapshots is owned by")
    assert sorted(p.name for p in state.iterdir()) == ["snapshots"]  # nothing was touched
    check = _dormant("check", "-c", str(config), "--state-dir", str(state))
    line = next(ln for ln in check.stdout.splitlines() if " state_dir " in ln)
    assert line.startswith("NO ") and f"{state}/snapshots is owned by uid {OTHER}" in line
