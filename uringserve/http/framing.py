"""Response framing, sans I/O: status lines, header blocks, chunked coding,
and the Date header cached per second."""

from __future__ import annotations

import time
from email.utils import formatdate
from http import HTTPStatus
from typing import Any

from .parser import HTTPError

_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
_STATUS_LINES: dict[int, bytes] = {}
# [the time the cached Date header goes stale, the header]: hot paths read
# it inline (DATE[1] after checking DATE[0]) instead of calling date_header()
DATE: list = [0.0, b""]


def status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        if not 100 <= status <= 999:
            raise ValueError(f"HTTP status must be a 3-digit number, got {status!r}")
        line = b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b""))
        _STATUS_LINES[status] = line
    return line


def date_header() -> bytes:
    """`Date: ...\\r\\n`, formatted once per second."""
    if time.time() >= DATE[0]:
        refresh_date()
    return DATE[1]


def refresh_date() -> None:
    now = int(time.time())
    DATE[1] = b"Date: " + formatdate(now, usegmt=True).encode() + b"\r\n"
    DATE[0] = now + 1.0


def body_allowed(status: int) -> bool:
    """Whether a response with this status carries a body (HEAD aside)."""
    return status >= 200 and status != 204 and status != 304


def whole_head(status: int, block: bytes, body: bytes) -> tuple[bytes, bytes]:
    """The status line, headers and Content-Length of a response whose body is
    known, and the body to send (none for 1xx, 204 and 304). Once per ASGI
    response: status_line() and body_allowed() are inline."""
    line = _STATUS_LINES.get(status) or status_line(status)
    if status >= 200 and status != 204 and status != 304:
        return b"%s%sContent-Length: %d\r\n" % (line, block, len(body)), body
    return line + block, b""


# a prepared body at least this long is written from one bytes object kept
# per Date and connection tail (whole_response()), not joined per request
WHOLE_MIN = 16384


def whole_response(resp: Any, tail: bytes) -> bytes:
    """Head, Date, `tail` and body of a prepared Response with a body of at
    least WHOLE_MIN bytes, joined once per Date value (a second) and tail
    and kept on the Response. The ring sends a bytes object of 16 KiB or
    more in place, so a large cached response (a static file up to 64 KiB)
    is written with no copy in Python; joining it per request was a copy
    of the body per request (a 64 KiB static file: 19.7 -> 18.2 us of
    server CPU per request). A Response made per request pays the join
    once, as before."""
    date = DATE[1]
    w = resp._whole
    if w and w[0] is date and w[1] == tail:
        return w[2]
    data = b"".join((resp._head, date, tail, resp._wire))
    resp._whole = (date, tail, data)
    return data


# what a server frames itself, by length first: most names are cut by len() alone
FRAMING_HEADERS = frozenset((b"content-length", b"transfer-encoding", b"connection"))
_FRAMING_LENGTHS = frozenset(len(n) for n in FRAMING_HEADERS)


def encode_headers(headers: Any, framing: list[tuple[bytes, bytes]] | None = None) -> bytes:
    """The header lines, refusing what could split the response: a CR or LF
    anywhere (one scan of the whole block), a ':' in or an empty name. With
    a `framing` list, FRAMING_HEADERS are not encoded but appended to it as
    (lower-cased name, value): the server writes framing itself. One pass,
    as ASGI's http.response.start needs on every response."""
    lines = []
    for name, value in headers:
        if framing is not None and len(name) in _FRAMING_LENGTHS:
            lname = name.lower()
            if lname in FRAMING_HEADERS:
                framing.append((lname, value))
                continue
        if not name or b":" in name:
            raise ValueError(f"invalid response header {name!r}: {value!r}")
        lines.append(b"%s: %s\r\n" % (name, value))
    block = b"".join(lines)
    if block.count(b"\n") != len(lines) or block.count(b"\r") != len(lines):
        bad = next((n, v) for n, v in headers if b"\r" in n + v or b"\n" in n + v)
        raise ValueError(f"invalid response header {bad[0]!r}: {bad[1]!r}")
    return block


def close_option(value: bytes) -> bool:
    """Whether a Connection field's value lists the `close` option (RFC 9110
    §7.6.1: a comma-separated list of case-insensitive tokens)."""
    return any(t.strip(b" \t").lower() == b"close" for t in value.split(b","))


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data) if data else b""


LAST_CHUNK = b"0\r\n\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def last_chunk(trailers: bytes) -> bytes:
    """The last chunk of a chunked body with its trailer section (`trailers`:
    encoded header lines, as encode_headers() makes them)."""
    return b"0\r\n" + trailers + b"\r\n"


def encode_trailers(headers: Any) -> bytes:
    """Trailer fields, refused as encode_headers() refuses a header, and the
    fields that frame a message too: a Content-Length or Transfer-Encoding
    after the body cannot frame it (RFC 9110 6.5.1), and one a client did
    take would be a smuggling vector, so they are the app's error."""
    framing: list[tuple[bytes, bytes]] = []
    block = encode_headers(headers, framing)
    if framing:
        raise ValueError(f"{framing[0][0].decode('latin-1')} cannot be a trailer field")
    return block


def accepts_trailers(headers: Any) -> bool:
    """Whether a request's TE fields list `trailers` (RFC 9110 10.1.4: a
    comma-separated list of codings, each with optional `;q=` parameters):
    the client takes trailer fields in a chunked response. `headers`: the
    request's (name, value) pairs, names lower-cased."""
    for name, value in headers:
        if name == b"te" and any(t.split(b";", 1)[0].strip(b" \t").lower() == b"trailers" for t in value.split(b",")):
            return True
    return False


def early_hints(links: Any) -> bytes:
    """A 103 Early Hints response (RFC 8297) with one Link field per value in
    `links` (bytes, or str as latin-1); empty when there are none. A CR or LF
    in a value is refused, as in encode_headers()."""
    values = [v.encode("latin-1") if isinstance(v, str) else bytes(v) for v in links]
    if not values:
        return b""
    return b"HTTP/1.1 103 Early Hints\r\n" + encode_headers([(b"Link", v) for v in values]) + b"\r\n"


HANDLER_FAILED = "the handler failed"  # the 500's message when a handler raised before its response began


def failure_of(exc: BaseException) -> tuple[int, str]:
    """The status and message of the error response a handler that raised
    `exc` before its response began is answered with: an HTTPError's own
    (a body over the limit, ...), else 500. Exchange.fail() writes it and
    the access log counts it from this one decision."""
    if isinstance(exc, HTTPError):
        return exc.status, exc.message
    return 500, HANDLER_FAILED


def error_body(status: int, message: str) -> bytes:
    """The body of error_response() (what the access log counts as sent)."""
    return f"{status} {HTTPStatus(status).phrase}: {message}\n".encode() if status in _REASONS else message.encode()


def error_response(
    status: int, message: str, server: bytes | None, close: bool = True, head_request: bool = False
) -> bytes:
    """A complete plain-text error response; to a HEAD request, without its body."""
    body = error_body(status, message)
    head = [status_line(status), date_header()]
    if server:
        head.append(server)
    head.append(b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n" % len(body))
    if close:
        head.append(b"Connection: close\r\n")
    head.append(b"\r\n")
    return b"".join(head) + (b"" if head_request else body)
