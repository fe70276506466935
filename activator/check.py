"""What this machine supports, which engine Dormant will use, and whether a config's
workloads can start here (``dormant check [-c FILE]``); the state directory check that
``dormant up`` makes before anything starts."""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import socket
import stat
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
    "listen_findings",
    "listen_problem",
    "machine_report",
    "ownership_problem",
    "state_dir_finding",
    "unsafe_state_dirs",
    "workload_findings",
]

_PYTHON_PROBE_TIMEOUT = 30.0
"""Seconds a workload's `python` may take to say whether it can import jupyter_server."""


@dataclass(frozen=True)
class Finding:
    """One line of `dormant check`: what, whether it is fine, details. A ``warning`` is
    fine (``ok``) but worth a look."""

    item: str
    ok: bool
    detail: str
    warning: bool = False


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
        Finding(
            "PID namespaces",
            setup.pidns[0],
            setup.pidns[1]
            if setup.pidns[0]
            else f"{setup.pidns[1]}; instances run without one (engine restart)",
        ),
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

_STORE = "snapshots"
"""The snapshot store in the state dir. It, the state dir and each workload's directory in it
have their owner and mode checked: whoever can write them can replace a snapshot, which
Dormant then restores as its own process."""


def ownership_problem(mode: int, owner: int, me: int) -> str:
    """Why a directory with ``mode`` owned by uid ``owner`` is unsafe for uid ``me`` to keep
    snapshots in ('' when it is fine), as OpenSSH judges the directories of its keys: it
    must be owned by ``me`` or root and not writable by group or others (sticky or not)."""
    if not stat.S_ISDIR(mode):
        return "is not a directory"
    if owner not in (me, 0):
        return f"is owned by uid {owner}, not by this user (uid {me}) or root"
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        who = " and ".join(
            w for w, bit in (("group", stat.S_IWGRP), ("others", stat.S_IWOTH)) if mode & bit
        )
        return f"is writable by {who} (mode {mode & 0o7777:04o})"
    return ""


def unsafe_state_dirs(path: Path) -> list[str]:
    """'DIR PROBLEM' for the state dir, its ``snapshots`` store and each workload's directory
    in it, where one exists and is not ours alone (``ownership_problem``; a link is judged
    by its target). The state dir's own parents are not judged."""
    me = os.geteuid()
    store = path / _STORE
    candidates = [path, store]
    with contextlib.suppress(OSError):
        candidates += sorted(store / name for name in os.listdir(store))
    problems = []
    for candidate in candidates:
        try:
            st = candidate.stat()
        except FileNotFoundError:
            continue
        except OSError as exc:
            problems.append(f"{candidate} cannot be examined ({exc.strerror or exc})")
            continue
        if candidate.parent == store and not stat.S_ISDIR(st.st_mode):
            continue  # not a workload's directory: the store ignores it
        why = ownership_problem(st.st_mode, st.st_uid, me)
        if why:
            problems.append(f"{candidate} {why}")
    return problems


def _unsafe_message(problems: list[str]) -> str:
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return (
        f"{problems[0]}{more}: another user could replace its snapshots; chown it to this "
        "user and `chmod go-w` it, or choose another state_dir"
    )


def listen_problem(address: str) -> str | None:
    """Why Dormant could not listen on ``address`` (HOST:PORT) now, or None when it can:
    a bind as uvicorn does it (``SO_REUSEADDR``), released at once."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except (OSError, ValueError) as exc:
        return f"cannot resolve {host!r} ({exc})"
    family, _, _, _, sockaddr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(sockaddr)
        except OSError as exc:
            return f"cannot listen on {address}: {exc.strerror or exc}"
    return None


def listen_findings(settings: Settings) -> list[Finding]:
    """Whether ``listen`` (and ``admin_listen``) can be bound here now."""
    found = []
    for key in ("listen", "admin_listen"):
        address = getattr(settings, key)
        if address:
            problem = listen_problem(address)
            detail = (
                f"{address} is free"
                if problem is None
                else (
                    f"{problem}: something else listens there (another `dormant up`?); stop it, "
                    f"or choose another address with {key} in the config or --listen"
                )
            )
            found.append(Finding(key, problem is None, detail))
    return found


def check_state_dir(path: Path) -> None:
    """Before ``dormant up`` starts anything: create ``path`` if needed (mode 0700), write
    (and remove) a file in it, and refuse it when it, its snapshot store or a workload's
    directory there is another user's or writable by group or others
    (``unsafe_state_dirs``). ConfigError (exit 2, one line) when any of that fails."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".dormant-write-test-"):
            pass
    except OSError as exc:
        raise ConfigError(
            f"state_dir: cannot use {str(path)!r} ({exc.strerror or exc}); choose a writable "
            "directory with state_dir in the config or --state-dir"
        ) from exc
    problems = unsafe_state_dirs(path)
    if problems:
        raise ConfigError(f"state_dir: {_unsafe_message(problems)}")


def state_dir_finding(path: Path) -> Finding:
    """Whether ``dormant up`` could use ``path``, without creating it. Never raises."""
    try:
        return _state_dir_finding(path)
    except OSError as exc:  # e.g. a parent this user may not enter
        return Finding(
            "state_dir",
            False,
            f"{path}: cannot look at it ({exc.strerror or exc}); choose a state_dir this user "
            "can write (state_dir in the config, --state-dir or $DORMANT_STATE_DIR)",
        )


def _state_dir_finding(path: Path) -> Finding:
    item = "state_dir"
    if path.exists():
        if not path.is_dir():
            return Finding(item, False, f"{path} is not a directory; choose another state_dir")
        problems = unsafe_state_dirs(path)
        if problems:
            return Finding(item, False, _unsafe_message(problems))
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
            if w.port == 0 and not any("{port}" in arg for arg in w.command):
                findings.append(
                    Finding(
                        f"{w.name}: port",
                        True,
                        "its command has no {port} and no fixed port is set: Dormant chooses "
                        "a port the server is never told; put {port} where the port goes "
                        "(e.g. --port {port}), or set `port:` to where it listens",
                        warning=True,
                    )
                )
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
