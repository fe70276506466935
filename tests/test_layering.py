"""The architecture as a test (docs/architecture.md).

Four floors, imports pointing down: deploy (the operator) → activator → warmpool →
snapshots. deploy reaches the activator only through its config contract
(``activator.config``) and warmpool only through its Kubernetes room (``warmpool.kube``).
loadtests is a pure client; examples may use it. Foreign clients each have one room:
``kubernetes`` under ``warmpool/kube/``, ``kopf`` in the operator, ``aiohttp`` in the proxy.
The pod's supervisor (``activator/supervisor/``) takes from the activator only the edge, the
errors and the config. No module imports another that imports it back.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = {"activator", "warmpool", "snapshots", "deploy", "loadtests", "examples"}
PRODUCT = ["activator", "warmpool", "snapshots", "deploy", "loadtests", "examples"]
ALLOWED = {
    "snapshots": set(),
    "warmpool": {"snapshots"},
    "activator": {"warmpool", "snapshots"},
    # the top layer: nothing imports it (the CLI reaches `dormant operator` by name, lazily)
    "deploy": {"activator", "warmpool"},
    "loadtests": set(),
    # examples are clients too: they may use the pure client (its one launcher of `dormant up`)
    "examples": {"loadtests"},
}
ROOMS = {
    # a foreign client -> the only places that may import it
    "kubernetes": ("warmpool/kube/",),
    "kopf": ("deploy/operator.py",),
    "aiohttp": ("activator/proxy.py",),
}
DEPLOY_MAY_USE = ("activator.config", "warmpool.kube")
SUPERVISOR_MAY_USE = (
    "activator.edge",
    "activator.errors",
    "activator.config",
    "activator.supervisor",
)


def _modules(package: str) -> dict[str, Path]:
    return {
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
        for p in (ROOT / package).rglob("*.py")
    }


def _absolute(path: Path, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` in ``path`` names."""
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    if node.level:
        parent = module.rpartition(".")[0]
        for _ in range(node.level - 1):
            parent = parent.rpartition(".")[0]
        return f"{parent}.{node.module or ''}".rstrip(".")
    return node.module or ""


def _imported(path: Path) -> set[str]:
    """Every module ``path`` names in an import statement, anywhere in it."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            found.add(_absolute(path, node))
    return found


def _imports(package: str) -> set[tuple[str, str]]:
    return {
        (str(path.relative_to(ROOT)), name)
        for path in _modules(package).values()
        for name in _imported(path)
    }


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_point_one_way(package: str) -> None:
    bad = sorted(
        f"{where} imports {name}"
        for where, name in _imports(package)
        if (top := name.split(".")[0]) in PROJECT and top != package and top not in ALLOWED[package]
    )
    assert not bad, "layering violated:\n" + "\n".join(bad)


def test_deploy_uses_only_the_config_contract_and_the_kube_room() -> None:
    bad = sorted(
        f"{where} imports {name}"
        for where, name in _imports("deploy")
        if name.split(".")[0] in {"activator", "warmpool"}
        and not any(name == p or name.startswith(p + ".") for p in DEPLOY_MAY_USE)
    )
    assert not bad, "deploy reaches past its contract:\n" + "\n".join(bad)


@pytest.mark.parametrize("client", sorted(ROOMS))
def test_each_foreign_client_has_one_room(client: str) -> None:
    bad = sorted(
        where
        for package in PRODUCT
        for where, name in _imports(package)
        if name.split(".")[0] == client and not where.startswith(ROOMS[client])
    )
    assert not bad, f"{client} imported outside {ROOMS[client]}:\n" + "\n".join(bad)


def test_the_supervisor_takes_only_edge_errors_and_config_from_the_activator() -> None:
    bad = sorted(
        f"{where} imports {name}"
        for where, name in _imports("activator")
        if where.startswith("activator/supervisor/")
        and name.split(".")[0] == "activator"
        and not any(name == p or name.startswith(p + ".") for p in SUPERVISOR_MAY_USE)
    )
    assert not bad, "the supervisor reaches into the activator:\n" + "\n".join(bad)


def test_the_checks_see_imports() -> None:
    """The rules above can fail: they see what the code imports."""
    assert ("activator/workload.py", "warmpool.runtime") in _imports("activator") or any(
        where == "activator/workload.py" and name.startswith("warmpool")
        for where, name in _imports("activator")
    )
    assert any(name == "kopf" for _, name in _imports("deploy"))
    assert any(name == "aiohttp" for _, name in _imports("activator"))
    assert any(w.startswith("activator/supervisor/") for w, _ in _imports("activator"))


# -- no import cycles anywhere ---------------------------------------------------------------


def _runtime_imports() -> dict[str, set[str]]:
    """For each module of the product: the product modules it imports when it is imported
    (module-level statements, also inside top-level if/try/with; not inside functions, not
    under ``if TYPE_CHECKING:``). A submodule's implicit import of its package's
    ``__init__`` is not an edge."""

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

    modules: dict[str, Path] = {}
    for package in PRODUCT:
        modules |= _modules(package)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in statements(ast.parse(path.read_text(), str(path)).body):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                module = _absolute(path, node)
                targets.add(module)
                targets |= {f"{module}.{a.name}" for a in node.names}  # `from pkg import mod`
        package = name.split(".")[0]
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


def test_no_import_cycles_in_the_product() -> None:
    cycles = _cycles(_runtime_imports())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_cycle_check_can_fail() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    graph = _runtime_imports()
    assert "activator.config.settings" in graph["activator.workload"]
    assert "loadtests.pool_parts" in graph["loadtests.pool_bench"]


# -- what stays light: a subprocess imports one module and lists what came with it ------------

HEAVY = ("fastapi", "aiohttp", "activator.app", "activator.proxy")


@pytest.mark.parametrize(
    "module",
    ["deploy.plan", "activator.supervisor.lifecycle", "activator.config.policy", "activator"],
)
def test_the_small_programs_never_load_the_web_stack(module: str) -> None:
    """As Knative's nodeps test: the operator's pure plan, the pod supervisor's lifecycle and
    the config contract never load the proxy's web stack, so an aiohttp or FastAPI bump cannot
    break the operator or PID 1 of a model pod."""
    code = (
        f"import json, sys; import {module}; "
        f"print(json.dumps([m for m in {list(HEAVY)!r} if m in sys.modules]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [], f"importing {module} loaded {done.stdout.strip()}"


def test_the_light_check_can_fail() -> None:
    code = "import json, sys; import activator.app; print(json.dumps('fastapi' in sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert json.loads(done.stdout) is True, done.stderr


# -- the config stands alone -------------------------------------------------------------------


def test_config_stands_alone() -> None:
    """The config package (the settings, their value types, the policy contract, the pure
    Jupyter command) imports nothing else from the activator, even for type checking: every
    module may use it, and deploy uses it as the activator's one contract. From below it may
    use warmpool's pure vocabulary (sizes, hook calls, the placement check, the CRD's
    identity), which never imports the activator (see above)."""
    below = ("warmpool.units", "warmpool.suspend", "warmpool.placement", "warmpool.kube.resource")
    for path in (ROOT / "activator" / "config").glob("*.py"):
        for name in _imported(path):
            top = name.split(".")[0]
            if top == "activator":
                assert name.startswith("activator.config"), f"{path.name} imports {name}"
            elif top in PROJECT:
                assert name in below, f"activator/config/{path.name} imports {name}"


# -- the composition root only composes ----------------------------------------------------------


def test_the_composition_root_has_no_long_functions() -> None:
    path = ROOT / "activator" / "app.py"
    long = [
        f"{node.name}: {node.end_lineno - node.lineno + 1} lines"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > 60
    ]
    assert not long, f"activator/app.py should only compose: {long}"
