"""asyncio.Transport over a connection that lives in the ring's slot table.

Completion model (CPython's proactor_events.py is the relative, not
selector_events.py): the core reports what happened to the connection and
the loop hands each report to the transport -- received bytes to its
`receive`, the other events to its on_* handlers (the loop's dispatch
table). UringTransport is that one object, its methods split by job:

    transport_reading.Reading   receiving: the receivers, pause/resume, held data, EOF
    transport_writing.Writing   sending: writes, file ranges, arena waits, flow control
    this module                 the start, extra info, and the end

Closing: close() stops reading, lets the core flush what is queued and
close the slot; connection_lost() runs when the core reports the slot
closed (EV_CLOSED), exactly once. abort() drops what is queued.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import socket
import warnings
from asyncio import constants, trsock
from typing import Any

from . import sockaddr
from .transport_base import EMPTY, TransportLoop
from .transport_reading import Reading, discard
from .transport_writing import Writing

logger = logging.getLogger("uringserve")


class UringTransport(Reading, Writing):
    """One connection of the ring as an asyncio transport (see the module's docstring)."""

    __slots__ = ()
    _start_tls_compatible = True
    # loop.sendfile() queues the file in the core, which reads it into
    # registered memory and sends it from there (Writing.sendfile(), which
    # the loop's _sendfile_native calls)
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
        self._sock_obj = sock
        self._extra_cache = dict(extra or {})
        self._closing = False
        self._closed_called = False
        self._conn_lost = 0
        self._exc = None
        self._paused = False
        self._held = EMPTY  # made on first use, as _pending
        self._held_scheduled = False
        self._pending = EMPTY
        self._pending_size = 0
        self._eof_written = False
        self._protocol_paused = False
        self._empty_waiter = None
        self._sendfile_active = False
        self._sent_final = -1
        self._qbound = 0
        self._write_fast = True
        self._raw_send = self._ring.raw_send
        self._raw_send_ref = self._ring.raw_send_ref
        self._inplace = self._ring.held
        self._handle = self._ring.handle
        self._inplace_min = self._ring.config.inplace_min
        self.set_protocol(protocol)
        if server is not None:
            _server_attach(server, self)

    # -- the start ---------------------------------------------------------------
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

    # -- the end ---------------------------------------------------------------
    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._held = EMPTY
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
        self._held = EMPTY
        self._update_receiver()
        self._drop_pending()
        self._loop.arena_waits.discard(self._slot)
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
                # the exception itself: an errno the core reported was never
                # raised, so exc_info=True would log "NoneType: None"
                logger.debug("%r: %s", self, message, exc_info=exc)
        else:
            self._report(message, exc)
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
        self._loop.arena_waits.discard(self._slot)
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
            self._report("Exception in callback protocol.connection_lost()", exc)
        finally:
            server = self._server
            self._server = None
            if server is not None:
                _server_detach(server, self)
            self._slot_closed()

    def _slot_closed(self) -> None:
        """After connection_lost(): what a subclass holds for the slot goes (the TLS transport's SSL object)."""

    def loop_closing(self) -> None:
        """The loop is closing, and its ring with it, without this connection's
        end being reported: close the socket object it holds, if any (an
        adopted socket, or the one get_extra_info('socket') made), and let go of
        a receiver bound to this transport (a cycle: see _update_receiver)."""
        if self._sock_obj is not None:
            self._sock_obj.close()
        self.receive = discard

    def __del__(self, _warn: Any = warnings.warn) -> None:
        # as asyncio's transports: a transport dropped while open is a leak
        if not self._closing:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)


# asyncio.Server._attach()/_detach() take the transport from 3.13 on, not
# before. Asked once per server class, not by calling with it and catching
# the TypeError: raising it formats its message, twice per connection, a
# twentieth of a one-request connection's instructions in Python
_TAKES_TRANSPORT: dict[type, bool] = {}


def _takes_transport(cls: type) -> bool:
    takes = _TAKES_TRANSPORT.get(cls)
    if takes is None:
        try:
            takes = len(inspect.signature(cls._attach).parameters) > 1  # type: ignore[attr-defined]
        except (TypeError, ValueError):  # no signature to read: the newer form
            takes = True
        _TAKES_TRANSPORT[cls] = takes
    return takes


def _server_attach(server: Any, transport: Any) -> None:
    if _takes_transport(type(server)):
        server._attach(transport)
    else:
        server._attach()


def _server_detach(server: Any, transport: Any) -> None:
    if _takes_transport(type(server)):
        server._detach(transport)
    else:
        server._detach()
