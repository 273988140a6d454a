"""Server transports: one test class, run on the stdlib loop and on UringEventLoop.

Where the two loops may legitimately differ the test says so; everything
else must behave identically.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import gc
import hashlib
import logging
import os
import socket
import struct
import termios
import threading
import time
import weakref

import pytest
from conftest import blocking_client, serve_and_read, until


class Echo(asyncio.Protocol):
    def __init__(self, log: list | None = None) -> None:
        self.log = log if log is not None else []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.log.append("made")

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def eof_received(self) -> None:
        self.log.append("eof")

    def connection_lost(self, exc: Exception | None) -> None:
        self.log.append(("lost", exc))


async def start(loop: asyncio.AbstractEventLoop, factory, **kw) -> tuple[asyncio.AbstractServer, int]:
    server = await loop.create_server(factory, "127.0.0.1", 0, **kw)
    return server, server.sockets[0].getsockname()[1]


async def close_server(server: asyncio.AbstractServer) -> None:
    server.close()
    await server.wait_closed()


def test_echo_streams_client(h) -> None:
    log: list = []

    async def main() -> None:
        server, port = await start(h.loop, lambda: Echo(log))
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for i in range(50):
            msg = f"message {i}\n".encode() * (i + 1)
            writer.write(msg)
            assert await reader.readexactly(len(msg)) == msg
        writer.close()
        await writer.wait_closed()
        await until(lambda: any(isinstance(x, tuple) for x in log), timeout=1)
        await close_server(server)

    h.run(main())
    assert log[0] == "made"
    assert log[-1] == ("lost", None)
    assert log.count("eof") == 1
    assert not h.errors


def test_large_transfer_byte_exact_both_ways(h) -> None:
    payload = os.urandom(8 << 20)

    async def main() -> None:
        server, port = await start(h.loop, Echo)
        result: dict = {}
        t = blocking_client(port, payload, len(payload), result)
        while t.is_alive():
            await asyncio.sleep(0.02)
        await close_server(server)
        assert "error" not in result, result.get("error")
        assert hashlib.sha256(result["data"]).digest() == hashlib.sha256(payload).digest()

    h.run(main(), timeout=60)
    assert not h.errors


def test_many_connections_in_parallel(h) -> None:
    async def main() -> None:
        server, port = await start(h.loop, Echo)

        async def one(i: int) -> None:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            msg = os.urandom(1000 + i)
            w.write(msg)
            assert await r.readexactly(len(msg)) == msg
            w.close()
            await w.wait_closed()

        await asyncio.gather(*(one(i) for i in range(60)))
        await close_server(server)

    h.run(main())


def test_flow_control_pauses_and_resumes_writing(h) -> None:
    """A protocol writing to a peer that does not read is paused, then resumed."""
    events: list = []
    done = asyncio.Event if False else None  # noqa: F841

    class Writer(asyncio.Protocol):
        def connection_made(self, transport) -> None:
            self.t = transport
            transport.set_write_buffer_limits(high=64 * 1024, low=16 * 1024)
            self.sent = 0
            self.paused = False
            self.fill()

        def fill(self) -> None:
            while not self.paused and self.sent < 16 << 20:
                self.t.write(b"x" * 65536)
                self.sent += 65536
            if self.sent >= 16 << 20:
                self.t.write_eof()

        def pause_writing(self) -> None:
            self.paused = True
            events.append(("pause", self.t.get_write_buffer_size()))

        def resume_writing(self) -> None:
            events.append(("resume", self.t.get_write_buffer_size()))
            self.paused = False
            self.fill()

    async def main() -> None:
        server, port = await start(h.loop, Writer)
        got = {}

        def slow_reader() -> None:
            with socket.create_connection(("127.0.0.1", port)) as s:
                time.sleep(0.3)  # let the server back up against a full socket
                n = 0
                digest = hashlib.sha256()
                while True:
                    chunk = s.recv(1 << 20)
                    if not chunk:
                        break
                    digest.update(chunk)
                    n += len(chunk)
                got["n"] = n
                got["digest"] = digest.hexdigest()

        t = threading.Thread(target=slow_reader)
        t.start()
        while t.is_alive():
            await asyncio.sleep(0.02)
        await close_server(server)
        assert got["n"] == 16 << 20
        assert got["digest"] == hashlib.sha256(b"x" * (16 << 20)).hexdigest()

    h.run(main(), timeout=60)
    kinds = [e[0] for e in events]
    assert "pause" in kinds and "resume" in kinds
    # paused above the high-water mark, resumed at or below the low-water mark
    assert all(size > 64 * 1024 for k, size in events if k == "pause")
    assert all(size <= 16 * 1024 for k, size in events if k == "resume")
    assert not h.errors


def test_pause_reading_holds_data_in_order(h) -> None:
    """Pausing from data_received: nothing more is delivered until resumed,
    and what arrived meanwhile comes afterwards, in order."""
    received: list[bytes] = []
    state: dict = {"paused_deliveries": 0}

    class Pausing(asyncio.Protocol):
        def connection_made(self, transport) -> None:
            state["t"] = transport

        def data_received(self, data: bytes) -> None:
            if state.get("paused"):
                state["paused_deliveries"] += 1
            received.append(data)
            if len(received) == 1:
                state["paused"] = True
                state["t"].pause_reading()

    async def main() -> None:
        server, port = await start(h.loop, Pausing)
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"first")
        await until(lambda: received)  # "first" delivered alone, and reading paused
        payload = b"".join(i.to_bytes(4, "big") for i in range(50000))
        w.write(payload)
        await w.drain()
        # paused, neither loop takes the payload out of the socket (the ring's
        # multishot recv ends at the pause), so nothing marks "it would have
        # been delivered by now": these iterations are where a delivery while
        # paused would show. Too short a wait can only miss a bug, never fail.
        await asyncio.sleep(0.1)
        assert received == [b"first"]
        assert not state["t"].is_reading()
        state["paused"] = False
        state["t"].resume_reading()
        assert state["t"].is_reading()
        await until(lambda: sum(map(len, received)) >= len(payload) + 5, timeout=5)
        assert b"".join(received) == b"first" + payload
        w.close()
        await w.wait_closed()
        await close_server(server)

    h.run(main())
    assert state["paused_deliveries"] == 0


def test_reading_goes_on_after_a_pause_and_resume_in_one_callback(h) -> None:
    """A protocol that pauses and resumes inside one data_received and then
    writes past the high-water mark (which makes UringEventLoop submit at
    once) keeps receiving. On the ring the resume races the pause's cancel:
    the recv ends ECANCELED and must be armed again; a re-arm queued while
    the core stashed completions for that submit was never released, and the
    connection went deaf (HTTP lost a request after a large pipelined body)."""
    big = os.urandom(200_000)  # above the high-water mark (the write submits now), and one send takes it
    got: list[bytes] = []

    class PauseResumeWrite(asyncio.Protocol):
        def connection_made(self, transport) -> None:
            self.t = transport

        def data_received(self, data: bytes) -> None:
            got.append(data)
            if data.startswith(b"go"):
                self.t.pause_reading()
                self.t.resume_reading()
                self.t.write(big)

    async def main() -> None:
        server, port = await start(h.loop, PauseResumeWrite)
        r, w = await asyncio.open_connection("127.0.0.1", port)
        for i in range(3):
            w.write(b"go%d" % i)
            assert await asyncio.wait_for(r.readexactly(len(big)), 10) == big, "the server stopped reading"
        w.write(b"after")
        await until(lambda: b"after" in b"".join(got), timeout=5)
        w.close()
        await w.wait_closed()
        await close_server(server)

    h.run(main())
    assert b"".join(got) == b"go0go1go2after"
    assert not h.errors


def test_half_close_keeps_write_side_open(h) -> None:
    """eof_received() returning True keeps the transport open for replies."""

    class Collect(asyncio.Protocol):
        def connection_made(self, transport) -> None:
            self.t = transport
            self.buf = b""

        def data_received(self, data: bytes) -> None:
            self.buf += data

        def eof_received(self) -> bool:
            self.t.write(b"got " + str(len(self.buf)).encode())
            self.t.close()
            return True

    async def main() -> None:
        server, port = await start(h.loop, Collect)
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"a" * 100000)
        w.write_eof()
        assert await r.read() == b"got 100000"
        w.close()
        await w.wait_closed()
        await close_server(server)

    h.run(main())


def test_write_eof_sends_fin_after_queued_data(h) -> None:
    class Sender(asyncio.Protocol):
        def connection_made(self, transport) -> None:
            transport.write(b"z" * 300000)
            assert transport.can_write_eof()
            transport.write_eof()
            with pytest.raises(RuntimeError):
                transport.write(b"more")

    async def main() -> None:
        server, port = await start(h.loop, Sender)
        r, w = await asyncio.open_connection("127.0.0.1", port)
        data = await r.read()  # until EOF
        assert data == b"z" * 300000
        w.close()
        await w.wait_closed()
        await close_server(server)

    h.run(main())


def test_close_flushes_then_connection_lost_once(h) -> None:
    log: list = []

    class Closer(Echo):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            transport.write(b"q" * 500000)
            transport.close()
            assert transport.is_closing()
            transport.close()  # idempotent

    async def main() -> None:
        server, port = await start(h.loop, lambda: Closer(log))
        r, w = await asyncio.open_connection("127.0.0.1", port)
        assert await r.read() == b"q" * 500000
        w.close()
        await w.wait_closed()
        await asyncio.sleep(0.05)
        await close_server(server)

    h.run(main())
    assert [x for x in log if isinstance(x, tuple)] == [("lost", None)]


def small_send_buffer(h, transport) -> None:
    """On the stdlib loop a write goes to send() at once, and under load a
    peer reading quickly lets the kernel take all of 4 MiB: no pause. A 64 KiB
    send buffer makes the pause certain. (On the ring the core's queue, not
    the kernel's buffer, decides, and the transport has no fd to set.)"""
    if not h.uring:
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)


def test_paused_writer_that_closed_writes_last_words_on_resume(h) -> None:
    """asyncio calls resume_writing() while a closing transport drains, and
    what the protocol writes then is still sent (TLS sends close_notify so)."""
    body = b"b" * (4 << 20)
    events: list = []

    class LastWords(asyncio.Protocol):
        def connection_made(self, transport) -> None:
            self.transport = transport
            small_send_buffer(h, transport)
            transport.write(body)  # far above high-water: paused
            events.append("paused" if self.paused else "not paused")
            transport.close()

        paused = False

        def pause_writing(self) -> None:
            self.paused = True

        def resume_writing(self) -> None:
            self.paused = False
            events.append("resumed")
            self.transport.write(b"last words")

        def connection_lost(self, exc) -> None:
            events.append(("lost", exc))

    async def main() -> bytes:
        return await serve_and_read(h.loop, LastWords)

    data = h.run(main())
    assert len(data) == len(body) + len(b"last words")
    assert data.endswith(b"last words") and data[: len(body)] == body
    assert events == ["paused", "resumed", ("lost", None)]


def test_abort_discards_and_reports(h) -> None:
    """abort() drops what the transport still holds: 32 MiB are written to
    a peer that reads nothing (the kernel's socket buffers take a few MiB
    at most), the transport is aborted, and only then does the peer read:
    it gets less than was written and then the end (EOF or a reset), and
    connection_lost(None) comes once. A transport that flushed instead
    would deliver all 32 MiB."""
    log: list = []
    total = 32 << 20
    aborted = asyncio.Event()

    class Aborter(Echo):
        def data_received(self, data: bytes) -> None:
            self.transport.write(b"n" * total)
            self.transport.abort()
            self.transport.abort()
            assert self.transport.is_closing()
            aborted.set()

    async def main() -> int:
        server, port = await start(h.loop, lambda: Aborter(log))
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)  # before connect: a small window
        sock.setblocking(False)
        await h.loop.sock_connect(sock, ("127.0.0.1", port))
        await h.loop.sock_sendall(sock, b"go")
        await aborted.wait()
        got = 0
        try:
            while chunk := await h.loop.sock_recv(sock, 1 << 20):
                got += len(chunk)
        except ConnectionResetError:
            pass
        sock.close()
        await until(lambda: ("lost", None) in log)  # connection_lost is a callback away
        await close_server(server)
        return got

    got = h.run(main())
    assert got < total, "abort() sent everything that was queued"
    assert [x for x in log if isinstance(x, tuple)] == [("lost", None)]


def test_a_write_after_abort_sends_nothing(h) -> None:
    """After abort(), write() is dropped as asyncio's transports drop it: the
    peer gets the end of the connection and not one byte."""
    log: list = []
    aborted = asyncio.Event()

    class Late(Echo):
        def data_received(self, data: bytes) -> None:
            self.transport.abort()
            self.transport.write(b"late")
            self.transport.write(b"x" * 100_000)
            aborted.set()

    async def main() -> bytes:
        server, port = await start(h.loop, lambda: Late(log))
        sock = socket.socket()
        sock.setblocking(False)
        await h.loop.sock_connect(sock, ("127.0.0.1", port))
        await h.loop.sock_sendall(sock, b"go")
        await aborted.wait()
        got = b""
        try:
            while chunk := await h.loop.sock_recv(sock, 1 << 20):
                got += chunk
        except ConnectionResetError:
            pass
        sock.close()
        await until(lambda: ("lost", None) in log)
        await close_server(server)
        return got

    assert h.run(main()) == b""
    assert [x for x in log if isinstance(x, tuple)] == [("lost", None)]


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == "socket.send() raised exception."]


def test_writes_after_close_are_dropped(h, caplog: pytest.LogCaptureFixture) -> None:
    """After close() with nothing queued, write() is dropped as asyncio's
    transports drop it (a warning only from the fifth): the peer gets a clean
    end and nothing more, connection_lost(None) comes once."""
    log: list = []
    closed = asyncio.Event()

    warned: list = []

    class Late(Echo):
        def data_received(self, data: bytes) -> None:
            self.transport.close()
            for k in range(4):
                self.transport.write(b"late%d" % k)
            warned.append(len(warnings_of(caplog)))
            self.transport.write(b"late4")
            warned.append(len(warnings_of(caplog)))
            closed.set()

    async def main() -> bytes:
        server, port = await start(h.loop, lambda: Late(log))
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"go")
        await closed.wait()
        got = await asyncio.wait_for(r.read(), 10)
        w.close()
        await until(lambda: ("lost", None) in log)
        await close_server(server)
        return got

    with caplog.at_level(logging.WARNING):
        assert h.run(main()) == b""
    assert [x for x in log if isinstance(x, tuple)] == [("lost", None)]
    assert warned == [0, 1]  # silent for four dropped writes, one warning at the fifth


def test_exception_in_data_received_goes_to_handler(h) -> None:
    log: list = []

    class Boom(Echo):
        def data_received(self, data: bytes) -> None:
            if data == b"boom":
                raise ValueError("boom")
            super().data_received(data)

    async def main() -> None:
        server, port = await start(h.loop, lambda: Boom(log))
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"boom")
        assert await r.read() == b""  # the transport was closed
        w.close()
        await w.wait_closed()
        # the loop keeps serving
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"fine")
        assert await r.readexactly(4) == b"fine"
        w.close()
        await w.wait_closed()
        await asyncio.sleep(0.05)
        await close_server(server)

    h.run(main())
    errors = h.take_errors()
    assert len(errors) == 1
    assert isinstance(errors[0]["exception"], ValueError)
    assert "data_received" in errors[0]["message"]
    lost = [x for x in log if isinstance(x, tuple)]
    assert isinstance(lost[0][1], ValueError)


def test_exception_in_connection_made_goes_to_handler(h) -> None:
    class Bad(asyncio.Protocol):
        def connection_made(self, transport) -> None:
            raise RuntimeError("nope")

    async def main() -> None:
        server, port = await start(h.loop, Bad)
        r, w = await asyncio.open_connection("127.0.0.1", port)
        await until(lambda: h.errors, timeout=2)
        if h.uring:
            # stricter than the stdlib loop, which leaves such a connection open:
            # a protocol that failed to start gets its connection closed
            try:
                assert await r.read() == b""
            except ConnectionResetError:
                pass
        w.close()
        try:
            await w.wait_closed()
        except ConnectionResetError:
            pass
        await asyncio.sleep(0.05)
        await close_server(server)

    h.run(main())
    assert any(isinstance(e.get("exception"), RuntimeError) for e in h.take_errors())


def test_exception_in_data_received_after_a_pause_names_it(h) -> None:
    """A plain Protocol that fails on data delivered after a pause (on the
    ring: data that arrived in the same batch as the pause and was held) is
    reported by the callback's name, as when it fails on data delivered at
    once: "Fatal error: protocol.data_received() call failed."."""
    sent = threading.Event()
    made: list = []
    got: list[int] = []

    class PauseThenFail(asyncio.Protocol):
        def connection_made(self, transport) -> None:
            self.t = transport
            transport.pause_reading()  # until the whole payload waits in the socket
            made.append(transport)

        def data_received(self, data: bytes) -> None:
            got.append(len(data))
            if len(got) == 1:  # what else came with this piece is held
                self.t.pause_reading()
                asyncio.get_running_loop().call_soon(self.t.resume_reading)
            elif len(got) == 2:
                raise ValueError("second piece")

        def connection_lost(self, exc) -> None:
            got.append(-1)

    payload = os.urandom(1 << 20)  # several pieces: the loops deliver at most 256 KiB at once

    def client(port: int) -> None:
        with socket.create_connection(("127.0.0.1", port)) as s:
            try:
                s.sendall(payload)
                sent.set()
                while s.recv(65536):
                    pass
            except OSError:  # reset by the failed connection
                pass

    def waiting(transport) -> int:
        """Bytes in the server socket's receive queue."""
        fd = transport.get_extra_info("socket").fileno()
        return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0" * 4))[0]

    async def main() -> None:
        lsock = socket.socket()
        # the connection's receive buffer (inherited from the listener) takes
        # the whole payload while the server does not read
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        lsock.bind(("127.0.0.1", 0))
        server = await h.loop.create_server(PauseThenFail, sock=lsock)
        port = lsock.getsockname()[1]
        thread = threading.Thread(target=client, args=(port,), daemon=True)
        thread.start()
        await until(lambda: made)
        # more than one piece waits (a kernel short of socket memory may hold
        # less: then the second piece may come apart from the first, which
        # must be named the same way)
        await until(lambda: sent.is_set() or waiting(made[0]) > 600_000)
        made[0].resume_reading()
        await until(lambda: -1 in got)
        await h.loop.run_in_executor(None, thread.join, 20)
        await close_server(server)

    h.run(main())
    errors = h.take_errors()
    assert [(type(e["exception"]), e["message"]) for e in errors] == [
        (ValueError, "Fatal error: protocol.data_received() call failed.")
    ]


def test_exception_in_connection_made_of_a_client_connection_goes_to_handler(h) -> None:
    """create_connection() whose protocol fails in connection_made(): the
    loop's exception handler hears of it, naming the callback, and the call
    still returns the transport."""

    class Bad(asyncio.Protocol):
        def connection_made(self, transport) -> None:
            raise RuntimeError("client start")

    async def main() -> None:
        server, port = await start(h.loop, Echo)
        transport, _ = await h.loop.create_connection(Bad, "127.0.0.1", port)
        await until(lambda: h.errors, timeout=2)
        transport.close()
        await asyncio.sleep(0.05)
        await close_server(server)

    h.run(main())
    (error,) = h.take_errors()
    assert isinstance(error["exception"], RuntimeError)
    assert "connection_made" in error["message"]


def reset_by_peer(h) -> list[tuple]:
    """A client sends a few bytes, then resets (SO_LINGER 0): each
    connection_lost() the server's protocol heard, with its transport."""
    lost: list = []

    class Watch(asyncio.Protocol):
        def connection_made(self, transport) -> None:
            self.t = transport

        def data_received(self, data: bytes) -> None:
            pass

        def connection_lost(self, exc) -> None:
            lost.append((exc, self.t))

    async def main() -> None:
        server, port = await start(h.loop, Watch)
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"hello")
        await asyncio.sleep(0.05)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()  # RST
        await until(lambda: lost, timeout=2)
        await close_server(server)

    h.run(main())
    return lost


def test_peer_reset_reports_connection_lost_with_error(h) -> None:
    lost = [exc for exc, _ in reset_by_peer(h)]
    assert len(lost) == 1
    assert isinstance(lost[0], ConnectionResetError)
    # the errno and its words, as the socket module raises them
    assert (lost[0].errno, lost[0].strerror) == (errno.ECONNRESET, os.strerror(errno.ECONNRESET))
    assert not h.errors  # a reset is an OSError: logged in debug only, as asyncio does


def test_a_peer_reset_is_logged_in_debug_mode(h, caplog: pytest.LogCaptureFixture) -> None:
    """In debug mode the loop logs a connection's fatal OSError as asyncio
    does: one debug record, "<transport repr>: <what failed>", with the
    traceback; the exception handler hears nothing of it."""
    h.loop.set_debug(True)
    with caplog.at_level(logging.DEBUG):
        lost = reset_by_peer(h)
    h.loop.set_debug(False)
    ((exc, transport),) = lost
    records = [r for r in caplog.records if "Fatal read error" in r.getMessage()]
    assert [r.getMessage() for r in records] == [f"{transport!r}: Fatal read error on socket transport"]
    assert records[0].levelno == logging.DEBUG and records[0].exc_info[1] is exc
    assert not h.errors


class EchoBuffered(asyncio.BufferedProtocol):
    """Echoes through a 1000-byte buffer: smaller than what arrives at once."""

    def connection_made(self, transport) -> None:
        self.t = transport
        self.buf = bytearray(1000)

    def get_buffer(self, sizehint: int) -> bytearray:
        return self.buf

    def buffer_updated(self, nbytes: int) -> None:
        self.t.write(bytes(self.buf[:nbytes]))

    def eof_received(self) -> None:
        return None


def echo_through(h, factory, size: int) -> None:
    """`size` random bytes through a server made by `factory` must come back whole."""

    async def main() -> None:
        server, port = await start(h.loop, factory)
        payload = os.urandom(size)
        result: dict = {}
        t = blocking_client(port, payload, len(payload), result)
        while t.is_alive():
            await asyncio.sleep(0.02)
        await close_server(server)
        assert result.get("data") == payload

    h.run(main(), timeout=60)
    assert not h.errors


def test_buffered_protocol(h) -> None:
    echo_through(h, EchoBuffered, 300_000)


def test_buffered_protocol_that_pauses_gets_every_byte(h) -> None:
    """On the ring a BufferedProtocol is fed from the provided buffer itself
    (valid until the loop next waits): whatever arrives while it is paused
    must be kept as a copy, not as a view of a buffer the kernel reuses."""

    class Pausing(EchoBuffered):
        def buffer_updated(self, nbytes: int) -> None:
            super().buffer_updated(nbytes)
            self.t.pause_reading()  # more of this batch waits in the transport
            asyncio.get_running_loop().call_later(0.001, self.t.resume_reading)

    echo_through(h, Pausing, 1_000_000)


@pytest.mark.parametrize(
    "fault,message,words",
    [
        ("empty", "Fatal error: protocol.get_buffer() call failed.", "get_buffer() returned an empty buffer"),
        ("get_buffer", "Fatal error: protocol.get_buffer() call failed.", "no buffer"),
        ("buffer_updated", "Fatal error: protocol.buffer_updated() call failed.", "no update"),
    ],
    ids=["empty", "get_buffer", "buffer_updated"],
)
def test_buffered_protocol_callback_errors_name_the_callback(h, fault: str, message: str, words: str) -> None:
    """A BufferedProtocol whose get_buffer() fails (raises, or gives an empty
    buffer) or whose buffer_updated() raises: the exception handler hears
    asyncio's message naming that callback, with the exception (asyncio's
    own words for an empty buffer); the connection ends with it."""
    lost: list = []

    class Failing(asyncio.BufferedProtocol):
        def connection_made(self, transport) -> None:
            self.buf = bytearray(1000)

        def get_buffer(self, sizehint: int) -> bytearray:
            if fault == "empty":
                return bytearray()
            if fault == "get_buffer":
                raise ValueError("no buffer")
            return self.buf

        def buffer_updated(self, nbytes: int) -> None:
            raise ValueError("no update")

        def connection_lost(self, exc) -> None:
            lost.append(exc)

    async def main() -> bytes:
        server, port = await start(h.loop, Failing)
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"data")
        try:
            got = await asyncio.wait_for(r.read(), 10)  # the server ended the connection
        except ConnectionResetError:
            got = b""
        w.close()
        await until(lambda: lost)
        await close_server(server)
        return got

    assert h.run(main()) == b""
    (error,) = h.take_errors()
    assert error["message"] == message
    assert str(error["exception"]) == words
    assert lost == [error["exception"]]


def test_what_a_protocol_holds_is_freed_once_its_connection_ended(h) -> None:
    """Once a connection has ended its transport keeps nothing alive that
    reference counting would not free: the protocol, and what it holds (a
    TLS context: CPython's test_ssl finds such leaks by a weakref, without
    the cyclic GC). asyncio's transports drop their protocol at the end; on
    the ring a receiver bound to the transport (a BufferedProtocol's, or
    while paused) is a cycle until it closes, and must not outlive that."""
    protocols: list = []
    lost: list = []

    class Plain(asyncio.Protocol):
        def connection_made(self, transport) -> None:
            self.t = weakref.ref(transport)  # a protocol that keeps its transport makes a cycle of its own
            protocols.append(weakref.ref(self))

        def data_received(self, data: bytes) -> None:
            pass

        def connection_lost(self, exc) -> None:
            lost.append(exc)

    class PausedThenClosed(Plain):
        def data_received(self, data: bytes) -> None:
            t = self.t()
            t.pause_reading()
            asyncio.get_running_loop().call_soon(t.close)

    class Buffered(asyncio.BufferedProtocol, Plain):
        def get_buffer(self, sizehint: int) -> bytearray:
            return bytearray(4096)

        def buffer_updated(self, nbytes: int) -> None:
            pass

    async def main() -> None:
        for n, factory in enumerate((Plain, PausedThenClosed, Buffered), 1):
            server, port = await start(h.loop, factory)
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(b"x" * 100)
                assert await until(lambda n=n: len(protocols) == n)
            assert await until(lambda n=n: len(lost) == n)  # the client's FIN, or the close
            await close_server(server)
        await asyncio.sleep(0)
        assert [p() for p in protocols] == [None, None, None]

    gc.disable()
    try:
        h.run(main())
    finally:
        gc.enable()


def test_extra_info(h) -> None:
    info: dict = {}

    class Info(asyncio.Protocol):
        def connection_made(self, transport) -> None:
            info["peer"] = transport.get_extra_info("peername")
            info["sock"] = transport.get_extra_info("sockname")
            s = transport.get_extra_info("socket")
            info["sockobj_name"] = s.getsockname() if s is not None else None
            info["nodelay"] = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) if s else None
            info["missing"] = transport.get_extra_info("nonexistent", "dflt")
            transport.close()

    async def main() -> None:
        server, port = await start(h.loop, Info)
        c = socket.create_connection(("127.0.0.1", port))
        info["client"] = c.getsockname()
        c.settimeout(5)
        assert await h.loop.run_in_executor(None, c.recv, 10) == b""
        c.close()
        await asyncio.sleep(0.05)
        await close_server(server)
        return port

    port = h.run(main())
    assert info["peer"] == info["client"]
    assert info["sock"] == ("127.0.0.1", port)
    assert info["sockobj_name"] == ("127.0.0.1", port)
    assert info["missing"] == "dflt"
    assert info["nodelay"] == 1  # asyncio's default for TCP transports: no Nagle delays


def test_wildcard_listener_sockname_via_socket(h) -> None:
    info: dict = {}

    class Info(asyncio.Protocol):
        def connection_made(self, transport) -> None:
            info["sock"] = transport.get_extra_info("sockname")
            transport.close()

    async def main() -> int:
        server = await h.loop.create_server(Info, "0.0.0.0", 0)
        port = server.sockets[0].getsockname()[1]
        c = socket.create_connection(("127.0.0.1", port))
        c.settimeout(5)
        await h.loop.run_in_executor(None, c.recv, 10)
        c.close()
        await asyncio.sleep(0.05)
        await close_server(server)
        return port

    port = h.run(main())
    assert info["sock"] == ("127.0.0.1", port)


def test_write_type_errors_and_empty_writes(h) -> None:
    errs: list = []

    class W(asyncio.Protocol):
        def connection_made(self, transport) -> None:
            for bad in ("str", 12, None):
                try:
                    transport.write(bad)
                except TypeError as exc:
                    errs.append(str(exc))
            transport.write(b"")
            transport.write(bytearray(b"ab"))
            transport.write(memoryview(b"xcdx")[1:3])
            transport.writelines([b"e", bytearray(b"f"), memoryview(b"g")])
            transport.close()

    async def main() -> None:
        server, port = await start(h.loop, W)
        r, w = await asyncio.open_connection("127.0.0.1", port)
        assert await r.read() == b"abcdefg"
        w.close()
        await w.wait_closed()
        await close_server(server)

    h.run(main())
    assert len(errs) == 3


def test_start_server_streams(h) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            writer.write(line.upper())
            await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def main() -> None:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        r, w = await asyncio.open_connection("127.0.0.1", port)
        for i in range(20):
            w.write(f"line {i}\n".encode())
            assert await r.readline() == f"LINE {i}\n".encode()
        w.write_eof()
        assert await r.read() == b""
        w.close()
        await w.wait_closed()
        async with server:
            pass
        await server.wait_closed()

    h.run(main())
    assert not h.errors


def test_server_close_stops_accepting(h) -> None:
    async def main() -> None:
        server, port = await start(h.loop, Echo)
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"x")
        assert await r.readexactly(1) == b"x"
        server.close()
        # an established connection keeps working after close()
        w.write(b"y")
        assert await r.readexactly(1) == b"y"
        w.close()
        await w.wait_closed()
        await server.wait_closed()
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)

    h.run(main())


def test_client_connections_and_connect_accepted_socket(h) -> None:
    """create_connection/open_connection and connect_accepted_socket (a socket
    made elsewhere, e.g. by systemd) run on io_uring transports on our loop."""

    async def main() -> None:
        server, port = await start(h.loop, Echo)
        r, w = await asyncio.open_connection("127.0.0.1", port)
        if h.uring:
            from uringserve.transport import UringTransport

            assert isinstance(w.transport, UringTransport)
        info = (w.get_extra_info("peername"), w.get_extra_info("sockname"))
        assert info[0] == ("127.0.0.1", port)
        assert w.get_extra_info("socket").getsockname() == info[1]
        w.write(b"x" * 100000)
        assert await r.readexactly(100000) == b"x" * 100000
        w.close()
        await w.wait_closed()
        await close_server(server)

        # a connected pair made by hand; one end handed to the loop
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen()
        peer = socket.create_connection(lsock.getsockname())
        accepted, _ = lsock.accept()
        lsock.close()
        transport, proto = await h.loop.connect_accepted_socket(Echo, accepted)
        peer.setblocking(False)
        await h.loop.sock_sendall(peer, b"hello accepted")
        got = b""
        while len(got) < 14:
            got += await h.loop.sock_recv(peer, 100)
        assert got == b"hello accepted"
        transport.close()
        assert await h.loop.sock_recv(peer, 100) == b""
        peer.close()
        await asyncio.sleep(0.05)

    h.run(main())
    assert not h.errors


def test_writer_that_never_yields_learns_the_peer_is_gone(h) -> None:
    """A write/drain loop that never blocks (drain() returns at once while not
    paused) must still fail once the peer has closed (bpo-25441)."""
    import queue
    import threading as th

    addr_q: queue.Queue = queue.Queue()

    def server() -> None:
        with socket.create_server(("127.0.0.1", 0)) as sock:
            addr_q.put(sock.getsockname())
            conn, _ = sock.accept()
            conn.close()

    t = th.Thread(target=server, daemon=True)
    t.start()
    addr = addr_q.get()

    async def client() -> None:
        reader, writer = await asyncio.open_connection(*addr)
        try:
            while True:
                writer.write(b"foo\n")
                await writer.drain()
        finally:
            writer.close()

    t0 = time.monotonic()
    with pytest.raises((ConnectionResetError, ConnectionAbortedError, BrokenPipeError)):
        h.run(client(), timeout=30)
    assert time.monotonic() - t0 < 10
    t.join(5)


def test_flow_control_callback_errors_go_to_the_handler(h) -> None:
    """pause_writing() and resume_writing() that raise are reported to the
    loop's exception handler, naming the callback, the transport and the
    protocol, as asyncio does; the data still arrives."""
    body = b"f" * (4 << 20)

    class Raising(asyncio.Protocol):
        def connection_made(self, transport) -> None:
            self.transport = transport
            small_send_buffer(h, transport)
            transport.write(body)
            transport.close()

        def pause_writing(self) -> None:
            raise ValueError("pause hook bug")

        def resume_writing(self) -> None:
            raise KeyError("resume hook bug")

    data = h.run(serve_and_read(h.loop, Raising))
    assert data == body
    errors = h.take_errors()
    assert [(type(e["exception"]), e["message"]) for e in errors] == [
        (ValueError, "protocol.pause_writing() failed"),
        (KeyError, "protocol.resume_writing() failed"),
    ]
    assert all(isinstance(e["protocol"], Raising) and e["transport"] is not None for e in errors)


def test_connection_lost_that_raises_goes_to_the_handler(h) -> None:
    """An exception from connection_lost() reaches the loop's exception
    handler naming the callback; the loop carries on and nothing leaks."""

    class Raising(asyncio.Protocol):
        def connection_made(self, transport) -> None:
            transport.write(b"bye")
            transport.close()

        def connection_lost(self, exc) -> None:
            raise ValueError("lost hook bug")

    assert h.run(serve_and_read(h.loop, Raising)) == b"bye"
    for _ in range(3):
        h.run(asyncio.sleep(0))
    errors = h.take_errors()
    assert len(errors) == 1 and isinstance(errors[0]["exception"], ValueError)
    assert "connection_lost" in errors[0]["message"]
    if h.uring:  # asyncio's message names its own handle; ours names the callback as asyncio's docs do
        assert errors[0]["message"] == "Exception in callback protocol.connection_lost()"


def test_server_attach_passes_the_transport_only_where_asyncio_takes_it() -> None:
    """asyncio.Server._attach/_detach took no transport before 3.13 and take
    it since: each server class is asked once, and neither form is called
    only to fail (a TypeError formatted twice per connection)."""
    from uringserve import transport as tr

    class Old:
        def __init__(self) -> None:
            self.calls: list = []

        def _attach(self) -> None:
            self.calls.append("attach")

        def _detach(self) -> None:
            self.calls.append("detach")

    class New(Old):
        def _attach(self, transport) -> None:  # type: ignore[override]
            self.calls.append(("attach", transport))

        def _detach(self, transport) -> None:  # type: ignore[override]
            self.calls.append(("detach", transport))

    old, new = Old(), New()
    for server in (old, new):
        tr._server_attach(server, "t")
        tr._server_detach(server, "t")
    assert old.calls == ["attach", "detach"]
    assert new.calls == [("attach", "t"), ("detach", "t")]


def test_accepting_and_closing_a_connection_raises_nothing_in_the_transport(h) -> None:
    """No exception is raised (and caught) in transport.py on a connection's
    way from accept to close: each costs a formatted message per connection."""
    import sys

    raised: list = []

    def local(frame, event, arg):  # noqa: ANN001, ANN202
        if event == "exception":
            raised.append((frame.f_code.co_name, arg[0].__name__))
        return local

    def tracer(frame, event, arg):  # noqa: ANN001, ANN202
        return local if frame.f_code.co_filename.endswith(os.path.join("uringserve", "transport.py")) else None

    async def main() -> None:
        log: list = []
        server, port = await start(h.loop, lambda: Echo(log))
        sys.settrace(tracer)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"x")
            assert await reader.readexactly(1) == b"x"
            writer.close()
            await writer.wait_closed()
            assert await until(lambda: any(isinstance(x, tuple) for x in log))
        finally:
            sys.settrace(None)
        await close_server(server)

    h.run(main())
    assert raised == []
