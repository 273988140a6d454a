"""The paths a server only takes under pressure, forced with tiny sizes:
a full fixed-file table, an empty buffer ring, a full send arena, stale
completions after slot reuse, and a loop closed with work in flight."""

from __future__ import annotations

import asyncio
import fcntl
import gc
import os
import socket
import struct
import termios
import threading
import time
from typing import Any

import pytest
from conftest import blocking_client, fd_targets, open_fds, serve_and_read, until

import uringserve
from uringserve import RingConfig
from uringserve.ring import EV_ACCEPT, EV_CLOSED, EV_RECV, Ring, data_of


class Echo(asyncio.Protocol):
    def connection_made(self, transport) -> None:
        self.t = transport

    def data_received(self, data: bytes) -> None:
        self.t.write(data)


def vm_pinned_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmPin:"):
                return int(line.split()[1])
    return 0


def run_uring(cfg: RingConfig, main, timeout: float = 60.0):
    """Run main(loop) on a fresh UringEventLoop; check nothing is left after close."""
    gc.collect()
    fds = open_fds()
    loop = uringserve.new_event_loop(cfg)
    errors: list = []
    loop.set_exception_handler(lambda _l, ctx: errors.append(ctx))
    try:
        result = loop.run_until_complete(asyncio.wait_for(main(loop), timeout))
        stats = loop.ring_stats()
        waiting = list(loop.arena_waits)  # transports waiting for arena chunks: none once all closed
    finally:
        loop.close()
    gc.collect()
    assert not errors, errors
    assert not waiting or stats["slots_used"], f"closed transports still wait for the arena: {waiting}"
    leaked = open_fds() - fds
    assert not leaked, f"fds left open: {fd_targets(leaked)}"
    return result, stats


async def echo_clients(port: int, n: int, size: int) -> list[bool]:
    async def one(i: int) -> bool:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        msg = (bytes([i % 251]) + os.urandom(16)) * (size // 17 + 1)
        w.write(msg)
        ok = await r.readexactly(len(msg)) == msg
        w.close()
        await w.wait_closed()
        return ok

    return await asyncio.gather(*(one(i) for i in range(n)))


def test_full_fixed_file_table_serves_everyone_in_turn() -> None:
    """A table of 4 slots (1 for the listener, 3 for connections) and 20
    clients at once: accepting pauses at a full table and resumes as slots
    free; no accepted connection is dropped."""
    cfg = RingConfig(files=4, reserved_slots=1)

    async def main(loop):
        server = await loop.create_server(Echo, "127.0.0.1", 0, backlog=64)
        port = server.sockets[0].getsockname()[1]
        results = await echo_clients(port, 20, 3000)
        peak = loop.ring_stats()
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0.05)
        return results, peak

    (results, peak), stats = run_uring(cfg, main)
    assert results == [True] * 20
    assert stats["slots_total"] == 3
    assert stats["accepts"] == 20
    assert stats["accept_paused"] > 0  # the table really was full
    assert stats["accept_errors"] == 0  # and nothing was refused or dropped
    assert stats["slots_used"] == 0


def test_tiny_buffer_ring_enobufs_keeps_every_byte_in_order() -> None:
    cfg = RingConfig(buf_count=2, buf_size=256)

    async def main(loop):
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        results = await echo_clients(port, 8, 200_000)
        server.close()
        await server.wait_closed()
        return results

    results, stats = run_uring(cfg, main)
    assert results == [True] * 8
    assert stats["enobufs"] > 0
    assert stats["bufs_out"] == 0  # every buffer went back to the ring


def test_buffer_ring_grows_under_a_burst() -> None:
    """Only 64 buffers circulate at first (cache locality); ENOBUFS under a
    burst brings the reserve in, and the bytes still arrive intact."""
    cfg = RingConfig(buf_count=1024, buf_size=1024)

    async def main(loop):
        assert loop.ring_stats()["bufs_circulating"] == 64
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        results = await echo_clients(port, 40, 100_000)
        server.close()
        await server.wait_closed()
        return results

    results, stats = run_uring(cfg, main)
    assert results == [True] * 40
    assert stats["enobufs"] > 0
    assert stats["bufs_circulating"] > 64
    assert stats["bufs_out"] == 0


@pytest.mark.parametrize("bundle", [False, True])
def test_recv_bundles_keep_order(bundle: bool) -> None:
    cfg = RingConfig(buf_count=8, buf_size=1024, recv_bundle=bundle)

    async def main(loop):
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        results = await echo_clients(port, 4, 500_000)
        server.close()
        await server.wait_closed()
        return results

    results, stats = run_uring(cfg, main)
    assert results == [True] * 4
    assert stats["buf_resyncs"] == 0
    if bundle:
        assert stats["bundles"] > 0


def test_tiny_send_arena_backpressure_delivers_everything() -> None:
    """An arena of 2 chunks and multi-MiB writes: the protocol is paused and
    resumed, the rest waits in the transport, every byte arrives in order."""
    cfg = RingConfig(chunk_size=4096, arena_bytes=8192, inplace_min=1 << 30)  # every write is copied
    total = 6 << 20
    events: list[str] = []

    class Blast(asyncio.Protocol):
        def connection_made(self, transport) -> None:
            self.t = transport
            self.sent = 0
            self.paused = False
            self.push()

        def push(self) -> None:
            while not self.paused and self.sent < total:
                block = bytes([(self.sent >> 20) & 0xFF]) * (1 << 20)
                self.t.write(block)
                self.sent += len(block)
            if self.sent >= total and not self.paused:
                self.t.close()

        def pause_writing(self) -> None:
            events.append("pause")
            self.paused = True

        def resume_writing(self) -> None:
            events.append("resume")
            self.paused = False
            self.push()

    async def main(loop):
        return await serve_and_read(loop, Blast)

    data, stats = run_uring(cfg, main)
    want = b"".join(bytes([i]) * (1 << 20) for i in range(6))
    assert len(data) == total and data == want
    assert "pause" in events and "resume" in events
    assert stats["arena_short"] > 0
    assert stats["arena_in_use"] == 0


@pytest.mark.parametrize(
    "cfg",
    [
        RingConfig(send_mode="plain"),
        RingConfig(send_mode="zc"),
        RingConfig(send_mode="zc_fixed"),
        RingConfig(recv_mode="plain"),
        RingConfig(fixed_files=False),
        RingConfig(setup_flags_off=(1 << 13) | (1 << 12) | (1 << 7) | (1 << 6)),
    ],
    ids=["send-plain", "send-zc", "send-zc-fixed", "recv-plain", "regular-fds", "no-optional-setup-flags"],
)
def test_ablation_modes_are_byte_exact(cfg: RingConfig) -> None:
    """Each switch changes the path taken (its counter or the fd table says
    so) and the bytes stay exact."""

    async def main(loop):
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        # where accepted connections live: fixed slots take no process fd
        before = socket_fds()
        held = [socket.create_connection(("127.0.0.1", port)) for _ in range(8)]
        await until(lambda: loop.ring_stats()["accepts"] >= 8)
        # a regular fd appears when its accept completes: counted above
        await until(lambda: cfg.fixed_files or socket_fds() - before - len(held) >= 8, timeout=20)
        server_side = socket_fds() - before - len(held)
        for s in held:
            s.close()
        result: dict = {"server_side_fds": server_side}
        payload = os.urandom(3 << 20)
        t = blocking_client(port, payload, len(payload), result)
        while t.is_alive():
            await asyncio.sleep(0.02)
        small = await echo_clients(port, 10, 100)
        server.close()
        await server.wait_closed()
        return result.get("data") == payload and all(small), result["server_side_fds"]

    (ok, server_side_fds), stats = run_uring(cfg, main)
    assert ok
    if cfg.send_mode in ("zc", "zc_fixed"):
        assert stats["zc_sends"] > 0 and stats["plain_sends"] == 0
        assert stats["zc_notifs"] == stats["zc_sends"]
        # from the registered arena (fixed buffer) only when asked for
        assert (stats["zc_fixed_sends"] > 0) is (cfg.send_mode == "zc_fixed")
    elif cfg.send_mode == "plain":
        assert stats["zc_sends"] == 0 and stats["plain_sends"] > 0
    else:  # auto: the echo's writes (one per receive, under zc_threshold) go out plain
        assert stats["plain_sends"] > 0
    assert (stats["plain_recvs"] == stats["recvs"] > 0) is (cfg.recv_mode == "plain")
    assert server_side_fds == (0 if cfg.fixed_files else 8)
    if cfg.setup_flags_off:
        assert stats["setup_flags"] & ((1 << 13) | (1 << 12)) == 0
    else:
        assert stats["setup_flags"] & ((1 << 13) | (1 << 12)) == (1 << 13) | (1 << 12)


def socket_fds() -> int:
    return sum(target.startswith("socket:") for target in fd_targets(open_fds()).values())


@pytest.mark.parametrize("segments", [4096, 2])
def test_inplace_sends_hold_bytes_until_the_kernel_is_done(segments: int) -> None:
    """Large bytes writes go out without a copy; the ring keeps each object
    alive until its send completes, then lets go. With 2 segments most
    writes fall back to the copy path, in order (no high-water flush in
    between: one would let the kernel take both segments at once and free
    them for the next writes)."""
    cfg = RingConfig(ext_segments=segments, inplace_min=1024)
    blocks = [bytes([i]) * (100_000 + i) for i in range(40)]

    class Sender(asyncio.Protocol):
        def connection_made(self, transport) -> None:
            transport.set_write_buffer_limits(high=1 << 30)
            for b in blocks:
                transport.write(b)
                transport.write(b"-")  # small: copied, interleaved in order
            transport.close()

    async def main(loop):
        data = await serve_and_read(loop, Sender)
        return data, sum(x is not None for x in loop.ring.held)

    (data, held), stats = run_uring(cfg, main)
    assert data == b"".join(b + b"-" for b in blocks)
    assert held == 0 and stats["ext_in_use"] == 0
    assert stats["ext_sends"] >= min(segments, 40)
    if segments == 2:
        assert stats["ext_sends"] < 40


def test_auto_send_mode_falls_back_when_zero_copy_is_copied() -> None:
    """On loopback the kernel copies send_zc data anyway; a connection whose
    notifications say so switches itself to plain send."""
    cfg = RingConfig(zc_threshold=4096)

    class Big(asyncio.Protocol):
        def connection_made(self, transport) -> None:
            self.t = transport

        def data_received(self, data: bytes) -> None:
            for _ in range(64):
                self.t.write(b"b" * 65536)
            self.t.close()

    async def main(loop):
        server = await loop.create_server(Big, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"go")
        data = await r.read()
        w.close()
        await w.wait_closed()
        server.close()
        await server.wait_closed()
        return data

    data, stats = run_uring(cfg, main)
    assert data == b"b" * (64 * 65536)
    assert stats["zc_sends"] >= 1 and stats["zc_copied"] >= 1
    assert stats["plain_sends"] > stats["zc_sends"]  # fell back after the first copies


def test_stale_completion_after_close_and_slot_reuse() -> None:
    """A completion for a closed connection never reaches the connection
    that reuses its slot (ring level: one connection slot only)."""
    fds = open_fds()
    r = Ring(RingConfig(files=2, reserved_slots=1))
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(8)
    port = ls.getsockname()[1]
    r.listener_start(r.listener_add(ls.fileno()))

    def collect(until, timeout=5.0):
        out = []
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            n = r.wait(0.05)
            for i in range(n):
                ev = r.events[i]
                out.append((ev.kind, ev.conn, ev.gen, data_of(ev) if ev.kind == EV_RECV else None))
            if until(out):
                return out
        raise AssertionError(f"timed out; saw {out}")

    a = socket.create_connection(("127.0.0.1", port))
    ev = collect(lambda o: any(k == EV_ACCEPT for k, *_ in o))
    _, slot_a, gen_a, _ = next(e for e in ev if e[0] == EV_ACCEPT)
    a.sendall(b"from A")
    # the recv for A's data is ready in the kernel, not yet reaped: A's
    # bytes are acknowledged (none left unacked in its send queue) once
    # they sit in the server side's receive queue
    end = time.monotonic() + 10
    while struct.unpack("i", fcntl.ioctl(a.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]:
        assert time.monotonic() < end, "A's bytes were never acknowledged"
        time.sleep(0.001)
    assert r.close_conn(slot_a, gen_a, False) == 0
    b = socket.create_connection(("127.0.0.1", port))
    b.sendall(b"from B")
    ev = collect(lambda o: any(k == EV_RECV for k, *_ in o))
    recvs = [e for e in ev if e[0] == EV_RECV]
    accepts = [e for e in ev if e[0] == EV_ACCEPT]
    assert any(k == EV_CLOSED and c == slot_a and g == gen_a for k, c, g, _ in ev)
    assert accepts and accepts[0][1] == slot_a and accepts[0][2] != gen_a  # same slot, new generation
    assert [d for *_, d in recvs] == [b"from B"]
    assert r.stats()["stale_cqes"] >= 1
    a.close()
    b.close()
    ls.close()
    r.cancel_all()
    end = time.monotonic() + 2
    while r.stats()["inflight"] and time.monotonic() < end:
        r.wait(0.05)
    assert r.stats()["inflight"] == 0
    r.close()
    assert open_fds() == fds


@pytest.mark.filterwarnings("ignore:unclosed transport:ResourceWarning")  # left open on purpose
def test_loop_closed_with_operations_in_flight_leaves_nothing() -> None:
    """Close the loop while connections are mid-transfer: no fd, slot, task or
    pinned page is left behind."""
    gc.collect()
    fds = open_fds()
    end = time.monotonic() + 3
    while vm_pinned_kb() and time.monotonic() < end:
        time.sleep(0.02)  # earlier tests' rings are torn down asynchronously by the kernel
    pinned = vm_pinned_kb()
    assert pinned == 0, "a ring from an earlier test still pins memory"
    loop = uringserve.new_event_loop()
    stop = threading.Event()
    peers: list[socket.socket] = []

    class Flood(asyncio.Protocol):
        def connection_made(self, transport) -> None:
            self.t = transport
            transport.set_write_buffer_limits(high=1 << 30)
            for _ in range(4):  # the peer never reads
                transport.write(b"f" * (1 << 20))  # sent in place
                for _ in range(32):
                    transport.write(bytearray(b"g" * 8192))  # below inplace_min: copied into the arena

        def data_received(self, data: bytes) -> None:
            pass

    async def main() -> None:
        server = await loop.create_server(Flood, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        for _ in range(10):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"x" * 1000)
            peers.append(s)
        try:

            def busy() -> bool:  # every peer accepted, its writes queued in the kernel and the arena
                st = loop.ring_stats()
                queued = st["arena_in_use"] > 0 and st["ext_in_use"] > 0
                return st["slots_used"] == 10 and st["inflight"] > 10 and queued

            assert await until(busy, 20), loop.ring_stats()
            result["ok"] = True
        finally:
            loop.stop()

    result: dict = {}
    task = loop.create_task(main())
    loop.run_forever()
    assert result.get("ok"), task.exception()
    assert vm_pinned_kb() > pinned
    assert not [t for t in asyncio.all_tasks(loop) if not t.done()]  # the loop made no tasks of its own
    ring = loop.ring
    loop.close()
    assert ring.closed
    for s in peers:
        s.close()
    stop.set()
    gc.collect()
    leaked = open_fds() - fds
    assert not leaked, f"fds left open: {fd_targets(leaked)}"
    end = time.monotonic() + 2
    while vm_pinned_kb() > pinned and time.monotonic() < end:
        time.sleep(0.02)  # the kernel frees a ring's resources asynchronously
    assert vm_pinned_kb() == pinned


def test_ipv6_peername() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    info: dict = {}

    class Info(asyncio.Protocol):
        def connection_made(self, transport) -> None:
            info["peer"] = transport.get_extra_info("peername")
            info["sock"] = transport.get_extra_info("sockname")
            transport.close()

    async def main(loop):
        try:
            server = await loop.create_server(Info, "::1", 0)
        except OSError as exc:
            pytest.skip(f"no IPv6 loopback: {exc}")
        port = server.sockets[0].getsockname()[1]
        c = socket.create_connection(("::1", port))
        await loop.run_in_executor(None, c.recv, 10)
        name = c.getsockname()
        c.close()
        server.close()
        await server.wait_closed()
        return name, port

    (name, port), _ = run_uring(RingConfig(), main)
    assert info["peer"] == name
    assert info["sock"][:2] == ("::1", port)


@pytest.mark.parametrize(
    "kw, words",
    [
        ({"buf_count": 3}, "buf_count=3"),
        ({"buf_count": 65536}, "buf_count=65536"),
        ({"send_mode": "fast"}, "send_mode 'fast'"),
        ({"recv_mode": "magic"}, "recv_mode 'magic'"),
        ({"files": 1}, "files=1"),
        ({"accept_depth": 0}, "accept_depth=0"),
        ({"arena_bytes": 100, "chunk_size": 4096}, "arena_bytes=100"),
    ],
)
def test_invalid_config_is_a_clear_error(kw, words) -> None:
    with pytest.raises(ValueError, match="invalid RingConfig") as info:
        uringserve.new_event_loop(RingConfig(**kw))
    assert words in str(info.value)


def test_files_beyond_rlimit_nofile_is_a_clear_error() -> None:
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    with pytest.raises(OSError, match="RLIMIT_NOFILE"):
        Ring(RingConfig(files=soft + 1000))


def test_client_connections_beyond_the_table_fall_back() -> None:
    """With 2 connection slots, 4 client connections all work: those that find
    the table full take asyncio's own transport instead of failing."""
    cfg = RingConfig(files=3, reserved_slots=1)

    async def main(loop):
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        port = server.getsockname()[1]
        kinds = []
        conns = []
        for _ in range(4):
            r, w = await asyncio.open_connection("127.0.0.1", port)
            kinds.append(type(w.transport).__name__)
            conns.append((r, w))
        peers = [server.accept()[0] for _ in range(4)]
        for i, (p, (r, w)) in enumerate(zip(peers, conns, strict=True)):
            p.sendall(b"msg %d" % i)
            assert await r.readexactly(5) == b"msg %d" % i
            w.write(b"back %d" % i)
            await w.drain()
        for i, p in enumerate(peers):
            assert p.recv(10) == b"back %d" % i
            p.close()
        for r, w in conns:
            assert await r.read() == b""
            w.close()
            await w.wait_closed()
        server.close()
        return kinds

    kinds, stats = run_uring(cfg, main)
    assert kinds.count("UringTransport") == 2
    assert len(kinds) == 4
    assert stats["slots_used"] == 0


def test_a_listener_beyond_the_reserved_slots_is_refused_clearly() -> None:
    """Listeners live in the reserved low slots: one too many is an OSError
    that names the setting to raise, and leaves nothing open."""

    async def main(loop):
        first = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        try:
            with pytest.raises(OSError, match=r"RingConfig.reserved_slots=1 .*raise it") as info:
                await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
            assert info.value.errno == 23  # ENFILE
        finally:
            first.close()
            await first.wait_closed()

    run_uring(RingConfig(reserved_slots=1, files=64), main)


def test_a_connection_stays_usable_after_the_arena_filled() -> None:
    """Bytes that waited in the transport for arena chunks go out, and the
    connection carries on afterwards: a second request is answered and
    nothing closes it before the peer does."""
    big = bytes(range(256)) * 1200  # 300 KiB through a 16 KiB arena

    class Server(asyncio.Protocol):
        def connection_made(self, transport) -> None:
            self.t = transport

        def data_received(self, data: bytes) -> None:
            if data == b"big":  # writes below inplace_min are copied into the arena, never sent in place
                for i in range(0, len(big), 3000):
                    self.t.write(big[i : i + 3000])
            else:
                self.t.write(data)

    async def main(loop):
        server = await loop.create_server(Server, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"big")
        first = await r.readexactly(len(big))
        short = loop.ring_stats()["arena_short"]
        w.write(b"again")
        second = await r.readexactly(5)
        w.write_eof()
        rest = await r.read()
        w.close()
        await w.wait_closed()
        server.close()
        await server.wait_closed()
        return first, short, second, rest

    (first, short, second, rest), _ = run_uring(RingConfig(chunk_size=4096, arena_bytes=16384), main)
    assert first == big and short > 0  # it did wait for the arena
    assert second == b"again" and rest == b""


@pytest.mark.parametrize("send_mode", ["auto", "zc", "zc_fixed"])
def test_large_writes_over_a_unix_socket_fall_back_from_send_zc(send_mode: str, tmp_path) -> None:
    """AF_UNIX has no zero-copy send: the kernel answers send_zc with
    EOPNOTSUPP. The core sends the same bytes again plainly (every mode), so
    a write above the send_zc threshold arrives whole instead of failing."""
    cfg = RingConfig(send_mode=send_mode)
    path = str(tmp_path / "u.sock")
    payload = os.urandom(300_000)

    class Send(asyncio.Protocol):
        def connection_made(self, transport) -> None:
            transport.write(payload)  # one write, above zc_threshold
            transport.write(payload[:1000])  # and a small one behind it
            transport.close()

    async def main(loop):
        server = await loop.create_unix_server(Send, path)

        def read() -> bytes:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(path)
                s.settimeout(10)
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
                return data

        got = await loop.run_in_executor(None, read)
        server.close()
        await server.wait_closed()
        return got

    got, stats = run_uring(cfg, main)
    assert got == payload + payload[:1000]
    assert stats["zc_unsupported"] >= 1


def test_a_paused_buffered_protocol_keeps_copies_not_views_of_reused_buffers() -> None:
    """Four 1 KiB provided buffers: the kernel reuses each one within a few
    KiB. A BufferedProtocol paused after every read leaves the rest of each
    batch waiting in the transport; kept as views of the buffers, those bytes
    would be overwritten before they are fed. Every byte must echo back."""
    cfg = RingConfig(buf_count=4, buf_size=1024)

    class Pausing(asyncio.BufferedProtocol):
        def connection_made(self, transport) -> None:
            self.t = transport
            self.buf = bytearray(700)

        def get_buffer(self, sizehint: int) -> bytearray:
            return self.buf

        def buffer_updated(self, nbytes: int) -> None:
            self.t.write(bytes(self.buf[:nbytes]))
            self.t.pause_reading()
            asyncio.get_running_loop().call_later(0.002, self.t.resume_reading)  # after the loop waited

        def connection_lost(self, exc) -> None:
            lost.append(exc)

    lost: list = []

    async def main(loop):
        server = await loop.create_server(Pausing, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        results = await echo_clients(port, 3, 200_000)
        assert await until(lambda: len(lost) == 3)  # the held EOFs were delivered too
        server.close()
        await server.wait_closed()
        return results

    results, stats = run_uring(cfg, main)
    assert results == [True] * 3
    assert stats["enobufs"] > 0  # the buffers were really reused under pressure


@pytest.mark.parametrize("kind", ["protocol", "buffered"])
def test_a_message_spanning_adjacent_buffers_is_one_delivery(kind: str) -> None:
    """RECVs of one connection in adjacent provided buffers, reaped together,
    are delivered as one slice: 64 KiB over 4 KiB buffers is not 16
    data_received calls and 16 writes back. Bytes and order are exact
    whatever the grouping, for a Protocol (one bytes object) and for a
    BufferedProtocol (one copy into its buffer)."""
    cfg = RingConfig(buf_count=64, buf_size=4096)
    sizes: list[int] = []
    got = bytearray()
    done = asyncio.Event()
    total = 40 * 65536
    payload = os.urandom(total)

    def take(data: Any) -> None:
        sizes.append(len(data))
        got.extend(data)
        if len(got) == total:
            done.set()

    class Plain(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            assert type(data) is bytes
            take(data)

    class Buffered(asyncio.BufferedProtocol):
        buf = bytearray(1 << 20)

        def get_buffer(self, sizehint: int) -> bytearray:
            return self.buf

        def buffer_updated(self, nbytes: int) -> None:
            take(self.buf[:nbytes])

    async def main(loop):
        server = await loop.create_server(Plain if kind == "protocol" else Buffered, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]

        def send() -> None:
            with socket.create_connection(("127.0.0.1", port)) as s:
                for k in range(0, total, 65536):
                    s.sendall(payload[k : k + 65536])

        await loop.run_in_executor(None, send)
        await asyncio.wait_for(done.wait(), 20)
        server.close()
        await server.wait_closed()

    _, stats = run_uring(cfg, main)
    assert bytes(got) == payload
    assert max(sizes) > 4096  # buffers were joined
    assert len(sizes) < stats["recvs"]  # fewer deliveries than completions


def test_one_delivery_carries_at_most_256_kib() -> None:
    """Joined RECVs stop at 256 KiB, what asyncio's loops read at most: a
    protocol that pauses reading is not handed megabytes in one call."""
    cfg = RingConfig(buf_count=512, buf_size=16384)
    sizes: list[int] = []
    got = bytearray()
    done = asyncio.Event()
    total = 8 << 20
    payload = os.urandom(total)

    class Slow(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            sizes.append(len(data))
            got.extend(data)
            if len(sizes) <= 8:
                # a slow protocol: while it works, the kernel queues megabytes,
                # so the next reap finds far more than 256 KiB of adjacent buffers
                time.sleep(0.02)
            if len(got) == total:
                done.set()

    async def main(loop):
        server = await loop.create_server(Slow, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]

        def send() -> None:
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
                s.sendall(payload)

        await loop.run_in_executor(None, send)
        await asyncio.wait_for(done.wait(), 20)
        server.close()
        await server.wait_closed()

    _, stats = run_uring(cfg, main)
    assert bytes(got) == payload
    assert max(sizes) <= 256 * 1024, sorted(sizes)[-10:]
    assert max(sizes) > 64 * 1024  # and runs did form


def test_what_a_callback_writes_to_a_connection_leaves_in_one_send() -> None:
    """writelines() of many small buffers, and separate writes from one
    callback (pipelined responses), go out in one send: the send is prepared
    when the loop next enters the kernel, not at the first write. Bytes in
    order, exactly."""
    pieces = [b"piece %03d;" % i for i in range(100)]
    want = b"".join(pieces) + b"one;two;three;"
    got = bytearray()
    done = asyncio.Event()

    class Writer(asyncio.Protocol):
        def connection_made(self, transport) -> None:
            self.t = transport

        def data_received(self, data: bytes) -> None:
            self.t.writelines(pieces)
            for part in (b"one;", b"two;", b"three;"):
                self.t.write(part)

    async def main(loop):
        server = await loop.create_server(Writer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        before = loop.ring_stats()["sends"]
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"go")
        got.extend(await asyncio.wait_for(r.readexactly(len(want)), 10))
        sends = loop.ring_stats()["sends"] - before
        w.close()
        await w.wait_closed()
        server.close()
        await server.wait_closed()
        done.set()
        return sends

    sends, _ = run_uring(RingConfig(), main)
    assert bytes(got) == want
    # the client's own sends (asyncio streams on the same loop) are ring sends too:
    # one for b"go"; the server's 103 writes are one more
    assert sends == 2, sends


@pytest.mark.parametrize("kind", ["bytearray", "memoryview"])
def test_a_large_mutable_write_is_one_copy_and_few_sends(kind: str) -> None:
    """A 4 MiB bytearray or memoryview write is copied once (the caller may
    change it after write() returns) into one object sent in place, not into
    the arena 32 KiB at a time: a handful of sends, not 128. Changing the
    caller's buffer right after write() changes nothing that is sent."""
    payload = os.urandom(4 << 20)

    class Send(asyncio.Protocol):
        def connection_made(self, transport) -> None:
            buf = bytearray(payload)
            transport.write(buf if kind == "bytearray" else memoryview(buf))
            buf[:] = bytes(len(buf))  # the caller reuses its buffer at once
            transport.close()

    async def main(loop):
        return await serve_and_read(loop, Send)  # the client only reads: every send is the server's

    got, stats = run_uring(RingConfig(), main)
    assert got == payload
    assert stats["sends"] < 16, stats["sends"]  # as the socket takes it, not per 32 KiB chunk


def test_several_queued_segments_leave_in_one_vectored_send() -> None:
    """writelines() of large buffers (each its own in-place segment) mixed
    with small ones (arena chunks) is one SENDMSG over all of them, not one
    send per segment; bytes in order, exactly."""
    pieces = [os.urandom(20000), b"small;", os.urandom(30000), b"and small;", os.urandom(17000)]
    want = b"".join(pieces)

    class Writer(asyncio.Protocol):
        def connection_made(self, transport) -> None:
            self.t = transport

        def data_received(self, data: bytes) -> None:
            self.t.writelines(pieces)

    async def main(loop):
        server = await loop.create_server(Writer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        r, w = await asyncio.open_connection("127.0.0.1", port)
        before = loop.ring_stats()
        w.write(b"go")
        got = await asyncio.wait_for(r.readexactly(len(want)), 10)
        after = loop.ring_stats()
        w.close()
        await w.wait_closed()
        server.close()
        await server.wait_closed()
        return got, after["sends"] - before["sends"], after["vec_sends"] - before["vec_sends"]

    (got, sends, vec), stats = run_uring(RingConfig(zc_threshold=1 << 30), main)
    assert got == want
    assert vec == 1 and sends == 2, (sends, vec)  # the client's b"go", and the server's one
    assert stats["ext_in_use"] == 0 and stats["arena_in_use"] == 0


@pytest.mark.parametrize("end", ["read all", "abort"])
def test_vectored_sends_resume_partway_and_release_everything(end: str) -> None:
    """A small send buffer makes the kernel take part of a vectored send:
    the next send starts inside the segment where it stopped, and every byte
    arrives in order. Aborted with sends in flight, every segment and chunk
    is released and nothing is left open."""
    rounds = [[os.urandom(50000 + k), b"<%d>" % k, bytearray(os.urandom(3000))] for k in range(20)]
    want = b"".join(bytes(p) for r in rounds for p in r)
    state: dict = {}

    class Writer(asyncio.Protocol):
        def connection_made(self, transport) -> None:
            state["t"] = transport
            # a small send buffer: the kernel takes part of a send and says so
            transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
            transport.set_write_buffer_limits(high=1 << 30)
            for r in rounds:
                transport.writelines(r)
            if end == "read all":
                transport.close()

    async def main(loop):
        server = await loop.create_server(Writer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]

        def read() -> bytes:
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.settimeout(10)
                data = bytearray()
                while len(data) < (len(want) if end == "read all" else 200_000):
                    chunk = s.recv(32768)
                    if not chunk:
                        break
                    data += chunk
                return bytes(data)

        got = await loop.run_in_executor(None, read)
        if end == "abort":
            state["t"].abort()
        await until(lambda: loop.ring_stats()["slots_used"] == 0, timeout=10)
        st = loop.ring_stats()
        server.close()
        await server.wait_closed()
        return got, st

    (got, st), _ = run_uring(RingConfig(zc_threshold=1 << 30), main)
    assert want.startswith(got) and (end == "abort" or got == want)
    assert st["vec_sends"] > 0 and st["send_partial"] > 0, st
    assert st["ext_in_use"] == 0 and st["arena_in_use"] == 0, st
