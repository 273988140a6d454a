"""The transport's state machine: random sequences of write, writelines,
write_eof, pause/resume reading, close and abort, interleaved with peer
resets, half-closes, peer sends and reads, and loop turns (completions),
on a real TCP connection, on UringEventLoop and on the stdlib loop alike.

Invariants: connection_lost is called exactly once, and nothing after it;
eof_received at most once, before it; data arrives in order; the peer
receives a prefix of what was written before close() or abort() (never a
byte written after, never a byte out of order), and all of it after a
graceful close() when nothing reset the connection (an abort, a peer reset,
or the peer sending towards a closing socket, which the kernel answers with
RST on either loop); no exception reaches the loop's exception handler."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import sys
import threading
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from tests.fuzz.common import Carver, fuzz  # noqa: E402

LOOPS: list[asyncio.AbstractEventLoop] = []
LISTENER: socket.socket | None = None
ERRORS: list[dict] = []
PATTERN = bytes(range(251)) * 13000  # a byte's value tells its offset (mod 251); 3.2 MB > 24 writes of 128 KiB


def instrument() -> None:
    import uringserve
    import uringserve.loop  # noqa: F401
    import uringserve.transport  # noqa: F401

    _ = uringserve


def _setup() -> None:
    global LISTENER
    if LOOPS:
        return
    import uringserve

    LISTENER = socket.create_server(("127.0.0.1", 0), backlog=64)
    for loop in (uringserve.new_event_loop(), asyncio.new_event_loop()):
        loop.set_exception_handler(lambda _l, ctx: ERRORS.append(ctx))
        LOOPS.append(loop)


class Recorder(asyncio.Protocol):
    def __init__(self) -> None:
        self.events: list[str] = []
        self.received = bytearray()

    def connection_made(self, transport: Any) -> None:
        self.events.append("made")

    def data_received(self, data: bytes) -> None:
        assert self.events[-1] not in ("lost", "eof"), f"data after {self.events[-1]}"
        self.received += data
        self.events.append("data")

    def eof_received(self) -> bool:
        assert "lost" not in self.events, self.events
        self.events.append("eof")
        return True  # keep the write side open: the sequence decides

    def connection_lost(self, exc: BaseException | None) -> None:
        assert "lost" not in self.events, "connection_lost twice"
        self.events.append("lost")


def _peer_read(peer: socket.socket, into: bytearray, until_eof: bool) -> bool:
    """Read what is there (all of it until EOF when asked); False once reset."""
    peer.settimeout(5.0 if until_eof else 0.0)
    try:
        while True:
            chunk = peer.recv(1 << 16)
            if not chunk:
                return True
            into += chunk
    except (BlockingIOError, TimeoutError):
        return True
    except ConnectionResetError:
        return False


def one_input(data: bytes) -> None:
    _setup()
    assert LISTENER is not None
    c = Carver(data)
    loop = LOOPS[c.byte() & 1]
    peer = socket.create_connection(LISTENER.getsockname())
    server_sock, _ = LISTENER.accept()
    proto = Recorder()
    transport, _ = loop.run_until_complete(loop.connect_accepted_socket(lambda: proto, server_sock))
    written = 0  # bytes of PATTERN handed to write()/writelines() while writing was allowed
    got = bytearray()  # what the peer read
    closed = aborted = eof_sent = peer_reset = peer_shut = peer_sent = False
    peer_ok = True

    def write(n: int, lines: bool) -> None:
        nonlocal written
        chunk = PATTERN[written % 251 : written % 251 + n]
        if eof_sent:
            try:
                transport.write(chunk)
            except RuntimeError:
                return  # asyncio's answer to a write after write_eof()
            raise AssertionError("write() after write_eof() was accepted")
        if lines:
            transport.writelines([chunk[: n // 2], chunk[n // 2 :]])
        else:
            transport.write(chunk)
        if not (closed or aborted or transport.is_closing()):
            written += n

    async def turns(k: int) -> None:
        for _ in range(k):
            await asyncio.sleep(0)

    for _ in range(min(c.left, 24)):
        op = c.byte() % 12
        if op in (0, 1):
            size = 1 << (c.byte() % 18)  # up to 128 KiB: writes back up behind an unread peer
            if not (closed or aborted):
                write(size, op == 1)
        elif op == 2 and not (closed or aborted or eof_sent) and transport.can_write_eof():
            if transport.is_closing():
                transport.write_eof()  # a no-op on a closing transport (asyncio's too)
                continue
            try:
                transport.write_eof()
            except OSError:
                # the stdlib loop's shutdown() raises ENOTCONN once the peer reset
                assert peer_reset and loop is LOOPS[1], "write_eof() raised"
            eof_sent = True
        elif op == 3 and not (closed or aborted):
            transport.pause_reading()
        elif op == 4 and not (closed or aborted):
            transport.resume_reading()
        elif op == 5:
            transport.close()
            closed = True
        elif op == 6:
            transport.abort()
            aborted = True
        elif op == 7 and not (peer_reset or peer_shut):
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            peer.close()
            peer_reset = True
        elif op == 8 and not (peer_reset or peer_shut):
            try:
                peer.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # the server reset it already (abort)
            peer_shut = True
        elif op == 9 and not (peer_reset or peer_shut):
            peer_sent = True
            try:
                peer.send(b"x" * (c.byte() + 1))
            except OSError:
                pass
        elif op == 10:
            loop.run_until_complete(turns(c.byte() % 8 + 1))
        elif op == 11 and not peer_reset and peer_ok:
            peer_ok = _peer_read(peer, got, False)
    # everything written arrives only when nothing reset the connection: data
    # the peer sends towards a closing socket makes the kernel answer RST and
    # drop what was still unsent (the stdlib loop alike: why HTTP lingers)
    graceful = not (aborted or peer_reset or peer_sent)
    if not (closed or aborted):
        transport.close()
        closed = True
    # the peer reads to the end while the loop runs the close through
    reader = None
    if not peer_reset and peer_ok:
        outcome: list[bool] = []
        reader = threading.Thread(target=lambda: outcome.append(_peer_read(peer, got, True)))
        reader.start()
    loop.run_until_complete(_until(lambda: "lost" in proto.events, loop))
    if reader is not None:
        reader.join(15)
        assert not reader.is_alive(), "the peer never saw the end of the stream"
        peer_ok = outcome[0]
    if not peer_reset:
        peer.close()
    assert proto.events[0] == "made" and proto.events.count("lost") == 1, proto.events
    # once. (CPython's selector loop re-adds its reader on resume_reading()
    # after an EOF it was told to keep open, and reports the EOF again)
    assert proto.events.count("eof") <= (1 if loop is LOOPS[0] else 3), proto.events
    assert proto.events[-1] == "lost", proto.events
    assert proto.received == b"x" * len(proto.received), "received bytes the peer never sent"
    assert len(got) <= written and got == PATTERN[: len(got)], "the peer received bytes out of order or never written"
    if graceful and peer_ok:
        assert len(got) == written, f"graceful close delivered {len(got)} of {written} bytes"
    assert not ERRORS, [e.get("message") for e in ERRORS]


async def _until(cond: Any, loop: asyncio.AbstractEventLoop) -> None:
    end = loop.time() + 10
    while not cond():
        assert loop.time() < end, "connection_lost never came"
        await asyncio.sleep(0.001)


def main() -> None:
    fuzz(one_input, instrument)


if __name__ == "__main__":
    main()
