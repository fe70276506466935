"""Dependencies point one way: deploy -> activator -> warmpool -> snapshots; deploy (the
operator) is the top layer and nothing imports it; loadtests is a pure client."""

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
    # the top layer: nothing imports it (the CLI reaches `dormant operator` by name, lazily)
    "deploy": {"activator", "warmpool", "snapshots"},
    "loadtests": set(),
    # examples are clients too: they may use the pure client (its one launcher of `dormant up`)
    "examples": {"loadtests"},
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


def _runtime_imports(package: str) -> dict[str, set[str]]:
    """For each module of ``package``: the modules of ``package`` it imports when it is
    imported (module-level statements, also inside top-level if/try/with; not inside
    functions, not under ``if TYPE_CHECKING:``). A submodule's implicit import of its
    package's ``__init__`` is not an edge."""

    def statements(body: list[ast.stmt]) -> list[ast.stmt]:
        out: list[ast.stmt] = []
        for node in body:
            if isinstance(node, ast.If):
                test = node.test
                name = test.id if isinstance(test, ast.Name) else getattr(test, "attr", "")
                if name != "TYPE_CHECKING":
                    out += statements(node.body)
                out += statements(node.orelse)
            elif isinstance(node, ast.Try):
                for block in (node.body, node.orelse, node.finalbody):
                    out += statements(block)
                for handler in node.handlers:
                    out += statements(handler.body)
            elif isinstance(node, ast.With):
                out += statements(node.body)
            else:
                out.append(node)
        return out

    root = ROOT / package
    modules = {
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
        for p in root.rglob("*.py")
    }
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        base = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in statements(ast.parse(path.read_text(), str(path)).body):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                parent = base
                for _ in range(node.level - 1):
                    parent = parent.rpartition(".")[0]
                module = node.module or ""
                if node.level:
                    module = f"{parent}.{module}".rstrip(".")
                targets.add(module)
                targets |= {f"{module}.{a.name}" for a in node.names}  # `from . import x`
        graph[name] = {t for t in targets if t in modules and t not in (name, package)}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    cycles, done, stack = [], set(), []

    def visit(node: str) -> None:
        if node in stack:
            cycles.append([*stack[stack.index(node) :], node])
            return
        if node in done:
            return
        stack.append(node)
        for target in sorted(graph[node]):
            visit(target)
        stack.pop()
        done.add(node)

    for node in sorted(graph):
        visit(node)
    return cycles


@pytest.mark.parametrize("package", ["activator", "warmpool", "snapshots"])
def test_no_import_cycles_inside_a_package(package: str) -> None:
    cycles = _cycles(_runtime_imports(package))
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_cycle_check_can_fail() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert "activator.config.settings" in _runtime_imports("activator")["activator.workload"]


def test_settings_stand_alone() -> None:
    """Settings (their value types, and the pure Jupyter command they build) import nothing
    else from the activator, even for type checking: every module may use them, none circles
    back. From below they may use warmpool's pure vocabulary (sizes, hook calls, the
    placement check), which never imports the activator (see the tests above)."""
    for module, allowed, below in (
        ("jupyter", set(), set()),
        ("settings_types", set(), {"warmpool"}),
        ("settings", {"jupyter", "settings_types"}, {"warmpool"}),
    ):
        path = ROOT / "activator" / f"{module}.py"
        inside, outside = set(), set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level:
                names = [node.module] if node.module else [a.name for a in node.names]
                inside |= {n.split(".")[0] for n in names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                outside |= {node.module.split(".")[0]} & PROJECT
            elif isinstance(node, ast.Import):
                outside |= {a.name.split(".")[0] for a in node.names} & PROJECT
        assert outside <= below, f"activator/{module}.py imports {outside - below}"
        assert inside <= allowed, f"activator/{module}.py imports {inside - allowed}"
