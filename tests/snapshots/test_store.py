"""The snapshot store on real files: atomic commit, verification, permissions, retention."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from snapshots import Manifest, SnapshotCorrupt, SnapshotStore


def _write(store: SnapshotStore, workload: str = "m", payload: bytes = b"x" * 5000) -> object:
    with store.begin(workload) as pending:
        (pending.path / "images").mkdir()
        (pending.path / "images" / "pages-1.img").write_bytes(payload)
        (pending.path / "images" / "core.img").write_bytes(b"core")
        return store.commit(pending, engine="criu", engine_version="4.2.1", meta={"port": 1234})


def test_commit_writes_manifest_with_digests_and_private_modes(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "snaps")
    snap = _write(store)
    manifest = json.loads((snap.path / "manifest.json").read_text())
    assert manifest["workload"] == "m" and manifest["engine"] == "criu"
    assert manifest["files"]["images/pages-1.img"]["size"] == 5000
    assert len(manifest["files"]["images/core.img"]["sha256"]) == 64
    assert manifest["total_bytes"] == 5004
    assert stat.S_IMODE((tmp_path / "snaps").stat().st_mode) == 0o700
    assert stat.S_IMODE(snap.path.stat().st_mode) == 0o700
    for f in snap.path.rglob("*"):
        assert stat.S_IMODE(f.stat().st_mode) == (0o700 if f.is_dir() else 0o600), f
    store.verify(snap)
    assert store.latest("m") == snap


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda p: p.write_bytes(b"y" + p.read_bytes()[1:]), "sha256 mismatch"),
        (lambda p: p.write_bytes(p.read_bytes()[:-1]), "size 4999 != 5000"),
        (lambda p: p.unlink(), "missing"),
        (lambda p: (p.parent / "extra.img").write_bytes(b"!"), "not in manifest"),
    ],
)
def test_verify_finds_damage(tmp_path: Path, damage, problem: str) -> None:  # type: ignore[no-untyped-def]
    store = SnapshotStore(tmp_path)
    snap = _write(store)
    damage(snap.path / "images" / "pages-1.img")
    with pytest.raises(SnapshotCorrupt) as info:
        store.verify(snap)
    assert problem in str(info.value)


def test_uncommitted_snapshot_is_never_visible(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    with pytest.raises(RuntimeError), store.begin("m") as pending:
        (pending.path / "half.img").write_bytes(b"half")
        assert store.list("m") == []
        raise RuntimeError("crash during dump")
    assert store.list("m") == []
    assert list((tmp_path / "m").iterdir()) == []


def test_clean_partial_removes_what_a_crash_left(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    snap = _write(store)
    stale = tmp_path / "m" / ".tmp-20260101T000000-1-abcd"
    stale.mkdir()
    (stale / "pages.img").write_bytes(b"partial")
    assert store.clean_partial() == [stale]
    assert not stale.exists()
    assert store.list("m") == [snap]


def test_mark_bad_takes_it_out_of_use_and_keeps_reason(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    snap = _write(store)
    bad = store.mark_bad(snap, "digest mismatch")
    assert store.latest("m") is None
    assert "digest mismatch" in (bad / "BAD_REASON").read_text()


def test_prune_keeps_newest(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    snaps = [_write(store) for _ in range(3)]
    deleted = store.prune("m", keep=1)
    assert deleted == [snaps[1].id, snaps[0].id]
    assert store.list("m") == [snaps[2]]


def test_manifest_round_trip_and_unknown_format() -> None:
    text = Manifest(id="a", workload="w", engine="criu", created=1.0, files={}).to_json()
    assert Manifest.from_json(text).id == "a"
    with pytest.raises(ValueError, match="unsupported manifest format"):
        Manifest.from_json(text.replace('"format": 1', '"format": 99'))


def test_rejects_unsafe_workload_names(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    with pytest.raises(ValueError), store.begin("../escape"):
        pass


def test_chunked_verification_finds_a_flip_in_any_chunk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import snapshots.manifest as manifest

    monkeypatch.setattr(manifest, "CHUNK_BYTES", 1024)
    store = SnapshotStore(tmp_path)
    snap = _write(store, payload=bytes(range(256)) * 20)  # 5120 bytes: 5 chunks
    assert len(snap.manifest.files["images/pages-1.img"].chunks) == 5
    store.verify(snap)
    pages = snap.path / "images" / "pages-1.img"
    data = bytearray(pages.read_bytes())
    data[3 * 1024 + 7] ^= 0x01
    pages.write_bytes(bytes(data))
    with pytest.raises(SnapshotCorrupt, match=r"pages-1\.img: sha256 mismatch"):
        store.verify(snap)
