"""Dynamically enabled XSAVE features (AMX) across a CRIU restore.

Since Linux 5.16 a process must ask for AMX tile data with ``arch_prctl(ARCH_REQ_XCOMP_PERM,
XFEATURE_XTILEDATA)`` before it runs a tile instruction; the permission belongs to the
process, and one that runs a tile instruction without it dies with SIGILL. oneDNN asks
for it whenever PyTorch runs bf16/int8 matmuls on a CPU with AMX. Stock CRIU (4.2.1 and
upstream as of late 2025) neither records nor restores it: a restored PyTorch server dies
on its first bf16 request. Dormant's CRIU build carries a patch
(scripts/criu-patches/0001-*) that records the permission at dump and asks for it again in
the restorer.

``survives_restore`` checks it for real: a small Python process asks for the permission,
is dumped and restored by the engine, and says whether it still holds it.
"""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from snapshots.criu import CriuEngine
from snapshots.errors import SnapshotError

__all__ = ["XTILEDATA", "XsaveVerdict", "cpu_model", "has_amx", "survives_restore"]

XTILEDATA = 18
"""The XSAVE feature number of AMX tile data, the dynamically enabled one."""

_PROBE = r"""
import ctypes, os, signal, sys
libc = ctypes.CDLL(None, use_errno=True)
def perm():
    mask = ctypes.c_uint64(0)
    return mask.value if libc.syscall(158, 0x1022, ctypes.byref(mask)) == 0 else -1
feature, out = int(sys.argv[1]), sys.argv[2]
if feature >= 0 and libc.syscall(158, 0x1023, feature) != 0:
    sys.exit(3)
def say(*_):
    with open(out + ".tmp", "w") as f:
        f.write(str(perm()))
    os.rename(out + ".tmp", out)
signal.signal(signal.SIGUSR1, say)
say()
while True:
    signal.pause()
"""


@dataclass(frozen=True)
class XsaveVerdict:
    """``applicable`` False: no dynamic feature on this CPU. Else ``survives`` says whether
    the permission held before the dump was held after the restore; ``detail`` says more."""

    applicable: bool
    survives: bool
    detail: str


def cpu_model(cpuinfo: str | None = None) -> str:
    """This CPU's model name, from /proc/cpuinfo (or ``cpuinfo``)."""
    text = cpuinfo if cpuinfo is not None else _read("/proc/cpuinfo")
    for line in text.splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def has_amx(cpuinfo: str | None = None) -> bool:
    """Whether the CPU (and kernel) offer AMX tile data: ``amx_tile`` in the flags."""
    text = cpuinfo if cpuinfo is not None else _read("/proc/cpuinfo")
    for line in text.splitlines():
        if line.startswith("flags"):
            return "amx_tile" in line.split(":", 1)[1].split()
    return False


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _wait_for(path: Path, deadline: float) -> str:
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError):
            return path.read_text().strip()
        time.sleep(0.02)
    raise TimeoutError(f"the probe wrote no {path.name} in time")


def _ns_init(wrapper: subprocess.Popen[bytes], deadline: float) -> int:
    """The host pid of PID 1 of the namespace ``unshare --fork`` made."""
    children = Path(f"/proc/{wrapper.pid}/task/{wrapper.pid}/children")
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            return int(children.read_text().split()[0])
        time.sleep(0.01)
    raise TimeoutError("the probe's PID namespace did not start")


def survives_restore(
    engine: CriuEngine, feature: int | None = XTILEDATA, timeout: float = 30.0
) -> XsaveVerdict:
    """Ask for ``feature`` in a probe process (None: ask for nothing, compare the masks
    only), checkpoint and restore it with ``engine``, and compare its XSAVE permission
    before and after. Bounded by ``timeout``; every process it starts is ended."""
    if feature is not None and not has_amx():
        return XsaveVerdict(False, True, f"not applicable (no AMX on this CPU, {cpu_model()})")
    deadline = time.monotonic() + timeout
    restored = None
    with tempfile.TemporaryDirectory(prefix="dormant-xsave-") as tmp:
        work = Path(tmp)
        out = work / "perm"
        probe = [sys.executable, "-c", _PROBE, str(-1 if feature is None else feature), str(out)]
        wrapper = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--kill-child", "setsid", *probe],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=work,
        )
        try:
            try:
                before = int(_wait_for(out, deadline))
            except TimeoutError:
                if wrapper.poll() == 3:
                    return XsaveVerdict(True, False, f"the kernel refused AMX ({cpu_model()})")
                raise
            pid = _ns_init(wrapper, deadline)
            out.unlink()
            engine.dump(pid, work / "images", work, max(1.0, deadline - time.monotonic()))
            wrapper.wait(max(1.0, deadline - time.monotonic()))
            restored = engine.restore(
                work / "images", work, None, None, max(1.0, deadline - time.monotonic())
            )
            os.kill(restored, signal.SIGUSR1)
            after = int(_wait_for(out, deadline))
        except (SnapshotError, OSError, TimeoutError, subprocess.SubprocessError) as exc:
            return XsaveVerdict(True, False, f"the probe could not run: {exc}")
        finally:
            for pid_ in (restored, wrapper.pid):
                if pid_ is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid_, signal.SIGKILL)
            with contextlib.suppress(subprocess.SubprocessError):
                wrapper.wait(5)
    lost = before & ~after if after >= 0 else before
    if not lost:
        return XsaveVerdict(True, True, f"yes (permission mask {after:#x} kept; {cpu_model()})")
    return XsaveVerdict(
        True,
        False,
        f"no: the restored process lost XSAVE permission {lost:#x} (a tile instruction would "
        f"kill it with SIGILL); use a CRIU built by `make setup`, which carries "
        f"scripts/criu-patches ({engine.info.path})",
    )
