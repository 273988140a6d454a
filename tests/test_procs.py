"""The test helpers' own promises: a server a test started never outlives
the test process, even one killed outright (a pytest or mutmut timeout)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from conftest import PY, ROOT, children, wait_until

SCRIPT = """
import sys
sys.path.insert(0, "tests")
from procs import Proc
srv = Proc([sys.executable, "-m", "uringserve", "run", "tests.worker_app:app", "--port", "0", "--workers", "2"])
print(srv.p.pid, flush=True)
sys.stdin.read()  # until the test kills this process
"""


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_a_server_dies_with_the_test_process_that_started_it() -> None:
    with subprocess.Popen(
        [PY, "-c", SCRIPT], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as tester:
        try:
            assert tester.stdout is not None
            server = int(tester.stdout.readline())
            workers = children(server)
            assert alive(server) and len(workers) == 2
        finally:
            os.kill(tester.pid, signal.SIGKILL)  # no stop(), no finalizer
    assert wait_until(lambda: not any(alive(p) for p in [server, *workers]), 20), "the server outlived its test"


if __name__ == "__main__":
    sys.exit("run with pytest")
