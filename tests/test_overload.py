"""Overload and abuse: a connection limit that pauses accepting without
dropping anyone, a peer that stops reading held to bounded memory, and
connection storms with resets that leave nothing behind."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
from conftest import Proc, until

import uringserve
from loadtest import build_plan, run
from uringserve.echo import Echo
from uringserve.server import Server


class Counted(Echo):
    """Echo that records how many of its kind are open at once."""

    open_now = peak = 0

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        Counted.open_now += 1
        Counted.peak = max(Counted.peak, Counted.open_now)

    def connection_lost(self, exc) -> None:
        super().connection_lost(exc)
        Counted.open_now -= 1


def test_connection_limit_pauses_accepting_and_drops_nobody() -> None:
    """max_connections=3 and 10 clients at once: 3 are served, the ring has
    no accept armed while they are open (the rest wait in the backlog, not
    refused), each close lets exactly one more in, and all 10 are served."""
    Counted.open_now = Counted.peak = 0
    loop = uringserve.new_event_loop()
    try:

        async def main() -> None:
            server = Server(Counted, max_connections=3)
            await server.start("127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(10)]
            for i, c in enumerate(clients):
                c.sendall(b"%d;" % i)

            answered: set[int] = set()
            closed: set[int] = set()

            def count() -> int:
                for i, c in enumerate(clients):
                    if i not in answered and i not in closed:
                        c.setblocking(False)
                        try:
                            if c.recv(64):
                                answered.add(i)
                        except BlockingIOError:
                            pass
                return len(answered)

            assert await until(lambda: count() == 3)
            stats = loop.ring_stats()
            assert stats["accepts"] == 3 and stats["accepts_inflight"] == 0  # nothing armed: nobody else comes in
            assert stats["accept_paused"] >= 1
            for step in range(7):
                done = min(answered - closed)
                clients[done].close()
                closed.add(done)
                want = 4 + step
                assert await until(lambda want=want: count() == want), f"step {step}: nobody was let in"
                assert loop.ring_stats()["accepts"] == 4 + step
            assert Counted.peak == 3
            for c in clients:
                c.close()
            await server.shutdown()
            assert loop.ring_stats()["accept_errors"] == 0

        loop.run_until_complete(asyncio.wait_for(main(), 30))
    finally:
        loop.close()


def test_connection_limit_is_refused_clearly_where_it_cannot_work() -> None:
    async def main(limit) -> None:
        await Server(Counted, max_connections=limit).start("127.0.0.1", 0)

    with pytest.raises(ValueError, match="needs the uring loop"):
        asyncio.run(main(3))
    loop = uringserve.new_event_loop()
    try:
        with pytest.raises(ValueError, match="positive number of connections"):
            loop.run_until_complete(main(0))
        with pytest.raises(ValueError, match="raise RingConfig.files"):
            loop.set_connection_limit(10**7)
    finally:
        loop.close()


def test_a_peer_that_sends_but_never_reads_is_held_to_bounded_memory() -> None:
    """The echo demo stops reading a peer whose echoes pile up; the peer's
    own sends then block. 64 MiB offered, the server's queue stays at its
    high-water mark plus one read; once the peer reads, every byte returns."""
    loop = uringserve.new_event_loop()
    try:

        async def main() -> None:
            server = Server(Echo)
            await server.start("127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            peer = socket.create_connection(("127.0.0.1", port))
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            pattern = bytes(range(256)) * 4096  # 1 MiB
            sent = 0
            done = threading.Event()

            def send() -> None:
                nonlocal sent
                peer.settimeout(0.5)
                try:
                    while sent < 64 * len(pattern):
                        sent += peer.send(pattern[sent % len(pattern) :])
                except TimeoutError:
                    pass  # blocked: the server stopped reading us
                done.set()

            threading.Thread(target=send, daemon=True).start()
            assert await until(done.is_set, 20)
            assert sent < 64 * len(pattern), "the server kept reading a peer that never reads"
            (conn,) = list(server.connections)
            queued = conn.transport.get_write_buffer_size()
            high = conn.transport.get_write_buffer_limits()[1]
            assert queued <= high + (1 << 20), (queued, high)
            # the peer reads now: everything it managed to send comes back in order
            received = bytearray()

            def read_all() -> None:
                peer.settimeout(10)
                while len(received) < sent:
                    received.extend(peer.recv(1 << 20))

            reader = threading.Thread(target=read_all, daemon=True)
            reader.start()
            await loop.run_in_executor(None, reader.join, 20)
            assert len(received) == sent
            assert all(
                received[i : i + len(pattern)] == pattern[: len(received) - i]
                for i in range(0, len(received), len(pattern))
            )
            peer.close()
            await server.shutdown()

        loop.run_until_complete(asyncio.wait_for(main(), 60))
    finally:
        loop.close()


def _stats(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=10) as r:
        return json.loads(r.read())


def test_a_connection_storm_with_resets_leaves_nothing_behind() -> None:
    """A connection per request (loadtest --no-keepalive) while other
    threads connect, send half a request and reset (SO_LINGER 0), or
    connect and close at once: the server answers the whole requests, and
    afterwards holds no slot, buffer or arena chunk and no more fds."""
    srv = Proc([sys.executable, "-m", "uringserve", "run", "apps.http:app", "--port", "0"])
    port = srv.port
    stop = threading.Event()
    resets = [0]

    def resetter(half: bool) -> None:
        linger = struct.pack("ii", 1, 0)
        while not stop.is_set():
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
                if half:
                    s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b"x" * 5000)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                s.close()
                resets[0] += 1
            except OSError:
                pass

    try:
        fds_before = len(os.listdir(f"/proc/{srv.p.pid}/fd"))
        threads = [threading.Thread(target=resetter, args=(h,), daemon=True) for h in (True, False)]
        for t in threads:
            t.start()
        res = run(build_plan(f"http://127.0.0.1:{port}/", conns=16, duration=1.5, keepalive=False))
        stop.set()
        for t in threads:
            t.join(10)
        # the last closes (lingering ones end within LINGER, 2 s) settle, then nothing is held
        deadline = time.monotonic() + 10
        while (stats := _stats(port))["slots_used"] > 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        fds_after = len(os.listdir(f"/proc/{srv.p.pid}/fd"))
    finally:
        srv.stop()
    assert res.requests > 200 and resets[0] > 50, (res.requests, resets[0])  # a storm even on a slow machine
    assert res.stats["errors"]["protocol"] == 0
    assert res.stats["by_class"][2] == res.requests
    assert stats["accepts"] >= res.requests + resets[0] - 16
    assert stats["slots_used"] <= 1 and stats["arena_in_use"] == 0 and stats["bufs_out"] <= 1, stats
    assert fds_after <= fds_before + 1, (fds_before, fds_after)  # the /stats connection at most


def test_slow_peers_are_timed_out_while_others_are_served() -> None:
    """40 slowloris peers (a head a byte at a time) and 40 slow-body peers
    hold connections while loadtest runs full speed on 8 others: every fast
    request is answered, none waits as long as the slow peers' timeout, and
    every slow peer gets its 408 at the timeout, not the default 60 s."""
    srv = Proc(
        [sys.executable, "-m", "uringserve", "run", "apps.http:app", "--port", "0"]
        + ["--header-timeout", "2", "--body-timeout", "2"]
    )
    port = srv.port
    answers: list[bytes] = []
    lock = threading.Lock()

    def slow(body: bool) -> None:
        s = socket.create_connection(("127.0.0.1", port), timeout=15)
        try:
            if body:
                s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nab")
            else:
                s.sendall(b"GET / HTTP/1.1\r\n")
            data = b""
            s.settimeout(0.2)
            while True:
                try:
                    chunk = s.recv(4096)
                except TimeoutError:
                    if not body:
                        s.sendall(b"X")  # a byte now and then does not extend the head's deadline
                    continue
                except OSError:
                    break
                if not chunk:
                    break
                data += chunk
        finally:
            s.close()
        with lock:
            answers.append(data)

    try:
        peers = [threading.Thread(target=slow, args=(i % 2 == 0,), daemon=True) for i in range(80)]
        for t in peers:
            t.start()
        res = run(build_plan(f"http://127.0.0.1:{port}/", conns=8, duration=1.5))
        for t in peers:
            t.join(15)
    finally:
        srv.stop()
    assert res.requests > 200 and res.stats["errors"]["timeout"] == 0
    assert res.stats["by_class"][2] == res.requests
    assert res.latency.get_max_value() < 1_500_000_000  # ns: nobody waited behind the slow peers' 2 s
    assert len(answers) == 80
    assert all(a.startswith(b"HTTP/1.1 408 ") for a in answers), {a[:40] for a in answers}


def test_a_low_rlimit_nofile_shrinks_the_table_and_everyone_is_served_in_turn() -> None:
    """ulimit -n 64: the fixed-file table is sized to it (32 connection
    slots after the listeners' reserve); 100 clients at once are all
    answered, the rest waiting in the backlog while the table is full."""
    # prlimit (util-linux) sets the limit and execs the server: the port is read from its banner
    srv = Proc(
        ["prlimit", "--nofile=64", "--", sys.executable, "-m", "uringserve", "run", "apps.http:app", "--port", "0"]
    )
    port = srv.port
    try:
        clients = [socket.create_connection(("127.0.0.1", port), timeout=20) for _ in range(100)]
        for c in clients:
            c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        replies = []
        for c in clients:
            data = b""
            while chunk := c.recv(4096):
                data += chunk
            replies.append(data)
            c.close()
        stats = _stats(port)
    finally:
        status = srv.stop()
    err = srv.output()
    assert status == 0, err
    assert all(r.startswith(b"HTTP/1.1 200 ") for r in replies)
    assert stats["slots_total"] == 32 and stats["accepts"] >= 100
    assert stats["accept_paused"] >= 1  # the table was full and accepting waited
    assert "Traceback" not in err, err


def test_a_rlimit_nofile_below_the_smallest_table_is_a_clear_error() -> None:
    p = subprocess.run(
        ["prlimit", "--nofile=16", "--", sys.executable, "-m", "uringserve", "run", "apps.http:app", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert p.returncode == 1
    assert "RLIMIT_NOFILE 16" in p.stderr and "ulimit -n" in p.stderr and "Traceback" not in p.stderr, p.stderr
