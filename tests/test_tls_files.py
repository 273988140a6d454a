"""Static files over TLS from registered memory (send.c's on_tls_fread,
tls.c's tls_encrypt_file): the ring reads the file into the send arena and
the core encrypts each chunk into records queued before the rest of the
file; no byte of the file passes through Python (the ring's tls_file_bytes
counts what took this path).

Through the CLI with real clients (httpx, a raw ssl client), on the ring and
on the stdlib loop (asyncio's SSLProtocol: the fallback, which must serve the
same bytes); in process for the hard paths, with the ring's counters back
where they began after each: slots, arena chunks, segments, SSL objects,
file registrations."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import ssl
import struct
import threading
import time
from typing import Any

import pytest
from conftest import PY, Proc, TLSFiles, make_tls_files, until
from test_hard_paths import run_uring

from uringserve import RingConfig
from uringserve.tls import CoreTLS

SIZES = (0, 1, 16 * 1024 - 1, 16 * 1024 + 1, 1 << 20, 5 << 20)
BIG = 32 << 20  # more than a client that stops reading lets the kernel buffer


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Any:
    folder = tmp_path_factory.mktemp("static")
    for size in SIZES:
        (folder / f"f{size}.bin").write_bytes(os.urandom(size))
    (folder / "big.bin").write_bytes(os.urandom(BIG))
    return folder


def client_ctx(files: TLSFiles, version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(files.cacert))
    if version is not None:
        ctx.minimum_version = ctx.maximum_version = version
    ctx.options &= ~ssl.OP_IGNORE_UNEXPECTED_EOF  # the server's close must be close_notify
    return ctx


@pytest.fixture(scope="module", params=["uring", "asyncio"])
def loop_name(request: pytest.FixtureRequest) -> str:
    return request.param


def start(files: TLSFiles, root: Any, loop_name: str, app: str = "apps.http:app") -> Proc:
    return Proc(
        [PY, "-m", "uringserve", "run", app, "--port", "0", "--loop", loop_name,
         "--tls-cert", str(files.cert), "--tls-key", str(files.key)],
        env={**os.environ, "URINGSERVE_STATIC": str(root)},
    )  # fmt: skip


@pytest.fixture(scope="module")
def server(files: TLSFiles, root: Any, loop_name: str) -> Any:
    srv = start(files, root, loop_name)
    yield srv
    srv.stop()


def stats(client: Any, port: int) -> dict[str, Any]:
    return json.loads(client.get(f"https://127.0.0.1:{port}/stats").content)


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls12", "tls13"])
def test_files_of_every_size_byte_exact_on_one_kept_alive_connection(server, files, root, loop_name, version) -> None:
    """Every size, twice, with a hello between each, on one connection: the
    responses after a file are in order; on the ring the files above the
    in-memory size took the core's path (tls_file_bytes grew by them)."""
    import httpx

    # the stdlib loop sends each file once per server (a second time it hangs, on main
    # too: test_stdlib_loop_sends_a_file_only_once below): a server of its own, one round
    uring = loop_name == "uring"
    srv = server if uring else start(files, root, loop_name)
    try:
        with httpx.Client(verify=client_ctx(files, version), timeout=60) as client:
            before = stats(client, srv.port)
            for _ in range(2 if uring else 1):
                for size in SIZES:
                    r = client.get(f"https://127.0.0.1:{srv.port}/static/f{size}.bin")
                    assert r.status_code == 200, size
                    assert r.content == (root / f"f{size}.bin").read_bytes(), size
                    hello = client.get(f"https://127.0.0.1:{srv.port}/")
                    assert hello.content == b"Hello, world!\n"
            after = stats(client, srv.port)
            assert r.http_version == "HTTP/1.1"
    finally:
        if not uring:
            srv.stop()
    if uring:
        # files up to static.SMALL_FILE (64 KiB) are answered from memory; the rest from the ring
        assert after["tls_file_bytes"] - before["tls_file_bytes"] == 2 * ((1 << 20) + (5 << 20))


def test_stdlib_loop_sends_a_file_more_than_once(files, root) -> None:
    """On the stdlib loop over TLS, asyncio's loop.sendfile() fallback reads
    the file object from its position (it seeks only for a non-zero
    offset); HTTPProtocol._write_file_slow had handed it the cached file's
    shared fd, whose position the first response left at the end, so the
    second response of the same file got no body and the client waited.
    Each response now reads its own opening of the file."""
    import httpx

    srv = start(files, root, "asyncio")
    try:
        with httpx.Client(verify=client_ctx(files), timeout=10) as client:
            for _ in range(2):
                r = client.get(f"https://127.0.0.1:{srv.port}/static/f1048576.bin")
                assert r.content == (root / "f1048576.bin").read_bytes()
    finally:
        srv.stop()


def test_a_range_of_a_big_file(server, files, root, loop_name) -> None:
    import httpx

    data = (root / "f5242880.bin").read_bytes()
    with httpx.Client(verify=client_ctx(files), timeout=60) as client:
        before = stats(client, server.port)
        for start_, end in ((1, 1), (100_000, 3_000_000), (len(data) - 17, len(data) - 1)):
            r = client.get(
                f"https://127.0.0.1:{server.port}/static/f5242880.bin", headers={"Range": f"bytes={start_}-{end}"}
            )
            assert r.status_code == 206
            assert r.headers["content-range"] == f"bytes {start_}-{end}/{len(data)}"
            assert r.content == data[start_ : end + 1]
        after = stats(client, server.port)
    if loop_name == "uring":
        assert after["tls_file_bytes"] - before["tls_file_bytes"] == 1 + 2_900_001 + 17


def test_pipelined_requests_for_files_and_hellos_answer_in_order(server, files, root, loop_name) -> None:
    """Requests sent at once: a hello's head written while a file is still
    being encrypted waits behind it (the core refuses it until the file's
    last record, then wakes it)."""
    if loop_name != "uring":
        pytest.skip("the same file twice: test_stdlib_loop_sends_a_file_only_once")
    paths = ["/static/f1048576.bin", "/", "/static/f5242880.bin", "/static/f1.bin", "/static/f1048576.bin", "/"]
    request = b"".join(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % p.encode() for p in paths)
    request += b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as raw:
        with client_ctx(files).wrap_socket(raw, server_hostname="127.0.0.1") as s:
            s.sendall(request)
            got = bytearray()
            while chunk := s.recv(1 << 20):
                got += chunk
    want = []
    for p in [*paths, "/"]:
        want.append(b"Hello, world!\n" if p == "/" else (root / p.rsplit("/", 1)[1]).read_bytes())
    bodies = []
    rest = bytes(got)
    while rest:
        head, _, rest = rest.partition(b"\r\n\r\n")
        length = content_length(head)
        bodies.append(rest[:length])
        rest = rest[length:]
    assert len(bodies) == len(want)
    for i, (body, expected) in enumerate(zip(bodies, want, strict=True)):
        assert body == expected, i


def test_the_asgi_app_sends_files_through_the_core(files, root) -> None:
    """apps.http:asgi_app answers /static/ with http.response.pathsend: the
    same write_file() path."""
    import httpx

    srv = start(files, root, "uring", "apps.http:asgi_app")
    try:
        with httpx.Client(verify=client_ctx(files), timeout=60) as client:
            before = stats(client, srv.port)
            r = client.get(f"https://127.0.0.1:{srv.port}/static/f1048576.bin")
            assert r.status_code == 200 and r.content == (root / "f1048576.bin").read_bytes()
            after = stats(client, srv.port)
        assert after["tls_file_bytes"] - before["tls_file_bytes"] == 1 << 20
    finally:
        srv.stop()


def content_length(head: bytes) -> int:
    fields = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:])
    return int(next(v for k, v in fields.items() if k.lower() == b"content-length"))


def raw_get(port: int, files: TLSFiles, path: str, rcvbuf: int = 0) -> ssl.SSLSocket:
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: the window stays small
    raw.settimeout(60)
    raw.connect(("127.0.0.1", port))
    s = client_ctx(files).wrap_socket(raw, server_hostname="127.0.0.1")
    s.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode())
    return s


def read_response(s: ssl.SSLSocket) -> tuple[bytes, bytes]:
    got = bytearray()
    while b"\r\n\r\n" not in got:
        got += s.recv(1 << 16)
    head, _, body = bytes(got).partition(b"\r\n\r\n")
    length = content_length(head)
    body_buf = bytearray(body)
    while len(body_buf) < length:
        chunk = s.recv(1 << 20)
        assert chunk, f"closed after {len(body_buf)} of {length} bytes"
        body_buf += chunk
    return head, bytes(body_buf)


def quiet_stats(client: Any, port: int, key: str) -> dict[str, Any]:
    """The server's counters once `key` has stopped moving (10 readings in a
    row the same): the server is waiting for a client that reads nothing."""
    seen: list[int] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        st = stats(client, port)
        seen.append(st[key])
        if len(seen) >= 10 and len(set(seen[-10:])) == 1:
            return st
        time.sleep(0.05)  # a polling interval: the condition is the counter standing still
    raise AssertionError(f"{key} never settled: {seen[-10:]}")


def test_a_client_that_stops_reading_holds_a_bounded_part_then_gets_it_all(files, root) -> None:
    """A 32 MiB file to a client that reads nothing: the server reads ahead
    only as the kernel takes records (a few arena chunks for the connection,
    far from the whole file in memory); then the client reads it all."""
    import httpx

    srv = start(files, root, "uring")
    try:
        with httpx.Client(verify=client_ctx(files), timeout=60) as client:
            before = stats(client, srv.port)
            s = raw_get(srv.port, files, "/static/big.bin", rcvbuf=64 * 1024)
            with s:
                st = quiet_stats(client, srv.port, "tls_file_bytes")
                encrypted = st["tls_file_bytes"] - before["tls_file_bytes"]
                assert 0 < encrypted < BIG // 4, encrypted
                # the stalled connection's chunks (and the /stats response's): a handful, not the file
                chunk = 32 * 1024
                assert st["arena_in_use"] * chunk <= 8 * chunk, st["arena_in_use"]
                _head, body = read_response(s)
            assert body == (root / "big.bin").read_bytes()
            after = quiet_stats(client, srv.port, "arena_in_use")
            assert after["tls_file_bytes"] - before["tls_file_bytes"] == BIG
            assert after["arena_in_use"] <= 1  # at most the /stats connection's last response
    finally:
        srv.stop()


@pytest.mark.parametrize("how", ["reset", "close"])
def test_a_client_leaving_mid_file_leaves_nothing_behind(files, root, how) -> None:
    import httpx

    srv = start(files, root, "uring")
    try:
        with httpx.Client(verify=client_ctx(files), timeout=60) as client:
            # a byte of it first: the file is then open and registered (static.FileCache keeps it)
            r = client.get(f"https://127.0.0.1:{srv.port}/static/big.bin", headers={"Range": "bytes=0-0"})
            assert r.status_code == 206
            before = stats(client, srv.port)
            s = raw_get(srv.port, files, "/static/big.bin", rcvbuf=64 * 1024)
            got = 0
            while got < 1 << 20:
                got += len(s.recv(1 << 16))
            if how == "reset":
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
            keys = ("slots_used", "arena_in_use", "ext_in_use", "tls_live", "files_registered")
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                after = stats(client, srv.port)
                if all(after[k] == before[k] for k in keys):
                    break
                time.sleep(0.05)
            assert {k: after[k] for k in keys} == {k: before[k] for k in keys}
            # the server goes on serving files
            r = client.get(f"https://127.0.0.1:{srv.port}/static/f1048576.bin")
            assert r.content == (root / "f1048576.bin").read_bytes()
    finally:
        srv.stop()


# -- in process: the transport's file path under pressure -------------------------------------------
@pytest.fixture(scope="module")
def conf(files: TLSFiles) -> CoreTLS:
    return CoreTLS(str(files.cert), str(files.key))


COUNTERS = ("slots_used", "bufs_out", "arena_in_use", "ext_in_use", "tls_live", "files_registered")


def counters(loop: Any) -> dict[str, int]:
    s = loop.ring_stats()
    return {k: s[k] for k in COUNTERS}


async def settled(loop: Any) -> dict[str, int]:
    await until(lambda: all(v == 0 for v in counters(loop).values()), timeout=20)
    return counters(loop)


class FileSender(asyncio.Protocol):
    """Writes `head`, the file range (write_file, a fixed slot or the fd),
    `tail`; then closes, aborts or leaves the connection open, as told."""

    def __init__(
        self,
        path: str,
        offset: int,
        count: int,
        *,
        fixed: bool,
        end: str,
        when: str,
        tail: bytes = b":tail",
        head: bytes = b"head:",
    ) -> None:
        self.path, self.offset, self.count, self.fixed, self.end, self.when = path, offset, count, fixed, end, when
        self.tail, self.head = tail, head
        self.lost: asyncio.Future = asyncio.get_running_loop().create_future()
        self.queued = 0

    def connection_made(self, transport: Any) -> None:
        self.t = transport
        if self.when == "at once":  # before the handshake is done
            self.send()

    def data_received(self, data: bytes) -> None:
        if self.when == "on request":
            self.send()
        self.finish()  # a close before the handshake would drop what waits for it (a 408's way)

    def send(self) -> None:
        loop = asyncio.get_running_loop()
        ring = loop._ring  # type: ignore[attr-defined]
        self.f = open(self.path, "rb")
        slot = ring.file_register(self.f.fileno()) if self.fixed else -1
        if self.head:
            self.t.write(self.head)
        off, left = self.offset, self.count
        while left:
            n = self.t.write_file(slot if self.fixed else self.f.fileno(), off, left, fixed=self.fixed, owner=self.f)
            assert n > 0
            self.queued += n
            off += n
            left -= n
        if self.tail:
            self.t.write(self.tail)
        if self.fixed:
            ring.file_unregister(slot)  # reads in flight hold the slot

    def finish(self) -> None:
        if self.end == "close":
            self.t.close()
        elif self.end == "abort":
            asyncio.get_running_loop().call_soon(self.t.abort)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.f.close()
        if not self.lost.done():
            self.lost.set_result(exc)


def tls_read_all(
    port: int, ctx: ssl.SSLContext, request: bytes = b"go", limit: int | None = None, ready: Any = None
) -> tuple[bytes, str]:
    """Reads to the end; how it ended: "close_notify", "eof" (no close_notify), or the error.
    `ready`: a threading.Barrier passed after the handshake, before the request."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            if ready is not None:
                ready.wait(60)
            s.sendall(request)
            got = bytearray()
            try:
                while chunk := s.recv(1 << 20):
                    got += chunk
                    if limit is not None and len(got) >= limit:
                        return bytes(got), "stopped"
            except ssl.SSLEOFError:
                return bytes(got), "eof"
            except OSError as exc:
                return bytes(got), type(exc).__name__
            return bytes(got), "close_notify"


@pytest.fixture
def blob(tmp_path: Any) -> tuple[str, bytes]:
    data = os.urandom(3 * 1024 * 1024 + 12345)  # not a multiple of any chunk or record size
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    return str(path), data


@pytest.mark.parametrize("when", ["on request", "at once"], ids=["established", "before-handshake"])
@pytest.mark.parametrize("fixed", [True, False], ids=["fixed-slot", "fd"])
def test_write_file_in_order_with_writes_then_close_notify(files, conf, blob, when, fixed) -> None:
    """head, a file range, tail, close(): every byte in order and the end is
    close_notify (after the file's last record); a range queued before the
    handshake waits for it (the first thing written: nothing else waits)."""
    path, data = blob
    off, count = 1001, len(data) - 5000
    head = b"head:" if when == "on request" else b""

    async def main(loop: Any) -> Any:
        made: list[FileSender] = []

        def factory() -> FileSender:
            made.append(FileSender(path, off, count, fixed=fixed, end="close", when=when, head=head))
            return made[-1]

        server = await loop.create_server(factory, "127.0.0.1", 0, ssl=conf)
        port = server.sockets[0].getsockname()[1]
        got, ending = await asyncio.to_thread(tls_read_all, port, client_ctx(files))
        assert await made[0].lost is None
        server.close()
        await server.wait_closed()
        return got, ending, loop.ring_stats(), await settled(loop)

    (got, ending, st, left), _ = run_uring(RingConfig(), main)
    assert got == head + data[off : off + count] + b":tail"
    assert ending == "close_notify"
    assert st["tls_file_bytes"] == count  # every byte of the range was encrypted by the core from the arena
    assert all(v == 0 for v in left.values()), left


def test_close_right_after_the_file_ends_with_close_notify_after_its_last_record(files, conf, blob) -> None:
    """close() with nothing but the file queued: the core holds the
    close_notify until the file's last record is made (sent before it, the
    client would see the end in the middle of the file)."""
    path, data = blob

    async def main(loop: Any) -> Any:
        def factory() -> FileSender:
            return FileSender(path, 0, len(data), fixed=False, end="close", when="on request", tail=b"")

        server = await loop.create_server(factory, "127.0.0.1", 0, ssl=conf)
        port = server.sockets[0].getsockname()[1]
        got, ending = await asyncio.to_thread(tls_read_all, port, client_ctx(files))
        server.close()
        await server.wait_closed()
        return got, ending, await settled(loop)

    (got, ending, left), _ = run_uring(RingConfig(), main)
    assert (len(got), ending) == (5 + len(data), "close_notify")
    assert got == b"head:" + data
    assert all(v == 0 for v in left.values()), left


@pytest.mark.parametrize("chunk", [32 * 1024, 16 * 1024])
def test_a_tiny_arena_makes_file_reads_wait_and_every_byte_arrives(files, conf, blob, chunk) -> None:
    """Two to four arena chunks for four connections sending the file: reads
    wait for free chunks (file_waits), records that do not fit wait in
    OpenSSL and their plaintext is read again; every byte arrives in order.
    (A handshake's flight that found the arena full with the client's bytes
    still unread would end that connection, us_tls_recv's rule: not seen in
    these rounds, where the arena frees as the files' records are sent.)"""
    path, data = blob
    cfg = RingConfig(arena_bytes=2 * chunk if chunk == 32 * 1024 else 4 * chunk, chunk_size=chunk)

    async def main(loop: Any) -> Any:
        def factory() -> FileSender:
            return FileSender(path, 0, len(data), fixed=True, end="close", when="on request")

        server = await loop.create_server(factory, "127.0.0.1", 0, ssl=conf)
        port = server.sockets[0].getsockname()[1]
        results = []
        # the first round with the handshakes done before any file, then as they come; eight
        # rounds: the stall us_wait's retry of waiting reads fixed showed in most runs of eight
        for rnd in range(8):
            ready = threading.Barrier(4) if rnd == 0 else None
            results += await asyncio.gather(
                *(asyncio.to_thread(tls_read_all, port, client_ctx(files), ready=ready) for _ in range(4))
            )
        server.close()
        await server.wait_closed()
        return results, loop.ring_stats(), await settled(loop)

    (results, st, left), _ = run_uring(cfg, main)
    want = hashlib.sha256(b"head:" + data + b":tail").hexdigest()
    assert [(hashlib.sha256(g).hexdigest(), e) for g, e in results] == [(want, "close_notify")] * 32
    assert st["file_waits"] > 0 and st["tls_file_bytes"] == 32 * len(data)
    assert all(v == 0 for v in left.values()), left


def test_an_arena_of_one_chunk_sends_the_file_by_writes(files, conf, blob) -> None:
    """The core needs a chunk for the plaintext and one for its records:
    with one, write_file() says 0 (write the bytes instead) and
    loop.sendfile() falls back to asyncio's read-and-write."""
    path, data = blob

    async def main(loop: Any) -> Any:
        class Sender(asyncio.Protocol):
            def connection_made(self, transport: Any) -> None:
                self.t = transport

            def data_received(self, _data: bytes) -> None:
                asyncio.ensure_future(self.send())

            async def send(self) -> None:
                with open(path, "rb") as f:
                    assert self.t.write_file(f.fileno(), 0, 100, owner=f) == 0
                    await loop.sendfile(self.t, f)
                self.t.close()

        server = await loop.create_server(Sender, "127.0.0.1", 0, ssl=conf)
        port = server.sockets[0].getsockname()[1]
        got, ending = await asyncio.to_thread(tls_read_all, port, client_ctx(files))
        server.close()
        await server.wait_closed()
        return got, ending, loop.ring_stats(), await settled(loop)

    (got, ending, st, left), _ = run_uring(RingConfig(arena_bytes=32 * 1024, chunk_size=32 * 1024), main)
    assert got == data and ending == "close_notify"
    assert st["tls_file_bytes"] == 0
    assert all(v == 0 for v in left.values()), left


@pytest.mark.parametrize("sendfile_loop", ["uring", "asyncio"])
def test_loop_sendfile_over_tls_byte_exact_with_offset_and_count(files, conf, blob, sendfile_loop) -> None:
    """loop.sendfile() on a core TLS transport takes the core's path (the
    ring's counter grows by the range); on the stdlib loop asyncio's
    SSLProtocol falls back to reading and writing: the same bytes."""
    path, data = blob
    off, count = 777, 2 * 1024 * 1024 + 3
    positions: list = []

    async def main(loop: Any) -> Any:
        class Sender(asyncio.Protocol):
            def connection_made(self, transport: Any) -> None:
                self.t = transport

            def data_received(self, _data: bytes) -> None:
                asyncio.ensure_future(self.send())

            async def send(self) -> None:
                self.t.write(b"<")
                with open(path, "rb") as f:
                    n = await loop.sendfile(self.t, f, off, count)
                    positions.append((n, f.tell()))
                self.t.write(b">")
                self.t.close()

        tls = conf if sendfile_loop == "uring" else conf.context
        server = await loop.create_server(Sender, "127.0.0.1", 0, ssl=tls)
        port = server.sockets[0].getsockname()[1]
        got, ending = await asyncio.to_thread(tls_read_all, port, client_ctx(files))
        server.close()
        await server.wait_closed()
        st = loop.ring_stats() if sendfile_loop == "uring" else None
        return got, ending, st

    if sendfile_loop == "uring":
        (got, ending, st), _ = run_uring(RingConfig(), main)
        assert st["tls_file_bytes"] == count
    else:
        loop = asyncio.new_event_loop()
        try:
            got, ending, _ = loop.run_until_complete(asyncio.wait_for(main(loop), 60))
        finally:
            loop.close()
    assert got == b"<" + data[off : off + count] + b">"
    assert ending == "close_notify"
    assert positions == [(count, off + count)]


def test_abort_mid_file_and_a_file_shorter_than_announced_leave_nothing(files, conf, blob, tmp_path) -> None:
    """abort() while the file is being read and encrypted: the client gets
    a prefix and no close_notify; a range longer than the file: what the
    plain path does (the connection ends with ENODATA after what was read).
    Either way every counter comes back."""
    path, data = blob
    short = tmp_path / "short.bin"
    short.write_bytes(data[:100_000])

    async def main(loop: Any) -> Any:
        out = {}
        for case, p, count, end in (("abort", path, len(data), "abort"), ("short", str(short), 400_000, "open")):
            made: list[FileSender] = []

            def factory(p: str = p, count: int = count, end: str = end, made: list[FileSender] = made) -> FileSender:
                made.append(FileSender(p, 0, count, fixed=True, end=end, when="on request"))
                return made[-1]

            server = await loop.create_server(factory, "127.0.0.1", 0, ssl=conf)
            port = server.sockets[0].getsockname()[1]
            got, ending = await asyncio.to_thread(tls_read_all, port, client_ctx(files))
            exc = await made[0].lost
            server.close()
            await server.wait_closed()
            out[case] = (got, ending, exc, await settled(loop))
        return out

    out, _ = run_uring(RingConfig(), main)
    got, ending, exc, left = out["abort"]
    assert len(got) < 5 + len(data) and (b"head:" + data).startswith(got)
    assert ending != "close_notify"
    assert all(v == 0 for v in left.values()), left
    got, ending, exc, left = out["short"]
    assert (b"head:" + data[:100_000]).startswith(got) and ending != "close_notify"
    assert isinstance(exc, OSError) and exc.errno == 61  # ENODATA: the peer was promised more
    assert all(v == 0 for v in left.values()), left


def test_a_client_that_resets_mid_file_in_process(files, conf, blob) -> None:
    path, data = blob

    async def main(loop: Any) -> Any:
        made: list[FileSender] = []

        def factory() -> FileSender:
            made.append(FileSender(path, 0, len(data), fixed=False, end="open", when="on request"))
            return made[-1]

        server = await loop.create_server(factory, "127.0.0.1", 0, ssl=conf)
        port = server.sockets[0].getsockname()[1]

        def client() -> None:
            raw = socket.socket()
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
            raw.settimeout(60)
            raw.connect(("127.0.0.1", port))
            with client_ctx(files).wrap_socket(raw, server_hostname="127.0.0.1") as s:
                s.sendall(b"go")
                got = 0
                while got < 200_000:
                    got += len(s.recv(1 << 16))
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

        await asyncio.to_thread(client)
        exc = await made[0].lost
        server.close()
        await server.wait_closed()
        return exc, await settled(loop)

    (exc, left), _ = run_uring(RingConfig(), main)
    assert isinstance(exc, (ConnectionResetError, BrokenPipeError)), exc
    assert all(v == 0 for v in left.values()), left


def test_chunks_freed_by_a_flush_let_a_waiting_file_read_go_on(files, conf, blob) -> None:
    """A file read waits for two free chunks while another connection's
    records fill the arena; ring.flush() (what write flow control calls)
    reaps those sends and frees the chunks outside us_wait's reap, so the
    read is left waiting with the arena empty, and must still go on. (Runs
    of four connections on two chunks stalled here until a timer woke the
    loop, before us_wait retried waiting reads at its start; in this test the
    next us_wait does not block, so it passes without that retry too: it
    pins the state, not the stall.)"""
    path, data = blob

    async def main(loop: Any) -> Any:
        ring = loop._ring
        protos: list[Any] = []
        both = loop.create_future()

        class Side(asyncio.Protocol):
            def connection_made(self, transport: Any) -> None:
                self.t = transport

            def data_received(self, got: bytes) -> None:
                protos.append((got, self))
                if len(protos) == 2 and not both.done():
                    both.set_result(None)

        server = await loop.create_server(Side, "127.0.0.1", 0, ssl=conf)
        port = server.sockets[0].getsockname()[1]
        want = {b"a": len(data), b"b": 60_000}
        reads = [
            asyncio.to_thread(tls_read_all, port, client_ctx(files), request=name, limit=want[name])
            for name in (b"a", b"b")
        ]
        tasks = [asyncio.ensure_future(r) for r in reads]
        await both
        by_name = dict(protos)
        a, b = by_name[b"a"], by_name[b"b"]
        f = open(path, "rb")
        b.t.write(data[:60_000])  # both chunks, below the high-water mark (no flush in write())
        assert a.t.write_file(f.fileno(), 0, len(data), owner=f) == len(data)
        ring.flush()  # B's sends complete and free the chunks here (write_file's flow control flushed already)
        st = loop.ring_stats()
        assert st["file_waits"] >= 1 and st["arena_in_use"] == 0  # A waits though both chunks are free
        # nothing else may complete meanwhile (a close would: its recv's cancel)
        results = await asyncio.wait_for(asyncio.gather(*tasks), 20)  # a bound only: a stall waits for no timer
        a.t.close()
        b.t.close()
        await until(lambda: a.t.is_closing() and b.t.is_closing() and counters(loop)["tls_live"] == 0, timeout=20)
        f.close()
        server.close()
        await server.wait_closed()
        return results, await settled(loop)

    # no send_zc: its notification would be a completion that wakes the ring anyway
    cfg = RingConfig(arena_bytes=64 * 1024, chunk_size=32 * 1024, zc_threshold=1 << 30)
    (results, left), _ = run_uring(cfg, main)
    assert results == [(data, "stopped"), (data[:60_000], "stopped")]
    assert all(v == 0 for v in left.values()), left


def test_a_file_to_connection_close_ends_with_close_notify_and_fin_at_once(server, files, root, loop_name) -> None:
    """A static file as the last response (Connection: close) to a client
    that reads to the end: over the core's TLS the file's records, then
    close_notify, then the FIN, without waiting for the client to close
    first (the linger waits after them). asyncio's SSL transport lingers
    without either (tests/test_lingering_close.py says why)."""
    if loop_name != "uring":
        pytest.skip("the core's TLS half-close; SSLProtocol cannot half-close")
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    with client_ctx(files).wrap_socket(raw, server_hostname="127.0.0.1", suppress_ragged_eofs=False) as s:
        s.sendall(b"GET /static/big.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        got = bytearray()
        while chunk := s.recv(1 << 20):  # b"": close_notify; a FIN without it raises SSLEOFError
            got += chunk
    head, _, body = bytes(got).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and content_length(head) == BIG
    assert body == (root / "big.bin").read_bytes()
