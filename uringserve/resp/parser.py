"""A sans-I/O RESP2 request parser: bytes in, commands (lists of bytes
arguments) out. Multibulk requests (`*N` then N `$len` bulks, what clients
send) and inline commands (a line split on spaces, with Redis's quoting:
what telnet and redis-cli's inline mode send). Limits and error texts are
Redis 7.0's (networking.c), so clients see the errors they know.

Written by hand: the RESP parsers on PyPI parse replies (the client side),
and hiredis's reader has no request mode or limits."""

from __future__ import annotations

# Redis's PROTO_INLINE_MAX_SIZE: a line (inline command, or a count) this
# long without its end is refused rather than buffered
INLINE_MAX = 64 * 1024
# redis.conf's proto-max-bulk-len default
MAX_BULK = 512 * 1024 * 1024
# Redis <= 6.2's multibulk limit (7.0 allows INT_MAX, which no server here could hold)
MAX_ARGS = 1024 * 1024


class ProtocolError(Exception):
    """The client broke the protocol: answered with `-ERR Protocol error: ...`, then closed."""

    def reply(self) -> bytes:
        return b"-ERR Protocol error: " + str(self).encode() + b"\r\n"


class RequestParser:
    """feed(data) returns the commands completed by `data`, in order. After a
    protocol error, feed() returns the commands before it and `error` is set:
    the caller answers those, then error.reply(), then closes; nothing more
    is parsed. Memory held is bounded by the limits: one partial command,
    after any feed() at most (max_args - 1) x max_bulk bytes of its
    arguments plus max(max_bulk + 1, max_inline) bytes not yet parsed (see
    `pending`). `max_inline` is Redis's PROTO_INLINE_MAX_SIZE, a constant
    there; settable here so that a fuzzer's small inputs reach it."""

    __slots__ = ("_parts", "_have", "_need", "_args", "_want", "_bulk", "max_bulk", "max_args", "max_inline", "error")

    def __init__(self, max_bulk: int = MAX_BULK, max_args: int = MAX_ARGS, max_inline: int = INLINE_MAX) -> None:
        if max_bulk < 1 or max_args < 1 or max_inline < 1:
            raise ValueError(
                f"max_bulk, max_args and max_inline must be at least 1, got {max_bulk}, {max_args}, {max_inline}"
            )
        self.max_bulk = max_bulk
        self.max_args = max_args
        self.max_inline = max_inline
        # the unparsed rest, as received: joined once `_need` bytes are there,
        # so a large bulk arriving in many pieces is copied once, not each time
        self._parts: list[bytes] = []
        self._have = 0
        self._need = 0
        self._args: list[bytes] = []  # of the multibulk command in progress
        self._want = 0  # its arguments still to come; 0: between commands
        self._bulk = -1  # the length of the bulk whose body is awaited, or -1
        self.error: ProtocolError | None = None

    @property
    def pending(self) -> int:
        """Bytes of an unfinished command held."""
        return self._have + sum(map(len, self._args))

    def feed(self, data: bytes) -> list[list[bytes]]:
        if self.error is not None:
            return []
        parts = self._parts
        if parts:
            parts.append(data)
            self._have += len(data)
            if self._have < self._need:
                return []
            buf = b"".join(parts)
            parts.clear()
        else:
            buf = data
        out: list[list[bytes]] = []
        pos = 0
        n = len(buf)
        try:
            while pos < n:
                if self._want:
                    pos = self._bulks(buf, pos, n, out)
                    if self._want:
                        break  # the rest has not arrived
                elif buf[pos] == 42:  # b"*"
                    nl = buf.find(b"\r\n", pos)
                    if nl < 0:
                        if n - pos > self.max_inline:
                            raise ProtocolError("too big mbulk count string")
                        break
                    count = _int(buf, pos + 1, nl)
                    if count is None or count > self.max_args:
                        raise ProtocolError("invalid multibulk length")
                    pos = nl + 2
                    if count > 0:
                        self._want = count
                        self._args = []
                    # *0 and *-1 are empty commands: skipped, as Redis does
                else:
                    nl = buf.find(b"\n", pos)
                    if nl < 0:
                        if n - pos > self.max_inline:
                            raise ProtocolError("too big inline request")
                        break
                    end = nl - 1 if nl > pos and buf[nl - 1] == 13 else nl
                    args = split_inline(buf[pos:end])
                    pos = nl + 1
                    if args:  # a blank line is skipped
                        out.append(args)
        except ProtocolError as exc:
            self.error = exc
            self._have = 0
            self._args = []
            return out
        if pos < n:
            parts.append(buf[pos:] if pos else buf)
            self._have = n - pos
            # a bulk's body: nothing to do until all of it is there; else any byte may end a line
            self._need = self._bulk + 2 if self._want and self._bulk >= 0 else 0
        else:
            self._have = 0
        return out

    def _bulks(self, buf: bytes, pos: int, n: int, out: list[list[bytes]]) -> int:
        args = self._args
        want = self._want
        while want:
            size = self._bulk
            if size < 0:
                if pos >= n:
                    break
                if buf[pos] != 36:  # b"$"
                    raise ProtocolError(f"expected '$', got '{chr(buf[pos])}'")
                nl = buf.find(b"\r\n", pos)
                if nl < 0:
                    if n - pos > self.max_inline:
                        raise ProtocolError("too big bulk count string")
                    break
                parsed = _int(buf, pos + 1, nl)
                if parsed is None or parsed < 0 or parsed > self.max_bulk:
                    raise ProtocolError("invalid bulk length")
                size = parsed
                pos = nl + 2
            end = pos + size
            if end + 2 > n:
                self._bulk = size  # its body has not all arrived
                break
            args.append(buf[pos:end])
            pos = end + 2  # Redis does not check the CRLF after a bulk either
            self._bulk = -1
            want -= 1
        self._want = want
        if not want:
            out.append(args)
            self._args = []
        return pos


def _int(buf: bytes, start: int, end: int) -> int | None:
    """A RESP length: optional '-', digits only, nothing else (Redis's string2ll)."""
    digits = buf[start:end]
    if not digits or len(digits) > 20:
        return None
    body = digits[1:] if digits[:1] == b"-" else digits
    if not body.isdigit() or (body[0] == 48 and len(body) > 1):  # no leading zeros
        return None
    return int(digits)


_ESCAPES = {ord("n"): b"\n", ord("r"): b"\r", ord("t"): b"\t", ord("b"): b"\b", ord("a"): b"\a"}
_HEX = b"0123456789abcdefABCDEF"
_SPACE = b" \t\n\r\v\f"


def split_inline(line: bytes) -> list[bytes]:
    """Redis's sdssplitargs: words split on whitespace; "double quotes" with
    \\n \\r \\t \\b \\a \\xHH escapes, 'single quotes' with \\' only; a
    closing quote must be followed by a space or the end."""
    if b'"' not in line and b"'" not in line:
        return line.split()
    args: list[bytes] = []
    i, n = 0, len(line)
    while True:
        while i < n and line[i] in _SPACE:
            i += 1
        if i >= n:
            return args
        cur = bytearray()
        quote = 0
        while True:
            if i >= n:
                if quote:
                    raise ProtocolError("unbalanced quotes in request")
                break
            c = line[i]
            if quote == 34:  # inside "..."
                if c == 92 and i + 3 < n and line[i + 1] == 120 and line[i + 2] in _HEX and line[i + 3] in _HEX:
                    cur.append(int(line[i + 2 : i + 4], 16))
                    i += 3
                elif c == 92 and i + 1 < n:
                    i += 1
                    cur += _ESCAPES.get(line[i], bytes((line[i],)))
                elif c == 34:
                    i = _closing_quote(line, i)
                    break
                else:
                    cur.append(c)
            elif quote == 39:  # inside '...'
                if c == 92 and i + 1 < n and line[i + 1] == 39:
                    cur.append(39)
                    i += 1
                elif c == 39:
                    i = _closing_quote(line, i)
                    break
                else:
                    cur.append(c)
            elif c in _SPACE:
                break
            elif c in (34, 39):
                quote = c
            else:
                cur.append(c)
            i += 1
        args.append(bytes(cur))


def _closing_quote(line: bytes, i: int) -> int:
    """Past the closing quote at `i`, which must end its word (as Redis requires)."""
    if i + 1 < len(line) and line[i + 1] not in _SPACE:
        raise ProtocolError("unbalanced quotes in request")
    return i + 1
