"""RESP reply encoding: RESP2, and the RESP3 forms a client that said
HELLO 3 gets for nulls and maps (everything else is written the same)."""

from __future__ import annotations

from collections.abc import Iterable

OK = b"+OK\r\n"
NULL = b"$-1\r\n"
NULL_ARRAY = b"*-1\r\n"
NULL3 = b"_\r\n"  # RESP3's one null
EMPTY_ARRAY = b"*0\r\n"
ZERO = b":0\r\n"
ONE = b":1\r\n"


def simple(text: str | bytes) -> bytes:
    t = text.encode() if isinstance(text, str) else text
    if b"\r" in t or b"\n" in t:
        raise ValueError("a simple string cannot hold CR or LF")
    return b"+" + t + b"\r\n"


def error(text: str) -> bytes:
    """`text` starts with its code (ERR, WRONGTYPE, ...); line breaks become spaces, as Redis does."""
    return b"-" + text.replace("\r", " ").replace("\n", " ").encode() + b"\r\n"


def integer(n: int) -> bytes:
    return b":%d\r\n" % n


def bulk(value: bytes | None, null: bytes = NULL) -> bytes:
    if value is None:
        return null
    return b"$%d\r\n%s\r\n" % (len(value), value)


def array(items: Iterable[bytes | None] | None, null: bytes = NULL) -> bytes:
    """An array of bulk strings (None: a null bulk); None itself: a null array.
    `null`: NULL3 for a RESP3 client."""
    if items is None:
        return NULL_ARRAY if null is NULL else null
    items = list(items)
    return b"*%d\r\n" % len(items) + b"".join(null if v is None else b"$%d\r\n%s\r\n" % (len(v), v) for v in items)


def raw_array(encoded: list[bytes]) -> bytes:
    """An array of already encoded replies (nested arrays, integers)."""
    return b"*%d\r\n" % len(encoded) + b"".join(encoded)


def raw_map(pairs: list[bytes], resp3: bool) -> bytes:
    """Encoded key, value, key, value...: a RESP3 map, or a flat RESP2 array."""
    return (b"%%%d\r\n" % (len(pairs) // 2) if resp3 else b"*%d\r\n" % len(pairs)) + b"".join(pairs)
