"""The snapshot store on real files: atomic commit, verification, permissions, retention."""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import pytest

from snapshots import (
    CommitFailed,
    Manifest,
    ManifestInvalid,
    Snapshot,
    SnapshotCorrupt,
    SnapshotNotFound,
    SnapshotStore,
)


def _write(store: SnapshotStore, workload: str = "m", payload: bytes = b"x" * 5000) -> Snapshot:
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
    assert manifest["format"] == 2 and manifest["digest"] == "blake3"
    assert [len(c) for c in manifest["files"]["images/core.img"]["chunks"]] == [64]
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
        (lambda p: p.write_bytes(b"y" + p.read_bytes()[1:]), "blake3 mismatch"),
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
    with pytest.raises(ManifestInvalid, match="unsupported manifest format 99"):
        Manifest.from_json(text.replace('"format": 2', '"format": 99'))


def test_rejects_unsafe_workload_names(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    with pytest.raises(ValueError), store.begin("../escape"):
        pass


def test_chunked_verification_finds_a_flip_in_any_chunk(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path, chunk_bytes=1024)
    snap = _write(store, payload=bytes(range(256)) * 20)  # 5120 bytes: 5 chunks
    assert len(snap.manifest.files["images/pages-1.img"].chunks) == 5
    store.verify(snap)
    pages = snap.path / "images" / "pages-1.img"
    data = bytearray(pages.read_bytes())
    data[3 * 1024 + 7] ^= 0x01
    pages.write_bytes(bytes(data))
    with pytest.raises(SnapshotCorrupt, match=r"pages-1\.img: blake3 mismatch"):
        store.verify(snap)


def test_format_1_sha256_manifests_are_still_read_and_verified(tmp_path: Path) -> None:
    """Snapshots committed before format 2 (sha256, whole-file digests, optional 32 MiB
    chunks) stay usable, and damage to them is still found."""
    import hashlib

    wdir = tmp_path / "m" / "20250101T000000-000000001-abcd"
    (wdir / "images").mkdir(parents=True)
    pages, core = b"p" * 70_000, b"core"
    (wdir / "images" / "pages-1.img").write_bytes(pages)
    (wdir / "images" / "core.img").write_bytes(core)
    (wdir / "manifest.json").write_text(
        json.dumps(
            {
                "format": 1,
                "id": wdir.name,
                "workload": "m",
                "engine": "criu",
                "engine_version": "4.2.1",
                "created": 1.0,
                "checkpoint_seconds": 0.5,
                "meta": {"port": 8001, "stdio_pipe": "pipe:[123]", "files": {"/w": 10}},
                "files": {
                    "images/pages-1.img": {
                        "size": len(pages),
                        "sha256": hashlib.sha256(pages).hexdigest(),
                        "chunks": [hashlib.sha256(pages).hexdigest()],
                    },
                    "images/core.img": {"size": 4, "sha256": hashlib.sha256(core).hexdigest()},
                },
                "total_bytes": len(pages) + 4,
            }
        )
    )
    store = SnapshotStore(tmp_path)
    snap = store.latest("m")
    assert snap is not None and snap.manifest.digest == "sha256" and snap.manifest.format == 1
    store.verify(snap)
    (wdir / "images" / "core.img").write_bytes(b"cORE")
    with pytest.raises(SnapshotCorrupt, match=r"core\.img: sha256 mismatch"):
        store.verify(snap)


def test_entries_show_every_directory_with_its_status(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    good = _write(store)
    doomed = _write(store)
    store.mark_bad(doomed, "restore failed: criu exit 1")
    broken = _write(store)
    (broken.path / "manifest.json").unlink()
    partial = tmp_path / "m" / ".tmp-20990101T000000-000000001-abcd"
    partial.mkdir()

    by_id = {e.id: e for e in store.entries()}
    assert by_id[good.id].status == "ok" and by_id[good.id].bytes == 5004
    assert by_id[doomed.id].status == "bad"
    assert by_id[doomed.id].reason == "restore failed: criu exit 1"
    assert by_id[broken.id].status == "invalid" and "no manifest" in by_id[broken.id].reason
    assert by_id[partial.name.removeprefix(".tmp-")].status == "partial"
    assert store.list() == [good] and store.latest("m") == good
    assert store.entries("../etc") == [] and store.latest("no-such") is None
    assert store.entry(f"{doomed.id}.bad").status == "bad"
    with pytest.raises(SnapshotNotFound, match=r"not usable \(bad: restore failed"):
        store.get(doomed.id)
    with pytest.raises(SnapshotNotFound, match=r"not usable \(invalid: no manifest"):
        store.get(broken.id)


def test_bad_directories_are_bounded(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path, keep_bad=2)
    snaps = [_write(store) for _ in range(4)]
    for i, snap in enumerate(snaps):
        store.mark_bad(snap, f"reason {i}")
    bad = [e for e in store.entries("m") if e.status == "bad"]
    assert sorted(e.reason for e in bad) == ["reason 2", "reason 3"], "the newest two are kept"
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == sorted(
        f"{s.id}.bad" for s in snaps[2:]
    )


def test_prune_retires_invalid_and_finishes_interrupted_deletes(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path, keep_bad=2)
    old, new = _write(store), _write(store)
    invalid = _write(store)
    (invalid.path / "manifest.json").write_text("{not json")
    leftover = tmp_path / "m" / f".del-{old.id}x"
    (leftover / "images").mkdir(parents=True)
    assert store.prune("m", keep=1) == [old.id]
    statuses = {e.id: (e.status, e.reason) for e in store.entries("m")}
    assert statuses == {
        new.id: ("ok", ""),
        invalid.id: ("bad", statuses[invalid.id][1]),
    }
    assert "not JSON" in statuses[invalid.id][1]
    assert not leftover.exists()


def test_delete_takes_the_snapshot_out_of_use_first(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    snap = _write(store)
    store.delete(snap)
    assert store.entries() == [] and not snap.path.exists()
    store.delete(snap)  # already gone: nothing to do


def test_verify_refuses_links_and_reports_instead_of_raising(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    snap = _write(store)
    pages = snap.path / "images" / "pages-1.img"
    target = tmp_path / "elsewhere.img"
    target.write_bytes(pages.read_bytes())
    pages.unlink()
    pages.symlink_to(target)
    with pytest.raises(SnapshotCorrupt, match=r"pages-1\.img: not a regular file"):
        store.verify(snap)
    shutil.rmtree(snap.path)
    with pytest.raises(SnapshotCorrupt, match="missing"):
        store.verify(snap)


def test_begin_removes_the_directory_unless_commit_failed_for_it(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    with store.begin("m") as pending:
        (pending.path / "pages.img").write_bytes(b"p")
    assert not pending.path.exists(), "left without committing: removed"
    with pytest.raises(CommitFailed), store.begin("m") as pending:
        (pending.path / "pages.img").write_bytes(b"p")
        raise CommitFailed("simulated by the caller", pending.path)
    assert (pending.path / "pages.img").read_bytes() == b"p", "kept for a restore"
    assert [e.status for e in store.entries("m")] == ["partial"]
    store.discard(pending)
    assert not pending.path.exists()
    store.discard(pending)  # idempotent, never raises


def test_verify_during_returns_the_work_when_the_snapshot_is_intact(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path, chunk_bytes=1024)
    snap = _write(store, payload=bytes(range(256)) * 40)
    undone: list[str] = []
    read = store.verify_during(
        snap, lambda: (snap.path / "images" / "core.img").read_bytes(), lambda r: undone.append(r)
    )
    assert read == b"core" and undone == []


def test_verify_during_undoes_the_work_when_a_digest_differs(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path, chunk_bytes=1024)
    snap = _write(store, payload=bytes(range(256)) * 40)
    pages = snap.path / "images" / "pages-1.img"
    data = bytearray(pages.read_bytes())
    data[5000] ^= 0x80
    pages.write_bytes(bytes(data))
    undone: list[str] = []
    with pytest.raises(SnapshotCorrupt, match="blake3 mismatch"):
        store.verify_during(snap, lambda: "restored tree", undone.append)
    assert undone == ["restored tree"], "what the work made is ended before anything uses it"

    def failing() -> str:
        raise RuntimeError("criu restore failed")

    with pytest.raises(SnapshotCorrupt) as info:
        store.verify_during(snap, failing, undone.append)
    assert isinstance(info.value.__cause__, RuntimeError), "the work's failure is chained"
    assert undone == ["restored tree"], "nothing to undo when the work failed"


def test_verify_during_passes_the_works_failure_on_an_intact_snapshot(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    snap = _write(store)

    def failing() -> str:
        raise RuntimeError("criu restore failed")

    with pytest.raises(RuntimeError, match="criu restore failed"):
        store.verify_during(snap, failing, lambda _: None)


def test_mark_suspect_sets_it_aside_kept_with_its_reason(tmp_path: Path) -> None:
    """A suspect snapshot (its restored process kept dying) is kept, distinct from bad,
    listed with the reason, and never restored again."""
    store = SnapshotStore(tmp_path / "snaps")
    snap = _write(store)
    aside = store.mark_suspect(snap, "restored process died 0.4s after its restore, twice")
    assert aside.name == f"{snap.id}.suspect" and (aside / "images" / "core.img").exists()
    assert store.latest("m") is None and store.list() == []
    entry = store.entry(f"{snap.id}.suspect")
    assert (entry.id, entry.status) == (snap.id, "suspect")
    assert entry.reason == "restored process died 0.4s after its restore, twice"
    assert entry.manifest is not None and entry.to_dict()["status"] == "suspect"
    with pytest.raises(SnapshotNotFound, match="suspect"):
        store.get(snap.id)
    store.prune("m", keep=1)  # retention leaves it where it is
    assert store.entry(snap.id).status == "suspect"
