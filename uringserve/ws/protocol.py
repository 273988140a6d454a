"""WebSocketProtocol: one WebSocket connection after the 101, on any asyncio
transport, as a Connection of the server layer (registry, one deadline
timer, the drain hook).

HTTPProtocol hands the transport over (HTTPProtocol.switch_protocol):
from then on HTTP's timers, keep-alive and limits no longer apply. The
bytes go: transport -> data_received(bytes) -> FrameReader.feed (one call
per read) -> the handler's on_message(ws, data) per message; and back:
ws.send(data) -> MessageWriter.message -> one transport.write per message.

The app side is a handler with on_connect(ws), on_message(ws, data) and
on_close(ws, code, reason): a native WebSocketHandler (ws/native.py) or
the ASGI adapter (ws/asgi.py), which queues messages for the app's
receive() and pauses reading when `max_queue` wait.

One deadline per connection (Connection's timer), by what is awaited:
    PING     the next keep-alive ping is due (ping_interval)
    PONG     a ping waits for its pong (ping_timeout) -> close 1011
    CLOSING  our close frame waits for the peer's, or what we wrote waits
             to be read before the TCP close (close_timeout) -> abort
"""

from __future__ import annotations

import asyncio
import logging
import struct
from typing import Any

from ..http.body import ClientDisconnected
from ..server.connection import KIND_USER, Connection
from . import frames
from .config import WSConfig
from .frames import OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, FrameReader, MessageWriter, ProtocolError

logger = logging.getLogger("uringserve.ws")

KIND_PING = KIND_USER
KIND_PONG = KIND_USER + 1
KIND_CLOSING = KIND_USER + 2

# where the connection is; CLOSING: our close frame is out, the peer's has
# not come; ENDING: the close handshake is over (or failed), the TCP
# connection is closing; CLOSED: the transport is gone
OPEN, CLOSING, ENDING, CLOSED = 1, 2, 3, 4

_pong = frames.encode  # (OP_PONG, payload)


class WebSocketClosed(ClientDisconnected):
    """send() (or drain()) on a WebSocket that is closed or closing; a
    ConnectionError, as uvicorn's ClientDisconnected is an OSError."""


class WSStats:
    """What one server's WebSocket connections did (the Prometheus metrics
    sample it: metrics.Metrics.sample). A connection counts its messages
    and bytes itself (attributes of its own, the cheapest place on the hot
    path) and adds them here when it closes; totals() adds the open ones'.
    Bytes are the frames' on the wire (headers included, compressed when
    deflate is on)."""

    __slots__ = ("opened", "closed", "messages_in", "messages_out", "bytes_in", "bytes_out", "close_codes")

    def __init__(self) -> None:
        self.opened = 0
        self.closed = 0
        self.messages_in = 0  # of the connections that closed
        self.messages_out = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.close_codes: dict[int, int] = {}  # the code each connection closed with (1006: none)

    @property
    def open(self) -> int:
        return self.opened - self.closed

    def totals(self, connections: Any = ()) -> dict[str, int]:
        """messages_in/out and bytes_in/out so far: the closed connections'
        and those of the WebSocketProtocols among `connections` (a registry)."""
        t = {
            "messages_in": self.messages_in,
            "messages_out": self.messages_out,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
        }
        for c in connections:
            if type(c) is WebSocketProtocol or isinstance(c, WebSocketProtocol):
                t["messages_in"] += c.messages_in
                t["messages_out"] += c.messages_out
                t["bytes_in"] += c.bytes_in
                t["bytes_out"] += c.bytes_out
        return t


class WebSocketProtocol(Connection, asyncio.Protocol):
    """The connection after the 101. `handler` gets on_connect(ws),
    on_message(ws, data) (str for a text message, bytes for a binary one)
    and on_close(ws, code, reason) once, with the code the connection
    closed with (1006 when the TCP connection ended without a close
    handshake). `ws` is this object: send(), close(), ping(), drain(),
    write_paused, pause_reading()/resume_reading()."""

    def __init__(
        self,
        config: WSConfig,
        handler: Any,
        deflate: Any = None,
        stats: WSStats | None = None,
        subprotocol: str | None = None,
        request: tuple[Any, str, bytes, str] | None = None,
        access_log: Any = None,
        served: int = 0,
    ) -> None:
        self.config = config
        self.handler = handler
        self.subprotocol = subprotocol
        self._reader = FrameReader(config.max_size, deflate)
        self._message = MessageWriter(deflate).message
        self._on_message = handler.on_message
        self._stats = stats if stats is not None else WSStats()
        # (client, method, target, HTTP version) of the upgrade request: the access-log line at close
        self._request = request
        self.client = request[0] if request is not None else None
        self._access_log = access_log
        self._served = served  # HTTP requests this connection answered before the upgrade
        self.state = OPEN
        self.close_code: int | None = None  # the code the connection closed with, once it did
        self.close_reason = ""
        self._told = False  # on_close was called
        self.write_paused = False
        self.read_paused = False
        self._held: list | None = None  # events read after the handler paused reading, delivered on resume
        self._drain_waiters: list[asyncio.Future] = []
        self._ping_payload = b""
        self._pings = 0
        self._t0 = 0.0
        self._write: Any = None
        # this connection's counts (WSStats.totals() reads them; added there at close)
        self.messages_in = 0
        self.messages_out = 0
        self.bytes_in = 0
        self.bytes_out = 0

    # -- asyncio protocol ----------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        Connection.connection_made(self, transport)  # the loop, its clock, the registry
        self._write = transport.write
        self._t0 = self._clock()
        self._stats.opened += 1
        if self.config.ping_interval:
            self.set_deadline(KIND_PING, self.config.ping_interval)
        try:
            self.handler.on_connect(self)
        except Exception as exc:
            self._handler_failed("on_connect", exc)

    def data_received(self, data: bytes) -> None:
        try:
            events = self._reader.feed(data)
        except ProtocolError as exc:
            self.bytes_in += len(data)
            self._fail(exc.code, exc.reason)
            return
        self.bytes_in += len(data)
        if self._held is not None:  # behind events a pause held back
            self._held.extend(events)
            return
        if self.read_paused:  # paused before any read (on_connect): held from the first
            self._held = events
            return
        # _deliver(events), inline: this is the per-read path (a call is a tenth of a small message's cost)
        on_message = self._on_message
        it = iter(events)
        try:
            for ev in it:
                op = ev[0]
                if op == OP_TEXT or op == OP_BINARY:
                    if self.state is OPEN:  # after our close frame, messages are dropped (RFC 6455 §5.5.1)
                        self.messages_in += 1
                        on_message(self, ev[1])
                        if self.read_paused:  # the handler paused: the rest of this read waits with the socket
                            self._held = list(it)
                            return
                else:
                    self._control(ev)
                    if op == OP_CLOSE:
                        return
        except Exception as exc:  # the handler's: 1011 to the peer, not the transport's fatal error (a reset)
            self._handler_failed("on_message", exc)

    def _control(self, ev: tuple) -> None:
        op = ev[0]
        if op == OP_PING:
            if self.state is OPEN or self.state is CLOSING:
                self._send_raw(_pong(OP_PONG, ev[1]))
        elif op == OP_PONG:
            if self._timer_kind == KIND_PONG and ev[1] == self._ping_payload:
                self.set_deadline(KIND_PING, self.config.ping_interval)
        elif op == OP_CLOSE:
            self._peer_closed(ev[1], ev[2])

    def _deliver(self, events: list) -> None:
        """Events held by a pause, on resume: as data_received delivers them."""
        on_message = self._on_message
        it = iter(events)
        try:
            for ev in it:
                op = ev[0]
                if op == OP_TEXT or op == OP_BINARY:
                    if self.state is OPEN:  # after our close frame, messages are dropped (RFC 6455 §5.5.1)
                        self.messages_in += 1
                        on_message(self, ev[1])
                        if self.read_paused:
                            self._held = list(it)
                            return
                else:
                    self._control(ev)
                    if op == OP_CLOSE:
                        return
        except Exception as exc:
            self._handler_failed("on_message", exc)

    def _handler_failed(self, where: str, exc: Exception) -> None:
        self._loop.call_exception_handler(
            {"message": f"WebSocket handler's {where} failed", "exception": exc, "protocol": self}
        )
        self._fail(1011, "internal error")

    def eof_received(self) -> bool | None:
        # the peer ended its side without a close frame (or after ours): the
        # transport closes; connection_lost says 1006 if no handshake happened
        return None

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.close_code is None or self.state is CLOSING:
            # no close frame came, ours unanswered included (RFC 6455 §7.1.5)
            self.close_code, self.close_reason = 1006, ""
        self.state = CLOSED
        self.read_paused = False  # a resume_reading() after this delivers nothing
        self._held = None
        self._tell(self.close_code, self.close_reason)
        for w in self._drain_waiters:
            if not w.done():
                w.set_exception(WebSocketClosed("the WebSocket is closed"))
        self._drain_waiters.clear()
        stats = self._stats
        stats.closed += 1
        stats.messages_in += self.messages_in
        stats.messages_out += self.messages_out
        stats.bytes_in += self.bytes_in
        stats.bytes_out += self.bytes_out
        codes = stats.close_codes
        codes[self.close_code] = codes.get(self.close_code, 0) + 1
        if self._access_log is not None and self._request is not None:
            _, method, target, version = self._request
            self._access_log(self, method, target, version, 101, self.bytes_out, self._clock() - self._t0)
        Connection.connection_lost(self, exc)  # the timer stops, the registry lets go

    def pause_writing(self) -> None:
        # what the peer does not read holds what it sends: a handler that
        # answers as it reads (an echo) would otherwise buffer without bound
        self.write_paused = True
        if not self.read_paused and self.state is not CLOSED:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if not self.read_paused and self.state is not CLOSED:
            self.transport.resume_reading()
        waiters, self._drain_waiters = self._drain_waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    # -- what the app calls --------------------------------------------------------
    def send(self, data: str | bytes) -> None:
        """Send a message: text for str, binary for bytes (bytearray and
        memoryview too). Buffered by the transport: a sender that may outrun
        its peer checks write_paused and awaits drain()."""
        if self.state is not OPEN:
            raise WebSocketClosed(
                "the WebSocket is closed" if self.state is not CLOSING else "the WebSocket is closing"
            )
        frame = self._message(data)
        self._write(frame)
        self.messages_out += 1
        self.bytes_out += len(frame)

    async def drain(self) -> None:
        """Until the transport's buffer is below its high-water mark."""
        if self.state is CLOSED:
            raise WebSocketClosed("the WebSocket is closed")
        if self.write_paused:
            w = self._loop.create_future()
            self._drain_waiters.append(w)
            await w

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the close handshake: our close frame now, the TCP close when
        the peer's answers it (or close_timeout later). Nothing after the
        first call; ValueError for a code an endpoint must not send or a
        reason longer than 123 bytes."""
        if self.state is not OPEN:
            return
        frames.check_close_code(code)
        if len(reason.encode("utf-8")) > 123:
            raise ValueError("a close reason is at most 123 bytes of UTF-8")
        self.state = CLOSING
        self.close_code = code
        self.close_reason = reason
        self._send_raw(frames.encode_close(code, reason))
        self.set_deadline(KIND_CLOSING, self.config.close_timeout)
        if self.read_paused:  # the peer's close frame must be read
            self.resume_reading()

    def ping(self, payload: bytes = b"") -> None:
        """An unsolicited ping (its pong is not waited for)."""
        if self.state is OPEN:
            self._send_raw(frames.encode(OP_PING, payload))

    def pause_reading(self) -> None:
        """Read nothing more until resume_reading(): the peer's sends wait in
        the kernel's buffers, then its own. (Reading also waits, by itself,
        while the peer does not read what was sent: write_paused.)"""
        if not self.read_paused and self.state is OPEN:
            self.read_paused = True
            if not self.write_paused:
                self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused:
            self.read_paused = False
            held = self._held
            if held is not None:  # what the last read brought after the pause, first
                self._held = None
                self._deliver(held)
                if self.read_paused:
                    return
            if self.state is not CLOSED and not self.write_paused:
                self.transport.resume_reading()

    @property
    def closed(self) -> bool:
        """The close handshake began (from either side) or the connection is gone."""
        return self.state is not OPEN

    # -- closing -------------------------------------------------------------------
    def _send_raw(self, frame: bytes) -> None:
        if self.state is not CLOSED:
            self._write(frame)
            self.bytes_out += len(frame)

    def _peer_closed(self, code: int, reason: str) -> None:
        if self.state is OPEN:
            # echo the peer's code (an empty close frame for 1005: none was given), RFC 6455 §5.5.1
            self._send_raw(frames.encode_close(code, reason) if code != 1005 else frames.encode_close(1005))
            self.close_code = code
            self.close_reason = reason
        self._end()

    def _fail(self, code: int, reason: str) -> None:
        """Fail the connection (RFC 6455 §7.1.7): our close frame with `code`,
        then the TCP close, without waiting for the peer's."""
        if self.state is OPEN:
            self._send_raw(frames.encode_close(code, reason))
            self.close_code = code
            self.close_reason = reason
        if self.state < ENDING:
            self._end()

    def _end(self) -> None:
        """The handshake is over: the server closes the TCP connection first
        (RFC 6455 §7.1.1); what was written goes out first, for at most
        close_timeout (a peer that never reads is cut)."""
        if self.state is CLOSED:
            return
        self.state = ENDING
        self._tell(self.close_code or 1005, self.close_reason)
        if self.read_paused:
            self.read_paused = False  # nothing more is read: what still arrives is discarded
        self.transport.close()
        self.set_deadline(KIND_CLOSING, self.config.close_timeout)

    def _tell(self, code: int, reason: str) -> None:
        if not self._told:
            self._told = True
            try:
                self.handler.on_close(self, code, reason)
            except Exception as exc:
                self._loop.call_exception_handler(
                    {"message": "WebSocket handler's on_close failed", "exception": exc, "protocol": self}
                )

    def timed_out(self, kind: int) -> None:
        if self.state is CLOSED:
            return
        if kind == KIND_PING:
            if self.state is OPEN:
                self._pings += 1
                self._ping_payload = struct.pack("!I", self._pings)
                self._send_raw(frames.encode(OP_PING, self._ping_payload))
                timeout = self.config.ping_timeout
                if timeout:
                    self.set_deadline(KIND_PONG, timeout)
                else:
                    self.set_deadline(KIND_PING, self.config.ping_interval)
        elif kind == KIND_PONG:
            if self.read_paused and not self.write_paused:
                # we stopped reading, not the peer (it still takes our bytes):
                # its pong waits unread. A peer that takes nothing is not excused
                self.set_deadline(KIND_PONG, self.config.ping_timeout)
                return
            logger.debug("closing a WebSocket whose peer did not answer a ping in %.1fs", self.config.ping_timeout)
            self._fail(1011, "keepalive ping timeout")
        elif kind == KIND_CLOSING:
            logger.debug("cutting a WebSocket whose close did not complete in %.1fs", self.config.close_timeout)
            if self.close_code is None or self.state is CLOSING:
                # the peer never sent its close frame: 1006 (RFC 6455 §7.1.5), not the code we sent
                self.close_code, self.close_reason = 1006, ""
                self._tell(1006, "")
            self.state = ENDING
            self.transport.abort()

    # -- the server layer ----------------------------------------------------------
    def requests_served(self) -> int:
        return self._served + 1

    def shutdown(self) -> None:
        """The drain hook: close 1001 (Going Away); the server waits for the
        handshake (the registry lets go at connection_lost) up to its drain
        timeout, then abort()s."""
        if self.state is OPEN:
            self.close(1001, "server shutting down")

    def abort(self) -> list[asyncio.Task]:
        tasks: list[asyncio.Task] = []
        cut = getattr(self.handler, "abort", None)
        if cut is not None:
            tasks = cut()
        if self.state is not CLOSED:
            self.state = ENDING
            self.transport.abort()
        return tasks


__all__ = ["WebSocketProtocol", "WebSocketClosed", "WSStats", "OPEN", "CLOSING", "ENDING", "CLOSED"]
