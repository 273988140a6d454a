"""uringserve.resp's request parser, sans I/O: every input is fed whole, byte
by byte and in random pieces, and must give the same commands; the limits
and protocol errors give Redis's texts and stop the parser."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uringserve.resp import ProtocolError, RequestParser, split_inline
from uringserve.resp.reply import array, bulk


def encode(argv: list[bytes]) -> bytes:
    return array(argv)


def feed_all(data: bytes, pieces: list[int] | None = None, **limits) -> tuple[list[list[bytes]], RequestParser]:
    p = RequestParser(**limits)
    out: list[list[bytes]] = []
    if pieces is None:
        out += p.feed(data)
    else:
        pos = 0
        for size in pieces:
            out += p.feed(data[pos : pos + size])
            pos += size
        out += p.feed(data[pos:])
    return out, p


def every_split(data: bytes, **limits) -> list[list[list[bytes]]]:
    """The commands from `data` whole, byte by byte, and split at each position in two."""
    results = [feed_all(data, **limits)[0], feed_all(data, [1] * len(data), **limits)[0]]
    results += [feed_all(data, [i], **limits)[0] for i in range(1, len(data))]
    return results


PIPELINE = (
    encode([b"SET", b"k", b"binary\r\n\x00value"])
    + b"PING\r\n"
    + b"\r\n"  # a blank line between commands is skipped
    + b"*0\r\n*-1\r\n"  # empty multibulks are skipped
    + b"SET q \"a\\x41\\n\" 'it\\'s'\n"  # inline, quoted, LF only
    + encode([b"GET", b""])
)
EXPECTED = [
    [b"SET", b"k", b"binary\r\n\x00value"],
    [b"PING"],
    [b"SET", b"q", b"aA\n", b"it's"],
    [b"GET", b""],
]


def test_a_pipeline_parses_the_same_however_it_arrives() -> None:
    for result in every_split(PIPELINE):
        assert result == EXPECTED


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.lists(st.binary(max_size=40), min_size=1, max_size=6), min_size=1, max_size=8),
    st.lists(st.integers(min_value=1, max_value=30), max_size=40),
)
def test_any_multibulk_commands_round_trip_in_any_pieces(commands: list[list[bytes]], pieces: list[int]) -> None:
    data = b"".join(encode(c) for c in commands)
    out, p = feed_all(data, pieces)
    assert out == commands
    assert p.error is None and p.pending == 0


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.lists(st.integers(min_value=1, max_value=20), max_size=30))
def test_garbage_never_raises_and_pieces_do_not_change_the_outcome(data: bytes, pieces: list[int]) -> None:
    whole, p1 = feed_all(data)
    split, p2 = feed_all(data, pieces)
    assert whole == split
    assert (p1.error is None) == (p2.error is None)
    if p1.error is not None:
        assert p1.error.reply() == p2.error.reply()
        assert p1.error.reply().startswith(b"-ERR Protocol error: ")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"*abc\r\n", "invalid multibulk length"),
        (b"*007\r\n", "invalid multibulk length"),  # no leading zeros (Redis's string2ll)
        (b"*2\r\nGET\r\n", "expected '$', got 'G'"),
        (b"*2\r\n$3\r\nGET\r\n$-5\r\n", "invalid bulk length"),
        (b"*2\r\n$3\r\nGET\r\n$abc\r\n", "invalid bulk length"),
        (b"*2\r\n$3\r\nGET\r\n$+3\r\n", "invalid bulk length"),
        (b'SET q "a b\r\n', "unbalanced quotes in request"),
        (b'SET q "a"b\r\n', "unbalanced quotes in request"),  # a closing quote must end the word
        (b"SET q 'a\r\n", "unbalanced quotes in request"),
    ],
)
def test_protocol_errors_are_redis_texts_after_the_commands_before_them(data: bytes, message: str) -> None:
    for pieces in (None, [1] * len(data)):
        out, p = feed_all(b"PING\r\n" + data + b"PING\r\n", pieces)
        assert out == [[b"PING"]]  # before the error: answered; after it: nothing
        assert p.error is not None and p.error.reply() == f"-ERR Protocol error: {message}\r\n".encode()
        assert p.feed(b"PING\r\n") == []  # stopped
        assert p.pending == 0


def test_limits_on_bulk_length_and_argument_count() -> None:
    out, p = feed_all(encode([b"SET", b"k", b"x" * 10]), max_bulk=10)
    assert out == [[b"SET", b"k", b"x" * 10]] and p.error is None  # at the limit: fine
    out, p = feed_all(encode([b"SET", b"k", b"x" * 11]), max_bulk=10)
    assert out == [] and str(p.error) == "invalid bulk length"  # refused at its header, before its body
    out, p = feed_all(b"*3\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n", max_args=3)
    assert out == [[b"a", b"b", b"c"]]
    out, p = feed_all(b"*4\r\n", max_args=3)
    assert str(p.error) == "invalid multibulk length"
    with pytest.raises(ValueError):
        RequestParser(max_bulk=0)


@pytest.mark.parametrize(
    ("head", "message"),
    [(b"", "too big inline request"), (b"*", "too big mbulk count string"), (b"*1\r\n$", "too big bulk count string")],
)
def test_a_line_without_its_end_is_refused_past_64k_not_buffered(head: bytes, message: str) -> None:
    line_so_far = len(head) - head.rfind(b"\n") - 1  # the unfinished line's bytes in `head`
    p = RequestParser()
    p.feed(head)
    for _ in range(4):
        p.feed(b"1" * ((65536 - line_so_far) // 4))
    p.feed(b"1" * ((65536 - line_so_far) % 4))
    assert p.error is None  # 64 KiB exactly: still waiting, as Redis does
    p.feed(b"1")
    assert str(p.error) == message and p.pending == 0


def test_a_large_bulk_in_many_pieces_is_joined_once() -> None:
    """A 1 MiB bulk in 1,000-byte pieces: each piece is kept as it came
    until the bulk is all there, then joined once (joining on every piece
    would copy half a gigabyte). Counted where the joining happens: the
    parts held grow by one per piece, never collapsing to one before the end."""
    value = bytes(range(256)) * 4096  # 1 MiB
    data = encode([b"SET", b"k", value])
    p = RequestParser()
    out = []
    head = data.index(value)  # "*3 $3 SET $1 k $1048576": parsed with the first piece
    for n, i in enumerate(range(0, len(data), 1000), start=1):
        out += p.feed(data[i : i + 1000])
        assert p.pending <= len(data)
        if i + 1000 < len(data):  # the bulk's end has not come: nothing joined yet
            assert len(p._parts) == n, (n, len(p._parts))
            assert p._have == i + 1000 - head
    assert out == [[b"SET", b"k", value]]
    assert p._parts == [] and p.pending == 0


def test_lengths_longer_than_20_characters_are_refused_as_redis() -> None:
    """string2ll takes at most 20 characters: a longer count is a protocol
    error, not a negative count (which would be skipped as *-1 is)."""
    p = RequestParser()
    assert p.feed(b"*-10000000000000000000\r\nPING\r\n") == []
    assert str(p.error) == "invalid multibulk length"
    p = RequestParser()
    assert p.feed(b"*1\r\n$-10000000000000000000\r\nPING\r\n") == []
    assert str(p.error) == "invalid bulk length"


def test_a_parser_may_take_one_argument_at_most() -> None:
    p = RequestParser(max_args=1)
    assert p.feed(b"*1\r\n$4\r\nPING\r\n*2\r\n$4\r\nECHO\r\n$1\r\nx\r\n") == [[b"PING"]]
    assert str(p.error) == "invalid multibulk length"
    with pytest.raises(ValueError, match="must be at least 1, got 1, 0, 1"):
        RequestParser(max_bulk=1, max_args=0, max_inline=1)


def test_inline_splitting_as_redis() -> None:
    assert split_inline(b"  GET   k  ") == [b"GET", b"k"]
    assert split_inline(b'SET k "\\x4a\\t\\"z"') == [b"SET", b"k", b'J\t"z']
    assert split_inline(b"SET k 'a\\nb'") == [b"SET", b"k", b"a\\nb"]  # no escapes in single quotes
    assert split_inline(b'a"b c" d') == [b"ab c", b"d"]  # a quote may open mid-word
    assert split_inline(b'SET k ""') == [b"SET", b"k", b""]
    assert split_inline(b'SET k "\\xz1\\x4g"') == [b"SET", b"k", b"xz1x4g"]  # not \xHH: a plain x
    for bad in (b'"\\"', b'a"b c"d'):
        with pytest.raises(ProtocolError, match="unbalanced quotes"):
            split_inline(bad)


def test_replies_encode_binary_values() -> None:
    assert bulk(b"a\r\nb") == b"$4\r\na\r\nb\r\n"
    assert bulk(None) == b"$-1\r\n"
    assert array([b"x", None]) == b"*2\r\n$1\r\nx\r\n$-1\r\n"


def test_the_line_limit_can_be_set_and_bounds_what_is_held() -> None:
    """max_inline (Redis's constant 64 KiB by default): 16 bytes of a line
    without its end are held, the 17th is refused; a bulk's body is not a
    line (max_bulk bounds it)."""
    for head in (b"", b"*", b"*1\r\n$"):
        p = RequestParser(max_inline=16)
        p.feed(head + b"1" * (16 - len(head) + head.rfind(b"\n") + 1))
        assert p.error is None and p.pending <= 16
        p.feed(b"1")
        assert p.error is not None and str(p.error).startswith("too big"), head
    p = RequestParser(max_bulk=100, max_inline=16)
    assert p.feed(b"*1\r\n$100\r\n" + b"x" * 100 + b"\r\n") == [[b"x" * 100]]
    with pytest.raises(ValueError, match="max_inline must be at least 1"):
        RequestParser(max_inline=0)
