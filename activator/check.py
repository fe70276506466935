"""What this machine supports, and which engine Dormant will use (``dormant check``)."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass

from snapshots import CriuEngine, CriuInfo, EngineUnavailable, find_criu, probe_criu
from warmpool import EngineChoice, choose_engine, device_findings, pid_namespaces_work

from .settings import ConfigError, Settings

__all__ = ["EngineSetup", "Finding", "detect_engine", "machine_report"]


@dataclass(frozen=True)
class Finding:
    """One line of `dormant check`: what, whether it is fine, details."""

    item: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class EngineSetup:
    choice: EngineChoice
    criu: CriuEngine | None
    criu_info: CriuInfo | None
    criu_problem: str
    pidns: tuple[bool, str]


def detect_engine(settings: Settings) -> EngineSetup:
    """Probe CRIU and PID namespaces and apply the engine policy.
    Raises ConfigError when ``engine: criu`` is configured but cannot work."""
    info: CriuInfo | None = None
    problem = ""
    pidns = pid_namespaces_work()
    if settings.engine != "restart":
        path = find_criu(settings.criu_path or None)
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
    try:
        choice = choose_engine(
            settings.engine,
            privileged=os.geteuid() == 0,
            criu=info,
            criu_problem=problem,
            pidns_ok=pidns[0],
            pidns_problem=pidns[1],
        )
    except ValueError as exc:
        raise ConfigError(f"engine: {exc}") from exc
    engine = CriuEngine(info) if choice.name == "criu" and info is not None else None
    return EngineSetup(choice, engine, info, problem, pidns)


def _device() -> list[Finding]:
    """NVIDIA GPUs (driver, CUDA checkpoint API, restore onto another GPU, MIG) and how
    CPU memory is measured (cgroup v2, v1, or PSS)."""
    return [Finding(f.item, f.ok, f.detail) for f in device_findings()]


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
    findings += _device()
    findings.append(
        Finding(
            "engine",
            setup.choice.name != "restart" or settings.engine == "restart",
            f"{setup.choice.name}: {setup.choice.reason}",
        )
    )
    return findings, setup
