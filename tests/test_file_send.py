"""Files sent through the ring (read into registered memory, sent from
there): loop.sendfile() on both loops, and UringTransport.write_file() under
pressure: a tiny arena, a full segment list, a fixed-file table, a file that
shrinks, a peer that leaves, a close in the middle. Nothing may be left:
arena chunks, segments, file slots, fds."""

from __future__ import annotations

import asyncio
import errno
import gc
import hashlib
import io
import os
import socket

import pytest
from conftest import serve_and_read, until
from test_hard_paths import run_uring

from uringserve import RingConfig


@pytest.fixture
def data_file(tmp_path):
    data = os.urandom(3 * 1024 * 1024 + 12345)  # not a multiple of any chunk size
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    return path, data


def test_loop_sendfile_byte_exact_with_offset_count_and_order(h, data_file) -> None:
    path, data = data_file
    off, count = 1001, 2 * 1024 * 1024 + 7
    positions: list = []

    class Sender(asyncio.Protocol):
        def connection_made(self, transport) -> None:
            self.t = transport
            asyncio.ensure_future(self.send())

        async def send(self) -> None:
            self.t.write(b"head:")
            with open(path, "rb") as f:
                n = await h.loop.sendfile(self.t, f, off, count)
                positions.append((n, f.tell()))
                n2 = await h.loop.sendfile(self.t, f, len(data) - 10)  # to EOF
                positions.append((n2, f.tell()))
            self.t.write(b":tail")
            self.t.close()

    got = h.run(serve_and_read(h.loop, Sender))
    assert got == b"head:" + data[off : off + count] + data[-10:] + b":tail"
    assert positions == [(count, off + count), (10, len(data))]


def test_loop_sendfile_refuses_write_while_running(h, data_file) -> None:
    path, data = data_file
    seen: list = []

    class Sender(asyncio.Protocol):
        def connection_made(self, transport) -> None:
            self.t = transport
            asyncio.ensure_future(self.send())

        async def send(self) -> None:
            with open(path, "rb") as f:
                task = asyncio.ensure_future(h.loop.sendfile(self.t, f))
                await asyncio.sleep(0)
                try:
                    self.t.write(b"x")
                except RuntimeError as exc:
                    seen.append(str(exc))
                await task
            self.t.close()

    got = h.run(serve_and_read(h.loop, Sender))
    assert got == data
    assert seen == ["unable to write; sendfile is in progress"]


def test_loop_sendfile_of_a_file_without_a_descriptor(h) -> None:
    """A file object with no descriptor (BytesIO): loop.sendfile() with
    fallback=False raises asyncio's SendfileNotAvailableError("not a regular
    file"); with the fallback it sends the bytes by reading them."""
    seen: list = []

    class Sender(asyncio.Protocol):
        def connection_made(self, transport) -> None:
            self.t = transport
            asyncio.ensure_future(self.send())

        async def send(self) -> None:
            f = io.BytesIO(b"in memory")
            try:
                await h.loop.sendfile(self.t, f, fallback=False)
            except asyncio.SendfileNotAvailableError as exc:
                seen.append(str(exc))
            seen.append(await h.loop.sendfile(self.t, f))
            self.t.close()

    assert h.run(serve_and_read(h.loop, Sender)) == b"in memory"
    assert seen == ["not a regular file", 9]


def test_loop_sendfile_waiting_for_earlier_writes_ends_when_aborted(h, data_file) -> None:
    """loop.sendfile() first waits for what was written before it to be sent;
    a peer that reads nothing keeps it waiting, and abort() then ends it with
    asyncio's ConnectionError("Connection is closed by peer"); the file
    position is where it was."""
    path, _ = data_file
    seen: list = []

    class Sender(asyncio.Protocol):
        def connection_made(self, transport) -> None:
            self.t = transport
            asyncio.ensure_future(self.send())

        async def send(self) -> None:
            self.t.write(b"w" * (32 << 20))  # more than a peer that reads nothing takes
            with open(path, "rb") as f:
                task = asyncio.ensure_future(h.loop.sendfile(self.t, f))
                for _ in range(5):  # sendfile() is waiting for the writes to drain
                    await asyncio.sleep(0)
                self.t.abort()
                try:
                    await task
                except ConnectionError as exc:
                    seen.append((type(exc), str(exc), f.tell()))

        def connection_lost(self, exc) -> None:
            seen.append(("lost", exc))

    async def main() -> None:
        server = await h.loop.create_server(Sender, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)):
            await until(lambda: len(seen) == 2)
        server.close()
        await server.wait_closed()

    h.run(main())
    assert sorted(seen, key=str) == sorted(
        [("lost", None), (ConnectionError, "Connection is closed by peer", 0)], key=str
    )


def _write_file_server(loop, path: str, *, fixed: bool, copies: int, gap: bytes = b"|"):
    """A protocol that queues `copies` whole-file sends (fixed slot or fd),
    with `gap` written between them, then closes."""

    class Server(asyncio.Protocol):
        def connection_made(self, transport) -> None:
            ring = loop._ring
            f = open(path, "rb")
            fd = f.fileno()
            slot = ring.file_register(fd) if fixed else -1
            size = os.fstat(fd).st_size
            for _ in range(copies):
                queued = 0
                while queued < size:
                    n = transport.write_file(slot if fixed else fd, queued, size - queued, fixed=fixed, owner=f)
                    assert n > 0
                    queued += n
                transport.write(gap)
            transport.close()
            # the slot and the file may go now: reads in flight hold their own references
            if fixed:
                ring.file_unregister(slot)
            self.f = f

        def connection_lost(self, exc) -> None:
            self.f.close()

    return Server


@pytest.mark.parametrize("fixed", [True, False], ids=["fixed-slot", "fd"])
def test_write_file_tiny_arena_waits_for_chunks(data_file, fixed: bool) -> None:
    """Two 32 KiB arena chunks for three connections each sending the file
    twice: reads wait for free chunks (file_waits > 0), every byte arrives
    in order, and the arena, segments and file slots all come back."""
    path, data = data_file
    cfg = RingConfig(arena_bytes=64 * 1024, chunk_size=32 * 1024)

    async def main(loop):
        server = await loop.create_server(_write_file_server(loop, str(path), fixed=fixed, copies=2), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]

        async def one() -> str:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            body = await r.read()
            w.close()
            await w.wait_closed()
            return hashlib.sha256(body).hexdigest()

        digests = await asyncio.gather(*(one() for _ in range(3)))
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0.05)
        return digests, loop.ring_stats()

    (digests, st), _ = run_uring(cfg, main)
    want = hashlib.sha256(data + b"|" + data + b"|").hexdigest()
    assert digests == [want] * 3
    assert st["file_waits"] > 0 and st["file_bytes"] == 6 * len(data)
    assert st["arena_in_use"] == 0 and st["ext_in_use"] == 0 and st["files_registered"] == 0


def test_write_file_falls_back_when_no_segment_is_free(data_file) -> None:
    path, data = data_file
    cfg = RingConfig(ext_segments=2)
    refused: list = []

    async def main(loop):
        class Server(asyncio.Protocol):
            def connection_made(self, transport) -> None:
                self.f = f = open(path, "rb")  # open until the connection is done
                fd = f.fileno()
                for i in range(3):
                    n = transport.write_file(fd, 0, 100, owner=f)
                    if n == 0:  # the documented answer: write the bytes instead
                        refused.append(i)
                        transport.write(os.pread(fd, 100, 0))
                transport.close()

            def connection_lost(self, exc) -> None:
                self.f.close()

        return await serve_and_read(loop, Server)

    got, st = run_uring(cfg, main)
    assert got == data[:100] * 3
    assert refused == [2]
    assert st["ext_in_use"] == 0


def test_file_that_shrinks_mid_send_ends_the_connection(tmp_path) -> None:
    """The peer was promised the bytes: a short read is a send error
    (ENODATA), the connection closes and nothing is left behind."""
    path = tmp_path / "shrinks.bin"
    path.write_bytes(b"a" * 100_000)
    lost: list = []

    async def main(loop):
        class Server(asyncio.Protocol):
            def connection_made(self, transport) -> None:
                self.f = open(path, "rb")
                transport.write_file(self.f.fileno(), 0, 400_000, owner=self.f)  # more than there is

            def connection_lost(self, exc) -> None:
                self.f.close()
                lost.append(exc)

        return await serve_and_read(loop, Server)

    got, st = run_uring(RingConfig(), main)
    assert got == b"a" * 100_000
    assert len(lost) == 1 and isinstance(lost[0], OSError) and lost[0].errno == 61  # ENODATA
    assert st["arena_in_use"] == 0 and st["ext_in_use"] == 0


def test_peer_leaving_mid_file_and_abort_leave_nothing(data_file) -> None:
    path, data = data_file
    big = 64 * 1024 * 1024

    async def main(loop):
        transports: list = []

        class Server(asyncio.Protocol):
            def connection_made(self, transport) -> None:
                transports.append(transport)
                self.f = f = open(path, "rb")
                for _ in range(big // len(data)):
                    transport.write_file(f.fileno(), 0, len(data), owner=f)

            def connection_lost(self, exc) -> None:
                self.f.close()

        server = await loop.create_server(Server, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        # one peer reads a little and resets; another is aborted by the server
        s1, s2 = socket.socket(), socket.socket()
        for s in (s1, s2):
            s.setblocking(False)
            await loop.sock_connect(s, ("127.0.0.1", port))
        assert await loop.sock_recv(s1, 65536)  # its file is being sent
        assert await loop.sock_recv(s2, 65536)
        assert await until(lambda: len(transports) == 2)
        s1.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s1.close()
        by_peer = {t.get_extra_info("peername")[1]: t for t in transports}
        by_peer[s2.getsockname()[1]].abort()
        # both connections end on the server: the reset one and the aborted one
        await until(lambda: all(t.is_closing() for t in transports) and loop.ring_stats()["slots_used"] == 0)
        s2.close()
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0.05)
        return loop.ring_stats()

    st, _ = run_uring(RingConfig(), main)
    assert st["arena_in_use"] == 0 and st["ext_in_use"] == 0 and st["slots_used"] == 0


def test_write_file_flow_control_pauses_and_resumes(data_file) -> None:
    path, data = data_file
    events: list = []

    async def main(loop):
        class Server(asyncio.Protocol):
            def connection_made(self, transport) -> None:
                self.f = open(path, "rb")
                transport.write_file(self.f.fileno(), 0, len(data), owner=self.f)
                transport.close()

            def pause_writing(self) -> None:
                events.append("pause")

            def resume_writing(self) -> None:
                events.append("resume")

            def connection_lost(self, exc) -> None:
                self.f.close()

        return await serve_and_read(loop, Server)

    got, _ = run_uring(RingConfig(), main)
    assert got == data
    assert events == ["pause", "resume"]


def test_file_register_needs_fixed_files_and_room(tmp_path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x")

    async def main(loop):
        with open(path, "rb") as f:
            return loop._ring.file_register(f.fileno())

    ret, _ = run_uring(RingConfig(fixed_files=False), main)
    assert ret == -95  # EOPNOTSUPP: the caller uses the fd

    async def fill(loop):
        with open(path, "rb") as f:
            slots = [loop._ring.file_register(f.fileno()) for _ in range(4)]
            for s in slots:
                if s >= 0:
                    loop._ring.file_unregister(s)
            await asyncio.sleep(0.02)  # the slots empty by an SQE, after anything queued
            return slots, loop.ring_stats()["slots_used"]

    (slots, used), _ = run_uring(RingConfig(files=4, reserved_slots=1), fill)
    assert [s >= 0 for s in slots] == [True, True, True, False] and slots[3] == -23  # ENFILE
    assert used == 0


def test_a_queued_file_range_waits_for_a_segment(tmp_path) -> None:
    """One segment and three chunks for two connections: the first one's
    file, sent to a reader that reads nothing yet, holds the segment and two
    chunks; the second connection's write squeezes through the third chunk
    and the file range queued behind it finds no segment. It must go out,
    in order, when the segment comes back (US_EV_ARENA)."""
    data = os.urandom(24 << 20)  # more than the kernel's socket buffers take from an unread socket
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    small = data[:5000]
    cfg = RingConfig(ext_segments=1, arena_bytes=96 * 1024, chunk_size=32 * 1024)

    async def main(loop):
        order: list = []

        class Server(asyncio.Protocol):
            def connection_made(self, transport) -> None:
                self.f = open(path, "rb")
                fd = self.f.fileno()
                if not order:  # the first connection: the big file, holding the segment
                    order.append("big")
                    assert transport.write_file(fd, 0, len(data), owner=self.f) == len(data)
                else:  # the second: a write that waits for the arena, then a file range behind it
                    order.append("small")
                    transport.write(bytearray(b"x" * 100_000))  # copied (not in place): the arena is full
                    assert transport.write_file(fd, 0, len(small), owner=self.f) == len(small)
                    transport.write(b"end")
                transport.close()

            def connection_lost(self, exc) -> None:
                self.f.close()

        # what the core answers each file range: the waiting path is an ENOBUFS, then a success
        answers: list = []
        real_send_file = loop._ring.send_file

        def send_file(*args):
            ret = real_send_file(*args)
            answers.append((args[4] if len(args) > 4 else None, ret))  # (offset, result)
            return ret

        loop._ring.send_file = send_file

        server = await loop.create_server(Server, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        slow = socket.socket()
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)  # before connect: a small window
        slow.connect(("127.0.0.1", port))
        r1, w1 = await asyncio.open_connection(sock=slow)
        # the big file's reads stall on the unread socket: the segment and two chunks stay held
        assert await until(lambda: loop.ring_stats()["ext_in_use"] == 1 and loop.ring_stats()["arena_in_use"] >= 2), (
            "the big file never held the segment and two chunks"
        )
        r2, w2 = await asyncio.open_connection("127.0.0.1", port)
        second = asyncio.ensure_future(r2.read())
        assert await until(lambda: any(ret == -errno.ENOBUFS for _, ret in answers)), (
            "the small range always found a segment"
        )
        assert not second.done()  # it waits for the segment, not lost and not out of order
        first = await r1.read()
        got = await asyncio.wait_for(second, 10)
        for w in (w1, w2):
            w.close()
            await w.wait_closed()
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0.05)
        return first, got, loop.ring_stats()

    (first, got, st), _ = run_uring(cfg, main)
    assert first == data
    assert got == b"x" * 100_000 + small + b"end"
    assert st["file_sends"] == 2  # the big range and the small one, queued once each in the end
    assert st["ext_in_use"] == 0 and st["arena_in_use"] == 0


def test_write_file_holds_its_owner_until_the_range_is_read(tmp_path) -> None:
    """The caller may drop its file object after write_file(owner=f): the
    ring keeps it (and so the fd) alive until the core has read the range,
    on the direct path and when the range waits behind a full arena."""
    data = os.urandom(8 << 20)  # read in pieces while a slow reader drains
    path = tmp_path / "owned.bin"
    path.write_bytes(data)
    head = b"h" * 200_000

    released: list = []

    class Owner:
        """Closes its file when the ring lets it go."""

        def __init__(self) -> None:
            self.f = open(path, "rb")

        def __del__(self) -> None:
            self.f.close()
            released.append(True)

    async def main(loop):
        class Server(asyncio.Protocol):
            def connection_made(self, transport) -> None:
                owner = Owner()
                if behind_pending:
                    transport.write(bytearray(head))  # copied: fills the small arena, the rest waits
                transport.write_file(owner.f.fileno(), 0, len(data), owner=owner)
                transport.close()  # and no reference to the owner is kept here

        server = await loop.create_server(Server, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        r, w = await asyncio.open_connection("127.0.0.1", port)
        got = bytearray()
        next_collect = 0
        while chunk := await r.read(65536):
            got += chunk
            # an owner nobody held is freed at once (no cycle), its file closed
            # and the rest of the range unreadable; a collection per MiB also
            # covers one held only through a cycle. Not one per read: in a
            # loaded suite's big heap that made the test take minutes
            if len(got) >= next_collect:
                gc.collect()
                next_collect += 1 << 20
        w.close()
        await w.wait_closed()
        server.close()
        await server.wait_closed()
        return bytes(got)

    for behind_pending in (False, True):
        cfg = RingConfig(chunk_size=16384, arena_bytes=65536)
        got, st = run_uring(cfg, main)
        assert got == (head if behind_pending else b"") + data
        assert st["ext_in_use"] == 0 and st["arena_in_use"] == 0
        gc.collect()
        assert len(released) == 1 + behind_pending  # and let go once the range was read


def test_abort_with_a_registered_file_range_waiting_releases_its_slot(tmp_path) -> None:
    """A fixed-file range waiting behind a full arena holds its file's slot;
    abort() drops the range and the hold, so the slot can be given up."""
    path = tmp_path / "f.bin"
    path.write_bytes(os.urandom(1 << 20))

    async def main(loop):
        done = asyncio.Event()

        class Server(asyncio.Protocol):
            def connection_made(self, transport) -> None:
                with open(path, "rb") as f:
                    self.slot = loop._ring.file_register(f.fileno())
                assert self.slot >= 0
                transport.write(bytearray(b"x" * 300_000))  # copied: the arena fills, the rest waits
                assert transport.write_file(self.slot, 0, 1 << 20, fixed=True) == 1 << 20  # waits too
                transport.abort()
                loop._ring.file_unregister(self.slot)
                done.set()

        server = await loop.create_server(Server, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        s = socket.socket()
        s.setblocking(False)
        await loop.sock_connect(s, ("127.0.0.1", port))
        await done.wait()
        s.close()
        server.close()
        await server.wait_closed()
        await until(lambda: loop.ring_stats()["files_registered"] == 0, timeout=1.0)
        return loop.ring_stats()["files_registered"]

    registered, st = run_uring(RingConfig(chunk_size=16384, arena_bytes=65536), main)
    assert registered == 0 and st["arena_in_use"] == 0
