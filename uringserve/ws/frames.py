"""Sans-I/O RFC 6455 frames for the server side: `FrameReader` turns the
bytes a client sent (masked frames) into whole messages and control events,
enforcing every framing rule with the close code the RFC asks for;
`encode`/`encode_close`/`MessageWriter` build the server's (unmasked) frames.

Nothing here does I/O or knows about asyncio: the connection protocol feeds
bytes in and writes bytes out.
"""

from __future__ import annotations

import codecs
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .deflate import Deflate

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def apply_mask_py(data: Any, mask: Any) -> bytes:
    """XOR `data` with the 4-byte `mask` repeated (RFC 6455 5.3), in pure
    Python: the whole payload as one big int, one XOR."""
    n = len(data)
    full = int.from_bytes((bytes(mask) * ((n + 3) >> 2))[:n], "little")
    return (int.from_bytes(data, "little") ^ full).to_bytes(n, "little")


_apply_mask: Callable[[Any, Any], bytes]
try:
    # Unmasking touches every byte of every client frame. Measured with timeit
    # (websockets 17.4, CPython 3.11, this host): websockets' C apply_mask takes
    # ~76 ns for 64 B and ~0.41 us for 16 KiB; the int.from_bytes/XOR/to_bytes
    # way (apply_mask_py) ~340 ns and ~24 us (it builds two big ints and a
    # repeated mask). The C one wins 4.5x and 58x, and websockets is well kept
    # (uvicorn's default): a runtime dependency for this.
    from websockets.speedups import apply_mask as _apply_mask
except ImportError:  # websockets built without its C extension: correct, slower
    _apply_mask = apply_mask_py


class ProtocolError(Exception):
    """The peer broke RFC 6455/7692: close with `code` (1002, 1007, 1009) and
    `reason` (str, <= 123 bytes UTF-8)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code} {reason}")
        self.code = code
        self.reason = reason


# Close codes a peer may send (RFC 6455 7.4.1/7.4.2 and the IANA registry):
# 1000-1003, 1007-1014 and the application/library ranges 3000-4999. 1004 is
# reserved, 1005/1006/1015 are never on the wire, 1016-2999 are unassigned.
_VALID_CODES = frozenset([1000, 1001, 1002, 1003, *range(1007, 1015)])


def check_close_code(code: int) -> None:
    """Raise ValueError for a close code an endpoint must not send."""
    if not (code in _VALID_CODES or 3000 <= code <= 4999):
        raise ValueError(f"close code {code} must not be sent")


_utf8_decoder = codecs.getincrementaldecoder("utf-8")
_TEXT_ERROR = "invalid UTF-8 in a text message"


def _check_surrogate_prefix(decoder: codecs.IncrementalDecoder) -> None:
    """CPython's incremental decoder holds ED A0..ED BF (a UTF-16 surrogate,
    never valid UTF-8) back as a possible prefix instead of failing at once:
    refuse it in the frame that carries it."""
    held = decoder.getstate()[0]
    if len(held) >= 2 and held[0] == 0xED and held[1] >= 0xA0:
        raise ProtocolError(1007, _TEXT_ERROR)


class FrameReader:
    """Incremental reader of a client's frames (see feed()).

    `max_size` bounds a whole message (after inflating); a message announced
    larger is refused from the frame header that announces it, before its
    payload arrives. `deflate` is the negotiated permessage-deflate (None:
    none agreed, so RSV1 is a protocol error)."""

    def __init__(self, max_size: int, deflate: Deflate | None = None) -> None:
        self.max_size = max_size
        self.deflate = deflate
        self._buf = bytearray()
        self._need = 2  # bytes buffered before parsing is worth trying again
        self._closed = False
        # the fragmented message in progress (_op None: none)
        self._op: int | None = None
        self._compressed = False
        self._parts: list[Any] = []
        self._size = 0  # message bytes so far (inflated)
        self._wire = 0  # message bytes so far on the wire (compressed)
        self._decoder: codecs.IncrementalDecoder | None = None

    def feed(self, data: bytes | bytearray | memoryview) -> list[tuple]:
        """Parse what arrived; return the complete events in order:
        (OP_TEXT, str) / (OP_BINARY, bytes)   -- whole messages, reassembled, inflated
        (OP_PING, bytes) / (OP_PONG, bytes)   -- control frames, possibly between fragments
        (OP_CLOSE, code: int, reason: str)    -- code 1005 when the payload is empty
        Raises ProtocolError at the first violation (partial events before it are lost: the
        connection closes anyway). Bytes after a close frame are ignored."""
        if self._closed:
            return []
        buf: Any = self._buf
        if buf:
            buf += data
            if len(buf) < self._need:
                return []
        elif len(data) < self._need:
            buf += data
            return []
        else:
            buf = data  # the common case: parse straight out of what arrived, no copy
        events: list[tuple] = []
        end = len(buf)
        # no try/finally for the rest: after a ProtocolError the reader is not used again
        pos = self._parse(buf, end, events)
        if buf is self._buf:
            del buf[:pos]
        elif pos < end and not self._closed:
            self._buf = bytearray(buf[pos:])
        return events

    def _parse(self, buf: Any, end: int, events: list[tuple]) -> int:
        pos = 0
        max_size = self.max_size
        while True:
            avail = end - pos
            if avail < 2:
                self._need = 2
                return pos
            b0 = buf[pos]
            b1 = buf[pos + 1]
            if (b0 == 0x81 or b0 == 0x82) and 0x80 <= b1 <= 0xFD and self._op is None:
                # the common case first: a whole small text/binary message in one
                # masked, uncompressed frame (every rule below holds for it)
                length = b1 - 0x80
                start = pos + 6
                if length <= max_size and start + length <= end:
                    payload = _apply_mask(buf[start : start + length], buf[pos + 2 : start])
                    pos = start + length
                    if b0 == 0x81:
                        try:
                            events.append((OP_TEXT, payload.decode()))
                        except UnicodeDecodeError:
                            raise ProtocolError(1007, _TEXT_ERROR) from None
                    else:
                        events.append((OP_BINARY, payload))
                    continue
            opcode = b0 & 0x0F
            fin = b0 & 0x80
            rsv1 = b0 & 0x40
            if b0 & 0x30:
                raise ProtocolError(1002, "reserved bits RSV2/RSV3 set")
            if not b1 & 0x80:
                raise ProtocolError(1002, "client frame not masked")
            length = b1 & 0x7F
            if opcode >= 0x8:
                if opcode > OP_PONG:
                    raise ProtocolError(1002, f"reserved opcode {opcode:#x}")
                if not fin:
                    raise ProtocolError(1002, "fragmented control frame")
                if length > 125:
                    raise ProtocolError(1002, "control frame longer than 125 bytes")
                if rsv1:
                    raise ProtocolError(1002, "RSV1 set on a control frame")
            elif opcode == OP_CONT:
                if self._op is None:
                    raise ProtocolError(1002, "continuation frame without a message to continue")
                if rsv1:
                    raise ProtocolError(1002, "RSV1 set on a continuation frame")
            else:
                if opcode > OP_BINARY:
                    raise ProtocolError(1002, f"reserved opcode {opcode:#x}")
                if self._op is not None:
                    raise ProtocolError(1002, "new data frame inside a fragmented message")
                if rsv1 and self.deflate is None:
                    raise ProtocolError(1002, "RSV1 set without a negotiated extension")
            if length < 126:
                head = 6
            elif length == 126:
                head = 8
                if avail < head:
                    self._need = head
                    return pos
                length = (buf[pos + 2] << 8) | buf[pos + 3]
            else:
                head = 14
                if avail < head:
                    self._need = head
                    return pos
                (length,) = struct.unpack_from("!Q", buf, pos + 2)
                if length >> 63:
                    raise ProtocolError(1002, "64-bit frame length with the top bit set")
            if opcode < 0x8:
                compressed = rsv1 if opcode else self._compressed
                if compressed:
                    # compressed bytes on the wire are bounded too (with room
                    # for deflate's framing of incompressible data)
                    if self._wire + length > max_size + (max_size >> 8) + 64:
                        raise ProtocolError(1009, f"message over {max_size} bytes")
                elif self._size + length > max_size:
                    raise ProtocolError(1009, f"message over {max_size} bytes")
            if avail < head + length:
                self._need = head + length
                return pos
            start = pos + head
            pos = start + length
            mask = buf[start - 4 : start]
            if length <= 1024:
                payload = _apply_mask(buf[start:pos], mask)
            else:  # a view: no copy of a big payload before the unmasking one
                with memoryview(buf) as view:
                    payload = _apply_mask(view[start:pos], mask)
            if opcode >= 0x8:
                if opcode == OP_CLOSE:
                    events.append(_close_event(payload))
                    self._closed = True
                    return end  # what follows a close frame is ignored
                events.append((opcode, payload))
            elif fin and opcode:
                # the common case: a whole message in one frame
                if rsv1:
                    assert self.deflate is not None
                    payload = self.deflate.decompress(payload, max_size)
                if opcode == OP_TEXT:
                    try:
                        events.append((OP_TEXT, payload.decode()))
                    except UnicodeDecodeError:
                        raise ProtocolError(1007, _TEXT_ERROR) from None
                else:
                    events.append((OP_BINARY, payload))
            else:
                if opcode:
                    self._op = opcode
                    self._compressed = bool(rsv1)
                    self._decoder = _utf8_decoder() if opcode == OP_TEXT else None
                self._fragment(payload, bool(fin), events)

    def _fragment(self, payload: bytes, fin: bool, events: list[tuple]) -> None:
        """One frame of a fragmented or compressed message."""
        if self._compressed:
            self._wire += len(payload)
            assert self.deflate is not None
            payload = self.deflate.decompress(payload, self.max_size - self._size, fin)
            self._size += len(payload)
        else:
            self._size += len(payload)
        decoder = self._decoder
        if decoder is not None:
            try:
                self._parts.append(decoder.decode(payload, fin))
            except UnicodeDecodeError:
                raise ProtocolError(1007, _TEXT_ERROR) from None
            if not fin:
                _check_surrogate_prefix(decoder)
        else:
            self._parts.append(payload)
        if fin:
            op = self._op
            message: str | bytes = "".join(self._parts) if op == OP_TEXT else b"".join(self._parts)
            events.append((op, message))
            self._op = None
            self._parts = []
            self._size = self._wire = 0
            self._decoder = None


def _close_event(payload: bytes) -> tuple[int, int, str]:
    if not payload:
        return (OP_CLOSE, 1005, "")
    if len(payload) == 1:
        raise ProtocolError(1002, "close frame with a 1-byte payload")
    code = (payload[0] << 8) | payload[1]
    try:
        check_close_code(code)
    except ValueError:
        raise ProtocolError(1002, f"invalid close code {code}") from None
    try:
        reason = payload[2:].decode()
    except UnicodeDecodeError:
        raise ProtocolError(1007, "invalid UTF-8 in the close reason") from None
    return (OP_CLOSE, code, reason)


def encode(opcode: int, payload: bytes, fin: bool = True, rsv1: bool = False) -> bytes:
    """One server frame (unmasked, RFC 6455 5.1)."""
    b0 = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    n = len(payload)
    if n < 126:
        return bytes((b0, n)) + payload
    if n < 0x10000:
        return struct.pack("!BBH", b0, 126, n) + payload
    return struct.pack("!BBQ", b0, 127, n) + payload


def frame_header(opcode: int, length: int, fin: bool = True, rsv1: bool = False) -> bytes:
    """encode()'s header alone, for a writer that sends a big payload
    beside it (transport.writelines) instead of copying it into one bytes."""
    b0 = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    if length < 126:
        return bytes((b0, length))
    if length < 0x10000:
        return struct.pack("!BBH", b0, 126, length)
    return struct.pack("!BBQ", b0, 127, length)


def encode_close(code: int | None, reason: str = "") -> bytes:
    """A close frame; code None or 1005 (no status) gives an empty payload.
    The reason is cut to fit the 125-byte control frame limit, on a
    character boundary."""
    if code is None or code == 1005:
        return encode(OP_CLOSE, b"")
    check_close_code(code)
    raw = reason.encode()
    if len(raw) > 123:
        raw = raw[:123].decode(errors="ignore").encode()
    return encode(OP_CLOSE, code.to_bytes(2, "big") + raw)


class MessageWriter:
    """Encodes whole messages (str: text, bytes: binary) as single frames,
    compressed when permessage-deflate was agreed."""

    def __init__(self, deflate: Deflate | None) -> None:
        self.deflate = deflate

    def message(self, data: str | bytes | bytearray | memoryview) -> bytes:
        if isinstance(data, str):
            opcode, raw = OP_TEXT, data.encode()
        else:
            opcode, raw = OP_BINARY, bytes(data)
        if self.deflate is None:
            return encode(opcode, raw)
        return encode(opcode, self.deflate.compress(raw), rsv1=True)
