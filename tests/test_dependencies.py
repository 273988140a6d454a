"""Every third-party module the project imports comes from a distribution
its pyproject asks for (directly, or as a requirement of one it asks for).

CI installs from a clean clone; a package that only this machine's venv
happens to hold makes `make test` pass here and fail there (httpx did:
test_tls_core imported it and no extra named it). Sources are parsed, nothing is
imported; the module -> distribution map and each distribution's own
requirements come from the installed metadata.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = ("uringserve", "loadtest", "apps", "bench", "tests")
# Installed by their own make target, not by the extras: tests/mutation runs
# under `make mutate` (which pip-installs mutmut); the ASan build of the core
# is compiled by tests/fuzz/native_build.py; `test` is CPython's own suite
# (Debian's libpython3.11-testsuite, in the Makefile's DEBS).
OWN_INSTALL = {"mutmut", "_native_asan", "test"}
EXTRAS = ("test", "bench")


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[(]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def imported_modules() -> dict[str, set[str]]:
    """Top-level module -> the files that import it (absolute imports only)."""
    out: dict[str, set[str]] = {}
    for folder in FOLDERS:
        for path in (ROOT / folder).rglob("*.py"):
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):
                names: list[str] = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                for name in names:
                    out.setdefault(name.split(".")[0], set()).add(str(path.relative_to(ROOT)))
    return out


def local_modules() -> set[str]:
    """Names the project's own files answer to (its packages, and the
    sibling modules tests and benchmarks import from their own folder)."""
    names = {p.name for p in ROOT.iterdir() if p.is_dir()}
    for folder in (*FOLDERS, "deploy"):
        for path in (ROOT / folder).rglob("*.py"):
            names.add(path.stem)
        names.update(p.name for p in (ROOT / folder).rglob("*") if p.is_dir())
    return names


def declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"])
    for extra in EXTRAS:
        wanted += project["optional-dependencies"][extra]
    return {_name(r) for r in wanted}


def reachable(roots: set[str]) -> set[str]:
    """The declared distributions and everything they require, as installed
    (markers ignored: a requirement that applies elsewhere only widens the set)."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        todo += [_name(r) for r in requires if "extra ==" not in r]
    return seen


def test_every_third_party_import_is_declared() -> None:
    owners = metadata.packages_distributions()
    own = local_modules()
    reach = reachable(declared())
    missing = {}
    for module, files in imported_modules().items():
        if module in sys.stdlib_module_names or module in own or module in OWN_INSTALL or module == "__future__":
            continue
        dists = {d.lower().replace("_", "-") for d in owners.get(module, [])}
        if not dists & reach:
            missing[module] = (sorted(dists) or ["not installed"], sorted(files)[:3])
    assert not missing, (
        "imported but no requirement in pyproject.toml brings it (add it to [project] dependencies or an extra): "
        + "; ".join(f"{m} from {d} in {f}" for m, (d, f) in sorted(missing.items()))
    )


def test_the_check_sees_an_undeclared_import() -> None:
    """httpx with its requirement taken away is reported (the case CI hit)."""
    owners = metadata.packages_distributions()
    assert "httpx" in {d.lower() for d in owners.get("httpx", [])}
    assert "httpx" in reachable(declared())
    assert "httpx" not in reachable(declared() - {"httpx"})
    assert "pytest" in reachable({"pytest-timeout"})  # requirements of requirements count
