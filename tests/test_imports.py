"""The structure's rules, checked on the source: no import circle in
uringserve/ or loadtest/; one import of the compiled core; no private
member read across the loop/transport boundary or from the HTTP front ends
into the connection (each below, with its own comment).

For circles, every module's source is parsed (ast, nothing imported)
and each of its import statements becomes an edge to the module it names:
`import a.b`, `from a import b` (to a.b when b is a module, else to a) and
the relative forms. Imports inside functions count: a circle that a local import hides
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
from collections.abc import Iterator, Sequence
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


# -- one import of the compiled core ---------------------------------------------
# Only uringserve/_native/__init__.py loads _native._core (ffi, lib); every
# other module takes them from uringserve._native, so a missing build is one
# error raised in one place. Held for every Python file of the checkout:
# import statements in every form (absolute, relative, from-imports of the
# module, inside functions), importlib.import_module / __import__ /
# find_spec with a literal name, sys.modules[...] and an attribute path
# through an imported name (`import uringserve._native as n; n._core`).

CORE = "uringserve._native._core"
CORE_LOADER = ROOT / "uringserve" / "_native" / "__init__.py"
# the one other place, by design: the fuzz run puts the core built with ASan
# in sys.modules under the core's name before uringserve is imported, so the
# loader's own import takes it (tests/fuzz/native_build.py, load_core)
CORE_SUBSTITUTE = Path("tests") / "fuzz" / "native_build.py"
SOURCE_DIRS = ("uringserve", "loadtest", "apps", "bench", "tests", "deploy")
_IMPORT_CALLS = {"import_module", "__import__", "find_spec"}


def python_files(root: Path = ROOT) -> list[Path]:
    """Every .py of the checkout's source directories."""
    return sorted(path for d in SOURCE_DIRS for path in (root / d).rglob("*.py") if "__pycache__" not in path.parts)


def _module_name(path: Path, root: Path) -> tuple[str, str]:
    """(module, package) of a file, as a relative import in it resolves."""
    parts = path.relative_to(root).with_suffix("").parts
    if parts[-1] == "__init__":
        name = ".".join(parts[:-1])
        return name, name
    name = ".".join(parts)
    return name, name.rpartition(".")[0]


def _absolute(package: str, level: int, module: str | None) -> str:
    base = package.split(".") if package else []
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join(base + ([module] if module else []))


def _dotted(node: ast.expr) -> str | None:
    """`a.b.c` for a Name/Attribute chain, else None."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        head = _dotted(node.value)
        return None if head is None else f"{head}.{node.attr}"
    return None


def core_imports(source: str, path: Path, root: Path = ROOT) -> list[str]:
    """Each place `source` (the file at `path` under `root`) loads the
    compiled core, as "path:line: code"."""
    tree = ast.parse(source, str(path))
    package = _module_name(path, root)[1]

    def is_core(name: str) -> bool:
        return name == CORE or name.startswith(CORE + ".")

    bound: dict[str, str] = {}  # a name an import binds -> the module or attribute it names
    found: list[ast.stmt | ast.expr] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if is_core(alias.name):
                    found.append(node)
                # `import a.b` binds a; `import a.b as n` binds n to a.b
                bound[alias.asname or alias.name.partition(".")[0]] = (
                    alias.name if alias.asname else alias.name.partition(".")[0]
                )
        elif isinstance(node, ast.ImportFrom):
            origin = _absolute(package, node.level, node.module) if node.level else (node.module or "")
            for alias in node.names:
                if is_core(origin) or is_core(f"{origin}.{alias.name}"):
                    found.append(node)
                bound[alias.asname or alias.name] = f"{origin}.{alias.name}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if name in _IMPORT_CALLS and node.args and isinstance(node.args[0], ast.Constant):
                target = node.args[0].value
                if isinstance(target, str) and target.startswith("."):
                    anchor = (
                        node.args[1]
                        if len(node.args) > 1
                        else next((k.value for k in node.keywords if k.arg == "package"), None)
                    )
                    if isinstance(anchor, ast.Constant) and isinstance(anchor.value, str):
                        dots = len(target) - len(target.lstrip("."))
                        target = _absolute(anchor.value, dots, target.lstrip(".") or None)
                if isinstance(target, str) and is_core(target):
                    found.append(node)
        elif isinstance(node, ast.Subscript) and _dotted(node.value) == "sys.modules":
            key = node.slice
            if isinstance(key, ast.Constant) and isinstance(key.value, str) and is_core(key.value):
                found.append(node)
        elif isinstance(node, ast.Attribute):
            # `n._core.lib` is found as its part `n._core` too: one line, reported once
            chain = _dotted(node)
            if chain:
                head, _, rest = chain.partition(".")
                full = f"{bound[head]}.{rest}" if head in bound else chain
                if is_core(full):
                    found.append(node)
    lines = source.splitlines()
    return sorted({f"{path}:{n.lineno}: {lines[n.lineno - 1].strip()}" for n in found})


def test_only_the_loader_imports_the_compiled_core(root: Path = ROOT) -> None:
    found = [
        hit
        for path in python_files(root)
        if path not in (root / CORE_LOADER.relative_to(ROOT), root / CORE_SUBSTITUTE)
        for hit in core_imports(path.read_text(), path, root)
    ]
    assert not found, (
        f"only {CORE_LOADER.relative_to(ROOT)} imports {CORE}; take ffi, lib from uringserve._native:\n"
        + "\n".join(found)
    )


def test_the_core_check_sees_every_form_of_import() -> None:
    """The checker itself: the loader's own import is found, and so is each
    form a module elsewhere could use; `from .._native import ffi` is not."""
    assert [h.split(": ", 1)[1] for h in core_imports(CORE_LOADER.read_text(), CORE_LOADER)] == [
        "from ._core import ffi, lib"
    ]
    planted = {
        "uringserve/x.py": [
            "import uringserve._native._core",
            "import uringserve._native._core as core",
            "from uringserve._native._core import lib",
            "from uringserve._native import _core",
            "from ._native._core import ffi",
            "from ._native import _core as c",
            "import uringserve._native as n; n._core.lib.us_wait",
            "import uringserve; uringserve._native._core",
            "from . import _native; _native._core",
            "def f():\n    from ._native._core import lib",
            "importlib.import_module('uringserve._native._core')",
            "importlib.import_module('._core', 'uringserve._native')",
            "__import__('uringserve._native._core')",
            "importlib.util.find_spec('uringserve._native._core')",
            "sys.modules['uringserve._native._core']",
        ],
        "uringserve/_native/y.py": ["from ._core import ffi", "from . import _core"],
        "loadtest/z.py": ["from uringserve._native._core import ffi"],
    }
    for where, sources in planted.items():
        for source in sources:
            assert core_imports(source, ROOT / where), f"{where}: not found: {source}"
    for clean in ("from ._native import ffi, lib", "from uringserve._native import check", "core = 1; x._core"):
        assert not core_imports(clean, ROOT / "uringserve/x.py"), clean


# -- no private member read across the loop/transport boundary -------------------
# The loop hands events to the transport through its public methods
# (receive, receive_from, receive_failed, on_*, start_accepted, ...) and
# the transport reaches the loop through TransportLoop (transport_base.py):
# neither reads or writes the other's private members. The check: in
# loop.py, `<expr>._name` (and getattr/setattr/hasattr/delattr with a
# literal "_name") on anything but `self` or `super()` is refused unless
# it is one of asyncio's own objects listed below; the transport's modules
# likewise. Dunders are not private.

LOOP = ROOT / "uringserve" / "loop.py"
TRANSPORT_PARTS = sorted((ROOT / "uringserve").glob("transport*.py")) + [ROOT / "uringserve" / "arena_waits.py"]

# (expression, member) -> why the loop touches it. Each is asyncio's, not a
# transport's: what an asyncio loop subclass must do to stay asyncio.
LOOP_ASYNCIO_INTERNALS: dict[tuple[str, str], str] = {
    ("timer", "_scheduled"): "call_at() builds asyncio's TimerHandle and pushes it on the loop's heap itself, as "
    "BaseEventLoop.call_at does; _scheduled is the flag BaseEventLoop._run_once and TimerHandle.cancel() read",
    ("handle", "_source_traceback"): "debug mode: asyncio's Handle records where it was scheduled, and the loop's "
    "call_soon/call_at overrides drop their own frame from it, as asyncio drops its own",
    ("ssl_protocol", "_app_transport"): "_make_ssl_transport returns the application side of asyncio's "
    "SSLProtocol, as selector_events' _make_ssl_transport does",
    ("asyncio.tasks", "_current_tasks"): "Python 3.11: each loop's running task (what asyncio.current_task reads); "
    "create_eager_task runs a first step in place only when no task is running",
}

# The same for the transport's modules: asyncio's, none of them the loop's.
TRANSPORT_ASYNCIO_INTERNALS: dict[tuple[str, str], str] = {
    ("constants", "_SendfileMode"): "loop.sendfile() asks a transport's _sendfile_compatible, one of "
    "asyncio.constants._SendfileMode (TRY_NATIVE sends it through the ring)",
    ("server", "_attach"): "asyncio.Server counts its connections (close(), wait_closed()) through "
    "_attach/_detach, which asyncio's own transports call",
    ("server", "_detach"): "as _attach",
    ("cls", "_attach"): "whether asyncio.Server._attach takes the transport (3.13+) is read once per "
    "server class from its signature (transport.py's _takes_transport)",
    ("transports", "_FlowControlMixin"): "asyncio's base for write flow control (set_write_buffer_limits, "
    "pause_writing/resume_writing), which its own transports share",
}

_ATTR_CALLS = {"getattr", "setattr", "hasattr", "delattr"}


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _is_own(node: ast.expr) -> bool:
    """`self` or `super()`: the object's own members, inherited ones included."""
    return (isinstance(node, ast.Name) and node.id == "self") or (
        isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "super"
    )


def private_uses(tree: ast.AST) -> Iterator[tuple[ast.expr, str, int]]:
    """(the object, its private member, line) for each read, write or delete
    of `obj._name`, and each getattr/setattr/hasattr/delattr(obj, "_name")."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _is_private(node.attr):
            yield node.value, node.attr, node.lineno
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in _ATTR_CALLS
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and _is_private(node.args[1].value)
        ):
            yield node.args[0], node.args[1].value, node.lineno


def foreign_private_uses(source: str, path: Path, allowed: dict[tuple[str, str], str]) -> list[str]:
    """Each private member `source` reaches on an object other than self,
    outside `allowed`, as "path:line: obj._name"."""
    return [
        f"{path}:{line}: {ast.unparse(obj)}.{name}"
        for obj, name, line in private_uses(ast.parse(source, str(path)))
        if not _is_own(obj) and (ast.unparse(obj), name) not in allowed
    ]


def test_the_loop_touches_no_private_member_of_a_transport(path: Path = LOOP) -> None:
    found = foreign_private_uses(path.read_text(), path, LOOP_ASYNCIO_INTERNALS)
    assert not found, (
        "loop.py reaches a private member of another object (a transport's? use or add a public method; "
        "asyncio's own? list it in LOOP_ASYNCIO_INTERNALS with why):\n" + "\n".join(found)
    )


def test_the_transport_touches_no_private_member_of_the_loop(paths: Sequence[Path] = TRANSPORT_PARTS) -> None:
    found = [hit for path in paths for hit in foreign_private_uses(path.read_text(), path, TRANSPORT_ASYNCIO_INTERNALS)]
    assert not found, (
        "the transport reaches a private member of another object (the loop's? use TransportLoop, "
        "transport_base.py; asyncio's own? list it in TRANSPORT_ASYNCIO_INTERNALS with why):\n" + "\n".join(found)
    )


def test_the_allow_lists_name_only_what_is_used() -> None:
    """An entry the code no longer uses leaves its list, so the lists stay
    the loop's and the transport's real dependencies on asyncio's internals."""
    for paths, allowed in (([LOOP], LOOP_ASYNCIO_INTERNALS), (TRANSPORT_PARTS, TRANSPORT_ASYNCIO_INTERNALS)):
        used = {
            (ast.unparse(obj), name) for path in paths for obj, name, _ in private_uses(ast.parse(path.read_text()))
        }
        assert not allowed.keys() - used, f"listed but not used: {sorted(allowed.keys() - used)}"


def test_the_private_member_check_sees_each_form() -> None:
    """The checker itself, on planted code: reads, writes, deletes, getattr
    forms, a subscripted or aliased object, the loop's members reached
    through the transport's _loop; not self's, super()'s or a dunder."""
    planted = [
        "def _dispatch(self, n):\n    t = self._conns.get(n)\n    t._slot",
        "t._gen = 3",
        "del t._protocol",
        "self._conns[slot]._closing",
        "getattr(t, '_recv_cb')",
        "setattr(t, '_paused', True)",
        "self._loop._arena_waits",
        "loop = self._loop\nloop._ring",
        "self._loop._conns[self._slot] = self",
        "hasattr(self._loop, '_owner_thread')",
        "self._ring._ptr",
    ]
    for source in planted:
        assert foreign_private_uses(source, Path("planted.py"), {}), source
    for clean in ("self._conns", "super()._stop_serving(sock)", "t.receive(view)", "t.__class__", "self._loop.ring"):
        assert not foreign_private_uses(clean, Path("clean.py"), {}), clean
    assert not foreign_private_uses("timer._scheduled = True", Path("loop.py"), LOOP_ASYNCIO_INTERNALS)


# -- the HTTP front ends use the connection's public interface --------------------
# Exchange, the ASGI and native front ends, the access log and the message
# types call HTTPProtocol's public methods (respond_whole, response_done,
# write, spawn, state, ...) and read none of its private attributes. The
# connection is whatever is reached as `conn`, `connection`, `protocol` or
# `proto`, or as an attribute of those names (`ex.conn`, `self.conn`,
# `ex._conn`, `t._protocol`), or a name given one of those (`c = ex.conn`)
# or annotated HTTPProtocol/Connection.

HTTP = ROOT / "uringserve" / "http"
# file -> the classes checked in it (None: the whole file)
FRONT_ENDS: dict[Path, tuple[str, ...] | None] = {
    HTTP / "asgi.py": None,
    HTTP / "native.py": None,
    HTTP / "access.py": None,
    HTTP / "messages.py": None,
    HTTP / "protocol.py": ("Exchange", "_ErrorExchange"),  # HTTPProtocol's own module: only the exchange
}
_CONN_NAMES = {"conn", "connection", "protocol", "proto"}
_CONN_TYPES = {"HTTPProtocol", "Connection"}


def connection_private_uses(source: str, path: Path, classes: tuple[str, ...] | None = None) -> list[str]:
    """Each private member of the connection `source` reaches (only inside
    `classes` when given), as "path:line: obj._name"."""
    tree = ast.parse(source, str(path))
    scopes: list[ast.AST] = (
        [tree] if classes is None else [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name in classes]
    )
    names = set(_CONN_NAMES)

    def is_conn(node: ast.expr) -> bool:
        if isinstance(node, ast.Name):
            return node.id in names
        if isinstance(node, ast.Attribute):
            return node.attr.lstrip("_") in _CONN_NAMES
        if isinstance(node, ast.Subscript):  # conns[i]
            return is_conn(node.value)
        return False

    for _ in range(3):  # aliases of aliases
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and is_conn(node.value):
                names.update(t.id for t in node.targets if isinstance(t, ast.Name))
            elif isinstance(node, (ast.AnnAssign, ast.NamedExpr)) and node.value is not None and is_conn(node.value):
                if isinstance(node.target, ast.Name):
                    names.add(node.target.id)
            elif isinstance(node, ast.arg) and node.annotation is not None:
                if {n.id for n in ast.walk(node.annotation) if isinstance(n, ast.Name)} & _CONN_TYPES or (
                    isinstance(node.annotation, ast.Constant) and node.annotation.value in _CONN_TYPES
                ):
                    names.add(node.arg)
    return sorted(
        {
            f"{path}:{line}: {ast.unparse(obj)}.{name}"
            for scope in scopes
            for obj, name, line in private_uses(scope)
            if not _is_own(obj) and is_conn(obj)
        }
    )


def test_the_http_front_ends_read_no_private_member_of_the_connection(
    front_ends: dict[Path, tuple[str, ...] | None] = FRONT_ENDS,
) -> None:
    found = [
        hit for path, classes in front_ends.items() for hit in connection_private_uses(path.read_text(), path, classes)
    ]
    assert not found, "a front end reads the connection's private state; use or add a public method:\n" + "\n".join(
        found
    )


def test_the_connection_check_sees_each_form() -> None:
    planted = [
        "conn._transport",
        "ex.conn._queue",
        "self.conn._paused = True",
        "ex._conn._cfg",
        "c = ex.conn\nc._timer",
        "def log(p: HTTPProtocol):\n    p._served",
        "def log(p: 'HTTPProtocol'):\n    p._served",
        "getattr(ex.conn, '_parser')",
        "if (c := self.conn) is not None:\n    c._loop",
    ]
    for source in planted:
        assert connection_private_uses(source, Path("planted.py")), source
    for clean in ("ex.conn.respond_whole(ex, 200, h, b)", "result._status", "super()._frame(data)", "ex._headers"):
        assert not connection_private_uses(clean, Path("clean.py")), clean
    inside = (
        "class Exchange:\n    def f(self):\n        self.conn._queue\n"
        "class HTTPProtocol:\n    def g(self, conn):\n        conn._x"
    )
    assert [h.split(": ")[1] for h in connection_private_uses(inside, Path("p.py"), ("Exchange",))] == [
        "self.conn._queue"
    ]


if __name__ == "__main__":
    graph = edges()
    for (a, b), where in sorted(graph.items()):
        print(f"{a} -> {b}" + (f"  [{where}]" if where else ""))
    found = groups(graph)
    for g in found:
        print("CIRCLE:", describe(graph, g), file=sys.stderr)
    sys.exit(1 if groups(runtime(graph)) else 0)


def test_every_package_is_installed() -> None:
    """pyproject's explicit package list names every package folder: one
    missing installs without it, and only a built wheel or the container
    shows it (uringserve.ws was missing once)."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for top in ("uringserve", "loadtest")
        for p in (ROOT / top).rglob("__init__.py")
        if "__pycache__" not in p.parts
    }
    assert found - listed == set(), f"add to [tool.setuptools] packages in pyproject.toml: {sorted(found - listed)}"
