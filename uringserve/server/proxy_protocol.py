"""The PROXY protocol (`--proxy-protocol`), versions 1 and 2, as haproxy
(`send-proxy`, `send-proxy-v2`), nginx (`proxy_protocol on`) and cloud
load balancers (AWS NLB) send it: a header in front of the connection's
first byte saying whose connection the proxy is passing on.

It is protocol-independent, so it sits in the server layer: Server puts a
ProxyHeaderReader in front of each connection's protocol. The reader reads
the header (sans-I/O: parse()), then hands the connection over: the
protocol gets connection_made() with a transport whose `peername` and
`sockname` are the client's and the address it connected to, the bytes
that came after the header, and from then on the transport's own
deliveries (set_protocol), so the protocol pays nothing per read.

Per the specification, a listener that expects the header does not guess:
every connection must begin with it, and one that does not (another
signature, an HTTP request, a header cut, oversized, malformed or too slow)
is closed without a byte of it reaching the protocol, and counted by
reason (`rejected`; the metrics' uringserve_proxy_protocol_rejected_total).
Only peers in --forwarded-allow-ips may send it (gunicorn's
proxy_allow_ips, and the same list as --proxy-headers): anyone who can
reach the listener directly could otherwise claim any address. A
connection from another peer is closed at once ("untrusted").

Kept: the peer the socket has, for LOCAL (a proxy's health check), UNKNOWN
(v1) and the UNSPEC and UNIX families (v2). TLVs (v2) are skipped unread.
A v2 header for another transport (UDP, UNIX datagram) or with a family
byte the specification leaves undefined is malformed. An address with an
IPv6 zone (`fe80::1%eth0`, v1) is malformed; an IPv4-mapped one
(`::ffff:1.2.3.4`) is reported as its IPv4 address (server/trust.py).
TLS: the header comes before the TLS handshake, which asyncio's server
TLS would read first, so --proxy-protocol with TLS is refused: terminate
TLS at the proxy, or pass it through to a server without the header.
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import struct
from dataclasses import dataclass
from typing import Any

from .connection import KIND_USER, Connection
from .trust import TrustedPeers, reported

V1_PREFIX = b"PROXY "
V1_MAX = 107  # the whole v1 line, CRLF included (the specification's bound)
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_MAX = 16 + 4096  # header and addresses/TLVs accepted; a larger one is refused as oversized
_V2_HEAD = struct.Struct("!12sBBH")
_V2_INET = struct.Struct("!4s4sHH")
_V2_INET6 = struct.Struct("!16s16sHH")
# the v2 family/transport bytes a stream listener takes: UNSPEC, TCP over IPv4 and IPv6, UNIX
# stream. The rest (UDP, UNIX datagram, a family without its transport) is no connection of ours
_V2_FAMILIES = frozenset((0x00, 0x11, 0x21, 0x31))
KIND_PROXY_HEADER = KIND_USER  # the reader's one deadline
DRAIN_GRACE = 1.0  # seconds a connection still without its header gets once a drain began

# why a connection was refused: the metric's label values
REASONS = ("signature", "malformed", "oversized", "cut", "timeout", "untrusted")


class ProxyHeaderError(ValueError):
    """A header that cannot be accepted; `reason` is one of REASONS."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ProxyHeader:
    """What a header said. `source`/`dest` are (host, port), or None when
    the header names no address (LOCAL, UNKNOWN, UNSPEC, UNIX): then the
    connection keeps its socket's own."""

    version: int
    local: bool = False
    source: tuple[str, int] | None = None
    dest: tuple[str, int] | None = None


def parse(buf: bytes) -> tuple[ProxyHeader, int] | None:
    """The header at the start of `buf` and its length, or None while
    more bytes are needed; ProxyHeaderError when it cannot be one. The
    signature is checked as soon as its first bytes are in, so a client
    speaking anything else is refused on its first read."""
    if not buf:
        return None
    if buf[0] == 0x50:  # "P"
        return _parse_v1(buf)
    if buf[0] == 0x0D:  # "\r"
        return _parse_v2(buf)
    raise ProxyHeaderError("signature", "the connection does not begin with a PROXY protocol header")


def _parse_v1(buf: bytes) -> tuple[ProxyHeader, int] | None:
    if not buf.startswith(V1_PREFIX[: len(buf)]):
        raise ProxyHeaderError("signature", "the connection does not begin with a PROXY protocol header")
    end = buf.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(buf) >= V1_MAX:
            raise ProxyHeaderError("oversized", f"PROXY v1 line longer than {V1_MAX} bytes")
        if b"\n" in buf:
            raise ProxyHeaderError("malformed", "PROXY v1 line ends without CR LF")
        return None
    line = buf[:end]
    parts = line.split(b" ")
    if len(parts) < 2:
        raise ProxyHeaderError("malformed", "PROXY v1 line without a protocol")
    family = parts[1]
    if family == b"UNKNOWN":  # the rest of the line is to be ignored
        return ProxyHeader(1), end + 2
    if family not in (b"TCP4", b"TCP6") or len(parts) != 6:
        raise ProxyHeaderError("malformed", "PROXY v1 line is not 'PROXY TCP4|TCP6 src dst sport dport'")
    version = 4 if family == b"TCP4" else 6
    if b"%" in parts[2] or b"%" in parts[3]:  # ipaddress takes any bytes as a zone, escapes included
        raise ProxyHeaderError("malformed", "PROXY v1 address with an IPv6 zone")
    try:
        src = ipaddress.ip_address(parts[2].decode("ascii"))
        dst = ipaddress.ip_address(parts[3].decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        raise ProxyHeaderError("malformed", "PROXY v1 address is not an IP address") from None
    if src.version != version or dst.version != version:
        raise ProxyHeaderError("malformed", f"PROXY v1 {family.decode()} with an address of another family")
    sport, dport = _v1_port(parts[4]), _v1_port(parts[5])
    return ProxyHeader(1, source=(reported(src), sport), dest=(reported(dst), dport)), end + 2


def _v1_port(text: bytes) -> int:
    # the specification: 0..65535, no leading zero
    if not text.isdigit() or len(text) > 5 or (len(text) > 1 and text[0] == 0x30) or int(text) > 65535:
        raise ProxyHeaderError("malformed", "PROXY v1 port is not 0..65535")
    return int(text)


def _parse_v2(buf: bytes) -> tuple[ProxyHeader, int] | None:
    if not buf.startswith(V2_SIGNATURE[: len(buf)]):
        raise ProxyHeaderError("signature", "the connection does not begin with a PROXY protocol header")
    if len(buf) < 16:
        return None
    _, ver_cmd, fam, length = _V2_HEAD.unpack_from(buf)
    if ver_cmd >> 4 != 2:
        raise ProxyHeaderError("malformed", f"PROXY v2 header with version {ver_cmd >> 4}")
    command = ver_cmd & 0x0F
    if command > 1:
        raise ProxyHeaderError("malformed", f"PROXY v2 header with command {command}")
    total = 16 + length
    if total > V2_MAX:
        raise ProxyHeaderError("oversized", f"PROXY v2 header of {total} bytes (at most {V2_MAX})")
    if len(buf) < total:
        return None
    if command == 0:  # LOCAL: the proxy's own connection (a health check); addresses ignored
        return ProxyHeader(2, local=True), total
    if fam not in _V2_FAMILIES:
        raise ProxyHeaderError("malformed", f"PROXY v2 header with address family byte {fam:#04x}")
    family = fam >> 4
    if family == 1:
        if length < _V2_INET.size:
            raise ProxyHeaderError("malformed", f"PROXY v2 INET addresses need 12 bytes, the header has {length}")
        s, d, sp, dp = _V2_INET.unpack_from(buf, 16)
        return ProxyHeader(
            2, source=(str(ipaddress.IPv4Address(s)), sp), dest=(str(ipaddress.IPv4Address(d)), dp)
        ), total
    if family == 2:
        if length < _V2_INET6.size:
            raise ProxyHeaderError("malformed", f"PROXY v2 INET6 addresses need 36 bytes, the header has {length}")
        s, d, sp, dp = _V2_INET6.unpack_from(buf, 16)
        return ProxyHeader(
            2, source=(reported(ipaddress.IPv6Address(s)), sp), dest=(reported(ipaddress.IPv6Address(d)), dp)
        ), total
    if family == 3 and length < 216:
        raise ProxyHeaderError("malformed", f"PROXY v2 UNIX addresses need 216 bytes, the header has {length}")
    return ProxyHeader(2), total  # UNSPEC, UNIX: the socket's own peer is kept


class ProxyProtocol:
    """`--proxy-protocol` for one server: who may send the header, how long
    a connection has to send it, and what was refused (by reason)."""

    def __init__(self, trusted: TrustedPeers | str = "127.0.0.1", timeout: float = 30.0) -> None:
        if not timeout > 0:
            raise ValueError(f"the PROXY header timeout must be a positive number of seconds, got {timeout}")
        self.trusted = trusted if isinstance(trusted, TrustedPeers) else TrustedPeers(trusted)
        self.timeout = timeout
        self.rejected: collections.Counter[str] = collections.Counter()
        self.accepted = 0

    def reader(self, protocol: Any, listener_name: Any) -> ProxyHeaderReader:
        return ProxyHeaderReader(protocol, self, listener_name)


class PeerTransport:
    """The connection's transport with the header's addresses as its
    `peername` and `sockname`. Its methods are the transport's own bound
    methods, looked up once, so a write costs what it cost before."""

    _METHODS = (
        "write",
        "writelines",
        "write_eof",
        "can_write_eof",
        "close",
        "abort",
        "is_closing",
        "pause_reading",
        "resume_reading",
        "is_reading",
        "get_write_buffer_size",
        "get_write_buffer_limits",
        "set_write_buffer_limits",
        "get_protocol",
        "set_protocol",
        "write_file",
    )

    def __init__(self, transport: Any, header: ProxyHeader) -> None:
        self.transport = transport
        self._extra: dict[str, Any] = {}
        if header.source is not None:
            self._extra["peername"] = header.source
        if header.dest is not None:
            self._extra["sockname"] = header.dest
        for name in self._METHODS:
            method = getattr(transport, name, None)
            if method is not None:
                setattr(self, name, method)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name in self._extra:
            return self._extra[name]
        return self.transport.get_extra_info(name, default)

    def __getattr__(self, name: str) -> Any:  # anything else (asyncio's sendfile reads private ones): the transport's
        return getattr(self.transport, name)

    def __repr__(self) -> str:
        return f"<PeerTransport {self._extra} over {self.transport!r}>"


class ProxyHeaderReader(Connection, asyncio.Protocol):
    """A connection's protocol until its PROXY header is read: then the
    connection is handed to `protocol` (see the module). In the server's
    registry meanwhile (the registry then holds the protocol in its place,
    counted once), under the header deadline."""

    def __init__(self, protocol: Any, settings: ProxyProtocol, listener_name: Any) -> None:
        self.protocol = protocol
        self.settings = settings
        self.listener_name = listener_name
        self.buf = b""
        self.done = False  # handed over, or refused
        self.draining = False

    def connection_made(self, transport: Any) -> None:
        Connection.connection_made(self, transport)
        if not self.settings.trusted.trusts_peer(transport.get_extra_info("peername"), self.listener_name):
            self._refuse("untrusted")
            return
        self.set_deadline(KIND_PROXY_HEADER, self.settings.timeout)

    def data_received(self, data: bytes) -> None:
        if self.done:
            return
        buf = self.buf + data if self.buf else data
        try:
            found = parse(buf)
        except ProxyHeaderError as exc:
            self._refuse(exc.reason)
            return
        if found is None:
            self.buf = buf
            return
        header, used = found
        self._hand_over(header, buf[used:])

    def eof_received(self) -> bool | None:
        if not self.done:
            self._refuse("cut")
        return None

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.done:  # the peer went (or reset) before its header was whole
            self.done = True
            self.settings.rejected["cut"] += 1
        Connection.connection_lost(self, exc)

    def timed_out(self, kind: int) -> None:
        if not self.done:
            self._refuse("timeout")

    def shutdown(self) -> None:
        # a connection just made: its header (and first request) are likely on
        # their way; the protocol gets the drain as soon as it has the connection.
        # One that sends nothing is not waited for long (HTTP's grace for a new connection)
        self.draining = True
        if not self.done:
            self.set_deadline(KIND_PROXY_HEADER, min(self.settings.timeout, DRAIN_GRACE))

    def requests_served(self) -> int:
        return 0

    def _refuse(self, reason: str) -> None:
        self.done = True
        self.settings.rejected[reason] += 1
        self.stop_timer()
        if self.transport is not None:
            self.transport.abort()  # nothing was answered; nothing of it reaches the protocol

    def _hand_over(self, header: ProxyHeader, rest: bytes) -> None:
        self.done = True
        self.settings.accepted += 1
        self.stop_timer()
        transport = self.transport
        protocol = self.protocol
        registry = self.registry
        if registry is not None:
            registry.replace(self, protocol)
        transport.set_protocol(protocol)
        seen = PeerTransport(transport, header) if header.source is not None else transport
        protocol.connection_made(seen)
        if self.draining and hasattr(protocol, "shutdown"):
            protocol.shutdown()  # before its first bytes: it answers them as a draining server does
        if rest and not transport.is_closing():
            if isinstance(protocol, asyncio.BufferedProtocol):
                _feed_buffered(protocol, rest)
            else:
                protocol.data_received(rest)


def _feed_buffered(protocol: asyncio.BufferedProtocol, data: bytes) -> None:
    view = memoryview(data)
    while view:
        buf = memoryview(protocol.get_buffer(len(view))).cast("B")
        n = min(len(buf), len(view))
        buf[:n] = view[:n]
        protocol.buffer_updated(n)
        view = view[n:]


__all__ = ["ProxyProtocol", "ProxyHeader", "ProxyHeaderError", "ProxyHeaderReader", "PeerTransport", "parse", "REASONS"]
