"""`dormant snapshots list|inspect|verify|delete` through the real CLI: on a store named by
--state-dir, on the store a running `dormant up` reports (GET /-/snapshots), and on the
default state directory when no activator answers. It always says which store it reads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from snapshots import Snapshot, SnapshotStore
from tests.conftest import ROOT, TESTS, free_port
from tests.integration.harness import Dormant

APP = {
    "name": "echo",
    "kind": "http",
    "path_prefix": "/apps/echo",
    "idle_after": 0,
    "command": ["{python}", str(TESTS / "servers" / "http_app.py"), "--port", "{port}"],
}


def _cli(
    *args: str, cwd: Path = ROOT, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "activator", "snapshots", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )


def _commit(store: SnapshotStore, workload: str = "model-x") -> Snapshot:
    with store.begin(workload) as pending:
        (pending.path / "pages-1.img").write_bytes(b"p" * 4096)
        return store.commit(pending, engine="criu", engine_version="4.2.1")


def test_snapshots_cli_on_a_state_dir(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "snapshots")
    snap = _commit(store)
    state = ("--state-dir", str(tmp_path))

    listed = _cli("list", *state)
    assert listed.returncode == 0 and snap.id in listed.stdout and "model-x" in listed.stdout
    assert f"store: {tmp_path / 'snapshots'} (from --state-dir)" in listed.stderr
    inspected = json.loads(_cli("inspect", snap.id, *state).stdout)
    assert inspected["files"]["pages-1.img"]["size"] == 4096
    assert inspected["digest"] == "blake3"
    ok = _cli("verify", snap.id, *state)
    assert ok.returncode == 0 and "match their blake3 digests" in ok.stdout

    (snap.path / "pages-1.img").write_bytes(b"q" * 4096)
    bad = _cli("verify", snap.id, *state)
    assert bad.returncode == 1 and "blake3 mismatch" in bad.stdout

    missing = _cli("inspect", "no-such-id", *state)
    assert missing.returncode == 1 and "no snapshot 'no-such-id'" in missing.stderr
    assert "Traceback" not in missing.stderr

    assert _cli("delete", snap.id, *state).returncode == 0
    assert snap.id not in _cli("list", *state).stdout


def test_unusable_snapshots_are_listed_with_their_reason(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "snapshots")
    good, shape, gone, marked = (_commit(store) for _ in range(4))
    (shape.path / "manifest.json").write_text('{"format": 2, "files": null}')
    (gone.path / "manifest.json").unlink()
    store.mark_bad(marked, "restore failed: criu exit 1")
    state = ("--state-dir", str(tmp_path))

    listed = _cli("list", *state)
    assert listed.returncode == 0 and "Traceback" not in listed.stderr
    rows = {line.split()[0]: line for line in listed.stdout.splitlines()[1:]}
    assert " ok " in rows[good.id]
    assert " invalid " in rows[shape.id] and "id: missing" in rows[shape.id]
    assert " invalid " in rows[gone.id] and "no manifest" in rows[gone.id]
    assert " bad " in rows[marked.id] and "restore failed: criu exit 1" in rows[marked.id]

    for snap, why in ((shape, "invalid: manifest id: missing"), (marked, "bad: restore failed")):
        verified = _cli("verify", snap.id, *state)
        assert verified.returncode == 1 and f"BAD: {why}" in verified.stdout
        assert json.loads(_cli("inspect", snap.id, *state).stdout)["status"] in ("bad", "invalid")
    deleted = _cli("delete", f"{marked.id}.bad", *state)
    assert deleted.returncode == 0 and "deleted" in deleted.stdout and "(bad)" in deleted.stdout
    assert not marked.path.with_name(f"{marked.id}.bad").exists()


def test_without_an_activator_it_says_so_and_uses_the_default(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "default-state" / "snapshots")
    snap = _commit(store)
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    listed = _cli("list", "--url", url, env={"DORMANT_STATE_DIR": str(tmp_path / "default-state")})
    assert listed.returncode == 0 and snap.id in listed.stdout
    assert f"store: {store.root} (no activator at {url}; the default state dir" in listed.stderr


@pytest.mark.parametrize("admin_listen", [False, True], ids=["one-listener", "admin-listen"])
def test_it_reads_the_store_of_the_running_activator(tmp_path: Path, admin_listen: bool) -> None:
    """`make run` keeps its state in .state while the CLI's default is elsewhere: asked
    from another directory, with another default, the CLI still reads Dormant's store
    (at --url: the activator, or its separate admin listener)."""
    extra = {"admin_listen": f"127.0.0.1:{free_port()}"} if admin_listen else {}
    d = Dormant(tmp_path, [APP], admin_token="s3cret", **extra).start()
    url = f"http://{extra['admin_listen']}" if admin_listen else d.url
    try:
        store = SnapshotStore(d.state / "snapshots")
        snap = _commit(store, "echo")
        broken = _commit(store, "echo")
        (broken.path / "manifest.json").write_text("[]")
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        env = {"DORMANT_ADMIN_TOKEN": "s3cret", "DORMANT_STATE_DIR": str(elsewhere)}

        listed = _cli("list", "--url", url, cwd=elsewhere, env=env)
        assert listed.returncode == 0, listed.stderr
        root = (d.state / "snapshots").resolve()
        assert f"store: {root} (from the activator at {url})" in listed.stderr
        rows = {line.split()[0]: line for line in listed.stdout.splitlines()[1:]}
        assert " ok " in rows[snap.id]
        assert " invalid " in rows[broken.id] and "not a JSON object" in rows[broken.id]
        verified = _cli("verify", snap.id, "--url", url, cwd=elsewhere, env=env)
        assert verified.returncode == 0 and f"{snap.id}: ok" in verified.stdout

        no_token = _cli("list", "--url", url, cwd=elsewhere, env={"DORMANT_ADMIN_TOKEN": ""})
        assert no_token.returncode == 1 and "Traceback" not in no_token.stderr
        assert "answered 401" in no_token.stderr and "--token-file" in no_token.stderr

        answer = httpx.get(
            f"{url}/-/snapshots", headers={"Authorization": "Bearer s3cret"}, timeout=30
        )
        assert answer.status_code == 200
        data = answer.json()
        assert data["store"] == str(root)
        by_id = {e["id"]: e for e in data["entries"]}
        assert by_id[snap.id]["status"] == "ok" and by_id[snap.id]["bytes"] == 4096
        assert by_id[broken.id]["status"] == "invalid"
        assert httpx.get(f"{url}/-/snapshots", timeout=30).status_code == 401
    finally:
        d.stop()
