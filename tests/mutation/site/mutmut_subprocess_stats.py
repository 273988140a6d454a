"""pytest plugin for `make mutate` (run.py loads it with PYTEST_PLUGINS):
during mutmut's stats run, the functions that processes started by a test
reached (written by sitecustomize.py next to this file) are credited to that
test, as mutmut credits the functions the test reached in its own process.
A mutant of uringserve/cli.py then runs the tests whose servers reach the
mutated function. It also keeps a stats run going past a test that fails
under load, and keeps mutmut's own objects out of the tests' collections."""

from __future__ import annotations

import gc
import json
import os
from collections.abc import Generator
from typing import Any

import pytest

HITS = os.environ.get("MUTMUT_SUBPROCESS_HITS", "")
_generation = 0


def _stats_run() -> bool:
    if not HITS:
        return False
    try:
        from mutmut.mutation.trampoline import get_mutant_under_test
    except ImportError:
        return False
    return get_mutant_under_test() == "stats"


def pytest_sessionstart(session: pytest.Session) -> None:
    # mutmut runs the stats and the clean tests in its own process, which
    # holds every mutant's code: a gc.collect() there takes a good part of a
    # second, and tests that collect often (test_file_send's owner test, once
    # per 64 KiB read) pass their bounds. What exists now is not the tests'
    # garbage: leave it out of every collection (mutmut freezes it too before
    # it forks the mutants' runs)
    gc.freeze()
    if not _stats_run():
        return
    # the venv's editable install maps uringserve and loadtest to the
    # checkout: make sure the tests see the mutated copy
    import importlib

    for package in ("uringserve", "apps", "loadtest"):
        where = os.path.abspath(importlib.import_module(package).__file__ or "")
        if os.path.dirname(os.path.dirname(where)) != os.path.dirname(os.path.abspath(HITS)):
            pytest.exit(f"{package} is imported from {where}, not from mutants/", returncode=3)
    if os.path.isdir(HITS):  # what an interrupted run left
        for name in os.listdir(HITS):
            os.unlink(os.path.join(HITS, name))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_logstart(nodeid: str, location: Any) -> None:
    global _generation
    if not _stats_run():
        return
    os.makedirs(HITS, exist_ok=True)
    _generation += 1
    tmp = os.path.join(HITS, "generation.tmp")
    with open(tmp, "w") as f:
        f.write(str(_generation))
    os.replace(tmp, os.path.join(HITS, "generation"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Generator[None, Any, Any]:
    """The stats run only maps tests to functions, and runs with -x: one
    test that fails under load would stop it (and `make mutate`) after many
    minutes. Its failure is written down and the run goes on; the clean run
    mutmut makes next must pass them all again."""
    report = yield
    if report.failed and call.when in ("call", "teardown") and _stats_run():
        with open(os.path.join(os.path.dirname(HITS), "stats-failures.txt"), "a") as f:
            f.write(f"{report.nodeid} ({call.when}): {str(report.longrepr).splitlines()[-1:]}\n")
        report.outcome = "passed"
    return report


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, Any, Any]:
    result = yield  # the fixtures are torn down: the servers they started have exited
    if _stats_run():
        _credit(item.nodeid.removeprefix("mutants/"))
    return result


CREDITED: dict[str, set[str]] = {}  # function -> tests credited here (run.py reports them)


def pytest_sessionfinish(session: pytest.Session) -> None:
    if not _stats_run() or not CREDITED:
        return
    path = os.path.join(os.path.dirname(HITS), "subprocess-credit.json")
    try:
        with open(path) as f:
            old = json.load(f)
    except (OSError, ValueError):
        old = {}
    for function, tests in CREDITED.items():
        old[function] = sorted(set(old.get(function, ())) | tests)
    with open(path, "w") as f:
        json.dump(old, f, indent=1)


def _credit(nodeid: str) -> None:
    from mutmut.state import state

    tests = state().tests_by_mangled_function_name
    for name in os.listdir(HITS):
        if not name.isdigit():
            continue
        taken = os.path.join(HITS, name + ".taken")
        try:
            os.rename(os.path.join(HITS, name), taken)  # a process still running starts a new file
        except FileNotFoundError:
            continue
        with open(taken) as f:
            for function in f.read().split():
                tests[function].add(nodeid)
                CREDITED.setdefault(function, set()).add(nodeid)
        os.unlink(taken)
