"""`make test-stress`: the whole suite, REPEAT times (default 3), with a
busy-looping process on every core, as on a loaded CI machine. Tests that
hope for timing instead of waiting on events fail here first. The hogs are
this script's own children and are ended by pid when it ends."""

from __future__ import annotations

import os
import subprocess
import sys


def main() -> int:
    repeat = int(os.environ.get("REPEAT", "3"))
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 1)]
    try:
        for i in range(1, repeat + 1):
            print(f"== stress run {i}/{repeat}, {len(hogs)} CPU hogs", flush=True)
            rc = subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *sys.argv[1:]]
            ).returncode
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
