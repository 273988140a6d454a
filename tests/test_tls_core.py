"""TLS in the core (_native/tls.c, transport_tls.py, tls.py): the record
layer in C over the ring, on UringEventLoop; the same tests on the stdlib
loop serve CoreTLS.context through asyncio's SSLProtocol (the fallback), so
the two paths are held to the same behaviour.

After each test on the ring the core's counters are back where they began:
slots, provided buffers, arena chunks and live SSL objects (tls_live)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import hashlib
import json
import os
import socket
import ssl
import struct
import subprocess
import sys
from typing import Any

import pytest
import trustme
from conftest import PY, Proc, TLSFiles, make_tls_files, until

import uringserve.tls
from uringserve.tls import CoreTLS


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def conf(files: TLSFiles) -> CoreTLS:
    return CoreTLS(str(files.cert), str(files.key))


@pytest.fixture(scope="module")
def mtls_conf(files: TLSFiles) -> CoreTLS:
    return CoreTLS(str(files.cert), str(files.key), ca=str(files.cacert))


def client_ctx(files: TLSFiles, version: ssl.TLSVersion | None = None, alpn: list[str] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(files.cacert))
    if version is not None:
        ctx.minimum_version = ctx.maximum_version = version
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def tls_arg(h: Any, conf: CoreTLS) -> Any:
    """What create_server() is given: the core's configuration on the ring,
    its stdlib context (asyncio's SSLProtocol) on the stdlib loop."""
    return conf if h.uring else conf.context


def counters(h: Any) -> dict[str, int]:
    s = h.loop.ring_stats()
    return {k: s[k] for k in ("slots_used", "bufs_out", "arena_in_use", "ext_in_use", "tls_live")}


async def settled(h: Any, before: dict[str, int] | None = None) -> None:
    """Every connection's end has been reported: the ring's counters are back."""
    if not h.uring:
        return
    want = before or {"slots_used": 0, "bufs_out": 0, "arena_in_use": 0, "ext_in_use": 0, "tls_live": 0}
    await until(lambda: counters(h) == want)
    assert counters(h) == want


class Recorder(asyncio.Protocol):
    """A server protocol that echoes and records how its connection went."""

    made: list[Recorder] = []

    def __init__(self) -> None:
        self.transport: Any = None
        self.lost = asyncio.get_running_loop().create_future()
        self.received = 0
        self.info: dict[str, Any] = {}
        Recorder.made.append(self)

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if not self.info:
            obj = self.transport.get_extra_info("ssl_object")
            self.info = {
                "version": obj.version(),
                "cipher": obj.cipher(),
                "alpn": obj.selected_alpn_protocol(),
                "peercert": obj.getpeercert(binary_form=True),
                "server_cert": uringserve.tls.server_cert_der(obj),
                "cipher_id": uringserve.tls.cipher_id(obj),
                "transport": type(self.transport).__name__,
            }
        self.received += len(data)
        self.transport.write(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


async def serve(h: Any, tls: Any, factory: Any = Recorder) -> tuple[asyncio.AbstractServer, int]:
    Recorder.made = []
    server = await h.loop.create_server(factory, "127.0.0.1", 0, ssl=tls_arg(h, tls))
    return server, server.sockets[0].getsockname()[1]


async def stop(server: asyncio.AbstractServer) -> None:
    server.close()
    await server.wait_closed()


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_echo_byte_exact_and_what_the_ssl_object_answers(h, files, conf, version) -> None:
    async def main() -> None:
        server, port = await serve(h, conf)
        ctx = client_ctx(files, version, alpn=["h2", "http/1.1"])
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
        for size in (1, 100, 16384, 16385, 100_000):
            payload = os.urandom(size)
            w.write(payload)
            assert await r.readexactly(size) == payload
        info = Recorder.made[0].info
        name = {ssl.TLSVersion.TLSv1_2: "TLSv1.2", ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[version]
        assert info["version"] == name == w.get_extra_info("ssl_object").version()
        assert info["cipher"] == w.get_extra_info("ssl_object").cipher()
        assert info["alpn"] == "http/1.1" == w.get_extra_info("ssl_object").selected_alpn_protocol()
        assert info["peercert"] is None
        assert info["transport"] == ("TLSTransport" if h.uring else "_SSLProtocolTransport")
        assert Recorder.made[0].transport.get_extra_info("sslcontext") is conf.context
        w.close()
        await w.wait_closed()
        assert await Recorder.made[0].lost is None  # the client's close_notify: a clean end
        await stop(server)
        await settled(h)

    h.run(main())


def test_no_alpn_in_common_goes_on_without_alpn(h, files, conf) -> None:
    async def main() -> None:
        server, port = await serve(h, conf)
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx(files, alpn=["h2"]))
        w.write(b"x")
        assert await r.readexactly(1) == b"x"
        assert Recorder.made[0].info["alpn"] is None
        assert w.get_extra_info("ssl_object").selected_alpn_protocol() is None
        w.close()
        await w.wait_closed()
        await stop(server)
        await settled(h)

    h.run(main())


def test_megabytes_both_ways_past_the_arena_with_backpressure(h, files, conf) -> None:
    """The server writes more than the send arena holds in one write (the
    rest waits as plaintext for US_EV_ARENA, OpenSSL keeps the record it
    could not place) while the client sends 1 MiB at a time."""
    big = os.urandom(12 << 20)
    upload = os.urandom(1 << 20)
    paused: list[int] = []

    class Big(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.t = transport
            self.got = bytearray()
            self.done = asyncio.get_running_loop().create_future()

        def data_received(self, data: bytes) -> None:
            self.got += data
            if len(self.got) == len(upload):
                self.t.write(big)
                self.t.write(hashlib.sha256(self.got).digest())

        def pause_writing(self) -> None:
            paused.append(self.t.get_write_buffer_size())

        def connection_lost(self, exc: BaseException | None) -> None:
            self.done.set_result(exc)

    async def main() -> None:
        server, port = await serve(h, conf, Big)
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx(files))
        w.write(upload)
        await w.drain()
        got = await r.readexactly(len(big))
        assert hashlib.sha256(got).digest() == hashlib.sha256(big).digest()
        assert await r.readexactly(32) == hashlib.sha256(upload).digest()
        if h.uring:  # asyncio's SSLProtocol pauses later, from its own buffer
            assert paused  # the protocol was paused while the arena was full
        w.close()
        await w.wait_closed()
        await stop(server)
        await settled(h)

    h.run(main(), timeout=120)


def test_server_close_sends_close_notify(h, files, conf) -> None:
    class Bye(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.t = transport

        def data_received(self, data: bytes) -> None:
            self.t.write(b"bye")
            self.t.close()

    async def main() -> None:
        server, port = await serve(h, conf, Bye)
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx(files))
        w.write(b"hi")
        assert await r.read() == b"bye"  # then a clean EOF: close_notify, not a cut
        assert r.at_eof()
        w.close()
        await w.wait_closed()
        await stop(server)
        await settled(h)

    h.run(main())


def test_a_write_before_the_handshake_is_sent_after_it(h, files, conf) -> None:
    class Greeter(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            transport.write(b"hello before the handshake")

    async def main() -> None:
        server, port = await serve(h, conf, Greeter)
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx(files))
        assert await r.readexactly(26) == b"hello before the handshake"
        w.close()
        await w.wait_closed()
        await stop(server)
        await settled(h)

    h.run(main())


def test_close_before_the_handshake_drops_what_could_never_be_sent(h, files, conf) -> None:
    """A protocol writes and closes before the peer has finished its handshake
    (a server's timeout, a refusal): the plaintext cannot be encrypted yet
    and is dropped, and the connection closes, not held open for it."""

    if not h.uring:
        pytest.skip("asyncio's SSLProtocol makes the protocol only once the handshake is done")

    class WriteAndGo(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            transport.write(b"408 or so")
            transport.close()

    async def main() -> None:
        server, port = await serve(h, conf, WriteAndGo)

        def client() -> bytes:
            with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
                return s.recv(4096)  # no ClientHello sent: the server has nothing it may send

        assert await asyncio.to_thread(client) == b""
        await stop(server)
        await settled(h)

    h.run(main())


def raw_tls_client(port: int, ctx: ssl.SSLContext) -> tuple[socket.socket, ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO]:
    """A blocking client whose records the test writes itself (to cut one)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname="127.0.0.1")
    while True:
        try:
            obj.do_handshake()
            break
        except ssl.SSLWantReadError:
            if out.pending:
                sock.sendall(out.read())
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("closed during the handshake") from None
            inc.write(data)
    if out.pending:
        sock.sendall(out.read())
    return sock, obj, inc, out


def test_close_notify_reaches_a_strict_client(h, files, conf) -> None:
    """The client reads to the socket's end with its own SSLObject: the
    server's close() ends with close_notify (SSLZeroReturnError), not a bare
    FIN (SSLEOFError: a truncation attack for a strict client)."""

    class Bye(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.t = transport

        def data_received(self, data: bytes) -> None:
            self.t.write(b"bye")
            self.t.close()

    async def main() -> None:
        server, port = await serve(h, conf, Bye)

        strict = client_ctx(files)
        strict.options &= ~ssl.OP_IGNORE_UNEXPECTED_EOF  # CPython's default forgives a missing close_notify

        def client() -> tuple[bytes, type]:
            sock, obj, inc, out = raw_tls_client(port, strict)
            obj.write(b"hi")
            sock.sendall(out.read())
            got = b""
            with sock:
                while True:
                    try:
                        data = obj.read(65536)
                    except ssl.SSLWantReadError:
                        data = None
                    except ssl.SSLError as exc:  # SSLEOFError: the end without close_notify
                        return got, type(exc)
                    if data == b"":  # close_notify (CPython's read() says so with b""): ours back
                        with contextlib.suppress(ssl.SSLError):
                            obj.unwrap()
                        sock.sendall(out.read())
                        return got, ssl.SSLZeroReturnError
                    if data:
                        got += data
                        continue
                    chunk = sock.recv(65536)
                    if chunk:
                        inc.write(chunk)
                    else:
                        inc.write_eof()

        got, ending = await asyncio.to_thread(client)
        assert got == b"bye"
        assert ending is ssl.SSLZeroReturnError
        await stop(server)
        await settled(h)

    h.run(main())


@pytest.mark.parametrize("how", ["fin", "reset"])
def test_a_record_cut_in_the_middle_ends_cleanly_and_leaks_nothing(h, files, conf, how) -> None:
    async def main() -> None:
        server, port = await serve(h, conf)

        def client() -> None:
            sock, obj, inc, out = raw_tls_client(port, client_ctx(files))
            obj.write(b"x" * 5000)
            record = out.read()
            sock.sendall(record[: len(record) // 2])
            if how == "reset":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            else:  # a FIN, then what the server still sends (its close_notify) is read: no RST from unread data
                sock.shutdown(socket.SHUT_WR)
                while sock.recv(65536):
                    pass
            sock.close()

        await asyncio.to_thread(client)
        await until(lambda: bool(Recorder.made))
        exc = await Recorder.made[0].lost
        assert Recorder.made[0].received == 0
        if how == "fin":
            assert exc is None  # a cut record with a FIN is the end, as a FIN
        else:
            assert isinstance(exc, ConnectionResetError)
        await stop(server)
        await settled(h)

    h.run(main())


@pytest.mark.parametrize(
    "garbage, alert",
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", None),  # plain HTTP to the TLS port: closed, no alert
        (b"\x16\x03\x01\x00\x08" + b"\x01\x00\x00\x04junk", 50),  # a ClientHello that is not one: decode_error
    ],
    ids=["http", "bad-hello"],
)
def test_garbage_instead_of_a_client_hello_is_a_clean_close(h, files, conf, garbage, alert) -> None:
    async def main() -> None:
        server, port = await serve(h, conf)

        def client() -> bytes:
            with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
                s.sendall(garbage)
                got = b""
                while chunk := s.recv(4096):
                    got += chunk
                return got

        got = await asyncio.to_thread(client)
        if alert is None:
            assert got == b""
        elif h.uring:  # an alert record: fatal, its description (asyncio's SSLProtocol drops it and aborts)
            assert got[:1] == b"\x15" and got[5:7] == bytes([2, alert]), got
        if h.uring:
            exc = await Recorder.made[0].lost
            assert isinstance(exc, ssl.SSLError), exc
        await stop(server)
        await settled(h)

    h.run(main())
    h.take_errors()  # asyncio's SSLProtocol reports a failed handshake in debug mode only


def test_tls_1_1_and_1_0_are_refused(h, files, conf) -> None:
    async def main() -> None:
        server, port = await serve(h, conf)
        for flag in ("-tls1_1", "-tls1"):
            proc = await asyncio.create_subprocess_exec(
                "openssl", "s_client", "-connect", f"127.0.0.1:{port}", flag, "-cipher", "DEFAULT@SECLEVEL=0",
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            )  # fmt: skip
            out, _ = await proc.communicate()
            assert proc.returncode != 0
            if h.uring:  # the alert that says why (asyncio's SSLProtocol aborts without it)
                assert b"alert protocol version" in out, out.decode(errors="replace")[-400:]
        await stop(server)
        await settled(h)

    h.run(main())
    h.take_errors()


def test_renegotiation_is_refused(h, files, conf) -> None:
    async def main() -> None:
        server, port = await serve(h, conf)
        # s_client renegotiates on a line "R"; then sends "after" if the connection lives
        proc = await asyncio.create_subprocess_exec(
            "openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_2", "-CAfile", str(files.cacert),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        assert proc.stdin is not None and proc.stdout is not None
        await proc.stdout.readuntil(b"---\n")
        proc.stdin.write(b"R\n")
        await proc.stdin.drain()
        out = await asyncio.wait_for(proc.stdout.read(), 20)
        await proc.wait()
        assert b"RENEGOTIATING" in out
        assert b"no renegotiation" in out or b"NO_RENEGOTIATION" in out, out.decode(errors="replace")[-600:]
        await stop(server)
        await settled(h)

    h.run(main())
    h.take_errors()


@pytest.mark.parametrize("cert", ["none", "other-ca"])
def test_mtls_refuses_a_missing_or_foreign_client_certificate(h, files, mtls_conf, cert) -> None:
    async def main() -> None:
        server, port = await serve(h, mtls_conf)
        ctx = client_ctx(files, ssl.TLSVersion.TLSv1_3)
        if cert == "other-ca":
            trustme.CA().issue_cert("client@example.com").configure_cert(ctx)
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
        w.write(b"x")  # TLS 1.3: the server's verdict comes after the client's handshake is done
        with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)) as info:
            await r.readexactly(1)
        w.close()
        try:
            await w.wait_closed()
        except (ssl.SSLError, ConnectionError):
            pass  # the connection has failed: closing it may say so again
        if h.uring:  # the alert that says why (asyncio's SSLProtocol aborts without one)
            want = "certificate required" if cert == "none" else "unknown ca"
            assert want in str(info.value).lower().replace("_", " ")
            assert isinstance(await Recorder.made[0].lost, ssl.SSLError)
        await stop(server)
        await settled(h)

    h.run(main())
    h.take_errors()


def test_mtls_accepts_a_certificate_of_its_ca_and_shows_it(h, files, mtls_conf) -> None:
    async def main() -> None:
        server, port = await serve(h, mtls_conf)
        ctx = client_ctx(files)
        issued = files.ca.issue_cert("client@example.com")
        issued.configure_cert(ctx)
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
        w.write(b"x")
        assert await r.readexactly(1) == b"x"
        der = Recorder.made[0].info["peercert"]
        assert der == ssl.PEM_cert_to_DER_cert(issued.cert_chain_pems[0].bytes().decode())
        decoded = Recorder.made[0].transport.get_extra_info("ssl_object").getpeercert()
        assert ("email", "client@example.com") in decoded["subjectAltName"]
        w.close()
        await w.wait_closed()
        await stop(server)
        await settled(h)

    h.run(main())


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost",
    )]  # fmt: skip


def heap_in_use() -> int:
    """Bytes malloc has handed out and not had back (glibc's mallinfo2):
    OpenSSL's allocations and Python's large objects, not the allocator's
    high-water mark that RSS keeps."""
    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = _Mallinfo2
    info = libc.mallinfo2()
    return int(info.uordblks + info.hblkhd)


def test_abandoned_handshakes_leave_nothing_behind(h, files, conf) -> None:
    """1,000 connections that send a ClientHello and go: every SSL object is
    freed (tls_live back to 0 after each 50) and the heap stays flat."""
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = client_ctx(files).wrap_bio(inc, out, server_hostname="127.0.0.1")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    client_hello = out.read()

    async def main() -> None:
        server, port = await serve(h, conf, asyncio.Protocol)  # Recorder keeps what it saw

        async def abandon(n: int) -> None:
            for _ in range(n // 50):
                conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(50)]
                for _r, w in conns:
                    w.write(client_hello)
                    await w.drain()
                for r, w in conns:
                    await r.read(1)  # the server's first flight has begun: its SSL object exists
                    w.transport.abort()
                if h.uring:
                    assert await until(lambda: counters(h)["tls_live"] == 0)

        await abandon(200)  # caches and free lists filled: measured from here
        gc.collect()
        base = heap_in_use()
        await abandon(1000)
        gc.collect()
        grown = heap_in_use() - base
        assert grown < 1 << 20, f"the heap grew {grown} bytes over 1,000 abandoned handshakes"
        await stop(server)
        await settled(h)

    h.run(main(), timeout=120)
    h.take_errors()


# -- `uringserve run --tls-*`: the HTTP server over the core (uring) and over SSLProtocol (asyncio) --------
def https_get(port: int, ctx: ssl.SSLContext, request: bytes) -> bytes:
    """`request` over TLS; what comes back until the server's close (close_notify: a clean end)."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            s.sendall(request)
            got = b""
            while chunk := s.recv(1 << 16):
                got += chunk
            return got


@pytest.fixture(scope="module", params=["uring", "asyncio"])
def loop_name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module", params=["apps.http:app", "apps.http:asgi_app"], ids=["native", "asgi"])
def https_server(request: pytest.FixtureRequest, files: TLSFiles, loop_name: str) -> Any:
    srv = Proc(
        [PY, "-m", "uringserve", "run", request.param, "--port", "0", "--loop", loop_name,
         "--tls-cert", str(files.cert), "--tls-key", str(files.key), "--header-timeout", "1"],
    )  # fmt: skip
    yield srv
    srv.stop()


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_https_hello_byte_exact_over_both_versions(https_server, files, version) -> None:
    strict = client_ctx(files, version)
    strict.options &= ~ssl.OP_IGNORE_UNEXPECTED_EOF  # the server's close must be close_notify
    got = https_get(https_server.port, strict, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\ncontent-length: 14" in head.lower()
    assert body == b"Hello, world!\n"


def test_https_a_mebibyte_each_way_and_keep_alive(https_server, files) -> None:
    import httpx

    body = os.urandom(1 << 20)
    with httpx.Client(verify=client_ctx(files), timeout=30) as client:
        for _ in range(3):  # one connection, kept alive
            r = client.post(f"https://127.0.0.1:{https_server.port}/echo", content=body)
            assert r.status_code == 200
            assert r.content == body
            assert r.http_version == "HTTP/1.1"


@pytest.mark.parametrize("sent", ["nothing", "half a client hello"])
def test_a_handshake_that_never_finishes_is_cut_at_the_header_timeout(https_server, files, loop_name, sent) -> None:
    if loop_name == "asyncio":
        pytest.skip("asyncio's SSLProtocol calls connection_made() after the handshake: its own 60 s timeout cuts it")
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    with pytest.raises(ssl.SSLWantReadError):
        client_ctx(files).wrap_bio(inc, out, server_hostname="127.0.0.1").do_handshake()
    hello = out.read()
    with socket.create_connection(("127.0.0.1", https_server.port), timeout=30) as s:
        if sent != "nothing":
            s.sendall(hello[: len(hello) // 2])
        assert s.recv(4096) == b""  # closed by the server (--header-timeout 1), nothing sent in clear


def test_the_asgi_scope_carries_the_client_certificate(files, loop_name) -> None:
    import httpx

    srv = Proc(
        [PY, "-m", "uringserve", "run", "tests.tls_apps:scope_app", "--port", "0", "--loop", loop_name,
         "--tls-cert", str(files.cert), "--tls-key", str(files.key), "--tls-ca", str(files.cacert)],
    )  # fmt: skip
    try:
        issued = files.ca.issue_cert("client@example.com")
        ctx = client_ctx(files, ssl.TLSVersion.TLSv1_3)
        issued.configure_cert(ctx)
        with httpx.Client(verify=ctx, timeout=30) as client:
            info = client.get(f"https://127.0.0.1:{srv.port}/").json()
        assert info["scheme"] == "https"
        tls = info["tls"]
        # the chain the client sent: its certificate, and the root its OpenSSL
        # added from its trust store (no chain given); asyncio's SSLObject tells the first only
        leaf, root = issued.cert_chain_pems[0].bytes().decode(), files.ca.cert_pem.bytes().decode()
        whole = loop_name == "uring" or sys.version_info >= (3, 13)
        assert tls["client_cert_chain"] == ([leaf, root] if whole else [leaf])
        assert tls["tls_version"] == 0x0304
        assert tls["client_cert_name"] and tls["client_cert_name"].startswith(("OU=", "O=", "CN="))
        # the websocket scope over wss:// carries the same extension
        from websockets.sync.client import connect

        with connect(f"wss://127.0.0.1:{srv.port}/", ssl=ctx, open_timeout=30) as ws:
            ws_info = json.loads(ws.recv(timeout=30))
        assert ws_info == {"scheme": "wss", "tls": tls}
        # without a certificate the handshake is refused: no request reaches the app
        with pytest.raises((ssl.SSLError, httpx.HTTPError)):
            with httpx.Client(verify=client_ctx(files), timeout=30) as client:
                client.get(f"https://127.0.0.1:{srv.port}/")
    finally:
        srv.stop()


def scope_over_tls(port: int, ctx: ssl.SSLContext) -> tuple[dict[str, Any], tuple[str, str, int], str]:
    """GET / from tls_apps.scope_app: its answer, and the cipher and version this client used."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            got = b""
            while chunk := s.recv(65536):
                got += chunk
            cipher, version = s.cipher(), s.version()
            assert cipher is not None and version is not None
    return json.loads(got.partition(b"\r\n\r\n")[2]), cipher, version


# what this client negotiates: TLS 1.3's suites are the server's choice, TLS 1.2's ChaCha20 pinned
IANA = {"TLS_AES_256_GCM_SHA384": 0x1302, "TLS_AES_128_GCM_SHA256": 0x1301, "TLS_CHACHA20_POLY1305_SHA256": 0x1303,
        "ECDHE-ECDSA-CHACHA20-POLY1305": 0xCCA9, "ECDHE-RSA-CHACHA20-POLY1305": 0xCCA8}  # fmt: skip


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_the_tls_extension_is_complete_with_an_intermediate_ca(files, loop_name, version) -> None:
    """server_cert, the whole chain the client sent (its certificate, then
    an intermediate CA's), its name, the version and the suite as numbers,
    in the http scope and the websocket scope alike."""
    srv = Proc(
        [PY, "-m", "uringserve", "run", "tests.tls_apps:scope_app", "--port", "0", "--loop", loop_name,
         "--tls-cert", str(files.cert), "--tls-key", str(files.key), "--tls-ca", str(files.cacert)],
    )  # fmt: skip
    try:
        issued = files.ca.create_child_ca().issue_cert("client@example.com")
        sent = [pem.bytes().decode() for pem in issued.cert_chain_pems]
        assert len(sent) == 2  # the client's certificate and the intermediate that signed it
        ctx = client_ctx(files, version)
        if version == ssl.TLSVersion.TLSv1_2:
            ctx.set_ciphers("ECDHE+CHACHA20")
        issued.configure_cert(ctx)  # sends the chain: the server trusts only the root (--tls-ca)
        info, cipher, used = scope_over_tls(srv.port, ctx)
        tls = info["tls"]
        assert tls["server_cert"] == files.cert.read_text()
        if loop_name == "uring" or sys.version_info >= (3, 13):
            assert tls["client_cert_chain"] == sent
        else:  # asyncio's SSLObject tells only the client's own certificate before 3.13
            assert tls["client_cert_chain"] == sent[:1]
        assert tls["client_cert_name"] and "Testing cert" in tls["client_cert_name"]
        assert tls["client_cert_error"] is None
        assert tls["tls_version"] == {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}[used] == version.value
        assert tls["cipher_suite"] == IANA[cipher[0]], cipher
        from websockets.sync.client import connect

        with connect(f"wss://127.0.0.1:{srv.port}/", ssl=ctx, open_timeout=30) as ws:
            assert json.loads(ws.recv(timeout=30)) == {"scheme": "wss", "tls": tls}
    finally:
        srv.stop()


def test_the_scope_has_no_tls_extension_over_plain_http(loop_name) -> None:
    import httpx

    srv = Proc([PY, "-m", "uringserve", "run", "tests.tls_apps:scope_app", "--port", "0", "--loop", loop_name])
    try:
        info = httpx.get(f"http://127.0.0.1:{srv.port}/", timeout=30).json()
        assert info == {"scheme": "http", "tls": None}
    finally:
        srv.stop()


# -- doctor: the TLS core and kTLS (detected only) ---------------------------------------------------
def test_doctor_reports_the_tls_core_and_why_ktls_is_unavailable() -> None:
    import json

    from uringserve import ktls, tls

    out = subprocess.run([PY, "-m", "uringserve", "doctor", "--json"], capture_output=True, text=True, timeout=60)
    checks = {c["name"]: c for c in json.loads(out.stdout)["checks"]}
    core = checks["TLS in the core (--tls-cert)"]
    assert core["ok"] and core["detail"] == tls.openssl_version() == ssl.OPENSSL_VERSION  # one OpenSSL
    k = checks["kTLS (TCP_ULP tls)"]
    available, why = ktls.probe()
    assert k["ok"] is available and k["detail"] == why
    if not available:  # this kernel (no CONFIG_TLS): the reason in words
        assert why == ktls.reason(2) or "permitted" in why or "TCP_ULP" in why


@pytest.mark.parametrize(
    "err, words",
    [(2, "CONFIG_TLS"), (1, "not permitted"), (92, "older than 4.13"), (22, "TCP_ULP tls failed: Invalid argument")],
)
def test_ktls_unavailability_is_said_in_words(err: int, words: str) -> None:
    from uringserve import ktls

    assert words in ktls.reason(err)


def test_ktls_probe_reports_what_setsockopt_said(monkeypatch: pytest.MonkeyPatch) -> None:
    from uringserve import ktls

    def refuse(self: socket.socket, level: int, opt: int, value: Any) -> None:
        if opt == ktls.TCP_ULP:
            raise OSError(2, "No such file or directory")
        return real(self, level, opt, value)

    real = socket.socket.setsockopt
    monkeypatch.setattr(socket.socket, "setsockopt", refuse)
    assert ktls.probe() == (False, ktls.reason(2))

    def accept(self: socket.socket, level: int, opt: int, value: Any) -> None:
        if opt != ktls.TCP_ULP:
            real(self, level, opt, value)

    monkeypatch.setattr(socket.socket, "setsockopt", accept)
    assert ktls.probe() == (True, "")


def test_https_static_files_byte_exact(files, loop_name, tmp_path) -> None:
    """Static files over TLS: a small one (held in memory, one write) and
    1 MiB (read by the ring and encrypted by the core on the ring loop;
    tests/test_tls_files.py has the rest)."""
    import httpx

    small, big = b"<p>hi</p>\n" * 10, os.urandom(1 << 20)
    (tmp_path / "small.html").write_bytes(small)
    (tmp_path / "big.bin").write_bytes(big)
    srv = Proc(
        [PY, "-m", "uringserve", "run", "apps.http:app", "--port", "0", "--loop", loop_name,
         "--tls-cert", str(files.cert), "--tls-key", str(files.key)],
        env={**os.environ, "URINGSERVE_STATIC": str(tmp_path)},
    )  # fmt: skip
    try:
        with httpx.Client(verify=client_ctx(files), timeout=30) as client:
            for name, want in (("small.html", small), ("big.bin", big)):
                r = client.get(f"https://127.0.0.1:{srv.port}/static/{name}")
                assert r.status_code == 200 and r.content == want, name
    finally:
        srv.stop()


# -- SNI: several certificates, chosen by name ----------------------------------------------------------
@pytest.fixture(scope="module")
def sni_files(files: TLSFiles, tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, str]]:
    """(cert, key) for "127.0.0.1" (the default), "a.example" and "*.b.example", one CA (files.ca)."""
    folder = tmp_path_factory.mktemp("sni")
    pairs = [(str(files.cert), str(files.key))]
    for i, names in enumerate((["a.example"], ["*.b.example"])):
        issued = files.ca.issue_cert(*names)
        cert, key = folder / f"{i}.crt", folder / f"{i}.key"
        issued.cert_chain_pems[0].write_to_path(str(cert))
        issued.private_key_pem.write_to_path(str(key))
        pairs.append((str(cert), str(key)))
    return pairs


def served_names(port: int, files: TLSFiles, name: str) -> list[str]:
    """The DNS names of the certificate the server shows a client asking for `name`."""
    ctx = client_ctx(files)
    ctx.check_hostname = False  # an unknown name gets the default certificate: looked at, not refused
    with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
        with ctx.wrap_socket(raw, server_hostname=name) as s:
            return [v for k, v in s.getpeercert()["subjectAltName"] if k in ("DNS", "IP Address")]


SNI_CASES = [("a.example", ["a.example"]), ("x.b.example", ["*.b.example"]), ("A.EXAMPLE", ["a.example"]),
             ("other.example", ["127.0.0.1"]), ("y.x.b.example", ["127.0.0.1"])]  # fmt: skip


def test_sni_chooses_the_certificate_by_name(h, files, sni_files) -> None:
    multi = CoreTLS(*sni_files[0], more=sni_files[1:])

    async def main() -> None:
        server, port = await serve(h, multi)
        for name, want in SNI_CASES:
            assert await asyncio.to_thread(served_names, port, files, name) == want, name
        await stop(server)
        await settled(h)

    h.run(main())
    h.take_errors()


def test_the_server_certificate_told_is_the_one_the_sni_name_chose(h, files, sni_files) -> None:
    """What ASGI's server_cert is made of: the certificate of the client's name, not the first."""
    multi = CoreTLS(*sni_files[0], more=sni_files[1:])

    def der(path: str) -> bytes:
        with open(path) as f:
            return ssl.PEM_cert_to_DER_cert(f.read())

    async def main() -> None:
        server, port = await serve(h, multi)
        for name, cert in (("a.example", sni_files[1][0]), ("x.b.example", sni_files[2][0]), ("z", sni_files[0][0])):
            ctx = client_ctx(files)
            ctx.check_hostname = False
            r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=name)
            w.write(b"x")
            assert await r.readexactly(1) == b"x"
            info = Recorder.made[-1].info
            assert info["server_cert"] == der(cert), name
            assert info["cipher_id"] in (0x1301, 0x1302, 0x1303)  # TLS 1.3's
            w.close()
            await w.wait_closed()
        await stop(server)
        await settled(h)

    h.run(main())
    h.take_errors()


def test_sni_with_several_tls_cert_options(files, sni_files, loop_name) -> None:
    args = [PY, "-m", "uringserve", "run", "apps.http:app", "--port", "0", "--loop", loop_name]
    for cert, key in sni_files:
        args += ["--tls-cert", cert, "--tls-key", key]
    srv = Proc(args)
    try:
        for name, want in SNI_CASES:
            assert served_names(srv.port, files, name) == want, name
    finally:
        srv.stop()


def refused_alert(port: int, files: TLSFiles, name: str) -> str:
    """The reason the client's handshake for `name` failed with ("" when it did not)."""
    ctx = client_ctx(files)
    ctx.check_hostname = False
    with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
        s = ctx.wrap_socket(raw, server_hostname=name, do_handshake_on_connect=False)
        try:
            s.do_handshake()
        except (ssl.SSLError, ConnectionError) as exc:
            return getattr(exc, "reason", None) or type(exc).__name__
        finally:
            s.close()
    return ""


def test_sni_strict_refuses_an_unknown_name_or_none_with_unrecognized_name(h, files, sni_files) -> None:
    """--tls-sni-strict: a name no certificate holds, or no name at all (a
    client by address: "127.0.0.1" is no SNI name), gets alert 112 and no
    certificate; the known names are served as without it. With one
    certificate, its own name is the known one."""
    multi = CoreTLS(*sni_files[0], more=sni_files[1:], sni_strict=True)
    single = CoreTLS(*sni_files[1], sni_strict=True)  # a.example only
    # asyncio's SSLProtocol aborts a failed handshake without sending its alert: the client sees EOF
    refused = {"TLSV1_UNRECOGNIZED_NAME"} if h.uring else {"SSLEOFError", "SSLZeroReturnError", "ConnectionResetError"}

    async def main() -> None:
        server, port = await serve(h, multi)
        for name, want in SNI_CASES:
            if want == ["127.0.0.1"]:  # the default's, for an unknown name: refused instead
                assert await asyncio.to_thread(refused_alert, port, files, name) in refused, name
            else:
                assert await asyncio.to_thread(served_names, port, files, name) == want, name
        assert await asyncio.to_thread(refused_alert, port, files, "127.0.0.1") in refused
        await stop(server)
        server, port = await serve(h, single)
        assert await asyncio.to_thread(served_names, port, files, "a.example") == ["a.example"]
        for name in ("other.example", "127.0.0.1"):
            assert await asyncio.to_thread(refused_alert, port, files, name) in refused, name
        await stop(server)
        await settled(h)  # the refused handshakes' SSL objects and slots are back

    h.run(main())
    h.take_errors()


def s_client(port: int, files: TLSFiles, *name_args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", str(files.cacert), "-ign_eof", *name_args],
        input="GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_tls_sni_strict_with_openssl_s_client(files, sni_files, loop_name) -> None:
    args = [PY, "-m", "uringserve", "run", "apps.http:app", "--port", "0", "--loop", loop_name, "--tls-sni-strict"]
    for cert, key in sni_files:
        args += ["--tls-cert", cert, "--tls-key", key]
    srv = Proc(args)
    try:
        for known in ("a.example", "x.b.example"):
            out = s_client(srv.port, files, "-servername", known)
            assert "Verify return code: 0 (ok)" in out.stdout and "Hello, world!" in out.stdout, out.stderr
        for unknown in (["-servername", "other.example"], ["-noservername"]):
            out = s_client(srv.port, files, *unknown)
            assert out.returncode != 0, unknown
            if loop_name == "uring":  # asyncio's SSLProtocol aborts without the alert
                assert "SSL alert number 112" in out.stderr, out.stderr
            assert "Hello, world!" not in out.stdout
    finally:
        srv.stop()


# -- session tickets: shared by the workers ------------------------------------------------------------
def resumed(port_first: int, port_then: int, files: TLSFiles, version: ssl.TLSVersion) -> bool:
    """A full handshake with one server, then the session it gave offered to the other: resumed?"""
    ctx = client_ctx(files, version)
    with socket.create_connection(("127.0.0.1", port_first), timeout=20) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            s.sendall(b"x")
            s.recv(1)  # TLS 1.3: the ticket comes after the handshake
            session = s.session
    with socket.create_connection(("127.0.0.1", port_then), timeout=20) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1", session=session) as s:
            s.sendall(b"x")
            s.recv(1)
            return s.session_reused


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_a_session_resumes_on_another_server_with_the_same_ticket_secret(h, files, version) -> None:
    if not h.uring:
        pytest.skip("the ticket secret is the core's: asyncio's SSLProtocol has OpenSSL's per-context keys")
    secret = os.urandom(32)
    one = CoreTLS(str(files.cert), str(files.key), ticket_secret=secret)
    same = CoreTLS(str(files.cert), str(files.key), ticket_secret=secret)
    other = CoreTLS(str(files.cert), str(files.key))  # a secret of its own

    async def main() -> None:
        servers = [await serve(h, c) for c in (one, same, other)]
        (s1, p1), (s2, p2), (s3, p3) = servers
        assert await asyncio.to_thread(resumed, p1, p1, files, version)  # the same server
        assert await asyncio.to_thread(resumed, p1, p2, files, version)  # a worker with the same secret
        assert not await asyncio.to_thread(resumed, p1, p3, files, version)  # another secret: a full handshake
        for server, _ in servers:
            await stop(server)
        await settled(h)

    h.run(main())


def counting_tickets(ctx: ssl.SSLContext) -> list[int]:
    """The NewSessionTicket messages the client reads, counted in the list's one item."""
    seen = [0]

    def count(conn: Any, direction: str, version: Any, content_type: Any, msg_type: Any, data: Any) -> None:
        if direction == "read" and content_type == ssl._TLSContentType.HANDSHAKE and msg_type == 4:  # type: ignore[attr-defined]
            seen[0] += 1

    ctx._msg_callback = count  # type: ignore[attr-defined]
    return seen


def ticket_chain(ports: list[int], files: TLSFiles) -> list[tuple[int, bool, bytes]]:
    """Connections over TLS 1.3 in turn, to each port, each offering the
    ticket of the one before, once (as RFC 8446 asks of clients): per
    connection (tickets received, resumed, the session's id)."""
    ctx = client_ctx(files, ssl.TLSVersion.TLSv1_3)
    seen = counting_tickets(ctx)
    session = None
    got = []
    for port in ports:
        seen[0] = 0
        with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1", session=session) as s:
                s.sendall(b"x")
                s.recv(1)
                while seen[0] == 0 and s.pending() == 0:  # a ticket comes with or after the echo, or none
                    s.settimeout(0.5)
                    try:
                        if not s.recv(1):
                            break
                    except TimeoutError:
                        break  # a resumption that issues no ticket: nothing more arrives
                session = s.session
                got.append((seen[0], s.session_reused, session.id))
    return got


def test_one_ticket_per_handshake_and_a_fresh_one_per_resumption_across_servers(h, files) -> None:
    """A full TLS 1.3 handshake issues one ticket (TICKETS); each resumption
    issues a new one in place of the ticket it used, so a client that uses
    a ticket once resumes every connection after the first, on either of two
    servers sharing the ticket secret (the workers)."""
    if not h.uring:
        pytest.skip("the ticket keys are the core's")
    secret = os.urandom(32)
    one = CoreTLS(str(files.cert), str(files.key), ticket_secret=secret)
    two = CoreTLS(str(files.cert), str(files.key), ticket_secret=secret)

    async def main() -> None:
        (s1, p1), (s2, p2) = await serve(h, one), await serve(h, two)
        got = await asyncio.to_thread(ticket_chain, [p1, p2, p1, p2, p2], files)
        assert [(n, reused) for n, reused, _ in got] == [(1, False)] + [(1, True)] * 4
        assert len({sid for _, _, sid in got}) == len(got)  # a new ticket each time: none offered twice
        await stop(s1)
        await stop(s2)
        await settled(h)

    h.run(main())


def test_tickets_per_full_handshake_can_be_raised(h, files) -> None:
    """CoreTLS(tickets=2): for clients that open a second connection before
    resuming the first (the default, one, in the other tests; on the stdlib
    loop, asyncio's SSLProtocol serves the same count from CoreTLS.context)."""
    conf = CoreTLS(str(files.cert), str(files.key), tickets=2)
    one = CoreTLS(str(files.cert), str(files.key))

    async def main() -> None:
        server, port = await serve(h, conf)
        got = await asyncio.to_thread(ticket_chain, [port, port], files)
        assert [(n, reused) for n, reused, _ in got] == [(2, False), (1, True)]
        await stop(server)
        server, port = await serve(h, one)
        got = await asyncio.to_thread(ticket_chain, [port, port, port], files)
        assert [(n, reused) for n, reused, _ in got] == [(1, False), (1, True), (1, True)]
        await stop(server)
        await settled(h)

    h.run(main())
    with pytest.raises(ValueError, match="tickets 0"):
        CoreTLS(str(files.cert), str(files.key), tickets=0)


def test_ticket_keys_rotate_and_an_old_ticket_gets_a_full_handshake(h, files) -> None:
    """With a 1-second period, a ticket is taken during its period and the
    next, and refused two periods on (the keys that made it are gone)."""
    if not h.uring:
        pytest.skip("the ticket keys are the core's")
    import time

    conf = CoreTLS(str(files.cert), str(files.key), ticket_period=1)

    async def main() -> None:
        server, port = await serve(h, conf)
        ctx = client_ctx(files, ssl.TLSVersion.TLSv1_2)

        def first() -> tuple[Any, float]:
            with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
                with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                    return s.session, time.time()

        def offer(session: Any) -> bool:
            with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
                with ctx.wrap_socket(raw, server_hostname="127.0.0.1", session=session) as s:
                    return s.session_reused

        session, issued = await asyncio.to_thread(first)
        assert await asyncio.to_thread(offer, session)
        # the period is the wall clock's: two whole periods on, whatever the phase
        assert await until(lambda: time.time() > int(issued) + 2.05, timeout=10)
        assert not await asyncio.to_thread(offer, session)
        await stop(server)
        await settled(h)

    h.run(main())


def test_workers_share_the_ticket_secret_so_a_session_resumes_on_any(files) -> None:
    srv = Proc(
        [PY, "-m", "uringserve", "run", "tests.worker_app:info_app", "--port", "0", "--workers", "2",
         "--tls-cert", str(files.cert), "--tls-key", str(files.key)],
    )  # fmt: skip
    ctx = client_ctx(files, ssl.TLSVersion.TLSv1_3)
    request = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"

    def get(session: Any = None) -> tuple[int, Any, bool]:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=20) as raw:
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1", session=session) as s:
                s.sendall(request)
                got = b""
                while chunk := s.recv(65536):
                    got += chunk
                return json.loads(got.partition(b"\r\n\r\n")[2])["pid"], s.session, s.session_reused

    try:
        first_pid, session, _ = get()
        pids = set()
        for _ in range(200):  # until a connection lands on the other worker
            pid, _, reused = get(session)
            assert reused, f"worker {pid} did not resume a session of worker {first_pid}"
            pids.add(pid)
            if pid != first_pid:
                break
        assert pids - {first_pid}, "every connection went to one worker"
    finally:
        srv.stop()


def test_sighup_serves_a_renewed_certificate_and_refuses_no_connection(files, tmp_path) -> None:
    """The supervisor's rolling reload (SIGHUP) starts workers that read the
    certificate files again; connections made throughout all succeed."""
    import signal
    import time

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    first = files.ca.issue_cert("127.0.0.1")
    first.cert_chain_pems[0].write_to_path(str(cert))
    first.private_key_pem.write_to_path(str(key))
    srv = Proc(
        [PY, "-m", "uringserve", "run", "apps.http:app", "--port", "0", "--workers", "2",
         "--tls-cert", str(cert), "--tls-key", str(key)],
    )  # fmt: skip
    ctx = client_ctx(files)

    def served() -> bytes:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=20) as raw:
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                got = b""
                while chunk := s.recv(65536):
                    got += chunk
                assert got.endswith(b"Hello, world!\n"), got
                der = s.getpeercert(binary_form=True)
                assert der is not None
                return der

    try:
        old_der = ssl.PEM_cert_to_DER_cert(first.cert_chain_pems[0].bytes().decode())
        assert served() == old_der
        renewed = files.ca.issue_cert("127.0.0.1")
        for path, pem in ((cert, renewed.cert_chain_pems[0]), (key, renewed.private_key_pem)):
            pem.write_to_path(str(path.with_suffix(".new")))
            os.replace(path.with_suffix(".new"), path)  # as a certificate renewal does: whole files
        new_der = ssl.PEM_cert_to_DER_cert(renewed.cert_chain_pems[0].bytes().decode())
        srv.p.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 60
        seen = []
        while time.monotonic() < deadline:  # every connection meanwhile succeeds (served() asserts)
            seen.append(served())
            if seen[-5:] == [new_der] * 5:  # the old workers are gone: only the new certificate
                break
        assert seen[-5:] == [new_der] * 5 and set(seen) <= {old_der, new_der}
    finally:
        srv.stop()


def renew(files: TLSFiles, cert: Any, key: Any) -> bytes:
    """A new certificate for 127.0.0.1 written over `cert` and `key` as a
    renewal does (whole files replaced); its DER."""
    issued = files.ca.issue_cert("127.0.0.1")
    for path, pem in ((cert, issued.cert_chain_pems[0]), (key, issued.private_key_pem)):
        pem.write_to_path(str(path.with_suffix(".new")))
        os.replace(path.with_suffix(".new"), path)
    return ssl.PEM_cert_to_DER_cert(issued.cert_chain_pems[0].bytes().decode())


def test_sighup_in_a_single_process_reloads_the_certificate_and_keeps_open_connections(
    files, tmp_path, loop_name
) -> None:
    """Without --workers, SIGHUP reads the certificate files again: a new
    connection gets the renewed certificate, a keep-alive connection opened
    before goes on undisturbed; a file that does not load is one log line
    and the last good certificate stays."""
    import http.client
    import signal

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    old_der = renew(files, cert, key)
    srv = Proc(
        [PY, "-m", "uringserve", "run", "apps.http:app", "--port", "0", "--loop", loop_name,
         "--tls-cert", str(cert), "--tls-key", str(key), "--keepalive-timeout", "120"],
    )  # fmt: skip
    ctx = client_ctx(files)

    def connect() -> http.client.HTTPSConnection:
        conn = http.client.HTTPSConnection("127.0.0.1", srv.port, context=ctx, timeout=30)
        conn.connect()
        return conn

    def hello(conn: http.client.HTTPSConnection) -> bytes:
        """One request on `conn` (kept alive); the certificate it was served with."""
        conn.request("GET", "/")
        r = conn.getresponse()
        assert r.status == 200 and r.read() == b"Hello, world!\n"
        assert conn.sock is not None
        der = conn.sock.getpeercert(binary_form=True)
        assert der is not None
        return der

    def fresh() -> bytes:
        conn = connect()
        try:
            return hello(conn)
        finally:
            conn.close()

    try:
        kept = connect()
        assert hello(kept) == old_der
        new_der = renew(files, cert, key)
        srv.p.send_signal(signal.SIGHUP)
        srv.wait_line(lambda line: "TLS certificates reloaded" in line)
        assert fresh() == new_der
        assert hello(kept) == old_der  # the same connection, still served
        # a broken renewal: the key of another certificate, then a file that is not PEM
        files.ca.issue_cert("127.0.0.1").private_key_pem.write_to_path(str(key))
        srv.p.send_signal(signal.SIGHUP)
        first = srv.wait_line(lambda line: "not reloaded" in line)
        assert str(cert) in first and "key" in first
        cert.write_text("not a certificate\n")
        srv.p.send_signal(signal.SIGHUP)
        srv.wait_line(lambda line: "not reloaded" in line and line != first)
        assert fresh() == new_der  # the last good one
        assert hello(kept) == old_der
        out = srv.output()
        assert out.count("not reloaded") == 2 and "Traceback" not in out, out
        assert srv.p.poll() is None
        kept.close()
    finally:
        srv.stop()


def test_paused_reading_holds_the_plaintext_in_order_and_a_buffered_protocol_gets_it(h, files, conf) -> None:
    """pause_reading() at the first bytes: what the kernel had already taken
    is decrypted and held; resume_reading() hands it over in order, to a
    BufferedProtocol through get_buffer() (small buffers: many calls)."""
    payload = os.urandom(300_000)

    class Slow(asyncio.BufferedProtocol):
        def connection_made(self, transport: Any) -> None:
            self.t = transport
            self.buf = bytearray(4096)
            self.got = bytearray()
            self.paused_once = False
            self.done = asyncio.get_running_loop().create_future()

        def get_buffer(self, sizehint: int) -> bytearray:
            return self.buf

        def buffer_updated(self, n: int) -> None:
            self.got += self.buf[:n]
            if not self.paused_once:
                self.paused_once = True
                self.t.pause_reading()
            if len(self.got) == len(payload) and not self.done.done():
                self.done.set_result(None)

    async def main() -> None:
        made: list[Slow] = []
        server, port = await serve(h, conf, lambda: made.append(Slow()) or made[-1])
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx(files))
        w.write(payload)
        await w.drain()
        await until(lambda: bool(made) and getattr(made[0], "paused_once", False))
        assert not made[0].t.is_reading()
        made[0].t.resume_reading()
        await made[0].done
        assert bytes(made[0].got) == payload
        w.close()
        await w.wait_closed()
        await stop(server)
        await settled(h)

    h.run(main())


@pytest.mark.parametrize(
    "ciphers",
    ["ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA", "AES128-GCM-SHA256:AES256-SHA256", "DES-CBC3-SHA:RC4-SHA"],
    ids=["sha1-cbc", "no-forward-secrecy", "3des-rc4"],
)
def test_weak_tls12_suites_are_refused(h, files, conf, ciphers) -> None:
    async def main() -> None:
        server, port = await serve(h, conf)
        proc = await asyncio.create_subprocess_exec(
            "openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_2", "-cipher", f"{ciphers}@SECLEVEL=0",
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await proc.communicate()
        assert proc.returncode != 0, out.decode(errors="replace")[-400:]
        if h.uring:  # the alert that says why (asyncio's SSLProtocol aborts without it)
            assert b"alert handshake failure" in out or b"no cipher" in out, out.decode(errors="replace")[-400:]
        await stop(server)
        await settled(h)

    h.run(main())
    h.take_errors()


def test_tls_ciphers_narrows_what_tls12_accepts(h, files) -> None:
    only_chacha = CoreTLS(str(files.cert), str(files.key), ciphers="ECDHE+CHACHA20")

    async def main() -> None:
        server, port = await serve(h, only_chacha)
        for offered, ok in (("ECDHE+AESGCM", False), ("ECDHE+CHACHA20", True)):
            ctx = client_ctx(files, ssl.TLSVersion.TLSv1_2)
            ctx.set_ciphers(offered)
            try:
                r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
            except (ssl.SSLError, ConnectionError):
                assert not ok, offered
                continue
            assert ok, offered
            assert "CHACHA20" in w.get_extra_info("ssl_object").cipher()[0]
            w.close()
            await w.wait_closed()
        await stop(server)
        await settled(h)

    h.run(main())
    h.take_errors()


def test_sslscan_finds_only_tls12_and_13_with_forward_secret_aead_suites(h, conf) -> None:
    """sslscan (Debian's) across every protocol and suite it knows."""
    import re

    async def main() -> None:
        server, port = await serve(h, conf)
        proc = await asyncio.create_subprocess_exec(
            "sslscan", "--no-colour", f"127.0.0.1:{port}", stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        out = (await proc.communicate())[0].decode(errors="replace")
        for version, state in (("SSLv2", "disabled"), ("SSLv3", "disabled"), ("TLSv1.0", "disabled"),
                               ("TLSv1.1", "disabled"), ("TLSv1.2", "enabled"), ("TLSv1.3", "enabled")):  # fmt: skip
            assert re.search(rf"^{re.escape(version)}\s+{state}$", out, re.M), (version, out)
        suites = re.findall(r"^(?:Preferred|Accepted)\s+(TLSv1\.[23])\s+\d+ bits\s+(\S+)", out, re.M)
        assert suites, out
        for version, suite in suites:
            assert suite.startswith("TLS_") if version == "TLSv1.3" else suite.startswith("ECDHE-"), suite
            assert "GCM" in suite or "CHACHA20" in suite, suite
        if h.uring:
            assert "Session renegotiation not supported" in out, out
        await stop(server)
        await settled(h)

    h.run(main(), timeout=120)
    h.take_errors()
