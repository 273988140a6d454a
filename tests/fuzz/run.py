"""Run the fuzz harnesses: short bounded runs for `make test`
(tests/test_fuzz.py), long ones for `make fuzz`.

    python tests/fuzz/run.py [--seconds N] [--runs N] [--keep] [TARGET ...]

Each target starts from its corpus (tests/fuzz/corpus/<target>/) and first
replays its regression inputs (tests/fuzz/regressions/<target>/: every crash
found, kept). Without --keep the corpus is copied to a temporary folder, so
a test run leaves the repository as it was; with --keep (make fuzz) new
inputs that reach new code are added to the corpus and crashes are written
to tests/fuzz/crashes/. The exit status is non-zero if any target failed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
TARGETS = ["http_request", "resp_request", "native_parsers", "transport", "ws_frames", "tls_records"]


# the targets whose C runs under ASan: their own parsers' module, or the whole core (the ring included)
ASAN_PARSERS = {"native_parsers"}
ASAN_CORE = {"tls_records"}


def env_for(target: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if target in ASAN_PARSERS | ASAN_CORE:
        sys.path.insert(0, str(ROOT))
        from tests.fuzz import native_build

        if target in ASAN_CORE:
            native_build.build_core()
            env["URINGSERVE_FUZZ_ASAN_CORE"] = "1"  # the harness loads it (native_build.load_core)
        else:
            native_build.build()
        env["LD_PRELOAD"] = native_build.asan_preload()
        env["ASAN_OPTIONS"] = "detect_leaks=0:allocator_may_return_null=1"
    return env


def run(target: str, seconds: int, runs: int, keep: bool) -> int:
    corpus = HERE / "corpus" / target
    regressions = sorted((HERE / "regressions" / target).glob("*"))
    env = env_for(target)
    harness = [sys.executable, str(HERE / f"{target}.py")]
    if regressions:  # each crash once more: they must pass now
        r = subprocess.run([*harness, *map(str, regressions)], env=env, capture_output=True, text=True)
        if r.returncode:
            print(f"{target}: a regression input fails again\n{r.stderr[-3000:]}", file=sys.stderr)
            return r.returncode
    with tempfile.TemporaryDirectory(prefix=f"fuzz-{target}-") as tmp:
        work = corpus if keep else Path(tmp) / "corpus"
        if not keep:
            shutil.copytree(corpus, work)
        crashes = HERE / "crashes" if keep else Path(tmp)
        crashes.mkdir(exist_ok=True)
        args = [
            *harness,
            f"-max_total_time={seconds}",
            f"-runs={runs}",
            "-timeout=20",  # an input that takes this long has hung
            "-rss_limit_mb=4096",
            f"-artifact_prefix={crashes}/{target}-",
            "-print_final_stats=1",
            str(work),
        ]
        r = subprocess.run(args, env=env, capture_output=True, text=True)
        stats = [line for line in r.stderr.splitlines() if line.startswith(("stat::number_of_executed_units", "#"))]
        done = next((line for line in reversed(stats) if "DONE" in line or "stat::number" in line), "")
        print(f"{target}: exit {r.returncode} {done}")
        if r.returncode:
            tail = "\n".join(line for line in r.stderr.splitlines() if not line.startswith("INFO: Instrumenting"))
            print(tail[-4000:], file=sys.stderr)
        return r.returncode


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("targets", nargs="*", metavar="TARGET", help=f"of {', '.join(TARGETS)} (default: all)")
    p.add_argument("--seconds", type=int, default=60, help="per target")
    p.add_argument("--runs", type=int, default=-1, help="inputs per target (-1: until --seconds)")
    p.add_argument("--keep", action="store_true", help="grow the corpus in the repository, keep crashes")
    args = p.parse_args()
    unknown = set(args.targets) - set(TARGETS)
    if unknown:
        p.error(f"unknown target(s) {', '.join(sorted(unknown))}: one of {', '.join(TARGETS)}")
    args.targets = args.targets or TARGETS
    failed = [t for t in args.targets if run(t, args.seconds, args.runs, args.keep)]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
