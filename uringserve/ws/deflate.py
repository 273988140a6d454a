"""RFC 7692 permessage-deflate: the negotiation (with the refusals the RFC
asks for) and the per-message compression of an agreed connection.

zlib does the compression; what is hand-written is only the header parsing
(RFC 6455 9.1's grammar, which no well-kept library exposes on its own) and
the RFC's negotiation rules.
"""

from __future__ import annotations

import re
import zlib

from .frames import ProtocolError
from .handshake import HandshakeError

_TAIL = b"\x00\x00\xff\xff"  # RFC 7692 7.2.1: stripped by the sender, appended by the receiver

# The window the server compresses with when the client leaves it free, and
# zlib's memLevel: 2**(wbits+2) + 2**(memLevel+9) bytes of compressor state per
# connection, 32 KiB instead of 256 KiB at zlib's defaults (15, 8): with
# context takeover the compressor lives as long as the connection. The same
# values as the websockets library's server (12, 5).
SERVER_WBITS = 12
MEM_LEVEL = 5


class Deflate:
    """One connection's agreed permessage-deflate.

    `server_no_context_takeover`: the server resets its compressor per message;
    `server_wbits`: the window the server compresses with (9..15);
    `client_no_context_takeover`: the client said it resets its compressor, so
    the decompressor need not keep its window between messages."""

    def __init__(
        self,
        server_no_context_takeover: bool = False,
        client_no_context_takeover: bool = False,
        server_wbits: int = SERVER_WBITS,
        level: int = zlib.Z_DEFAULT_COMPRESSION,
    ) -> None:
        if not 9 <= server_wbits <= 15:
            raise ValueError("server_wbits must be 9..15 (zlib cannot compress raw deflate with 8)")
        self.server_no_context_takeover = server_no_context_takeover
        self.client_no_context_takeover = client_no_context_takeover
        self.server_wbits = server_wbits
        self.level = level
        self._compressor: zlib._Compress | None = None
        # -15 inflates whatever window the client used (<= 15 by RFC 7692)
        self._decompressor = zlib.decompressobj(-15)

    def decompress(self, payload: bytes, max_size: int, fin: bool = True) -> bytes:
        """Inflate one frame's payload of a compressed message (`fin`: its
        last frame). Raises ProtocolError(1009) as soon as the output would
        pass `max_size` bytes -- before inflating further -- and 1007 for data
        that is not valid deflate."""
        d = self._decompressor
        try:
            if d.eof:  # the client ended its deflate stream earlier in this message
                if payload:
                    raise ProtocolError(1007, "data after the end of the deflate stream")
                out = b""
            else:
                # max_length bounds the output: a bomb is never inflated past the
                # limit. One call with the tail appended: cheaper than two for
                # the small messages that are most of the traffic.
                out = d.decompress(payload + _TAIL if fin else payload, max_size + 1)
                if len(out) > max_size:
                    raise ProtocolError(1009, f"message over the size limit once inflated ({max_size} bytes left)")
                # a block with BFINAL (RFC 7692 7.2.3.4 allows it): nothing but our tail may follow
                if d.eof and d.unused_data and d.unused_data != (_TAIL if fin else b""):
                    raise ProtocolError(1007, "data after the end of the deflate stream")
        except zlib.error as e:
            raise ProtocolError(1007, f"invalid compressed data: {e}") from None
        if fin and (d.eof or self.client_no_context_takeover):
            self._decompressor = zlib.decompressobj(-15)
        return out

    def compress(self, data: bytes) -> bytes:
        """One whole message, compressed, the trailing 00 00 ff ff stripped."""
        c = self._compressor
        if c is None:
            c = zlib.compressobj(self.level, zlib.DEFLATED, -self.server_wbits, MEM_LEVEL)
            if not self.server_no_context_takeover:  # kept: the next message may refer back to this one
                self._compressor = c
        out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
        return out[:-4] if out.endswith(_TAIL) else out


# RFC 6455 9.1 / RFC 7230 3.2.6: token and quoted-string
_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED = r'"(?:[^"\\\x00-\x08\x0a-\x1f\x7f]|\\[\t\x20-\x7e\x80-\xff])*"'
_OWS = r"[ \t]*"
_PARAM = re.compile(rf"{_OWS};{_OWS}({_TOKEN})(?:{_OWS}={_OWS}({_TOKEN}|{_QUOTED}))?")
_EXT = re.compile(rf"{_OWS}({_TOKEN})")
_SEP = re.compile(rf"{_OWS}(,|$)")
_EMPTY = re.compile(r"[ \t,]*")
_TOKEN_RE = re.compile(_TOKEN)


def parse_extensions(value: str) -> list[tuple[str, list[tuple[str, str | None]]]]:
    """A Sec-WebSocket-Extensions value (several headers joined with ', ')
    -> [(extension name, [(param name, value or None), ...]), ...], names
    lowercased, quoted values unquoted. Raises HandshakeError(400) if the value
    does not follow RFC 6455 9.1's grammar (a quoted value must be a token)."""
    out: list[tuple[str, list[tuple[str, str | None]]]] = []
    pos, n = 0, len(value)
    while True:
        empty = _EMPTY.match(value, pos)  # empty list elements are allowed (RFC 7230 7)
        assert empty is not None  # it matches the empty string
        pos = empty.end()
        if pos >= n:
            break
        m = _EXT.match(value, pos)
        if not m:
            raise HandshakeError(400, f"malformed Sec-WebSocket-Extensions at {value[pos : pos + 20]!r}")
        name, pos = m.group(1).lower(), m.end()
        params: list[tuple[str, str | None]] = []
        while (p := _PARAM.match(value, pos)) is not None:
            pname, pvalue = p.group(1).lower(), p.group(2)
            if pvalue is not None and pvalue.startswith('"'):
                pvalue = re.sub(r"\\(.)", r"\1", pvalue[1:-1])
                if not _TOKEN_RE.fullmatch(pvalue):
                    raise HandshakeError(400, f"Sec-WebSocket-Extensions: quoted value of {pname} is not a token")
            params.append((pname, pvalue))
            pos = p.end()
        sep = _SEP.match(value, pos)
        if not sep:
            raise HandshakeError(400, f"malformed Sec-WebSocket-Extensions at {value[pos : pos + 20]!r}")
        out.append((name, params))
        pos = sep.end()
    return out


_WBITS = re.compile(r"(?:[89]|1[0-5])")  # RFC 7692 7.1.2: 1*DIGIT, value 8..15, no leading zeros


def _accept(params: list[tuple[str, str | None]]) -> tuple[str, Deflate] | None:
    """One permessage-deflate offer -> (the response value, the Deflate), or
    None to decline it (RFC 7692 7.1: an unknown parameter, a bad value, a
    repeated parameter, or a configuration this server cannot do)."""
    seen: dict[str, str | None] = {}
    for name, value in params:
        if name in seen:
            return None  # 7: "multiple extension parameters with the same name"
        seen[name] = value
    server_nct = client_nct = False
    server_bits: int | None = None
    for name, value in seen.items():
        if name in ("server_no_context_takeover", "client_no_context_takeover"):
            if value is not None:
                return None  # these take no value (7.1.1.1, 7.1.1.2)
            if name == "server_no_context_takeover":
                server_nct = True
            else:
                client_nct = True
        elif name == "server_max_window_bits":
            if value is None or not _WBITS.fullmatch(value):
                return None  # 7.1.2.1: a value 8..15 is required
            server_bits = int(value)
        elif name == "client_max_window_bits":
            if value is not None and not _WBITS.fullmatch(value):
                return None  # 7.1.2.2: no value, or 8..15
            # We inflate with a 15-bit window, which reads whatever window the
            # client uses, so we never limit the client and leave it out of
            # the response (7.1.2.2 allows that).
        else:
            return None  # 7: "an extension parameter not defined for use in an offer"
    if server_bits == 8:
        # zlib cannot compress raw deflate with a 256-byte window (it refuses
        # wbits -8), and 7.1.2.1 says the response must carry the same or a
        # smaller value: we decline such an offer rather than answer 9.
        return None
    wbits = min(server_bits or 15, SERVER_WBITS)
    response = "permessage-deflate"
    if server_nct:
        response += "; server_no_context_takeover"
    if client_nct:
        response += "; client_no_context_takeover"
    # The server may announce a smaller window than offered, or one when none
    # was offered (7.1.2.1): the client may then keep a smaller inflate window.
    response += f"; server_max_window_bits={wbits}"
    return response, Deflate(server_nct, client_nct, wbits)


def negotiate(offer: str | None, enabled: bool) -> tuple[str | None, Deflate | None]:
    """The client's Sec-WebSocket-Extensions value -> (the response header value or None, the agreed Deflate or None).
    Raises HandshakeError(400, ...) where RFC 7692 says the offer is invalid.

    The first acceptable permessage-deflate offer wins (the client lists them
    in its order of preference); other extensions are declined (none is
    supported). Offers with bad parameters are declined, as RFC 7692 7 asks
    ("MUST decline"); only a header that breaks RFC 6455 9.1's grammar is a
    malformed request (400)."""
    if not enabled or not offer:
        return None, None
    for name, params in parse_extensions(offer):
        if name != "permessage-deflate":
            continue
        accepted = _accept(params)
        if accepted is not None:
            return accepted
    return None, None
