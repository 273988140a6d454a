"""HTTPProtocol: one HTTP/1.1 connection on any asyncio transport.

Requests are parsed as bytes arrive (parser.RequestParser) into Exchanges
queued in order; one exchange is answered at a time, so pipelined responses
leave in request order. Reading pauses when `max_pipelined` requests wait or
request bodies buffer more than `body_buffer_bytes`.

The connection's states and the moves between them are written down in
state.py (HEAD, IDLE, BODY, ANSWERING, HALF_CLOSED, LINGERING, CLOSING,
CLOSED); `conn.state` holds where it is. One deadline per connection, set
by the waiting state it belongs to:
    HEAD   a request head has begun (or the connection is new): header_timeout -> 408
    BODY   a request body is arriving: body_timeout between reads -> 408
    IDLE   kept alive between requests: keepalive_timeout -> silent close
Entering a state only moves the deadline; the one timer handle, when it
fires early, re-arms itself for the deadline, and a deadline whose state
was left is void. So a request costs two clock reads, not two
call_later()s and their cancelled handles in the heap.

Exchange talks to its connection through HTTPProtocol's public methods
(respond_whole, response_done, response_failed, write, write_file, drain,
keeps_alive, ...), never its private attributes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from ..server.connection import KIND_NONE, Connection
from . import access, framing
from . import parser as _parser_mod
from .body import Body, ClientDisconnected
from .config import HTTPConfig
from .parser import _HEAD_LEN, HeaderBlock, HTTPError, RequestParser, scanned_head
from .state import ANSWERING, BODY, CLOSED, CLOSING, HALF_CLOSED, HEAD, IDLE, LINGERING, State

logger = logging.getLogger("uringserve.http")

# seconds of quiet after which a draining connection with nothing in hand
# closes (counted from its last response; a new connection's from the drain's
# start): a request that arrives in it is answered with Connection: close.
# Closed-loop clients send their next request within microseconds, pools far
# later or never; one second is short beside a drain's graceful timeout and
# keepalive_timeout, and long beside any network round trip.
DRAIN_GRACE = 1.0
# seconds a connection closed after a response reads on (and discards) what the client still sends
LINGER = 2.0
# answers each request: called with the runner's own exchange_class (an Exchange subclass)
Runner = Callable[[Any], None]
_DATE = framing.DATE
_whole_response = framing.whole_response
_time = time.time

# the end of a response head, by (keep-alive, HTTP version)
_CONNECTION = {
    (False, "1.1"): b"Connection: close\r\n\r\n",
    (False, "1.0"): b"Connection: close\r\n\r\n",
    (True, "1.1"): b"\r\n",
    (True, "1.0"): b"Connection: keep-alive\r\n\r\n",
}

EMPTY_BODY = Body(lambda: None, None)  # shared by every request without a body: never fed
EMPTY_BODY.done = True


class Exchange:
    """One request and its response. The parser makes it (as its head_class)
    when a request head is complete: one object per request.

    No __slots__: the class holds every field's default and __init__ sets
    only what a request brings, which measured cheaper than setting two
    dozen slots per request."""

    # the request, beyond what __init__ sets
    expect_continue = False
    content_length: int | None = None
    chunked = False
    upgrade = False
    has_body = False
    body_in: Body = EMPTY_BODY  # the request body, as it arrives (a Body of its own when there is one)
    # the response, and the exchange's progress (state.py): queued, running
    # (handed to the runner), started (its head written), finished
    started = False
    finished = False
    chunked_out = False  # the response's body is chunked
    close_delimited = False  # the response's body ends with the connection (HTTP/1.0 without a length)
    remaining: int | None = None  # bytes of a Content-Length body still to send
    continue_sent = False
    status = 0
    task: asyncio.Task | None = None
    running = False  # handed to the runner
    ws: Any = None  # a WebSocket handshake the app may accept (ws.upgrade.WSRequest), once checked
    conn: HTTPProtocol  # set by HTTPProtocol.on_head

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
        self.method: str = method.decode("ascii")  # llhttp accepts only its known methods
        self.target = target
        q = target.find(b"?")
        self.raw_path = target if q < 0 else target[:q]  # as sent; an attribute: most handlers route on it
        self.version = version
        self._headers = headers  # a list, or a parser.HeaderBlock split on first use
        self.keep_alive = keep_alive
        if content_length or chunked or upgrade or expect_continue:
            self.has_body = chunked or bool(content_length)
            self.content_length = content_length
            self.chunked = chunked
            self.expect_continue = expect_continue
            if upgrade:
                self.upgrade = True
                self.keep_alive = False
        elif content_length is not None:
            self.content_length = content_length

    @property
    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        """(name, value) pairs, names lower-cased, in the order received."""
        headers = self._headers
        if type(headers) is HeaderBlock:
            self._headers = headers = headers.pairs()
        return headers

    @property
    def query_string(self) -> bytes:
        """The target after its "?", as sent."""
        raw_path = self.raw_path
        return b"" if raw_path is self.target else self.target[len(raw_path) + 1 :]

    @property
    def head_only(self) -> bool:
        return self.method == "HEAD"

    def send_continue(self) -> None:
        """100 Continue, on the handler's first read of a body the client
        waits to send (Expect: 100-continue), unless the response began."""
        if not self.started and not self.continue_sent and not self.body_in.done:
            self.continue_sent = True
            self.conn.write(framing.CONTINUE)

    # -- response --------------------------------------------------------------
    def respond_prepared(self, status: int, head: bytes, body: bytes) -> None:
        """A whole response in one write (start() and end() for a body known in
        advance): `head` is the status line, headers and Content-Length,
        `body` what follows them, as framing.whole_head() makes them (a native
        Response makes them once). The connection does it:
        HTTPProtocol.respond_whole(), which the front ends call directly."""
        self.conn.respond_whole(self, status, head, body)

    def start(self, status: int, block: bytes, length: int | None, first_body: bytes = b"") -> None:
        """Send the status line and the encoded headers `block`
        (framing.encode_headers), and `first_body` with them. `length` None
        means unknown: chunked for HTTP/1.1, close-delimited for 1.0."""
        if self.started:
            raise RuntimeError("the response has already started")
        self.started = True
        self.status = status
        conn = self.conn
        self.keep_alive = conn.keeps_alive(self)
        close = _CONNECTION[self.keep_alive, self.version]
        parts = [framing.status_line(status), framing.date_header(), conn.server_header, block]
        has_body = framing.body_allowed(status)
        if not has_body:
            self.remaining = 0
        elif length is not None:
            parts.append(b"Content-Length: %d\r\n" % length)
            self.remaining = 0 if self.head_only else length
        elif not self.head_only:
            if self.version == "1.1":
                self.chunked_out = True
                parts.append(b"Transfer-Encoding: chunked\r\n")
            else:  # the close delimits the body
                self.keep_alive = False
                self.close_delimited = True
                close = _CONNECTION[False, "1.0"]
        parts.append(close)
        if first_body and self._body_allowed():
            parts.append(self._frame(first_body))
        conn.write(b"".join(parts))

    def _body_allowed(self) -> bool:
        return not self.head_only and framing.body_allowed(self.status)

    def _frame(self, data: bytes) -> bytes:
        if self.remaining is not None:
            if len(data) > self.remaining:
                raise RuntimeError(
                    f"response body longer than its Content-Length ({len(data)} bytes with {self.remaining} left)"
                )
            self.remaining -= len(data)
            return data
        return framing.chunk(data) if self.chunked_out else data

    def send(self, data: bytes) -> None:
        if self.finished:
            raise RuntimeError("the response is complete")
        if data and self._body_allowed():
            self.conn.write(self._frame(data))

    def send_file(self, file: Any, offset: int, count: int) -> Any:
        """Queue a file range after what was sent (a Content-Length response).
        Returns None, or an awaitable when the transport cannot take files."""
        if not self._body_allowed() or not count:
            return None
        if self.remaining is not None:
            if count > self.remaining:
                raise RuntimeError("file range longer than the response's Content-Length")
            self.remaining -= count
        return self.conn.write_file(file, offset, count)

    def end(self) -> None:
        """The response is complete: the next request's turn."""
        if self.finished:
            return
        if self.remaining:  # the peer was promised more: the connection cannot be reused
            self.finished = True
            exc = RuntimeError(f"response ended {self.remaining} bytes short of its Content-Length")
            self._report(exc)
            self.conn.response_failed(self, exc)
            return
        if self.chunked_out and self._body_allowed():
            self.conn.write(framing.LAST_CHUNK)
        self.finished = True
        self.conn.response_done(self)

    def fail(self, exc: BaseException) -> None:
        """The handler failed: 500 if nothing was sent, else the connection ends."""
        if self.finished:  # e.g. a framework answered 500 itself, then re-raised
            self._report(exc)
            return
        status, message = framing.failure_of(exc)
        conn = self.conn
        if isinstance(exc, HTTPError) and not self.started:
            self.keep_alive = False
            conn.write(framing.error_response(status, message, conn.server_header, head_request=self.head_only))
            self.finished = True
            conn.response_done(self)
            return
        self._report(exc)
        if not self.started and conn.state is not CLOSED:
            self.keep_alive = conn.keeps_alive(self)
            conn.write(framing.error_response(status, message, conn.server_header, not self.keep_alive, self.head_only))
            self.finished = True
            conn.response_done(self)
        else:
            self.finished = True
            conn.response_failed(self, exc)

    def _report(self, exc: BaseException) -> None:
        # a cancelled handler was cut by the server (shutdown, send timeout): not its bug
        if not isinstance(exc, (ClientDisconnected, ConnectionError, HTTPError, asyncio.CancelledError)):
            self.conn.loop.call_exception_handler(
                {
                    "message": f"HTTP handler failed for {self.method} {self.target.decode('latin-1')}",
                    "exception": exc,
                    "protocol": self.conn,
                }
            )


class HTTPProtocol(Connection, asyncio.Protocol):
    """`runner(exchange)` answers each request: it is called in order, one at
    a time, and must end with exchange.end() or exchange.fail() (at once or
    later). The native and ASGI front ends are runners.

    `ws_upgrade(conn, exchange)`, when set (uringserve.ws.upgrade.Upgrader,
    by the server unless `--ws none`), is offered each request with an
    Upgrade header in its turn, before the runner; it returns True when it
    takes the request (a WebSocket handshake). The app's accept then hands
    the transport over (switch_protocol()).

    `state` is where the connection is (state.py names the states and the
    moves between them); the methods below the "exchanges" line are what an
    Exchange and the front ends use."""

    def __init__(
        self, runner: Runner, config: HTTPConfig, registry: Any = None, observer: access.Observer | None = None
    ) -> None:
        self._runner = runner
        self._cfg = config
        if registry is not None:
            self.registry = registry
        # the Server field, with its CRLF (or nothing): what every response head carries
        self.server_header = (
            b"Server: " + config.server_header.encode("latin-1") + b"\r\n" if config.server_header else b""
        )
        head_class = getattr(runner, "exchange_class", Exchange)
        # called once per response: the access log, metrics
        self.observer = access.chain(access.log if config.access_log else None, observer)
        if self.observer is not None:
            head_class = access.observed(head_class)
            self.respond_whole = self._respond_whole_observed  # type: ignore[method-assign]
        self._parser = RequestParser(self, config, head_class)
        # a runner for a plain handler offers it, its Response class and how it
        # finishes any other result: _answer_common() then answers in one frame
        # (not when observed: it answers without the methods that observe)
        self._plain_handler: Callable[[Any], Any] | None = (
            None if self.observer is not None else getattr(runner, "plain_handler", None)
        )
        self._response_class: Any = getattr(runner, "response_class", None)
        self._finish: Callable[[Any, Any], None] | None = getattr(runner, "finish", None)
        self._queue: list[Exchange] = []  # [answering, waiting...]
        self._parsing: Exchange | None = None  # the exchange whose body is arriving
        self._transport: Any = None
        self._loop: Any = None
        self.loop: Any = None  # the running loop, once connected (what exchanges create tasks and futures on)
        self.state: State = HEAD  # a new connection waits for its first request head
        self._draining = False
        self._served = 0
        self._last_keepalive = config.keepalive_requests - 1  # answered before it: keep-alive
        # what follows the Date in a whole response, by HTTP version and keep-alive
        self._tail_11 = self.server_header + b"\r\n"
        self._tail_10 = self.server_header + b"Connection: keep-alive\r\n\r\n"
        self._tail_close = self.server_header + b"Connection: close\r\n\r\n"
        self._max_pipelined = config.max_pipelined
        self._keepalive_timeout = config.keepalive_timeout
        self._paused = False
        self._write_paused = False
        self._drain_waiters: list[asyncio.Future] = []
        self._disconnect_waiters: list[asyncio.Future] = []  # ASGI receive() after the body
        self._timer: Any = None
        self._timer_at = 0.0
        self._clock: Callable[[], float] = time.monotonic
        self._send_timer: Any = None
        self._timer_kind = KIND_NONE  # no deadline yet: connection_made() enters HEAD
        self._deadline = 0.0
        self._write_file_native: Any = None
        self.completed: Any = None  # a future already done: awaited for what completed at once (ASGI send)
        self.client: Any = None
        self.server_addr: Any = None
        self.scheme = "http"  # "https" behind TLS (the ASGI scope's)
        self.asgi_extensions: Any = None  # over TLS: the scope's, made at the first request (asgi.py)

    ws_upgrade: Callable[[Any, Exchange], bool] | None = None  # see the class

    # -- connection ------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        Connection.connection_made(self, transport)  # the loop, its clock, the registry
        self._transport = transport
        self.loop = loop = self._loop
        self.client = transport.get_extra_info("peername")
        self._write_file_native = getattr(transport, "write_file", None)
        eager = getattr(loop, "create_eager_task", None)
        if eager is not None:
            self.spawn = eager  # type: ignore[method-assign]
        self.completed = loop.create_future()
        self.completed.set_result(None)
        self._wait(HEAD)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.state = CLOSED
        if self._linger_handle is not None:
            self._linger_handle.cancel()
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None
        # handlers run on: reading the body, drain() and writes tell them the client is gone
        for ex in self._queue:
            ex.body_in.fail(ClientDisconnected("the client closed the connection"))
        if self._parsing is not None:
            self._parsing.body_in.fail(ClientDisconnected("the client closed the connection"))
        for w in self._drain_waiters:
            if not w.done():
                w.set_exception(ClientDisconnected("the client closed the connection"))
        self._drain_waiters.clear()
        self._wake_disconnect()
        Connection.connection_lost(self, exc)  # the timer stops, the registry lets go

    def data_received(self, data: bytes) -> None:
        state = self.state
        parser = self._parser
        if state is IDLE or state is HEAD:  # nothing in hand
            if (
                self._plain_handler is not None
                and parser.at_boundary
                and not self._paused
                and not self._write_paused
                and not self._draining
                and not parser.upgraded
                and _parser_mod._scan is not None
            ):
                data = self._answer_common(data)
                if not data:
                    return
        elif state is BODY:
            self._arm(BODY)  # body_timeout runs between reads
        elif state >= LINGERING:
            return  # ending: what still arrives is discarded
        try:
            parser.feed(data)
        except HTTPError as exc:
            self._parse_failed(exc)
            return
        # a request that arrived whole needs no head timer; one that did not starts it now
        if self.state is IDLE and parser.head_bytes and parser.in_head:  # head_started, inline
            self._wait(HEAD)

    def _answer_common(self, data: bytes) -> bytes:
        """The common case in one frame: on an idle connection, requests the
        recogniser takes, answered by a plain native handler with a
        keep-alive Response. Exactly what parser.feed(), on_request(),
        _start(), the native runner and respond_whole() do for them (the
        differential test in test_http_scan.py holds it to that), without
        their calls and repeated checks: 359 bytecodes per request against
        420 (bench/http_micro.py --bytecodes), 8% of the server's CPU per
        request under wrk. The first request that is anything else
        (a handler that raises or returns something else, a close, the
        keep-alive limit) is handed to the general path as it stands, and
        everything after it goes through parser.feed(); returns those bytes."""
        parser = self._parser
        scan = _parser_mod._scan
        # set whenever this path is taken (data_received checks): typed so, no assert on the hot path
        handler: Callable[[Any], Any] = self._plain_handler  # type: ignore[assignment]
        response_class = self._response_class
        make = parser.head_class
        queue = self._queue
        n = len(data)
        pos = 0
        while pos < n:
            r = scan(data, pos, n, parser.max_head, parser.max_target, parser.max_headers)
            if r <= 0:
                break
            ex = scanned_head(make, data, pos, r)
            pos += r & _HEAD_LEN
            parser.head_bytes = 0  # as feed(): blank lines llhttp skipped before this head counted there
            # on_request() and _start() on an idle connection
            ex.conn = self
            queue.append(ex)
            self.state = ANSWERING
            ex.running = True
            try:
                result = handler(ex)
            except BaseException as exc:  # as _start(): answer 500
                if isinstance(exc, (SystemExit, KeyboardInterrupt)):
                    raise
                ex.fail(exc)
                break
            if type(result) is not response_class or result._close or self._served >= self._last_keepalive:
                self._finish(ex, result)  # type: ignore[misc]  # the native runner's own way
                break
            # respond_whole() for a keep-alive response with nothing waiting
            ex.started = ex.finished = True
            ex.status = result._status
            if _time() >= _DATE[0]:
                framing.refresh_date()
            tail = self._tail_11 if ex.version == "1.1" else self._tail_10
            if result._whole is None or ex.method == "HEAD":
                self._transport.write(
                    b"".join((result._head, _DATE[1], tail, b"" if ex.method == "HEAD" else result._wire))
                )
            else:  # a large body: written whole, without a join per request
                self._transport.write(_whole_response(result, tail))
            del queue[0]
            self._served += 1
            if self._write_paused or self.state is not ANSWERING:
                break  # the write filled the buffer (or ended the connection): the general path waits
        # still ANSWERING with nothing queued: the last request taken was answered here
        # (one the general path took moved the state itself, and none taken left it IDLE or HEAD)
        if not queue and self.state is ANSWERING:
            self.state = self._timer_kind = IDLE  # _wait(IDLE), inline
            self._deadline = deadline = self._clock() + self._keepalive_timeout
            if self._timer is None or deadline < self._timer_at:  # set_deadline(), inline
                self._schedule(deadline)
        return data[pos:] if pos else data

    def eof_received(self) -> bool | None:
        if self.state >= LINGERING:  # lingering: the client is done too, so the close can be a clean one
            return None
        # a half-closed client still gets the answers to what it sent
        if self._parsing is not None and not self._parsing.body_in.done:
            self._parsing.body_in.fail(ClientDisconnected("the client closed before the body ended"))
        if not self._queue:
            self._close()
            return None
        self.state = HALF_CLOSED  # a body deadline goes with BODY: that body has failed
        return True

    _linger_handle: Any = None
    _unsent = 0  # lingering: what the transport still held when the linger was last (re)armed

    def pause_writing(self) -> None:
        # a client that does not read its responses stops being read: requests
        # it pipelines cannot pile answers up in memory
        self._write_paused = True
        self._pause()
        if self._send_timer is None:
            self._send_timer = self._loop.call_later(self._cfg.send_timeout, self._send_timed_out)

    def _send_timed_out(self) -> None:
        self._send_timer = None
        if self._write_paused and self.state is not CLOSED:
            logger.debug("closing a connection whose client read nothing for %.1fs", self._cfg.send_timeout)
            self.abort()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None
        self._next()
        self._body_consumed()  # reading may resume on the same terms
        for w in self._drain_waiters:
            if not w.done():
                w.set_result(None)
        self._drain_waiters.clear()

    async def drain(self) -> None:
        """Until the transport's buffer is below its high-water mark."""
        if self.state is CLOSED:
            raise ClientDisconnected("the client closed the connection")
        if self._write_paused:
            w = self._loop.create_future()
            self._drain_waiters.append(w)
            await w

    # -- parser sink ----------------------------------------------------------
    def on_head(self, ex: Exchange) -> None:
        if self.state >= LINGERING:
            return  # requests after a Connection: close (or an error) are not answered
        ex.conn = self
        queue = self._queue
        queue.append(ex)
        if ex.has_body:
            ex.body_in = Body(self._body_consumed, ex.send_continue if ex.expect_continue else None)
            self._parsing = ex
            self._wait(BODY)
        else:
            self.state = ANSWERING  # the head's deadline (or the keep-alive one) goes with the state it belonged to
        if len(queue) == 1:
            if not self._write_paused:  # _next(), inline: the common case
                self._start(ex)
        elif len(queue) > self._max_pipelined:
            self._pause()

    # on_head() and on_end() in one call for a request without a body or
    # upgrade (what the parser's recogniser takes): on_end() has nothing to
    # do after such a head, so on_head() is the whole of it
    on_request = on_head

    def on_body(self, data: bytes) -> None:
        ex = self._parsing
        if ex is not None:
            body = ex.body_in
            body.feed(data)
            if body.buffered > self._cfg.body_buffer_bytes and not body.hold_all:
                self._pause()

    def on_end(self) -> None:
        ex = self._parsing
        if ex is not None:
            self._parsing = None
            ex.body_in.end()
            if self.state is BODY:  # not when a response ended the connection within this read
                self.state = ANSWERING
        if self._parser.upgraded:  # the bytes after this request are not HTTP/1.1 (its keep_alive is off)
            self._pause()

    def _body_consumed(self) -> None:
        """Resume reading if nothing holds it paused: few requests queued and
        the arriving body (if any) drained to half its buffer."""
        ex = self._parsing
        if (
            self._paused
            and len(self._queue) <= self._max_pipelined
            and (ex is None or ex.body_in.hold_all or ex.body_in.buffered <= self._cfg.body_buffer_bytes // 2)
        ):
            self._resume()

    def requests_served(self) -> int:
        return self._served

    # -- exchanges: what an Exchange and the front ends call ----------------------
    def keeps_alive(self, ex: Exchange) -> bool:
        """The keep-alive rule, the one place it is written: the connection
        stays open after `ex`'s response when the request allows it (HTTP/1.1
        without `Connection: close`, 1.0 with keep-alive, not an upgrade), its
        body was read to the end (an unread rest would be parsed as the next
        request), the server is not draining, and fewer than
        keepalive_requests were answered before it. respond_whole() and
        _answer_common() carry inline copies for the hot path; the tests
        in test_http_state.py and test_http_scan.py hold them to this."""
        return ex.keep_alive and ex.body_in.done and not self._draining and self._served < self._last_keepalive

    def respond_whole(self, ex: Exchange, status: int, head: bytes, body: bytes) -> None:
        """`ex`'s whole response in one write (Exchange.respond_prepared(),
        which the front ends call here directly): `head` is the status line,
        headers and Content-Length, `body` what follows them, as
        framing.whole_head() makes them (a native Response makes them once).
        The hot path: keep-alive is settled as in keeps_alive(), the Date
        read as in framing.date_header() and, in the common case, the next
        request's turn taken as in response_done(), all inline: on the
        reference machine a Python call costs ~0.3 us, a tenth of this
        method's budget (tests/test_http_state.py holds the copies to the
        rules). An observed connection has _respond_whole_observed() here."""
        if ex.started:
            raise RuntimeError("the response has already started")
        ex.started = ex.finished = True
        ex.status = status
        # keeps_alive(ex), inline
        if ex.keep_alive and ex.body_in.done and self._served < self._last_keepalive and not self._draining:
            tail = self._tail_11 if ex.version == "1.1" else self._tail_10
        else:
            ex.keep_alive = False
            tail = self._tail_close
        if self.state is CLOSED:
            self.response_done(ex)
            return
        if _time() >= _DATE[0]:
            framing.refresh_date()
        self._transport.write(b"".join((head, _DATE[1], tail, b"" if ex.method == "HEAD" else body)))
        queue = self._queue
        if (
            ex.keep_alive
            and self.state is ANSWERING
            and len(queue) == 1
            and queue[0] is ex
            and not self._disconnect_waiters
            and not self._paused
            and not self._parser.head_bytes
        ):  # not head_started: no call
            # response_done(ex) for the case where nothing waits and nothing of
            # the next request has arrived, inline (tests/test_http_state.py holds it to the rule)
            del queue[0]
            self._served += 1
            self.state = self._timer_kind = IDLE  # _wait(IDLE), inline
            self._deadline = deadline = self._clock() + self._keepalive_timeout
            if self._timer is None or deadline < self._timer_at:  # set_deadline(), inline
                self._schedule(deadline)
            return
        self.response_done(ex)

    def _respond_whole_observed(self, ex: Exchange, status: int, head: bytes, body: bytes) -> None:
        # respond_whole() of a connection with an observer (access log, metrics):
        # the response is logged before the next pipelined one can be answered
        if not ex.started:
            ex.log_response(status, 0 if ex.method == "HEAD" else len(body))  # type: ignore[attr-defined]  # access.observed()'s
        HTTPProtocol.respond_whole(self, ex, status, head, body)

    def response_done(self, ex: Exchange) -> None:
        """`ex`'s response is complete: the next request's turn, the one place
        it is written. Close after a response that did not keep alive; else
        answer the next queued request, or close if the client half-closed or
        the server drains, or wait for one: HEAD if part of it arrived, IDLE
        if not."""
        if self._disconnect_waiters:
            self._wake_disconnect()
        queue = self._queue
        if queue and queue[0] is ex:
            del queue[0]
        self._served += 1
        state = self.state
        if state is CLOSED:
            return
        if not ex.keep_alive:
            # the client may still be sending (pipelined requests, a body, or
            # bytes already in flight): see _linger
            self._close(linger=True, delimits=ex.close_delimited)
            return
        if queue:
            self._next()
            return
        if state is HALF_CLOSED:
            self._close()  # a half-closed client sends nothing more
            return
        if state >= LINGERING:  # cut already (abort()): nothing to wait for
            return
        if self._paused:
            self._resume()
        if self._draining and not self._parser.head_started:
            # a response begun before the drain promised keep-alive: the
            # client may send its next request now, which is answered with
            # Connection: close; quiet for DRAIN_GRACE, the connection closes
            self.state = IDLE
            self.set_deadline(IDLE, min(self._keepalive_timeout, DRAIN_GRACE))
            return
        self._wait(HEAD if self._parser.head_started else IDLE)

    def response_failed(self, ex: Exchange, exc: BaseException) -> None:
        """`ex`'s response cannot be completed (its handler failed after it
        started, or it ended short of its Content-Length): the connection ends."""
        self._wake_disconnect()
        self._queue.clear()
        if self.state < LINGERING:
            # what was sent goes out, then FIN: a chunked body without its last
            # chunk, or a short Content-Length body, tells the client it is cut.
            # Lingering, as after any last response: a client still sending
            # (pipelined requests) would otherwise get RST, which drops what
            # was sent before it arrives
            logger.debug("ending connection mid-response: %s", exc)
            self._close(linger=True, delimits=True)  # only the close tells the client

    def spawn(self, coro: Any) -> asyncio.Task:
        """The task answering a request: started eagerly where the loop can
        (UringEventLoop.create_eager_task), so a handler that does not wait
        answers before this returns. Set in connection_made to the loop's
        own method, so a request goes through one frame, not two."""
        return self._loop.create_task(coro)

    def write(self, data: bytes) -> None:
        """Send an exchange's bytes; nothing once the transport is gone."""
        if self.state is not CLOSED:
            self._transport.write(data)

    def write_file(self, file: Any, offset: int, count: int) -> Any:
        """Send a range of a static.FileCache file after what was written:
        None when the transport took it all, else a task sending the rest."""
        if self.state is CLOSED:
            raise ClientDisconnected("the client closed the connection")
        native = self._write_file_native
        if native is not None:
            ring = getattr(self._loop, "_ring", None)
            slot = file.slot_for(ring) if ring is not None else -1
            while count:
                n = native(slot if slot >= 0 else file.fd, offset, count, fixed=slot >= 0, owner=file)
                if not n:
                    break  # no segment free: the rest goes the portable way
                offset += n
                count -= n
            if not count:
                return None
        return self._loop.create_task(self._write_file_slow(file, offset, count))

    async def _write_file_slow(self, file: Any, offset: int, count: int) -> None:
        # any transport: asyncio's own sendfile (os.sendfile on selector
        # transports, which takes the offset and leaves the fd's position
        # alone). Over TLS it falls back to reading the file object from its
        # position, which the cached fd shares with every response of that
        # file (and the fallback seeks only for a non-zero offset): a file
        # opened again gets a position of its own
        if self._transport.get_extra_info("ssl_object") is None:
            with open(file.fd, "rb", closefd=False) as f:
                await self._loop.sendfile(self._transport, f, offset, count)
            return
        with open(f"/proc/self/fd/{file.fd}", "rb") as f:
            f.seek(offset)
            await self._loop.sendfile(self._transport, f, offset, count)

    @property
    def write_paused(self) -> bool:
        """The client is not reading fast enough: await drain() before writing more."""
        return self._write_paused

    def disconnect_waiter(self) -> asyncio.Future:
        """A future done when a response completes or the client is gone (for
        ASGI's receive() once the body is read: its next message is the
        disconnect)."""
        w = self._loop.create_future()
        self._disconnect_waiters.append(w)
        return w

    # -- answering ------------------------------------------------------------------
    def _next(self) -> None:
        """Answer the next request, unless the client is not reading what we
        write: then answers wait, so its pipelined requests cannot pile up
        responses in memory."""
        queue = self._queue
        if queue and not self._write_paused and not queue[0].running and self.state is not CLOSED:
            ex = queue[0]
            if type(ex) is _ErrorExchange:
                self._refuse(ex)
            else:
                self._start(ex)

    def _start(self, ex: Exchange) -> None:
        ex.running = True
        try:
            if ex.upgrade and self.ws_upgrade is not None and self.ws_upgrade(self, ex):
                return  # a WebSocket handshake: ws/upgrade.py answers it, through run_app()
            self._runner(ex)
        except BaseException as exc:  # a runner's own failure: answer 500
            if isinstance(exc, (SystemExit, KeyboardInterrupt)):
                raise
            ex.fail(exc)

    def run_app(self, ex: Exchange) -> None:
        """Hand `ex` to the runner now (the WebSocket upgrade does, once the
        handshake is checked); a runner's own failure answers 500."""
        try:
            self._runner(ex)
        except BaseException as exc:
            if isinstance(exc, (SystemExit, KeyboardInterrupt)):
                raise
            ex.fail(exc)

    @property
    def config(self) -> HTTPConfig:
        return self._cfg

    @property
    def state_closed(self) -> bool:
        """The client is gone, or the connection is closing."""
        return self.state >= LINGERING

    def switch_protocol(self, ex: Exchange, protocol: Any, head: bytes) -> None:
        """`ex` was answered by `head` (a 101): the transport goes to
        `protocol` (transport.set_protocol, then its connection_made, as
        asyncio's loop.start_tls-style hand-overs do), with the bytes that
        arrived after the request's head (pipelined into the same read), and
        it takes this connection's place in the registry. HTTP's timers,
        keep-alive and limits end here; this protocol is CLOSED."""
        if self.state >= LINGERING:
            raise ClientDisconnected("the client closed the connection")
        t = self._transport
        ex.started = ex.finished = True
        ex.status = 101
        t.write(head)
        self.stop_timer()
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None
        self._queue.clear()
        self.state = CLOSED
        self._served += 1
        rest = self._parser.upgrade_rest
        self._parser.upgrade_rest = b""
        registry = self.registry
        if registry is not None:
            registry.replace(self, protocol)
            protocol.registry = registry
        t.set_protocol(protocol)
        if self._paused:
            # before the new protocol runs, so that its own pauses stand (on_connect's,
            # or pause_writing's below); what the transport delivers comes after `rest`
            self._paused = False
            t.resume_reading()
        protocol.connection_made(t)
        if self._write_paused:  # the transport tells only the protocol it has of the next change
            protocol.pause_writing()
        if rest:
            protocol.data_received(rest)
        if self._draining:  # the drain told this protocol, not that one
            protocol.shutdown()

    def on_upgrade(self) -> None:
        """The parser met the end of an upgrade request: the bytes after it
        are not HTTP (the parser keeps them, for switch_protocol()); nothing
        more is read until that protocol takes the transport, or this
        connection closes after its answer (already, when it was answered
        within the same read: then it lingers, reading on)."""
        if self.state < LINGERING:
            self._pause()

    def _refuse(self, ex: _ErrorExchange) -> None:
        """Answer a request that could not be parsed (or did not arrive in
        time) with its status, then close: nothing after it is answered."""
        ex.running = True
        self._queue.clear()
        exc = ex.exc
        response = framing.error_response(exc.status, exc.message, self.server_header, head_request=ex.head_request)
        self.write(response)
        if self.observer is not None:  # a request that could not be parsed: no method or target to name
            self.observer(self, "-", b"-", "1.1", exc.status, len(response.partition(b"\r\n\r\n")[2]), 0.0)
        self._close(linger=True)

    def _wake_disconnect(self) -> None:
        waiters, self._disconnect_waiters = self._disconnect_waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    def _parse_failed(self, exc: HTTPError) -> None:
        """Answer after the requests before it, then close."""
        # nothing more is read, even what a paused transport still delivers
        self._parser.stop()
        if self.state >= LINGERING:
            # the response before it ended the connection (not keep-alive)
            # within the same read: nothing may follow its FIN
            return
        self._pause()
        ex = self._parsing
        if ex is not None:
            self._parsing = None
            ex.body_in.fail(exc)
        self.state = ANSWERING  # the refusal is in hand; the deadline of what was being read goes with it
        self._queue.append(_ErrorExchange(exc, self._parser.head_request))
        if len(self._queue) == 1:
            self._next()

    # -- flow and timers -------------------------------------------------------
    def _pause(self) -> None:
        if not self._paused and self.state is not CLOSED:
            self._paused = True
            self._transport.pause_reading()

    def _resume(self) -> None:
        if self._paused and self.state < LINGERING and not self._parser.upgraded and not self._write_paused:
            self._paused = False
            self._transport.resume_reading()

    def _wait(self, state: State) -> None:
        """Enter a state that waits for the client (HEAD, BODY or IDLE), under its deadline."""
        self.state = state
        self._arm(state)

    def _arm(self, state: State) -> None:
        """The deadline of a waiting state, from now (its kind is the state)."""
        cfg = self._cfg
        self.set_deadline(
            state,
            cfg.header_timeout if state is HEAD else cfg.body_timeout if state is BODY else cfg.keepalive_timeout,
        )

    def timed_out(self, kind: int) -> None:
        if kind is not self.state:
            return  # the state that set this deadline was left: the deadline went with it
        if kind is BODY and self._paused:
            self._arm(BODY)  # we stopped reading, not the client
            return
        if kind is IDLE or (kind is HEAD and not self._parser.head_started):
            self._close()  # an idle connection: nothing to answer
            return
        what = "request head" if kind is HEAD else "request body"
        self._parse_failed(HTTPError(408, f"the {what} did not arrive in time"))

    def _close(self, linger: bool = False, delimits: bool = False) -> None:
        """End the connection; `linger` after a last response (see _linger),
        `delimits` when the close is what ends that response's body."""
        state = self.state
        if state >= LINGERING:
            return
        self.stop_timer()
        t = self._transport
        if linger and state is not HALF_CLOSED:
            can_write_eof = getattr(t, "can_write_eof", None)  # a transport-like object may lack it
            if can_write_eof is not None and can_write_eof():
                self.state = LINGERING
                self._linger(t, fin=True)
                return
            if not delimits and t.get_extra_info("ssl_object") is not None:
                # TLS: the core's transport half-closes as TLS does
                # (close_notify, then FIN; the client's further bytes still
                # read): a client reading to the end sees it at once. asyncio's
                # SSL transport cannot, and its close (close_notify, then
                # unwrap) fails on the client's further bytes and aborts,
                # resetting what it had not yet delivered. The response is
                # framed, so the client knows it ended: linger without FIN,
                # until it closes or LINGER passes
                half_close = getattr(t, "write_close_notify", None)
                if half_close is not None:
                    half_close()
                self.state = LINGERING
                self._linger(t, fin=False)
                return
        self.state = CLOSING
        t.close()

    def _linger(self, t: Any, fin: bool) -> None:
        """Close after a response while the client may still be sending (it
        pipelined more, or sent what was refused): FIN after the response,
        then read and discard until the client closes too, or LINGER seconds.
        Closing with its bytes unread would make the kernel answer RST, which
        can destroy the end of the response before the client reads it
        (nginx's lingering_close, for the same reason). A client that sent
        EOF first (HALF_CLOSED) sends nothing more: it is closed at once.
        LINGER counts from when the response has left the transport's
        buffer, as nginx's lingering_timeout: a large last response to a slow
        reader would otherwise be cut by the close it was lingering to avoid."""
        if fin:
            t.write_eof()
        if self._paused:
            self._paused = False
            t.resume_reading()  # data_received discards while lingering
        self._unsent = t.get_write_buffer_size()
        self._linger_handle = self._loop.call_later(LINGER, self._linger_ended)

    def _linger_ended(self) -> None:
        t = self._transport
        unsent = t.get_write_buffer_size()
        if unsent < self._unsent and self.state is LINGERING:
            # still leaving, or left since the last look: LINGER more for the
            # client to read it (one that reads nothing is cut by send_timeout)
            self._unsent = unsent
            self._linger_handle = self._loop.call_later(LINGER, self._linger_ended)
            return
        self._linger_handle = None
        t.close()

    # -- server shutdown ----------------------------------------------------------
    def shutdown(self) -> None:
        """The drain hook: end the connection where the client expects it.
        What is in flight is finished and its response says Connection:
        close. A connection with nothing in hand is not closed at once: a
        closed-loop client's next request is usually on its way (it sent it
        microseconds after reading the last response), and closing then
        resets it (ECONNRESET in the client, an error in wrk). It gets
        DRAIN_GRACE of quiet, counted from its last response (a new one's
        from now): a request that arrives in it is answered with
        Connection: close, and one quiet that long is closed, as Envoy's
        drain period and nginx's lingering do. A request partly arrived is
        in flight (its head timer bounds it)."""
        self._draining = True
        queue = self._queue
        if queue:
            for ex in queue:
                if not ex.started:
                    ex.keep_alive = False
            return
        state = self.state
        if state >= LINGERING or self._parser.head_started:
            return
        now = self._clock()
        if state is IDLE and self._timer_kind is IDLE:
            # quiet since the keep-alive deadline was set: the last response
            quiet_since = self._deadline - self._keepalive_timeout
            left = quiet_since + DRAIN_GRACE - now
            if left <= 0:
                self._close()  # idle for DRAIN_GRACE already: nothing is on its way
                return
            self.set_deadline(IDLE, min(left, self._deadline - now))
        else:  # a new connection (HEAD, nothing yet): its first request may be on its way
            self.set_deadline(HEAD, min(self._cfg.header_timeout, DRAIN_GRACE))

    def abort(self) -> list[asyncio.Task]:
        """Cut the connection now. The handlers still running for it are
        cancelled and returned, for a caller that must see them finish
        (a shutdown leaves no task behind)."""
        tasks = [ex.task for ex in self._queue if ex.task is not None and not ex.task.done()]
        if self.state is not CLOSED:
            self.state = CLOSING
            self._transport.abort()
        for t in tasks:
            t.cancel()
        return tasks


class _ErrorExchange(Exchange):
    """The answer to a request that could not be parsed: status, then close
    (HTTPProtocol._refuse). It waits in the queue like an exchange
    (Exchange's defaults are what the connection reads there) but has no
    request."""

    keep_alive = False

    def __init__(self, exc: HTTPError, head_request: bool) -> None:  # no request head to take
        self.exc = exc
        self.head_request = head_request  # the refused request was a HEAD: no body (RFC 9110 9.3.2)
