"""A request body on its way from the connection to the handler."""

from __future__ import annotations

import asyncio
import collections
from typing import Any


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
