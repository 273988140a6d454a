"""What every served connection shares, whatever its protocol: membership in
the server's registry, one deadline timer, and the drain hook.

A protocol subclasses `Connection` (with asyncio.Protocol or
asyncio.BufferedProtocol) and, where it has requests in flight, overrides
`shutdown()`: the server calls it to drain. A plain asyncio protocol works
too; the server wraps it and drains it by closing its transport once what
was written has gone out.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

# timer kinds; a protocol numbers its own from KIND_USER up
KIND_NONE = 0
KIND_IDLE = 1
KIND_USER = 2


class Connections:
    """The open connections of one server, with counts and a wait for none."""

    def __init__(self) -> None:
        self._open: set[Any] = set()
        self.accepted = 0  # every connection registered since the server started
        self.closed = 0
        self.finished_requests = 0  # requests_served() of the connections that closed
        self._empty: asyncio.Event | None = None

    def add(self, conn: Any) -> None:
        if conn not in self._open:
            self._open.add(conn)
            self.accepted += 1

    def discard(self, conn: Any) -> None:
        if conn in self._open:
            self._open.remove(conn)
            self.closed += 1
            self.finished_requests += conn.requests_served()
            if not self._open and self._empty is not None:
                self._empty.set()

    def replace(self, old: Any, new: Any) -> None:
        """`new` serves the connection `old` was registered for (a PROXY
        header reader handing over to the protocol): counted once."""
        if old in self._open:
            self._open.remove(old)
            self._open.add(new)

    def __len__(self) -> int:
        return len(self._open)

    def __iter__(self) -> Iterator[Any]:
        return iter(list(self._open))

    def __contains__(self, conn: object) -> bool:
        return conn in self._open

    async def wait_empty(self) -> None:
        """Until no connection is open (a registry event, not polling)."""
        if not self._open:
            return
        if self._empty is None or self._empty.is_set():
            self._empty = asyncio.Event()
        await self._empty.wait()

    def counts(self) -> dict[str, int]:
        return {"open": len(self._open), "accepted": self.accepted, "closed": self.closed}


class Connection:
    """Mixin for a served protocol: `class P(Connection, asyncio.Protocol)`.

    Subclasses that override connection_made/connection_lost call these.
    Timer: one deadline per connection, by kind. set_deadline() moves it,
    touch() pushes an idle deadline on; the one timer handle, when it fires
    early, re-arms itself for the deadline, so moving a deadline on every
    read costs a clock read, not a call_later() and a cancelled handle in
    the loop's heap. When it passes, timed_out(kind) is called.

    The attributes are class defaults so the mixin needs no __init__; a
    protocol's hot path may set `_timer_kind` and `_deadline` directly (the
    HTTP one does), calling _schedule() when the handle is missing or set
    for later than the new deadline, which is what set_deadline() does.
    """

    transport: Any = None
    registry: Connections | None = None
    #: seconds without a read before the connection closes (touch() on each read); None: never
    idle_timeout: float | None = None
    _loop: Any = None
    _timer: Any = None
    _timer_at = 0.0  # when the handle fires
    _timer_kind = KIND_NONE
    _deadline = 0.0
    _clock: Callable[[], float] = staticmethod(time.monotonic)

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self._loop = loop = asyncio.get_running_loop()
        # the loop's clock; asyncio's is time.monotonic behind a Python method
        self._clock = time.monotonic if type(loop).time is asyncio.BaseEventLoop.time else loop.time
        if self.registry is not None:
            self.registry.add(self)
        if self.idle_timeout:
            self.set_deadline(KIND_IDLE, self.idle_timeout)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.stop_timer()
        if self.registry is not None:
            self.registry.discard(self)

    # -- the deadline -------------------------------------------------------------
    def set_deadline(self, kind: int, delay: float) -> None:
        self._timer_kind = kind
        self._deadline = deadline = self._clock() + delay
        if self._timer is None or deadline < self._timer_at:
            self._schedule(deadline)

    def _schedule(self, when: float) -> None:
        """The handle, for a deadline earlier than the one it was made for
        (a later one it finds itself when it fires early)."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self._loop.call_at(when, self._timer_fired)

    def touch(self) -> None:
        """Activity: the idle deadline starts again (when it is the one set)."""
        if self._timer_kind == KIND_IDLE:
            self._deadline = self._clock() + self.idle_timeout  # type: ignore[operator]  # set when KIND_IDLE is

    def clear_deadline(self) -> None:
        self._timer_kind = KIND_NONE  # the handle stays; it finds nothing to do

    def stop_timer(self) -> None:
        self._timer_kind = KIND_NONE
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timer_fired(self) -> None:
        self._timer = None
        kind = self._timer_kind
        if kind == KIND_NONE:
            return
        if self._clock() < self._deadline:  # the deadline moved on since this was armed
            self._schedule(self._deadline)
            return
        self._timer_kind = KIND_NONE
        self.timed_out(kind)

    def timed_out(self, kind: int) -> None:
        """A deadline passed. By default the connection closes (what was written goes out first)."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def requests_served(self) -> int:
        """Requests this connection answered (for --max-requests); a protocol
        without requests counts the connection as one."""
        return 1

    # -- the drain hook -----------------------------------------------------------
    def shutdown(self) -> None:
        """The server is draining: finish what is in flight, then close; an
        idle connection closes at once. By default: close the transport,
        which sends what was written first."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> list[asyncio.Task]:
        """The drain timed out: cut the connection now. Returns tasks still
        running for it, cancelled, so the server can wait for them to end."""
        if self.transport is not None:
            self.transport.abort()  # also when closing but still flushing
        return []


class _Wrapped(Connection):
    """A plain asyncio protocol served by a Server: registry and drain for it,
    every protocol call passed through (one call more per event)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def connection_made(self, transport: Any) -> None:
        Connection.connection_made(self, transport)
        self.inner.connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        Connection.connection_lost(self, exc)
        self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


class _WrappedBuffered(_Wrapped, asyncio.BufferedProtocol):
    def get_buffer(self, sizehint: int) -> Any:
        return self.inner.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        self.inner.buffer_updated(nbytes)


class _WrappedPlain(_Wrapped, asyncio.Protocol):
    pass


def served(protocol: Any, registry: Connections) -> Any:
    """The protocol the transport gets: itself when it is a Connection, else wrapped."""
    if isinstance(protocol, Connection):
        protocol.registry = registry
        return protocol
    wrapped = _WrappedBuffered(protocol) if isinstance(protocol, asyncio.BufferedProtocol) else _WrappedPlain(protocol)
    wrapped.registry = registry
    return wrapped
