"""What the parts of UringTransport share: the connection's state (its slots),
the loop it needs (TransportLoop) and the error an errno becomes.

UringTransport (transport.py) is one object whose methods are split by job:
the receive side (transport_reading.Reading), the send side
(transport_writing.Writing) and, in transport.py, its start, its extra info
and its end. Each part is a class without state of its own over
TransportBase, which holds every field, so a method reads its fields as
slots of one object, with nothing between (the hot paths: write() and the
receivers the loop calls).
"""

from __future__ import annotations

import asyncio
import collections
import errno
import os
import socket
from asyncio import transports
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import contextvars

    from .arena_waits import ArenaWaits
    from .ring import Ring

# the held/pending queue of a transport that has none (read-only: falsy,
# iterable); both deques are made on first use, so an idle connection keeps
# none (an empty deque is ~600 bytes; two per connection were a third of its memory)
EMPTY: Any = ()


class TransportLoop(Protocol):
    """What a UringTransport needs of its loop (UringEventLoop is one): a
    Protocol, so that the transport's modules do not import the loop, which
    imports them."""

    @property
    def ring(self) -> Ring: ...

    @property
    def arena_waits(self) -> ArenaWaits: ...

    def in_owner_thread(self) -> bool: ...

    def connection_closed(self, slot: int) -> None: ...

    def get_debug(self) -> bool: ...

    def create_future(self) -> asyncio.Future[Any]: ...

    def call_soon(
        self, callback: Callable[..., object], *args: Any, context: contextvars.Context | None = None
    ) -> asyncio.Handle: ...

    def call_exception_handler(self, context: dict[str, Any]) -> None: ...


class TransportBase(transports._FlowControlMixin, transports.Transport):
    """The state of one connection's transport; UringTransport.__init__ sets it."""

    # slots, not a __dict__: with 10,000 idle connections every byte of a
    # transport shows in the server's RSS (asyncio's bases are slotted too)
    __slots__ = (
        "_buffered", "_closed_called", "_closing", "_conn_lost", "_empty_waiter", "_eof_written", "_exc",
        "_extra_cache", "_gen", "_handle", "_held", "_held_scheduled", "_inplace", "_inplace_min",
        "_listener_sock", "_paused", "_peer_raw", "_pending", "_pending_size", "_protocol", "_qbound",
        "_raw_send", "_raw_send_ref", "_ring", "_sendfile_active", "_sent_final", "_server",
        "_slot", "_sock_obj", "_write_fast", "receive", "receive_from", "__weakref__",
    )  # fmt: skip

    # the connection: its loop and ring, and its place in the ring's slot table
    _loop: TransportLoop
    _ring: Ring
    _slot: int
    _gen: int
    _protocol: asyncio.BaseProtocol
    _exc: BaseException | None  # what connection_lost() will be given
    # the receive side (transport_reading.py)
    _buffered: bool  # a BufferedProtocol
    _paused: bool
    _held: collections.deque  # (kind, item) received while paused: data, EOF, an error
    _held_scheduled: bool
    # what the loop hands each received slice to, and what it slices (the
    # ring's data region as bytes or as a memoryview): see Reading._update_receiver()
    receive: Callable[[Any], object]
    receive_from: Any
    # the send side (transport_writing.py)
    _pending: collections.deque  # what the arena could not take yet: bytes and _FileRanges, in order
    _pending_size: int
    _eof_written: bool
    _empty_waiter: asyncio.Future | None  # loop.sendfile() waits for the queue to drain
    _sendfile_active: bool
    _sent_final: int  # bytes sent, kept when the slot goes (-1 until then)
    # write() tracks an upper bound of the bytes queued in the core (sends
    # only shrink it) and asks the core only when the bound passes high-water
    _qbound: int
    _write_fast: bool  # no _pending, no write_eof(), connection not lost, no sendfile()
    _conn_lost: int  # writes after the connection went (asyncio's count)
    # the hot write path's own copies of the ring's: raw_send(handle, slot, gen, data, len)
    _raw_send: Any
    _raw_send_ref: Any
    _handle: Any
    _inplace: list  # objects sent in place, by segment, kept alive until the kernel is done
    _inplace_min: int
    _protocol_paused: bool  # _FlowControlMixin's
    _high_water: int
    _low_water: int
    # the socket and the end (transport.py)
    _peer_raw: bytes
    _listener_sock: socket.socket | None
    _server: Any
    _sock_obj: socket.socket | None
    _extra_cache: dict[str, Any]
    _closing: bool
    _closed_called: bool

    def _fatal_error(self, exc: BaseException, message: str) -> None:
        """Report `exc` and end the connection at once (UringTransport's)."""
        raise NotImplementedError

    def _report(self, message: str, exc: BaseException) -> None:
        """A protocol callback (or the connection) failed: the loop's exception handler hears of it, as asyncio's."""
        self._loop.call_exception_handler(
            {"message": message, "exception": exc, "transport": self, "protocol": self._protocol}
        )


def conn_error(err: int) -> OSError:
    """The OSError a connection's errno `err` is, as asyncio's transports raise it."""
    if err == errno.ECONNRESET:
        return ConnectionResetError(err, os.strerror(err))
    if err == errno.EPIPE:
        return BrokenPipeError(err, os.strerror(err))
    if err == errno.ECONNABORTED:
        return ConnectionAbortedError(err, os.strerror(err))
    return OSError(err, os.strerror(err))
