"""The package's import graph has no cycle, counting the imports inside functions too.

A lazy import (inside a function) hides a cycle from the interpreter but not from the reader: the two modules still
depend on each other. The graph is read with ``ast`` from the source, so nothing is imported to build it.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "ann2snn"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE


def _module_names(root: Path = ROOT, package: str = PACKAGE) -> dict[str, Path]:
    """``dotted module name -> file`` for every module of the package (a package is its ``__init__``)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join([package, *parts])] = path
    return out


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The package module ``name`` refers to: itself, or the closest enclosing module that exists."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(root: Path = ROOT, package: str = PACKAGE) -> dict[str, set[str]]:
    """``module -> modules of the package it imports``, anywhere in its body (functions and methods included).

    ``from a import b`` is an edge to ``a.b`` when ``b`` is a module, else to ``a``. A module's parent packages,
    which Python also runs when importing it, are not counted: otherwise every module would depend on the
    package ``__init__``.
    """
    modules = _module_names(root, package)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = mod.split(".")[: len(mod.split(".")) - node.level + (1 if is_pkg else 0)]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for t in targets:
                if t == package or t.startswith(package + "."):
                    dep = _resolve(t, modules)
                    if dep is not None and dep != mod:
                        graph[mod].add(dep)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path ``[a, b, ..., a]``, or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    for start in sorted(graph):
        if start in state:
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def find_cycles(graph: dict[str, set[str]], limit: int = 20) -> list[list[str]]:
    """Cycles until none is left, each found after cutting the closing edge of the one before (so every cycle
    of the package shows up, not only the first)."""
    g = {k: set(v) for k, v in graph.items()}
    found = []
    while len(found) < limit and (cycle := find_cycle(g)) is not None:
        found.append(cycle)
        g[cycle[-2]].discard(cycle[-1])
    return found


def test_graph_reader_sees_lazy_and_relative_imports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from pkg.a import f\n")
    (pkg / "a.py").write_text("def f():\n    from pkg.sub import b\n    return b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("from ..a import f\nimport os\n")
    graph = import_graph(pkg, "pkg")
    assert graph == {"pkg": {"pkg.a"}, "pkg.a": {"pkg.sub.b"}, "pkg.sub": set(), "pkg.sub.b": {"pkg.a"}}
    assert find_cycle(graph) == ["pkg.a", "pkg.sub.b", "pkg.a"]
    assert find_cycle({"x": {"y"}, "y": set()}) is None
    assert find_cycles({"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"c"}}) == [["a", "b", "a"], ["c", "d", "c"]]


def test_package_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 20 and graph["ann2snn"], "the package was not found or read"
    cycles = find_cycles(graph)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)
