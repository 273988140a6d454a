"""`make test-stress`: the whole suite, REPEAT times (default 3) in a row,
with a busy-looping process on every core this process may run on, as on a
loaded CI machine. Tests that hope for timing instead of waiting on events
fail here first. The hogs run at the tests' own priority (no nice: the
tests get the share a loaded machine leaves them), are checked alive before
each run, and are this script's own children, ended by pid when it ends:
also when it is stopped by SIGTERM or SIGINT, and by the kernel
(PR_SET_PDEATHSIG) if it is killed outright."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from procs import die_with_parent  # tests/ is this script's own directory, first on sys.path


def stopped(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through main's finally: the hogs are ended


def main() -> int:
    repeat = int(os.environ.get("REPEAT", "3"))
    cores = len(os.sched_getaffinity(0))  # not os.cpu_count(): a container or taskset may give fewer
    signal.signal(signal.SIGTERM, stopped)
    signal.signal(signal.SIGINT, stopped)
    hogs = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"], preexec_fn=die_with_parent) for _ in range(cores)
    ]
    try:
        for i in range(1, repeat + 1):
            dead = [h.pid for h in hogs if h.poll() is not None]
            if dead:
                print(f"== CPU hogs {dead} ended: the load is not what it claims", flush=True)
                return 1
            print(f"== stress run {i}/{repeat}, {len(hogs)} CPU hogs on {cores} cores", flush=True)
            start = time.monotonic()
            rc = subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--durations=15", *sys.argv[1:]]
            ).returncode
            print(f"== stress run {i} took {time.monotonic() - start:.0f} s", flush=True)
            if rc:
                print(f"== stress run {i} failed")
                return rc
        print(f"== {repeat} stress runs passed")
        return 0
    finally:
        for h in hogs:
            h.kill()
            h.wait()


if __name__ == "__main__":
    sys.exit(main())
