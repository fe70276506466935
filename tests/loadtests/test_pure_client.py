"""The load tests are a pure client: nothing in loadtests/ imports the project's packages."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

PROJECT = {"activator", "warmpool", "snapshots", "deploy", "examples", "tests"}


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_loadtests_imports_nothing_from_the_project() -> None:
    files = sorted((ROOT / "loadtests").rglob("*.py"))
    assert (ROOT / "loadtests" / "locustfile.py") in files
    bad = sorted(
        f"{path.relative_to(ROOT)} imports {name}"
        for path in files
        for name in _imported_modules(path)
        if name.split(".")[0] in PROJECT
    )
    assert not bad, "loadtests must stay a pure client:\n" + "\n".join(bad)


def test_the_check_sees_imports() -> None:
    assert "loadtests.openai_stream" in _imported_modules(ROOT / "loadtests" / "locustfile.py")
