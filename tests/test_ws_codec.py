"""The sans-I/O WebSocket codec (uringserve.ws.frames/deflate/handshake):
pure unit tests, organised by the Autobahn|Testsuite case groups (1 framing,
2 ping/pong, 3 reserved bits, 4 opcodes, 5 fragmentation, 6 UTF-8, 7 close,
9 large messages, 12-13 permessage-deflate), then splits at every byte
boundary, hypothesis properties, the handshake and the negotiation.

Client frames are built here by hand (`cframe`, masked as a client must) and,
for deflate, by the websockets library's PerMessageDeflate: an implementation
nobody here wrote."""

from __future__ import annotations

import itertools
import os
import struct
import tracemalloc
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory, PerMessageDeflate
from websockets.frames import Frame, Opcode
from websockets.headers import parse_extension

from uringserve.ws import deflate as D
from uringserve.ws import frames as F
from uringserve.ws import handshake as H
from uringserve.ws.frames import OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, ProtocolError

MAX = 1 << 20


def cframe(
    op: int,
    payload: bytes = b"",
    fin: bool = True,
    rsv: int = 0,
    masked: bool = True,
    length: int | None = None,
    mask: bytes = b"\x37\xfa\x21\x3d",
) -> bytes:
    """A client frame: masked, the length in the shortest form (or `length`
    announced instead of the real one)."""
    n = len(payload) if length is None else length
    b0 = (0x80 if fin else 0) | (rsv << 4) | op
    mbit = 0x80 if masked else 0
    if n < 126:
        head = bytes((b0, mbit | n))
    elif n < 0x10000:
        head = struct.pack("!BBH", b0, mbit | 126, n)
    else:
        head = struct.pack("!BBQ", b0, mbit | 127, n)
    if not masked:
        return head + payload
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + body


def sframe(data: bytes) -> list[tuple[int, int, bytes, int]]:
    """Parse server frames (unmasked) independently: [(fin, rsv1, opcode, payload), ...]."""
    out, pos = [], 0
    while pos < len(data):
        b0, b1 = data[pos], data[pos + 1]
        assert not b1 & 0x80, "a server frame must not be masked"
        n, pos = b1 & 0x7F, pos + 2
        if n == 126:
            (n,), pos = struct.unpack_from("!H", data, pos), pos + 2
        elif n == 127:
            (n,), pos = struct.unpack_from("!Q", data, pos), pos + 8
        out.append((b0 >> 7, (b0 >> 6) & 1, b0 & 0xF, data[pos : pos + n]))
        pos += n
    return out


def events(data: bytes, max_size: int = MAX, deflate: D.Deflate | None = None) -> list[tuple]:
    return F.FrameReader(max_size, deflate).feed(data)


def refused(data: bytes, code: int, max_size: int = MAX, deflate: D.Deflate | None = None) -> ProtocolError:
    with pytest.raises(ProtocolError) as e:
        events(data, max_size, deflate)
    assert e.value.code == code, e.value
    assert len(e.value.reason.encode()) <= 123
    return e.value


def fed_one_by_one(frames: list[bytes], max_size: int = MAX, deflate: D.Deflate | None = None) -> list[list]:
    """The events after each frame, fed separately (which frame raised shows in the exception's notes)."""
    r = F.FrameReader(max_size, deflate)
    out = []
    for i, f in enumerate(frames):
        try:
            out.append(r.feed(f))
        except ProtocolError as e:
            e.add_note(f"frame {i}")
            e.frame = i  # type: ignore[attr-defined]
            raise
    return out


# -- 1 framing: text and binary echo at every length boundary -------------------------------

SIZES = [0, 1, 125, 126, 127, 128, 1000, 65535, 65536, 65537]


@pytest.mark.parametrize("n", SIZES)
def test_1_text_and_binary_of_each_size(n: int) -> None:
    text = ("é" * n)[: n // 2] + "a" * (n - 2 * (n // 2))  # n bytes of UTF-8
    assert len(text.encode()) == n
    binary = os.urandom(n)
    assert events(cframe(OP_TEXT, text.encode())) == [(OP_TEXT, text)]
    assert events(cframe(OP_BINARY, binary)) == [(OP_BINARY, binary)]
    # the server's frames: read back by an independent parser, with the length's form
    for op, payload in ((OP_TEXT, text.encode()), (OP_BINARY, binary)):
        out = F.encode(op, payload)
        assert sframe(out) == [(1, 0, op, payload)]
        form = 2 if n < 126 else 4 if n < 65536 else 10
        assert len(out) == form + n
        assert F.frame_header(op, n) + payload == out
        assert sframe(F.frame_header(op, n, fin=False, rsv1=True) + payload) == [(0, 1, op, payload)]


def test_1_server_frames_read_by_websockets() -> None:
    """websockets' client-side parser reads what encode() writes."""
    from websockets.streams import StreamReader

    for n in SIZES:
        payload = os.urandom(n)
        reader = StreamReader()
        reader.feed_data(F.encode(OP_BINARY, payload, fin=False))
        gen = Frame.parse(reader.read_exact, mask=False)
        with pytest.raises(StopIteration) as stop:
            next(gen)
        frame = stop.value.value
        assert (frame.opcode, frame.fin, frame.data) == (Opcode.BINARY, False, payload)


def test_1_a_header_split_at_every_byte_is_read() -> None:
    for n in (0, 125, 126, 65536):
        payload = os.urandom(n)
        data = cframe(OP_BINARY, payload) + cframe(OP_PING, b"x")
        r = F.FrameReader(MAX)
        got = []
        for i in range(min(len(data), 20)):  # header bytes one by one
            got += r.feed(data[i : i + 1])
        got += r.feed(data[20:])
        assert got == [(OP_BINARY, payload), (OP_PING, b"x")]


def test_1_feed_accepts_memoryview_and_bytearray_and_keeps_no_reference() -> None:
    data = bytearray(cframe(OP_TEXT, b"hello") + cframe(OP_BINARY, b"ab")[:3])
    r = F.FrameReader(MAX)
    assert r.feed(memoryview(data)) == [(OP_TEXT, "hello")]
    data[:] = b"\xff" * len(data)  # the caller reuses its buffer: the reader kept a copy of the rest
    assert r.feed(cframe(OP_BINARY, b"ab")[3:]) == [(OP_BINARY, b"ab")]


def test_1_pure_python_unmasking_matches_the_c_one() -> None:
    from websockets.speedups import apply_mask

    for n in (0, 1, 3, 4, 5, 125, 4096, 65537):
        data, mask = os.urandom(n), os.urandom(4)
        expect = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        assert apply_mask(data, mask) == expect
        assert F.apply_mask_py(data, mask) == F.apply_mask_py(memoryview(data), memoryview(mask)) == expect


def test_1_reader_works_with_the_pure_python_unmasking(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(F, "_apply_mask", F.apply_mask_py)
    blob = os.urandom(70000)
    data = cframe(OP_TEXT, "héllo".encode()) + cframe(OP_BINARY, blob)
    assert events(data) == events(memoryview(data)) == [(OP_TEXT, "héllo"), (OP_BINARY, blob)]


def test_1_unmasked_client_frame_is_1002() -> None:
    refused(cframe(OP_TEXT, b"hi", masked=False), 1002)
    refused(cframe(OP_PING, b"", masked=False), 1002)


def test_1_many_frames_in_one_feed() -> None:
    msgs = [os.urandom(i) for i in range(200)]
    data = b"".join(cframe(OP_BINARY, m) for m in msgs)
    assert events(data) == [(OP_BINARY, m) for m in msgs]


# -- 2 ping/pong ---------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 10, 125])
def test_2_ping_and_pong_payloads(n: int) -> None:
    p = os.urandom(n)
    assert events(cframe(OP_PING, p)) == [(OP_PING, p)]
    assert events(cframe(OP_PONG, p)) == [(OP_PONG, p)]  # unsolicited: an event, not an error
    assert sframe(F.encode(OP_PONG, p)) == [(1, 0, OP_PONG, p)]


@pytest.mark.parametrize("op", [OP_PING, OP_PONG, OP_CLOSE])
def test_2_control_frame_over_125_bytes_is_1002(op: int) -> None:
    refused(cframe(op, b"\x03\xe8" + b"a" * 124), 1002)
    # refused from the header: the payload never needs to arrive
    refused(cframe(op, b"\x03\xe8" + b"a" * 124)[:2], 1002)


def test_2_ten_pings_in_a_row() -> None:
    data = b"".join(cframe(OP_PING, b"%d" % i) for i in range(10))
    assert events(data) == [(OP_PING, b"%d" % i) for i in range(10)]


# -- 3 reserved bits -----------------------------------------------------------------------


@pytest.mark.parametrize("rsv", [1, 2, 3, 4, 5, 6, 7])
@pytest.mark.parametrize("op", [OP_TEXT, OP_BINARY, OP_PING, OP_CONT])
def test_3_reserved_bits_without_an_extension_are_1002(rsv: int, op: int) -> None:
    prefix = cframe(OP_TEXT, b"a", fin=False) if op == OP_CONT else b""
    with pytest.raises(ProtocolError) as e:
        fed_one_by_one([prefix, cframe(op, b"x", rsv=rsv)])
    assert e.value.code == 1002 and e.value.frame == 1  # type: ignore[attr-defined]


@pytest.mark.parametrize("rsv", [2, 1])  # RSV2/RSV3 even with deflate; RSV1 when none agreed
def test_3_rsv2_rsv3_are_1002_even_with_deflate(rsv: int) -> None:
    refused(cframe(OP_TEXT, b"x", rsv=rsv), 1002, deflate=D.Deflate())


def test_3_valid_frames_before_the_bad_one_were_parsed() -> None:
    r = F.FrameReader(MAX)
    assert r.feed(cframe(OP_TEXT, b"ok")) == [(OP_TEXT, "ok")]
    with pytest.raises(ProtocolError):
        r.feed(cframe(OP_TEXT, b"x", rsv=4))


# -- 4 opcodes -----------------------------------------------------------------------------


@pytest.mark.parametrize("op", [3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF])
def test_4_reserved_opcodes_are_1002(op: int) -> None:
    refused(cframe(op, b""), 1002)
    refused(cframe(op, b"payload"), 1002)
    # also from the header alone, and after a valid message
    refused(cframe(op, b"x")[:2], 1002)
    with pytest.raises(ProtocolError):
        fed_one_by_one([cframe(OP_TEXT, b"ok"), cframe(op, b"x")])


# -- 5 fragmentation -----------------------------------------------------------------------


def test_5_fragmented_text_and_binary_reassembled() -> None:
    parts = [b"fr", b"ag", b"", b"ments"]
    for op, expect in ((OP_TEXT, "fragments"), (OP_BINARY, b"fragments")):
        frames = [cframe(op if i == 0 else OP_CONT, p, fin=i == len(parts) - 1) for i, p in enumerate(parts)]
        assert events(b"".join(frames)) == [(op, expect)]
        # nothing comes out before the last fragment
        assert fed_one_by_one(frames) == [[], [], [], [(op, expect)]]


def test_5_control_frames_interleaved_in_a_fragmented_message() -> None:
    data = (
        cframe(OP_TEXT, b"a", fin=False)
        + cframe(OP_PING, b"1")
        + cframe(OP_CONT, b"b", fin=False)
        + cframe(OP_PONG, b"2")
        + cframe(OP_CONT, b"c")
        + cframe(OP_TEXT, b"next")
    )
    assert events(data) == [(OP_PING, b"1"), (OP_PONG, b"2"), (OP_TEXT, "abc"), (OP_TEXT, "next")]


def test_5_close_inside_a_fragmented_message_ends_it() -> None:
    data = cframe(OP_TEXT, b"a", fin=False) + cframe(OP_CLOSE, b"\x03\xe8") + cframe(OP_CONT, b"b")
    assert events(data) == [(OP_CLOSE, 1000, "")]


def test_5_continuation_without_a_message_is_1002() -> None:
    refused(cframe(OP_CONT, b"x"), 1002)
    refused(cframe(OP_CONT, b"x", fin=False), 1002)
    # after a complete message there is nothing to continue either
    refused(cframe(OP_TEXT, b"done") + cframe(OP_CONT, b"x"), 1002)


@pytest.mark.parametrize("op", [OP_TEXT, OP_BINARY])
def test_5_new_data_frame_inside_a_fragmented_message_is_1002(op: int) -> None:
    refused(cframe(OP_BINARY, b"a", fin=False) + cframe(op, b"b"), 1002)
    refused(cframe(OP_TEXT, b"a", fin=False) + cframe(op, b"b", fin=False), 1002)


@pytest.mark.parametrize("op", [OP_PING, OP_PONG, OP_CLOSE])
def test_5_fragmented_control_frame_is_1002(op: int) -> None:
    refused(cframe(op, b"", fin=False), 1002)
    refused(cframe(op, b"", fin=False) + cframe(OP_CONT, b"", fin=True), 1002)


def test_5_many_one_byte_fragments() -> None:
    text = "fragmented €" * 10
    raw = text.encode()
    frames = [cframe(OP_TEXT if i == 0 else OP_CONT, raw[i : i + 1], fin=i == len(raw) - 1) for i in range(len(raw))]
    assert events(b"".join(frames)) == [(OP_TEXT, text)]


# -- 6 UTF-8 -------------------------------------------------------------------------------

VALID = ["", "κόσμε", "\x00", "\u007f\u0080\u07ff\u0800\uffff", "\U00010000\U0010ffff", "\ud7ff\ue000\ufffd"]
INVALID = [
    b"\x80",  # lone continuation
    b"\xc0\xaf",  # overlong
    b"\xe0\x80\xaf",  # overlong
    b"\xed\xa0\x80",  # surrogate
    b"\xf4\x90\x80\x80",  # above U+10FFFF
    b"\xf5",
    b"\xfe",
    b"\xff",
    b"\xce\xba\xe1\xbd",  # truncated at the end of the message
    b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited",
]


@pytest.mark.parametrize("text", VALID)
def test_6_valid_utf8_single_and_fragmented(text: str) -> None:
    raw = text.encode("utf-8", "surrogatepass")
    assert events(cframe(OP_TEXT, raw)) == [(OP_TEXT, text)]
    frames = [cframe(OP_TEXT if i == 0 else OP_CONT, raw[i : i + 1], fin=i == len(raw) - 1) for i in range(len(raw))]
    if frames:
        assert events(b"".join(frames)) == [(OP_TEXT, text)]


@pytest.mark.parametrize("bad", INVALID)
def test_6_invalid_utf8_is_1007(bad: bytes) -> None:
    refused(cframe(OP_TEXT, bad), 1007)
    refused(cframe(OP_TEXT, b"a" * 200 + bad), 1007)  # a frame of 126+ bytes takes the general path
    refused(cframe(OP_TEXT, bad[:1], fin=False) + cframe(OP_CONT, bad[1:]), 1007)
    # binary is not text: anything goes
    assert events(cframe(OP_BINARY, bad)) == [(OP_BINARY, bad)]


def test_6_code_point_split_across_frames() -> None:
    raw = "€𝄞".encode()  # 3 + 4 bytes, cut inside each
    frames = [cframe(OP_TEXT, raw[:2], fin=False), cframe(OP_CONT, raw[2:5], fin=False), cframe(OP_CONT, raw[5:])]
    assert fed_one_by_one(frames) == [[], [], [(OP_TEXT, "€𝄞")]]


@pytest.mark.parametrize(
    "parts,bad_frame",
    [
        # Autobahn 6.4.1-6.4.2: the bad byte is in the 2nd of 3 frames
        ([b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5", b"\xf4\x90\x80\x80", b"edited"], 1),
        ([b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xf4", b"\x90", b"\x80\x80edited"], 1),
        ([b"ok", b"ok\xc0", b"never"], 1),
        ([b"ok\xff", b"a", b"b"], 0),
        # a surrogate: CPython's decoder holds ED A0 back as a prefix; still found in its frame
        ([b"ok\xed\xa0", b"\x80", b"b"], 0),
        ([b"ok\xed", b"\xa0\x80", b"b"], 1),
    ],
)
def test_6_bad_byte_found_in_the_frame_that_carries_it(parts: list[bytes], bad_frame: int) -> None:
    frames = [cframe(OP_TEXT if i == 0 else OP_CONT, p, fin=i == len(parts) - 1) for i, p in enumerate(parts)]
    with pytest.raises(ProtocolError) as e:
        fed_one_by_one(frames)
    assert e.value.code == 1007 and e.value.frame == bad_frame  # type: ignore[attr-defined]


def first_bad_byte(data: bytes) -> int | None:
    """Where RFC 3629's UTF-8 grammar first fails (the index of the byte that
    cannot continue any valid sequence; len(data) if it ends inside a
    sequence), or None: a DFA written from the RFC's table, independent of
    Python's decoder."""
    need, lo, hi = 0, 0x80, 0xBF
    for i, b in enumerate(data):
        if need:
            if not lo <= b <= hi:
                return i
            need, lo, hi = need - 1, 0x80, 0xBF
        elif b < 0x80:
            continue
        elif 0xC2 <= b <= 0xDF:
            need = 1
        elif 0xE0 <= b <= 0xEF:
            need, lo, hi = 2, {0xE0: 0xA0}.get(b, 0x80), {0xED: 0x9F}.get(b, 0xBF)
        elif 0xF0 <= b <= 0xF4:
            need, lo, hi = 3, {0xF0: 0x90}.get(b, 0x80), {0xF4: 0x8F}.get(b, 0xBF)
        else:
            return i
    return len(data) if need else None


utf8ish = st.lists(
    st.one_of(
        st.text(max_size=8).map(lambda t: t.encode("utf-8", "surrogatepass")),
        st.binary(max_size=3),
        st.sampled_from(
            [b"\xed\xa0\x80", b"\xed\x9f\xbf", b"\xf4\x8f\xbf\xbf", b"\xf4\x90", b"\xe0\x9f", b"\xc1", b"\xef"]
        ),
    ),
    max_size=12,
).map(b"".join)


@settings(max_examples=400, deadline=None)
@given(utf8ish, st.lists(st.integers(0, 40), max_size=6))
def test_6_property_refused_in_exactly_the_frame_with_the_first_bad_byte(raw: bytes, cuts: list[int]) -> None:
    bounds = sorted({min(c, len(raw)) for c in cuts} | {0, len(raw)})
    pieces = [raw[a:b] for a, b in zip(bounds, bounds[1:], strict=False)] or [b""]
    frames = [cframe(OP_TEXT if i == 0 else OP_CONT, p, fin=i == len(pieces) - 1) for i, p in enumerate(pieces)]
    bad = first_bad_byte(raw)
    if bad is None:
        assert fed_one_by_one(frames)[-1] == [(OP_TEXT, raw.decode())]
        return
    # the frame that carries the bad byte; a sequence cut off by the message's end: the last frame
    ends = list(itertools.accumulate(len(p) for p in pieces))
    expect = next(i for i, end in enumerate(ends) if end > bad) if bad < len(raw) else len(pieces) - 1
    with pytest.raises(ProtocolError) as e:
        fed_one_by_one(frames)
    assert e.value.code == 1007 and e.value.frame == expect, (bad, ends)  # type: ignore[attr-defined]


# -- 7 close -------------------------------------------------------------------------------

VALID_CODES = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999, 4000, 4999]
INVALID_CODES = [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535]


def test_7_close_without_payload_is_1005() -> None:
    assert events(cframe(OP_CLOSE)) == [(OP_CLOSE, 1005, "")]


@pytest.mark.parametrize("code", VALID_CODES)
def test_7_valid_close_codes(code: int) -> None:
    assert events(cframe(OP_CLOSE, code.to_bytes(2, "big") + "bye ✓".encode())) == [(OP_CLOSE, code, "bye ✓")]
    F.check_close_code(code)
    ours = F.encode_close(code, "r")  # our close frame, masked with a zero mask, reads back
    assert events(bytes((ours[0], ours[1] | 0x80)) + b"\0\0\0\0" + ours[2:]) == [(OP_CLOSE, code, "r")]


@pytest.mark.parametrize("code", INVALID_CODES)
def test_7_invalid_close_codes_are_1002(code: int) -> None:
    refused(cframe(OP_CLOSE, code.to_bytes(2, "big")), 1002)
    with pytest.raises(ValueError):
        F.check_close_code(code)


def test_7_close_payload_of_one_byte_is_1002() -> None:
    refused(cframe(OP_CLOSE, b"\x03"), 1002)


def test_7_close_reason_invalid_utf8_is_1007() -> None:
    refused(cframe(OP_CLOSE, b"\x03\xe8\xce\xba\xe1\xbd"), 1007)
    refused(cframe(OP_CLOSE, b"\x03\xe8\xff"), 1007)


def test_7_close_reason_of_123_bytes() -> None:
    reason = "é" * 61 + "a"
    assert events(cframe(OP_CLOSE, b"\x03\xe8" + reason.encode())) == [(OP_CLOSE, 1000, reason)]


def test_7_bytes_after_a_close_frame_are_ignored() -> None:
    r = F.FrameReader(MAX)
    assert r.feed(cframe(OP_CLOSE, b"\x03\xe8") + b"\xff\xff garbage") == [(OP_CLOSE, 1000, "")]
    assert r.feed(cframe(OP_TEXT, b"late") + b"\x00" * 10) == []


def test_7_encode_close() -> None:
    assert F.encode_close(None) == F.encode_close(1005) == b"\x88\x00"
    assert sframe(F.encode_close(1000, "bye")) == [(1, 0, OP_CLOSE, b"\x03\xe8bye")]
    long = F.encode_close(1001, "€" * 100)  # 300 bytes of reason: cut on a character boundary
    (_, _, _, payload) = sframe(long)[0]
    assert len(payload) <= 125 and payload[2:].decode() == "€" * 41
    (_, _, _, payload) = sframe(F.encode_close(1000, "a" * 200))[0]
    assert payload == b"\x03\xe8" + b"a" * 123  # the most a control frame holds
    assert sframe(F.encode_close(1000, "a" * 124))[0][3] == b"\x03\xe8" + b"a" * 123
    for code in (1005, 1006, 1015, 999, 5000):
        if code != 1005:
            with pytest.raises(ValueError):
                F.encode_close(code)


# -- 9 large messages and limits -----------------------------------------------------------


@pytest.mark.parametrize("n", [1 << 16, 1 << 20, 4 << 20])
@pytest.mark.parametrize("chunk", [997, 65536])
def test_9_large_binary_message_in_chunks(n: int, chunk: int) -> None:
    if n > 1 << 20 and chunk < 4096:
        return  # enough covered; keep the suite fast
    payload = os.urandom(n)
    data = cframe(OP_BINARY, payload)
    r = F.FrameReader(n)
    got = []
    for i in range(0, len(data), chunk):
        got += r.feed(data[i : i + chunk])
    assert got == [(OP_BINARY, payload)]


def test_9_fragmented_large_text() -> None:
    text = "0123456789€" * 50000
    raw = text.encode()
    step = 64 * 1024
    frames = [
        cframe(OP_TEXT if i == 0 else OP_CONT, raw[i : i + step], fin=i + step >= len(raw))
        for i in range(0, len(raw), step)
    ]
    assert events(b"".join(frames), max_size=len(raw)) == [(OP_TEXT, text)]


@pytest.mark.parametrize("fragment", [64, 4096, 1 << 20])
def test_9_one_mib_text_in_fragments(fragment: int) -> None:
    """Autobahn 9.3/9.4: a big message in fragments of 64 B up to whole."""
    raw = ("κόσμε" * 100_000).encode()[: 1 << 20]
    raw = raw[: len(raw.decode("utf-8", "ignore").encode())]
    frames = b"".join(
        cframe(OP_TEXT if i == 0 else OP_CONT, raw[i : i + fragment], fin=i + fragment >= len(raw))
        for i in range(0, len(raw), fragment)
    )
    r = F.FrameReader(1 << 20)
    got = [e for i in range(0, len(frames), 65536) for e in r.feed(frames[i : i + 65536])]
    assert got == [(OP_TEXT, raw.decode())]


def test_9_max_size_exactly_is_accepted_one_more_is_1009() -> None:
    assert events(cframe(OP_BINARY, b"x" * 1000), max_size=1000) == [(OP_BINARY, b"x" * 1000)]
    refused(cframe(OP_BINARY, b"x" * 1001), 1009, max_size=1000)
    # fragments count together
    ok = cframe(OP_TEXT, b"a" * 600, fin=False) + cframe(OP_CONT, b"a" * 400)
    assert events(ok, max_size=1000) == [(OP_TEXT, "a" * 1000)]
    refused(cframe(OP_TEXT, b"a" * 600, fin=False) + cframe(OP_CONT, b"a" * 401), 1009, max_size=1000)
    # the limit is per message: after one ends the count starts again
    two = cframe(OP_BINARY, b"a" * 1000) + cframe(OP_BINARY, b"a" * 600, fin=False) + cframe(OP_CONT, b"a" * 400)
    assert len(events(two, max_size=1000)) == 2


@pytest.mark.parametrize("op", [OP_TEXT, OP_BINARY])
def test_9_small_limits_hold_for_small_frames(op: int) -> None:
    assert events(cframe(op, b"x" * 10), max_size=10) == [(op, "x" * 10 if op == OP_TEXT else b"x" * 10)]
    refused(cframe(op, b"x" * 11), 1009, max_size=10)
    refused(cframe(op, b""), 1009, max_size=-1)  # nothing at all


def test_9_oversize_refused_from_the_header_alone() -> None:
    """A 1 GiB message is refused from its 14-byte header: nothing is buffered."""
    head = cframe(OP_BINARY, b"", length=1 << 30)
    assert len(head) == 14
    r = F.FrameReader(16 << 20)
    for b in head[:-1]:
        assert r.feed(bytes([b])) == []
    with pytest.raises(ProtocolError) as e:
        r.feed(head[-1:])
    assert e.value.code == 1009
    # and a fragment that would pass the limit, also from its header
    r = F.FrameReader(1000)
    assert r.feed(cframe(OP_BINARY, b"a" * 900, fin=False)) == []
    with pytest.raises(ProtocolError) as e:
        r.feed(cframe(OP_CONT, b"", length=101)[:8])
    assert e.value.code == 1009


def test_9_a_2_63_length_is_1002() -> None:
    refused(cframe(OP_BINARY, b"", length=1 << 63), 1002, max_size=1 << 62)
    refused(cframe(OP_BINARY, b"", length=(1 << 64) - 1), 1002)
    # the largest legal length is only too big
    refused(cframe(OP_BINARY, b"", length=(1 << 63) - 1), 1009)


def test_9_a_slow_oversized_message_holds_no_memory() -> None:
    """The 1 GiB message sent slowly: refused at the header, before its bytes."""
    r = F.FrameReader(16 << 20)
    with pytest.raises(ProtocolError):
        r.feed(cframe(OP_TEXT, b"", length=1 << 30) + b"\0" * 100)
    assert len(r._buf) < 200


# -- 12-13 permessage-deflate --------------------------------------------------------------


def ws_client_deflate(
    client_nct: bool = False, server_nct: bool = False, client_bits: int = 15, server_bits: int = 15
) -> PerMessageDeflate:
    """websockets' own permessage-deflate in the client's role."""
    return PerMessageDeflate(server_nct, client_nct, server_bits, client_bits)


def client_deflated(ext: PerMessageDeflate, op: int, data: bytes, fragments: int = 1) -> bytes:
    """A message compressed by websockets as a client, masked, in `fragments` frames."""
    step = max(1, -(-len(data) // fragments))
    chunks = [data[i : i + step] for i in range(0, len(data), step)] or [b""]
    out = []
    for i, chunk in enumerate(chunks):
        frame = Frame(Opcode(op if i == 0 else OP_CONT), chunk, fin=i == len(chunks) - 1)
        out.append(frame.serialize(mask=True, extensions=[ext]))
    return b"".join(out)


MESSAGES = [b"", b"a", b"Hello, world! " * 40, os.urandom(3000), b"\x00" * 100000, "ünïcödé ✓ ".encode() * 500]


@pytest.mark.parametrize("client_nct", [False, True])
@pytest.mark.parametrize("fragments", [1, 3])
def test_12_inflate_what_websockets_compressed(client_nct: bool, fragments: int) -> None:
    r = F.FrameReader(MAX, D.Deflate(client_no_context_takeover=client_nct))
    ext = ws_client_deflate(client_nct=client_nct)
    for m in MESSAGES * 2:  # twice: the second time context takeover makes them back-references
        assert r.feed(client_deflated(ext, OP_BINARY, m, fragments)) == [(OP_BINARY, m)]
        text = m.decode("utf-8", "replace").encode()
        assert r.feed(client_deflated(ext, OP_TEXT, text, fragments)) == [(OP_TEXT, text.decode())]


def test_12_uncompressed_messages_mix_with_compressed() -> None:
    r = F.FrameReader(MAX, D.Deflate())
    ext = ws_client_deflate()
    assert r.feed(cframe(OP_TEXT, b"plain")) == [(OP_TEXT, "plain")]
    assert r.feed(client_deflated(ext, OP_TEXT, b"packed")) == [(OP_TEXT, "packed")]
    assert r.feed(cframe(OP_BINARY, b"plain", fin=False) + cframe(OP_CONT, b"!")) == [(OP_BINARY, b"plain!")]


@pytest.mark.parametrize("server_nct", [False, True])
@pytest.mark.parametrize("server_bits", [9, 10, 12, 15])
def test_12_what_we_compress_inflates_in_websockets(server_nct: bool, server_bits: int) -> None:
    d = D.Deflate(server_no_context_takeover=server_nct, server_wbits=server_bits)
    w = F.MessageWriter(d)
    ext = ws_client_deflate(server_nct=server_nct, server_bits=server_bits)
    for m in MESSAGES * 2:
        [(fin, rsv1, op, payload)] = sframe(w.message(m))
        assert (fin, rsv1, op) == (1, 1, OP_BINARY)
        frame = ext.decode(Frame(Opcode.BINARY, payload, rsv1=True))
        assert frame.data == m
    [(_, rsv1, op, payload)] = sframe(w.message("text ✓"))
    assert ext.decode(Frame(Opcode.TEXT, payload, rsv1=True)).data == "text ✓".encode()


def test_13_context_takeover_both_ways_shrinks_repeats() -> None:
    m = os.urandom(200).hex().encode()  # compressible only by reference to the previous message
    takeover = F.MessageWriter(D.Deflate())
    reset = F.MessageWriter(D.Deflate(server_no_context_takeover=True))
    first, second = len(takeover.message(m)), len(takeover.message(m))
    assert second < first // 4  # the second refers back to the first
    assert len(reset.message(m)) == len(reset.message(m)) == first  # no context: the same bytes each time
    # and what a reset compressor sends inflates with a fresh zlib each time (independently checked)
    for _ in range(2):
        payload = sframe(reset.message(m))[0][3]
        assert zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff") == m
    # the client's direction: with takeover the client's second message only refers back
    ext = ws_client_deflate()
    r = F.FrameReader(MAX, D.Deflate())
    one, two = client_deflated(ext, OP_BINARY, m), client_deflated(ext, OP_BINARY, m)
    assert len(two) < len(one) // 4
    assert r.feed(one + two) == [(OP_BINARY, m)] * 2
    # a reader that forgot the context between messages could not read `two`
    with pytest.raises(ProtocolError):
        F.FrameReader(MAX, D.Deflate()).feed(two)


@pytest.mark.parametrize("client_bits", [9, 10, 11, 12, 13, 14, 15])
def test_13_each_client_window_inflates(client_bits: int) -> None:
    ext = ws_client_deflate(client_bits=client_bits)
    r = F.FrameReader(MAX, D.Deflate())
    for m in MESSAGES:
        assert r.feed(client_deflated(ext, OP_BINARY, m)) == [(OP_BINARY, m)]


@pytest.mark.parametrize("op", [OP_PING, OP_PONG, OP_CLOSE])
def test_13_rsv1_on_a_control_frame_is_1002(op: int) -> None:
    refused(cframe(op, b"", rsv=4), 1002, deflate=D.Deflate())


def test_13_rsv1_on_a_continuation_is_1002() -> None:
    refused(cframe(OP_TEXT, b"a", fin=False) + cframe(OP_CONT, b"b", rsv=4), 1002, deflate=D.Deflate())


def test_13_rsv1_without_deflate_agreed_is_1002() -> None:
    refused(client_deflated(ws_client_deflate(), OP_TEXT, b"x"), 1002)


def test_13_invalid_deflate_data_is_1007() -> None:
    refused(cframe(OP_BINARY, b"\xff\xff\xff\xff", rsv=4), 1007, deflate=D.Deflate())


def test_13_invalid_utf8_inside_compressed_text_is_1007() -> None:
    refused(client_deflated(ws_client_deflate(), OP_TEXT, b"ok \xff"), 1007, deflate=D.Deflate())


def test_13_a_final_block_from_the_client_is_read() -> None:
    """RFC 7692 7.2.3.4 lets the sender end with a BFINAL block: read, then a fresh context."""
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    payload = c.compress(b"final block") + c.flush(zlib.Z_FINISH)
    r = F.FrameReader(MAX, D.Deflate())
    assert r.feed(cframe(OP_TEXT, payload, rsv=4)) == [(OP_TEXT, "final block")]
    assert r.feed(client_deflated(ws_client_deflate(client_nct=True), OP_TEXT, b"after")) == [(OP_TEXT, "after")]


def test_13_data_after_a_final_block_is_1007() -> None:
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    final = c.compress(b"the end") + c.flush(zlib.Z_FINISH)
    # the final block in a first fragment, then only empty fragments: fine
    ok = cframe(OP_TEXT, final, fin=False, rsv=4) + cframe(OP_CONT, b"", fin=False) + cframe(OP_CONT, b"")
    assert events(ok, deflate=D.Deflate()) == [(OP_TEXT, "the end")]
    # anything after it, in the same frame or a later one, is not deflate data
    refused(cframe(OP_TEXT, final + b"\x00", rsv=4), 1007, deflate=D.Deflate())
    refused(cframe(OP_TEXT, final, fin=False, rsv=4) + cframe(OP_CONT, b"\x00"), 1007, deflate=D.Deflate())
    refused(
        cframe(OP_TEXT, final + b"\x00\x00\xff\xff", fin=False, rsv=4) + cframe(OP_CONT, b""), 1007, deflate=D.Deflate()
    )


def test_13_inflated_size_limit() -> None:
    m = b"a" * 10000
    assert events(client_deflated(ws_client_deflate(), OP_BINARY, m), 10000, D.Deflate()) == [(OP_BINARY, m)]
    refused(client_deflated(ws_client_deflate(), OP_BINARY, m + b"a"), 1009, 10000, D.Deflate())
    # over several fragments
    refused(client_deflated(ws_client_deflate(), OP_BINARY, m + b"a", 4), 1009, 10000, D.Deflate())


def _bomb(gib: int = 1) -> bytes:
    """`gib` GiB of zeros, raw deflate, without compressing a GiB: after a full
    flush the compressor starts afresh, so each MiB of zeros is the same bytes."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = bytes(1 << 20)
    block = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    assert c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH) == block
    return block * (1024 * gib)


def test_13_deflate_bomb_is_1009_and_memory_stays_small() -> None:
    bomb = _bomb()
    assert zlib.decompressobj(-15).decompress(bomb[: len(bomb) // 1024], 1 << 21) == bytes(1 << 20)
    frame = cframe(OP_BINARY, bomb, rsv=4)
    limit = 16 << 20
    r = F.FrameReader(limit, D.Deflate())
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError) as e:
            for i in range(0, len(frame), 1 << 16):
                r.feed(frame[i : i + (1 << 16)])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert e.value.code == 1009
    # the frame buffered (~1 MiB) and the output up to the limit (16 MiB), never the GiB
    assert peak < 3 * limit, peak


def test_13_deflate_bomb_in_fragments_is_1009() -> None:
    bomb = _bomb()
    step = len(bomb) // 8
    frames = [
        cframe(OP_BINARY if i == 0 else OP_CONT, bomb[i : i + step], fin=i + step >= len(bomb), rsv=4 if i == 0 else 0)
        for i in range(0, len(bomb), step)
    ]
    with pytest.raises(ProtocolError) as e:
        fed_one_by_one(frames, 4 << 20, D.Deflate())
    assert e.value.code == 1009 and e.value.frame == 0  # type: ignore[attr-defined]


def test_13_compressed_wire_bytes_bounded() -> None:
    """A compressed frame larger than the limit (plus deflate's framing
    overhead) is refused from its header too."""
    refused(cframe(OP_BINARY, b"", length=1 << 30, rsv=4)[:14], 1009, 1 << 20, D.Deflate())


def test_13_incompressible_message_of_max_size_passes() -> None:
    m = os.urandom(1 << 20)
    assert events(client_deflated(ws_client_deflate(), OP_BINARY, m), 1 << 20, D.Deflate()) == [(OP_BINARY, m)]


# -- every byte boundary, and hypothesis properties ------------------------------------------

STREAMS = [
    cframe(OP_TEXT, "héllo".encode()) + cframe(OP_PING, b"p") + cframe(OP_BINARY, b"x" * 130),
    cframe(OP_TEXT, b"a\xe2", fin=False)
    + cframe(OP_PONG)
    + cframe(OP_CONT, b"\x82\xac")
    + cframe(OP_CLOSE, b"\x03\xe8ok"),
    cframe(OP_BINARY, bytes(300)) + cframe(OP_TEXT, b"\xc3", fin=False) + cframe(OP_CONT, b"\xa9"),
]


@pytest.mark.parametrize("stream", STREAMS)
def test_split_at_every_byte_boundary_gives_the_same_events(stream: bytes) -> None:
    whole = events(stream)
    for i in range(len(stream) + 1):
        r = F.FrameReader(MAX)
        assert r.feed(stream[:i]) + r.feed(stream[i:]) == whole, i
    r = F.FrameReader(MAX)
    assert [e for b in stream for e in r.feed(bytes([b]))] == whole


def test_split_at_every_byte_boundary_deflate() -> None:
    ext = ws_client_deflate()
    stream = client_deflated(ext, OP_TEXT, "compressed ✓ ".encode() * 20, 2) + client_deflated(
        ext, OP_BINARY, b"again" * 30
    )
    whole = events(stream, deflate=D.Deflate())
    assert len(whole) == 2
    for i in range(len(stream) + 1):
        r = F.FrameReader(MAX, D.Deflate())
        assert r.feed(stream[:i]) + r.feed(stream[i:]) == whole, i


def test_an_error_is_found_whatever_the_split() -> None:
    stream = cframe(OP_TEXT, b"ok") + cframe(OP_TEXT, b"\xce\xba\xff")
    for i in range(len(stream) + 1):
        r = F.FrameReader(MAX)
        with pytest.raises(ProtocolError) as e:
            r.feed(stream[:i])
            r.feed(stream[i:])
        assert e.value.code == 1007


message = st.one_of(
    st.tuples(st.just(OP_TEXT), st.text(max_size=300)), st.tuples(st.just(OP_BINARY), st.binary(max_size=300))
)


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, list[tuple]]:
    """Random messages, fragmented at random, with pings between fragments."""
    out, expect = [], []
    for op, data in draw(st.lists(message, max_size=6)):
        raw = data.encode() if isinstance(data, str) else data
        cuts = sorted(draw(st.lists(st.integers(0, len(raw)), max_size=3)))
        pieces = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]
        for i, p in enumerate(pieces):
            out.append(
                cframe(
                    op if i == 0 else OP_CONT, p, fin=i == len(pieces) - 1, mask=draw(st.binary(min_size=4, max_size=4))
                )
            )
            if draw(st.booleans()):
                out.append(cframe(OP_PING, b"%d" % i))
                expect.append((OP_PING, b"%d" % i))
        expect.append((op, data))
    return b"".join(out), expect


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams(), st.lists(st.integers(1, 64), min_size=1, max_size=50))
def test_property_any_split_gives_the_messages(case: tuple[bytes, list[tuple]], steps: list[int]) -> None:
    data, expect = case
    r = F.FrameReader(MAX)
    got, pos, i = [], 0, 0
    while pos < len(data):
        n = steps[i % len(steps)]
        got += r.feed(memoryview(data)[pos : pos + n])
        pos, i = pos + n, i + 1
    # ping events come out where they were sent, messages when complete
    assert [e for e in got if e[0] != OP_PING] == [e for e in expect if e[0] != OP_PING]
    assert sorted(e for e in got if e[0] == OP_PING) == sorted(e for e in expect if e[0] == OP_PING)


@settings(max_examples=100, deadline=None)
@given(st.lists(message, min_size=1, max_size=8), st.booleans(), st.booleans(), st.sampled_from([9, 12, 15]))
def test_property_deflate_round_trip_both_ways(msgs: list, client_nct: bool, server_nct: bool, bits: int) -> None:
    """Client->server: websockets compresses, we inflate. Server->client: we
    compress, websockets inflates. Context kept or reset as agreed."""
    ext = ws_client_deflate(client_nct=client_nct, server_nct=server_nct, server_bits=bits)
    d = D.Deflate(server_no_context_takeover=server_nct, client_no_context_takeover=client_nct, server_wbits=bits)
    r, w = F.FrameReader(MAX, d), F.MessageWriter(d)
    for op, data in msgs:
        raw = data.encode() if isinstance(data, str) else data
        assert r.feed(client_deflated(ext, op, raw)) == [(op, data)]
        [(_, rsv1, wop, payload)] = sframe(w.message(data))
        assert (rsv1, wop) == (1, op)
        assert ext.decode(Frame(Opcode(op), payload, rsv1=True)).data == raw


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.integers(1, 40))
def test_property_random_bytes_raise_only_protocol_error(data: bytes, step: int) -> None:
    for deflate in (None, D.Deflate()):
        r = F.FrameReader(1000, deflate)
        try:
            for i in range(0, len(data), step):
                for e in r.feed(data[i : i + step]):
                    assert e[0] in (OP_TEXT, OP_BINARY, OP_PING, OP_PONG, OP_CLOSE)
        except ProtocolError as e:
            assert e.code in (1002, 1007, 1009)


def websockets_reads(stream: bytes) -> tuple[list[tuple], int | None]:
    """What the websockets library's sans-I/O server makes of `stream`: the
    messages and control frames (its fragments joined), and the close code it
    fails with (None: no failure)."""
    from websockets.server import ServerProtocol

    proto = ServerProtocol(max_size=MAX)
    proto.receive_data(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: " + KEY + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    proto.send_response(proto.accept(proto.events_received()[0]))
    proto.receive_data(stream)
    out: list[tuple] = []
    parts: list[bytes] = []
    start = None
    for f in proto.events_received():
        if f.opcode in (Opcode.TEXT, Opcode.BINARY, Opcode.CONT):
            start = f.opcode if f.opcode is not Opcode.CONT else start
            parts.append(f.data)
            if f.fin:
                out.append((int(start), b"".join(parts)))
                parts = []
        elif f.opcode is Opcode.CLOSE:
            from websockets.frames import Close

            close = Close.parse(f.data)
            out.append((OP_CLOSE, close.code, close.reason))
        else:
            out.append((int(f.opcode), f.data))
    failed = proto.close_sent.code if proto.parser_exc is not None and proto.close_sent else None
    return out, failed


wire_frame = st.builds(
    lambda op, fin, rsv, masked, payload, code: cframe(
        op,
        (code + payload if op == OP_CLOSE and code is not None else payload)[: 140 if op >= 8 else None],
        fin=fin,
        rsv=rsv,
        masked=masked,
    ),
    op=st.sampled_from([OP_TEXT, OP_BINARY, OP_CONT, OP_CONT, OP_PING, OP_PONG, OP_CLOSE, 3, 0xB]),
    fin=st.booleans(),
    rsv=st.sampled_from([0, 0, 0, 0, 1, 2, 4]),
    masked=st.sampled_from([True, True, True, False]),
    payload=st.one_of(st.binary(max_size=10).map(lambda b: bytes(c & 0x7F for c in b)), st.just(b"a" * 130)),
    code=st.none()
    | st.sampled_from([1000, 1001, 1004, 1005, 1012, 1016, 3000, 4999, 5000]).map(lambda c: c.to_bytes(2, "big"))
    | st.just(b"\x03"),
)


@settings(max_examples=500, deadline=None)
@given(st.lists(wire_frame, max_size=8))
def test_property_same_verdict_as_websockets(frames: list[bytes]) -> None:
    """Random frame sequences (ASCII payloads: websockets' sans-I/O layer does
    not check text messages' UTF-8): the same messages, or the same close code."""
    stream = b"".join(frames)
    theirs, their_code = websockets_reads(stream)
    try:
        ours = events(stream)
    except ProtocolError as e:
        assert e.code == their_code, (e, their_code, theirs)
        return
    assert their_code is None, (their_code, ours)
    assert [(e[0], e[1].encode()) if e[0] == OP_TEXT else e for e in ours] == theirs


# -- the handshake -------------------------------------------------------------------------

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="


def request_headers(**over: bytes | None) -> list[tuple[bytes, bytes]]:
    h = {
        b"Host": b"server.example.com",
        b"Upgrade": b"websocket",
        b"Connection": b"Upgrade",
        b"Sec-WebSocket-Key": KEY,
        b"Sec-WebSocket-Version": b"13",
    }
    for k, v in over.items():
        name = k.replace("_", "-").encode()
        if v is None:
            h.pop(name, None)
        else:
            h[name] = v
    return list(h.items())


def test_handshake_accept_hash_rfc_example() -> None:
    assert H.accept_value(KEY) == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_handshake_valid_request() -> None:
    hs = H.check("GET", "1.1", request_headers())
    assert hs.key == KEY and hs.subprotocols == [] and hs.extensions is None
    assert H.is_upgrade("GET", request_headers())


def test_handshake_tokens_case_insensitive_and_in_lists() -> None:
    h = request_headers(Upgrade=b"WebSocket, foo/2", Connection=b"keep-alive, UPGRADE")
    assert H.is_upgrade("GET", h)
    H.check("GET", "HTTP/1.1", h)
    # "websockets" or "upgrades" are other tokens
    assert not H.is_upgrade("GET", request_headers(Upgrade=b"websockets"))
    assert not H.is_upgrade("GET", request_headers(Connection=b"upgrades"))
    assert not H.is_upgrade("GET", request_headers(Connection=None))
    assert not H.is_upgrade("GET", [(b"Host", b"x")])


def test_handshake_subprotocols_and_extensions() -> None:
    h = request_headers() + [
        (b"Sec-WebSocket-Protocol", b"chat, superchat"),
        (b"sec-websocket-protocol", b" v2.json "),
        (b"Sec-WebSocket-Extensions", b"permessage-deflate; client_max_window_bits"),
        (b"Sec-WebSocket-Extensions", b"x-foo"),
    ]
    hs = H.check("GET", "1.1", h)
    assert hs.subprotocols == ["chat", "superchat", "v2.json"]
    assert hs.extensions == "permessage-deflate; client_max_window_bits, x-foo"
    assert H.select_subprotocol(hs.subprotocols, ["v2.json", "superchat"]) == "superchat"
    assert H.select_subprotocol(hs.subprotocols, ["mqtt"]) is None


@pytest.mark.parametrize(
    "method,version,over,status,words",
    [
        ("POST", "1.1", {}, 400, "GET"),
        ("GET", "1.0", {}, 400, "HTTP/1.1"),
        ("GET", "1.1", {"Upgrade": None}, 400, "Upgrade"),
        ("GET", "1.1", {"Upgrade": b"h2c"}, 400, "Upgrade"),
        ("GET", "1.1", {"Connection": b"keep-alive"}, 400, "Connection"),
        ("GET", "1.1", {"Sec_WebSocket_Key": None}, 400, "Sec-WebSocket-Key"),
        ("GET", "1.1", {"Sec_WebSocket_Key": b"not base64!"}, 400, "Sec-WebSocket-Key"),
        ("GET", "1.1", {"Sec_WebSocket_Key": b"dGhlIHNh!bXBsZSBub25jZQ=="}, 400, "Sec-WebSocket-Key"),  # 16 bytes, lax
        ("GET", "1.1", {"Sec_WebSocket_Key": b"AAAAAAAAAAAAAAAAAAAAAAAAAAAA"}, 400, "16 bytes"),  # 21 bytes
        ("GET", "1.1", {"Sec_WebSocket_Key": b"AAAAAAAAAAAAAAAAAAAAAA"}, 400, "16 bytes"),  # unpadded
        ("GET", "1.1", {"Sec_WebSocket_Version": None}, 426, "missing"),
        ("GET", "1.1", {"Sec_WebSocket_Version": b"8"}, 426, "13"),
        ("GET", "1.1", {"Sec_WebSocket_Version": b"13, 8"}, 426, "13"),
    ],
)
def test_handshake_refusals(method: str, version: str, over: dict, status: int, words: str) -> None:
    h = request_headers(**over)
    with pytest.raises(H.HandshakeError) as e:
        H.check(method, version, h)
    assert e.value.status == status and words in e.value.message, e.value.message
    if status == 426:
        assert e.value.headers == [(b"Sec-WebSocket-Version", b"13")]


def test_handshake_duplicate_key_and_bad_subprotocol_are_400() -> None:
    with pytest.raises(H.HandshakeError, match="more than once"):
        H.check("GET", "1.1", request_headers() + [(b"Sec-WebSocket-Key", KEY)])
    with pytest.raises(H.HandshakeError, match="Sec-WebSocket-Protocol"):
        H.check("GET", "1.1", request_headers() + [(b"Sec-WebSocket-Protocol", b"a b")])


def test_response_101() -> None:
    out = H.response_101(KEY, "chat", "permessage-deflate", [(b"X-Extra", b"1")])
    assert out.startswith(b"HTTP/1.1 101 Switching Protocols\r\n") and out.endswith(b"\r\n\r\n")
    lines = out[:-4].split(b"\r\n")[1:]
    fields = {k.lower(): v for k, v in (line.split(b": ", 1) for line in lines)}
    assert fields == {
        b"upgrade": b"websocket",
        b"connection": b"Upgrade",
        b"sec-websocket-accept": b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
        b"sec-websocket-protocol": b"chat",
        b"sec-websocket-extensions": b"permessage-deflate",
        b"x-extra": b"1",
    }
    bare = H.response_101(KEY, None, None)
    assert b"Sec-WebSocket-Protocol" not in bare and b"Extensions" not in bare
    with pytest.raises(ValueError):
        H.response_101(KEY, None, None, [(b"X-Bad", b"a\r\nSet-Cookie: x")])
    with pytest.raises(ValueError):
        H.response_101(KEY, None, None, [(b"Bad Name", b"a")])


def test_refusal_is_a_whole_response() -> None:
    import h11

    for err in (
        H.HandshakeError(400, "Sec-WebSocket-Key missing"),
        H.HandshakeError(426, "v", [(b"Sec-WebSocket-Version", b"13")]),
    ):
        raw = H.refusal(err, b"uringserve")
        conn = h11.Connection(h11.CLIENT)
        conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
        conn.receive_data(raw)
        resp = conn.next_event()
        assert isinstance(resp, h11.Response) and resp.status_code == err.status
        headers = {k.lower(): v for k, v in resp.headers}
        assert headers[b"content-type"].startswith(b"text/plain") and headers[b"connection"] == b"close"
        assert headers[b"server"] == b"uringserve"
        body = conn.next_event()
        assert isinstance(body, h11.Data) and body.data == err.message.encode() + b"\n"
        assert isinstance(conn.next_event(), h11.EndOfMessage)
        if err.status == 426:
            assert headers[b"sec-websocket-version"] == b"13"


# -- negotiation (RFC 7692 7.1) --------------------------------------------------------------


def accepted_by_websockets(offer: str, response: str) -> PerMessageDeflate:
    """websockets' client, configured as the offer says, accepts our response."""
    [(name, params)] = parse_extension(response)
    assert name == "permessage-deflate"
    [(_, offered)] = [e for e in parse_extension(offer.lower()) if e[0] == "permessage-deflate"][:1]
    o = dict(offered)
    factory = ClientPerMessageDeflateFactory(
        server_no_context_takeover="server_no_context_takeover" in o,
        client_no_context_takeover="client_no_context_takeover" in o,
        server_max_window_bits=int(o["server_max_window_bits"]) if o.get("server_max_window_bits") else None,
        client_max_window_bits=(int(o["client_max_window_bits"]) if o["client_max_window_bits"] else True)
        if "client_max_window_bits" in o
        else None,
    )
    return factory.process_response_params(params, [])


@pytest.mark.parametrize(
    "offer,response",
    [
        ("permessage-deflate", "permessage-deflate; server_max_window_bits=12"),
        ("permessage-deflate; client_max_window_bits", "permessage-deflate; server_max_window_bits=12"),
        ("permessage-deflate; client_max_window_bits=10", "permessage-deflate; server_max_window_bits=12"),
        (
            "permessage-deflate; server_no_context_takeover",
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=12",
        ),
        (
            "permessage-deflate; client_no_context_takeover",
            "permessage-deflate; client_no_context_takeover; server_max_window_bits=12",
        ),
        ("permessage-deflate; server_max_window_bits=10", "permessage-deflate; server_max_window_bits=10"),
        ("permessage-deflate; server_max_window_bits=15", "permessage-deflate; server_max_window_bits=12"),
        ('permessage-deflate; server_max_window_bits="9"', "permessage-deflate; server_max_window_bits=9"),
        (
            "PerMessage-Deflate ; Server_No_Context_Takeover ;client_max_window_bits = 15",
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=12",
        ),
    ],
)
def test_negotiate_accepts(offer: str, response: str) -> None:
    got, d = D.negotiate(offer, True)
    assert got == response and d is not None
    accepted_by_websockets(offer, got)
    assert d.server_no_context_takeover == ("server_no_context_takeover" in offer.lower())


@pytest.mark.parametrize("bits", range(9, 16))
def test_negotiate_each_server_window_and_compress_with_it(bits: int) -> None:
    offer = f"permessage-deflate; server_max_window_bits={bits}"
    response, d = D.negotiate(offer, True)
    assert d is not None and d.server_wbits == min(bits, 12)
    ext = accepted_by_websockets(offer, response or "")
    w = F.MessageWriter(d)
    m = os.urandom(2000).hex().encode() * 3  # references across more than 2**9 bytes
    exact = zlib.decompressobj(-d.server_wbits)  # inflating with exactly the announced window works
    for _ in range(2):
        payload = sframe(w.message(m))[0][3]
        assert ext.decode(Frame(Opcode.BINARY, payload, rsv1=True)).data == m
        assert exact.decompress(payload + b"\x00\x00\xff\xff") == m


@pytest.mark.parametrize(
    "offer",
    [
        "permessage-deflate; server_max_window_bits=8",  # zlib cannot: declined, not answered with 9
        "permessage-deflate; server_max_window_bits",  # needs a value
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; server_max_window_bits=7",
        "permessage-deflate; server_max_window_bits=010",
        "permessage-deflate; client_max_window_bits=16",
        "permessage-deflate; client_max_window_bits=abc",
        "permessage-deflate; server_no_context_takeover=1",
        "permessage-deflate; client_no_context_takeover=true",
        "permessage-deflate; unknown_param",
        "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
        "permessage-deflate; client_max_window_bits; client_max_window_bits=10",
        "x-webkit-deflate-frame",
        "permessage-foo",
    ],
)
def test_negotiate_declines(offer: str) -> None:
    assert D.negotiate(offer, True) == (None, None)


@pytest.mark.parametrize(
    "offer,response",
    [
        # the first acceptable offer wins, the bad ones before it are declined
        (
            "permessage-deflate; server_max_window_bits=8, permessage-deflate; client_max_window_bits",
            "permessage-deflate; server_max_window_bits=12",
        ),
        (
            "x-foo; a=1, permessage-deflate; foo, permessage-deflate; server_no_context_takeover",
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=12",
        ),
        # several headers, joined by check(); empty list elements
        (
            ", permessage-deflate; server_max_window_bits=11 ,, permessage-deflate",
            "permessage-deflate; server_max_window_bits=11",
        ),
        ('x-foo; q="a,b;c", permessage-deflate', None),  # a quoted value must be a token
    ],
)
def test_negotiate_several_offers(offer: str, response: str | None) -> None:
    if response is None:
        with pytest.raises(H.HandshakeError) as e:
            D.negotiate(offer, True)
        assert e.value.status == 400
        return
    assert D.negotiate(offer, True)[0] == response


@pytest.mark.parametrize(
    "offer",
    [
        "permessage-deflate;",
        "permessage-deflate; =1",
        "permessage-deflate; a=",
        "permessage deflate",
        'permessage-deflate; a="unterminated',
        "permessage-deflate; a=b c",
        "@",
    ],
)
def test_negotiate_malformed_header_is_400(offer: str) -> None:
    with pytest.raises(H.HandshakeError) as e:
        D.negotiate(offer, True)
    assert e.value.status == 400 and "Sec-WebSocket-Extensions" in e.value.message


def test_negotiate_disabled_or_absent() -> None:
    assert D.negotiate("permessage-deflate", False) == (None, None)
    assert D.negotiate("permessage-deflate; junk=", False) == (None, None)  # off: not even parsed
    assert D.negotiate(None, True) == (None, None)
    assert D.negotiate("", True) == (None, None)


def test_negotiated_client_no_context_takeover_resets_the_inflater() -> None:
    _, d = D.negotiate("permessage-deflate; client_no_context_takeover", True)
    assert d is not None and d.client_no_context_takeover
    ext = ws_client_deflate(client_nct=True)
    r = F.FrameReader(MAX, d)
    for _ in range(3):
        assert r.feed(client_deflated(ext, OP_TEXT, b"again and again")) == [(OP_TEXT, "again and again")]


def test_deflate_rejects_window_8() -> None:
    with pytest.raises(ValueError):
        D.Deflate(server_wbits=8)
