"""The transport's answers to a connection that broke where only a fault can
break it: a send that failed in the kernel and was reaped by a flush (as
write() flushes when it passes high water, and as another transport's
resume_writing() may within the same loop iteration) before the loop
delivered the failure. The core then refuses later sends at once (-EPIPE),
and the transport must end the connection with that error, not raise.

These paths were listed in tests/mutation/survivors.txt as reachable only
with fault injection (uringserve.faults); these tests reach them."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import time

import pytest
from conftest import until
from test_hard_paths import run_uring

from uringserve import RingConfig, faults


def break_next_sends(loop, deadline: float = 10.0) -> None:
    """Fail the sends the ring submits next with EPIPE, and submit them now
    (ring.flush(), which reaps their completions at once and keeps their
    events for the next wait): the core knows the connection is broken, the
    transport does not yet."""
    ring = loop._ring
    faults.inject(ring, [faults.Fault("send", "EPIPE", every=1)])
    try:
        end = time.monotonic() + deadline
        while faults.counts(ring)["send"][1] == 0:  # a send still in flight goes out once it completes
            assert time.monotonic() < end, "no send was submitted to fail"
            ring.flush()
            time.sleep(0.001)
    finally:
        faults.clear(ring)


def test_sendfile_after_an_unseen_send_failure_raises_asyncios_error(tmp_path) -> None:
    """write() a head, then loop.sendfile() the body, the head's send having
    failed (reaped by the flush of write() past high water, not delivered):
    the body's range is refused at once, sendfile() raises the error asyncio's
    own transports raise, connection_lost() gets the real cause, the file
    position stays where it was, and the client gets no byte of either."""
    body = os.urandom(200_000)
    path = tmp_path / "body.bin"
    path.write_bytes(body)

    async def main(loop):
        result: dict = {}
        lost = loop.create_future()

        class Server(asyncio.Protocol):
            def connection_made(self, transport) -> None:
                self.t = transport
                loop.create_task(self.respond())

            async def respond(self) -> None:
                faults.inject(loop._ring, [faults.Fault("send", "EPIPE", nth=1)])
                self.t.write(b"h" * 100_000)  # past high water: write() flushes, the failure is reaped
                result["faults"] = faults.counts(loop._ring)["send"]
                faults.clear(loop._ring)
                with open(path, "rb") as f:
                    try:
                        await loop.sendfile(self.t, f)
                    except ConnectionError as exc:
                        result["raised"] = exc
                    result["position"] = f.tell()

            def connection_lost(self, exc) -> None:
                lost.set_result(exc)

        server = await loop.create_server(Server, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]

        def client() -> bytes:
            got = bytearray()
            with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
                try:
                    while chunk := s.recv(65536):
                        got += chunk
                except ConnectionResetError:
                    pass
            return bytes(got)

        got = await loop.run_in_executor(None, client)
        exc = await asyncio.wait_for(lost, 10)
        server.close()
        await server.wait_closed()
        return result, exc, got

    (result, exc, got), st = run_uring(RingConfig(), main)
    assert result["faults"] == (1, 1)  # the head's send failed in the kernel
    raised = result["raised"]
    assert type(raised) is ConnectionError and str(raised) == "Connection is closed by peer"  # asyncio's words
    assert isinstance(exc, BrokenPipeError)
    assert result["position"] == 0  # nothing of the file was sent
    assert got == b""
    assert st["arena_in_use"] == 0 and st["ext_in_use"] == 0 and st["slots_used"] == 0


@pytest.mark.parametrize("fixed", [False, True], ids=["fd", "fixed-file"])
def test_a_waiting_file_range_refused_by_the_core_ends_its_connection(tmp_path, fixed: bool) -> None:
    """One segment and three chunks. A client that reads nothing holds them
    all (a big file and a write behind it); a second connection's write
    finds no chunk and waits, with a small file range queued behind it. The
    server drops the stalled client (abort()): its chunks come back, the
    second connection's bytes take one and the range is next -- and just
    then that connection breaks (its send fails in the kernel and is reaped
    by a flush, as another transport's write may flush in the same loop
    iteration, before the loop delivers the failure). The core refuses the
    range at once (-EPIPE): the connection ends with BrokenPipeError, its
    client gets nothing, and nothing is left: arena, segment, the range's
    hold on its fixed-file slot -- given back once: the hold another range
    of the same file has (a static file sent to two clients) keeps the slot
    until it is given back too."""
    data = os.urandom(24 << 20)  # more than the kernel's socket buffers take from an unread socket
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    small = data[:5000]
    # writes are copied into the arena, never sent in place (that takes a segment)
    cfg = RingConfig(ext_segments=1, arena_bytes=96 * 1024, chunk_size=32 * 1024, inplace_min=1 << 20)

    async def main(loop):
        transports: dict = {}
        lost: dict = {}
        kept: dict = {}  # the fixed-file slot and whether it stayed while another hold remained
        answers: list = []
        stats = loop.ring_stats

        class Server(asyncio.Protocol):
            def connection_made(self, transport) -> None:
                self.role = "waiting" if transports else "stalled"
                transports[self.role] = transport
                self.f = open(path, "rb")
                self.slot = -1
                fd = self.f.fileno()
                if self.role == "stalled":
                    assert transport.write_file(fd, 0, len(data), owner=self.f) == len(data)
                    transport.write(b"s" * 40_000)  # the third chunk
                    return
                transport.write(b"w" * 1000)  # no chunk free: all of it waits
                assert transport._pending and not loop._ring.queued(transport._slot, transport._gen)
                if fixed:
                    self.slot = loop._ring.file_register(fd)
                    assert self.slot >= 0
                    assert loop._ring.file_hold(self.slot, 1) == 0  # another range's, as for a second client
                    fd = self.slot
                assert transport.write_file(fd, 0, len(small), fixed=fixed, owner=self.f) == len(small)

            def connection_lost(self, exc) -> None:
                if self.slot >= 0:
                    loop._ring.file_unregister(self.slot)
                    loop._ring.flush()  # a drop, if one was due, is done and counted now
                    kept["slot"], kept["registered"] = self.slot, loop.ring_stats()["files_registered"]
                self.f.close()
                lost[self.role] = exc

        real_send_file = loop._ring.send_file

        def send_file(slot, gen, file, fixed, offset, count, owner):
            if count == len(small) and not answers:
                # the waiting range, first try: the bytes queued just before it go out now and fail
                break_next_sends(loop)
            ret = real_send_file(slot, gen, file, fixed, offset, count, owner)
            if count == len(small):
                answers.append(ret)
            return ret

        loop._ring.send_file = send_file

        server = await loop.create_server(Server, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        slow = socket.socket()
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)  # before connect: a small window
        slow.connect(("127.0.0.1", port))
        assert await until(lambda: stats()["ext_in_use"] == 1 and stats()["arena_in_use"] == 3), (
            "the stalled client never held the segment and every chunk"
        )

        def client() -> bytes:
            got = bytearray()
            with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
                try:
                    while chunk := s.recv(65536):
                        got += chunk
                except ConnectionResetError:
                    pass
            return bytes(got)

        reading = loop.run_in_executor(None, client)
        assert await until(lambda: "waiting" in transports and loop.arena_waits), "the write did not wait"
        transports["stalled"].abort()
        got = await reading
        slow.close()
        assert await until(lambda: len(lost) == 2)
        if fixed:
            loop._ring.file_hold(kept["slot"], -1)  # the other range is done: now the slot goes
        server.close()
        await server.wait_closed()
        await until(lambda: stats()["slots_used"] == 0 and stats()["files_registered"] == 0)
        return got, answers, lost, kept, stats()

    (got, answers, lost, kept, st), _ = run_uring(cfg, main)
    assert answers == [-errno.EPIPE]  # refused at once, tried once
    assert isinstance(lost["waiting"], BrokenPipeError) and lost["stalled"] is None
    assert got == b""  # the failed send moved no byte; none of the range either
    if fixed:
        assert kept["registered"] == 1, "the slot went while another range still held it"
    assert st["arena_in_use"] == 0 and st["ext_in_use"] == 0 and st["files_registered"] == 0
