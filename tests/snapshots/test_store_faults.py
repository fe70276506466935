"""Fault injection at every write of the snapshot store, on real filesystems.

Disk full (ENOSPC: a small tmpfs, by bytes or by inodes), file size limit (EFBIG:
RLIMIT_FSIZE in a child process), I/O errors (EIO: ext4 on a loop device shut down
with EXT4_IOC_SHUTDOWN), read-only (EROFS: a read-only bind mount) and immutable files
(EPERM: chattr +i). Afterwards the store must be consistent: a complete committed
snapshot or none visible; when commit raises CommitFailed, the pending images intact;
nothing that ``entries``/``list``/``latest`` crash on; retiring never raises.

Where a test needs a fault at one precise step (EIO at the k-th fsync, at the rename),
it wraps that step so the filesystem is shut down just before it runs: the error then
comes from the kernel, the wrapper only picks the moment. Each such test says so.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import snapshots.files as disk_module
import snapshots.store as store_module
from snapshots import CommitFailed, Snapshot, SnapshotError, SnapshotStore, StoreFailed
from snapshots.files import explain
from tests.conftest import ROOT

from .faultfs import Ext4, Tmpfs, immutable, read_only, require_root_mounts

IMAGES = {"images/pages-1.img": bytes(range(256)) * 600, "images/core.img": b"core" * 50}


@pytest.fixture
def mounts(tmp_path: Path) -> Iterator[list[Any]]:
    """Filesystems a test mounts; all unmounted afterwards, whatever happened."""
    require_root_mounts(tmp_path)
    opened: list[Any] = []
    yield opened
    for fs in reversed(opened):
        fs.close()


def _tmpfs(mounts: list[Any], where: Path, size: int, inodes: int | None = None) -> Tmpfs:
    fs = Tmpfs(where, size, inodes)
    mounts.append(fs)
    return fs


def _write_images(path: Path) -> None:
    for name, data in IMAGES.items():
        (path / name).parent.mkdir(exist_ok=True)
        (path / name).write_bytes(data)


def _images_intact(path: Path) -> bool:
    return all((path / name).read_bytes() == data for name, data in IMAGES.items())


def _assert_consistent(store: SnapshotStore) -> list[Snapshot]:
    """Every entry is a usable snapshot that verifies, or partial (never usable); nothing
    raises anything but a SnapshotError. Returns the usable ones."""
    entries = store.entries()
    assert {e.status for e in entries} <= {"ok", "partial"}, [
        (e.path.name, e.status, e.reason) for e in entries
    ]
    usable = store.list()
    for snap in usable:
        store.verify(snap)
    assert store.latest("m") == (usable[0] if usable else None)
    return usable


def _commit_in(
    store: SnapshotStore,
) -> tuple[Snapshot | None, StoreFailed | None, Path]:
    """begin + images + commit, as the local runtime does; returns what came out:
    the snapshot, or CommitFailed (StoreFailed when begin itself failed)."""
    pending_path = Path()
    try:
        with store.begin("m") as pending:
            pending_path = pending.path
            _write_images(pending.path)
            return store.commit(pending, engine="criu", meta={"port": 8001}), None, pending_path
    except CommitFailed as exc:
        assert exc.pending_path == pending_path
        return None, exc, pending_path
    except StoreFailed as exc:
        assert pending_path == Path(), "only begin may raise StoreFailed"
        return None, exc, pending_path


# -- disk full -------------------------------------------------------------------------


def test_disk_full_at_the_manifest_keeps_the_images_and_commits_nothing(
    tmp_path: Path, mounts: list[Any]
) -> None:
    fs = _tmpfs(mounts, tmp_path / "fs", size=512 << 10)
    store = SnapshotStore(fs.mnt / "snapshots")
    with pytest.raises(CommitFailed) as info, store.begin("m") as pending:
        _write_images(pending.path)
        filler = fs.fill()  # the dump succeeded and took the last of the space
        store.commit(pending, engine="criu")
    message = str(info.value)
    assert "writing the manifest failed: no space left on the filesystem mounted at" in message
    assert str(fs.mnt) in message and "bytes needed" in message and "free space there" in message
    assert f"the images are intact in {pending.path}" in message
    assert _images_intact(pending.path), "the only copy of the process's memory"
    assert not (pending.path / "manifest.json").exists(), "no half-written manifest left"
    assert _assert_consistent(store) == []
    assert [e.status for e in store.entries()] == ["partial"]

    filler.unlink()  # space freed: the same images commit now
    snap = store.commit(pending, engine="criu")
    assert _assert_consistent(store) == [snap]


def test_no_inode_left_for_the_manifest(tmp_path: Path, mounts: list[Any]) -> None:
    fs = _tmpfs(mounts, tmp_path / "fs", size=4 << 20, inodes=64)
    store = SnapshotStore(fs.mnt / "snapshots")
    with pytest.raises(CommitFailed, match="no inodes free") as info, store.begin("m") as pending:
        _write_images(pending.path)
        fs.use_up_inodes()
        store.commit(pending, engine="criu")
    assert "writing the manifest failed" in str(info.value)
    assert _images_intact(pending.path)
    assert _assert_consistent(store) == []
    store.discard(pending)
    assert store.entries() == []


def test_begin_on_a_full_filesystem_says_why(tmp_path: Path, mounts: list[Any]) -> None:
    fs = _tmpfs(mounts, tmp_path / "fs", size=4 << 20, inodes=64)
    store = SnapshotStore(fs.mnt / "snapshots")
    fs.use_up_inodes()
    message = "creating a snapshot directory for m failed: no space"
    with pytest.raises(StoreFailed, match=message), store.begin("m"):
        raise AssertionError("never reached")
    assert store.entries() == []


def test_file_size_limit_while_writing_the_manifest(tmp_path: Path) -> None:
    """EFBIG from a real RLIMIT_FSIZE, in a child process (the limit is per process;
    Python ignores SIGXFSZ, so the write fails instead of killing it)."""
    script = textwrap.dedent(
        f"""
        import json, resource, sys
        from pathlib import Path
        sys.path.insert(0, {str(ROOT)!r})
        from snapshots import CommitFailed, SnapshotStore
        store = SnapshotStore(Path(sys.argv[1]))
        try:
            with store.begin("m") as pending:
                (pending.path / "pages-1.img").write_bytes(b"p" * 100_000)
                resource.setrlimit(resource.RLIMIT_FSIZE, (200, 200))
                store.commit(pending, engine="criu")
        except CommitFailed as exc:
            print(json.dumps({{"error": str(exc), "pending": str(exc.pending_path)}}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "snaps")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert "writing the manifest failed: file too large" in result["error"]
    assert "RLIMIT_FSIZE" in result["error"]
    pending = Path(result["pending"])
    assert (pending / "pages-1.img").read_bytes() == b"p" * 100_000
    assert not (pending / "manifest.json").exists()
    assert _assert_consistent(SnapshotStore(tmp_path / "snaps")) == []


# -- I/O errors at each step of a commit -----------------------------------------------


def _commit_steps(tmp_path: Path) -> list[tuple[str, int]]:
    """The hookable write steps of one commit, in order: (function name, call index)."""
    calls: list[tuple[str, int]] = []
    store = SnapshotStore(tmp_path / "reference")
    with pytest.MonkeyPatch.context() as patch:
        for name in ("sync", "create", "rename", "digest_files"):
            module = store_module if name == "digest_files" else disk_module
            real = getattr(module, name)

            def record(*args: Any, _name: str = name, _real: Callable[..., Any] = real) -> Any:
                calls.append((_name, sum(1 for n, _ in calls if n == _name)))
                return _real(*args)

            patch.setattr(module, name, record)
        _commit_in(store)
    return calls


def _fail_at(real: Callable[..., Any], index: int, fault: Callable[[], None]) -> Any:
    """``real``, except that ``fault`` runs just before its ``index``-th call."""
    calls = [0]

    def hooked(*args: Any) -> Any:
        if calls[0] == index:
            fault()
        calls[0] += 1
        return real(*args)

    return hooked


def test_the_commit_steps_are_all_covered(tmp_path: Path) -> None:
    """The step list the EIO test walks: the store root's fsync when the workload's
    directory is made (begin), every file and directory fsync, the digest pass, the
    manifest's creation, its fsync, the pending directory's, the rename, the parent's."""
    steps = [name for name, _ in _commit_steps(tmp_path)]
    # root; 2 image files + images/ + the pending dir; manifest; pending dir; parent
    assert steps == ["sync"] * 5 + ["digest_files", "create"] + ["sync"] * 2 + [
        "rename",
        "sync",
    ]


@pytest.mark.parametrize("sync", [True, False], ids=["disk-fails", "crash"])
def test_io_error_at_every_commit_step(tmp_path: Path, mounts: list[Any], sync: bool) -> None:
    """For each write step of a commit, a fresh ext4 is shut down just before the step
    runs (the step is wrapped to pick the moment; the EIO is the kernel's). With
    ``disk-fails`` everything written before is flushed first; with ``crash`` it is
    not. Then the filesystem is mounted again, as a restart would find it."""
    steps = _commit_steps(tmp_path)
    outcomes = []
    for step, index in steps:
        fs = Ext4(tmp_path / f"{step}{index}")
        mounts.append(fs)
        store = SnapshotStore(fs.mnt / "snapshots")
        module = store_module if step == "digest_files" else disk_module
        hooked = _fail_at(getattr(module, step), index, lambda fs=fs: fs.shutdown(sync))

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(module, step, hooked)
            snap, failed, pending = _commit_in(store)
            # the filesystem is dead now: reading must still only raise SnapshotErrors
            with contextlib.suppress(SnapshotError):
                store.entries()
                store.latest("m")
        if failed is not None:
            assert "I/O error" in str(failed) and "check `dmesg`" in str(failed)
        fs.remount()
        usable = _assert_consistent(SnapshotStore(fs.mnt / "snapshots"))
        if sync and isinstance(failed, CommitFailed):
            assert usable == [], f"{step}#{index}: CommitFailed but a snapshot is visible"
            assert _images_intact(pending), f"{step}#{index}: images lost"
        if sync and snap is not None:
            assert [s.id for s in usable] == [snap.id], f"{step}#{index}: commit lost"
        outcomes.append((step, index, type(failed).__name__ if failed else "committed"))
        fs.close()
        mounts.remove(fs)
    # begin's fsync fails before there is anything to keep; only a failure after the
    # rename (the parent's fsync, when a dead disk cannot undo it) may still commit.
    assert [o[2] for o in outcomes[1:-1]] == ["CommitFailed"] * (len(outcomes) - 2), outcomes
    assert outcomes[0][2] == "StoreFailed", outcomes


# -- mark_bad, prune, clean_partial never raise ---------------------------------------


def _committed(store: SnapshotStore) -> Snapshot:
    snap, failed, _ = _commit_in(store)
    assert snap is not None, failed
    return snap


def test_mark_bad_on_a_full_disk_still_takes_it_out_of_use(
    tmp_path: Path, mounts: list[Any]
) -> None:
    fs = _tmpfs(mounts, tmp_path / "fs", size=512 << 10, inodes=64)
    store = SnapshotStore(fs.mnt / "snapshots")
    snap = _committed(store)
    fs.fill()
    fs.use_up_inodes()  # BAD_REASON can be neither created nor written
    bad = store.mark_bad(snap, "verification failed")
    assert bad.name == f"{snap.id}.bad"
    assert store.latest("m") is None
    [entry] = store.entries()
    assert entry.status == "bad" and entry.reason.startswith("reason not recorded")
    assert SnapshotStore(fs.mnt / "snapshots").latest("m") is None, "also after a restart"


def test_mark_bad_on_a_read_only_filesystem(
    tmp_path: Path, mounts: list[Any], caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing can change on disk: this store keeps it out of use in memory and logs."""
    store = SnapshotStore(tmp_path / "snaps")
    snap = _committed(store)
    with read_only(tmp_path / "snaps" / "m"), caplog.at_level(logging.ERROR):
        assert store.mark_bad(snap, "restore failed") == snap.path
        assert store.latest("m") is None and store.list() == []
        [entry] = store.entries()
        assert (entry.status, entry.reason) == ("bad", "restore failed")
        assert "read-only" in caplog.text and "kept out of use in memory" in caplog.text


def test_mark_bad_when_the_disk_dies(tmp_path: Path, mounts: list[Any]) -> None:
    """EIO from the kernel at the rename (the rename is wrapped to shut ext4 down first)."""
    fs = Ext4(tmp_path)
    mounts.append(fs)
    store = SnapshotStore(fs.mnt / "snapshots")
    snap = _committed(store)
    real = disk_module.rename

    def dying(src: Path, dst: Path) -> None:
        fs.shutdown()
        real(src, dst)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(disk_module, "rename", dying)
        store.mark_bad(snap, "restore failed")
    assert store.latest("m") is None
    assert [(e.status, e.reason) for e in store.entries()] == [("bad", "restore failed")]


def test_prune_with_an_undeletable_file_hides_it_and_retries(
    tmp_path: Path, mounts: list[Any], caplog: pytest.LogCaptureFixture
) -> None:
    store = SnapshotStore(tmp_path / "snaps")
    old, new = _committed(store), _committed(store)
    stuck = old.path.with_name(f".del-{old.id}") / "images" / "core.img"
    with caplog.at_level(logging.ERROR):
        with immutable(old.path / "images" / "core.img", moved_to=stuck):
            assert store.prune("m", keep=1) == []
            assert store.list() == [new], "renamed out of use before removal"
            assert [e.status for e in store.entries() if e.id == old.id] == ["partial"]
            assert stuck.exists()
        assert "Operation not permitted" in caplog.text
    assert store.prune("m", keep=1) == []
    assert not stuck.exists(), "the interrupted delete finished at the next prune"
    assert [e.id for e in store.entries()] == [new.id]


def test_prune_and_clean_partial_on_a_read_only_filesystem(
    tmp_path: Path, mounts: list[Any]
) -> None:
    store = SnapshotStore(tmp_path / "snaps")
    old, new = _committed(store), _committed(store)
    (new.path.with_name("broken") / "images").mkdir(parents=True)  # an invalid entry
    partial = tmp_path / "snaps" / "m" / ".tmp-20260101T000000-000000001-abcd"
    partial.mkdir()
    with read_only(tmp_path / "snaps" / "m"):
        assert store.prune("m", keep=1) == []
        assert store.clean_partial() == []
        assert store.list() == [new, old]
        with pytest.raises(StoreFailed, match="read-only; remount it read-write"):
            store.delete(old)
    assert store.prune("m", keep=1) == [old.id]
    assert store.clean_partial() == [partial]
    assert {(e.id, e.status) for e in store.entries()} == {(new.id, "ok"), ("broken", "bad")}


def test_clean_partial_with_an_undeletable_file(tmp_path: Path, mounts: list[Any]) -> None:
    store = SnapshotStore(tmp_path / "snaps")
    with store.begin("m") as pending:
        _write_images(pending.path)
        leftover = pending.path.with_name(pending.path.name + "-crash")
        pending.path.rename(leftover)  # what a crash mid-dump leaves
    with immutable(leftover / "images" / "core.img"):
        assert store.clean_partial() == []
    assert store.clean_partial() == [leftover]


def test_reading_a_dead_disk_raises_only_snapshot_errors(tmp_path: Path, mounts: list[Any]) -> None:
    fs = Ext4(tmp_path)
    mounts.append(fs)
    store = SnapshotStore(fs.mnt / "snapshots")
    snap = _committed(store)
    fs.shutdown()
    for read in (store.entries, store.list, lambda: store.latest("m"), lambda: store.get(snap.id)):
        with contextlib.suppress(SnapshotError):
            read()
    # the machine's failure, not the snapshot's: StoreFailed, never "corrupt" (kept)
    with pytest.raises(StoreFailed, match="I/O error"):
        store.verify(snap)
    store.prune("m", keep=0)  # these never raise; they log
    store.clean_partial()
    store.mark_bad(snap, "disk died")
    assert store.latest("m") is None


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (errno.EDQUOT, "disk quota exceeded on the filesystem mounted at"),
        (errno.EROFS, "is read-only; remount it read-write or move state_dir"),
        (errno.EACCES, "permission denied"),
        (errno.EIO, "I/O error on the filesystem mounted at"),
    ],
)
def test_every_error_says_what_to_do(tmp_path: Path, code: int, expected: str) -> None:
    message = explain(OSError(code, "x"), "writing the manifest", tmp_path, needed=10)
    assert message.startswith("writing the manifest failed") and expected in message
