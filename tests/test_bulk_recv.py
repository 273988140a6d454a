"""Bulk receive: a connection whose reads fill the provided buffers takes
its data in memory handed to the protocol (fresh bytes for a Protocol, its
own get_buffer() for a BufferedProtocol) -- uringserve/bulk.py, conn.c.

What the asyncio contract says (byte-exact, ordered data, no data after
pause_reading(), EOF after the data, connection_lost once) is checked on the
stdlib loop and on UringEventLoop alike; on the uring loop the ring's
counters also show which receive path the data took, and that the memory
parked for bulk receives is bounded and given back.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import socket
import struct
import subprocess
import sys
import threading
from typing import Any

import pytest
from conftest import LoopHarness, until

import uringserve
from uringserve import faults
from uringserve.ring import BULK_READ, RingConfig

MiB = 1 << 20


def payload(n: int, seed: int = 7) -> bytes:
    return random.Random(seed).randbytes(n)


def stats(loop: asyncio.AbstractEventLoop) -> dict[str, int]:
    return loop.ring_stats() if hasattr(loop, "ring_stats") else {}


def parked_memory(loop: asyncio.AbstractEventLoop) -> int:
    return len(loop.ring.bulk) if hasattr(loop, "ring") else 0


class Sink(asyncio.Protocol):
    """Hashes what arrives, in order; records what the contract forbids."""

    def __init__(self) -> None:
        self.h = hashlib.sha256()
        self.n = 0
        self.events: list[Any] = []
        self.paused = False
        self.bad: list[str] = []
        self.lost = asyncio.get_event_loop().create_future()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if type(data) is not bytes:
            self.bad.append(f"data_received got {type(data).__name__}")
        if self.paused:
            self.bad.append("data_received while paused")
        if "eof" in self.events:
            self.bad.append("data after EOF")
        self.h.update(data)
        self.n += len(data)
        self.after(len(data))

    def after(self, n: int) -> None:
        pass

    def eof_received(self) -> bool:
        self.events.append("eof")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append(("lost", type(exc).__name__ if exc else None))
        if not self.lost.done():
            self.lost.set_result(exc)


class BufferedSink(Sink, asyncio.BufferedProtocol):
    """A BufferedProtocol: get_buffer() returns what `sizes` says, each call
    a new region of its own bytearray (sizes=None: one 1 MiB buffer)."""

    def __init__(self, sizes: list[int] | None = None) -> None:
        super().__init__()
        self.sizes = sizes
        self.calls = 0
        self.buf = bytearray(4 * MiB)
        self.view: memoryview | None = None

    def get_buffer(self, sizehint: int) -> Any:
        if self.paused:
            self.bad.append("get_buffer while paused")
        if self.sizes is None:
            self.view = memoryview(self.buf)[: 1 * MiB]
        else:
            size = self.sizes[self.calls % len(self.sizes)]
            start = (self.calls * 4099) % (len(self.buf) - size)  # a different region each call
            self.view = memoryview(self.buf)[start : start + size]
        self.calls += 1
        return self.view

    def buffer_updated(self, nbytes: int) -> None:
        if self.paused:
            self.bad.append("buffer_updated while paused")
        assert self.view is not None
        self.h.update(self.view[:nbytes])
        self.n += nbytes
        self.view = None  # the next buffer_updated must follow a new get_buffer
        self.after(nbytes)


def send_random_writes(port: int, data: bytes, seed: int = 1, small: bool = True) -> threading.Thread:
    """A peer in a thread: `data` in writes of random sizes (half of them 1..300 B
    unless not `small`, the others up to 300 KiB), then FIN."""
    err: list[BaseException] = []

    def run() -> None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
                rnd = random.Random(seed)
                i = 0
                while i < len(data):
                    k = rnd.randint(1, 300 * 1024)
                    if small and rnd.random() < 0.5:
                        k = rnd.randint(1, 300)
                    s.sendall(data[i : i + k])
                    i += k
                s.shutdown(socket.SHUT_WR)
                s.recv(1)  # until the server closes
        except BaseException as exc:  # the test reads it
            err.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.err = err  # type: ignore[attr-defined]
    t.start()
    return t


async def serve(loop: asyncio.AbstractEventLoop, factory: Any) -> tuple[asyncio.AbstractServer, int, list[Any]]:
    made: list[Any] = []

    def make() -> Any:
        p = factory()
        made.append(p)
        return p

    server = await loop.create_server(make, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], made


async def stop(server: asyncio.AbstractServer) -> None:
    server.close()
    await server.wait_closed()


def transfer(h: Any, factory: Any, size: int, small: bool = True) -> tuple[Any, dict[str, int]]:
    data = payload(size)

    async def main() -> Any:
        server, port, made = await serve(h.loop, factory)
        peer = send_random_writes(port, data, small=small)
        await until(lambda: made, 10)
        p = made[0]
        await asyncio.wait_for(p.lost, 60)
        await asyncio.get_running_loop().run_in_executor(None, peer.join, 10)
        assert not peer.err, peer.err
        await stop(server)
        while getattr(p, "successor", None):  # set_protocol's chain: the last one has the count
            p = p.successor
        return p

    p = h.run(main(), timeout=90)
    assert p.n == len(data)
    assert p.h.digest() == hashlib.sha256(data).digest()  # every byte, in order
    assert p.events == ["eof", ("lost", None)]
    assert not p.bad, p.bad
    return p, stats(h.loop)


def assert_given_back(loop: asyncio.AbstractEventLoop) -> None:
    s = stats(loop)
    if s:
        assert s["bulk_parked"] == 0
        assert parked_memory(loop) == 0
        assert s["slots_used"] == 0


# -- byte-exact large transfers --------------------------------------------------


def test_protocol_64mib_random_writes(h) -> None:
    _, s = transfer(h, Sink, 64 * MiB)
    if h.uring:
        assert s["bulk_recvs"] > 0 and s["bulk_switches"] > 0
        # much of it came in bulk (half the writes are small: what arrives
        # alone is a short read, taken through the buffer ring)
        assert s["bulk_recv_bytes"] > 8 * MiB
        assert s["bulk_recv_bytes"] + s["pbuf_recv_bytes"] == 64 * MiB
        assert 0 < s["bulk_parked_peak"] <= BULK_READ
    assert_given_back(h.loop)


def test_buffered_protocol_64mib(h) -> None:
    p, s = transfer(h, BufferedSink, 64 * MiB)
    if h.uring:
        assert s["bulk_recv_bytes"] > 8 * MiB
        assert s["bulk_recv_bytes"] + s["pbuf_recv_bytes"] == 64 * MiB
    assert_given_back(h.loop)


def test_buffered_protocol_small_buffers(h) -> None:
    """get_buffer() smaller than a provided buffer: the ring's path fills many
    of them from each read; bulk is declined, not forced into tiny reads."""
    p, s = transfer(h, lambda: BufferedSink([1000, 333, 4096]), 8 * MiB)
    if h.uring:
        assert s["bulk_switches"] > 0  # the core asked ...
        assert s["bulk_recvs"] == 0  # ... and was declined
    assert_given_back(h.loop)


def test_buffered_protocol_different_buffers_each_call(h) -> None:
    """Each get_buffer() returns another region of another size: the bytes
    land where the latest call said, whichever path they take."""
    p, s = transfer(h, lambda: BufferedSink([300_000, 20_000, 70_000, 1 * MiB, 17_000, 500_000]), 32 * MiB)
    if h.uring:
        assert s["bulk_recvs"] > 0
    assert_given_back(h.loop)


# -- set_protocol() while a bulk receive is armed ----------------------------------


def _switching(first: str, every: int, switches: list[bool]) -> Any:
    """A protocol of kind `first` ("plain" or "buffered") that hands the
    connection to a new protocol of the other kind (set_protocol) after each
    `every` bytes, carrying the hash and the count over; `switches` records,
    per switch, whether a bulk receive was armed at that moment."""

    def make(kind: str) -> Any:
        base = Sink if kind == "plain" else BufferedSink

        class Switching(base):  # type: ignore[valid-type, misc]
            replaced = False
            pending = False

            def after(self, n: int) -> None:
                if self.replaced:
                    self.bad.append(f"{kind} protocol called after set_protocol")
                elif not self.pending and self.n // every != (self.n - n) // every:
                    # between the loop's events, as an upgrade does it: the
                    # bulk receive this read re-armed is in flight then
                    self.pending = True
                    asyncio.get_running_loop().call_soon(self.switch)

            def switch(self) -> None:
                if self.transport.is_closing():
                    return
                self.replaced = True
                new = make("buffered" if kind == "plain" else "plain")
                new.h, new.n, new.lost, new.transport = self.h, self.n, self.lost, self.transport
                new.bad, new.events = self.bad, self.events
                loop = asyncio.get_running_loop()
                switches.append(bool(getattr(loop, "ring", None) and loop.ring.bulk))
                self.successor = new
                self.transport.set_protocol(new)

        return Switching()

    return lambda: make(first)


@pytest.mark.parametrize("first", ["plain", "buffered"])
def test_set_protocol_while_bulk_armed(h, first) -> None:
    """An upgrade (HTTP -> WebSocket, start_tls) replaces the protocol while a
    bulk receive may be armed into the old one's memory: what lands there is
    the new protocol's, as bytes or through its own get_buffer(), byte-exact
    and in order, both directions, on both loops."""
    switches: list[bool] = []
    _, s = transfer(h, _switching(first, 1 * MiB, switches), 24 * MiB, small=False)
    assert len(switches) >= 20
    if h.uring:
        assert s["bulk_recvs"] > 0
        assert any(switches), "no switch found a bulk receive armed: the test proves nothing"
    assert_given_back(h.loop)


class CompactingSink(Sink, asyncio.BufferedProtocol):
    """A BufferedProtocol over one bytearray that get_buffer() compacts (drops
    what was consumed) and grows to 256 KiB free: a resize, which raises
    BufferError while any view of the bytearray is still exported."""

    def __init__(self, free: int = 256 * 1024) -> None:
        super().__init__()
        self.buf = bytearray()
        self.end = 0
        self.free = free

    def get_buffer(self, sizehint: int) -> Any:
        self.h.update(memoryview(self.buf)[: self.end])
        del self.buf[: self.end]
        self.end = 0
        self.buf.extend(bytes(self.free - len(self.buf)))
        return self.buf

    def buffer_updated(self, nbytes: int) -> None:
        self.end += nbytes
        self.n += nbytes

    def eof_received(self) -> bool:
        self.h.update(memoryview(self.buf)[: self.end])
        self.end = 0
        return super().eof_received()


@pytest.mark.parametrize("free", [256 * 1024, 1000])
def test_buffered_protocol_resizing_its_buffer_in_get_buffer(h, free) -> None:
    """The transport lets go of the last get_buffer()'s memory before it asks
    for the next, so a protocol may resize its bytearray there (asyncio's
    loops allow it): after a bulk receive (256 KiB free), and between the
    get_buffer() calls that one provided buffer fills (1000 B free)."""
    _, s = transfer(h, lambda: CompactingSink(free), 16 * MiB, small=False)
    if h.uring and free > BULK_READ // 2:
        assert s["bulk_recvs"] > 0
    assert_given_back(h.loop)


# -- the switch, both ways --------------------------------------------------------


class EchoSmallCountBig(Sink):
    """Echoes what arrives while `echo` is set; counts everything."""

    echo = False

    def after(self, n: int) -> None:
        pass

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.echo:
            self.transport.write(data)


def test_switch_bulk_small_bulk(h) -> None:
    big = payload(8 * MiB, 3)
    big2 = payload(8 * MiB, 4)
    counts: dict[str, dict[str, int]] = {}

    async def main() -> Sink:
        server, port, made = await serve(h.loop, EchoSmallCountBig)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await until(lambda: made, 10)
        p = made[0]
        writer.write(big)
        await writer.drain()
        assert await until(lambda: p.n == len(big), 30)
        counts["bulk1"] = stats(h.loop)
        p.echo = True
        for i in range(200):
            msg = b"%05d" % i * 20
            writer.write(msg)
            assert await reader.readexactly(len(msg)) == msg
        p.echo = False
        counts["small"] = stats(h.loop)
        writer.write(big2)
        await writer.drain()
        assert await until(lambda: p.n == len(big) + 200 * 100 + len(big2), 30)
        counts["bulk2"] = stats(h.loop)
        writer.close()
        await writer.wait_closed()
        await asyncio.wait_for(p.lost, 10)
        await stop(server)
        return p

    p = h.run(main(), timeout=60)
    small = b"".join(b"%05d" % i * 20 for i in range(200))
    assert p.h.digest() == hashlib.sha256(big + small + big2).digest()
    assert not p.bad
    if h.uring:
        # the server's and the client's receives share the ring: the client
        # reads 100-byte replies only, through the buffer ring
        b1, sm, b2 = counts["bulk1"], counts["small"], counts["bulk2"]
        assert b1["bulk_recv_bytes"] > 4 * MiB
        # small messages: the ring's buffers (one bulk read at most: the first
        # message, into the memory armed as the big transfer ended)
        assert sm["bulk_recvs"] - b1["bulk_recvs"] <= 1
        assert sm["pbuf_recvs"] - b1["pbuf_recvs"] >= 2 * 200 - 1
        # and bulk again
        assert b2["bulk_switches"] > sm["bulk_switches"]
        assert b2["bulk_recv_bytes"] - sm["bulk_recv_bytes"] > 4 * MiB
    assert_given_back(h.loop)


# -- the budget ---------------------------------------------------------------------


def test_budget_caps_parked_memory() -> None:
    """bulk_bytes of two bulk reads, six connections streaming at once: some
    take the ring's buffers instead, all data is byte-exact, and what is
    parked never passes the cap."""
    cap = 2 * BULK_READ
    loop = uringserve.new_event_loop(RingConfig(bulk_bytes=cap))
    datas = [payload(8 * MiB, 10 + i) for i in range(6)]
    try:

        async def main() -> list[Sink]:
            server, port, made = await serve(loop, Sink)
            peers = [send_random_writes(port, d, seed=i) for i, d in enumerate(datas)]
            assert await until(lambda: len(made) == 6, 10)
            await asyncio.wait_for(asyncio.gather(*(p.lost for p in made)), 60)
            for t in peers:
                await loop.run_in_executor(None, t.join, 10)
                assert not t.err, t.err
            await stop(server)
            return made

        made = loop.run_until_complete(main())
        got = sorted(p.h.digest() for p in made)
        assert got == sorted(hashlib.sha256(d).digest() for d in datas)
        assert all(not p.bad for p in made)
        s = loop.ring_stats()
        assert s["bulk_parked_peak"] <= cap
        assert s["bulk_recv_bytes"] > 0
        assert s["pbuf_recv_bytes"] > 8 * MiB  # more than one connection's worth went through the ring
        assert s["bulk_recv_bytes"] + s["pbuf_recv_bytes"] == 48 * MiB
        assert_given_back(loop)
    finally:
        loop.close()


def test_bulk_bytes_zero_is_off() -> None:
    loop = uringserve.new_event_loop(RingConfig(bulk_bytes=0))
    try:
        data = payload(8 * MiB)

        async def main() -> Sink:
            server, port, made = await serve(loop, Sink)
            peer = send_random_writes(port, data)
            assert await until(lambda: made, 10)
            await asyncio.wait_for(made[0].lost, 30)
            await loop.run_in_executor(None, peer.join, 10)
            await stop(server)
            return made[0]

        p = loop.run_until_complete(main())
        assert p.h.digest() == hashlib.sha256(data).digest()
        s = loop.ring_stats()
        assert s["bulk_switches"] == s["bulk_recvs"] == s["bulk_parked_peak"] == 0
        assert s["pbuf_recv_bytes"] == len(data)
    finally:
        loop.close()


# -- close, abort, reset, half-close during an armed bulk receive ----------------------


async def armed_bulk(loop: asyncio.AbstractEventLoop, factory: Any) -> tuple[Any, socket.socket, Any, Any, list[Any]]:
    """A connection whose bulk receive is armed and waiting (uring; on the
    stdlib loop: a connection that has just moved bulk)."""
    server, port, made = await serve(loop, factory)
    peer = socket.create_connection(("127.0.0.1", port))
    peer.setblocking(False)
    assert await until(lambda: made, 10)
    p = made[0]
    sent = 0
    chunk = payload(256 * 1024, 9)
    for _ in range(64):
        await loop.sock_sendall(peer, chunk)
        sent += len(chunk)
        if await until(lambda: p.n == sent, 10) and (not hasattr(loop, "ring") or loop.ring_stats()["bulk_parked"]):  # noqa: B023
            break
    if hasattr(loop, "ring"):
        assert loop.ring_stats()["bulk_parked"] > 0 and parked_memory(loop) == 1
    return server, peer, p, sent, made


@pytest.mark.parametrize("kind", [Sink, BufferedSink], ids=["protocol", "buffered"])
@pytest.mark.parametrize("how", ["close", "abort"])
def test_close_during_armed_bulk(h, kind, how) -> None:
    async def main() -> Any:
        server, peer, p, sent, made = await armed_bulk(h.loop, kind)
        getattr(p.transport, how)()
        # the kernel may write until the receive's completion: the memory stays
        # referenced by the ring until then, whatever the transport did
        assert parked_memory(h.loop) == (1 if h.uring else 0)
        await asyncio.wait_for(p.lost, 10)
        # what the peer sends now reaches no one: the receive was cancelled
        try:
            peer.send(b"x" * 65536)
        except OSError:
            pass
        await until(lambda: not stats(h.loop) or stats(h.loop)["slots_used"] == 0, 10)
        peer.close()
        await stop(server)
        return p, sent

    p, sent = h.run(main())
    assert p.n == sent
    assert p.events == [("lost", None)]
    assert not p.bad
    assert_given_back(h.loop)


@pytest.mark.parametrize("kind", [Sink, BufferedSink], ids=["protocol", "buffered"])
def test_peer_reset_during_armed_bulk(h, kind) -> None:
    async def main() -> Any:
        server, peer, p, sent, made = await armed_bulk(h.loop, kind)
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()  # RST
        exc = await asyncio.wait_for(p.lost, 10)
        await until(lambda: not stats(h.loop) or stats(h.loop)["slots_used"] == 0, 10)
        await stop(server)
        return p, exc

    p, exc = h.run(main())
    assert isinstance(exc, ConnectionResetError)
    assert not p.bad
    assert_given_back(h.loop)


@pytest.mark.parametrize("kind", [Sink, BufferedSink], ids=["protocol", "buffered"])
def test_peer_half_close_during_armed_bulk(h, kind) -> None:
    async def main() -> Any:
        server, peer, p, sent, made = await armed_bulk(h.loop, kind)
        tail = payload(3 * MiB + 77, 5)
        await h.loop.sock_sendall(peer, tail)
        peer.shutdown(socket.SHUT_WR)
        await asyncio.wait_for(p.lost, 10)
        peer.close()
        await stop(server)
        return p, sent + len(tail)

    p, total = h.run(main())
    assert p.n == total
    assert p.events == ["eof", ("lost", None)]
    assert not p.bad
    assert_given_back(h.loop)


def test_close_with_faulted_bulk_receives() -> None:
    """Receives that end in -ECANCELED at once (the fault injector turns a
    quarter of the arms, bulk ones included, into such completions): the
    data goes on through the ring, and the memory of every bulk receive is
    let go at its completion."""
    plan = faults.plan("recv=ECANCELED:rate=0.25:seed=3")
    loop = uringserve.UringEventLoop(faults=plan)
    try:
        data = payload(16 * MiB)

        async def main() -> Sink:
            server, port, made = await serve(loop, Sink)
            peer = send_random_writes(port, data)
            assert await until(lambda: made, 10)
            await asyncio.wait_for(made[0].lost, 60)
            await loop.run_in_executor(None, peer.join, 10)
            await stop(server)
            return made[0]

        p = loop.run_until_complete(main())
        assert p.h.digest() == hashlib.sha256(data).digest()
        assert not p.bad
        s = loop.ring_stats()
        assert s["bulk_recvs"] > 0
        assert faults.counts(loop.ring)["recv"][1] > 0  # faults were injected
        assert_given_back(loop)
    finally:
        loop.close()


# -- pause_reading ------------------------------------------------------------------


class Pauser(Sink):
    """Pauses after every read, resumes from the loop a few turns later."""

    def after(self, n: int) -> None:
        self.paused = True
        self.transport.pause_reading()
        asyncio.get_running_loop().call_soon(self._resume)

    def _resume(self) -> None:
        self.paused = False
        self.transport.resume_reading()


class BufferedPauser(BufferedSink):
    after = Pauser.after
    _resume = Pauser._resume


@pytest.mark.parametrize("kind", [Pauser, BufferedPauser], ids=["protocol", "buffered"])
def test_pause_reading_in_every_read(h, kind) -> None:
    _, s = transfer(h, kind, 16 * MiB, small=False)
    if h.uring and kind is Pauser:
        # resumed in a stream, the core asks for memory at once (us_recv_start).
        # A BufferedProtocol is declined there while what the multishot recv took
        # after the pause is still held (fed through get_buffer() calls of its
        # own): one that pauses after every read stays on the buffer ring
        assert s["bulk_recvs"] > 0
    assert_given_back(h.loop)


@pytest.mark.parametrize("kind", [Sink, BufferedSink], ids=["protocol", "buffered"])
def test_pause_while_bulk_armed(h, kind) -> None:
    """Paused with a bulk receive armed: no data until resumed, then all of it."""

    async def main() -> Any:
        server, peer, p, sent, made = await armed_bulk(h.loop, kind)
        p.paused = True
        p.transport.pause_reading()
        if stats(h.loop):
            # the cancel reaches the armed receive: nothing is parked while paused
            assert await until(lambda: stats(h.loop)["bulk_parked"] == 0, 10)
        more = payload(2 * MiB, 8)
        await h.loop.sock_sendall(peer, more)
        assert p.n == sent  # (p.bad records any delivery while paused)
        p.paused = False
        p.transport.resume_reading()
        assert await until(lambda: p.n == sent + len(more), 10)
        peer.close()
        await asyncio.wait_for(p.lost, 10)
        await stop(server)
        return p

    p = h.run(main())
    assert not p.bad, p.bad
    assert_given_back(h.loop)


# -- idle connections ------------------------------------------------------------------


def test_idle_connections_park_nothing() -> None:
    """Connections that exchange small messages and then sit idle hold no
    bulk memory: only a connection that moved bulk holds any."""
    loop = uringserve.new_event_loop()
    try:

        async def main() -> None:
            server, port, made = await serve(loop, EchoSmallCountBig)
            conns = []
            for _ in range(50):
                r, w = await asyncio.open_connection("127.0.0.1", port)
                conns.append((r, w))
            assert await until(lambda: len(made) == 50, 10)
            for p in made:
                p.echo = True
            for _ in range(8):  # more small reads than the switch's streak
                for r, w in conns:
                    w.write(b"ping" * 1000)  # 4000 B: within one provided buffer
                    assert await r.readexactly(4000) == b"ping" * 1000
            s = loop.ring_stats()
            assert s["bulk_switches"] == 0 and s["bulk_parked"] == 0 and s["bulk_parked_peak"] == 0
            assert not loop.ring.bulk
            for _r, w in conns:
                w.close()
                await w.wait_closed()
            await stop(server)

        loop.run_until_complete(main())
    finally:
        loop.close()


def test_quiet_connections_give_their_bulk_memory_back() -> None:
    """20 connections each send 1 MiB and go quiet: their armed bulk
    receives are cancelled by the sweep (bulk.SWEEP_PERIOD), the memory and
    the budget are given back, a new connection then streams in bulk, and
    the quiet ones still receive what they send later."""
    loop = uringserve.new_event_loop()
    try:

        async def main() -> None:
            server, port, made = await serve(loop, Sink)
            blob = payload(1 * MiB, 5)
            socks = []
            for _ in range(20):
                c = socket.socket()
                c.setblocking(False)
                await loop.sock_connect(c, ("127.0.0.1", port))
                await loop.sock_sendall(c, blob)
                socks.append(c)
            assert await until(lambda: sum(p.n for p in made) == 20 * MiB, 30)
            assert loop.ring_stats()["bulk_recvs"] > 0
            # quiet now: every armed receive is reclaimed within two sweep periods
            assert await until(lambda: loop.ring_stats()["bulk_parked"] == 0 and not loop.ring.bulk, 30)
            s = loop.ring_stats()
            assert s["bulk_idle_cancels"] > 0
            assert all(p.h.digest() == hashlib.sha256(blob).digest() for p in made)
            # a new stream finds the whole budget
            before = s["bulk_recvs"]
            c = socket.socket()
            c.setblocking(False)
            await loop.sock_connect(c, ("127.0.0.1", port))
            big = payload(16 * MiB, 6)
            await loop.sock_sendall(c, big)
            socks.append(c)
            assert await until(lambda: made[-1].n == 16 * MiB, 30)
            assert made[-1].h.digest() == hashlib.sha256(big).digest()
            assert loop.ring_stats()["bulk_recvs"] - before > 8
            # the reclaimed connections read on, from the ring
            for c in socks[:20]:
                await loop.sock_sendall(c, b"more")
            assert await until(lambda: all(p.n == MiB + 4 for p in made[:20]), 30)
            for c in socks:
                c.close()
            assert await until(lambda: all(p.events for p in made), 30)
            await stop(server)

        loop.run_until_complete(main())
        assert_given_back(loop)
    finally:
        loop.close()


def test_closed_loop_64k_echo_stays_in_bulk() -> None:
    """A client that sends 64 KiB and waits for the echo (the benchmark's
    echo): the server stays in bulk across messages, and nothing idles
    long enough for the sweep."""
    loop = uringserve.new_event_loop()
    try:

        async def main() -> None:
            server, port, made = await serve(loop, EchoSmallCountBig)
            r, w = await asyncio.open_connection("127.0.0.1", port)
            assert await until(lambda: made, 10)
            made[0].echo = True
            msg = payload(64 * 1024, 12)
            for _ in range(200):
                w.write(msg)
                assert await r.readexactly(len(msg)) == msg
            s = loop.ring_stats()
            assert s["bulk_recvs"] > 150, s  # after the first messages, one bulk receive per message
            assert s["bulk_switches"] < 20, s  # not switched again each message
            w.close()
            await w.wait_closed()
            await stop(server)

        loop.run_until_complete(main())
        assert_given_back(loop)
    finally:
        loop.close()


def test_sweep_never_cancels_a_receiving_connection(monkeypatch) -> None:
    """The sweep cancels only a bulk receive armed across a whole period
    with nothing arrived: a closed-loop echo that re-arms every message
    keeps its bulk receives over many sweep periods (shortened here to
    0.1 s so that many pass)."""
    from uringserve import bulk
    from uringserve.ring import Ring

    monkeypatch.setattr(bulk, "SWEEP_PERIOD", 0.1)
    sweeps = [0]
    real = Ring.bulk_sweep

    def counted(self: Ring) -> int:
        sweeps[0] += 1
        return real(self)

    monkeypatch.setattr(Ring, "bulk_sweep", counted)
    loop = uringserve.new_event_loop()
    try:

        async def main() -> int:
            server, port, made = await serve(loop, EchoSmallCountBig)
            r, w = await asyncio.open_connection("127.0.0.1", port)
            assert await until(lambda: made, 10)
            made[0].echo = True
            msg = payload(64 * 1024, 13)
            n = 0
            while sweeps[0] < 12 and n < 20000:
                w.write(msg)
                assert await r.readexactly(len(msg)) == msg
                n += 1
            w.close()
            await w.wait_closed()
            await stop(server)
            return n

        n = loop.run_until_complete(main())
        s = loop.ring_stats()
        assert sweeps[0] >= 12
        # a pause of a whole period on this busy machine may cost one or two
        assert s["bulk_idle_cancels"] <= 2, (s["bulk_idle_cancels"], n)
        assert s["bulk_recvs"] >= n * 0.8, (s["bulk_recvs"], n)
        assert_given_back(loop)
    finally:
        loop.close()


def test_tls_in_the_core_never_bulk(tls_files) -> None:
    """The core decrypts from the ring's buffers: a CoreTLS connection declines bulk for good."""
    import ssl

    from uringserve.tls import CoreTLS

    core = CoreTLS(str(tls_files.cert), str(tls_files.key))
    cctx = ssl.create_default_context(cafile=str(tls_files.cacert))
    loop = uringserve.new_event_loop()
    data = payload(8 * MiB)
    try:

        async def main() -> Sink:
            server, port, made = await serve_tls(loop, core)
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=cctx)
            writer.write(data)
            await writer.drain()
            assert await until(lambda: made and made[0].n == len(data), 30)
            writer.close()
            await asyncio.wait_for(made[0].lost, 10)
            await stop(server)
            return made[0]

        async def serve_tls(loop: Any, ssl_: Any) -> Any:
            made: list[Sink] = []

            def make() -> Sink:
                made.append(Sink())
                return made[-1]

            server = await loop.create_server(make, "127.0.0.1", 0, ssl=ssl_)
            return server, server.sockets[0].getsockname()[1], made

        p = loop.run_until_complete(main())
        assert p.h.digest() == hashlib.sha256(data).digest()
        assert loop.ring_stats()["bulk_recvs"] == 0
    finally:
        loop.close()


def test_bytes_from_bulk_are_ordinary() -> None:
    """What a Protocol gets from a bulk receive is bytes of exactly what
    arrived, immutable, hashable, and no one else's."""
    from uringserve._native import ffi
    from uringserve.bulk_bytes import fresh, take

    parked = {1: fresh(BULK_READ)}
    ffi.memmove(ffi.from_buffer(parked[1]), b"abc" * 10, 30)
    out = take(parked, 1, 30)
    assert type(out) is bytes and out == b"abc" * 10 and hash(out) == hash(b"abc" * 10)
    assert not parked
    # a reference held elsewhere: never resized, copied
    parked = {2: fresh(100)}
    other = parked[2]
    out = take(parked, 2, 5)
    assert len(out) == 5 and len(other) == 100


JEMALLOC = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"  # Debian's libjemalloc2 (Makefile DEBS)

# take() in a loop where every shrink moves the object (jemalloc moves a
# 256 KiB allocation shrunk to 100 B into another size class; glibc shrinks in
# place): data byte-exact and one reference, the caller's, in each result
_MOVING_TAKE = """
import sys
from uringserve._native import ffi
from uringserve.bulk_bytes import fresh, take
moved = 0
for i in range(5000):
    parked = {1: fresh(262144)}
    before = id(parked[1])
    fill = bytes([65 + i % 26]) * (100 + i % 7)
    ffi.memmove(ffi.from_buffer(parked[1]), fill, len(fill))
    out = take(parked, 1, len(fill))
    moved += id(out) != before
    assert out == fill, (i, out[:8])
    assert sys.getrefcount(out) == 2, (i, sys.getrefcount(out))
    del out
print("moved", moved)
"""


@pytest.mark.timeout(300)
@pytest.mark.skipif(not os.path.exists(JEMALLOC), reason=f"{JEMALLOC} absent (apt-get install libjemalloc2)")
def test_take_when_the_shrink_moves_the_object() -> None:
    """Under an allocator whose realloc moves a shrunk object, take() hands
    back the moved object with exactly the caller's reference, and nothing
    frees the old address twice: a direct loop, then the Protocol bulk tests,
    in a subprocess under LD_PRELOAD=libjemalloc (a use-after-free there
    segfaults, at the latest at exit)."""
    env = dict(os.environ, LD_PRELOAD=JEMALLOC)
    r = subprocess.run([sys.executable, "-c", _MOVING_TAKE], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr[-2000:])
    assert int(r.stdout.split()[-1]) > 0, "jemalloc moved none: the test proves nothing"
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
         "-k", "ordinary or protocol_64mib_random"],
        env=env, capture_output=True, text=True, timeout=200, cwd=os.path.dirname(__file__),
    )  # fmt: skip
    assert r.returncode == 0, (r.returncode, r.stdout[-3000:], r.stderr[-2000:])
    assert " passed" in r.stdout and " failed" not in r.stdout


def test_bulk_bytes_below_one_read_is_refused() -> None:
    """A budget that could never hold one bulk read would turn bulk off in
    silence: refused, naming the minimum; 0 and one read are fine."""
    from uringserve.ring_settings import RingConfigError

    with pytest.raises(RingConfigError, match=f"smaller than one bulk read \\({BULK_READ}\\).*use 0"):
        RingConfig(bulk_bytes=BULK_READ - 1).validated()
    assert RingConfig(bulk_bytes=0).validated().bulk_bytes == 0
    assert RingConfig(bulk_bytes=BULK_READ).validated().bulk_bytes == BULK_READ


def test_no_memory_for_a_bulk_read_declines(monkeypatch) -> None:
    """fresh() failing with MemoryError is a decline (the ring's buffers),
    not an exception in the loop's dispatch: every byte still arrives."""
    import uringserve.transport_reading as tr

    failed = []

    def no_memory(n: int) -> bytes:
        failed.append(n)
        raise MemoryError

    monkeypatch.setattr(tr, "fresh", no_memory)
    loop = uringserve.new_event_loop()
    try:
        _, s = transfer(LoopHarness("uring", loop), Sink, 16 * MiB, small=False)
        assert failed and s["bulk_switches"] > 0 and s["bulk_recvs"] == 0
        assert_given_back(loop)
    finally:
        loop.close()


def test_default_budget_is_a_few_mib() -> None:
    cfg = RingConfig().validated()
    assert 1 * MiB <= cfg.bulk_bytes <= 16 * MiB


class AbortAfter(Sink):
    """Aborts in its `limit`th read: wherever the switch then is (armed,
    asked for memory, a bulk read completing)."""

    limit = 1

    def after(self, n: int) -> None:
        self.limit -= 1
        if self.limit == 0:
            self.transport.abort()


@pytest.mark.parametrize("kind", ["protocol", "buffered"])
def test_abort_at_every_point_of_the_switch_gives_everything_back(kind) -> None:
    """Forty connections streaming, each aborted by its protocol after 1..40
    reads: every budget reservation and every bulk receive's memory is given
    back (bulk_parked 0, Ring.bulk empty), every slot freed."""
    loop = uringserve.new_event_loop()
    base = BufferedSink if kind == "buffered" else Sink

    class Aborter(AbortAfter, base):  # type: ignore[misc, valid-type]
        pass

    made_limits = iter(range(1, 41))
    try:

        async def main() -> list[Any]:
            def make() -> Any:
                p = Aborter()
                p.limit = next(made_limits)
                return p

            server, port, made = await serve(loop, make)
            peers = [send_random_writes(port, payload(4 * MiB, i), seed=i, small=False) for i in range(40)]
            assert await until(lambda: len(made) == 40, 20)
            await asyncio.wait_for(asyncio.gather(*(p.lost for p in made)), 60)
            for t in peers:
                await loop.run_in_executor(None, t.join, 20)
            await until(lambda: loop.ring_stats()["slots_used"] == 0, 10)
            await stop(server)
            return made

        made = loop.run_until_complete(main())
        assert all(not p.bad for p in made)
        s = loop.ring_stats()
        assert s["bulk_recvs"] > 0
        assert_given_back(loop)
    finally:
        loop.close()


class PausesAnother(Sink):
    """A connection whose data pauses another one (`other`), if set."""

    other: Sink | None = None

    def after(self, n: int) -> None:
        if self.other is not None and not self.other.paused:
            self.other.paused = True
            self.other.transport.pause_reading()


class BufferedPausesAnother(BufferedSink):
    other: Sink | None = None
    after = PausesAnother.after


@pytest.mark.parametrize("kind", [PausesAnother, BufferedPausesAnother], ids=["protocol", "buffered"])
def test_bulk_data_racing_a_pause_is_held(h, kind) -> None:
    """A bulk receive that completed with data in the same batch as an event
    whose callback paused the connection (another connection's data, before
    it in the batch): the data is held, not delivered, until resumed -- for a
    BufferedProtocol no buffer_updated() while paused."""

    async def main() -> Any:
        server, peer, p, sent, made = await armed_bulk(h.loop, kind)
        other_peer = socket.create_connection(("127.0.0.1", server.sockets[0].getsockname()[1]))
        assert await until(lambda: len(made) == 2, 10)
        other = made[1]
        other.other = p  # its data pauses the first connection
        more = payload(64 * 1024, 11)
        other_peer.send(b"!")  # first in the batch
        assert peer.send(more) == len(more)  # then the bulk receive's data
        assert await until(lambda: p.paused, 10)
        if stats(h.loop):
            assert await until(lambda: stats(h.loop)["bulk_parked"] == 0, 10)
            assert not h.loop.ring.bulk
        assert p.n == sent  # held
        p.paused = False
        p.transport.resume_reading()
        assert await until(lambda: p.n == sent + len(more), 10)
        peer.close()
        other_peer.close()
        await asyncio.wait_for(asyncio.gather(p.lost, other.lost), 10)
        await stop(server)
        return p

    p = h.run(main())
    assert not p.bad, p.bad
    assert_given_back(h.loop)


@pytest.mark.parametrize("kind", [Sink, BufferedSink, Pauser], ids=["protocol", "buffered", "pausing"])
def test_switch_from_recv_bundles(kind) -> None:
    """With receive bundles (several provided buffers per completion) a
    completion of at least one buffer counts toward the switch as well."""
    loop = uringserve.new_event_loop(RingConfig(recv_bundle=True))
    try:
        _, s = transfer(LoopHarness("uring", loop), kind, 16 * MiB)
        assert s["bulk_recv_bytes"] > 0
        assert s["bulk_recv_bytes"] + s["pbuf_recv_bytes"] == 16 * MiB
        assert_given_back(loop)
    finally:
        loop.close()
