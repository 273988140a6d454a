"""The RESP request parser: random and mutated bytes, fed whole and in
random pieces, and multibulk commands the fuzzer shapes. Invariants: no
exception escapes feed() (a bad request is `error`, answered then closed);
the commands and the error are the same however the bytes are split;
every command is a non-empty list of bytes; shaped commands come back as
they were sent until the first that breaks a limit, which is refused with
Redis's error, so no multibulk argument is longer than max_bulk nor any
multibulk command longer than max_args; what is held for an unfinished
command stays within what the limits imply (RequestParser's docstring),
with limits small enough that the fuzzer's inputs reach them; after an
error nothing more is parsed."""

from __future__ import annotations

import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from tests.fuzz.common import Carver, fuzz  # noqa: E402

parser_mod: Any = None


def instrument() -> None:
    global parser_mod
    import uringserve.resp.parser as _p

    parser_mod = _p


def held_bound(max_bulk: int, max_args: int, max_inline: int) -> int:
    """The most an unfinished command may hold after a feed(): the arguments
    parsed so far, and the unparsed rest (a bulk's body, or a line)."""
    return (max_args - 1) * max_bulk + max(max_bulk + 1, max_inline)


def parse(pieces: list[bytes], max_bulk: int, max_args: int, max_inline: int) -> tuple[list, str | None, Any]:
    p = parser_mod.RequestParser(max_bulk=max_bulk, max_args=max_args, max_inline=max_inline)
    bound = held_bound(max_bulk, max_args, max_inline)
    out: list = []
    for piece in pieces:
        got = p.feed(piece)
        assert isinstance(got, list)
        if p.error is None:
            assert p.pending <= bound, (p.pending, bound)
        out.extend(got)
    return out, (str(p.error) if p.error is not None else None), p


def shaped(c: Carver, max_bulk: int, max_args: int) -> tuple[bytes, list[list[bytes]], str | None]:
    """Up to 4 multibulk commands whose sizes the fuzzer picks, some past
    the limits: their encoding, and what the parser must make of it (the
    commands before the first one over a limit, and that one's error)."""
    data = b""
    expected: list[list[bytes]] = []
    error = None
    for _ in range(c.byte() % 5):
        nargs = c.byte() % (max_args + 1) + 1  # max_args + 1 at most
        args = []
        for _ in range(nargs):
            size = c.byte() % (max_bulk + 3)  # max_bulk + 2 at most
            args.append((c.take(size) + b"x" * size)[:size])
        data += b"*%d\r\n" % nargs + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)
        if error is None:
            if nargs > max_args:
                error = "invalid multibulk length"
            elif any(len(a) > max_bulk for a in args):
                error = "invalid bulk length"
            else:
                expected.append(args)
    return data, expected, error


def one_input(data: bytes) -> None:
    if parser_mod is None:
        instrument()
    c = Carver(data)
    max_bulk = (1, 8, 64)[c.byte() % 3]
    max_args = (1, 4, 16)[c.byte() % 3]
    # the default, and lines short enough for a fuzz input to run past
    max_inline = (parser_mod.INLINE_MAX, 16, 64)[c.byte() % 3]

    stream, expected, expected_error = shaped(c, max_bulk, max_args)
    for pieces in ([stream], c.pieces(stream)):
        got, error, _ = parse(pieces, max_bulk, max_args, parser_mod.INLINE_MAX)
        assert (got, error) == (expected, expected_error), (got, error, expected, expected_error)
        assert all(len(cmd) <= max_args and all(len(a) <= max_bulk for a in cmd) for cmd in got)

    payload = c.rest()
    whole, error, p = parse([payload], max_bulk, max_args, max_inline)
    split, error2, _ = parse(Carver(payload[:1] * 64 + payload).pieces(payload), max_bulk, max_args, max_inline)
    if max_inline == parser_mod.INLINE_MAX:  # no line of a fuzz input reaches 64 KiB, however it is split
        assert whole == split, (whole, split)
        assert error == error2, (error, error2)
    else:
        # a line past max_inline in one read and not in another (as in Redis):
        # the same commands up to where one of them stopped on it
        assert whole[: len(split)] == split[: len(whole)], (whole, split)
        if (whole, error) != (split, error2):
            assert "too big" in str(error) + str(error2), (error, error2)
    for cmd in whole:
        assert cmd and all(isinstance(a, bytes) for a in cmd), cmd  # (max_args binds multibulk only, as in Redis)
    if error is not None:
        assert p.feed(b"*1\r\n$4\r\nPING\r\n") == [], "parsed after a protocol error"
        assert p.error.reply().startswith(b"-ERR Protocol error: ")


def main() -> None:
    fuzz(one_input, instrument)


if __name__ == "__main__":
    main()
