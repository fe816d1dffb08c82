"""No import cycles among aha's modules (docs/design.md, "No import cycles").

An `ast` walk over every module of the package: every import statement counts, those inside
functions too (a lazy import hides a cycle from Python, not from a reader), relative imports
resolved; only the bodies of `if TYPE_CHECKING:` are skipped (annotations, never run). Importing
`aha.x.y` runs `aha/x/__init__.py` first, so it is an edge to the package `aha.x` too - unless the
importer is inside `aha.x` (its package is already being imported). No torch, no model: it reads
source only.
"""

from __future__ import annotations

import ast
from pathlib import Path

import aha

ROOT = Path(aha.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = ("aha", *path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imported(tree: ast.AST, name: str, is_package: bool, modules: set[str]) -> set[str]:
    """The aha modules `name`'s source imports (anywhere but under `if TYPE_CHECKING:`)."""
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()

    def resolve(dotted: str) -> str | None:  # the longest prefix that is one of our modules
        while dotted and dotted not in modules:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import mod` imports the module pkg.mod; `from mod import name` imports mod
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            targets = []
        own_packages = {name.rsplit(".", i)[0] for i in range(name.count(".") + 1)}
        for target in targets:
            module = resolve(target) if target.startswith("aha") else None
            while module and module not in own_packages:  # the module, then each package it runs first
                if module in modules:
                    found.add(module)
                module = module.rpartition(".")[0]
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    """aha module -> the aha modules it imports."""
    files = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}
    modules = set(files)
    return {name: _imported(ast.parse(path.read_text(), str(path)), name, path.name == "__init__.py", modules)
            for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan), each as a path
    a -> b -> ... -> a through that component."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
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
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return [_cycle_in(graph, component) for component in components]


def _cycle_in(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest cycle through the component's first module (breadth-first back to it)."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for v in frontier:
            for w in sorted(graph[v] & component):
                if w == start:
                    return paths[v] + [start]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    following.append(w)
        frontier = following
    return [start]


def test_the_graph_reads_every_import_statement() -> None:
    modules = {"aha", "aha.a", "aha.pkg", "aha.pkg.b", "aha.pkg.c", "aha.pkg.d", "aha.e", "aha.f"}
    source = """
from typing import TYPE_CHECKING
import os
from . import c
from .d import thing
from .. import e
import aha.a as a
if TYPE_CHECKING:
    from aha import f
else:
    from aha.pkg import b

def lazy():
    from aha.a import name
"""
    found = _imported(ast.parse(source), "aha.pkg.mod", False, modules | {"aha.pkg.mod"})
    assert found == {"aha.a", "aha.pkg.b", "aha.pkg.c", "aha.pkg.d", "aha.e"}  # not aha.f, not aha.pkg
    assert _imported(ast.parse("from . import b"), "aha.pkg", True, modules) == {"aha.pkg.b"}  # an __init__
    graph = import_graph()
    assert "aha.preflight" in graph["aha.rundir"]  # imported inside `guarded`
    assert "aha.config" not in graph["aha.log"]  # only under `if TYPE_CHECKING:`
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]


def test_no_import_cycles() -> None:
    found = cycles(import_graph())
    assert not found, "import cycles (untie them in the direction the data flows):\n" + "\n".join(
        " -> ".join(c) for c in found)
