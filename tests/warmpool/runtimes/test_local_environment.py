"""The local runtime when the environment fails, with real processes and real CRIU: a taken
port, exhausted file descriptors and a timeout keep a good snapshot (RestoreDeferred); a
snapshot of another command, env or cwd is stale (kept, listed, never restored); a command
that listens elsewhere fails its boot fast; without PID namespaces instances still run."""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from snapshots import CriuEngine, SnapshotStore
from tests.conftest import ROOT, free_port
from warmpool import InstanceSpec, LocalRuntime, RestoreDeferred, StartFailed

pytestmark = pytest.mark.anyio


def _spec(cmd: list[str], port: int = 0, **kw: object) -> InstanceSpec:
    return InstanceSpec(name="t", command=[*cmd], port=port, **kw)  # type: ignore[arg-type]


@pytest.fixture
def listener() -> Iterator[list[socket.socket]]:
    held: list[socket.socket] = []
    yield held
    for s in held:
        s.close()


def _listen(port: int, held: list[socket.socket]) -> None:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen()
    held.append(s)


async def _count(client: httpx.AsyncClient, port: int) -> str:
    return (await client.get(f"http://127.0.0.1:{port}/count")).text


async def test_a_taken_port_keeps_the_snapshot_and_criu_never_runs(
    tmp_path: Path, counter_cmd: list[str], criu: CriuEngine, listener: list[socket.socket]
) -> None:
    port = free_port()
    spec = _spec([*counter_cmd, "{port}"], port)
    async with httpx.AsyncClient() as client:
        runtime = LocalRuntime(SnapshotStore(tmp_path / "s"), tmp_path / "w", criu, client)
        inst = await runtime.boot(spec)
        await client.post(f"http://127.0.0.1:{port}/incr")
        before = await _count(client, port)
        info = await runtime.checkpoint(inst)
        _listen(port, listener)
        with pytest.raises(RestoreDeferred, match=f"port {port} is taken") as deferred:
            await runtime.restore(spec)
        assert deferred.value.snapshot_id == info.id
        assert runtime.latest("t") == info, "kept, not .bad"
        assert not (tmp_path / "w" / "t" / "restore").exists(), "CRIU never ran"
        listener.pop().close()
        restored = await runtime.restore(spec)
        assert restored is not None
        try:
            assert await _count(client, port) == before, "the state came back"
        finally:
            await runtime.stop(restored)


async def test_criu_failing_to_bind_keeps_the_snapshot(
    tmp_path: Path,
    counter_cmd: list[str],
    criu: CriuEngine,
    listener: list[socket.socket],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The port taken between the check and CRIU: CRIU's "Can't bind inet socket" is the
    machine's refusal too."""
    port = free_port()
    spec = _spec([*counter_cmd, "{port}"], port)
    async with httpx.AsyncClient() as client:
        runtime = LocalRuntime(SnapshotStore(tmp_path / "s"), tmp_path / "w", criu, client)
        info = await runtime.checkpoint(await runtime.boot(spec))
        _listen(port, listener)
        monkeypatch.setattr(LocalRuntime, "_port_taken", staticmethod(lambda snapshot: None))
        with pytest.raises(RestoreDeferred, match="bind") as deferred:
            await runtime.restore(spec)
        assert deferred.value.snapshot_id == info.id
        assert runtime.latest("t") == info


async def test_exhausted_file_descriptors_keep_the_snapshot(
    tmp_path: Path, counter_cmd: list[str], criu: CriuEngine
) -> None:
    port = free_port()
    spec = _spec([*counter_cmd, "{port}"], port)
    async with httpx.AsyncClient() as client:
        runtime = LocalRuntime(SnapshotStore(tmp_path / "s"), tmp_path / "w", criu, client)
        info = await runtime.checkpoint(await runtime.boot(spec))
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        lowest_free = os.open(os.devnull, os.O_RDONLY)
        os.close(lowest_free)
        # a new descriptor gets the lowest free number, refused at the limit: EMFILE
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))
        try:
            with pytest.raises(RestoreDeferred, match="Too many open files"):
                runtime.latest("t")
            with pytest.raises(RestoreDeferred, match="Too many open files"):
                await runtime.restore(spec)
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert runtime.latest("t") == info, "kept: 'cannot read' is not 'no snapshot'"
        assert SnapshotStore(tmp_path / "s").entries("t")[0].status == "ok"
        restored = await runtime.restore(spec)
        assert restored is not None
        await runtime.stop(restored)


async def test_a_snapshot_of_another_command_env_or_cwd_is_stale(
    tmp_path: Path, counter_cmd: list[str], criu: CriuEngine
) -> None:
    port = free_port()
    (tmp_path / "elsewhere").mkdir()
    spec = _spec([*counter_cmd, "{port}"], port, env={"MODEL": "v1"})
    changed = [
        _spec([*counter_cmd, "{port}", "--verbose"], port, env={"MODEL": "v1"}),
        _spec([*counter_cmd, "{port}"], port, env={"MODEL": "v2"}),
        _spec([*counter_cmd, "{port}"], port, env={"MODEL": "v1"}, cwd=tmp_path / "elsewhere"),
    ]
    store = SnapshotStore(tmp_path / "state" / "snapshots")
    state = str(tmp_path / "state")
    async with httpx.AsyncClient() as client:
        runtime = LocalRuntime(store, tmp_path / "w", criu, client)
        info = await runtime.checkpoint(await runtime.boot(spec))
        assert set(store.get(info.id).manifest.meta["fingerprint"]) == {"command", "env", "cwd"}
        for other, part in zip(changed, ("command", "env", "cwd"), strict=True):
            assert await runtime.restore(other) is None, f"{part} changed: not restored"
            assert runtime.latest("t") is None
            [entry] = store.entries("t")
            assert entry.status == "stale" and part in entry.reason, entry.reason
            # `dormant snapshots list` (another process) sees it stale too
            listed = subprocess.run(
                [sys.executable, "-m", "activator", "snapshots", "list", "--state-dir", state],
                capture_output=True,
                text=True,
                timeout=60,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
            assert info.id in listed.stdout and "stale" in listed.stdout, listed
        restored = await runtime.restore(spec)  # the workload as it was: restored
        assert restored is not None and restored.restored_from == info.id
        await runtime.stop(restored)


async def test_a_manifest_without_a_fingerprint_still_restores(
    tmp_path: Path, counter_cmd: list[str], criu: CriuEngine
) -> None:
    """Written before fingerprints existed (tests/golden/manifest-criu-v1.json has none):
    unknown, allowed."""
    port = free_port()
    store = SnapshotStore(tmp_path / "s")
    async with httpx.AsyncClient() as client:
        runtime = LocalRuntime(store, tmp_path / "w", criu, client)
        info = await runtime.checkpoint(await runtime.boot(_spec([*counter_cmd, "{port}"], port)))
        path = store.get(info.id).path / "manifest.json"
        data = json.loads(path.read_text())
        del data["meta"]["fingerprint"]
        path.write_text(json.dumps(data))
        restored = await runtime.restore(_spec([*counter_cmd, "{port}"], port, env={"X": "1"}))
        assert restored is not None and restored.restored_from == info.id
        await runtime.stop(restored)


async def test_a_command_without_port_that_listens_elsewhere_fails_fast(
    tmp_path: Path, counter_cmd: list[str]
) -> None:
    theirs = free_port()
    async with httpx.AsyncClient() as client:
        runtime = LocalRuntime(SnapshotStore(tmp_path / "s"), tmp_path / "w", None, client)
        with pytest.raises(StartFailed) as failed:  # not "not healthy after 300s"
            await runtime.boot(_spec([*counter_cmd, str(theirs)], 0, start_timeout=300))
    message = str(failed.value)
    assert f"listens on 127.0.0.1:{theirs}" in message and "{port}" in message
    assert f"port: {theirs}" in message
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", theirs)) != 0, "the process was stopped"


async def test_without_pid_namespaces_an_instance_runs_and_stops_with_its_group(
    tmp_path: Path, counter_cmd: list[str]
) -> None:
    port = free_port()
    async with httpx.AsyncClient() as client:
        runtime = LocalRuntime(
            SnapshotStore(tmp_path / "s"), tmp_path / "w", None, client, pid_namespaces=False
        )
        inst = await runtime.boot(_spec([*counter_cmd, "{port}"], port))
        assert os.getpgid(inst.pid) == inst.pid, "the leader of its own process group"
        assert (await client.post(f"http://127.0.0.1:{port}/incr")).text == "1"
        await runtime.stop(inst)
        assert not inst.alive() and not Path(f"/proc/{inst.pid}").exists()
