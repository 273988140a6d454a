"""The WebSocket codec: the frame parser and the permessage-deflate path
(uringserve.ws.frames/deflate), and the extension negotiation. Invariants:
FrameReader.feed raises nothing but ProtocolError (with a close code it may
send: 1002, 1007 or 1009 and a reason of <= 123 bytes); the events are
well-formed and no message is larger than max_size; the same bytes split
differently give the same events (or the same error); what Deflate
compresses inflates back to itself; negotiate raises nothing but
HandshakeError(400) and answers only with an offer it can keep.

The input picks a mode: raw bytes for the parser, or frames the harness
masks itself (so the fuzzer reaches payload checks and the deflate path
without having to learn masking: RSV1 frames carry its bytes as deflate
data), or an extension header for negotiate."""

from __future__ import annotations

import os
import struct
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from tests.fuzz.common import Carver, fuzz  # noqa: E402

frames: Any = None
deflate: Any = None
handshake: Any = None
SIZES = [0, 1, 125, 126, 1000, 65536, 1 << 20]


def instrument() -> None:
    global frames, deflate, handshake
    import uringserve.ws.deflate as _deflate
    import uringserve.ws.frames as _frames
    import uringserve.ws.handshake as _handshake

    frames, deflate, handshake = _frames, _deflate, _handshake


def masked(c: Carver, n_frames: int) -> bytes:
    """Frames described by the input, masked as a client masks them."""
    out = []
    for _ in range(n_frames):
        if not c.left:
            break
        flags = c.byte()
        b0 = flags & 0xCF | (0x30 if flags & 0x30 == 0x30 else 0)  # RSV2/3 rarely: they only refuse
        n = c.byte()
        n = n if n < 200 else (n - 200) * 1024
        payload = c.take(n)
        mask = c.take(4).ljust(4, b"\0")
        if len(payload) < 126:
            head = bytes((b0, 0x80 | len(payload)))
        elif len(payload) < 0x10000:
            head = struct.pack("!BBH", b0, 0x80 | 126, len(payload))
        else:
            head = struct.pack("!BBQ", b0, 0x80 | 127, len(payload))
        out.append(head + mask + bytes(b ^ mask[i & 3] for i, b in enumerate(payload)))
    return b"".join(out)


def read(data: bytes, cuts: list[bytes] | None, max_size: int, agreed: Any) -> tuple[list[tuple], Any]:
    """Feed `data` (whole, or as `cuts`) to a fresh reader: (events, the ProtocolError or None)."""
    d = deflate.Deflate(*agreed) if agreed is not None else None
    r = frames.FrameReader(max_size, d)
    got: list[tuple] = []
    try:
        for piece in cuts if cuts is not None else [data]:
            got += r.feed(piece)
    except frames.ProtocolError as e:
        assert e.code in (1002, 1007, 1009), e.code
        assert len(e.reason.encode()) <= 123, e.reason
        return got, e
    return got, None


def check_events(events: list[tuple], max_size: int) -> None:
    for e in events:
        op = e[0]
        if op == frames.OP_TEXT:
            assert isinstance(e[1], str) and len(e[1].encode()) <= max_size
        elif op == frames.OP_BINARY:
            assert isinstance(e[1], bytes) and len(e[1]) <= max_size
        elif op in (frames.OP_PING, frames.OP_PONG):
            assert isinstance(e[1], bytes) and len(e[1]) <= 125
        else:
            assert op == frames.OP_CLOSE and len(e) == 3, e
            assert e[1] == 1005 or 1000 <= e[1] < 5000, e


def one_input(data: bytes) -> None:
    if frames is None:
        instrument()
    c = Carver(data)
    mode = c.byte() % 4
    if mode == 3:
        offer = c.rest().decode("latin-1")
        try:
            response, agreed = deflate.negotiate(offer, True)
        except handshake.HandshakeError as e:
            assert e.status == 400
            return
        if response is not None:
            assert response.startswith("permessage-deflate") and agreed is not None
            # what we answered parses back as one acceptable offer
            assert deflate.negotiate(response, True)[0] is not None
        return
    max_size = SIZES[c.byte() % len(SIZES)]
    setting = c.byte()
    agreed = None if setting & 1 else (bool(setting & 2), bool(setting & 4), 9 + (setting >> 3) % 7)
    stream = c.rest() if mode == 0 else masked(c, 8)
    whole, err = read(stream, None, max_size, agreed)
    check_events(whole, max_size)
    # the same bytes cut where the input says give the same events, or the same error
    cuts = Carver(stream[-8:]).pieces(stream) if stream else []
    split, err2 = read(stream, cuts, max_size, agreed)
    if err is None:
        assert err2 is None and split == whole, (err2, split, whole)
    else:
        # (feed() drops the events of the call that raised: only the code is compared)
        assert err2 is not None and err2.code == err.code, (err, err2)
    if mode == 2 and agreed is not None:
        # what we compress inflates back, message after message (context takeover as agreed)
        d = deflate.Deflate(*agreed)
        r = frames.FrameReader(1 << 20, deflate.Deflate())
        w = frames.MessageWriter(d)
        for piece in (stream[:100], stream[100:], stream[:100]):
            out = w.message(piece)
            mask_at = 2 + {126: 2, 127: 8}.get(out[1] & 0x7F, 0)  # masked with a zero mask, as a client would
            client = bytes((out[0], out[1] | 0x80)) + out[2:mask_at] + b"\0\0\0\0" + out[mask_at:]
            assert r.feed(client) == [(frames.OP_BINARY, piece)]


def main() -> None:
    fuzz(one_input, instrument)


if __name__ == "__main__":
    main()
