"""The one place for the HTTP/1.1 upgrade rules of RFC 6455 4.2: is a request
an upgrade, is it a valid one (and what did it offer), the accept hash, and
the whole 101 / 400 / 426 answers. The permessage-deflate negotiation is in
deflate.negotiate; the connection after the 101 is not here."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 1.3
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_REASONS = {400: b"Bad Request", 426: b"Upgrade Required"}

Headers = Iterable[tuple[bytes, bytes]]


class HandshakeError(Exception):
    """A refused upgrade: answer `status` (400 or 426) with `message` (names
    what was wrong) and `headers` (e.g. Sec-WebSocket-Version: 13 for 426)."""

    def __init__(self, status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        super().__init__(f"{status} {message}")
        self.status = status
        self.message = message
        self.headers = headers if headers is not None else []


@dataclass
class Handshake:
    """What a valid upgrade request offered."""

    key: bytes  # Sec-WebSocket-Key as sent (24 base64 characters)
    subprotocols: list[str] = field(default_factory=list)  # in the client's order of preference
    extensions: str | None = None  # the raw Sec-WebSocket-Extensions value(s), joined with ", "


def _values(headers: Headers, name: bytes) -> list[bytes]:
    return [v.strip(b" \t") for k, v in headers if k.lower() == name]


def _tokens(values: list[bytes]) -> list[bytes]:
    """The elements of comma-separated list headers, lowercased, empty ones dropped."""
    return [t for v in values for t in (e.strip(b" \t").lower() for e in v.split(b",")) if t]


def is_upgrade(method: str, headers: Headers) -> bool:
    """Does the request ask for a WebSocket (Upgrade has the token websocket
    and Connection the token upgrade, RFC 7230 6.7: an Upgrade not named in
    Connection is ignored)? The method is not looked at: check() refuses a
    non-GET upgrade with 400 naming it, rather than HTTP serving it."""
    headers = list(headers)
    return b"websocket" in _tokens(_values(headers, b"upgrade")) and b"upgrade" in _tokens(
        _values(headers, b"connection")
    )


def check(method: str, version: str, headers: Sequence[tuple[bytes, bytes]]) -> Handshake:
    """Validate an upgrade request (RFC 6455 4.2.1); raise HandshakeError:
    426 with Sec-WebSocket-Version: 13 for a missing or other version, 400
    naming what is wrong for anything else."""
    if method != "GET":
        raise HandshakeError(400, f"a WebSocket upgrade must be a GET request, not {method}")
    if version not in ("1.1", "HTTP/1.1"):
        raise HandshakeError(400, f"a WebSocket upgrade needs HTTP/1.1, not HTTP/{version.removeprefix('HTTP/')}")
    if b"websocket" not in _tokens(_values(headers, b"upgrade")):
        raise HandshakeError(400, "the Upgrade header must contain websocket")
    if b"upgrade" not in _tokens(_values(headers, b"connection")):
        raise HandshakeError(400, "the Connection header must contain upgrade")
    versions = _values(headers, b"sec-websocket-version")
    if versions != [b"13"]:
        what = "missing" if not versions else repr(b", ".join(versions).decode("latin-1"))
        raise HandshakeError(
            426, f"Sec-WebSocket-Version {what}: this server speaks 13", [(b"Sec-WebSocket-Version", b"13")]
        )
    keys = _values(headers, b"sec-websocket-key")
    if not keys:
        raise HandshakeError(400, "Sec-WebSocket-Key missing")
    if len(keys) > 1:
        raise HandshakeError(400, "Sec-WebSocket-Key sent more than once")
    key = keys[0]
    try:
        raw = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 16:
        raise HandshakeError(400, "Sec-WebSocket-Key must be the base64 encoding of 16 bytes")
    subprotocols = []
    for v in _values(headers, b"sec-websocket-protocol"):
        for element in v.split(b","):
            token = element.strip(b" \t")
            if not token:
                continue
            if not _TOKEN.fullmatch(token):
                raise HandshakeError(400, f"Sec-WebSocket-Protocol: {token.decode('latin-1')!r} is not a token")
            subprotocols.append(token.decode("ascii"))
    extensions = _values(headers, b"sec-websocket-extensions")
    return Handshake(
        key=key,
        subprotocols=subprotocols,
        extensions=b", ".join(extensions).decode("latin-1") if extensions else None,
    )


def select_subprotocol(offered: Sequence[str], supported: Sequence[str]) -> str | None:
    """The first subprotocol the client offered that the server supports
    (the client lists them in its order of preference), or None."""
    for p in offered:
        if p in supported:
            return p
    return None


def accept_value(key: bytes) -> bytes:
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key (RFC 6455 4.2.2)."""
    return base64.b64encode(hashlib.sha1(key + _GUID).digest())


def _field(name: bytes, value: bytes) -> bytes:
    if not _TOKEN.fullmatch(name) or any(c in value for c in b"\r\n\0"):
        raise ValueError(f"invalid response header {name!r}: {value!r}")
    return name + b": " + value + b"\r\n"


def response_101(
    key: bytes,
    subprotocol: str | None,
    extension: str | None,
    extra_headers: Iterable[tuple[bytes, bytes]] = (),
) -> bytes:
    """The whole 101 Switching Protocols head. Raises ValueError for an extra
    header that is not a valid field (CR/LF in a value would split the head)."""
    head = [
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
        accept_value(key),
        b"\r\n",
    ]
    if subprotocol is not None:
        head.append(_field(b"Sec-WebSocket-Protocol", subprotocol.encode()))
    if extension is not None:
        head.append(_field(b"Sec-WebSocket-Extensions", extension.encode()))
    for name, value in extra_headers:
        head.append(_field(name, value))
    head.append(b"\r\n")
    return b"".join(head)


def refusal(err: HandshakeError, server_header: bytes | None = None) -> bytes:
    """The whole answer refusing an upgrade: the status, the message as a
    text/plain body, and Connection: close."""
    body = err.message.encode("utf-8", "replace") + b"\n"
    head = [b"HTTP/1.1 %d %s\r\n" % (err.status, _REASONS.get(err.status, b"Error"))]
    if server_header is not None:
        head.append(_field(b"Server", server_header))
    head.append(b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\nConnection: close\r\n" % len(body))
    if err.status == 426:
        head.append(b"Upgrade: websocket\r\n")  # RFC 9110 15.5.22: a 426 names the protocol to switch to
    for name, value in err.headers:
        head.append(_field(name, value))
    head.append(b"\r\n")
    return b"".join(head) + body
