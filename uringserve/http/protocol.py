"""HTTPProtocol: one HTTP/1.1 connection on any asyncio transport.

Requests are parsed as bytes arrive (parser.RequestParser) into Exchanges
queued in order; one exchange is answered at a time, so pipelined responses
leave in request order. Reading pauses when `max_pipelined` requests wait or
request bodies buffer more than `body_buffer_bytes`.

One deadline per connection, by state:
    head       a request head has begun (or the connection is new): header_timeout -> 408
    body       a request body is arriving: body_timeout between reads -> 408
    keepalive  idle between requests: keepalive_timeout -> silent close
    (none)     a response is being produced or written
Changing state only moves the deadline; the one timer handle, when it
fires early, re-arms itself for the deadline. So a request costs two clock
reads, not two call_later()s and their cancelled handles in the heap.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from ..server.connection import KIND_IDLE, KIND_NONE, KIND_USER, Connection
from . import access, framing
from . import parser as _parser_mod
from .body import Body, ClientDisconnected
from .config import HTTPConfig
from .parser import _HEAD_LEN, HeaderBlock, HTTPError, RequestParser, scanned_head

logger = logging.getLogger("uringserve.http")

# the connection's one deadline (server.Connection's timer), by state; keep-alive is its idle kind
_T_NONE, _T_KEEPALIVE, _T_HEAD, _T_BODY = KIND_NONE, KIND_IDLE, KIND_USER, KIND_USER + 1
# seconds a new connection gets, once a drain began, for its first request to arrive
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
    # the response
    started = False
    finished = False
    chunked_out = False  # the response's body is chunked
    remaining: int | None = None  # bytes of a Content-Length body still to send
    continue_sent = False
    status = 0
    task: asyncio.Task | None = None
    running = False  # handed to the runner
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

    def _send_continue(self) -> None:
        if not self.started and not self.continue_sent and not self.body_in.done:
            self.continue_sent = True
            self.conn._write(framing.CONTINUE)

    # -- response --------------------------------------------------------------
    def respond_prepared(self, status: int, head: bytes, body: bytes) -> None:
        """A whole response in one write (start() and end() for a body known in
        advance): `head` is the status line, headers and Content-Length,
        `body` what follows them, as framing.whole_head() makes them (a native
        Response makes them once). The hot
        path: keep-alive is settled as in start(), the Date read as in
        framing.date_header() and, in the common case, the next request's
        turn taken as in _exchange_done(), all inline: on the reference
        machine a Python call costs ~0.3 us, a tenth of this method's budget."""
        if self.started:
            raise RuntimeError("the response has already started")
        conn = self.conn
        self.started = self.finished = True
        self.status = status
        # HTTPProtocol.keeps_alive(self), inline (tests/test_http_state.py holds the copy to it)
        if self.keep_alive and self.body_in.done and conn._served < conn._last_keepalive and not conn._draining:
            tail = conn._tail_11 if self.version == "1.1" else conn._tail_10
        else:
            self.keep_alive = False
            tail = conn._tail_close
        if conn._lost:
            conn._exchange_done(self)
            return
        if _time() >= _DATE[0]:
            framing.refresh_date()
        conn._transport.write(b"".join((head, _DATE[1], tail, b"" if self.method == "HEAD" else body)))
        queue = conn._queue
        if (
            self.keep_alive
            and len(queue) == 1
            and queue[0] is self
            and not conn._disconnect_waiters
            and not conn._closing_after_queue
            and not conn._paused
            and not conn._parser.head_bytes
        ):  # not head_started: no call
            # HTTPProtocol._exchange_done(self) for the case where nothing waits and nothing of
            # the next request has arrived, inline (tests/test_http_state.py holds it to the rule)
            del queue[0]
            conn._served += 1
            conn._timer_kind = _T_KEEPALIVE
            conn._deadline = deadline = conn._clock() + conn._keepalive_timeout
            if conn._timer is None or deadline < conn._timer_at:  # set_deadline(), inline
                conn._schedule(deadline)
            return
        conn._exchange_done(self)

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
        parts = [framing.status_line(status), framing.date_header(), conn._server_hdr, block]
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
                close = _CONNECTION[False, "1.0"]
        parts.append(close)
        if first_body and self._body_allowed():
            parts.append(self._frame(first_body))
        conn._write(b"".join(parts))

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
            self.conn._write(self._frame(data))

    def send_file(self, file: Any, offset: int, count: int) -> Any:
        """Queue a file range after what was sent (a Content-Length response).
        Returns None, or an awaitable when the transport cannot take files."""
        if not self._body_allowed() or not count:
            return None
        if self.remaining is not None:
            if count > self.remaining:
                raise RuntimeError("file range longer than the response's Content-Length")
            self.remaining -= count
        return self.conn._write_file(file, offset, count)

    def end(self) -> None:
        """The response is complete: the next request's turn."""
        if self.finished:
            return
        if self.remaining:  # the peer was promised more: the connection cannot be reused
            self.finished = True
            exc = RuntimeError(f"response ended {self.remaining} bytes short of its Content-Length")
            self._report(exc)
            self.conn._abort_exchange(self, exc)
            return
        if self.chunked_out and self._body_allowed():
            self.conn._write(framing.LAST_CHUNK)
        self.finished = True
        self.conn._exchange_done(self)

    def fail(self, exc: BaseException) -> None:
        """The handler failed: 500 if nothing was sent, else the connection ends."""
        if self.finished:  # e.g. a framework answered 500 itself, then re-raised
            self._report(exc)
            return
        status, message = framing.failure_of(exc)
        if isinstance(exc, HTTPError) and not self.started:
            self.keep_alive = False
            self.conn._write(
                framing.error_response(status, message, self.conn._server_hdr, head_request=self.head_only)
            )
            self.finished = True
            self.conn._exchange_done(self)
            return
        self._report(exc)
        if not self.started and not self.conn._lost:
            self.keep_alive = self.conn.keeps_alive(self)
            self.conn._write(
                framing.error_response(status, message, self.conn._server_hdr, not self.keep_alive, self.head_only)
            )
            self.finished = True
            self.conn._exchange_done(self)
        else:
            self.finished = True
            self.conn._abort_exchange(self, exc)

    def _report(self, exc: BaseException) -> None:
        # a cancelled handler was cut by the server (shutdown, send timeout): not its bug
        if not isinstance(exc, (ClientDisconnected, ConnectionError, HTTPError, asyncio.CancelledError)):
            self.conn._loop.call_exception_handler(
                {
                    "message": f"HTTP handler failed for {self.method} {self.target.decode('latin-1')}",
                    "exception": exc,
                    "protocol": self.conn,
                }
            )


class HTTPProtocol(Connection, asyncio.Protocol):
    """`runner(exchange)` answers each request: it is called in order, one at
    a time, and must end with exchange.end() or exchange.fail() (at once or
    later). The native and ASGI front ends are runners."""

    def __init__(
        self, runner: Runner, config: HTTPConfig, registry: Any = None, observer: access.Observer | None = None
    ) -> None:
        self._runner = runner
        self._cfg = config
        if registry is not None:
            self.registry = registry
        self._server_hdr = (
            b"Server: " + config.server_header.encode("latin-1") + b"\r\n" if config.server_header else b""
        )
        head_class = getattr(runner, "exchange_class", Exchange)
        # called once per response: the access log, metrics
        self._observe = access.chain(access.log if config.access_log else None, observer)
        if self._observe is not None:
            head_class = access.observed(head_class)
        self._parser = RequestParser(self, config, head_class)
        # a runner for a plain handler offers it, its Response class and how it
        # finishes any other result: _answer_common() then answers in one frame
        # (not when observed: it answers without the methods that observe)
        self._plain_handler: Callable[[Any], Any] | None = (
            None if self._observe is not None else getattr(runner, "plain_handler", None)
        )
        self._response_class: Any = getattr(runner, "response_class", None)
        self._finish: Callable[[Any, Any], None] | None = getattr(runner, "finish", None)
        self._queue: list[Exchange] = []  # [answering, waiting...]
        self._parsing: Exchange | None = None  # the exchange whose body is arriving
        self._transport: Any = None
        self._loop: Any = None
        self._lost = False
        self._closing = False
        self._draining = False
        self._served = 0
        self._last_keepalive = config.keepalive_requests - 1  # answered before it: keep-alive
        # what follows the Date in a whole response, by HTTP version and keep-alive
        self._tail_11 = self._server_hdr + b"\r\n"
        self._tail_10 = self._server_hdr + b"Connection: keep-alive\r\n\r\n"
        self._tail_close = self._server_hdr + b"Connection: close\r\n\r\n"
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
        self._timer_kind = _T_NONE
        self._deadline = 0.0
        self._write_file_native: Any = None
        self._done: Any = None
        self.client: Any = None
        self.server_addr: Any = None
        self.scheme = "http"  # "https" behind TLS (the ASGI scope's)

    # -- connection ------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        Connection.connection_made(self, transport)  # the loop, its clock, the registry
        self._transport = transport
        loop = self._loop
        self.client = transport.get_extra_info("peername")
        self._write_file_native = getattr(transport, "write_file", None)
        eager = getattr(loop, "create_eager_task", None)
        if eager is not None:
            self._spawn = eager  # type: ignore[method-assign]
        self._done = loop.create_future()  # awaited for what completed at once (ASGI send)
        self._done.set_result(None)
        self._arm(_T_HEAD)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._lost = True
        self._closing = True
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
        if self._closing:
            return
        if self._timer_kind == _T_BODY:
            self._arm(_T_BODY)
        parser = self._parser
        if (
            self._plain_handler is not None
            and parser.at_boundary
            and not self._queue
            and not self._paused
            and not self._write_paused
            and not self._draining
            and not self._closing_after_queue
            and not parser.upgraded
            and _parser_mod._scan is not None
        ):
            data = self._answer_common(data)
            if not data:
                return
        try:
            parser.feed(data)
        except HTTPError as exc:
            self._parse_failed(exc)
            return
        # a request that arrived whole needs no head timer; one that did not starts it now
        if self._timer_kind == _T_KEEPALIVE and parser.head_bytes and parser.in_head:  # head_started, inline
            self._arm(_T_HEAD)

    def _answer_common(self, data: bytes) -> bytes:
        """The common case in one frame: on an idle connection, requests the
        recogniser takes, answered by a plain native handler with a
        keep-alive Response. Exactly what parser.feed(), on_request(),
        _start(), the native runner and respond_prepared() do for them (the
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
        answered = False
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
            self._timer_kind = _T_NONE
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
            # respond_prepared() for a keep-alive response with nothing waiting
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
            answered = True
            if self._write_paused or self._closing:  # the write filled the buffer: the general path waits
                break
        if answered and not queue and not self._closing:
            self._timer_kind = _T_KEEPALIVE
            self._deadline = deadline = self._clock() + self._keepalive_timeout
            if self._timer is None or deadline < self._timer_at:  # set_deadline(), inline
                self._schedule(deadline)
        return data[pos:] if pos else data

    def eof_received(self) -> bool | None:
        self._eof = True
        if self._closing:  # lingering: the client is done too, so the close can be a clean one
            return None
        # a half-closed client still gets the answers to what it sent
        if self._parsing is not None and not self._parsing.body_in.done:
            self._parsing.body_in.fail(ClientDisconnected("the client closed before the body ended"))
        if not self._queue:
            self._close()
            return None
        self._closing_after_queue = True
        return True

    _closing_after_queue = False
    _eof = False
    _linger_handle: Any = None

    def pause_writing(self) -> None:
        # a client that does not read its responses stops being read: requests
        # it pipelines cannot pile answers up in memory
        self._write_paused = True
        self._pause()
        if self._send_timer is None:
            self._send_timer = self._loop.call_later(self._cfg.send_timeout, self._send_timed_out)

    def _send_timed_out(self) -> None:
        self._send_timer = None
        if self._write_paused and not self._lost:
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
        if self._lost:
            raise ClientDisconnected("the client closed the connection")
        if self._write_paused:
            w = self._loop.create_future()
            self._drain_waiters.append(w)
            await w

    # -- parser sink ----------------------------------------------------------
    def on_head(self, ex: Exchange) -> None:
        if self._closing:
            return  # requests after a Connection: close (or an error) are not answered
        ex.conn = self
        queue = self._queue
        queue.append(ex)
        if ex.has_body:
            ex.body_in = Body(self._body_consumed, ex._send_continue if ex.expect_continue else None)
            self._parsing = ex
            self._arm(_T_BODY)
        else:
            self._timer_kind = _T_NONE  # _cancel_timer(), inline
        if len(queue) == 1:
            if not self._write_paused and not self._lost:  # _next(), inline: the common case
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
            self.clear_deadline()
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

    # -- answering ----------------------------------------------------------------
    def keeps_alive(self, ex: Exchange) -> bool:
        """The keep-alive rule, the one place it is written: the connection
        stays open after `ex`'s response when the request allows it (HTTP/1.1
        without `Connection: close`, 1.0 with keep-alive, not an upgrade), its
        body was read to the end (an unread rest would be parsed as the next
        request), the server is not draining, and fewer than
        keepalive_requests were answered before it. Exchange.respond_prepared()
        and _answer_common() carry inline copies for the hot path; the tests
        in test_http_state.py and test_http_scan.py hold them to this."""
        return ex.keep_alive and ex.body_in.done and not self._draining and self._served < self._last_keepalive

    def _next(self) -> None:
        """Answer the next request, unless the client is not reading what we
        write: then answers wait, so its pipelined requests cannot pile up
        responses in memory."""
        queue = self._queue
        if queue and not self._write_paused and not queue[0].running and not self._lost:
            self._start(queue[0])

    def _start(self, ex: Exchange) -> None:
        ex.running = True
        if type(ex) is _ErrorExchange:
            ex.run()
            return
        try:
            self._runner(ex)
        except BaseException as exc:  # a runner's own failure: answer 500
            if isinstance(exc, (SystemExit, KeyboardInterrupt)):
                raise
            ex.fail(exc)

    def _wake_disconnect(self) -> None:
        waiters, self._disconnect_waiters = self._disconnect_waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    def _exchange_done(self, ex: Exchange) -> None:
        """The next request's turn, the one place it is written: close after a
        response that did not keep alive; else answer the next queued request,
        or close if the client half-closed or the server drains, or wait for
        one (head timer if part of it arrived, keep-alive timer if not)."""
        if self._disconnect_waiters:
            self._wake_disconnect()
        queue = self._queue
        if queue and queue[0] is ex:
            del queue[0]
        self._served += 1
        if self._lost:
            return
        if not ex.keep_alive:
            # the client may still be sending (pipelined requests, a body, or
            # bytes already in flight): see _linger
            self._close(linger=True)
            return
        if queue:
            self._next()
            return
        if self._closing_after_queue or self._draining:
            self._close(linger=self._draining)  # a half-closed client sends nothing more
            return
        if self._paused:
            self._resume()
        self._arm(_T_HEAD if self._parser.head_started else _T_KEEPALIVE)

    def _abort_exchange(self, ex: Exchange, exc: BaseException) -> None:
        self._wake_disconnect()
        self._queue.clear()
        self._closing = True
        self.stop_timer()
        if not self._lost:
            # what was sent goes out, then FIN: a chunked body without its last
            # chunk, or a short Content-Length body, tells the client it is cut
            logger.debug("ending connection mid-response: %s", exc)
            self._transport.close()

    def _parse_failed(self, exc: HTTPError) -> None:
        """Answer after the requests before it, then close."""
        # nothing more is read, even what a paused transport still delivers
        self._parser.stop()
        if self._closing:
            # the response before it ended the connection (not keep-alive)
            # within the same read: nothing may follow its FIN
            return
        self._pause()
        ex = self._parsing
        if ex is not None:
            self._parsing = None
            ex.body_in.fail(exc)
        self._queue.append(_ErrorExchange(self, exc, self._parser.head_request))
        if len(self._queue) == 1:
            self._next()

    # -- writing --------------------------------------------------------------
    def _spawn(self, coro: Any) -> asyncio.Task:
        """The task answering a request: started eagerly where the loop can
        (UringEventLoop.create_eager_task), so a handler that does not wait
        answers before this returns. Set in connection_made to the loop's
        own method, so a request goes through one frame, not two."""
        return self._loop.create_task(coro)

    def _write(self, data: bytes) -> None:
        if not self._lost:
            self._transport.write(data)

    def _write_file(self, file: Any, offset: int, count: int) -> Any:
        if self._lost:
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
        # any transport: asyncio's own sendfile (os.sendfile on selector transports)
        with open(file.fd, "rb", closefd=False) as f:
            await self._loop.sendfile(self._transport, f, offset, count)

    # -- flow and timers -------------------------------------------------------
    def _pause(self) -> None:
        if not self._paused and not self._lost:
            self._paused = True
            self._transport.pause_reading()

    def _resume(self) -> None:
        if (
            self._paused
            and not self._lost
            and not self._closing
            and not self._parser.upgraded
            and not self._write_paused
        ):
            self._paused = False
            self._transport.resume_reading()

    def _arm(self, kind: int) -> None:
        cfg = self._cfg
        self.set_deadline(
            kind,
            cfg.header_timeout if kind == _T_HEAD else cfg.body_timeout if kind == _T_BODY else cfg.keepalive_timeout,
        )

    def timed_out(self, kind: int) -> None:
        if self._lost or self._closing:
            return
        if kind == _T_BODY and self._paused:
            self._arm(_T_BODY)  # we stopped reading, not the client
            return
        if kind == _T_KEEPALIVE or (kind == _T_HEAD and not self._parser.head_started and not self._queue):
            self._close()  # an idle connection: nothing to answer
            return
        what = "request head" if kind == _T_HEAD else "request body"
        self._parse_failed(HTTPError(408, f"the {what} did not arrive in time"))

    def _close(self, linger: bool = False) -> None:
        if not self._closing:
            self._closing = True
            self.stop_timer()
            if not self._lost:
                t = self._transport
                can_write_eof = getattr(t, "can_write_eof", None)  # a transport-like object may lack it
                if linger and not self._eof and can_write_eof is not None and can_write_eof():
                    self._linger(t)
                else:
                    t.close()

    def _linger(self, t: Any) -> None:
        """Close after a response while the client may still be sending (it
        pipelined more, or sent what was refused): FIN after the response,
        then read and discard until the client closes too, or LINGER seconds.
        Closing with its bytes unread would make the kernel answer RST, which
        can destroy the end of the response before the client reads it
        (nginx's lingering_close, for the same reason)."""
        t.write_eof()
        if self._paused:
            self._paused = False
            t.resume_reading()  # data_received discards while closing
        self._linger_handle = self._loop.call_later(LINGER, t.close)

    # -- server shutdown ----------------------------------------------------------
    def shutdown(self) -> None:
        """Finish what is in flight, answer with Connection: close, then close.
        Idle between requests: close now. A request partly arrived: it is in
        flight (the head timer still bounds it). A new connection with nothing
        yet: its first request may be on its way (a client sends it right
        after connecting), so it gets DRAIN_GRACE to arrive, as nginx lets a
        new connection's first request finish."""
        self._draining = True
        if not self._queue:
            if self._parser.head_started:
                return
            if self._served == 0 and not self._lost:
                self.set_deadline(_T_HEAD, min(self._cfg.header_timeout, DRAIN_GRACE))
                return
            self._close()
        else:
            for ex in self._queue:
                if not ex.started:
                    ex.keep_alive = False

    def abort(self) -> list[asyncio.Task]:
        """Cut the connection now. The handlers still running for it are
        cancelled and returned, for a caller that must see them finish
        (a shutdown leaves no task behind)."""
        tasks = [ex.task for ex in self._queue if ex.task is not None and not ex.task.done()]
        if not self._lost:
            self._closing = True
            self._transport.abort()
        for t in tasks:
            t.cancel()
        return tasks


class _ErrorExchange(Exchange):
    """The answer to a request that could not be parsed: status, then close.
    It waits in the queue like an exchange (Exchange's defaults are what the
    connection reads there) but has no request: only run() is called on it."""

    keep_alive = False

    def __init__(self, conn: HTTPProtocol, exc: HTTPError, head_request: bool) -> None:  # no request head to take
        self.conn = conn
        self.exc = exc
        self.head_request = head_request  # the refused request was a HEAD: no body (RFC 9110 9.3.2)

    def run(self) -> None:
        conn = self.conn
        conn._queue.clear()
        response = framing.error_response(
            self.exc.status, self.exc.message, conn._server_hdr, head_request=self.head_request
        )
        conn._write(response)
        if conn._observe is not None:  # a request that could not be parsed: no method or target to name
            conn._observe(conn, "-", b"-", "1.1", self.exc.status, len(response.partition(b"\r\n\r\n")[2]), 0.0)
        conn._close(linger=True)
