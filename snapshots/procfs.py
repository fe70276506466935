"""What /proc says about a process tree that is about to be checkpointed."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["changed_files", "mapped_files", "process_tree", "stdio_pipe_inode"]

# Mapped files CRIU never checks or that change size by design.
_SKIP_PREFIXES = ("/proc/", "/sys/", "/dev/", "/memfd:")


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (breadth first), from /proc/PID/task/*/children."""
    tree, queue = [], [pid]
    while queue:
        current = queue.pop(0)
        tree.append(current)
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                children = Path(f"/proc/{current}/task/{tid}/children").read_text().split()
            except OSError:
                continue
            queue.extend(int(c) for c in children)
    return tree


def mapped_files(pids: list[int]) -> dict[str, int]:
    """Regular files the tree has mapped or open, with their current sizes.

    CRIU re-opens these on restore and refuses when a size differs; recording
    them lets a restore fail fast, with a clear message, before CRIU runs.
    """
    paths: set[str] = set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/maps") as f:
                for line in f:
                    parts = line.split(maxsplit=5)
                    if len(parts) == 6 and parts[5].startswith("/"):
                        paths.add(parts[5].rstrip("\n"))
        except OSError:
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("/"):
                paths.add(target)
    sizes = {}
    for path in sorted(paths):
        if path.endswith(" (deleted)") or path.startswith(_SKIP_PREFIXES):
            continue
        try:
            st = os.stat(path)
        except OSError:
            continue
        if os.path.isfile(path):
            sizes[path] = st.st_size
    return sizes


def changed_files(recorded: dict[str, int]) -> list[str]:
    """Problems with files recorded by ``mapped_files``: gone, or a different size. An
    error that says nothing about the file (EACCES, ENOMEM, ...) is raised as OSError:
    the machine refused to look, the snapshot may be fine."""
    problems = []
    for path, size in sorted(recorded.items()):
        try:
            now = os.stat(path).st_size
        except (FileNotFoundError, NotADirectoryError):
            problems.append(f"{path}: no longer exists")
            continue
        if now != size:
            problems.append(f"{path}: size is {now}, was {size} at checkpoint")
    return problems


def stdio_pipe_inode(pid: int) -> str | None:
    """'pipe:[N]' when the process's stdout is a pipe, else None."""
    try:
        target = os.readlink(f"/proc/{pid}/fd/1")
    except OSError:
        return None
    return target if target.startswith("pipe:[") else None
