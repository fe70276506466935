"""CRIU dumps of tasks that share a working directory (real CRIU, tiny socket servers).

Our instances have their own PID namespace but the host's /proc, so CRIU's parasite makes
``proc.crtools`` in the dumped root task's working directory (criu/pie/parasite.c,
``get_proc_fd``): two dumps there at once, or one a killed dump left, failed with
"Can't create a directory (-17)". Dumps of tasks in one directory now take turns (a flock on
the directory) and an empty leftover is removed first; anything else there is left alone.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from snapshots import CriuEngine, EngineDumpFailed
from snapshots.criu import PROC_MOUNTPOINT
from tests.conftest import free_port

pytestmark = pytest.mark.criu

SERVER = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen()
while True:
    c, _ = s.accept()
    c.sendall(b"ok")
    c.close()
"""


class Tree:
    """``python -c SERVER PORT`` as PID 1 of its own PID namespace (as the local runtime runs
    an instance: ``unshare --pid --fork --kill-child setsid``), in ``cwd``."""

    def __init__(self, cwd: Path) -> None:
        self.port = free_port()
        command = [sys.executable, "-c", SERVER, str(self.port)]
        self.wrapper = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--kill-child", "setsid", *command],
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while True:
            assert time.monotonic() < deadline, "the tiny server did not start"
            try:
                kids = Path(f"/proc/{self.wrapper.pid}/task/{self.wrapper.pid}/children")
                self.pid = int(kids.read_text().split()[0])
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as c:
                    assert c.recv(2) == b"ok"
                return
            except (OSError, IndexError):
                time.sleep(0.01)

    def end(self) -> None:
        if self.wrapper.poll() is None:
            self.wrapper.kill()  # --kill-child ends the tree with it
        self.wrapper.wait(10)


@pytest.fixture
def trees() -> Iterator[list[Tree]]:
    started: list[Tree] = []
    yield started
    for tree in started:
        tree.end()


def _dump(criu: CriuEngine, tree: Tree, where: Path) -> str:
    """'' when the dump succeeded, else its error."""
    try:
        criu.dump(tree.pid, where / "images", where / "work", 60)
    except EngineDumpFailed as exc:
        return str(exc)
    finally:
        tree.end()
    return ""


@pytest.mark.slow
def test_three_tasks_sharing_a_cwd_dumped_at_once_50_times(
    tmp_path: Path, criu: CriuEngine, trees: list[Tree]
) -> None:
    shared = tmp_path / "shared-cwd"
    shared.mkdir()
    failures: list[str] = []
    with ThreadPoolExecutor(3) as pool:
        for round_ in range(50):
            batch = [Tree(shared) for _ in range(3)]
            trees[:] = batch
            dirs = [tmp_path / f"r{round_}-{i}" for i in range(3)]
            results = list(pool.map(lambda a: _dump(criu, *a), zip(batch, dirs, strict=True)))
            failures += [f"round {round_}: {r}" for r in results if r]
            for d in dirs:  # keep the disk small: the images are not needed
                subprocess.run(["rm", "-rf", str(d)], check=True)
    assert failures == []
    assert not (shared / PROC_MOUNTPOINT).exists()


def test_an_empty_proc_crtools_left_by_a_killed_dump_is_removed(
    tmp_path: Path, criu: CriuEngine, trees: list[Tree]
) -> None:
    cwd = tmp_path / "cwd"
    (cwd / PROC_MOUNTPOINT).mkdir(parents=True)
    trees.append(Tree(cwd))
    assert _dump(criu, trees[0], tmp_path / "d") == ""
    assert not (cwd / PROC_MOUNTPOINT).exists()


def test_a_proc_crtools_with_content_is_left_alone(
    tmp_path: Path, criu: CriuEngine, trees: list[Tree]
) -> None:
    cwd = tmp_path / "cwd"
    (cwd / PROC_MOUNTPOINT).mkdir(parents=True)
    (cwd / PROC_MOUNTPOINT / "someones-file").write_text("keep")
    tree = Tree(cwd)
    trees.append(tree)
    with pytest.raises(EngineDumpFailed, match=f"{PROC_MOUNTPOINT} is not empty: CRIU needs"):
        criu.dump(tree.pid, tmp_path / "d" / "images", tmp_path / "d" / "work", 60)
    assert (cwd / PROC_MOUNTPOINT / "someones-file").read_text() == "keep"
    assert os.path.exists(f"/proc/{tree.pid}"), "a refused dump leaves the task running"
