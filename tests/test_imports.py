"""The package's imports form no cycle: arrows point down (docs/architecture.md).

Every module under ``liam_gpu/`` is parsed with :mod:`ast`; every ``import``
and ``from ... import`` counts, deferred ones inside functions included.  Only
imports under ``if TYPE_CHECKING:`` are left out: they never run.  Relative
imports are resolved to module names, and importing ``liam_gpu.pkg.mod`` from
outside ``liam_gpu.pkg`` also counts as an edge to ``liam_gpu.pkg``, whose
``__init__`` runs first.  The test fails naming each cycle and the lines that
make it.
"""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

import liam_gpu

PACKAGE = "liam_gpu"
ROOT = Path(liam_gpu.__file__).resolve().parent

#: module -> imported module -> the first "file:line" that imports it.
Graph = dict[str, dict[str, str]]


def module_names(root: Path = ROOT, package: str = PACKAGE) -> dict[str, Path]:
    """Every module of the package by dotted name (a package is its ``__init__.py``)."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join([package, *parts])] = path
    return names


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST):
    """Every Import/ImportFrom node, at any depth, except those under ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _targets(node: ast.Import | ast.ImportFrom, name: str, is_package: bool, modules: dict) -> list[str]:
    """The package modules one import statement loads."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        # The package a relative import starts from: the module's own package, then up.
        base = name.split(".") if is_package else name.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    # `from pkg import sub` loads the submodule; `from pkg import name` loads pkg itself.
    subs = [f"{source}.{alias.name}" for alias in node.names if f"{source}.{alias.name}" in modules]
    return subs if len(subs) == len(node.names) else subs + [source]


def import_graph(root: Path = ROOT, package: str = PACKAGE) -> Graph:
    """The package's import graph, deferred imports included (see the module docstring)."""
    modules = module_names(root, package)
    graph: Graph = defaultdict(dict)
    for name, path in modules.items():
        graph[name]  # every module is a node, even one importing nothing
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in _imports(tree):
            where = f"{path.relative_to(root.parent)}:{node.lineno}"
            for target in _targets(node, name, path.name == "__init__.py", modules):
                # Entering a package runs the __init__ of every package above the
                # target that the importer is not already inside.
                parts = target.split(".")
                for depth in range(2, len(parts) + 1):
                    prefix = ".".join(parts[:depth])
                    inside = name == prefix or name.startswith(prefix + ".")
                    if prefix in modules and prefix != name and (prefix == target or not inside):
                        graph[name].setdefault(prefix, where)
    return dict(graph)


def components(graph: Graph) -> list[set[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def shortest_cycle(graph: Graph, component: set[str]) -> list[str]:
    """The shortest cycle through the component's first module (breadth-first inside it)."""
    start = min(component)
    parent: dict[str, str | None] = {start: None}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph[v]):
            if w == start:
                path = [v]
                while parent[path[-1]] is not None:
                    path.append(parent[path[-1]])
                return path[::-1] + [start]
            if w in component and w not in parent:
                parent[w] = v
                queue.append(w)
    raise AssertionError(f"{sorted(component)} is not strongly connected")


def cycles(graph: Graph) -> list[list[str]]:
    """One shortest cycle per group of modules that import each other."""
    return sorted(shortest_cycle(graph, c) for c in components(graph))


def describe(cycle: list[str], graph: Graph, component: set[str] | None = None) -> str:
    """``a -> b -> a``, the line making each arrow, and the other modules caught in it."""
    lines = [" -> ".join(cycle)]
    lines += [f"    {a} -> {b}  ({graph[a][b]})" for a, b in zip(cycle, cycle[1:])]
    others = sorted(set(component or ()) - set(cycle))
    if others:
        lines.append(f"    (caught in the same knot: {', '.join(others)})")
    return "\n".join(lines)


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    knots = components(graph)
    report = [describe(shortest_cycle(graph, c), graph, c) for c in knots]
    assert not knots, (
        f"{len(knots)} import cycle(s) inside {PACKAGE} (deferred imports count; break the "
        "arrow that points up, see docs/architecture.md):\n" + "\n".join(sorted(report))
    )


#: The modules above the core: the front door and what it routes to, and the faces over it.
ABOVE_THE_CORE = (
    "liam_gpu.api", "liam_gpu.dispatch", "liam_gpu.algebra", "liam_gpu.torch", "liam_gpu.alda",
    "liam_gpu.cli", "liam_gpu.benchmarks",
)


def _above(name: str) -> bool:
    return any(name == top or name.startswith(top + ".") for top in ABOVE_THE_CORE)


def test_the_core_imports_neither_the_front_door_nor_the_torch_layer_nor_the_scheduler():
    graph = import_graph()
    upward = [
        f"{module} -> {target}  ({where})"
        for module, targets in sorted(graph.items()) if module != PACKAGE and not _above(module)
        for target, where in sorted(targets.items()) if _above(target)
    ]
    assert not upward, "the core reaches up (route at the front door, liam_gpu/api.py, instead):\n" + "\n".join(upward)


def test_the_walk_sees_deferred_relative_and_package_imports():
    graph = import_graph()
    # A deferred import inside a function, resolved from a relative name.
    assert "liam_gpu.launch.transform" in graph["liam_gpu.backends.kernel"]
    # `from .. import arrays` inside a subpackage.
    assert "liam_gpu.arrays" in graph["liam_gpu.backends"]


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.mark.parametrize(
    "files, expected",
    [
        pytest.param(  # two modules, one import deferred inside a function
            {"pkg/__init__.py": "", "pkg/a.py": "from . import b\n",
             "pkg/b.py": "def f():\n    from .a import x\n"},
            ["pkg.a", "pkg.b", "pkg.a"], id="deferred",
        ),
        pytest.param(  # through a subpackage's __init__
            {"pkg/__init__.py": "", "pkg/core.py": "def f():\n    from .sub import g\n",
             "pkg/sub/__init__.py": "from .ops import g\n", "pkg/sub/ops.py": "from ..core import f\n"},
            ["pkg.core", "pkg.sub", "pkg.sub.ops", "pkg.core"], id="package-init",
        ),
    ],
)
def test_a_planted_cycle_is_found_and_named(tmp_path, files, expected):
    root = _write(tmp_path, files) / "pkg"
    graph = import_graph(root, "pkg")
    assert cycles(graph) == [expected]
    assert " -> ".join(expected) in describe(expected, graph)


def test_type_checking_imports_and_sibling_packages_make_no_cycle(tmp_path):
    root = _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/sub/__init__.py": "from .run import Run\n",
        "pkg/sub/run.py": "from .worker import Worker\n",
        "pkg/sub/worker.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .run import Run\n",
    }) / "pkg"
    assert cycles(import_graph(root, "pkg")) == []
