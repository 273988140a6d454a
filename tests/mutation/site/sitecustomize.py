"""Loaded by every Python process that `make mutate` starts (run.py puts this
directory on PYTHONPATH): mutmut records which functions each test reaches
only inside its own pytest process, so a function reached only by a process
the test started (`python -m uringserve run ...`, the supervisor's workers,
`python apps/resp_server.py`, loadtest's worker processes) would have "no
tests" and its mutants would never run.

During mutmut's stats run (MUTANT_UNDER_TEST=stats) such a process appends
each function it reaches to $MUTMUT_SUBPROCESS_HITS/<pid>, once per test:
the pytest plugin next to this file (mutmut_subprocess_stats.py) bumps
$MUTMUT_SUBPROCESS_HITS/generation when a test starts and credits the names
to the test that ran when it tears down. Outside the stats run nothing is
done here. Then the sitecustomize this one shadows (Debian's) runs."""

from __future__ import annotations

import os
import sys


def _record_subprocess_hits() -> None:
    hits_dir = os.environ.get("MUTMUT_SUBPROCESS_HITS")
    if not hits_dir or os.environ.get("MUTANT_UNDER_TEST") != "stats":
        return
    try:
        # the trampolines call this module's record_trampoline_hit by name
        import mutmut.mutation.trampoline as trampoline
    except ImportError:
        return
    import time

    generation_file = os.path.join(hits_dir, "generation")
    seen: set[str] = set()
    last = {"generation": b"", "checked": 0.0}

    # kept here: at interpreter shutdown a late call may find builtins and
    # module globals gone (open, os); then there is nothing to record
    failure = Exception

    def hit(name: str, caller: str | None = None) -> None:
        try:
            record(name)
        except failure:
            pass

    def record(name: str) -> None:
        # a server that lives through several tests (a module-scoped fixture)
        # reports a function again in each: the plugin bumps the generation
        # when a test starts; it is looked at every 10 ms, not on every call
        now = time.monotonic()
        if now - last["checked"] >= 0.01:
            last["checked"] = now
            try:
                with open(generation_file, "rb") as f:
                    generation = f.read()
            except OSError:
                generation = b""
            if generation != last["generation"]:
                last["generation"] = generation
                seen.clear()
        if name in seen:
            return
        seen.add(name)
        try:
            # opened each time: the plugin renames the file to take what it holds
            fd = os.open(os.path.join(hits_dir, str(os.getpid())), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, name.encode() + b"\n")
            finally:
                os.close(fd)
        except OSError:
            pass

    trampoline.record_trampoline_hit = hit  # type: ignore[assignment]

    # mutmut also tracks each hit's caller in a ContextVar, set and reset
    # around every call. Here that is not needed (the callers stay in this
    # process), and it is harmful: a ContextVar.set() inside a task step that
    # UringEventLoop runs eagerly (create_eager_task) on Python 3.11 crashed
    # workers with SIGSEGV in about one request in a hundred
    class NoCallStack:
        @classmethod
        def get(cls) -> tuple[None, int]:
            return None, 0

        @classmethod
        def set(cls, value: object) -> None:
            return None

        @classmethod
        def reset(cls, token: object) -> None:
            return None

    trampoline.MutmutCallStack = NoCallStack  # type: ignore[assignment,misc]


def _run_shadowed_sitecustomize() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    for entry in sys.path:
        if not entry or os.path.abspath(entry) == here:
            continue
        path = os.path.join(entry, "sitecustomize.py")
        if os.path.isfile(path):
            with open(path) as f:
                code = compile(f.read(), path, "exec")
            exec(code, {"__name__": "sitecustomize", "__file__": path})
            return


def _limit_processes() -> None:
    """A mutant can make the code start processes without end: without its
    environment a worker takes itself for a supervisor and starts workers of
    its own (uringserve.workers spawn(), a mutant that drops env=), and the
    tree grows until the kernel's OOM killer steps in on a shared machine.
    Every process a mutant's tests start passes here first: past
    MUTMUT_MAX_PROCESSES (100) processes running for the same mutant, it
    does not start, and the test that caused it fails."""
    mutant = os.environ.get("MUTANT_UNDER_TEST", "")
    if not mutant or mutant in ("stats", "fail", "list_all_tests", "mutant_generation"):
        return
    limit = int(os.environ.get("MUTMUT_MAX_PROCESSES", "100"))
    mark = b"\0MUTANT_UNDER_TEST=" + mutant.encode() + b"\0"
    running = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                running += mark in b"\0" + f.read()
        except OSError:
            continue
    if running > limit:
        sys.stderr.write(f"make mutate: {running} processes run for {mutant}; no more are started\n")
        os._exit(70)


_limit_processes()
_record_subprocess_hits()
_run_shadowed_sitecustomize()
