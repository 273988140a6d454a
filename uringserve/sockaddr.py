"""Decode a kernel `struct sockaddr` into the tuple Python's socket module uses.

The peer address of an accept-direct connection arrives as raw bytes in the
completion (no fd exists to call getpeername() on), so this is done by hand.
"""

from __future__ import annotations

import socket
import struct
from typing import Any


def parse(raw: bytes) -> Any:
    if len(raw) < 2:
        return None
    family = struct.unpack_from("=H", raw)[0]
    if family == socket.AF_INET and len(raw) >= 8:
        port = struct.unpack_from("!H", raw, 2)[0]
        return socket.inet_ntop(socket.AF_INET, raw[4:8]), port
    if family == socket.AF_INET6 and len(raw) >= 28:
        port, flowinfo = struct.unpack_from("!HI", raw, 2)
        scope_id = struct.unpack_from("=I", raw, 24)[0]
        return socket.inet_ntop(socket.AF_INET6, raw[8:24]), port, flowinfo, scope_id
    if family == socket.AF_UNIX:
        path = raw[2:]
        return path.split(b"\0", 1)[0].decode(errors="surrogateescape") if path[:1] != b"\0" else path
    return None


# the accept event carries this many address bytes (struct us_event.addr)
EVENT_ADDR_BYTES = 28


def truncated(raw: bytes) -> bool:
    """A Unix peer path longer than the accept event holds: ask the socket instead."""
    return len(raw) >= EVENT_ADDR_BYTES and struct.unpack_from("=H", raw)[0] == socket.AF_UNIX


def encode(family: int, addr: Any) -> bytes:
    """The kernel `struct sockaddr` for a socket-module address (the inverse of parse)."""
    if family == socket.AF_INET:
        host, port = addr[:2]
        return struct.pack("=H", family) + struct.pack("!H", port) + socket.inet_pton(family, host) + bytes(8)
    if family == socket.AF_INET6:
        host, port = addr[:2]
        flowinfo = addr[2] if len(addr) > 2 else 0
        scope_id = addr[3] if len(addr) > 3 else 0
        return (
            struct.pack("=H", family)
            + struct.pack("!HI", port, flowinfo)
            + socket.inet_pton(family, host)
            + struct.pack("=I", scope_id)
        )
    raise ValueError(f"address family {family} is not supported (AF_INET, AF_INET6)")
