"""The native handler API's Request and Response model."""

from __future__ import annotations

from collections.abc import AsyncIterable, Iterable
from typing import Any
from urllib.parse import unquote

from . import framing
from .body import ClientDisconnected
from .framing import encode_headers
from .parser import HeaderBlock, HTTPError
from .protocol import Exchange


class Headers:
    """Request headers: case-insensitive lookup over the raw (name, value) pairs.
    Built lazily: from a head the recogniser took, the block is split only
    when a name that may be in it is asked for, so looking up absent headers
    (a static file's Range and If-* validators) costs one search."""

    __slots__ = ("_raw", "_map")

    def __init__(self, raw: list[tuple[bytes, bytes]] | HeaderBlock) -> None:
        self._raw = raw
        self._map: dict[str, str] | None = None

    @property
    def raw(self) -> list[tuple[bytes, bytes]]:
        """(lower-cased name, value) pairs, in the order received."""
        raw = self._raw
        if type(raw) is HeaderBlock:
            self._raw = raw = raw.pairs()
        return raw  # type: ignore[return-value]  # a list now: type() is, not isinstance(), on this path

    def _dict(self) -> dict[str, str]:
        if self._map is None:
            m: dict[str, str] = {}
            for name, value in self.raw:
                k = name.decode("latin-1")
                v = value.decode("latin-1")
                m[k] = f"{m[k]}, {v}" if k in m else v
            self._map = m
        return self._map

    def get(self, name: str, default: str | None = None) -> str | None:
        name = name.lower()
        if (
            self._map is None
            and type(self._raw) is HeaderBlock
            and (not name.isascii() or name.encode() not in self._raw.lower())
        ):
            return default  # not even a substring of the block: not a field name in it
        return self._dict().get(name, default)

    def has_any(self, names: tuple[bytes, ...]) -> bool:
        """Whether any of `names` (lower-case field names) may be present:
        False means none is. For a head the recogniser took, one search of
        the block per name and no split -- a static file asks for its
        validators and Range on every request and rarely finds one."""
        raw = self._raw
        if self._map is None and type(raw) is HeaderBlock:
            low = raw.lower()
            for n in names:  # a loop, not any(): no generator on the hot path
                if n in low:
                    return True
            return False
        m = self._dict()
        return any(n.decode("latin-1") in m for n in names)

    def __getitem__(self, name: str) -> str:
        return self._dict()[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._dict()

    def items(self) -> Iterable[tuple[str, str]]:
        return self._dict().items()

    def __repr__(self) -> str:
        return f"Headers({self._dict()!r})"


class Request(Exchange):
    """One HTTP request, as the native API's handlers see it: `method`,
    `http_version` and percent-decoded `path` are text; `target`,
    `raw_path` and `query_string` bytes as sent. It is the server's
    exchange object itself (the response state is the server's), so a
    request costs one object."""

    _headers_view: Headers | None = None
    # (client, scheme, server) a trusted proxy's headers gave (http/forwarded.py); None: the connection's
    seen_as: tuple[Any, str, Any] | None = None

    @property
    def client(self) -> Any:
        """(host, port) of the client: the peer, or what a trusted proxy said (--proxy-headers)."""
        seen = self.seen_as
        return self.conn.client if seen is None else seen[0]

    @property
    def scheme(self) -> str:
        """ "http" or "https" (TLS, or what a trusted proxy said)."""
        seen = self.seen_as
        return self.conn.scheme if seen is None else seen[1]

    @property
    def server(self) -> Any:
        """(host, port) the request was addressed to: the listener's, or a trusted proxy's X-Forwarded-Host/-Port."""
        seen = self.seen_as
        return self.conn.server_addr if seen is None else seen[2]

    @property
    def http_version(self) -> str:
        return self.version

    @property
    def headers(self) -> Headers:
        view = self._headers_view
        if view is None:
            self._headers_view = view = Headers(self._headers)  # a list, or a HeaderBlock split when needed
        return view

    @property
    def path(self) -> str:
        return unquote(self.raw_path.decode("latin-1"), errors="surrogateescape")

    @property
    def content(self) -> bytes:
        """The whole body, for plain-function handlers (they run once it is in)."""
        if not self.body_in.done:
            raise RuntimeError("the request body is still arriving: use `await request.body()`")
        return self.body_in.read_now()

    async def body(self) -> bytes:
        """The whole body, once it has arrived."""
        parts: list[bytes] = []
        while True:
            chunk = await self.body_in.next_chunk()
            if not chunk:
                return b"".join(parts)
            parts.append(chunk)

    async def stream(self) -> Any:
        """The body chunk by chunk, as it arrives."""
        while True:
            chunk = await self.body_in.next_chunk()
            if not chunk:
                return
            yield chunk

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.raw_path.decode('latin-1')!r}>"


def _prepare_headers(
    status: int, headers: Any, content_type: str | None
) -> tuple[list[tuple[bytes, bytes]], bytes, bool]:
    """A response's (name, value) pairs, their encoded block, and whether
    they ask to close the connection, made once when the response is made:
    a bad status or header fails here, and a response returned many times
    costs nothing per request. Framing headers are the server's to write
    (as for ASGI apps): a handler's Content-Length / Transfer-Encoding are
    dropped, and its Connection is not copied but honoured (`close` ends
    the connection after this response; the server writes the header)."""
    framing.status_line(status)
    out = []
    if headers:
        # a list is the common case; hasattr() on one raises and catches an AttributeError
        for name, value in headers if isinstance(headers, (list, tuple)) else headers.items():
            out.append(
                (
                    name.encode("latin-1") if isinstance(name, str) else bytes(name),
                    value.encode("latin-1") if isinstance(value, str) else bytes(value),
                )
            )
    if content_type is not None and not any(n.lower() == b"content-type" for n, _ in out):
        out.append((b"Content-Type", content_type.encode("latin-1")))
    set_aside: list[tuple[bytes, bytes]] = []
    block = encode_headers(out, set_aside)
    if set_aside:
        out = [(n, v) for n, v in out if n.lower() not in framing.FRAMING_HEADERS]
    return out, block, any(n == b"connection" and framing.close_option(v) for n, v in set_aside)


class Response:
    """A complete response. `body` may be bytes or str (sent as UTF-8).
    Immutable: its status line, headers and Content-Length are encoded here,
    once, so a response made at import time costs no encoding per request."""

    __slots__ = ("_status", "_body", "_headers", "block", "_head", "_wire", "_close", "_whole")

    def __init__(
        self,
        body: bytes | str = b"",
        status: int = 200,
        headers: Any = None,
        content_type: str | None = "text/plain; charset=utf-8",
    ) -> None:
        self._status = status
        self._body = body.encode() if isinstance(body, str) else bytes(body)
        self._headers, self.block, self._close = _prepare_headers(status, headers, content_type)
        self._head, self._wire = framing.whole_head(status, self.block, self._body)
        # None: joined per request; a tuple: written whole (framing.whole_response)
        self._whole: tuple = () if len(self._wire) >= framing.WHOLE_MIN else None  # type: ignore[assignment]

    @property
    def status(self) -> int:
        return self._status

    @property
    def body(self) -> bytes:
        return self._body

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        """The headers as sent (framing headers are the server's)."""
        return list(self._headers)

    @property
    def close(self) -> bool:
        """Its headers said `Connection: close`: the connection ends after it."""
        return self._close

    def __repr__(self) -> str:
        return f"<Response {self._status} {len(self._body)} bytes>"


class StreamingResponse:
    """A response whose body comes from an (async) iterable of bytes: sent
    chunked to HTTP/1.1 clients, or with `content_length` when known."""

    __slots__ = ("status", "content", "headers", "block", "content_length", "close")

    def __init__(
        self,
        content: AsyncIterable[bytes] | Iterable[bytes],
        status: int = 200,
        headers: Any = None,
        content_type: str | None = "application/octet-stream",
        content_length: int | None = None,
    ) -> None:
        self.status = status
        self.content = content
        self.content_length = content_length
        self.headers, self.block, self.close = _prepare_headers(status, headers, content_type)


class FileResponse:
    """`count` bytes of an open file from `offset`, sent by the ring straight
    from registered memory when the loop is UringEventLoop. Made by
    StaticFiles; `file` is a static.OpenFile."""

    __slots__ = ("status", "file", "offset", "count", "headers", "block", "close")

    def __init__(self, file: Any, offset: int, count: int, status: int = 200, headers: Any = None) -> None:
        self.status = status
        self.file = file
        self.offset = offset
        self.count = count
        self.headers, self.block, self.close = _prepare_headers(status, headers, None)

    @classmethod
    def _prepared(
        cls, file: Any, offset: int, count: int, status: int, prepared: tuple[list[tuple[bytes, bytes]], bytes, bool]
    ) -> FileResponse:
        """With headers _prepare_headers() made before (StaticFiles keeps a
        file's 200 headers with the open file)."""
        self = cls.__new__(cls)
        self.status = status
        self.file = file
        self.offset = offset
        self.count = count
        self.headers, self.block, self.close = prepared
        return self


__all__ = ["Request", "Response", "StreamingResponse", "FileResponse", "Headers", "ClientDisconnected", "HTTPError"]
