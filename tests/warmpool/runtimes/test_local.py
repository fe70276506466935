"""The local runtime with real processes: PID namespaces, health, failures, CRIU restore."""

from __future__ import annotations

import errno
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from snapshots import CriuEngine, PendingSnapshot, Snapshot, SnapshotStore
from tests.conftest import free_port
from warmpool import (
    CgroupTree,
    CheckpointFailed,
    InstanceSpec,
    LocalRuntime,
    RestoreDeferred,
    RestoreFailed,
    StartFailed,
)
from warmpool.process.cgroup import procs as cgroup_procs

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


async def test_dropped_capabilities_are_gone_and_without_criu_sys_admin_too(
    tmp_path: Path, counter_cmd: list[str]
) -> None:
    """No checkpoint engine: nothing needs SYS_ADMIN in the tree, so it goes with the rest
    (with CRIU it stays: tests/integration/test_exec.py); default set caps stay."""
    port = free_port()
    async with httpx.AsyncClient() as client:
        runtime = LocalRuntime(
            SnapshotStore(tmp_path / "s"), tmp_path / "w", None, client, drop_caps=True
        )
        inst = await runtime.boot(_spec([*counter_cmd, str(port)], port))
        try:
            status = Path(f"/proc/{inst.pid}/status").read_text().splitlines()
            caps = {
                k: int(v, 16) for k, _, v in (ln.partition(":\t") for ln in status) if "Cap" in k
            }
            for bit in (12, 19, 21, 24, 25, 40):  # NET_ADMIN ... SYS_ADMIN ... CHECKPOINT_RESTORE
                assert not (caps["CapEff"] | caps["CapBnd"]) >> bit & 1, (bit, caps)
            assert caps["CapEff"] >> 5 & 1 and caps["CapEff"] >> 0 & 1  # KILL, CHOWN
        finally:
            await runtime.stop(inst)


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
        inst = await runtime.boot(_spec([*counter_cmd, "{port}"], port))
        for _ in range(3):
            await client.post(f"http://127.0.0.1:{port}/incr")
        before = (await client.get(f"http://127.0.0.1:{port}/count")).text
        info = await runtime.checkpoint(inst)
        assert not Path(f"/proc/{inst.pid}").exists()
        assert runtime.latest("t") == info
        snapshot = store.get(info.id)
        assert snapshot.manifest.meta["port"] == port
        store.verify(snapshot)
        for _ in range(3):
            # port 0 in the spec: a restore comes back on the port it was dumped with
            restored = await runtime.restore(_spec([*counter_cmd, "{port}"], 0))
            assert restored is not None
            try:
                assert restored.restored_from == snapshot.id
                assert restored.endpoint.port == port
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
        info = await runtime.checkpoint(inst)
        assert store.get(info.id).manifest.meta["files"][str(data)] == 8192
        data.write_bytes(b"w" * 9000)
        with pytest.raises(RestoreFailed, match="changed since checkpoint") as failed:
            await runtime.restore(spec)
        assert failed.value.snapshot_id == info.id
        assert not (tmp_path / "w" / "t" / "restore").exists(), "CRIU must not have run"
        assert runtime.latest("t") is None, "the snapshot is retired (marked bad)"
        assert await runtime.restore(spec) is None


class FullDiskStore(SnapshotStore):
    """A store whose filesystem fills up between the dump and the commit (a real ENOSPC
    on a real tmpfs: a filler file takes every free byte, then the real commit runs)."""

    def commit(self, pending: PendingSnapshot, **kw: Any) -> Snapshot:
        filler = self.root / "filler"
        with open(filler, "wb") as f:
            try:
                while True:
                    f.write(b"\0" * (1 << 20))
                    f.flush()
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
        try:
            return super().commit(pending, **kw)
        finally:
            filler.unlink()


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


async def test_commit_failure_after_a_dump_restores_from_the_uncommitted_images(
    tmp_path: Path, small_tmpfs: Path, counter_cmd: list[str], criu: CriuEngine
) -> None:
    """Disk full while the manifest is written, after the dump removed the
    process. The images are the only copy of its memory: it comes back from them."""
    port = free_port()
    store = FullDiskStore(small_tmpfs / "s")
    async with httpx.AsyncClient() as client:
        runtime = LocalRuntime(store, tmp_path / "w", criu, client)
        inst = await runtime.boot(_spec([*counter_cmd, str(port)], port))
        for _ in range(2):
            await client.post(f"http://127.0.0.1:{port}/incr")
        before = (await client.get(f"http://127.0.0.1:{port}/count")).text
        with pytest.raises(CheckpointFailed, match="could not be committed") as failed:
            await runtime.checkpoint(inst)
        replacement = failed.value.instance
        assert replacement is not None and replacement.alive()
        try:
            assert not inst.alive()
            assert (await client.get(f"http://127.0.0.1:{port}/count")).text == before
            assert runtime.latest("t") is None
            assert not list((small_tmpfs / "s" / "t").iterdir()), "uncommitted images discarded"
        finally:
            await runtime.stop(replacement)


async def test_every_instance_runs_in_its_own_cgroup_and_a_new_start_ends_leftovers(
    tmp_path: Path, counter_cmd: list[str], criu: CriuEngine
) -> None:
    """A tree that outlives a killed Dormant is ended by the next start."""
    tree = CgroupTree(tmp_path)
    if not tree.available():
        pytest.fail(f"cgroup v2 is expected on these machines: {tree.why_not}")
    port = free_port()
    async with httpx.AsyncClient() as client:
        runtime = LocalRuntime(SnapshotStore(tmp_path / "s"), tmp_path / "w", criu, client, tree)
        inst = await runtime.boot(_spec([*counter_cmd, "{port}"], port))
        assert inst.cgroup is not None and inst.pid in cgroup_procs(inst.cgroup)
        await runtime.checkpoint(inst)
        assert inst.cgroup is None, "the dumped instance's cgroup is removed"
        restored = await runtime.restore(_spec([*counter_cmd, "{port}"], 0))
        assert restored is not None and restored.cgroup is not None
        assert restored.pid in cgroup_procs(restored.cgroup)
        # Dormant is killed now: its successor (same state dir) ends the tree.
        successor = LocalRuntime(
            SnapshotStore(tmp_path / "s"), tmp_path / "w", criu, client, CgroupTree(tmp_path)
        )
        assert successor.clean_leftovers() == [f"cgroup {restored.cgroup.name}"]
        assert restored.wait(5), "the leftover tree was ended"
        assert not restored.cgroup.exists()


async def test_restore_timeout_keeps_the_snapshot(
    tmp_path: Path, counter_cmd: list[str], criu: CriuEngine
) -> None:
    """A timeout is the machine's (slow, loaded), not the snapshot's: kept, and it restores
    once there is time."""
    port = free_port()
    async with httpx.AsyncClient() as client:
        runtime = LocalRuntime(SnapshotStore(tmp_path / "s"), tmp_path / "w", criu, client)
        spec = _spec([*counter_cmd, "{port}"], port)
        info = await runtime.checkpoint(await runtime.boot(spec))
        with pytest.raises(RestoreDeferred, match="timed out") as deferred:
            await runtime.restore(_spec([*counter_cmd, "{port}"], port, restore_timeout=0.001))
        assert deferred.value.snapshot_id == info.id
        assert runtime.latest("t") == info, "kept"
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, "nothing half-restored listens"
        restored = await runtime.restore(spec)
        assert restored is not None and restored.restored_from == info.id
        await runtime.stop(restored)


async def test_checkpoint_timeout_keeps_the_instance_serving(
    tmp_path: Path, counter_cmd: list[str], criu: CriuEngine
) -> None:
    port = free_port()
    async with httpx.AsyncClient() as client:
        runtime = LocalRuntime(SnapshotStore(tmp_path / "s"), tmp_path / "w", criu, client)
        inst = await runtime.boot(_spec([*counter_cmd, str(port)], port, checkpoint_timeout=0.001))
        try:
            with pytest.raises(CheckpointFailed, match="timed out") as failed:
                await runtime.checkpoint(inst)
            assert failed.value.instance is inst and inst.alive()
            assert (await client.post(f"http://127.0.0.1:{port}/incr")).text == "1"
            assert runtime.latest("t") is None
        finally:
            await runtime.stop(inst)
