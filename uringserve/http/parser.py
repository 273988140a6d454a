"""HTTP/1.1 request parsing, sans I/O: httptools (llhttp, strict mode) plus
the limits and request-smuggling defences llhttp leaves to the server.

Feed bytes with `feed()`; the parser calls its sink's `on_head(head)`,
`on_body(data)` and `on_end()` in order, and raises `HTTPError` with the
status to answer. After an HTTPError the connection must close: the
parser's position in the byte stream is no longer trustworthy.

llhttp already rejects (400): Content-Length with Transfer-Encoding,
duplicate Content-Length, non-numeric lengths, invalid chunk sizes and
chunk-size overflow, obs-fold, bare LF, whitespace before the colon,
control characters in values, and a Transfer-Encoding whose final coding is
not chunked. Added here: header block size and count (431), target length
(414), body size (413), HTTP versions other than 1.0/1.1 (505),
Transfer-Encoding on HTTP/1.0 (400, RFC 9112 §6.1), a missing or repeated
Host on HTTP/1.1 (400, §3.2), CONNECT (405).
"""

from __future__ import annotations

from typing import Any, Protocol

import httptools

from . import scan
from .config import HTTPConfig

# us_http_scan and its result bits (uringserve/_native/http_scan.h, through
# scan.py); tests set _scan to None to compare with llhttp alone
_scan: Any = scan.http_scan
_HEAD_LEN = scan.SCAN_HEAD_LEN_MASK
_TARGET_SHIFT = scan.SCAN_TARGET_SHIFT
_HEAD_METHOD = scan.SCAN_HEAD_METHOD
_HTTP10 = scan.SCAN_HTTP10


# the fewest bytes a head has besides its target and fields: "GET " " HTTP/1.1\r\n" "\r\n"
_MIN_LINE = 17


class HTTPError(Exception):
    """A request the server answers with `status` and then closes."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class HeaderBlock(bytes):
    """Header lines as received, each ending in CRLF, from a head the native
    recogniser (us_http_scan) accepted: so every line is `token ":" OWS
    value` with no trailing blanks, and a plain split reads it as llhttp
    does. Split only when asked: most handlers never look."""

    __slots__ = ()

    def pairs(self) -> list[tuple[bytes, bytes]]:
        out: list[tuple[bytes, bytes]] = []
        if self:
            for line in self[:-2].split(b"\r\n"):
                name, _, value = line.partition(b":")
                out.append((name.lower(), value.lstrip(b" \t")))
        return out


def scanned_head(make: Any, data: bytes, pos: int, r: int) -> Any:
    """What `make` (a head class) builds from the head us_http_scan found at
    data[pos:] (its result `r`): keep-alive, as the recogniser declines a
    last request; no body, no upgrade."""
    if r & _HEAD_METHOD:
        method = b"HEAD"
        start = pos + 5
    else:
        method = b"GET"
        start = pos + 4
    stop = start + ((r >> _TARGET_SHIFT) & 0xFFFF)
    return make(
        method,
        data[start:stop],
        "1.0" if r & _HTTP10 else "1.1",
        HeaderBlock(data[stop + 11 : pos + (r & _HEAD_LEN) - 2]),
        True,
    )


class RequestHead:
    __slots__ = (
        "method",
        "target",
        "version",
        "headers",
        "keep_alive",
        "expect_continue",
        "content_length",
        "chunked",
        "upgrade",
        "has_body",
    )

    def __init__(
        self,
        method: bytes,
        target: bytes,
        version: str,
        headers: list[tuple[bytes, bytes]],
        keep_alive: bool,
        expect_continue: bool = False,
        content_length: int | None = None,
        chunked: bool = False,
        upgrade: bool = False,
    ) -> None:
        self.method = method
        self.target = target
        self.version = version
        # names lower-cased, in order received
        self.headers = headers.pairs() if type(headers) is HeaderBlock else headers
        self.keep_alive = keep_alive
        self.expect_continue = expect_continue
        self.content_length = content_length
        self.chunked = chunked
        self.upgrade = upgrade
        self.has_body = chunked or bool(content_length)


class Sink(Protocol):
    # `head` is what the parser's head_class builds (RequestHead by default)
    def on_head(self, head: Any) -> None: ...
    def on_body(self, data: bytes) -> None: ...
    def on_end(self) -> None: ...

    # Optional: on_head(head) and on_end() in one call, for a head the
    # recogniser took (no body, no upgrade). A sink on the hot path saves
    # a call per request; the parser makes the pair itself for sinks without.
    # def on_request(self, head: RequestHead) -> None: ...


class RequestParser:
    """`head_class` builds what on_head() receives, from (method, target,
    version, headers, keep_alive, expect_continue, content_length, chunked,
    upgrade): RequestHead, or the server's own per-request object, so a
    request is one object and not three. `headers` is a list of (lower-cased
    name, value), or a HeaderBlock (its pairs() is that list) for a head the
    native recogniser took.

    Public state, read by HTTPProtocol's one-frame path (which takes a
    recognised head itself, exactly as feed() would): `at_boundary` (llhttp
    is between messages), `in_head` and `head_bytes` (a head in progress and
    its size so far; that path resets head_bytes as feed() does), and the
    limits `max_head`, `max_target`, `max_headers`, `head_class`."""

    def __init__(self, sink: Sink, config: HTTPConfig, head_class: Any = RequestHead) -> None:
        self._on_head = sink.on_head
        self._on_body = sink.on_body
        self._on_end = sink.on_end
        self._on_request = getattr(sink, "on_request", None) or self._head_then_end
        self.head_class = head_class
        # the limits, read once per request: attributes of self, not of a frozen dataclass
        self.max_head = config.max_header_bytes
        self.max_target = config.max_target_bytes
        self.max_headers = config.max_headers
        self._max_body = config.max_body_bytes
        self._p = httptools.HttpRequestParser(self)
        self.in_head = True  # between message begin (or idle) and headers complete
        self.head_bytes = 0
        self._url: list[bytes] = []
        self._url_len = 0
        self._fields_bytes = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._body_bytes = 0
        self.upgraded = False  # the byte stream after an Upgrade request is not HTTP/1.1
        self.at_boundary = True  # llhttp is between messages: the recogniser may take the next head
        self._keep_alive = True  # the last message llhttp read was not a last request
        self._ignore_rest = False  # an upgrade, a last request or stop(): nothing after it is read
        # the bytes after an upgrade request: the next protocol's (HTTPProtocol.switch_protocol)
        self.upgrade_rest = b""
        self._on_upgrade = getattr(sink, "on_upgrade", None)

    @property
    def head_started(self) -> bool:
        """Bytes of a request head have arrived and its end has not."""
        return self.in_head and self.head_bytes > 0

    def feed(self, data: bytes) -> None:
        while True:  # once per head that ends inside `data` and crosses the limit with what follows
            if self._ignore_rest:
                # after an upgrade the rest is another protocol's (kept for it);
                # after a last request it is not read at all. The connection closes after the response
                if self.upgraded and data:
                    self.upgrade_rest += data
                return
            if self.at_boundary and _scan is not None:
                # complete body-less GET/HEAD heads in the common form, in one C
                # call each; the first thing it declines, and all after it, is llhttp's
                n = len(data)
                pos = 0
                while pos < n:
                    r = _scan(data, pos, n, self.max_head, self.max_target, self.max_headers)
                    if r <= 0:
                        break
                    self._on_request(scanned_head(self.head_class, data, pos, r))
                    pos += r & _HEAD_LEN
                if pos:
                    self.head_bytes = 0  # blank lines llhttp skipped before these heads counted here
                    if pos == n:
                        return
                    data = data[pos:]
            if self.in_head:
                # httptools buffers partial header lines without bound: count the
                # head's bytes before it sees them. Counting all of `data` is
                # exact unless the head ends inside it, so only data that would
                # cross the limit is searched; then the head is fed alone and
                # what follows it is counted as the next head's, as if it had
                # arrived on its own (the same answer however bytes arrive).
                n = self.head_bytes + len(data)
                if n > self.max_head:
                    end = data.find(b"\r\n\r\n")
                    if end < 0 or self.head_bytes + end + 4 > self.max_head:
                        self._feed_to_limit(data)
                        return
                    cut = end + 4
                    self.head_bytes += cut
                    self._feed(data[:cut])
                    data = data[cut:]
                    if not data:
                        return
                    if self.in_head:  # that message ended with its head: the next one starts here
                        continue
                    self._feed(data)  # its body, and whatever follows it
                    return
                self.head_bytes = n
                self._feed(data)
                if not self.head_bytes and self.in_head and not self.at_boundary and not self._ignore_rest:
                    self._count_next_head(data)
                return
            self._feed(data)
            return

    def _count_next_head(self, data: bytes) -> None:
        """A head ended inside `data` and the next one began after it: count
        the next head's bytes here, as if they had arrived on their own (as
        the recogniser does, which counts each head from its first byte).
        llhttp's callbacks give no offsets, so this is done only in this
        case, after the call, not by searching every piece for a head's end.
        After a message with a body the next head is held by its fields'
        count (on_headers_complete), alike on both paths."""
        if self._bodied:
            return
        end = data.rfind(b"\r\n\r\n")  # the next head has no end yet: this is the last one's
        if end < 0:  # its end came partly in the last piece
            self.head_bytes = len(data.lstrip(b"\r\n"))
            return
        while end >= 2 and data[end - 2 : end + 2] == b"\r\n\r\n":
            end -= 2  # blank lines before the next head are its bytes, as in feed()
        self.head_bytes = len(data) - end - 4

    def stop(self) -> None:
        """Read nothing more: after a refused request (or a timeout) the
        parser's place in the byte stream means nothing; feed() ignores
        whatever still arrives."""
        self._ignore_rest = True

    def _feed_to_limit(self, data: bytes) -> None:
        """`data` may take the head past its limit: llhttp reads only the
        bytes the limit leaves, so a head that goes wrong before it gets
        llhttp's answer (400, 505, ...), as it would arriving in pieces;
        431 only if those bytes end no head."""
        room = self.max_head - self.head_bytes
        self.head_bytes = self.max_head
        self._feed(data[:room])
        if self.in_head and self.head_bytes == self.max_head:  # still the same head
            if self._url_len > self.max_target:  # what on_headers_complete answers first
                raise HTTPError(414, f"request target longer than {self.max_target} bytes")
            raise HTTPError(431, f"request head larger than {self.max_head} bytes")
        if not self.upgraded:
            self.feed(data[room:])
        else:
            self.upgrade_rest += data[room:]

    def _feed(self, data: bytes) -> None:
        try:
            self._p.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self.upgraded = self._ignore_rest = True
            self.upgrade_rest = bytes(data[exc.args[0] :])  # where the upgrade request ended
            if self._on_upgrade is not None:
                self._on_upgrade()
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__  # what a callback raised: an HTTPError, or the sink's own bug
            if cause is not None:
                raise cause from None
            raise
        except httptools.HttpParserError as exc:
            if self._ignore_rest:
                return  # bytes after a last request (RFC 9112 §9.6): never read, never answered
            msg = str(exc)
            if msg.startswith("Invalid HTTP version"):
                raise HTTPError(505, "only HTTP/1.0 and HTTP/1.1 are supported") from None
            raise HTTPError(400, f"malformed request: {msg}") from None

    def _head_then_end(self, head: Any) -> None:
        self._on_head(head)
        self._on_end()

    # -- httptools callbacks ----------------------------------------------------
    #: the request being parsed (by llhttp) is a HEAD: a refusal of it has no body
    head_request = False

    def on_url(self, url: bytes) -> None:
        if not self._url_len:  # the method is known once the target begins
            self.head_request = self._p.get_method() == b"HEAD"
        self._url_len += len(url)
        if self._url_len > self.max_target:
            # answered once llhttp has read the whole target (on_headers_complete):
            # raised here, on a piece of it, a bad byte further on would get
            # 414 or 400 depending on how the bytes arrived
            return
        self._url.append(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        # the head's size as far as its fields tell (OWS aside): feed() counts
        # raw bytes only up to the first head's end in each piece of data, so
        # a later head in the same piece is held to the limit by this count.
        # Both limits are answered in on_headers_complete, once llhttp has read
        # the whole head: httptools reports a field when the next one begins,
        # or earlier when a piece of data ends there, so refusing here would
        # answer 431 or llhttp's 400 (a bad byte further on) depending on how
        # the bytes arrived. Fields past the limit are not kept.
        self._fields_bytes += len(name) + len(value) + 4  # ": " and CRLF
        headers = self._headers
        if len(headers) < self.max_headers:
            headers.append((name.lower(), value))
        else:
            self._too_many = True

    _too_many = False
    _bodied = False  # the last head read announced a body

    def on_message_begin(self) -> None:
        self.at_boundary = False
        self.head_request = False

    def on_headers_complete(self) -> None:
        if self._url_len > self.max_target:
            raise HTTPError(414, f"request target longer than {self.max_target} bytes")
        if self._fields_bytes + self._url_len + _MIN_LINE > self.max_head:
            raise HTTPError(431, f"request head larger than {self.max_head} bytes")
        if self._too_many:
            raise HTTPError(431, f"more than {self.max_headers} header fields")
        p = self._p
        version = p.get_http_version()
        if version not in ("1.1", "1.0"):
            raise HTTPError(505, f"HTTP/{version} is not supported; use HTTP/1.1")
        method = p.get_method()
        if method == b"CONNECT":
            raise HTTPError(405, "CONNECT is not supported")
        headers = self._headers
        content_length = None
        chunked = expect = upgrade = False
        hosts = 0
        for name, value in headers:
            if name == b"content-length":
                content_length = int(value)  # llhttp checked the digits and duplicates
            elif name == b"transfer-encoding":
                if version == "1.0":
                    raise HTTPError(400, "Transfer-Encoding in an HTTP/1.0 request")
                chunked = True  # llhttp rejects any final coding but chunked
            elif name == b"host":
                hosts += 1
            elif name == b"expect":
                if value.lower() != b"100-continue":
                    raise HTTPError(417, f"unsupported expectation {value.decode('latin-1')!r}")
                expect = True
            elif name == b"upgrade":
                upgrade = True
        if version == "1.1" and hosts != 1:
            raise HTTPError(400, "an HTTP/1.1 request needs exactly one Host header")
        if content_length is not None and content_length > self._max_body:
            raise HTTPError(413, f"request body of {content_length} bytes is larger than {self._max_body} bytes")
        url = self._url[0] if len(self._url) == 1 else b"".join(self._url)
        self.in_head = False
        self.head_bytes = 0
        self._bodied = chunked or bool(content_length)
        self._keep_alive = keep_alive = p.should_keep_alive()
        self._on_head(
            self.head_class(
                method, url, version, headers, keep_alive, expect and version == "1.1", content_length, chunked, upgrade
            )
        )

    def on_body(self, data: bytes) -> None:
        self._body_bytes += len(data)
        if self._body_bytes > self._max_body:
            raise HTTPError(413, f"request body larger than {self._max_body} bytes")
        self._on_body(data)

    def on_message_complete(self) -> None:
        # the next message's state. After a last request (not keep-alive)
        # llhttp refuses whatever follows: the recogniser must not take it
        self.at_boundary = self._keep_alive
        self._ignore_rest = not self._keep_alive
        self.in_head = True
        self._url = []
        self._url_len = 0
        self._fields_bytes = 0
        self._headers = []
        self._too_many = False
        self._body_bytes = 0
        self._on_end()
