"""asyncio.Transport over a connection that lives in the ring's slot table.

Completion model (CPython's proactor_events.py is the relative, not
selector_events.py):

Reading: a multishot recv is armed by the core when the connection is
accepted and stays armed. pause_reading() asks the core to cancel it; what
the kernel had already taken still arrives and is held here, in order, and
handed to the protocol on resume_reading(). EOF or an error that arrives
while paused is held behind that data.

Writing: write() copies into the send arena at once (the caller's buffer is
free when write() returns) and the core sends, resumes partial sends and
recycles chunks without Python. When the arena is full the remainder waits
here in `_pending` (in order, nothing is sent past it) until the core says
chunks were freed. States, as proactor's write() names them:

    IDLE      queued == 0 and no _pending
    WRITING   queued > 0, _pending empty (the core owns everything)
    BACKED UP _pending non-empty (arena full): waits for US_EV_ARENA

Buffer size for flow control = bytes queued in the core + len(_pending).
When it passes the high-water mark the protocol is paused and the core is
asked for US_EV_WRITABLE at the low-water mark.

Closing: close() stops reading, lets the core flush what is queued and
close the slot; connection_lost() runs when the core reports the slot
closed (US_EV_CLOSED), exactly once. abort() drops what is queued.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import io
import logging
import os
import socket
import stat
import warnings
from asyncio import constants, transports, trsock
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from . import sockaddr

if TYPE_CHECKING:
    import contextvars

    from .ring import Ring

logger = logging.getLogger("uringserve")
_LOG_THRESHOLD_FOR_CONNLOST_WRITES = 5
_FILE_SEGMENT_MAX = 1 << 30  # the core's segments hold < 2 GiB


class TransportLoop(Protocol):
    """What a UringTransport needs of its loop (UringEventLoop is one): a
    Protocol, so that this module does not import the loop, which imports it."""

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


_EMPTY: Any = ()  # the held/pending queue of a transport that has none (read-only: falsy, iterable)


class UringTransport(transports._FlowControlMixin, transports.Transport):
    # slots, not a __dict__: with 10,000 idle connections every byte of a
    # transport shows in the server's RSS (asyncio's bases are slotted too)
    __slots__ = (
        "_buffered", "_closed_called", "_closing", "_conn_lost", "_empty_waiter", "_eof_written", "_exc",
        "_extra_cache", "_gen", "_handle", "_held", "_held_scheduled", "_inplace", "_inplace_min",
        "_listener_sock", "_paused", "_peer_raw", "_pending", "_pending_size", "_protocol", "_qbound",
        "_raw_send", "_raw_send_ref", "_ring", "_sendfile_active", "_sent_final", "_server",
        "_slot", "_sock_obj", "_write_fast", "receive", "receive_from", "__weakref__",
    )  # fmt: skip
    _high_water: int  # _FlowControlMixin's, set by set_write_buffer_limits()
    # what the loop hands each received slice to, and what it slices (the
    # ring's data region as bytes or as a memoryview): see _update_receiver()
    receive: Callable[[Any], object]
    receive_from: Any
    _low_water: int
    _start_tls_compatible = True
    # loop.sendfile() queues the file in the core, which reads it into
    # registered memory and sends it from there (sendfile(), which the loop's
    # _sendfile_native calls)
    _sendfile_compatible = constants._SendfileMode.TRY_NATIVE

    def __init__(
        self,
        loop: TransportLoop,
        slot: int,
        gen: int,
        protocol: asyncio.BaseProtocol,
        peer: bytes,
        listener_sock: socket.socket | None,
        server: Any = None,
        *,
        sock: socket.socket | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(None, loop)  # type: ignore[arg-type]  # _FlowControlMixin only keeps it
        self._loop = loop
        self._ring = loop.ring
        self._slot = slot
        self._gen = gen
        self._peer_raw = peer
        self._listener_sock = listener_sock
        self._server = server
        # an accepted connection has no fd until asked for one; an adopted
        # socket (client connect, connect_accepted_socket) keeps its own
        self._sock_obj: socket.socket | None = sock
        self._extra_cache: dict[str, Any] = dict(extra or {})
        self._closing = False
        self._closed_called = False
        self._conn_lost = 0
        self._exc: BaseException | None = None
        self._paused = False
        # both deques are made on first use: an idle connection keeps none
        # (an empty deque is ~600 bytes; two per connection were a third of its memory)
        self._held: collections.deque = _EMPTY
        self._held_scheduled = False
        self._pending: collections.deque = _EMPTY
        self._pending_size = 0
        self._eof_written = False
        self._protocol_paused = False
        self._empty_waiter: asyncio.Future | None = None  # loop.sendfile() waits for the queue to drain
        self._sendfile_active = False
        self._sent_final = -1  # bytes sent, kept when the slot goes
        # write() tracks an upper bound of the bytes queued in the core (sends
        # only shrink it) and asks the core only when the bound passes high-water
        self._qbound = 0
        self._write_fast = True  # no _pending, no write_eof(), connection not lost
        self._raw_send = self._ring.raw_send
        self._raw_send_ref = self._ring.raw_send_ref
        self._inplace = self._ring.held  # objects sent in place, by segment
        self._handle = self._ring.handle
        self._inplace_min = self._ring.config.inplace_min
        self.set_protocol(protocol)
        if server is not None:
            _server_attach(server, self)

    # -- protocol ------------------------------------------------------------
    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol
        self._buffered = isinstance(protocol, asyncio.BufferedProtocol)
        self._update_receiver()

    def _update_receiver(self) -> None:
        """Point the loop's deliveries where this state wants them. For each
        RECV the loop calls `receive(receive_from[a:b])` and looks at nothing
        else, so the state is read here, when it changes, not per delivery.
        While nothing is special (reading, not closing, nothing held, not a
        BufferedProtocol) that is the protocol's own data_received: bytes
        reach it with no frame of the transport's in between."""
        if self._buffered:
            # a view of the ring's buffer, copied once, into get_buffer()
            self.receive, self.receive_from = self._on_view, self._ring.data_view
        elif self._paused or self._closing or self._held:
            self.receive, self.receive_from = self._on_data, self._ring.data_bytes
        else:
            self.receive = self._protocol.data_received  # type: ignore[attr-defined]
            self.receive_from = self._ring.data_bytes

    def start_accepted(self) -> None:
        """A connection the ring accepted (reading already armed by the core):
        connection_made() now."""
        try:
            self._protocol.connection_made(self)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Error on transport creation for incoming connection")

    def start_adopted(self, waiter: asyncio.Future | None) -> None:
        """A connected socket the ring adopted (create_connection,
        connect_accepted_socket), an iteration after it was made: the order
        asyncio's socket transports keep, connection_made(), then the waiter,
        then reading."""
        try:
            self._protocol.connection_made(self)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Exception in callback protocol.connection_made()")
        if waiter is not None and not waiter.cancelled():
            waiter.set_result(None)
        # Reading starts an iteration later, as with asyncio (whose reader is
        # added only then): the task awaiting create_connection() resumes
        # before the first data_received(), which code relies on.
        self._loop.call_soon(self._begin_reading)

    def _begin_reading(self) -> None:
        if not self._closing and not self._paused and not self._ring.closed:
            self._ring.recv_start(self._slot, self._gen)

    def receive_failed(self, exc: BaseException) -> None:
        """`receive` raised: the protocol's data_received, called by the loop."""
        self._fatal_error(exc, "Fatal error: protocol.data_received() call failed.")

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def __repr__(self) -> str:
        state = "closing" if self._closing else "open"
        return f"<UringTransport slot={self._slot} gen={self._gen} {state}>"

    # -- extra info ----------------------------------------------------------
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name in self._extra_cache:
            return self._extra_cache[name]
        value: Any = default
        if name == "peername":
            if self._peer_raw and not sockaddr.truncated(self._peer_raw):
                value = sockaddr.parse(self._peer_raw)
            else:  # a client connection, or a Unix peer name longer than the accept event holds
                sock = self._sock_obj if self._sock_obj is not None or not self._peer_raw else self._socket()
                try:
                    value = sock.getpeername() if sock is not None else default
                except OSError:
                    value = default
        elif name == "sockname":
            value = self._sockname()
        elif name == "socket":
            sock = self._socket()
            value = trsock.TransportSocket(sock) if sock is not None else default
        else:
            return default
        self._extra_cache[name] = value
        return value

    def _sockname(self) -> Any:
        lsock = self._listener_sock
        if lsock is not None:
            addr = lsock.getsockname()
            if not isinstance(addr, tuple) or addr[0] not in ("0.0.0.0", "::", ""):
                return addr  # an accepted socket's local address is the listener's (a Unix path too)
        sock = self._socket()
        return sock.getsockname() if sock is not None else None

    def _socket(self) -> socket.socket | None:
        """A real socket for the connection, made only when asked for."""
        if self._sock_obj is None:
            if self._closing or self._ring.closed:
                return None
            try:
                fd = self._ring.fd_install(self._slot, self._gen)
            except OSError as exc:
                logger.debug("no socket for %r: %s", self, exc)
                return None
            self._sock_obj = socket.socket(fileno=fd)
        return self._sock_obj

    # -- reading ---------------------------------------------------------------
    def is_reading(self) -> bool:
        return not self._paused and not self._closing

    def pause_reading(self) -> None:
        if self._closing or self._paused:
            return
        self._paused = True
        self._update_receiver()
        self._ring.recv_pause(self._slot, self._gen)

    def resume_reading(self) -> None:
        if self._closing or not self._paused:
            return
        self._paused = False
        if self._held and not self._held_scheduled:
            self._held_scheduled = True
            self._loop.call_soon(self._deliver_held)
        self._update_receiver()
        self._ring.recv_start(self._slot, self._gen)

    def _deliver_held(self) -> None:
        self._held_scheduled = False
        while self._held and not self._paused and not self._closing:
            kind, item = self._held.popleft()
            if kind == 0:
                self._feed(item)
            elif kind == 1:
                self._eof()
            else:
                self._recv_error(item)
        self._update_receiver()

    def _on_data(self, data: bytes) -> None:
        """`receive` while reading is paused, data is held or the transport is closing."""
        if self._closing:
            return
        if self._paused or self._held:
            self._hold((0, data))
            return
        self._feed(data)

    def _hold(self, item: tuple[int, Any]) -> None:
        if self._held is _EMPTY:
            self._held = collections.deque()
        self._held.append(item)

    def _queue_pending(self, chunk: Any) -> None:
        if self._pending is _EMPTY:
            self._pending = collections.deque()
        self._pending.append(chunk)

    def _on_view(self, view: memoryview) -> None:
        """A BufferedProtocol's `receive`: `view` is the ring's buffer, valid until
        the loop next waits, so it is copied into the protocol's buffer now,
        or into bytes if it has to wait (paused, or behind held data)."""
        if self._closing:
            return
        if self._paused or self._held:
            self._hold((0, bytes(view)))
            return
        self._feed(view)

    def _feed(self, data: Any) -> None:
        try:
            if self._buffered:
                self._feed_buffered(data)
            else:
                self._protocol.data_received(data)  # type: ignore[attr-defined]
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            name = "buffer_updated" if self._buffered else "data_received"
            self._fatal_error(exc, f"Fatal error: protocol.{name}() call failed.")

    def _feed_buffered(self, data: Any) -> None:
        mv = memoryview(data)
        while mv:
            buf = memoryview(self._protocol.get_buffer(len(mv)))  # type: ignore[attr-defined]
            if not len(buf):
                raise RuntimeError("get_buffer() returned an empty buffer")
            n = min(len(buf), len(mv))
            buf[:n] = mv[:n]
            self._protocol.buffer_updated(n)  # type: ignore[attr-defined]
            mv = mv[n:]
            if self._closing:
                return

    # -- the core's events for this connection (the loop's dispatch table calls
    # these as handler(transport, res, gen); RECV goes to `receive`)
    def on_eof(self, res: int, gen: int) -> None:
        """EV_EOF: the peer sent FIN."""
        if self._closing:
            return
        if self._paused or self._held:
            self._hold((1, None))
            return
        self._eof()

    def _eof(self) -> None:
        try:
            keep_open = self._protocol.eof_received()  # type: ignore[attr-defined]
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal error: protocol.eof_received() call failed.")
            return
        if not keep_open:
            self.close()

    def on_recv_error(self, res: int, gen: int) -> None:
        """EV_RECV_ERR: receiving stopped with the error -res."""
        if self._closing:
            return
        if self._paused or self._held:
            self._hold((2, res))
            return
        self._recv_error(res)

    def _recv_error(self, err: int) -> None:
        self._fatal_error(_conn_error(-err), "Fatal read error on socket transport")

    # -- writing ---------------------------------------------------------------
    def write(self, data: Any) -> None:
        if type(data) is bytes and self._write_fast:
            # hot path: one call into the core, which copies small writes into
            # the arena and sends large ones in place (bytes are immutable)
            if len(data) >= self._inplace_min:
                seg = self._raw_send_ref(self._handle, self._slot, self._gen, data, len(data))
                if seg >= 0:
                    self._inplace[seg] = data  # alive until the kernel is done with it
                    n = len(data)
                elif seg == -errno.ENOBUFS:  # every segment in flight: copy instead
                    n = self._raw_send(self._handle, self._slot, self._gen, data, len(data))
                else:
                    n = seg
            else:
                n = self._raw_send(self._handle, self._slot, self._gen, data, len(data))
            if n == len(data):
                self._qbound += n
                if self._qbound > self._high_water:
                    self._maybe_pause_protocol()
                return
            if n >= 0:  # the arena took only part of it: the rest waits here
                self._qbound += n
                self._pend(data, n)
                self._maybe_pause_protocol()
                return
        self._write_slow(data)

    def _write_slow(self, data: Any) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data argument must be a bytes-like object, not {type(data).__name__!r}")
        if self._eof_written:
            raise RuntimeError("Cannot call write() after write_eof()")
        if self._sendfile_active:
            raise RuntimeError("unable to write; sendfile is in progress")
        if not data:
            return
        if type(data) is not bytes and self._write_fast:
            mv = memoryview(data)
            if mv.nbytes >= self._inplace_min:
                # the caller may change a bytearray or memoryview once write()
                # returns, so it is copied -- into one bytes object, sent in
                # place as one segment, not into the arena 32 KiB at a time
                self.write(mv.tobytes())
                return
        if self._conn_lost:
            if self._conn_lost >= _LOG_THRESHOLD_FOR_CONNLOST_WRITES:
                logger.warning("socket.send() raised exception.")
            self._conn_lost += 1
            return
        if self._pending:
            self._pend(data, 0)
        else:
            n = self._ring.send(self._slot, self._gen, data)
            if n < 0:
                self._fatal_error(_conn_error(-n), "Fatal write error on socket transport")
                return
            self._qbound += n
            if n < len(data):
                self._pend(data, n)
        self._maybe_pause_protocol()

    def _pend(self, data: Any, offset: int) -> None:
        self._write_fast = False
        chunk = bytes(memoryview(data)[offset:])
        self._queue_pending(chunk)
        self._pending_size += len(chunk)
        self._loop.arena_waits.add(self)

    def _flush_pending(self) -> None:
        """The core freed arena chunks: move what waits here into it, in order."""
        ring = self._ring
        while self._pending:
            chunk = self._pending[0]
            if type(chunk) is _FileRange:
                ret = ring.send_file(
                    self._slot, self._gen, chunk.fd, chunk.fixed, chunk.offset, chunk.count, chunk.owner
                )
                if ret == -errno.ENOBUFS:  # every segment in flight: US_EV_ARENA says when one frees
                    self._loop.arena_waits.add(self)
                    break
                if ret < 0:  # the range is still in _pending: _drop_pending() gives its hold back
                    self._fatal_error(_conn_error(-ret), "Fatal write error on socket transport")
                    return
                if chunk.fixed:
                    ring.file_hold(chunk.fd, -1)
                self._pending_size -= chunk.count
                self._pending.popleft()
                continue
            n = ring.send(self._slot, self._gen, chunk)
            if n < 0:
                self._fatal_error(_conn_error(-n), "Fatal write error on socket transport")
                return
            self._pending_size -= n
            if n < len(chunk):
                self._pending[0] = chunk[n:]
                self._loop.arena_waits.add(self)
                break
            self._pending.popleft()
        if not self._pending:
            self._refresh_write_fast()
            if self._eof_written:
                ring.shutdown(self._slot, self._gen)
            if self._closing and not self._closed_called:
                ring.close_conn(self._slot, self._gen, True)
        self._maybe_resume_protocol()

    def write_file(self, fd: int, offset: int, count: int, *, fixed: bool = False, owner: Any = None) -> int:
        """Queue up to `count` bytes of the file `fd` from `offset`, after what
        was written before and before what is written next, like write(). The
        ring reads the file into registered memory and sends it from there; no
        byte passes through Python. `fixed`: `fd` is a fixed-file slot
        (Ring.file_register). `owner` (what keeps the file open) is held until
        the core has read the range. Returns the bytes queued: at most 1 GiB
        per call, 0 when the core has no segment free (then write the bytes
        instead). Flow control counts these bytes like written ones."""
        if self._eof_written:
            raise RuntimeError("Cannot call write() after write_eof()")
        if count <= 0:
            return 0
        if self._closing or self._conn_lost:
            self._conn_lost += 1  # as write(): dropped once the connection is going
            return count
        n = min(count, _FILE_SEGMENT_MAX)
        owner = owner if owner is not None else fd
        if self._pending:  # behind writes that wait for the arena
            if fixed and self._ring.file_hold(fd, 1) < 0:
                raise ValueError(f"fixed-file slot {fd} holds no registered file")
            self._queue_pending(_FileRange(fd, fixed, offset, n, owner))
            self._pending_size += n
            self._maybe_pause_protocol()
            return n
        ret = self._ring.send_file(self._slot, self._gen, fd, fixed, offset, n, owner)
        if ret == -errno.ENOBUFS:
            return 0
        if ret == -errno.EBADF and fixed:
            raise ValueError(f"fixed-file slot {fd} holds no registered file")
        if ret < 0:
            self._fatal_error(_conn_error(-ret), "Fatal write error on socket transport")
            return count
        self._qbound += n
        self._maybe_pause_protocol()
        return n

    async def sendfile(self, file: Any, offset: int, count: int | None) -> int:
        """loop.sendfile() on this transport: the file goes through the ring
        (read into registered memory, sent from there). As asyncio's native
        path: reading pauses, earlier writes drain first, write() raises while
        it runs, and the file position ends after the last byte sent. Raises
        asyncio.SendfileNotAvailableError for anything but a regular file."""
        try:
            fileno = file.fileno()
            st = os.fstat(fileno)
        except (AttributeError, io.UnsupportedOperation, OSError) as exc:
            raise asyncio.SendfileNotAvailableError("not a regular file") from exc
        if not stat.S_ISREG(st.st_mode):
            raise asyncio.SendfileNotAvailableError("not a regular file")
        left = max(0, st.st_size - offset)
        if count:
            left = min(left, count)
        if not left:
            return 0
        resume_reading = self.is_reading()
        self.pause_reading()
        await self._wait_empty()
        sent = 0
        base = self._bytes_sent()
        self._set_sendfile_active(True)  # write() refuses until done
        try:
            while sent < left:
                if self.is_closing():
                    raise ConnectionError("the transport closed during sendfile()")
                self.write_file(fileno, offset + sent, left - sent, owner=file)
                await self._wait_empty()  # none free (0 queued): queued sends finish first
                sent = self._bytes_sent() - base
        finally:
            sent = min(left, self._bytes_sent() - base)
            self._set_sendfile_active(False)
            if resume_reading:
                self.resume_reading()
            file.seek(offset + sent)
        return sent

    async def _wait_empty(self) -> None:
        """Until everything queued has been sent (loop.sendfile()'s contract)."""
        if self._closed_called:
            raise ConnectionError("Connection is closed by peer")
        if self._drained():
            return
        if self._empty_waiter is None:
            self._empty_waiter = self._loop.create_future()
        self._ring.notify_below(self._slot, self._gen, 0)
        try:
            await self._empty_waiter
        finally:
            self._empty_waiter = None

    def _bytes_sent(self) -> int:
        if self._sent_final >= 0:
            return self._sent_final
        n = self._ring.sent(self._slot, self._gen)
        return n if n >= 0 else 0

    def _drained(self) -> bool:
        return not self._pending and not self._ring.queued(self._slot, self._gen)

    def _refresh_write_fast(self) -> None:
        self._write_fast = not (self._pending or self._eof_written or self._conn_lost or self._sendfile_active)

    def _set_sendfile_active(self, active: bool) -> None:
        self._sendfile_active = active
        self._refresh_write_fast()

    def _wake_empty(self, exc: BaseException | None) -> None:
        w = self._empty_waiter
        if w is None or w.done():
            return
        if exc is not None:
            w.set_exception(exc)
        elif self._drained():
            w.set_result(None)
        else:
            self._ring.notify_below(self._slot, self._gen, 0)

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        if self._closing or self._eof_written:
            return
        self._eof_written = True
        self._write_fast = False
        if not self._pending:
            self._ring.shutdown(self._slot, self._gen)

    def get_write_buffer_size(self) -> int:
        queued = self._ring.queued(self._slot, self._gen)
        self._qbound = queued
        return queued + self._pending_size

    def on_writable(self, res: int, gen: int) -> None:
        """EV_WRITABLE: what is queued in the core fell to the level asked of
        notify_below() (res bytes are still queued)."""
        if self._empty_waiter is not None:
            self._wake_empty(None)
        self._maybe_resume_protocol()
        if self._closing and not self._closed_called and not self._pending:
            # the core held a flushed close for this wakeup (see us_close)
            self._ring.close_conn(self._slot, self._gen, True)

    def _maybe_pause_protocol(self) -> None:
        size = self.get_write_buffer_size()
        if size <= self._high_water or self._protocol_paused:
            return
        # Sends go to the kernel at the next enter, so this counts data the
        # stdlib loop would already have written into the socket. Let the
        # kernel take what it can now, and pause only for what it cannot.
        if self._loop.in_owner_thread():
            self._ring.flush()
            size = self.get_write_buffer_size()
            if size <= self._high_water:
                return
        self._protocol_paused = True
        self._ring.notify_below(self._slot, self._gen, self._low_water)
        try:
            self._protocol.pause_writing()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._loop.call_exception_handler(
                {
                    "message": "protocol.pause_writing() failed",
                    "exception": exc,
                    "transport": self,
                    "protocol": self._protocol,
                }
            )

    def _maybe_resume_protocol(self) -> None:
        if not self._protocol_paused:
            return
        if self.get_write_buffer_size() > self._low_water:
            self._ring.notify_below(self._slot, self._gen, max(0, self._low_water - self._pending_size))
            return
        self._protocol_paused = False
        try:
            self._protocol.resume_writing()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._loop.call_exception_handler(
                {
                    "message": "protocol.resume_writing() failed",
                    "exception": exc,
                    "transport": self,
                    "protocol": self._protocol,
                }
            )

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        super().set_write_buffer_limits(high, low)
        if self._protocol_paused:
            self._maybe_resume_protocol()
        else:
            self._maybe_pause_protocol()

    def _drop_pending(self) -> None:
        for chunk in self._pending:
            if type(chunk) is _FileRange and chunk.fixed and not self._ring.closed:
                self._ring.file_hold(chunk.fd, -1)
        self._pending = _EMPTY
        self._pending_size = 0

    def on_send_error(self, res: int, gen: int) -> None:
        """EV_SEND_ERR: a send failed with the error -res; the core dropped what was queued."""
        self._drop_pending()
        self._write_fast = False
        self._fatal_error(_conn_error(-res), "Fatal write error on socket transport")

    # -- closing ---------------------------------------------------------------
    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._held = _EMPTY
        self._update_receiver()
        if not self._pending:
            if not self._ring.queued(self._slot, self._gen):
                self._conn_lost += 1  # as asyncio: later writes are dropped, not sent
                self._write_fast = False
            self._ring.close_conn(self._slot, self._gen, True)

    def abort(self) -> None:
        self._force_close(None)

    def _force_close(self, exc: BaseException | None) -> None:
        if self._closed_called:
            return
        if exc is not None and self._exc is None:
            self._exc = exc
        self._closing = True
        self._held = _EMPTY
        self._update_receiver()
        self._drop_pending()
        self._loop.arena_waits.discard(self)
        self._conn_lost += 1
        self._write_fast = False
        self._closed_called = True
        self._sent_final = self._bytes_sent()
        if self._empty_waiter is not None:
            self._wake_empty(exc or ConnectionError("Connection is closed by peer"))
        self._ring.close_conn(self._slot, self._gen, False)

    def _fatal_error(self, exc: BaseException, message: str) -> None:
        if isinstance(exc, OSError):
            if self._loop.get_debug():
                logger.debug("%r: %s", self, message, exc_info=True)
        else:
            self._loop.call_exception_handler(
                {"message": message, "exception": exc, "transport": self, "protocol": self._protocol}
            )
        self._force_close(exc)

    def on_closed(self, res: int, gen: int) -> None:
        """EV_CLOSED: the core closed the slot of generation `gen` and freed
        it. For this transport's generation, its end: connection_lost()."""
        if gen != self._gen:
            return  # the close of the slot's connection before this one
        # out of the loop's table first: connection_lost() may open a
        # connection that the core puts in this same slot
        self._loop.connection_closed(self._slot)
        self._closing = True
        self._update_receiver()
        self._loop.arena_waits.discard(self)
        if self._empty_waiter is not None:
            self._wake_empty(self._exc or ConnectionError("Connection is closed by peer"))
        if self._sock_obj is not None:
            self._sock_obj.close()
            self._sock_obj = None
        try:
            self._protocol.connection_lost(self._exc)  # type: ignore[arg-type]  # any exception, as asyncio
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._loop.call_exception_handler(
                {
                    "message": "Exception in callback protocol.connection_lost()",
                    "exception": exc,
                    "transport": self,
                    "protocol": self._protocol,
                }
            )
        finally:
            server = self._server
            self._server = None
            if server is not None:
                _server_detach(server, self)

    def loop_closing(self) -> None:
        """The loop is closing, and its ring with it, without this connection's
        end being reported: close the socket object it holds, if any (an
        adopted socket, or the one get_extra_info('socket') made)."""
        if self._sock_obj is not None:
            self._sock_obj.close()

    def __del__(self, _warn: Any = warnings.warn) -> None:
        # as asyncio's transports: a transport dropped while open is a leak
        if not self._closing:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)


class ArenaWaits:
    """The transports of one ring whose writes wait for its send arena (the
    core took only part of them, or had no segment free): the loop makes it
    and wakes it when the core reports chunks or segments freed (EV_ARENA);
    each transport then moves what waits into the arena, in the order they
    began to wait."""

    __slots__ = ("_waiting",)

    def __init__(self) -> None:
        self._waiting: dict[int, UringTransport] = {}

    def add(self, transport: UringTransport) -> None:
        self._waiting[transport._slot] = transport

    def discard(self, transport: UringTransport) -> None:
        self._waiting.pop(transport._slot, None)

    def wake(self) -> None:
        waiting, self._waiting = self._waiting, {}
        for transport in waiting.values():
            transport._flush_pending()

    def clear(self) -> None:
        self._waiting.clear()

    def __len__(self) -> int:
        return len(self._waiting)

    def __iter__(self) -> Iterator[UringTransport]:
        return iter(list(self._waiting.values()))


class _FileRange:
    """A write_file() that waits in _pending behind writes the arena could not take."""

    __slots__ = ("fd", "fixed", "offset", "count", "owner")

    def __init__(self, fd: int, fixed: bool, offset: int, count: int, owner: Any) -> None:
        self.fd, self.fixed, self.offset, self.count, self.owner = fd, fixed, offset, count, owner


def _conn_error(err: int) -> OSError:
    if err == errno.ECONNRESET:
        return ConnectionResetError(err, os.strerror(err))
    if err == errno.EPIPE:
        return BrokenPipeError(err, os.strerror(err))
    if err == errno.ECONNABORTED:
        return ConnectionAbortedError(err, os.strerror(err))
    return OSError(err, os.strerror(err))


def _server_attach(server: Any, transport: Any) -> None:
    # asyncio.Server._attach() takes the transport from 3.12 on
    try:
        server._attach(transport)
    except TypeError:
        server._attach()


def _server_detach(server: Any, transport: Any) -> None:
    try:
        server._detach(transport)
    except TypeError:
        server._detach()
