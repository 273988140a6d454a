"""The RESP request parser: random and mutated bytes, fed whole and in
random pieces. Invariants: no exception escapes feed() (a bad request is
`error`, answered then closed); the commands and the error are the same
however the bytes are split; every command is a non-empty list of bytes
whose bulk arguments respect max_bulk; what is held for an unfinished
command stays within the limits; after an error nothing more is parsed."""

from __future__ import annotations

import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from tests.fuzz.common import Carver, fuzz  # noqa: E402

parser_mod: Any = None
INLINE_MAX = 64 * 1024


def instrument() -> None:
    global parser_mod
    import uringserve.resp.parser as _p

    parser_mod = _p


def parse(data_pieces: list[bytes], max_bulk: int, max_args: int) -> tuple[list, str | None, Any]:
    p = parser_mod.RequestParser(max_bulk=max_bulk, max_args=max_args)
    out: list = []
    for piece in data_pieces:
        got = p.feed(piece)
        assert isinstance(got, list)
        if p.error is None:
            # held for the unfinished command: one bulk and its arguments, bounded
            assert p.pending <= max_args * (max_bulk + 2) + INLINE_MAX + len(piece), p.pending
        out.extend(got)
    return out, (str(p.error) if p.error is not None else None), p


def one_input(data: bytes) -> None:
    if parser_mod is None:
        instrument()
    c = Carver(data)
    max_bulk = (1, 8, 1 << 20)[c.byte() % 3]
    max_args = (1, 4, 1024)[c.byte() % 3]
    payload = c.rest()
    whole, error, p = parse([payload], max_bulk, max_args)
    split, error2, _ = parse(Carver(payload[:1] * 64 + payload).pieces(payload), max_bulk, max_args)
    assert whole == split, (whole, split)
    assert error == error2, (error, error2)
    for cmd in whole:
        assert cmd and all(isinstance(a, bytes) for a in cmd), cmd  # (max_args binds multibulk only, as in Redis)
    if error is not None:
        assert p.feed(b"*1\r\n$4\r\nPING\r\n") == [], "parsed after a protocol error"
        assert p.error.reply().startswith(b"-ERR Protocol error: ")


def main() -> None:
    fuzz(one_input, instrument)


if __name__ == "__main__":
    main()
