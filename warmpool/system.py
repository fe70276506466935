"""What this machine can do, and which engine that leaves us with."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

from snapshots import CriuEngine, CriuInfo, EngineUnavailable, find_criu, probe_criu

__all__ = ["EngineChoice", "EngineSetup", "choose_engine", "pid_namespaces_work", "probe_engine"]


@dataclass(frozen=True)
class EngineChoice:
    """The engine Dormant will use, and a sentence saying why."""

    name: str
    reason: str


def pid_namespaces_work(timeout: float = 10.0) -> tuple[bool, str]:
    """Can we run a command as PID 1 of a new PID namespace? (needs CAP_SYS_ADMIN)"""
    if shutil.which("unshare") is None:
        return False, "`unshare` (util-linux) is not installed"
    try:
        done = subprocess.run(
            ["unshare", "--pid", "--fork", "--kill-child", "sh", "-c", "echo $$"],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return False, f"unshare failed: {exc}"
    if done.returncode != 0 or done.stdout.strip() != "1":
        return False, f"unshare --pid failed: {done.stderr.strip() or done.stdout.strip()}"
    return True, "ok"


def choose_engine(
    requested: str,
    *,
    privileged: bool,
    criu: CriuInfo | None,
    criu_problem: str,
    pidns_ok: bool,
    pidns_problem: str,
) -> EngineChoice:
    """Pure policy: ``requested`` is 'auto', 'criu' or 'restart'. Raises ValueError when
    'criu' is demanded but cannot work, saying why and what to do."""
    if requested == "restart":
        return EngineChoice("restart", "configured: engine = restart")
    problems = []
    if not privileged:
        problems.append("CRIU needs root (or CAP_CHECKPOINT_RESTORE + CAP_SYS_ADMIN)")
    if criu is None:
        problems.append(criu_problem or "no criu found; run `make setup` or set DORMANT_CRIU")
    elif not criu.usable:
        problems.append(criu.why_not())
    if not pidns_ok:
        problems.append(f"PID namespaces unavailable: {pidns_problem}")
    if not problems:
        assert criu is not None
        return EngineChoice("criu", f"criu {criu.version_text} at {criu.path} passes `criu check`")
    why = "; ".join(problems)
    if requested == "criu":
        raise ValueError(f"engine 'criu' was requested but cannot work here: {why}")
    return EngineChoice("restart", f"falling back to stop + cold boot: {why}")


@dataclass(frozen=True)
class EngineSetup:
    """The engine chosen for this machine, and what was found on the way."""

    choice: EngineChoice
    criu: CriuEngine | None
    criu_info: CriuInfo | None
    criu_problem: str
    pidns: tuple[bool, str]


def probe_engine(requested: str, criu_path: str | None = None) -> EngineSetup:
    """``requested`` ('auto', 'criu', 'restart') on this machine: CRIU (``criu_path``, else
    searched) and PID namespaces probed, the engine policy applied. Raises ValueError
    saying why when 'criu' is requested but cannot work."""
    info: CriuInfo | None = None
    problem = ""
    pidns = pid_namespaces_work()
    if requested != "restart":
        path = find_criu(criu_path)
        if path is None:
            problem = (
                "no criu found (looked at criu_path, $DORMANT_CRIU, next to python, PATH); "
                "run `make setup`"
            )
        else:
            try:
                info = probe_criu(path)
            except EngineUnavailable as exc:
                problem = str(exc)
    choice = choose_engine(
        requested,
        privileged=os.geteuid() == 0,
        criu=info,
        criu_problem=problem,
        pidns_ok=pidns[0],
        pidns_problem=pidns[1],
    )
    engine = CriuEngine(info) if choice.name == "criu" and info is not None else None
    return EngineSetup(choice, engine, info, problem, pidns)
