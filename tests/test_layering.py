"""Dependencies point one way: activator -> warmpool -> snapshots; loadtests is a pure client."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = {"activator", "warmpool", "snapshots", "deploy", "loadtests", "examples"}
ALLOWED = {
    "snapshots": set(),
    "warmpool": {"snapshots"},
    "activator": {"warmpool", "snapshots"},
    "loadtests": set(),
    "examples": set(),
}


def _imports(package: str) -> set[tuple[str, str]]:
    found = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            found |= {(str(path.relative_to(ROOT)), n.split(".")[0]) for n in names}
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_point_one_way(package: str) -> None:
    bad = sorted(
        f"{where} imports {top}"
        for where, top in _imports(package)
        if top in PROJECT and top != package and top not in ALLOWED[package]
    )
    assert not bad, "layering violated:\n" + "\n".join(bad)


def test_the_check_sees_imports() -> None:
    assert ("activator/workload.py", "warmpool") in _imports("activator")
