"""A symlink planted where the store deletes is removed as a link; its target survives.

Each deletion path of the store (``delete``, ``prune``, the ``.bad`` cap, ``clean_partial``
at start, ``discard``) is run against a link to a directory outside the store, put where
the store is about to delete: planted before it looks, or swapped in after it looked (the
rename that takes a snapshot out of use is the moment an attacker would pick).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import snapshots.files as disk
from snapshots import Snapshot, SnapshotStore


def _write(store: SnapshotStore, workload: str = "m") -> Snapshot:
    with store.begin(workload) as pending:
        (pending.path / "images").mkdir()
        (pending.path / "images" / "pages-1.img").write_bytes(b"x" * 100)
        return store.commit(pending, engine="criu")


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A directory outside the store with contents (a subdirectory too) that must survive."""
    target = tmp_path / "victim"
    (target / "sub").mkdir(parents=True)
    (target / "precious").write_text("keep me")
    (target / "sub" / "deep").write_text("keep me too")
    return target


def _intact(victim: Path) -> bool:
    return (victim / "precious").read_text() == "keep me" and (
        victim / "sub" / "deep"
    ).read_text() == "keep me too"


@pytest.fixture
def swap_after_rename(
    monkeypatch: pytest.MonkeyPatch, victim: Path, tmp_path: Path
) -> Iterator[list[Path]]:
    """After each rename by the store, put a link to ``victim`` where the directory went
    (the directory itself is moved aside): what an attacker racing the store would do."""
    swapped: list[Path] = []
    real = disk.rename

    def rename(src: Path, dst: Path) -> None:
        real(src, dst)
        if dst.name.startswith(".del-") or dst.name.endswith(".bad"):
            os.rename(dst, tmp_path / f"moved-aside-{len(swapped)}")
            dst.symlink_to(victim, target_is_directory=True)
            swapped.append(dst)

    monkeypatch.setattr(disk, "rename", rename)
    yield swapped


def test_rmtree_removes_a_link_never_its_target(tmp_path: Path, victim: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(victim, target_is_directory=True)
    assert disk.rmtree(link) == []
    assert not disk.lexists(link) and _intact(victim)


def test_rmtree_does_not_follow_a_link_inside_the_tree(tmp_path: Path, victim: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "a").mkdir(parents=True)
    (tree / "a" / "link").symlink_to(victim, target_is_directory=True)
    (tree / "file").write_text("x")
    assert disk.rmtree(tree) == []
    assert not disk.lexists(tree) and _intact(victim)


def test_clean_partial_removes_a_planted_tmp_link_only(tmp_path: Path, victim: Path) -> None:
    store = SnapshotStore(tmp_path / "snaps")
    _write(store)
    for name in (".tmp-planted", ".del-planted"):
        (tmp_path / "snaps" / "m" / name).symlink_to(victim, target_is_directory=True)
    removed = store.clean_partial()
    assert sorted(p.name for p in removed) == [".del-planted", ".tmp-planted"]
    assert _intact(victim)
    assert store.latest("m") is not None


def test_discard_of_a_pending_dir_swapped_for_a_link(tmp_path: Path, victim: Path) -> None:
    store = SnapshotStore(tmp_path / "snaps")
    with store.begin("m") as pending:
        pending.path.rmdir()
        pending.path.symlink_to(victim, target_is_directory=True)
    assert not disk.lexists(pending.path)
    assert _intact(victim)


def test_delete_when_a_link_replaces_the_snapshot(
    tmp_path: Path, victim: Path, swap_after_rename: list[Path]
) -> None:
    store = SnapshotStore(tmp_path / "snaps")
    snap = _write(store)
    store.delete(snap)
    assert swap_after_rename and not disk.lexists(swap_after_rename[0])
    assert _intact(victim)


def test_delete_of_an_entry_that_became_a_link(tmp_path: Path, victim: Path) -> None:
    store = SnapshotStore(tmp_path / "snaps")
    snap = _write(store)
    (entry,) = store.entries("m")
    os.rename(snap.path, tmp_path / "elsewhere")
    snap.path.symlink_to(victim, target_is_directory=True)
    store.delete(entry)
    assert not disk.lexists(snap.path) and _intact(victim)


def test_prune_when_a_link_replaces_the_snapshot(
    tmp_path: Path, victim: Path, swap_after_rename: list[Path]
) -> None:
    store = SnapshotStore(tmp_path / "snaps")
    _write(store)
    newest = _write(store)
    assert len(store.prune("m", 1)) == 1
    assert len(swap_after_rename) == 1 and not disk.lexists(swap_after_rename[0])
    assert _intact(victim)
    assert store.latest("m") == newest


def test_bad_cap_when_a_link_replaces_an_old_bad_dir(
    tmp_path: Path, victim: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SnapshotStore(tmp_path / "snaps", keep_bad=1)
    old = store.mark_bad(_write(store), "first")
    real = disk.rename
    swapped: list[Path] = []

    def rename(src: Path, dst: Path) -> None:  # the cap's rename of the old .bad
        real(src, dst)
        if dst.name.startswith(".del-"):
            os.rename(dst, tmp_path / "moved-aside")
            dst.symlink_to(victim, target_is_directory=True)
            swapped.append(dst)

    monkeypatch.setattr(disk, "rename", rename)
    store.mark_bad(_write(store), "second")
    assert swapped and swapped[0].name == ".del-" + old.name
    assert not disk.lexists(swapped[0]) and _intact(victim)


def test_mark_bad_replacing_an_old_bad_that_is_a_link(tmp_path: Path, victim: Path) -> None:
    store = SnapshotStore(tmp_path / "snaps")
    snap = _write(store)
    bad = snap.path.with_name(snap.path.name + ".bad")
    bad.symlink_to(victim, target_is_directory=True)
    assert store.mark_bad(snap, "why") == bad
    assert not bad.is_symlink() and (bad / "BAD_REASON").read_text() == "why\n"
    assert _intact(victim)
