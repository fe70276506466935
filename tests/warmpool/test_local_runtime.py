"""The local runtime with real processes: PID namespaces, health, failures, CRIU restore."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import httpx
import pytest

from snapshots import CriuEngine, SnapshotCorrupt, SnapshotStore
from tests.conftest import free_port
from warmpool import InstanceSpec, LocalRuntime, StartFailed

pytestmark = pytest.mark.anyio


def _spec(cmd: list[str], port: int, **kw: object) -> InstanceSpec:
    return InstanceSpec(name="t", command=[*cmd], port=port, **kw)  # type: ignore[arg-type]


async def test_boot_runs_server_as_pid1_of_its_own_namespace(
    tmp_path: Path, counter_cmd: list[str]
) -> None:
    port = free_port()
    async with httpx.AsyncClient() as client:
        runtime = LocalRuntime(SnapshotStore(tmp_path / "s"), tmp_path / "w", None, client)
        inst = await runtime.boot(_spec([*counter_cmd, str(port)], port))
        try:
            nspid = next(
                ln
                for ln in Path(f"/proc/{inst.pid}/status").read_text().splitlines()
                if ln.startswith("NSpid:")
            )
            assert nspid.split()[1:] == [str(inst.pid), "1"]
            assert (await client.post(f"http://127.0.0.1:{port}/incr")).text == "1"
            deadline = time.monotonic() + 5
            while "incremented to 1" not in inst.output.tail() and time.monotonic() < deadline:
                time.sleep(0.02)
            assert "incremented to 1" in inst.output.tail()
        finally:
            await runtime.stop(inst)
        assert not Path(f"/proc/{inst.pid}").exists()


async def test_command_that_exits_fails_fast_with_its_output(tmp_path: Path) -> None:
    cmd = [sys.executable, "-c", "print('weights not found: /models/x'); raise SystemExit(3)"]
    async with httpx.AsyncClient() as client:
        runtime = LocalRuntime(SnapshotStore(tmp_path / "s"), tmp_path / "w", None, client)
        started = time.monotonic()
        with pytest.raises(StartFailed) as info:
            await runtime.boot(_spec(cmd, free_port(), start_timeout=60))
    assert time.monotonic() - started < 10
    assert "exited with status 3" in str(info.value)
    assert "weights not found" in str(info.value)


async def test_health_deadline_stops_the_process(tmp_path: Path) -> None:
    async with httpx.AsyncClient() as client:
        runtime = LocalRuntime(SnapshotStore(tmp_path / "s"), tmp_path / "w", None, client)
        with pytest.raises(StartFailed, match="not healthy after 1s"):
            await runtime.boot(_spec(["sleep", "60"], free_port(), start_timeout=1, stop_timeout=1))


async def test_same_snapshot_restores_three_times(
    tmp_path: Path, counter_cmd: list[str], criu: CriuEngine
) -> None:
    port = free_port()
    store = SnapshotStore(tmp_path / "s")
    async with httpx.AsyncClient() as client:
        runtime = LocalRuntime(store, tmp_path / "w", criu, client)
        inst = await runtime.boot(_spec([*counter_cmd, str(port)], port))
        for _ in range(3):
            await client.post(f"http://127.0.0.1:{port}/incr")
        before = (await client.get(f"http://127.0.0.1:{port}/count")).text
        snapshot = await runtime.checkpoint(inst)
        assert not Path(f"/proc/{inst.pid}").exists()
        assert snapshot.manifest.meta["port"] == port
        store.verify(snapshot)
        for _ in range(3):
            restored = await runtime.restore(snapshot, _spec([*counter_cmd, str(port)], port))
            try:
                assert restored.restored_from == snapshot.id
                assert (await client.get(f"http://127.0.0.1:{port}/count")).text == before
                assert (await client.post(f"http://127.0.0.1:{port}/incr")).text == "4"
                deadline = time.monotonic() + 5
                while (
                    "incremented to 4" not in restored.output.tail() and time.monotonic() < deadline
                ):
                    time.sleep(0.02)
                assert "incremented to 4" in restored.output.tail(), (
                    "restored stdout not reconnected"
                )
            finally:
                await runtime.stop(restored)
            assert not Path(f"/proc/{restored.pid}").exists()


async def test_mapped_file_changed_after_checkpoint_is_caught_before_criu(
    tmp_path: Path, counter_cmd: list[str], criu: CriuEngine
) -> None:
    data = tmp_path / "weights.bin"
    data.write_bytes(b"w" * 8192)
    port = free_port()
    store = SnapshotStore(tmp_path / "s")
    async with httpx.AsyncClient() as client:
        runtime = LocalRuntime(store, tmp_path / "w", criu, client)
        spec = _spec([*counter_cmd, str(port), "--map", str(data)], port)
        inst = await runtime.boot(spec)
        snapshot = await runtime.checkpoint(inst)
        assert snapshot.manifest.meta["files"][str(data)] == 8192
        data.write_bytes(b"w" * 9000)
        with pytest.raises(SnapshotCorrupt, match="changed since checkpoint"):
            await runtime.restore(snapshot, spec)
        assert not (tmp_path / "w" / "t" / "restore").exists(), "CRIU must not have run"
