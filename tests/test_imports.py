"""No import circle in uringserve/ or loadtest/.

Every module's source is parsed (ast, nothing imported) and each of its
import statements becomes an edge to the module it names: `import a.b`,
`from a import b` (to a.b when b is a module, else to a) and the relative
forms. Imports inside functions count: a circle that a local import hides
still ties the two modules together, and an edit that hoists the import
makes it fail at import time. Imports under `if TYPE_CHECKING:` never run,
so they are checked apart, for the type checker's sake. Only edges between
modules of the two packages are kept; a circle is printed as the modules
it goes through.

`python tests/test_imports.py` prints the edges, marked [local] where every
import of that module is inside a function and [typing] where it is only
under TYPE_CHECKING.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("uringserve", "loadtest")


def modules() -> dict[str, Path]:
    """Module name -> source file, for every .py of the packages."""
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> Iterator[tuple[ast.Import | ast.ImportFrom, str]]:
    """Each import statement with where it is: "" (module level), "local"
    (inside a function) or "typing" (under if TYPE_CHECKING)."""

    def walk(node: ast.AST, where: str) -> Iterator[tuple[ast.Import | ast.ImportFrom, str]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, where
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                yield from walk(child, where or "local")
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    yield from walk(ast.Module(body=[stmt], type_ignores=[]), where or "typing")
                for stmt in child.orelse:
                    yield from walk(ast.Module(body=[stmt], type_ignores=[]), where)
            else:
                yield from walk(child, where)

    yield from walk(tree, "")


def edges() -> dict[tuple[str, str], str]:
    """(importer, imported) -> "" when some import of it is at module level,
    else "local" or "typing"."""
    known = modules()
    out: dict[tuple[str, str], str] = {}

    def add(src: str, name: str, where: str) -> None:
        # the longest prefix that is one of ours (import a.b.c names a.b.c or its package)
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name and name != src:
            key = (src, name)
            if key not in out or where == "" or (out[key] == "typing" and where == "local"):
                out[key] = where

    for name, path in known.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node, where in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    add(name, alias.name, where)
                continue
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            for alias in node.names:
                sub = f"{origin}.{alias.name}"
                add(name, sub if sub in known else origin, where)
    return out


def groups(graph: dict[tuple[str, str], str]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan): each
    is one or more circles."""
    succ = _successors(graph)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in succ[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(succ):
        if v not in index:
            strong(v)
    return sorted(found)


def _successors(graph: dict[tuple[str, str], str]) -> dict[str, list[str]]:
    succ: dict[str, list[str]] = {}
    for a, b in sorted(graph):
        succ.setdefault(a, []).append(b)
        succ.setdefault(b, [])
    return succ


def describe(graph: dict[tuple[str, str], str], group: list[str]) -> str:
    """One circle of the group, from its first module back to it, each hop
    marked local or typing when no import of it is at module level."""
    succ, start, members = _successors(graph), group[0], set(group)
    paths = {start: [start]}
    queue = [start]
    circle: list[str] = []
    while queue and not circle:
        v = queue.pop(0)
        for w in succ[v]:
            if w == start:
                circle = paths[v] + [start]
                break
            if w in members and w not in paths:
                paths[w] = paths[v] + [w]
                queue.append(w)
    hops = [f"{a} -> {b}" + (f" ({graph[(a, b)]})" if graph[(a, b)] else "") for a, b in pairwise(circle)]
    return f"{', '.join(group)}: " + "; ".join(hops)


def runtime(graph: dict[tuple[str, str], str]) -> dict[tuple[str, str], str]:
    """The edges of imports that run (module level or inside functions)."""
    return {k: v for k, v in graph.items() if v != "typing"}


def test_the_walk_sees_every_form_of_import() -> None:
    """The checker itself: relative, from-import of a module and of a name,
    local and TYPE_CHECKING imports all become edges."""
    graph = edges()
    assert graph[("uringserve.loop", "uringserve.ring")] == ""  # from .ring import Ring
    assert graph[("loadtest.run", "loadtest.driver")] == ""  # from . import cpu, driver
    assert graph[("uringserve.cli", "uringserve.diagnose")] == "local"  # in main()
    assert graph[("uringserve.transport_base", "uringserve.ring")] == "typing"  # Ring, in annotations
    assert ("loadtest.driver", "uringserve") not in graph  # `from uringserve import x`: x is a module
    assert groups({("a", "b"): "", ("b", "c"): "local", ("c", "a"): "", ("c", "d"): ""}) == [["a", "b", "c"]]


def test_no_import_circle() -> None:
    graph = runtime(edges())
    found = groups(graph)
    assert not found, "import circles:\n" + "\n".join(describe(graph, g) for g in found)


# Circles left for the type checker only (imports under TYPE_CHECKING):
# none. The last, loop <-> transport, went when the transport came to own
# its completions and typed its loop with a Protocol (transport.TransportLoop);
# a new one fails this test until it is removed or listed here.
TYPING_ONLY: list[list[str]] = []


def test_no_import_circle_for_the_type_checker() -> None:
    graph = edges()
    found = groups(graph)
    assert found == TYPING_ONLY, "import circles:\n" + "\n".join(describe(graph, g) for g in found)


if __name__ == "__main__":
    graph = edges()
    for (a, b), where in sorted(graph.items()):
        print(f"{a} -> {b}" + (f"  [{where}]" if where else ""))
    found = groups(graph)
    for g in found:
        print("CIRCLE:", describe(graph, g), file=sys.stderr)
    sys.exit(1 if groups(runtime(graph)) else 0)
