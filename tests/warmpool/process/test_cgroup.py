"""The parent cgroup of a state directory (``dormant-DIGEST``) goes with its last instance
group, at start once the leftovers are ended, and at shutdown: none stays behind for every
state directory ever used. Real cgroup v2 (these machines have it writable, as root)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from warmpool.process.cgroup import CgroupTree, procs, remove
from warmpool.process.instance import join_cgroup


@pytest.fixture
def tree(tmp_path: Path) -> CgroupTree:
    made = CgroupTree(tmp_path)
    if not made.available():
        pytest.fail(f"cgroup v2 is expected on these machines: {made.why_not}")
    return made


def test_the_parent_goes_with_its_last_group_and_comes_back(tree: CgroupTree) -> None:
    parent = tree.parent
    assert parent is not None and parent.is_dir()
    a, b = tree.create("a"), tree.create("b")
    assert a is not None and b is not None
    assert remove(a) and parent.is_dir()  # b is still there
    assert remove(b) and not parent.exists()
    again = tree.create("a")  # made again for the next instance
    assert again is not None and again.parent == parent and again.is_dir()
    tree.close()
    assert again.is_dir(), "close() must leave a parent that still has a group"
    assert remove(again) and not parent.exists()
    tree.close()  # nothing left: no error


def test_close_removes_an_unused_parent(tree: CgroupTree) -> None:
    assert tree.parent is not None and tree.parent.is_dir()
    tree.close()
    assert not tree.parent.exists()


def test_start_up_cleanup_ends_leftovers_and_removes_the_parent(
    tmp_path: Path, tree: CgroupTree
) -> None:
    group = tree.create("left")
    assert group is not None
    sleeper = subprocess.Popen(["sleep", "60"], preexec_fn=lambda: join_cgroup(group))
    try:
        assert procs(group) == [sleeper.pid]
        successor = CgroupTree(tmp_path)  # a restarted Dormant on the same state dir
        assert successor.clean() == [group.name]
        assert sleeper.wait(10) == -9
        assert successor.parent is not None and not successor.parent.exists()
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait(10)
