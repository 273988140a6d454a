"""`make mutate`: mutation testing of the modules the test suite must guard.

1. tests/mutation/planted.py: the bugs found by hand are planted again and
   each must fail a test (PLANTED=0 skips this step).
2. mutmut mutates the modules in MODULES below (pyproject.toml [tool.mutmut]
   only_mutate) and runs, per mutant, the selected tests that reach the
   mutated function -- also through the processes a test starts: a server
   started with `python -m uringserve run ...` imports the mutated copy in
   mutants/ (PYTHONPATH) and inherits MUTANT_UNDER_TEST, and during the stats
   run tests/mutation/site/ records the functions it reaches for the test
   that started it (see sitecustomize.py there).
3. The score per module is printed. A mutant that survived, that no test
   reaches ("no tests") or whose run ended oddly ("suspicious") must be
   listed in tests/mutation/survivors.txt with the reason it is equivalent
   or unreachable, or the run fails. A timeout counts as a kill (a hang is a
   change of behaviour), but a loaded machine makes slow tests time out too:
   timed-out mutants are run once more, alone, and the table counts them
   separately.

A full run takes hours on two cores (a surviving mutant costs every test
that reaches its function). `SAMPLE=N make mutate` runs N mutants per
module, drawn with a fixed seed (SEED, default 15; each module's draw
depends only on the seed and the module), for a score in minutes;
`MODULE=parser` (a substring of the module's last name) narrows it; JOBS
sets mutmut's parallel children. mutmut keeps its results in mutants/, so a
run that is stopped resumes where it was (delete mutants/ when the tests
change: a result once found is kept).
"""

from __future__ import annotations

import json
import os
import pathlib
import random
import re
import signal
import subprocess
import sys
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
MUTMUT = [sys.executable, "-m", "mutmut"]
MODULES = [
    "uringserve.http.protocol",
    "uringserve.http.parser",
    "uringserve.transport",
    "uringserve.ring",
    "uringserve.server.connection",
    "uringserve.server.lifecycle",
    "uringserve.server.listeners",
    "uringserve.resp.parser",
    # issue 22
    "uringserve.http.static",
    "uringserve.resp.commands",
    "uringserve.resp.keyspace",
    "uringserve.cli",
    "uringserve.workers",
    "uringserve.metrics",
    "loadtest.cli",
    "loadtest.cpu",
    "loadtest.driver",
    "loadtest.plan",
    "loadtest.report",
    "loadtest.run",
    "loadtest.tls",
    # issue 23: what left ring.py (the load generator's face, the file-system
    # helpers, the head recogniser's face) and driver.py (the measured window)
    "loadtest.engine",
    "loadtest.window",
    "uringserve.fs",
    "uringserve.http.scan",
    "uringserve.ring_settings",  # RingConfig and its rules, out of ring.py
    # the transport split by job (the receive side, the send side, their
    # state) and what waits for the send arena, out of transport.py and loop.py
    "uringserve.transport_base",
    "uringserve.transport_reading",
    "uringserve.transport_writing",
    "uringserve.arena_waits",
    # issue 24: proxies (trust list, PROXY protocol, proxy headers), the
    # concurrency limit, an app's file for zerocopysend, --reload, reuseport
    # steering, other servers' flag names
    "uringserve.server.trust",
    "uringserve.server.proxy_protocol",
    "uringserve.http.forwarded",
    "uringserve.http.limit",
    "uringserve.http.appfile",
    "uringserve.reload",
    "uringserve.reuseport",
    "uringserve.flag_aliases",
]
ACCEPTED = pathlib.Path(__file__).with_name("survivors.txt")
SITE = pathlib.Path(__file__).with_name("site")
DETECTED = ("killed", "timeout", "segfault", "caught by type check")  # "segfault": also the CPU limit's SIGKILL
EXPLAIN = ("survived", "no tests", "suspicious")  # each needs a line in survivors.txt
_mutmut: subprocess.Popen | None = None


def environment() -> dict[str, str]:
    """The processes tests start import the mutated copy (a script such as
    tests/load_servers.py would otherwise find the editable install's), and
    report what they reach during the stats run (tests/mutation/site/)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "mutants"), str(SITE), env.get("PYTHONPATH")]))
    env["PYTEST_PLUGINS"] = ",".join(filter(None, ["mutmut_subprocess_stats", env.get("PYTEST_PLUGINS")]))
    env["MUTMUT_SUBPROCESS_HITS"] = str(ROOT / "mutants" / "subprocess-hits")
    return env


def mutmut(*args: str, check: bool = True) -> str:
    """Runs mutmut; once more (up to twice) when its stats or clean run
    failed: on a loaded machine that is usually a timing test, and the
    mutants' results so far are kept."""
    for _attempt in range(3):
        stdout = _mutmut_once(*args, check=check)
        if "failed to collect stats" not in stdout and "Failed to run clean test" not in stdout:
            return stdout
        failed = [line for line in stdout.splitlines() if line.startswith(("FAILED ", "ERROR "))]
        print(f"mutmut {' '.join(args[:3])}: the unmutated tests failed ({'; '.join(failed)[:300]})", flush=True)
    # the unmutated suite must pass first; say why it did not
    sys.exit(f"mutmut could not run the clean tests (all of it in mutants/run.log):\n{stdout[-4000:]}")


def _mutmut_once(*args: str, check: bool) -> str:
    global _mutmut
    # before Python starts: a PYTHONPATH entry that does not exist yet is
    # cached as "nothing here", and the editable install's copy is imported
    (ROOT / "mutants").mkdir(exist_ok=True)
    # its own process group: what a killed (timed-out) mutant's tests left
    # running -- servers whose parent died -- is ended with the group below
    _mutmut = subprocess.Popen(
        [*MUTMUT, *args],
        cwd=ROOT,
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    done = threading.Event()
    sweeper = threading.Thread(target=sweep_orphans, args=(_mutmut.pid, done), daemon=True)
    sweeper.start()
    try:
        stdout, stderr = _mutmut.communicate()
    finally:
        done.set()
        end_group(_mutmut)
    # the whole output, for what the messages below cut short
    with open(ROOT / "mutants" / "run.log", "a") as log:
        log.write(f"$ mutmut {' '.join(args)}\n{stdout}\n{stderr}\n")
    if check and _mutmut.returncode != 0:
        sys.exit(f"mutmut {' '.join(args[:3])} failed:\n{stdout[-3000:]}\n{stderr[-3000:]}")
    return stdout


ORPHAN_GRACE = 10.0  # s: longer than a test waits for workers to follow a killed supervisor


def sweep_orphans(session: int, done: threading.Event) -> None:
    """Kill what a mutant's run left behind while mutmut goes on: a test
    process that timed out (SIGXCPU) or a mutant that loses track of its
    children leaves servers, supervisors and their workers in mutmut's
    session whose parent is gone -- once a supervisor mutant kept starting
    workers until the machine ran out of memory. A process of the session
    that does not descend from mutmut through living parents, and is still
    such an orphan ORPHAN_GRACE seconds later, is killed."""
    first_seen: dict[int, float] = {}
    while not done.wait(2.0):
        parent = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == session:  # fields: state ppid pgrp session
                parent[int(entry)] = int(fields[1])
        alive = {session}
        for pid in sorted(parent, key=lambda p: depth(p, parent)):
            if parent[pid] in alive:
                alive.add(pid)
        now = time.monotonic()
        first_seen = {pid: first_seen.get(pid, now) for pid in parent if pid not in alive}
        for pid, since in first_seen.items():
            if now - since >= ORPHAN_GRACE:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def depth(pid: int, parent: dict[int, int]) -> int:
    n = 0
    while pid in parent and n < 1000:
        pid, n = parent[pid], n + 1
    return n


def end_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        proc.wait()
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def results() -> dict[str, str]:
    """mutant name -> status (killed, survived, timeout, no tests, not checked, ...)."""
    out = {}
    for line in mutmut("results", "--all", "true").splitlines():
        m = re.match(r"\s*(\S+): (.+)$", line)
        if m:
            out[m.group(1)] = m.group(2).strip()
    return out


def module_of(name: str) -> str:
    return next((m for m in MODULES if name.startswith(m + ".")), "?")


def accepted() -> dict[str, str]:
    """survivors.txt: `mutant-name  reason` lines; # comments."""
    out = {}
    if ACCEPTED.exists():
        for line in ACCEPTED.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                name, _, reason = line.partition(" ")
                out[name] = reason.strip()
    return out


def reach(modules: list[str]) -> None:
    """How many functions of each module the tests reach, and how many of
    those through a process a test started (tests/mutation/site/)."""
    try:
        stats = json.loads((ROOT / "mutants" / "mutmut-stats.json").read_text())
    except (OSError, ValueError):
        return
    credit_file = ROOT / "mutants" / "subprocess-credit.json"
    credited = json.loads(credit_file.read_text()) if credit_file.exists() else {}
    tests = stats["tests_by_mangled_function_name"]
    print(f"\n{'module':28} {'functions':>9} {'reached':>8} {'through a process':>18}")
    for m in modules:
        mine = [f for f in stats.get("function_hashes", {}) if f.rsplit(".", 1)[0] == m]
        reached = [f for f in mine if tests.get(f)]
        print(f"{m:28} {len(mine):9} {len(reached):8} {sum(f in credited for f in reached):18}")


def planted() -> bool:
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests/mutation/planted.py")], cwd=ROOT)
    try:
        return proc.wait() == 0
    finally:
        if proc.poll() is None:  # stopped: let it put the source back (SIGTERM, not SIGKILL)
            proc.terminate()
            proc.wait()


def main() -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that planted.py and mutmut below are stopped too
    if os.environ.get("PLANTED", "1") != "0" and not planted():
        return 1
    sample = int(os.environ.get("SAMPLE", "0"))
    seed = os.environ.get("SEED", "15")
    only = os.environ.get("MODULE", "")
    modules = [m for m in MODULES if only in m.rsplit(".", 1)[-1]]  # "ring" is not "uringserve"
    children = ["--max-children", os.environ.get("JOBS", str(os.cpu_count() or 1))]
    if not (ROOT / "mutants" / "mutmut-stats.json").exists():  # the mapping is made afresh
        for name in ("subprocess-credit.json", "stats-failures.txt"):
            (ROOT / "mutants" / name).unlink(missing_ok=True)
    # generate the mutants and the test mapping once (a name that matches
    # nothing stops mutmut after that), then run the ones wanted by name
    mutmut("run", *children, "no-such-mutant-name", check=False)
    failures = ROOT / "mutants" / "stats-failures.txt"
    if failures.exists():
        print(f"tests that failed in the stats run (they must pass in the clean run):\n{failures.read_text()}")
    status = results()
    names = sorted(n for n in status if module_of(n) in modules)
    reach(modules)
    chosen = names
    if sample:
        chosen = []
        for m in modules:
            mine = [n for n in names if module_of(n) == m]
            chosen += random.Random(f"{seed}:{m}").sample(mine, min(sample, len(mine)))
    # by name, and only those without a result: mutmut runs a mutant it is
    # given by name (or pattern) again, so a stopped run resumes only this way
    # (a mutant whose function changed has no result again; delete mutants/
    # when the tests changed)
    todo = [n for n in chosen if status[n] == "not checked"]
    print(f"SAMPLE={sample} SEED={seed}: {len(chosen)} mutants, {len(todo)} to run", flush=True)
    if todo:
        mutmut("run", *children, *todo, check=False)
    res = {n: s for n, s in results().items() if n in set(chosen)}
    # a timeout under load may be a slow test, not a hang: once more, alone
    timed_out = sorted(n for n, s in res.items() if s == "timeout")
    if timed_out:
        print(f"{len(timed_out)} mutants timed out; running them again", flush=True)
        mutmut("run", "--max-children", "1", *timed_out, check=False)
        res.update({n: s for n, s in results().items() if n in set(timed_out)})
    ok = accepted()
    head = ("module", "mutants", "killed", "survived", "timeout", "no tests", "suspicious", "other", "score")
    print("\n{:28} {:>8} {:>7} {:>9} {:>8} {:>9} {:>11} {:>6} {:>6}".format(*head))
    unexplained, odd = [], []
    for m in modules:
        mine = {n: s for n, s in res.items() if module_of(n) == m}
        count = {s: sum(v == s for v in mine.values()) for s in set(mine.values())}
        detected = sum(count.get(s, 0) for s in DETECTED)
        other = len(mine) - sum(count.get(s, 0) for s in ("killed", "timeout", *EXPLAIN))
        score = detected / len(mine) if mine else 0.0
        print(
            f"{m:28} {len(mine):8} {count.get('killed', 0):7} {count.get('survived', 0):9} {count.get('timeout', 0):8}"
            f" {count.get('no tests', 0):9} {count.get('suspicious', 0):11} {other:6} {score:6.0%}"
        )
        unexplained += [(n, s) for n, s in sorted(mine.items()) if s in EXPLAIN and n not in ok]
        odd += [(n, s) for n, s in sorted(mine.items()) if s not in DETECTED and s not in EXPLAIN]
    still = [n for n in timed_out if res.get(n) == "timeout"]
    if timed_out:
        print(f"\ntimed out: {len(timed_out)}, of which {len(still)} again when run alone (counted as killed)")
        for n in still:
            print(f"  {n}")
    for n, s in odd:
        print(f"  {n}: {s}" + ("  (detected)" if s in DETECTED else "  (not run: the run was cut short)"))
    stale = sorted(n for n in ok if res.get(n) in DETECTED)
    if stale:
        print(f"\n{len(stale)} mutants listed in {ACCEPTED.name} are killed now: remove their lines")
        for n in stale:
            print(f"  {n}")
    failed = False
    if unexplained:
        print(f"\n{len(unexplained)} mutants are neither killed nor explained in {ACCEPTED.name}:")
        for n, s in unexplained:
            print(f"  {n}: {s}    (mutmut show {n})")
        failed = True
    not_run = [n for n, s in odd if s not in DETECTED]
    if not_run:
        print(f"\n{len(not_run)} mutants were not run to the end")
        failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        if _mutmut is not None:
            end_group(_mutmut)
