"""The native handler API's Request and Response model."""
from __future__ import annotations

import asyncio
import collections
from typing import TYPE_CHECKING, Any, AsyncIterable, Iterable
from urllib.parse import unquote

from . import framing
from .framing import encode_headers
from .parser import HTTPError, RequestHead

if TYPE_CHECKING:
    from .protocol import Exchange


class ClientDisconnected(ConnectionError):
    """The client went away before the request body was read."""


class Body:
    """A request body on its way in: chunks in order, with flow control
    back to the connection (reading pauses while too much waits here)."""
    __slots__ = ("_chunks", "_size", "done", "_waiter", "_exc", "_on_consumed", "_on_first_read", "hold_all")

    def __init__(self, on_consumed: Any, on_first_read: Any) -> None:
        self._chunks: collections.deque = collections.deque()
        self._size = 0
        self.done = False
        self._waiter: asyncio.Future | None = None
        self._exc: BaseException | None = None
        self._on_consumed = on_consumed
        self._on_first_read = on_first_read
        self.hold_all = False  # wait_done(): buffer it all (max_body_bytes still bounds it)

    @property
    def buffered(self) -> int:
        return self._size

    def feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        self._wake()

    def end(self) -> None:
        self.done = True
        self._wake()

    def fail(self, exc: BaseException) -> None:
        if not self.done:
            self._exc = exc
            self.done = True
            self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _first_read(self) -> None:
        if self._on_first_read is not None:
            cb, self._on_first_read = self._on_first_read, None
            cb()  # 100 Continue

    async def _arrival(self) -> None:
        """Until the next feed, end or failure."""
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def wait_done(self) -> None:
        """Until the whole body is in (or failed); keeps what arrived."""
        self._first_read()
        self.hold_all = True
        self._on_consumed()  # reading may resume: this body is not read piecewise
        while not self.done:
            await self._arrival()
        if self._exc is not None:
            raise self._exc

    def read_now(self) -> bytes:
        """Everything buffered (the body when `done`)."""
        if self._exc is not None:
            raise self._exc
        data = b"".join(self._chunks) if len(self._chunks) != 1 else self._chunks[0]
        self._chunks.clear()
        if self._size:
            self._size = 0
            self._on_consumed()
        return data

    async def next_chunk(self) -> bytes:
        """The next chunk, b"" at the end."""
        self._first_read()
        while not self._chunks:
            if self._exc is not None:
                raise self._exc
            if self.done:
                return b""
            await self._arrival()
        data = self._chunks.popleft()
        self._size -= len(data)
        self._on_consumed()
        return data


class Headers:
    """Request headers: case-insensitive lookup over the raw (name, value) pairs."""
    __slots__ = ("raw", "_map")

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self.raw = raw
        self._map: dict[str, str] | None = None

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
        return self._dict().get(name.lower(), default)

    def __getitem__(self, name: str) -> str:
        return self._dict()[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._dict()

    def items(self) -> Iterable[tuple[str, str]]:
        return self._dict().items()

    def __repr__(self) -> str:
        return f"Headers({self._dict()!r})"


class Request:
    """One HTTP request. `path` is percent-decoded; `raw_path` is as sent.
    Only raw_path is computed up front; the rest when asked for."""
    __slots__ = ("raw_path", "client", "_head", "_body", "_exchange", "_headers", "__weakref__")

    def __init__(self, head: RequestHead, body: Body, client: Any, exchange: "Exchange | None" = None) -> None:
        self._head = head
        self.raw_path: bytes = head.target.partition(b"?")[0]
        self.client = client
        self._body = body
        self._exchange = exchange
        self._headers: Headers | None = None

    @property
    def method(self) -> str:
        return self._head.method.decode("ascii")

    @property
    def query_string(self) -> bytes:
        return self._head.target.partition(b"?")[2]

    @property
    def http_version(self) -> str:
        return self._head.version

    @property
    def headers(self) -> Headers:
        if self._headers is None:
            self._headers = Headers(self._head.headers)
        return self._headers

    @property
    def path(self) -> str:
        return unquote(self.raw_path.decode("latin-1"), errors="surrogateescape")

    @property
    def content(self) -> bytes:
        """The whole body, for plain-function handlers (they run once it is in)."""
        if not self._body.done:
            raise RuntimeError("the request body is still arriving: use `await request.body()`")
        return self._body.read_now()

    async def body(self) -> bytes:
        parts = []
        while True:
            chunk = await self._body.next_chunk()
            if not chunk:
                return b"".join(parts)
            parts.append(chunk)

    async def stream(self) -> Any:
        """The body chunk by chunk, as it arrives."""
        while True:
            chunk = await self._body.next_chunk()
            if not chunk:
                return
            yield chunk

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.raw_path.decode('latin-1')!r}>"


_FRAMING = (b"content-length", b"transfer-encoding")


def _prepare_headers(status: int, headers: Any, content_type: str | None) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """A response's (name, value) pairs and their encoded block, made once
    when the response is made: a bad status or header fails here, and a
    response returned many times costs nothing per request. The body's
    framing headers are the server's to write, so a handler's
    Content-Length / Transfer-Encoding are dropped."""
    framing.status_line(status)
    out = []
    if headers:
        for name, value in headers.items() if hasattr(headers, "items") else headers:
            name = name.encode("latin-1") if isinstance(name, str) else bytes(name)
            if name.lower() in _FRAMING:
                continue
            out.append((name, value.encode("latin-1") if isinstance(value, str) else bytes(value)))
    if content_type is not None and not any(n.lower() == b"content-type" for n, _ in out):
        out.append((b"Content-Type", content_type.encode("latin-1")))
    return out, encode_headers(out)


class Response:
    """A complete response. `body` may be bytes or str (sent as UTF-8)."""
    __slots__ = ("status", "body", "headers", "block")

    def __init__(self, body: bytes | str = b"", status: int = 200, headers: Any = None,
                 content_type: str | None = "text/plain; charset=utf-8") -> None:
        self.status = status
        self.body = body.encode() if isinstance(body, str) else bytes(body)
        self.headers, self.block = _prepare_headers(status, headers, content_type)


class StreamingResponse:
    """A response whose body comes from an (async) iterable of bytes: sent
    chunked to HTTP/1.1 clients, or with `content_length` when known."""
    __slots__ = ("status", "content", "headers", "block", "content_length")

    def __init__(self, content: AsyncIterable[bytes] | Iterable[bytes], status: int = 200, headers: Any = None,
                 content_type: str | None = "application/octet-stream", content_length: int | None = None) -> None:
        self.status = status
        self.content = content
        self.content_length = content_length
        self.headers, self.block = _prepare_headers(status, headers, content_type)


class FileResponse:
    """`count` bytes of an open file from `offset`, sent by the ring straight
    from registered memory when the loop is UringEventLoop. Made by
    StaticFiles; `file` is a static.OpenFile."""
    __slots__ = ("status", "file", "offset", "count", "headers", "block")

    def __init__(self, file: Any, offset: int, count: int, status: int = 200, headers: Any = None) -> None:
        self.status = status
        self.file = file
        self.offset = offset
        self.count = count
        self.headers, self.block = _prepare_headers(status, headers, None)


__all__ = ["Request", "Response", "StreamingResponse", "FileResponse", "Headers", "ClientDisconnected",
           "HTTPError"]
