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

Removing a --reuse-port slot (SIGTTOU) steers new connections away from
its socket before its worker drains (reuseport.py), so its close resets
nothing queued there.

The load is stopped by SIGINT (wrk prints its report then) once the events
the test waits for were printed by the server, not after a fixed time.
Below the load tests, the drain's rules one connection at a time, in
process, on both loops."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from typing import Any

import pytest
from conftest import PY, Proc, until, wait_until

from uringserve import reuseport
from uringserve.http import HTTPServer, Request, Response, StreamingResponse, protocol
from uringserve.http.state import CLOSED, CLOSING, IDLE

WRK = shutil.which("wrk") or "/usr/bin/wrk"
CONNS = 20

needs_wrk = pytest.mark.skipif(not os.path.exists(WRK), reason="wrk is not installed (make test's setup installs it)")

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


@needs_wrk
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


@needs_wrk
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


# -- the drain's rules, one connection at a time, on both loops -----------------------------
H = b"Host: t\r\n"
GET = b"GET / HTTP/1.1\r\n" + H + b"\r\n"


class Client:
    """Blocking: exact bytes out, whole Content-Length or chunked responses in."""

    def __init__(self, port: int) -> None:
        self.s = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""

    def _more(self) -> bool:
        chunk = self.s.recv(65536)
        self.buf += chunk
        return bool(chunk)

    def response(self) -> bytes:
        while b"\r\n\r\n" not in self.buf:
            assert self._more(), f"the connection ended before a response: {self.buf!r}"
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        m = re.search(rb"(?i)\r\ncontent-length: (\d+)", head)
        end = b"\r\n0\r\n\r\n"
        if m is not None:
            while len(self.buf) < int(m.group(1)):
                assert self._more()
            body, self.buf = self.buf[: int(m.group(1))], self.buf[int(m.group(1)) :]
        else:
            while end not in self.buf:
                assert self._more()
            i = self.buf.index(end) + len(end)
            body, self.buf = self.buf[:i], self.buf[i:]
        return head + b"\r\n\r\n" + body

    def at_eof(self) -> bool:
        return not self._more() and not self.buf

    def close(self) -> None:
        self.s.close()


async def gated(go: asyncio.Event) -> Any:
    yield b"first;"
    await go.wait()
    yield b"last"


def one_server(h: Any, handler: Any, scenario: Any) -> Any:
    async def main() -> Any:
        srv = HTTPServer(handler)
        await srv.start("127.0.0.1", 0)
        try:
            return await scenario(srv, srv.sockets[0].getsockname()[1])
        finally:
            await srv.shutdown(timeout=5)

    return h.run(main(), timeout=60)


def hello(req: Request) -> Any:
    return Response(b"hello")


def test_a_connection_quiet_for_the_grace_closes_when_the_drain_begins(h: Any, monkeypatch: Any) -> None:
    """Idle for DRAIN_GRACE since its last response: nothing is on its way,
    so the drain closes it at once (the drain's first step, before any
    loop turn)."""
    monkeypatch.setattr(protocol, "DRAIN_GRACE", 0.2)

    async def scenario(srv: HTTPServer, port: int) -> Any:
        c = await asyncio.to_thread(Client, port)
        await asyncio.to_thread(c.s.sendall, GET)
        await asyncio.to_thread(c.response)
        (conn,) = list(srv.connections)
        answered = time.monotonic()
        # the behaviour under test is the connection's quiet age: it must pass
        assert await until(lambda: conn.state is IDLE and time.monotonic() - answered > 0.3)
        stop = asyncio.ensure_future(srv.shutdown(timeout=5))
        await asyncio.sleep(0)
        state = conn.state
        await stop
        assert await asyncio.to_thread(c.at_eof)
        c.close()
        return state

    assert one_server(h, hello, scenario) in (CLOSING, CLOSED)


def test_a_connection_just_answered_gets_its_next_request_answered_with_close(h: Any) -> None:
    """Answered microseconds ago: the next request may be on its way. The
    drain leaves the connection open; the request that comes is answered,
    with Connection: close, and then the connection ends."""

    async def scenario(srv: HTTPServer, port: int) -> None:
        c = await asyncio.to_thread(Client, port)
        await asyncio.to_thread(c.s.sendall, GET)
        await asyncio.to_thread(c.response)
        (conn,) = list(srv.connections)
        assert await until(lambda: conn.state is IDLE)
        stop = asyncio.ensure_future(srv.shutdown(timeout=5))
        await asyncio.sleep(0)
        assert conn.state is IDLE  # not closed under the client's next request
        await asyncio.to_thread(c.s.sendall, GET)
        resp = await asyncio.to_thread(c.response)
        assert resp.startswith(b"HTTP/1.1 200 ") and b"connection: close" in resp.lower(), resp
        assert await asyncio.to_thread(c.at_eof)
        c.close()
        await stop

    one_server(h, hello, scenario)


def test_a_drain_closes_a_connection_that_stays_quiet_after_the_grace(h: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr(protocol, "DRAIN_GRACE", 0.2)

    async def scenario(srv: HTTPServer, port: int) -> None:
        c = await asyncio.to_thread(Client, port)
        await asyncio.to_thread(c.s.sendall, GET)
        await asyncio.to_thread(c.response)
        t0 = time.monotonic()
        await srv.shutdown(timeout=5)  # ends when the connection closed: the grace, not the timeout
        assert time.monotonic() - t0 < 4
        assert await asyncio.to_thread(c.at_eof)
        c.close()

    one_server(h, hello, scenario)


def test_a_response_that_promised_keep_alive_before_the_drain_gets_one_more_request(h: Any) -> None:
    """A streamed response whose head went out (kept alive) before the drain
    began: its client, closed-loop, sends its next request once the
    response ends; that request is answered with Connection: close, not met
    by a close."""
    go: list[asyncio.Event] = []

    def handler(req: Request) -> Any:
        if req.raw_path == b"/stream":
            go.append(asyncio.Event())
            return StreamingResponse(gated(go[-1]))
        return Response(b"next")

    async def scenario(srv: HTTPServer, port: int) -> None:
        c = await asyncio.to_thread(Client, port)
        await asyncio.to_thread(c.s.sendall, b"GET /stream HTTP/1.1\r\n" + H + b"\r\n")
        assert await until(lambda: bool(go))
        stop = asyncio.ensure_future(srv.shutdown(timeout=5))
        await asyncio.sleep(0)
        go[0].set()
        first = await asyncio.to_thread(c.response)
        assert b"connection: close" not in first.lower() and first.endswith(b"last\r\n0\r\n\r\n"), first
        await asyncio.to_thread(c.s.sendall, GET)
        resp = await asyncio.to_thread(c.response)
        assert b"connection: close" in resp.lower() and resp.endswith(b"next"), resp
        assert await asyncio.to_thread(c.at_eof)
        c.close()
        await stop

    one_server(h, handler, scenario)


@needs_wrk
def test_removing_a_reuse_port_slot_under_load_loses_nothing() -> None:
    """SIGTTOU with --reuse-port: the removed slot's socket closes once its
    worker has drained. Without steering, the kernel kept hashing new
    connections to it while the worker no longer accepted, and its close
    reset them (4 read errors under wrk -c20)."""
    srv = serve("--reuse-port")
    try:
        (last,) = [pid for pid in pids_of(srv, 0) if f"worker {pid} (slot 1," in srv.output()]
        report = drained_under_load(srv, lambda: os.kill(srv.p.pid, signal.SIGTTOU), lambda: stopped(srv, last))
    finally:
        srv.stop()
    assert_clean(report, srv)


def test_steered_connections_reach_only_the_first_sockets_of_the_group() -> None:
    """reuseport.steer(sock, 2) on a group of three: every new connection
    is queued on the first two; unsteer() gives the kernel's hash back."""
    socks = []
    for _ in range(3):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(("127.0.0.1", socks[0].getsockname()[1] if socks else 0))
        s.listen(128)
        s.setblocking(False)
        socks.append(s)
    port = socks[0].getsockname()[1]

    def spread(n: int) -> list[int]:
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
        counts = []
        for s in socks:
            k = 0
            while True:
                try:
                    c, _ = s.accept()
                except BlockingIOError:
                    break
                c.close()
                k += 1
            counts.append(k)
        for c in clients:
            c.close()
        return counts

    try:
        reuseport.steer(socks[0], 2)
        counts = spread(60)
        assert sum(counts) == 60 and counts[2] == 0 and min(counts[:2]) > 0, counts
        reuseport.unsteer(socks[0])
        reuseport.unsteer(socks[0])  # nothing attached: no error
        assert spread(60)[2] > 0
        with pytest.raises(ValueError):
            reuseport.steer(socks[0], 0)
    finally:
        for s in socks:
            s.close()
