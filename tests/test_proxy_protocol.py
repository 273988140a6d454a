"""--proxy-protocol: the v1/v2 parser (sans-I/O), and the server layer's
reader in front of HTTP and of any protocol, on both loops: the real peer
reaches the app and the access log; a header split over reads is put
together; a missing, cut, oversized, malformed, slow or untrusted one
closes the connection without a byte reaching the protocol, counted by
reason. Against real haproxy and nginx: tests/test_behind_proxies.py."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import struct
import sys
from typing import Any

import pytest
from conftest import Proc, until
from hypothesis import given, settings
from hypothesis import strategies as st

from uringserve.http import HTTPServer
from uringserve.http.config import HTTPConfig
from uringserve.http.messages import Response
from uringserve.server import Server
from uringserve.server.proxy_protocol import (
    V1_MAX,
    V2_MAX,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyHeaderError,
    ProxyProtocol,
    parse,
)


def v2(command: int, fam: int, payload: bytes, version: int = 2) -> bytes:
    return V2_SIGNATURE + bytes([(version << 4) | command, fam]) + struct.pack("!H", len(payload)) + payload


def inet(src: str, dst: str, sport: int, dport: int) -> bytes:
    return socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)


def inet6(src: str, dst: str, sport: int, dport: int) -> bytes:
    return (
        socket.inet_pton(socket.AF_INET6, src)
        + socket.inet_pton(socket.AF_INET6, dst)
        + struct.pack("!HH", sport, dport)
    )


V1_TCP4 = b"PROXY TCP4 203.0.113.7 192.0.2.1 4444 80\r\n"
V2_TCP4 = v2(1, 0x11, inet("203.0.113.7", "192.0.2.1", 4444, 80))
TLVS = b"\x01\x00\x02h2" + b"\x04\x00\x03abc" + b"\xee\x00\x00"  # ALPN, authority-like, an unknown empty one


# -- the parser ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data, header",
    [
        (V1_TCP4, ProxyHeader(1, source=("203.0.113.7", 4444), dest=("192.0.2.1", 80))),
        (
            b"PROXY TCP6 2001:db8::7 2001:db8::1 65535 0\r\n",
            ProxyHeader(1, source=("2001:db8::7", 65535), dest=("2001:db8::1", 0)),
        ),
        (b"PROXY UNKNOWN\r\n", ProxyHeader(1)),
        (b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", ProxyHeader(1)),
        (V2_TCP4, ProxyHeader(2, source=("203.0.113.7", 4444), dest=("192.0.2.1", 80))),
        (
            v2(1, 0x21, inet6("2001:db8::7", "::1", 5, 443) + TLVS),
            ProxyHeader(2, source=("2001:db8::7", 5), dest=("::1", 443)),
        ),
        (
            v2(1, 0x11, inet("10.0.0.1", "10.0.0.2", 1, 2) + TLVS),
            ProxyHeader(2, source=("10.0.0.1", 1), dest=("10.0.0.2", 2)),
        ),
        (v2(0, 0x00, b""), ProxyHeader(2, local=True)),  # LOCAL: a health check; the peer stays
        (v2(0, 0x11, inet("1.1.1.1", "2.2.2.2", 1, 2)), ProxyHeader(2, local=True)),
        (v2(1, 0x00, b""), ProxyHeader(2)),  # UNSPEC
        (v2(1, 0x31, b"\0" * 216), ProxyHeader(2)),  # UNIX: the socket's own peer is kept
        # an IPv4 client of a dual-stack proxy: its IPv4 address (Python 3.11 prints ::ffff:102:304)
        (
            b"PROXY TCP6 ::ffff:1.2.3.4 ::ffff:192.0.2.1 1 2\r\n",
            ProxyHeader(1, source=("1.2.3.4", 1), dest=("192.0.2.1", 2)),
        ),
        (
            v2(1, 0x21, inet6("::ffff:1.2.3.4", "::1", 5, 443)),
            ProxyHeader(2, source=("1.2.3.4", 5), dest=("::1", 443)),
        ),
    ],
)
def test_headers_parse_and_whatever_follows_is_left(data: bytes, header: ProxyHeader) -> None:
    assert parse(data + b"GET / HTTP/1.1\r\n") == (header, len(data))
    # every cut short of the whole header asks for more, never guesses
    for i in range(len(data)):
        assert parse(data[:i]) is None, i


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"GET / HTTP/1.1\r\n", "signature"),
        (b"PROXI", "signature"),
        (b"\r\n\r\n\x00\r\nQUIX", "signature"),
        (b"\x16\x03\x01", "signature"),  # a TLS ClientHello
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "malformed"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "malformed"),
        (b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "malformed"),
        (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "malformed"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "malformed"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "malformed"),
        (b"PROXY TCP4 1.2.3.999 5.6.7.8 1 2\r\n", "malformed"),
        (b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", "malformed"),
        (b"PROXY\r\n", "signature"),
        (b"PROXY " + b"1" * 120, "oversized"),
        (v2(1, 0x11, inet("1.1.1.1", "2.2.2.2", 1, 2), version=1), "malformed"),
        (v2(2, 0x11, inet("1.1.1.1", "2.2.2.2", 1, 2)), "malformed"),
        (v2(1, 0x11, b"\0" * 11), "malformed"),  # a wrong length for its family
        (v2(1, 0x21, b"\0" * 35), "malformed"),
        (v2(1, 0x31, b"\0" * 100), "malformed"),
        (v2(1, 0x41, b"\0" * 12), "malformed"),
        # an IPv6 zone: ipaddress would keep any bytes after "%", escapes for the access log too
        (b"PROXY TCP6 fe80::1%\x1b[31m ::1 1 2\r\n", "malformed"),
        (b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "malformed"),
        (b"PROXY TCP6 ::1 fe80::1%1 1 2\r\n", "malformed"),
        (V2_SIGNATURE + b"\x21\x11\xff\xff", "oversized"),  # refused on its length, before 64 KiB arrive
    ],
)
def test_bad_headers_are_refused_by_reason(data: bytes, reason: str) -> None:
    with pytest.raises(ProxyHeaderError) as info:
        parse(data)
    assert info.value.reason == reason


@pytest.mark.parametrize(
    "data, says",
    [
        (b"GET / HTTP/1.1\r\n", "the connection does not begin with a PROXY protocol header"),
        (b"PROXY " + b"1" * 120, f"PROXY v1 line longer than {V1_MAX} bytes"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "PROXY v1 port is not 0..65535"),
        (V2_SIGNATURE + b"\x21\x11\xff\xff", f"PROXY v2 header of {16 + 0xFFFF} bytes (at most {V2_MAX})"),
        (v2(1, 0x11, b"\0" * 11), "PROXY v2 INET addresses need 12 bytes, the header has 11"),
    ],
)
def test_a_refusal_says_what_was_wrong(data: bytes, says: str) -> None:
    """parse() is the sans-I/O reader's public face: its error names the
    fault in words, beside the reason the metrics count."""
    with pytest.raises(ProxyHeaderError) as info:
        parse(data)
    assert str(info.value) == says


# the family/transport bytes the specification defines for a stream: UNSPEC, TCP4, TCP6, UNIX stream
_STREAM_FAMILIES = {0x00, 0x11, 0x21, 0x31}


@pytest.mark.parametrize("fam", range(256), ids=lambda f: f"{f:#04x}")
def test_v2_takes_only_the_stream_families(fam: int) -> None:
    """UDP (0x12, 0x22), UNIX datagram (0x32), a family without its
    transport (0x10, 0x20, 0x30) or a transport without its family (0x01):
    no connection of ours, refused as malformed; the address block is long
    enough for any family, so only the byte decides."""
    data = v2(1, fam, b"\0" * 216)
    if fam in _STREAM_FAMILIES:
        zero = {0x11: ("0.0.0.0", 0), 0x21: ("::", 0)}.get(fam)  # UNSPEC, UNIX: no address
        assert parse(data) == (ProxyHeader(2, source=zero, dest=zero), len(data))
    else:
        with pytest.raises(ProxyHeaderError) as info:
            parse(data)
        assert info.value.reason == "malformed"
    assert parse(v2(0, fam, b"\0" * 216)) == (ProxyHeader(2, local=True), len(data))  # LOCAL: the byte is ignored


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300) | st.builds(lambda tail: V2_SIGNATURE + tail, st.binary(max_size=80)))
def test_arbitrary_bytes_parse_or_are_refused(data: bytes) -> None:
    try:
        found = parse(data)
    except ProxyHeaderError as exc:
        assert exc.reason in ("signature", "malformed", "oversized")
        return
    if found is not None:
        header, used = found
        assert 0 < used <= len(data)


# -- on a server, both loops ----------------------------------------------------------------


def app(request: Any) -> Response:
    return Response(json.dumps([request.client, request.scheme]))


def exchange_raw(port: int, chunks: list[bytes], close: bool = False) -> bytes:
    """Send each chunk in its own send (TCP_NODELAY), then read to EOF."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for c in chunks:
            s.sendall(c)
        if close:
            s.shutdown(socket.SHUT_WR)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            out += chunk
        return out


def serve(h: Any, server: Server, client: Any, settings: ProxyProtocol) -> Any:
    server.proxy_protocol = settings

    async def main() -> Any:
        await server.start("127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            return await asyncio.to_thread(client, port)
        finally:
            await server.shutdown(timeout=2)

    return h.run(main(), timeout=60)


REQ = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"


def body(raw: bytes) -> Any:
    assert raw.startswith(b"HTTP/1.1 200 "), raw
    return json.loads(raw.partition(b"\r\n\r\n")[2])


@pytest.mark.parametrize("header", [V1_TCP4, V2_TCP4, v2(1, 0x11, inet("203.0.113.7", "192.0.2.1", 4444, 80) + TLVS)])
@pytest.mark.parametrize("split", ["whole", "bytewise"])
def test_the_app_sees_the_client_the_header_names(h, header: bytes, split: str) -> None:
    pp = ProxyProtocol("127.0.0.1")
    data = header + REQ
    chunks = (
        [data] if split == "whole" else [data[i : i + 1] for i in range(len(header) + 3)] + [data[len(header) + 3 :]]
    )
    server = HTTPServer(app)
    raw = serve(h, server, lambda port: exchange_raw(port, chunks), pp)
    assert body(raw) == [["203.0.113.7", 4444], "http"]
    assert pp.accepted == 1 and not pp.rejected
    # the reader handed its place in the registry to the protocol: one connection, counted once, gone
    assert server.connections.counts() == {"open": 0, "accepted": 1, "closed": 1}
    assert server.aborted == 0


def test_local_and_unknown_keep_the_socket_peer(h) -> None:
    pp = ProxyProtocol("127.0.0.1")

    def client(port: int) -> list[Any]:
        return [body(exchange_raw(port, [hdr + REQ])) for hdr in (v2(0, 0, b""), b"PROXY UNKNOWN\r\n")]

    for got in serve(h, HTTPServer(app), client, pp):
        assert got[0][0] == "127.0.0.1" and got[0][1] != 4444
    assert pp.accepted == 2


def test_the_access_log_names_the_client_the_header_names(h, caplog) -> None:
    caplog.set_level(logging.INFO, logger="uringserve.access")
    serve(
        h,
        HTTPServer(app, config=HTTPConfig(access_log=True)),
        lambda p: exchange_raw(p, [V1_TCP4 + REQ]),
        ProxyProtocol(),
    )
    lines = [r.getMessage() for r in caplog.records if r.name == "uringserve.access"]
    assert len(lines) == 1 and lines[0].startswith("203.0.113.7 - - [") and '"GET / HTTP/1.1" 200' in lines[0]


@pytest.mark.parametrize(
    "chunks, close, reason",
    [
        ([REQ], False, "signature"),  # plain HTTP on a PROXY listener: never parsed as HTTP
        ([b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n" + REQ], False, "malformed"),
        ([b"PROXY TCP4 ", b"1.2.3.4 "], True, "cut"),  # the client ends mid-header
        ([V2_TCP4[:20]], True, "cut"),
        ([b"PROXY " + b"9" * 200], False, "oversized"),
        ([V2_SIGNATURE + b"\x21\x11\x00\x05" + b"\0" * 5 + REQ], False, "malformed"),  # a wrong length
        ([v2(1, 0x12, inet("203.0.113.7", "192.0.2.1", 4444, 80)) + REQ], False, "malformed"),  # UDP over IPv4
    ],
)
def test_a_bad_header_closes_the_connection_unanswered_and_is_counted(h, chunks, close, reason) -> None:
    pp = ProxyProtocol("127.0.0.1")
    server = HTTPServer(app)
    raw = serve(h, server, lambda port: exchange_raw(port, chunks, close=close), pp)
    assert raw == b""
    assert pp.rejected == {reason: 1} and pp.accepted == 0
    assert server.connections.counts() == {"open": 0, "accepted": 1, "closed": 1}


@pytest.mark.parametrize(
    "headers_from, honoured",
    [
        # the PROXY header names 203.0.113.7, whom nothing trusts: the headers still come from the
        # proxy at 127.0.0.1, a trusted peer
        ("127.0.0.1", True),
        # only the client the PROXY header names is in the headers' list, not the socket's peer
        # that sent the headers (possible only with two lists; the command has one, see below)
        ("203.0.113.7", False),
    ],
)
def test_proxy_headers_are_trusted_by_the_socket_peer_not_the_proxy_header_client(
    h, headers_from: str, honoured: bool
) -> None:
    """--proxy-protocol with --proxy-headers: who sent the headers is the
    socket's peer (the transport under the PeerTransport), as gunicorn
    decides it. With the command's one list (--forwarded-allow-ips for
    both) a PROXY header is only read from a trusted peer (an untrusted one
    is closed before it sends: the next test), so that peer is always
    trusted for the headers too."""
    from uringserve.http.forwarded import Forwarding

    pp = ProxyProtocol("127.0.0.1")
    head = b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-Proto: https\r\nConnection: close\r\n\r\n"
    server = HTTPServer(app, forwarding=Forwarding(headers_from))
    raw = serve(h, server, lambda port: exchange_raw(port, [V1_TCP4 + head]), pp)
    assert body(raw) == [["203.0.113.7", 4444], "https" if honoured else "http"]
    assert pp.accepted == 1


def test_an_untrusted_peer_is_closed_before_it_sends(h) -> None:
    pp = ProxyProtocol("10.0.0.0/8")
    assert serve(h, HTTPServer(app), lambda port: exchange_raw(port, [V1_TCP4 + REQ]), pp) == b""
    assert pp.rejected == {"untrusted": 1}


def test_a_header_that_does_not_come_in_time_closes_the_connection(h) -> None:
    pp = ProxyProtocol("127.0.0.1", timeout=0.3)
    # the client sends half a header and waits: the server's deadline, not the client, ends it
    assert serve(h, HTTPServer(app), lambda port: exchange_raw(port, [b"PROXY TCP4 1.2"]), pp) == b""
    assert pp.rejected == {"timeout": 1}


def test_any_protocol_gets_the_real_peer_through_the_server_layer(h) -> None:
    class Peer(asyncio.Protocol):
        """Echoes, after saying whose connection it has: a protocol that knows nothing of PROXY."""

        def connection_made(self, transport: Any) -> None:
            self.t = transport
            transport.write(
                repr((transport.get_extra_info("peername"), transport.get_extra_info("sockname"))).encode() + b"\n"
            )

        def data_received(self, data: bytes) -> None:
            self.t.write(data)

        def eof_received(self) -> None:
            self.t.close()

    raw = serve(
        h, Server(Peer), lambda port: exchange_raw(port, [V1_TCP4 + b"hello", b" world"], close=True), ProxyProtocol()
    )
    assert raw == b"(('203.0.113.7', 4444), ('192.0.2.1', 80))\nhello world"


def test_a_drain_reaches_the_protocol_a_header_is_handed_to(h) -> None:
    """A connection still sending its header when the server drains is not
    cut: the protocol gets the drain once it has the connection (HTTP then
    answers the first request with Connection: close)."""
    pp = ProxyProtocol("127.0.0.1")
    server = HTTPServer(app)
    server.proxy_protocol = pp

    async def main() -> bytes:
        await server.start("127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(V1_TCP4[:10])
        await writer.drain()
        assert await until(lambda: len(server.connections) == 1)
        stopping = asyncio.ensure_future(server.shutdown(timeout=10))
        await asyncio.sleep(0)
        writer.write(V1_TCP4[10:] + b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        data = await reader.read()
        writer.close()
        await stopping
        return data

    raw = h.run(main(), timeout=30)
    assert b"Connection: close" in raw and body(raw) == [["203.0.113.7", 4444], "http"]


def test_metrics_count_refusals_by_reason(h) -> None:
    from prometheus_client import CollectorRegistry

    from uringserve.metrics import Metrics

    registry = CollectorRegistry()
    metrics = Metrics(registry)
    pp = ProxyProtocol("127.0.0.1")
    server = HTTPServer(app)

    def client(port: int) -> None:
        exchange_raw(port, [REQ])
        exchange_raw(port, [REQ])
        exchange_raw(port, [b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n"])

    serve(h, server, client, pp)
    metrics.sample(server, h.loop)
    metrics.sample(server, h.loop)  # a second look adds nothing new
    value = registry.get_sample_value
    assert value("uringserve_proxy_protocol_rejected_total", {"reason": "signature"}) == 2
    assert value("uringserve_proxy_protocol_rejected_total", {"reason": "malformed"}) == 1


# -- the command -----------------------------------------------------------------------------


@pytest.mark.parametrize("loop", ["uring", "asyncio"])
def test_a_static_file_goes_out_whole_through_the_peer_transport(loop: str, tmp_path) -> None:
    """Files take the transport's own paths (the ring's file sends; asyncio's
    sendfile, which reaches into the transport) through PeerTransport."""
    import hashlib
    import os

    blob = os.urandom(3_000_000)
    (tmp_path / "big.bin").write_bytes(blob)
    env = dict(os.environ, URINGSERVE_STATIC=str(tmp_path))
    args = [sys.executable, "-m", "uringserve", "run", "apps.http:app", "--port", "0", "--loop", loop]
    srv = Proc([*args, "--proxy-protocol"], env=env)
    try:
        raw = exchange_raw(
            srv.port, [V1_TCP4 + b"GET /static/big.bin HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"]
        )
        head, _, got = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ") and hashlib.sha256(got).digest() == hashlib.sha256(blob).digest()
    finally:
        assert srv.stop() == 0


@pytest.mark.parametrize("loop", ["uring", "asyncio"])
def test_uringserve_run_with_proxy_protocol(loop: str) -> None:
    srv = Proc(
        [
            sys.executable,
            "-m",
            "uringserve",
            "run",
            "apps.http:app",
            "--port",
            "0",
            "--loop",
            loop,
            "--proxy-protocol",
            "--access-log",
        ]
    )
    try:
        raw = exchange_raw(srv.port, [V2_TCP4 + b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"])
        assert raw.startswith(b"HTTP/1.1 200 ")
        logged = srv.wait_line(lambda line: "uringserve.access: 203.0.113.7 - - [" in line, 20)
        assert '"GET / HTTP/1.1" 200' in logged
        assert exchange_raw(srv.port, [b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"]) == b""
    finally:
        srv.stop()


def test_proxy_protocol_with_tls_is_refused_in_one_line(tls_files) -> None:
    import subprocess

    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "uringserve",
            "run",
            "apps.http:app",
            "--port",
            "0",
            "--proxy-protocol",
            "--tls-cert",
            str(tls_files.cert_and_key),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "--proxy-protocol with --tls-cert is not supported" in lines[0], out.stderr


def test_uringserve_echo_with_proxy_protocol() -> None:
    """The reader is the server layer's: the echo demo takes the header too."""
    srv = Proc([sys.executable, "-m", "uringserve", "echo", "--port", "0", "--proxy-protocol"])
    try:
        assert exchange_raw(srv.port, [V1_TCP4 + b"ping", b" pong"], close=True) == b"ping pong"
        assert exchange_raw(srv.port, [b"ping"], close=True) == b""  # no header: nothing echoed
    finally:
        srv.stop()


def test_a_draining_server_does_not_wait_long_for_a_header_that_never_comes(h) -> None:
    pp = ProxyProtocol("127.0.0.1")  # 30 s to send a header while serving
    server = HTTPServer(app)
    server.proxy_protocol = pp

    async def main() -> float:
        await server.start("127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"PROXY TCP4")
        await writer.drain()
        assert await until(lambda: len(server.connections) == 1)
        t0 = asyncio.get_running_loop().time()
        await server.shutdown(timeout=20)
        took = asyncio.get_running_loop().time() - t0
        assert await reader.read() == b""
        writer.close()
        return took

    took = h.run(main(), timeout=60)
    assert took < 15 and server.aborted == 0  # ended by the drain's grace (1 s), not the 20 s timeout
    assert pp.rejected == {"timeout": 1}
