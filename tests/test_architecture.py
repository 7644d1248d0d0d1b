"""The package's shape: no import cycle, a light attack library, short functions in the orchestration layers."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "robustvae"
MAX_FUNCTION_LINES = 60
SHORT_FUNCTION_PACKAGES = ("experiments", "attacks", "training", "cli")


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.Module, modname: str, is_package: bool, lazy: bool) -> set[str]:
    """robustvae modules the module imports: at module level, and with ``lazy`` inside functions too.

    TYPE_CHECKING blocks are never executed and are left out.
    """
    found: set[str] = set()
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        if lazy and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.With, ast.For)):
            todo += node.body
        elif isinstance(node, ast.If):
            if not _is_type_checking(node):
                todo += node.body + node.orelse
        elif isinstance(node, ast.Try):
            todo += node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body]
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = modname if is_package else modname.rsplit(".", 1)[0]
                for _ in range(node.level - 1):
                    pkg = pkg.rsplit(".", 1)[0]
                base = f"{pkg}.{base}" if base else pkg
            found |= {f"{base}.{a.name}" for a in node.names}  # the module named, or else the package (below)
    return {m for m in found if m == "robustvae" or m.startswith("robustvae.")}


def import_graph(lazy: bool = False) -> dict[str, set[str]]:
    """Module -> the robustvae modules it imports at module level (with ``lazy``, in function bodies too).

    A package importing its own submodules, and a submodule running its parent package
    first, is how packages work, not a cycle: only the modules named are edges.
    """
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        deps = set()
        for m in _imports(ast.parse(path.read_text()), name, path.name == "__init__.py", lazy):
            while m not in mods and "." in m:  # `from pkg import name` where name is not a module
                m = m.rsplit(".", 1)[0]
            deps.add(m)
        graph[name] = deps - {name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("lazy", [False, True], ids=["module-level", "with-function-level"])
def test_no_import_cycle_in_the_package(lazy):
    """Not even through imports inside functions (the CLI and the demo once imported each other that way)."""
    graph = import_graph(lazy)
    assert "robustvae.experiments.attack" in graph and "robustvae.attacks" in graph["robustvae.experiments.attack"]
    cli = {m: deps for m, deps in graph.items() if m == "robustvae.cli" or m.startswith("robustvae.cli.")}
    # the CLI imports the API inside its commands (a fast --help and fast errors)
    assert any("robustvae.api" in deps for deps in cli.values()) == lazy
    assert _cycles(graph) == []


def _reaches(graph: dict[str, set[str]], prefix: str) -> dict[str, set[str]]:
    """Per module under ``prefix``: the robustvae modules it imports (at any level)."""
    return {m: deps for m, deps in graph.items() if m == prefix or m.startswith(prefix + ".")}


def test_layers_import_only_downwards():
    """The CLI and the demo call the API (never the experiments directly); experiments write records and never import
    the report; the report reads records and run files and never imports the attacks that made them."""
    graph = import_graph(True)
    bad = [
        f"{m} -> {d}"
        for top in ("robustvae.cli", "robustvae.demo")
        for m, deps in _reaches(graph, top).items()
        for d in deps
        if d.startswith("robustvae.experiments")
    ]
    bad += [
        f"{m} -> {d}"
        for m, deps in _reaches(graph, "robustvae.experiments").items()
        for d in deps
        if d.startswith("robustvae.reporting")
    ]
    bad += [
        f"{m} -> {d}"
        for m, deps in _reaches(graph, "robustvae.reporting").items()
        for d in deps
        if d.startswith("robustvae.attacks")
    ]
    assert bad == []


def test_the_attack_library_imports_no_data_io_or_orchestration():
    """Importing robustvae.attacks pulls in neither pandas, the data loaders, checkpoint I/O nor robustvae's
    distributed helpers (torch itself imports torch.distributed, so that one is not robustvae's to avoid)."""
    code = (
        "import sys, robustvae.attacks; "
        "print(sorted(m for m in ('pandas', 'robustvae.data', 'robustvae.zoo', 'robustvae.distributed', "
        "'robustvae.experiments', 'robustvae.reporting', 'robustvae.training') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PACKAGE.parent)
    assert out.stdout.strip() == "[]"


def test_importing_the_package_is_light():
    code = "import sys, robustvae; print('torch' in sys.modules, 'pandas' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PACKAGE.parent)
    assert out.stdout.split() == ["False", "False"]


@pytest.mark.parametrize("package", SHORT_FUNCTION_PACKAGES)
def test_functions_of_the_orchestration_layers_are_short(package):
    """No function of experiments/, attacks/, training/ or cli/ runs over 60 lines (typer commands: their body)."""
    long = []
    for path in (PACKAGE / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = node.body[0].lineno if package == "cli" else node.lineno  # typer options are declarations
                if node.end_lineno - first + 1 > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}")
    assert long == []
