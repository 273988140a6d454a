"""`make mutate`: mutation testing of the modules the test suite must guard.

1. tests/mutation/planted.py: the bugs found by hand are planted again and
   each must fail a test.
2. mutmut mutates uringserve/http/protocol.py, http/parser.py, transport.py,
   ring.py, the server layer (server/connection.py, lifecycle.py,
   listeners.py) and resp/parser.py (pyproject.toml [tool.mutmut]) and runs,
   per mutant, the selected tests that reach the mutated function.
3. The score per module is printed; a surviving mutant must be listed in
   tests/mutation/survivors.txt with the reason it is equivalent or
   unreachable, or the run fails.

A full run takes hours on two cores (a surviving mutant costs every test
that reaches its function). `SAMPLE=N make mutate` runs N mutants per
module, drawn with a fixed seed, for a score in minutes; `MODULE=parser`
(a substring of the module name) narrows it. mutmut keeps its results in
mutants/, so a run that is stopped resumes where it was.
"""

from __future__ import annotations

import os
import pathlib
import random
import re
import signal
import subprocess
import sys

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
]
ACCEPTED = pathlib.Path(__file__).with_name("survivors.txt")


def mutmut(*args: str, check: bool = True) -> str:
    proc = subprocess.run([*MUTMUT, *args], cwd=ROOT, capture_output=True, text=True)
    if check and proc.returncode != 0:
        sys.exit(f"mutmut {' '.join(args[:3])} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    if "failed to collect stats" in proc.stdout or "Failed to run clean test" in proc.stdout:
        # the unmutated suite must pass first; say why it did not
        sys.exit(f"mutmut could not run the clean tests:\n{proc.stdout[-4000:]}")
    return proc.stdout


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


def main() -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that planted.py below is stopped too
    planted = subprocess.Popen([sys.executable, str(ROOT / "tests/mutation/planted.py")], cwd=ROOT)
    try:
        if planted.wait():
            return 1
    finally:
        if planted.poll() is None:  # stopped: let it put the source back (SIGTERM, not SIGKILL)
            planted.terminate()
            planted.wait()
    sample = int(os.environ.get("SAMPLE", "0"))
    only = os.environ.get("MODULE", "")
    modules = [m for m in MODULES if only in m.rsplit(".", 1)[1]]  # "ring" is not "uringserve"
    children = ["--max-children", os.environ.get("JOBS", str(os.cpu_count() or 1))]
    if sample:
        # generate the mutants and the test mapping once (a name that matches
        # nothing stops mutmut after that), then draw the sample from them
        mutmut("run", *children, "no-such-mutant-name", check=False)
        names = [n for n in results() if module_of(n) in modules]
        rng = random.Random(15)
        chosen = []
        for m in modules:
            mine = sorted(n for n in names if module_of(n) == m)
            chosen += rng.sample(mine, min(sample, len(mine)))
        mutmut("run", *children, *chosen, check=False)
        res = {n: s for n, s in results().items() if n in set(chosen)}
    else:
        globs = [m + ".*" for m in modules]
        mutmut("run", *children, *globs, check=False)
        res = {n: s for n, s in results().items() if module_of(n) in modules}
    ok = accepted()
    print(f"\n{'module':28} {'mutants':>8} {'killed':>7} {'survived':>9} {'timeout':>8} {'other':>6} {'score':>6}")
    unexplained = []
    for m in modules:
        mine = {n: s for n, s in res.items() if module_of(n) == m}
        killed = sum(s == "killed" for s in mine.values())
        timeout = sum(s == "timeout" for s in mine.values())
        survived = [n for n, s in mine.items() if s == "survived"]
        other = len(mine) - killed - timeout - len(survived)
        done = killed + timeout + len(survived)
        score = (killed + timeout) / done if done else 0.0
        print(f"{m:28} {len(mine):8} {killed:7} {len(survived):9} {timeout:8} {other:6} {score:6.0%}")
        unexplained += [n for n in survived if n not in ok]
    if unexplained:
        print(f"\n{len(unexplained)} surviving mutants are neither killed nor explained in {ACCEPTED.name}:")
        for n in unexplained:
            print(f"  {n}    (mutmut show {n})")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
