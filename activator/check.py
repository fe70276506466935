"""What this machine supports, which engine Dormant will use, and whether a config's
workloads can start here (``dormant check [-c FILE]``); the state directory check that
``dormant up`` makes before anything starts."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import activator.notebooks as notebooks
from activator.config.settings import ConfigError, Settings, WorkloadSettings, format_command
from warmpool import device_findings
from warmpool.system import EngineSetup, probe_engine

__all__ = [
    "Finding",
    "check_state_dir",
    "detect_engine",
    "machine_report",
    "state_dir_finding",
    "workload_findings",
]

_PYTHON_PROBE_TIMEOUT = 30.0
"""Seconds a workload's `python` may take to say whether it can import jupyter_server."""


@dataclass(frozen=True)
class Finding:
    """One line of `dormant check`: what, whether it is fine, details."""

    item: str
    ok: bool
    detail: str


def detect_engine(settings: Settings) -> EngineSetup:
    """Probe CRIU and PID namespaces and apply the engine policy.
    Raises ConfigError when ``engine: criu`` is configured but cannot work."""
    try:
        return probe_engine(settings.engine, settings.criu_path or None)
    except ValueError as exc:
        raise ConfigError(f"engine: {exc}") from exc


def _device() -> list[Finding]:
    """NVIDIA GPUs (driver, CUDA checkpoint API, restore onto another GPU, MIG) and how
    CPU memory is measured (cgroup v2, v1, or PSS)."""
    return [Finding(f.item, f.ok, f.detail) for f in device_findings()]


def _xsave(setup: EngineSetup) -> Finding:
    """Whether a process's AMX permission (a dynamically enabled XSAVE feature) survives a
    CRIU restore here: a real dump and restore of a probe on a CPU with AMX."""
    from snapshots.xsave import cpu_model, has_amx, survives_restore

    item = "dynamic XSAVE features (AMX) survive restore"
    if not has_amx():
        return Finding(item, True, f"not applicable (no AMX on this CPU, {cpu_model()})")
    if setup.criu is None:
        return Finding(item, False, "not probed: no usable CRIU (see above)")
    verdict = survives_restore(setup.criu)
    return Finding(item, verdict.survives, verdict.detail)


def machine_report(settings: Settings) -> tuple[list[Finding], EngineSetup]:
    setup = detect_engine(settings)
    info = setup.criu_info
    findings = [
        Finding("kernel", True, f"{platform.system()} {platform.release()}"),
        Finding(
            "privileges",
            os.geteuid() == 0,
            "root" if os.geteuid() == 0 else "not root: CRIU and PID namespaces need root",
        ),
        Finding("PID namespaces", setup.pidns[0], setup.pidns[1]),
    ]
    if info is not None:
        findings.append(
            Finding(
                "CRIU",
                info.usable,
                f"{info.path} version {info.version_text}; `criu check`: "
                f"{'ok' if info.check_ok else 'FAILED'}"
                + (f" — {info.why_not()}" if not info.usable else ""),
            )
        )
    else:
        findings.append(
            Finding("CRIU", False, setup.criu_problem or "not probed (engine: restart)")
        )
    findings.append(_xsave(setup))
    findings += _device()
    findings.append(
        Finding(
            "engine",
            setup.choice.name != "restart" or settings.engine == "restart",
            f"{setup.choice.name}: {setup.choice.reason}",
        )
    )
    return findings, setup


# -- the state directory ---------------------------------------------------------------------


def check_state_dir(path: Path) -> None:
    """Before ``dormant up`` starts anything: create ``path`` if needed and write (and
    remove) a file in it. ConfigError (exit 2, one line) when that fails."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".dormant-write-test-"):
            pass
    except OSError as exc:
        raise ConfigError(
            f"state_dir: cannot use {str(path)!r} ({exc.strerror or exc}); choose a writable "
            "directory with state_dir in the config or --state-dir"
        ) from exc


def state_dir_finding(path: Path) -> Finding:
    """Whether ``dormant up`` could use ``path``, without creating it."""
    item = "state_dir"
    if path.exists():
        if not path.is_dir():
            return Finding(item, False, f"{path} is not a directory; choose another state_dir")
        try:
            with tempfile.NamedTemporaryFile(dir=path, prefix=".dormant-write-test-"):
                pass
        except OSError as exc:
            return Finding(item, False, f"{path}: cannot write ({exc.strerror or exc})")
        return Finding(item, True, f"{path}")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if parent.is_dir() and os.access(parent, os.W_OK | os.X_OK):
        return Finding(item, True, f"{path} (created at start)")
    return Finding(item, False, f"{path} cannot be created ({parent} is not a writable directory)")


# -- workloads -------------------------------------------------------------------------------


def workload_findings(settings: Settings) -> list[Finding]:
    """For each workload: its program exists (argv[0] after placeholders: a path, or a name
    on PATH), and for notebooks its ``python`` and ``root_dir``; its ``cwd`` if set."""
    findings: list[Finding] = []
    for w in settings.workloads:
        cwd = Path(w.cwd).expanduser() if w.cwd else Path.cwd()
        if w.cwd:
            ok = cwd.is_dir()
            findings.append(
                Finding(
                    f"{w.name}: cwd",
                    ok,
                    str(cwd) if ok else f"{cwd} is not a directory: create it or fix cwd",
                )
            )
        if w.kind == "jupyter":  # its program is `python` (Dormant builds the command)
            program = _program(w, settings, cwd, f"{w.name}: python", "python")
            findings.append(_can_run_jupyter(program) if program.ok else program)
            findings.append(_root_dir(w, settings))
        else:
            findings.append(_program(w, settings, cwd, f"{w.name}: command", "command"))
    return findings


def _program(w: WorkloadSettings, settings: Settings, cwd: Path, item: str, key: str) -> Finding:
    program = format_command(w, 1, settings.state_path)[0]
    if "/" in program:
        path = cwd / Path(program).expanduser()
        if not path.is_file():
            return Finding(item, False, f"{path} does not exist: install it or fix {key}")
        if not os.access(path, os.X_OK):
            return Finding(item, False, f"{path} is not executable: chmod +x it")
        return Finding(item, True, str(path))
    search = dict(w.env).get("PATH", os.environ.get("PATH", os.defpath))
    found = shutil.which(program, path=search)
    if found is None:
        return Finding(
            item, False, f"{program!r} is not on PATH: install it, or give its full path in {key}"
        )
    return Finding(item, True, found)


def _can_run_jupyter(program: Finding) -> Finding:
    python = program.detail
    try:
        done = subprocess.run(
            [python, "-c", "import jupyter_server, ipykernel"],
            capture_output=True,
            timeout=_PYTHON_PROBE_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Finding(program.item, False, f"{python} could not be run: {exc}")
    if done.returncode != 0:
        return Finding(
            program.item,
            False,
            f"{python} cannot import jupyter_server and ipykernel: "
            f"run `{python} -m pip install jupyter_server ipykernel`",
        )
    return Finding(program.item, True, f"{python} (has jupyter_server and ipykernel)")


def _root_dir(w: WorkloadSettings, settings: Settings) -> Finding:
    item = f"{w.name}: root_dir"
    path = notebooks.root_dir(w, settings.state_path)
    if not w.root_dir:
        return Finding(item, True, f"{path} (the default; created at start)")
    if not path.is_dir():
        return Finding(item, False, f"{path} is not a directory: create it or fix root_dir")
    return Finding(item, True, str(path))
