"""UringEventLoop: asyncio's selector loop, with the selector driven by a ring.

Timers, tasks, futures, add_reader/add_writer, call_soon_threadsafe,
signals and subprocesses are asyncio's own code running over UringSelector.
TCP servers (create_server / start_server) take the io_uring path: the
listening socket is installed in the fixed-file table, connections are
accepted straight into slots, and their transports are UringTransport.
Everything else falls back to the base class and works as on the stdlib
loop.
"""

from __future__ import annotations

import asyncio
import errno
import heapq
import logging
import os
import socket
import sys
import threading
from asyncio import constants, sslproto
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from . import bulk, scheduling
from . import ring as _ring
from .arena_waits import ArenaWaits
from .ring import EVENT_HEAD, EVENTS, FaultPlan, Ring, RingConfig, accept_of
from .selector import UringSelector, drain
from .tls import CoreTLS
from .transport import UringTransport
from .transport_tls import TLSTransport

logger = logging.getLogger("uringserve")
T = TypeVar("T")
SETUP_SINGLE_ISSUER = 1 << 12
_EAGER_START = sys.version_info >= (3, 12)
# seconds between an accept error (EMFILE, ...) and the next try: asyncio's constants.ACCEPT_RETRY_DELAY
ACCEPT_RETRY_DELAY = 1.0
# what asyncio.current_task(loop) reads (a Python function on 3.11; this dict is _asyncio's, in C)
_current_tasks: dict = getattr(asyncio.tasks, "_current_tasks", {})  # used below 3.12 only, where it exists

_EV_ACCEPT, _EV_RECV, _EV_POLL, _EV_ARENA = _ring.EV_ACCEPT, _ring.EV_RECV, _ring.EV_POLL, _ring.EV_ARENA
_EV_BULK, _EV_BULK_WANT = _ring.EV_BULK, _ring.EV_BULK_WANT
_ACCEPT_LATE = _ring.ACCEPT_LATE

# Where each kind of event the core reports (ring.EVENTS) goes. A
# connection's events go to its transport: RECV to its `receive`, in
# _dispatch's hot path, and the others to the handler named here, called as
# handler(transport, res, gen). ACCEPT (a new connection), POLL (readiness of
# a foreign fd, for the selector) and ARENA (send memory freed, for every
# transport waiting for it) are the loop's own. A new kind of connection
# event is a line here and a method of UringTransport.
_CONNECTION_EVENTS: dict[str, Callable[[UringTransport, int, int], None]] = {
    "EOF": UringTransport.on_eof,
    "RECV_ERR": UringTransport.on_recv_error,
    "WRITABLE": UringTransport.on_writable,
    "SEND_ERR": UringTransport.on_send_error,
    "CLOSED": UringTransport.on_closed,
}
# BULK_WANT and BULK (receives into memory the loop hands the core: bulk.py)
# are the loop's too: the memory is the ring's to keep alive, whichever
# transport it was for
_LOOP_EVENTS = {"RECV", "ACCEPT", "POLL", "ARENA", "BULK", "BULK_WANT"}
# SHUTDOWN: the write side closed after write_eof(), which needs nothing
# more; CONNECT: the load generator's client connections (loadgen.c takes its events)
_NOT_DELIVERED = {"SHUTDOWN", "CONNECT"}


def _handler_table() -> tuple[Callable[[UringTransport, int, int], None] | None, ...]:
    """_CONNECTION_EVENTS indexed by kind (None: not a connection's event)."""
    unknown = EVENTS.keys() - _CONNECTION_EVENTS.keys() - _LOOP_EVENTS - _NOT_DELIVERED
    if unknown:
        raise RuntimeError(
            f"the core reports events the loop does not place: {sorted(unknown)} (see _CONNECTION_EVENTS)"
        )
    table: list[Callable[[UringTransport, int, int], None] | None] = [None] * (max(EVENTS.values()) + 1)
    for name, handler in _CONNECTION_EVENTS.items():
        table[EVENTS[name]] = handler
    return tuple(table)


_HANDLERS = _handler_table()


# the most one data_received gets: asyncio's selector loop and uvloop read
# at most 256 KiB at a time, and a protocol that pauses reading (HTTP past
# max_pipelined) is still handed what one delivery carried
_MAX_RUN = 256 * 1024


class _Listener:
    __slots__ = ("lid", "sock", "protocol_factory", "server", "ssl", "ssl_timeouts")

    def __init__(
        self,
        lid: int,
        sock: socket.socket,
        protocol_factory: Callable[[], Any],
        server: Any,
        ssl: Any,
        ssl_timeouts: dict[str, Any],
    ) -> None:
        self.lid = lid
        self.sock = sock
        self.protocol_factory = protocol_factory
        self.server = server
        self.ssl = ssl
        self.ssl_timeouts = ssl_timeouts


class UringEventLoop(asyncio.SelectorEventLoop):
    """An asyncio event loop whose I/O core is io_uring."""

    # BaseEventLoop's own state, which typeshed does not declare; read here on hot paths
    _debug: bool
    _task_factory: Any
    _ready: Any
    _scheduled: list[asyncio.TimerHandle]

    def __init__(self, config: RingConfig | None = None, *, faults: FaultPlan | None = None) -> None:
        try:
            self._ring = Ring(config, faults=faults)  # faults: tests only (uringserve.faults)
        except BaseException:
            self._closed = True  # so BaseEventLoop.__del__ has nothing to close
            raise
        self._conns: dict[int, UringTransport] = {}
        self._listeners: dict[int, _Listener] = {}
        # stopped listeners, by id, for connections the kernel accepted as they stopped
        self._retired: dict[int, _Listener] = {}
        self._listener_by_fd: dict[int, int] = {}
        self._arena_waits = ArenaWaits()
        self._owner_thread: int | None = None
        self._single_issuer = bool(self._ring.stats()["setup_flags"] & SETUP_SINGLE_ISSUER)
        self._iter_heads = EVENT_HEAD.iter_unpack
        self._head_size = EVENT_HEAD.size
        self._buf_size = self._ring.config.buf_size  # a RECV this long may continue in the next buffer
        super().__init__(UringSelector(self._ring, self._dispatch))
        # asyncio always drains its self-pipe, so a multishot poll is safe there
        self._selector.set_multishot(self._ssock.fileno())  # type: ignore[attr-defined]

    # -- scheduling: asyncio's own checks run only in debug mode, as in asyncio;
    # outside it these skip Handle's per-construction get_debug() (see scheduling.py)
    def create_eager_task(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """A task whose first step runs now, until the coroutine first waits,
        as with Python 3.12's eager_start: a request answered without waiting
        never goes through the ready queue. From inside another task, with a
        task factory or in debug mode it is an ordinary task."""
        if _EAGER_START:
            return asyncio.Task(coro, loop=self, eager_start=True)  # type: ignore[call-arg]
        if self._debug or self._task_factory is not None or _current_tasks.get(self) is not None:
            return self.create_task(coro)
        # Task.__init__ schedules its first step with call_soon(); run it in place.
        # asyncio.Task directly: create_task() adds only the factory and name
        # handling ruled out above, and a Python frame per request
        if self._closed:  # _check_closed(), inline: once per HTTP request
            raise RuntimeError("Event loop is closed")
        self._eager_step = True
        try:
            return asyncio.Task(coro, loop=self)
        finally:
            self._eager_step = False

    _eager_step = False

    def call_soon(self, callback: Any, *args: Any, context: Any = None) -> asyncio.Handle:  # type: ignore[override]
        if self._eager_step:
            self._eager_step = False
            if context is None:
                callback(*args)
            else:
                context.run(callback, *args)
            return None  # type: ignore[return-value]  # Task.__init__ drops it
        if self._debug or self._closed:
            return _drop_own_frame(super().call_soon(callback, *args, context=context))
        handle = scheduling.Handle(callback, args, self, context)
        self._ready.append(handle)
        return handle

    def call_at(  # type: ignore[override]  # asyncio's signature, loosely typed
        self, when: float, callback: Any, *args: Any, context: Any = None
    ) -> asyncio.TimerHandle:
        if self._debug or self._closed or when is None:
            return _drop_own_frame(super().call_at(when, callback, *args, context=context))
        timer = scheduling.TimerHandle(when, callback, args, self, context)
        heapq.heappush(self._scheduled, timer)
        timer._scheduled = True
        return timer

    def call_later(  # type: ignore[override]  # asyncio's signature, loosely typed
        self, delay: float, callback: Any, *args: Any, context: Any = None
    ) -> asyncio.TimerHandle:
        if delay is None:
            raise TypeError("delay must not be None")
        if self._debug:
            return _drop_own_frame(super().call_later(delay, callback, *args, context=context))
        return self.call_at(self.time() + delay, callback, *args, context=context)

    def in_owner_thread(self) -> bool:
        """Whether this is the thread that runs the loop, the one that submits
        to its ring (False before the loop first ran)."""
        return self._owner_thread == threading.get_ident()

    def run_forever(self) -> None:
        owner = self._owner_thread
        me = threading.get_ident()
        if owner is None:
            self._owner_thread = me
        elif owner != me and self._single_issuer:
            raise RuntimeError(
                "this UringEventLoop is bound to the thread that first ran it: its io_uring was "
                "set up with IORING_SETUP_SINGLE_ISSUER (and DEFER_TASKRUN), so only that thread "
                "may submit or reap. Run it in that thread, or create a new loop in this one."
            )
        try:
            super().run_forever()
        finally:
            # what the last round wrote reaches the kernel now, as a write() on
            # asyncio's own loop would have, even if this loop never runs again
            if not self._ring.closed:
                self._ring.flush()

    @property
    def ring(self) -> Ring:
        return self._ring

    @property
    def arena_waits(self) -> ArenaWaits:
        """The connections whose writes wait for the send arena (EV_ARENA wakes them)."""
        return self._arena_waits

    def set_connection_limit(self, limit: int | None) -> None:
        """Accept no more while `limit` connections are open on this loop
        (outgoing ones included, as nginx's worker_connections counts them);
        new connections wait in the listen backlog and are accepted as others
        close. None: as many as the fixed-file table holds."""
        if limit is not None and limit < 1:
            raise ValueError(f"connection limit must be at least 1, got {limit}")
        self._ring.accept_limit(limit or 0)

    def connection_closed(self, slot: int) -> None:
        """The connection in `slot` has ended (its transport says so on EV_CLOSED):
        the slot's events no longer go to it."""
        self._conns.pop(slot, None)

    def ring_stats(self) -> dict[str, int]:
        """The core's counters (SQEs, enters, CQEs, stale CQEs, ENOBUFS, zc, slots, arena)."""
        return self._ring.stats()

    # -- completions -------------------------------------------------------------
    def _dispatch(self, n: int) -> list[tuple[int, int, int, int]] | None:
        """Deliver n ring completions to transports; return the poll events.

        The hot path: event heads come out of one struct.iter_unpack, and a
        RECV's bytes are sliced from the data region into the transport's
        `receive` -- in its plain state the protocol's data_received itself.
        """
        conns = self._conns
        handlers = _HANDLERS
        polls = None
        heads = self._iter_heads(self._ring.events_view[: n * self._head_size])
        # A message larger than one provided buffer arrives as RECVs of full
        # buffers: those of one connection that lie end to end in the data
        # region (the ring hands out its buffers in order) are delivered as
        # one slice -- one bytes object, one data_received, one write back.
        # A RECV that does not fill its buffer ends such a run, and a run is
        # at most _MAX_RUN bytes, as asyncio's loops read at most 256 KiB.
        full = self._buf_size
        run: Any = None  # the transport whose run is not delivered yet
        run_slot = run_start = run_end = -1
        for i, (kind, slot, res, off, gen, flags) in enumerate(heads):
            if kind == _EV_RECV:
                if run is None:
                    t = conns.get(slot)
                    if t is None:
                        continue
                    if res == full:  # the next RECV may continue it
                        run, run_slot, run_start, run_end = t, slot, off, off + res
                        continue
                elif slot == run_slot and off == run_end and run_end + res - run_start <= _MAX_RUN:
                    run_end += res
                    if res == full:
                        continue
                    # this RECV ends the run: the whole run is delivered below, as one
                    t, off, res, run = run, run_start, run_end - run_start, None
                else:
                    self._deliver_run(run, run_start, run_end)
                    run = None
                    t = conns.get(slot)
                    if t is None:
                        continue
                    if res == full:
                        run, run_slot, run_start, run_end = t, slot, off, off + res
                        continue
                # what the transport's state wants (see UringTransport._update_receiver)
                receive = t.receive
                try:
                    receive(t.receive_from[off : off + res])
                except (SystemExit, KeyboardInterrupt):
                    raise
                except BaseException as exc:
                    t.receive_failed(exc)
                continue
            if run is not None:
                self._deliver_run(run, run_start, run_end)
                run = None
            handler = handlers[kind]
            if handler is not None:  # a connection's event: its transport's handler
                t = conns.get(slot)
                if t is not None:
                    handler(t, res, gen)
            elif kind == _EV_POLL:
                if polls is None:
                    polls = []
                polls.append((slot, gen, res, flags))
            elif kind == _EV_ACCEPT:
                self._on_accept(slot, res, gen, flags, *accept_of(self._ring.events[i]))
            elif kind == _EV_BULK:
                bulk.completed(self._ring, conns.get(slot), slot, res, gen, flags)
            elif kind == _EV_BULK_WANT:
                bulk.arm(self._ring, conns.get(slot), slot, gen)
            elif kind == _EV_ARENA:
                self._arena_waits.wake()
        if run is not None:
            self._deliver_run(run, run_start, run_end)
        return polls

    @staticmethod
    def _deliver_run(t: UringTransport, a: int, b: int) -> None:
        """A run of RECVs, data region [a, b), that another event or the batch's
        end cut: delivered as _dispatch delivers in line (kept there, without
        this frame, for the plain path's sake)."""
        receive = t.receive
        try:
            receive(t.receive_from[a:b])
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            t.receive_failed(exc)

    def _accept_again(self, lst: _Listener) -> None:
        if self._listeners.get(lst.lid) is lst and not self.is_closed():
            self._ring.listener_start(lst.lid)

    def _on_accept(self, slot: int, res: int, gen: int, flags: int, lid: int, peer: bytes) -> None:
        if res < 0:
            lst = self._listeners.get(lid)
            if lst is None:
                return
            # as asyncio's selector loop does: say so, wait, accept again
            # (a close of ours re-arms it sooner when the table was full)
            self.call_exception_handler(
                {
                    "message": f"accept failed; accepting again in {ACCEPT_RETRY_DELAY:g} second(s)",
                    "exception": OSError(-res, f"accept: {os.strerror(-res)}"),
                    "socket": lst.sock,
                }
            )
            self.call_later(ACCEPT_RETRY_DELAY, self._accept_again, lst)
            return
        late = flags & _ACCEPT_LATE
        lst = self._retired.get(lid) if late else self._listeners.get(lid)
        if lst is None or (late and self._closed):
            self._ring.close_conn(slot, gen, False)
            return
        tls = lst.ssl if type(lst.ssl) is CoreTLS else None
        try:
            protocol = lst.protocol_factory()
            if lst.ssl is not None and tls is None:
                # TLS is asyncio's own SSLProtocol over this transport
                waiter = self.create_future()
                waiter.add_done_callback(_handshake_done)
                protocol = sslproto.SSLProtocol(self, protocol, lst.ssl, waiter, True, None, **lst.ssl_timeouts)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._ring.close_conn(slot, gen, False)
            self.call_exception_handler({"message": "Error in protocol factory; connection closed", "exception": exc})
            return
        # a late connection was accepted as its listener stopped: served like
        # one accepted just before (the asyncio Server has closed: not attached)
        server = None if late else lst.server
        if tls is None:
            t = UringTransport(self, slot, gen, protocol, peer, lst.sock, server)
        else:  # TLS in the core (transport_tls.py)
            try:
                t = TLSTransport(self, slot, gen, protocol, peer, lst.sock, server, tls)
            except MemoryError as exc:
                self._ring.close_conn(slot, gen, False)
                self.call_exception_handler({"message": "no memory for a TLS connection; closed", "exception": exc})
                return
        self._conns[slot] = t
        t.start_accepted()

    # -- connected sockets (client connections, connect_accepted_socket) ----------
    def _make_socket_transport(
        self, sock: socket.socket, protocol: Any, waiter: Any = None, *, extra: Any = None, server: Any = None
    ) -> Any:
        if not _is_tcp(sock) or self._ring.closed:
            return super()._make_socket_transport(sock, protocol, waiter, extra=extra, server=server)  # type: ignore[misc]
        try:
            slot, gen = self._ring.adopt(sock.fileno())
        except OSError as exc:
            # the connection table is full: this connection takes asyncio's own path
            logger.debug("io_uring connection table full (%s); using a selector transport", exc)
            return super()._make_socket_transport(sock, protocol, waiter, extra=extra, server=server)  # type: ignore[misc]
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as asyncio does for TCP
        t = UringTransport(self, slot, gen, protocol, b"", None, server, sock=sock, extra=extra)
        self._conns[slot] = t
        self.call_soon(t.start_adopted, waiter)
        return t

    def _make_ssl_transport(
        self,
        rawsock: socket.socket,
        protocol: Any,
        sslcontext: Any,
        waiter: Any = None,
        *,
        server_side: bool = False,
        server_hostname: str | None = None,
        extra: Any = None,
        server: Any = None,
        ssl_handshake_timeout: float | None = constants.SSL_HANDSHAKE_TIMEOUT,
        ssl_shutdown_timeout: float | None = constants.SSL_SHUTDOWN_TIMEOUT,
    ) -> Any:
        # asyncio's SSLProtocol over whichever transport _make_socket_transport gives
        ssl_protocol = sslproto.SSLProtocol(
            self,
            protocol,
            sslcontext,
            waiter,
            server_side,
            server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,  # type: ignore[arg-type]  # a float, as asyncio passes
            ssl_shutdown_timeout=ssl_shutdown_timeout,
        )
        self._make_socket_transport(rawsock, ssl_protocol, extra=extra, server=server)
        return ssl_protocol._app_transport

    async def _sendfile_native(self, transp: Any, file: Any, offset: int, count: int | None) -> int:
        # loop.sendfile() on a transport whose _sendfile_compatible is
        # TRY_NATIVE: the transport sends the file through the ring
        if not isinstance(transp, UringTransport):
            raise asyncio.SendfileNotAvailableError("not a uringserve transport")
        return await transp.sendfile(file, offset, count)

    # -- servers -----------------------------------------------------------------
    def _start_serving(
        self,
        protocol_factory: Any,
        sock: socket.socket,
        sslcontext: Any = None,
        server: Any = None,
        backlog: int = 100,
        ssl_handshake_timeout: float | None = constants.SSL_HANDSHAKE_TIMEOUT,
        ssl_shutdown_timeout: float | None = constants.SSL_SHUTDOWN_TIMEOUT,
    ) -> None:
        if not _is_stream(sock):
            # anything but a TCP or Unix stream socket keeps asyncio's own path
            super()._start_serving(  # type: ignore[misc]  # selector_events' own, not in typeshed
                protocol_factory, sock, sslcontext, server, backlog, ssl_handshake_timeout, ssl_shutdown_timeout
            )
            return
        fd = sock.fileno()
        if fd in self._listener_by_fd:
            return
        if _is_tcp(sock):
            # asyncio sets TCP_NODELAY on every TCP transport; a direct descriptor
            # takes no setsockopt, but Linux copies it from the listener on accept
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            lid = self._ring.listener_add(fd)
        except OSError as exc:
            # the server owns its sockets (Server.close() closes them) and
            # asyncio's create_server does not close them when this fails
            sock.close()
            if exc.errno != errno.ENFILE:
                raise
            raise OSError(
                errno.ENFILE,
                f"no fixed-file slot left for another listener: "
                f"RingConfig.reserved_slots={self._ring.config.reserved_slots} "
                "holds the listeners and hand-installed sockets; raise it",
            ) from None
        timeouts = {"ssl_handshake_timeout": ssl_handshake_timeout, "ssl_shutdown_timeout": ssl_shutdown_timeout}
        self._listeners[lid] = _Listener(lid, sock, protocol_factory, server, sslcontext, timeouts)
        self._listener_by_fd[fd] = lid
        self._ring.listener_start(lid)

    def _stop_serving(self, sock: socket.socket) -> None:
        lid = self._listener_by_fd.pop(sock.fileno(), None)
        if lid is None:
            super()._stop_serving(sock)  # type: ignore[misc]
            return
        self._retired[lid] = self._listeners.pop(lid)
        if not self._ring.closed:
            self._ring.listener_stop(lid)
            if self.in_owner_thread():
                # the accepts and the slot hold the listening socket: cancel and
                # drop them now, so it is closed when server.close() returns
                self._ring.flush()
        sock.close()

    # -- shutdown ------------------------------------------------------------------
    def close(self) -> None:
        if self.is_running():
            raise RuntimeError("Cannot close a running event loop")
        if self.is_closed():
            return
        super().close()  # closes the self-pipe and the selector's polls

        ring = self._ring
        if not ring.closed:
            for lst in list(self._listeners.values()):
                lst.sock.close()
            self._listeners.clear()
            self._retired.clear()
            self._listener_by_fd.clear()
            ring.cancel_all()
            conns, self._conns = self._conns, {}
            left = drain(ring, lambda n: None, 2.0)
            if left < 0:
                logger.debug("loop closed off its thread: %d operations cancelled by the ring's close", -left)
            elif left:
                logger.warning("closing ring with %d operations still in flight", left)
            for t in conns.values():
                t.loop_closing()
            self._arena_waits.clear()
            ring.close()


def _is_tcp(sock: socket.socket) -> bool:
    return sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM


def _is_stream(sock: socket.socket) -> bool:
    # listeners the ring accepts on: TCP and Unix-domain stream sockets
    return sock.family in (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX) and sock.type == socket.SOCK_STREAM


def _drop_own_frame(handle: Any) -> Any:
    # debug mode records where a callback was scheduled; asyncio drops its own
    # frames from that traceback, and the overrides here drop theirs
    if handle._source_traceback:
        del handle._source_traceback[-1]
    return handle


def _handshake_done(waiter: asyncio.Future) -> None:
    # SSLProtocol has already closed a connection whose handshake failed and
    # reported it (in debug mode, as asyncio's own accept path does)
    if not waiter.cancelled():
        waiter.exception()


def new_event_loop(config: RingConfig | None = None) -> UringEventLoop:
    """A new UringEventLoop (uvloop-style helper)."""
    return UringEventLoop(config)


class EventLoopPolicy(asyncio.DefaultEventLoopPolicy):
    """asyncio.set_event_loop_policy(uringserve.EventLoopPolicy())"""

    def __init__(self, config: RingConfig | None = None) -> None:
        super().__init__()
        self._config = config

    def new_event_loop(self) -> UringEventLoop:
        return UringEventLoop(self._config)


def run(main: Coroutine[Any, Any, T], *, debug: bool | None = None, config: RingConfig | None = None) -> T:
    """asyncio.run() on a UringEventLoop."""
    if sys.version_info >= (3, 12):
        return asyncio.run(main, debug=debug, loop_factory=lambda: UringEventLoop(config))  # type: ignore[call-arg]
    with asyncio.Runner(debug=debug, loop_factory=lambda: UringEventLoop(config)) as runner:
        return runner.run(main)


__all__ = ["UringEventLoop", "new_event_loop", "EventLoopPolicy", "run"]
