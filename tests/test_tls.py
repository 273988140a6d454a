"""TLS through asyncio's own SSLProtocol over the loop's transports, on both
loops: on UringEventLoop both ends run on io_uring transports."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import ssl

import pytest
import trustme


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_ctx(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(ctx)
    return ctx


@pytest.fixture(scope="module")
def client_ctx(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(ctx)
    return ctx


async def echo_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


async def tls_server(ctx: ssl.SSLContext, handler=echo_handler, **kw) -> tuple[asyncio.AbstractServer, int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=ctx, **kw)
    return server, server.sockets[0].getsockname()[1]


async def stop(server: asyncio.AbstractServer) -> None:
    server.close()
    await server.wait_closed()


def test_tls_echo_16mib_both_ways(h, server_ctx, client_ctx) -> None:
    payload = os.urandom(16 << 20)

    async def main() -> None:
        server, port = await tls_server(server_ctx)
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx, server_hostname="localhost")
        assert w.get_extra_info("ssl_object").version() in ("TLSv1.2", "TLSv1.3")
        if h.uring:  # both ends on io_uring: the client under SSLProtocol, the server accepted by the ring
            assert type(w.transport._ssl_protocol._transport).__name__ == "UringTransport"
            assert h.loop.ring_stats()["accepts"] == 1

        async def send() -> None:
            for i in range(0, len(payload), 1 << 20):
                w.write(payload[i : i + (1 << 20)])
                await w.drain()

        sender = asyncio.ensure_future(send())
        got = await r.readexactly(len(payload))
        await sender
        assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
        w.close()
        await w.wait_closed()
        await stop(server)

    h.run(main(), timeout=120)
    assert not h.errors


def test_tls_close_notify_gives_clean_eof(h, server_ctx, client_ctx) -> None:
    async def handler(reader, writer) -> None:
        writer.write(b"bye")
        await writer.drain()
        writer.close()  # sends close_notify
        await writer.wait_closed()

    async def main() -> None:
        server, port = await tls_server(server_ctx, handler)
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx, server_hostname="localhost")
        assert await r.read() == b"bye"  # a clean EOF, not an SSLError
        assert r.at_eof()
        w.close()
        await w.wait_closed()
        await stop(server)

    h.run(main())


def test_tls_wrong_hostname_is_a_verification_error(h, server_ctx, client_ctx) -> None:
    async def main() -> None:
        server, port = await tls_server(server_ctx)
        with pytest.raises(ssl.SSLCertVerificationError):
            await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx, server_hostname="example.org")
        # the server keeps serving
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx, server_hostname="localhost")
        w.write(b"still here")
        assert await r.readexactly(10) == b"still here"
        w.close()
        await w.wait_closed()
        await stop(server)

    h.run(main())


def test_tls_untrusted_server_is_a_verification_error(h, server_ctx) -> None:
    async def main() -> None:
        server, port = await tls_server(server_ctx)
        with pytest.raises(ssl.SSLCertVerificationError):
            await asyncio.open_connection(
                "127.0.0.1", port, ssl=ssl.create_default_context(), server_hostname="localhost"
            )
        await stop(server)

    h.run(main())


def test_tls_sni_reaches_the_server(h, ca, client_ctx) -> None:
    seen: list = []
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "alt.example").configure_cert(ctx)
    ctx.sni_callback = lambda sslobj, name, _ctx: seen.append(name)

    async def main() -> None:
        server, port = await tls_server(ctx)
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx, server_hostname="alt.example")
        w.write(b"x")
        assert await r.readexactly(1) == b"x"
        w.close()
        await w.wait_closed()
        await stop(server)

    h.run(main())
    assert seen == ["alt.example"]


def test_tls_client_certificates(h, ca, server_ctx, client_ctx) -> None:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(ctx)
    ca.configure_trust(ctx)
    ctx.verify_mode = ssl.CERT_REQUIRED
    peer: list = []

    async def handler(reader, writer) -> None:
        peer.append(writer.get_extra_info("peercert"))
        await echo_handler(reader, writer)

    with_cert = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(with_cert)
    ca.issue_cert("client@example.org").configure_cert(with_cert)

    async def main() -> None:
        server, port = await tls_server(ctx, handler)
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=with_cert, server_hostname="localhost")
        w.write(b"authenticated")
        assert await r.readexactly(13) == b"authenticated"
        w.close()
        await w.wait_closed()
        # without a certificate the server refuses (TLS 1.3 reports it on first read)
        with pytest.raises((ssl.SSLError, ConnectionResetError, asyncio.IncompleteReadError)):
            r, w = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx, server_hostname="localhost")
            w.write(b"anonymous")
            await r.readexactly(9)
        w.close()
        await stop(server)

    h.run(main())
    assert peer and peer[0]["subjectAltName"] == (("email", "client@example.org"),)


def test_tls_garbage_instead_of_client_hello(h, server_ctx, client_ctx) -> None:
    async def main() -> None:
        server, port = await tls_server(server_ctx)
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + os.urandom(2000))
        try:
            assert await asyncio.wait_for(r.read(), 10) == b""  # closed, nothing answered
        except ConnectionResetError:
            pass
        w.close()
        try:
            await w.wait_closed()
        except ConnectionResetError:
            pass
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx, server_hostname="localhost")
        w.write(b"ok")
        assert await r.readexactly(2) == b"ok"
        w.close()
        await w.wait_closed()
        await stop(server)

    h.run(main())


def test_tls_handshake_timeout_closes_a_silent_peer(h, server_ctx) -> None:
    async def main() -> float:
        server, port = await tls_server(server_ctx, ssl_handshake_timeout=0.3)
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setblocking(False)
        t0 = h.loop.time()
        try:
            data = await asyncio.wait_for(h.loop.sock_recv(sock, 100), 10)
        except ConnectionResetError:
            data = b""
        took = h.loop.time() - t0
        assert data == b""
        sock.close()
        await stop(server)
        return took

    assert h.run(main()) < 5


def test_start_tls_upgrades_a_plain_connection(h, server_ctx, client_ctx) -> None:
    async def handler(reader, writer) -> None:
        assert await reader.readline() == b"STARTTLS\n"
        writer.write(b"GO\n")
        await writer.drain()
        await writer.start_tls(server_ctx)
        line = await reader.readline()
        writer.write(b"secure " + line)
        await writer.drain()
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"STARTTLS\n")
        assert await r.readline() == b"GO\n"
        await w.start_tls(client_ctx, server_hostname="localhost")
        w.write(b"hello\n")
        assert await r.readline() == b"secure hello\n"
        w.close()
        await w.wait_closed()
        await stop(server)

    h.run(main())
