"""A reload nobody notices: prefork workers drained under closed-loop
keep-alive load (wrk -t1 -c20: every connection sends its next request
microseconds after reading a response) lose no request and reset no
connection. A SIGHUP (a new generation, then the old one drains) and
--max-requests recycling (a worker drains and exits, the supervisor starts
its replacement) alike; with one listening socket shared by the workers and
with --reuse-port (one per worker slot, held by the supervisor and handed
to the slot's next worker, so its backlog is kept).

What broke before: the draining worker closed every keep-alive connection
that was idle at that instant, and under closed-loop load each one's next
request was already on its way: one read error (ECONNRESET) per
connection. A drain now answers that request with Connection: close and
closes only a connection quiet for DRAIN_GRACE (http/protocol.py).

The load is stopped by SIGINT (wrk prints its report then) once the events
the test waits for were printed by the server, not after a fixed time."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from typing import Any

import pytest
from conftest import PY, Proc, wait_until

WRK = shutil.which("wrk") or "/usr/bin/wrk"
CONNS = 20

pytestmark = pytest.mark.skipif(not os.path.exists(WRK), reason="wrk is not installed (make test's setup installs it)")

STARTED = re.compile(r"worker (\d+) \(slot \d+, generation (\d+)\) started")


def established(port: int) -> int:
    """Established connections to the server's port (the load's, once it runs)."""
    out = subprocess.run(
        ["ss", "-Htn", "state", "established", f"( sport = :{port} )"], capture_output=True, text=True, check=True
    ).stdout
    return len(out.splitlines())


class Wrk:
    """wrk -t1 -c20 until stopped (SIGINT: it stops and prints its report)."""

    def __init__(self, port: int) -> None:
        self.p = subprocess.Popen(
            ["setpriv", "--pdeathsig", "KILL", "--", WRK, "-t1", f"-c{CONNS}", "-d60s", f"http://127.0.0.1:{port}/"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def stop(self) -> dict[str, Any]:
        """Its report: requests, socket errors by kind, non-2xx responses."""
        self.p.send_signal(signal.SIGINT)
        out, _ = self.p.communicate(timeout=30)
        m = re.search(r"(\d+) requests in", out)
        assert m, out
        errors = dict.fromkeys(("connect", "read", "write", "timeout"), 0)
        e = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
        if e:
            errors = dict(zip(errors, map(int, e.groups()), strict=True))
        n = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        return {"requests": int(m.group(1)), "errors": errors, "non2xx": int(n.group(1)) if n else 0, "text": out}

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()


def pids_of(srv: Proc, generation: int) -> list[int]:
    return [int(m[1]) for m in STARTED.finditer(srv.output()) if int(m[2]) == generation]


def stopped(srv: Proc, pid: int, word: str = "stopped") -> bool:
    return f"worker {pid} {word}" in srv.output()


def serve(*extra: str) -> Proc:
    return Proc([PY, "-m", "uringserve", "run", "apps.http:app", "--port", "0", "--workers", "2", *extra])


def drained_under_load(srv: Proc, trigger: Any, done: Any) -> dict[str, Any]:
    """Closed-loop load on `srv`; `trigger()` once every connection is up,
    then until `done()`; then until the 20 connections are up again (on the
    workers that serve now) and the load is stopped: wrk's report."""
    wrk = Wrk(srv.port)
    try:
        assert wait_until(lambda: established(srv.port) >= CONNS, timeout=30), srv.output()
        trigger()
        assert wait_until(done, timeout=60), srv.output()
        assert wait_until(lambda: established(srv.port) >= CONNS, timeout=30), srv.output()
        assert wrk.p.poll() is None, "wrk ended before the drain did"
        return wrk.stop()
    finally:
        wrk.kill()


def assert_clean(report: dict[str, Any], srv: Proc) -> None:
    assert report["errors"] == dict.fromkeys(("connect", "read", "write", "timeout"), 0), report["text"]
    assert report["non2xx"] == 0, report["text"]
    assert report["requests"] > 1000, report["text"]
    assert "aborting" not in srv.output(), srv.output()


LISTENERS = {"shared": (), "reuse-port": ("--reuse-port",)}


@pytest.mark.parametrize(
    "loop, listener",
    [("uring", "shared"), ("uring", "reuse-port"), ("asyncio", "shared")],
)
def test_a_reload_under_load_loses_nothing(loop: str, listener: str) -> None:
    srv = serve("--loop", loop, *LISTENERS[listener])
    try:
        old = pids_of(srv, 0)
        assert len(old) == 2
        report = drained_under_load(
            srv,
            lambda: os.kill(srv.p.pid, signal.SIGHUP),
            lambda: "reload done" in srv.output() and all(stopped(srv, pid) for pid in old),
        )
        assert len(pids_of(srv, 1)) == 2
    finally:
        srv.stop()
    assert_clean(report, srv)


@pytest.mark.parametrize(
    "loop, listener",
    [("uring", "shared"), ("uring", "reuse-port"), ("asyncio", "reuse-port")],
)
def test_recycling_under_load_loses_nothing(loop: str, listener: str) -> None:
    """--max-requests: each worker drains and exits at its limit (SIGTERM's
    drain, by the worker itself), the supervisor starts its replacement."""
    srv = serve("--loop", loop, "--max-requests", "20000", *LISTENERS[listener])
    try:
        first = pids_of(srv, 0)
        assert len(first) == 2
        t0 = time.monotonic()

        def replaced() -> bool:
            # both first workers recycled, and their replacements ready
            if not all(stopped(srv, pid, "recycled") for pid in first):
                return False
            after = [p for p in pids_of(srv, 0) if p not in first]
            return len(after) >= 2 and all(f"worker {p} ready" in srv.output() for p in after)

        report = drained_under_load(srv, lambda: None, replaced)
        assert time.monotonic() - t0 < 90
    finally:
        srv.stop()
    assert_clean(report, srv)
