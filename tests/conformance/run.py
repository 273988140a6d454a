"""Run CPython's own test_asyncio modules against UringEventLoop (and the
stdlib loop, for the baseline), counting the tests that really ran on the
loop under test.

    python tests/conformance/run.py [--loop uring|asyncio] [--modules a,b,...]

Most of those test classes build their loops themselves
(asyncio.SelectorEventLoop(), the default policy, new_event_loop()), so a
policy alone would not reach them: the loop class is swapped in where they
look it up. A test counts as run on the loop if it created at least one.
Failures are checked against expected_failures.txt; the exit status is
non-zero when an unexpected failure appears or an expected one passes.
Needs CPython's test package (Debian: libpython3.11-testsuite).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import unittest
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODULES = [
    "test_events",
    "test_buffered_proto",
    "test_server",
    "test_streams",
    "test_sock_lowlevel",
    "test_sslproto",
    "test_ssl",
    "test_sendfile",
    "test_tasks",
    "test_taskgroups",
    "test_timeouts",
    "test_waitfor",
    "test_locks",
    "test_queues",
    "test_futures2",
    "test_context",
    "test_threads",
]


def expected() -> dict[str, str]:
    out = {}
    for line in (HERE / "expected_failures.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            test_id, reason = (x.strip() for x in line.split("|", 1))
            out[test_id] = reason
    return out


def install(loop_name: str, current: list, ran_on: set) -> None:
    base = asyncio.unix_events.SelectorEventLoop
    if loop_name == "uring":
        import uringserve

        base = uringserve.UringEventLoop

    class CountingLoop(base):  # type: ignore[misc, valid-type]
        def __init__(self, selector=None):  # tests may pass a selector; a ring needs none
            if base is asyncio.unix_events.SelectorEventLoop:
                super().__init__(selector)
            else:
                super().__init__()
            ran_on.add(current[0])

    asyncio.SelectorEventLoop = CountingLoop
    asyncio.unix_events.SelectorEventLoop = CountingLoop
    asyncio.DefaultEventLoopPolicy._loop_factory = CountingLoop


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--loop", choices=["uring", "asyncio"], default="uring")
    p.add_argument("--modules", default=",".join(MODULES))
    args = p.parse_args()
    current: list = [None]
    ran_on: set = set()
    install(args.loop, current, ran_on)

    class Result(unittest.TextTestResult):
        def startTest(self, test: unittest.TestCase) -> None:
            current[0] = test.id()
            super().startTest(test)

    exp = expected() if args.loop == "uring" else {}
    totals = {"run": 0, "on_loop": 0, "failed": 0, "skipped": 0}
    unexpected, fixed = [], []
    print(f"loop under test: {args.loop}")
    print(f"{'module':22} {'run':>5} {'on loop':>8} {'failed':>7} {'skipped':>8} {'secs':>6}")
    for mod in args.modules.split(","):
        t0 = time.monotonic()
        suite = unittest.defaultTestLoader.loadTestsFromName(f"test.test_asyncio.{mod}")
        before = set(ran_on)
        with open("/dev/null", "w") as devnull:
            res = unittest.TextTestRunner(stream=devnull, resultclass=Result, verbosity=0).run(suite)
        failed = {t.id().split("test_asyncio.", 1)[1] for t, _ in res.failures + res.errors}
        on_loop = len(ran_on - before)
        for test_id in sorted(failed - set(exp)):
            unexpected.append(test_id)
        for test_id in sorted(t for t in exp if t.startswith(mod + ".") and t not in failed):
            fixed.append(test_id)
        print(
            f"{mod:22} {res.testsRun:5} {on_loop:8} {len(failed):7} {len(res.skipped):8} {time.monotonic() - t0:6.1f}"
        )
        totals["run"] += res.testsRun
        totals["on_loop"] += on_loop
        totals["failed"] += len(failed)
        totals["skipped"] += len(res.skipped)
        asyncio.set_event_loop_policy(None)
    print(f"{'total':22} {totals['run']:5} {totals['on_loop']:8} {totals['failed']:7} {totals['skipped']:8}")
    print(f"expected failures listed: {len(exp)}")
    for test_id in unexpected:
        print(f"UNEXPECTED FAILURE: {test_id}")
    for test_id in fixed:
        print(f"EXPECTED FAILURE NOW PASSES (remove it from the list): {test_id}")
    return 1 if unexpected or fixed else 0


if __name__ == "__main__":
    sys.exit(main())
