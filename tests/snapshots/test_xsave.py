"""Dynamically enabled XSAVE features (AMX) across a real CRIU dump and restore.

On a CPU with AMX (``amx_tile`` in /proc/cpuinfo) a C program holding the AMX permission and
the reference server in bfloat16 (oneDNN's AMX kernels) must keep running after a restore;
elsewhere those tests skip, naming the CPU. Everywhere, with Dormant's patched CRIU, the
dump records each task's XSAVE permission in its core image and the restorer asks for a
recorded feature again: on a CPU without AMX, asking for tile data fails the restore loudly
(instead of a SIGILL later).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from snapshots import CriuEngine, EngineRestoreFailed
from snapshots.xsave import _PROBE, XTILEDATA, cpu_model, has_amx, survives_restore
from tests.conftest import TESTS

pytestmark = pytest.mark.criu

needs_amx = pytest.mark.skipif(
    not has_amx(), reason=f"this CPU ({cpu_model()}) has no AMX (no amx_tile in /proc/cpuinfo)"
)


def _ns_init(wrapper: subprocess.Popen[bytes]) -> int:
    children = Path(f"/proc/{wrapper.pid}/task/{wrapper.pid}/children")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int(children.read_text().split()[0])
        time.sleep(0.01)
    raise AssertionError("no process in the new PID namespace")


def _wait_text(path: Path, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError):
            if text := path.read_text().strip():
                return text
        time.sleep(0.02)
    raise AssertionError(f"nothing in {path} after {timeout:.0f}s")


@contextlib.contextmanager
def _in_namespace(argv: list[str], cwd: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``argv`` as PID 1 of a new PID namespace and session (as Dormant runs instances)."""
    wrapper = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--kill-child", "setsid", *argv],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=cwd,
    )
    try:
        yield wrapper
    finally:
        with contextlib.suppress(ProcessLookupError):
            wrapper.kill()
        wrapper.wait(10)


def _end(pid: int) -> None:
    """SIGKILL a restored process (criu made it our child) and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def _alive(pid: int) -> bool:
    try:
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


# -- the core image: read and rewrite one varint field of task_core_entry ----------------------

_TC = 3  # core_entry.tc
_XCOMP_PERM = 1001  # task_core_entry.xcomp_perm (scripts/criu-patches/0001-*)


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = buf[i]
        value |= (b & 0x7F) << shift
        i, shift = i + 1, shift + 7
        if not b & 0x80:
            return value, i


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        b, value = value & 0x7F, value >> 7
        out.append(b | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _fields(buf: bytes) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, start of the whole field, end) of each field of a message."""
    i = 0
    while i < len(buf):
        start = i
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, i = _varint(buf, i)
        elif wire == 1:
            i += 8
        elif wire == 2:
            length, i = _varint(buf, i)
            i += length
        elif wire == 5:
            i += 4
        else:
            raise ValueError(f"wire type {wire}")
        yield number, wire, start, i


def _core(images: Path) -> tuple[Path, bytes, bytes]:
    """The root task's core image: (path, the magic header, the core_entry message)."""
    path = min(images.glob("core-*.img"), key=lambda p: int(p.stem.split("-")[1]))
    data = path.read_bytes()
    (size,) = struct.unpack_from("<I", data, 8)  # two magics, then one sized entry
    return path, data[:8], data[12 : 12 + size]


def _task_core(core: bytes) -> tuple[int, int, bytes]:
    for number, wire, start, end in _fields(core):
        if number == _TC and wire == 2:
            length, body = _varint(core, start + 1)
            return start, end, core[body : body + length]
    raise AssertionError("no task_core_entry in the core image")


def read_xcomp_perm(images: Path) -> int | None:
    _, _, core = _core(images)
    tc = _task_core(core)[2]
    for number, wire, start, _end in _fields(tc):
        if number == _XCOMP_PERM and wire == 0:
            return _varint(tc, start + 2)[0]  # 1001 << 3 takes two bytes of key
    return None


def write_xcomp_perm(images: Path, value: int) -> None:
    path, head, core = _core(images)
    start, end, tc = _task_core(core)
    kept = b"".join(tc[s:e] for n, _w, s, e in _fields(tc) if n != _XCOMP_PERM)
    tc = kept + _encode_varint(_XCOMP_PERM << 3) + _encode_varint(value)
    core = core[:start] + bytes([_TC << 3 | 2]) + _encode_varint(len(tc)) + tc + core[end:]
    path.write_bytes(head + struct.pack("<I", len(core)) + core)


def _perm_now() -> int:
    import ctypes

    mask = ctypes.c_uint64(0)
    assert ctypes.CDLL(None).syscall(158, 0x1022, ctypes.byref(mask)) == 0
    return mask.value


# -- everywhere ------------------------------------------------------------------------------


def test_xsave_permission_mask_survives_a_restore(criu: CriuEngine) -> None:
    """The probe `dormant check` runs: the permission mask before the dump is held after."""
    verdict = survives_restore(criu, None)
    assert verdict.applicable and verdict.survives, verdict.detail


def test_dump_records_the_permission_and_the_restorer_asks_for_it_again(
    tmp_path: Path, criu: CriuEngine
) -> None:
    out = tmp_path / "perm"
    with _in_namespace([sys.executable, "-c", _PROBE, "-1", str(out)], tmp_path) as wrapper:
        before = int(_wait_text(out))
        pid = _ns_init(wrapper)
        out.unlink()
        criu.dump(pid, tmp_path / "images", tmp_path, 60)
    recorded = read_xcomp_perm(tmp_path / "images")
    if recorded is None:
        pytest.skip(f"{criu.info.path} lacks Dormant's XSAVE patch (scripts/criu-patches)")
    assert recorded == before == _perm_now()

    write_xcomp_perm(tmp_path / "images", recorded | 1 << XTILEDATA)
    assert read_xcomp_perm(tmp_path / "images") == recorded | 1 << XTILEDATA
    if not has_amx():  # this CPU cannot grant tile data: the restore says so and fails
        with pytest.raises(EngineRestoreFailed, match=f"XSAVE feature {XTILEDATA}"):
            criu.restore(tmp_path / "images", tmp_path / "r", None, None, 60)
        return
    restored = criu.restore(tmp_path / "images", tmp_path / "r", None, None, 60)
    try:
        os.kill(restored, signal.SIGUSR1)
        assert int(_wait_text(out)) & 1 << XTILEDATA, "the restorer asked for tile data"
    finally:
        _end(restored)


# -- on a CPU with AMX -----------------------------------------------------------------------


@needs_amx
def test_amx_program_keeps_running_after_a_restore(tmp_path: Path, criu: CriuEngine) -> None:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("no gcc to build tests/snapshots/amx_probe.c")
    probe = tmp_path / "amx_probe"
    subprocess.run(
        [gcc, "-O1", "-mamx-tile", "-o", str(probe), str(TESTS / "snapshots" / "amx_probe.c")],
        check=True,
        timeout=120,
    )
    count = tmp_path / "rounds"
    with _in_namespace([str(probe), str(count)], tmp_path) as wrapper:
        _wait_text(count)
        pid = _ns_init(wrapper)
        criu.dump(pid, tmp_path / "images", tmp_path, 60)
    at_dump = int(count.read_text())
    restored = criu.restore(tmp_path / "images", tmp_path / "r", None, None, 60)
    try:
        deadline = time.monotonic() + 30
        while int(_wait_text(count)) < at_dump + 5:  # five rounds of tile instructions
            assert _alive(restored), "the restored AMX program died (SIGILL: permission lost)"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert _alive(restored)
    finally:
        _end(restored)


@needs_amx
def test_refserver_in_bfloat16_answers_after_a_restore(tmp_path: Path, criu: CriuEngine) -> None:
    """The issue's case: a PyTorch server in bf16 (oneDNN asks for AMX) behind Dormant."""
    from tests.integration.harness import Dormant, ref_workload

    workload = ref_workload("bf", "bf-model")
    workload["command"] = [*workload["command"], "--dtype", "bfloat16"]
    d = Dormant(tmp_path, [workload]).start()
    try:
        ask = {"model": "bf-model", "prompt": "hello there", "max_tokens": 8}
        url = f"{d.url}/v1/completions"
        first = httpx.post(url, json=ask, timeout=120)
        assert first.status_code == 200, first.text
        for _ in range(2):
            assert d.admin("POST", "/workloads/bf/hibernate").json()["state"] == "hibernated"
            again = httpx.post(url, json=ask, timeout=120)
            assert again.status_code == 200, again.text
            assert again.headers["x-dormant-wake"].startswith("restore; ")
            assert again.json()["choices"][0]["text"] == first.json()["choices"][0]["text"]
            time.sleep(1.0)  # a restored process that lost AMX would be dead by now
            assert d.workload("bf")["state"] == "ready", d.workload("bf")["last_error"]
    finally:
        d.stop()
