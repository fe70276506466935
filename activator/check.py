"""What this machine supports, and which engine Dormant will use (``dormant check``)."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass

from snapshots import CriuEngine, CriuInfo, EngineUnavailable, find_criu, probe_criu
from warmpool import EngineChoice, choose_engine, pid_namespaces_work

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


def _nvml() -> Finding:
    try:
        import pynvml  # nvidia-ml-py
    except ImportError:
        return Finding("GPU (NVML)", False, "nvidia-ml-py not installed")
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound and friends
        return Finding("GPU (NVML)", False, f"no NVIDIA driver/GPU: {exc}")
    try:
        count = pynvml.nvmlDeviceGetCount()
        driver = pynvml.nvmlSystemGetDriverVersion()
        names = [
            pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i)) for i in range(count)
        ]
        major = int(str(driver).split(".")[0])
        cuda_ckpt = (
            "CUDA checkpoint API available"
            if major >= 570
            else "driver < 570: no CUDA checkpoint API"
        )
        return Finding(
            "GPU (NVML)", True, f"{count} device(s) {names}, driver {driver}; {cuda_ckpt}"
        )
    finally:
        pynvml.nvmlShutdown()


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
    findings.append(_nvml())
    findings.append(
        Finding(
            "engine",
            setup.choice.name != "restart" or settings.engine == "restart",
            f"{setup.choice.name}: {setup.choice.reason}",
        )
    )
    return findings, setup
