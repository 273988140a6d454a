"""The HTTP connection follows the state machine http/state.py writes down.

Every state store of every HTTPProtocol is watched (state.checking()) while
real connections, on the stdlib loop and on UringEventLoop, go through the
paths a connection can take: keep-alive (general and one-frame path),
pipelining, a next head arriving in pieces, a body left unread,
100-continue, handler errors, every timeout, a shutdown drain and its
abort, client resets, half-closes, requests refused; and, on a transport
that cannot half-close, the last-response close. Each scenario must make
only moves the table allows, and the moves it names; together the
scenarios name every move in the table, so the table holds no move the
code never makes. (The inline copies of the rules on the hot path are held
to the rules themselves by test_http_state.py.)"""

from __future__ import annotations

import asyncio
import re
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from conftest import until

from uringserve.http import HTTPConfig, HTTPServer, Request, Response, StreamingResponse, state
from uringserve.http.protocol import HTTPProtocol
from uringserve.http.state import (
    ANSWERING,
    BODY,
    CLOSED,
    CLOSING,
    HALF_CLOSED,
    HEAD,
    IDLE,
    LINGERING,
    MOVES,
    TRANSITIONS,
    IllegalMove,
    State,
)

H = b"Host: t\r\n"
GET = b"GET / HTTP/1.1\r\n" + H + b"\r\n"
SLOW = b"GET /sleep/300 HTTP/1.1\r\n" + H + b"\r\n"
QUICK = HTTPConfig(header_timeout=0.3, body_timeout=0.3, keepalive_timeout=0.3)


def post(path: bytes, length: int, extra: bytes = b"") -> bytes:
    return b"POST %s HTTP/1.1\r\n%sContent-Length: %d\r\n%s\r\n" % (path, H, length, extra)


async def app(req: Request) -> Any:
    path = req.raw_path
    if path == b"/":
        return Response(b"hello")
    if path == b"/echo":
        return Response(await req.body())
    if path == b"/count":
        n = 0
        async for chunk in req.stream():
            n += len(chunk)
        return Response(str(n))
    if path == b"/ignore-body":
        return Response(b"not read")
    if path.startswith(b"/sleep/"):
        await asyncio.sleep(int(path[7:]) / 1000)
        return Response(b"slept")
    if path == b"/boom":
        raise ValueError("handler bug")
    if path == b"/boom-late":
        return StreamingResponse(_fail_after_first())
    if path == b"/trickle":
        return StreamingResponse(_trickle())
    return Response(b"nope", status=404)


async def _fail_after_first() -> Any:
    yield b"first"
    raise RuntimeError("stream broke")


async def _trickle() -> Any:
    for _ in range(100):
        yield b"drop;"
        await asyncio.sleep(0.02)


def plain(req: Request) -> Any:
    return Response(b"p:" + req.raw_path)  # a plain handler's Response: the one-frame path answers it


class Client:
    """A blocking client that sends exact bytes and reads whole responses."""

    def __init__(self, port: int) -> None:
        self.s = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def send(self, data: bytes, bytewise: bool = False) -> None:
        if not bytewise:
            self.s.sendall(data)
            return
        for i in range(len(data)):
            self.s.sendall(data[i : i + 1])
            time.sleep(0.002)

    def _more(self) -> bool:
        try:
            chunk = self.s.recv(65536)
        except ConnectionResetError:
            chunk = b""
        self.buf += chunk
        return bool(chunk)

    def response(self) -> bytes:
        """One response: its head, and its body by Content-Length, chunked, or to the close."""
        while b"\r\n\r\n" not in self.buf:
            if not self._more():
                raise AssertionError(f"the connection ended inside a response head: {self.buf!r}")
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        if head.startswith(b"HTTP/1.1 1"):
            return head
        m = re.search(rb"(?i)\r\ncontent-length: (\d+)", head)
        if m is not None:
            n = int(m.group(1))
            while len(self.buf) < n and self._more():
                pass
            body, self.buf = self.buf[:n], self.buf[n:]
        else:  # chunked (a cut one ends with the close) or close-delimited
            while b"0\r\n\r\n" not in self.buf and self._more():
                pass
            body, self.buf = self.buf, b""
        return head + b"\r\n\r\n" + body

    def eof(self) -> None:
        """Until the server ends the connection."""
        while self._more():
            pass

    def shut_wr(self) -> None:
        self.s.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.s.close()

    def reset(self) -> None:
        """Close with RST (SO_LINGER 0): the server sees a reset, not EOF."""
        self.s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.s.close()


Blocking = Callable[..., Awaitable[Any]]
Scenario = Callable[[HTTPServer, int], Awaitable[None]]


def in_thread(fn: Callable[[], Any]) -> Awaitable[Any]:
    return asyncio.to_thread(fn)


async def connections(srv: HTTPServer, n: int) -> None:
    assert await until(lambda: srv.connections.accepted >= n)


# -- the scenarios: each drives connections through some paths ------------------------
async def keep_alive(srv: HTTPServer, port: int) -> None:
    def client() -> None:
        c = Client(port)
        for _ in range(2):
            c.send(GET)
            assert c.response().startswith(b"HTTP/1.1 200 ")
        c.close()

    await in_thread(client)


async def next_head_in_pieces(srv: HTTPServer, port: int) -> None:
    def client() -> None:
        c = Client(port)
        c.send(GET)
        c.response()
        c.send(GET, bytewise=True)  # IDLE -> HEAD at its first byte
        assert c.response().startswith(b"HTTP/1.1 200 ")
        c.close()

    await in_thread(client)


async def pipelined(srv: HTTPServer, port: int) -> None:
    # a body-less request, one with a body queued behind it, and the start of
    # a third while the first is answered: the answers leave in order, and
    # then the third's head is awaited (HEAD, under header_timeout)
    def client() -> None:
        c = Client(port)
        c.send(SLOW + post(b"/echo", 5) + b"hello")
        time.sleep(0.05)
        c.send(b"GET / HT")
        assert c.response().endswith(b"slept")
        assert c.response().endswith(b"hello")
        c.send(b"TP/1.1\r\n" + H + b"\r\n")
        assert c.response().endswith(b"hello")
        c.close()

    await in_thread(client)


async def body_left_unread(srv: HTTPServer, port: int) -> None:
    def client() -> None:
        c = Client(port)
        c.send(post(b"/ignore-body", 100) + b"x" * 10)
        resp = c.response()
        assert b"Connection: close" in resp
        c.eof()  # FIN after the response; the server lingers until we close
        c.close()

    def whole_body_in_one_read() -> None:
        # on UringEventLoop the handler runs eagerly inside on_head and answers
        # before the parser reaches the body's end in the same read: that end
        # moves nothing (the connection is LINGERING already)
        c = Client(port)
        c.send(post(b"/ignore-body", 10) + b"x" * 10)
        c.response()
        c.close()

    await in_thread(client)
    await in_thread(whole_body_in_one_read)


async def expect_continue(srv: HTTPServer, port: int) -> None:
    def client() -> None:
        c = Client(port)
        c.send(GET)
        c.response()
        c.send(post(b"/echo", 5, b"Expect: 100-continue\r\n"))
        assert c.response().startswith(b"HTTP/1.1 100 ")
        c.send(b"hello")
        assert c.response().endswith(b"hello")
        c.close()

    await in_thread(client)


async def handler_errors(srv: HTTPServer, port: int) -> None:
    def client() -> None:
        c = Client(port)
        c.send(b"GET /boom HTTP/1.1\r\n" + H + b"\r\n")
        assert c.response().startswith(b"HTTP/1.1 500 ")  # kept alive
        c.send(b"GET /boom-late HTTP/1.1\r\n" + H + b"\r\n")
        assert b"first" in c.response()  # then cut: the chunked body never ends
        c.eof()
        c.close()

    await in_thread(client)


async def timeouts(srv: HTTPServer, port: int) -> None:
    def nothing_sent() -> None:
        c = Client(port)
        c.eof()  # header_timeout, nothing arrived: closed without an answer
        assert c.buf == b""
        c.close()

    def head_too_slow() -> None:
        c = Client(port)
        c.send(b"GET / HTTP/1.1\r\n")
        assert c.response().startswith(b"HTTP/1.1 408 ")
        c.eof()
        c.close()

    def kept_alive_too_long() -> None:
        c = Client(port)
        c.send(GET)
        c.response()
        c.eof()  # keepalive_timeout
        c.close()

    def body_too_slow() -> None:
        c = Client(port)
        c.send(post(b"/echo", 10) + b"12345")
        assert c.response().startswith(b"HTTP/1.1 408 ")
        c.eof()
        c.close()

    await asyncio.gather(*(in_thread(f) for f in (nothing_sent, head_too_slow, kept_alive_too_long, body_too_slow)))


async def drain(srv: HTTPServer, port: int) -> None:
    """A graceful shutdown: an answer in flight ends with Connection: close,
    an idle connection closes once quiet for DRAIN_GRACE, a new one gets
    DRAIN_GRACE for its request."""
    idle = await in_thread(lambda: Client(port))
    await in_thread(lambda: idle.send(GET))
    await in_thread(idle.response)
    new = await in_thread(lambda: Client(port))

    def in_flight() -> bytes:
        c = Client(port)
        c.send(SLOW)
        resp = c.response()
        c.eof()
        c.close()
        return resp

    answer = asyncio.ensure_future(in_thread(in_flight))
    await connections(srv, 3)
    await until(lambda: any(c.state is ANSWERING for c in srv.connections))
    await srv.shutdown(timeout=5)
    assert b"Connection: close" in await answer
    await in_thread(idle.eof)
    await in_thread(new.eof)
    idle.close()
    new.close()


async def drain_next_request(srv: HTTPServer, port: int) -> None:
    """A drain begun just after a keep-alive response: the connection is not
    closed under the client's next request, which is answered with
    Connection: close; then the connection lingers until the client closes."""
    c = await in_thread(lambda: Client(port))
    await in_thread(lambda: c.send(GET))
    await in_thread(c.response)
    await until(lambda: any(conn.state is IDLE for conn in srv.connections))
    stop = asyncio.ensure_future(srv.shutdown(timeout=5))
    await asyncio.sleep(0)
    await in_thread(lambda: c.send(GET))
    assert b"Connection: close" in await in_thread(c.response)
    await in_thread(c.eof)
    c.close()
    await stop


async def drain_cut(srv: HTTPServer, port: int) -> None:
    """A shutdown whose timeout passes: a lingering connection, a body still
    arriving and a head still arriving are aborted."""
    lingering = await in_thread(lambda: Client(port))
    await in_thread(lambda: lingering.send(b"GET / HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n"))
    await in_thread(lingering.response)  # and keeps the connection open: the server lingers
    body = await in_thread(lambda: Client(port))
    await in_thread(lambda: body.send(post(b"/echo", 10) + b"12345"))
    head = await in_thread(lambda: Client(port))
    await in_thread(lambda: head.send(b"GET / HTTP/1.1\r\n"))
    await connections(srv, 3)
    assert await until(lambda: {c.state for c in srv.connections} == {LINGERING, BODY, HEAD})
    await srv.shutdown(timeout=0.3)
    for c in (lingering, body, head):
        await in_thread(c.eof)
        c.close()


async def resets(srv: HTTPServer, port: int) -> None:
    async def reset_when(c: Client, st: State) -> None:
        assert await until(lambda: any(conn.state is st for conn in srv.connections))
        c.reset()

    new = await in_thread(lambda: Client(port))
    await reset_when(new, HEAD)
    idle = await in_thread(lambda: Client(port))
    await in_thread(lambda: idle.send(GET))
    await in_thread(idle.response)
    await reset_when(idle, IDLE)
    busy = await in_thread(lambda: Client(port))
    await in_thread(lambda: busy.send(SLOW))
    await reset_when(busy, ANSWERING)
    body = await in_thread(lambda: Client(port))
    await in_thread(lambda: body.send(post(b"/echo", 10) + b"12345"))
    await reset_when(body, BODY)
    # after EOF nothing more is read: the reset shows when the next write fails
    half = await in_thread(lambda: Client(port))
    await in_thread(lambda: half.send(b"GET /trickle HTTP/1.1\r\n" + H + b"\r\n"))
    await in_thread(half.shut_wr)
    await reset_when(half, HALF_CLOSED)
    assert await until(lambda: not srv.connections)


async def half_closes(srv: HTTPServer, port: int) -> None:
    def after_request() -> None:
        c = Client(port)
        c.send(SLOW)
        c.shut_wr()  # the answer still comes, then the close
        assert c.response().endswith(b"slept")
        c.eof()
        c.close()

    def mid_body() -> None:
        c = Client(port)
        c.send(post(b"/count", 10) + b"12345")
        time.sleep(0.05)
        c.shut_wr()  # the body fails: its handler answers that
        assert c.response().startswith(b"HTTP/1.1 ")
        c.eof()
        c.close()

    def last_request() -> None:
        c = Client(port)
        c.send(b"GET /sleep/100 HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n")
        c.shut_wr()  # a last response to a client that sent EOF: closed at once, no lingering
        assert b"Connection: close" in c.response()
        c.eof()
        c.close()

    await asyncio.gather(in_thread(after_request), in_thread(mid_body), in_thread(last_request))


async def refused(srv: HTTPServer, port: int) -> None:
    def client() -> None:
        c = Client(port)
        c.send(b"NOT HTTP\r\n\r\n")
        assert c.response().startswith(b"HTTP/1.1 400 ")
        c.eof()
        c.close()
        c = Client(port)
        c.send(GET)
        c.response()
        c.send(b"\x00\x01 not a request\r\n\r\n")  # refused while idle
        assert c.response().startswith(b"HTTP/1.1 400 ")
        c.eof()
        c.close()

    await in_thread(client)


async def connection_close(srv: HTTPServer, port: int) -> None:
    def client() -> None:
        c = Client(port)
        c.send(b"GET / HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n")
        assert b"Connection: close" in c.response()
        c.eof()
        c.close()

    await in_thread(client)


# name: (scenario, handler, config, the moves it must make)
SCENARIOS: dict[str, tuple[Scenario, Any, HTTPConfig | None, set[tuple[State, State]]]] = {
    "keep_alive": (
        keep_alive,
        app,
        None,
        {(HEAD, ANSWERING), (ANSWERING, IDLE), (IDLE, ANSWERING), (IDLE, CLOSING), (CLOSING, CLOSED)},
    ),
    "keep_alive_one_frame": (
        keep_alive,
        plain,
        None,
        {(HEAD, ANSWERING), (ANSWERING, IDLE), (IDLE, ANSWERING), (IDLE, CLOSING), (CLOSING, CLOSED)},
    ),
    "next_head_in_pieces": (next_head_in_pieces, app, None, {(IDLE, HEAD), (HEAD, ANSWERING)}),
    "pipelined": (
        pipelined,
        app,
        None,
        {(HEAD, ANSWERING), (ANSWERING, BODY), (BODY, ANSWERING), (ANSWERING, HEAD), (HEAD, ANSWERING)},
    ),
    "body_left_unread": (body_left_unread, app, None, {(HEAD, BODY), (BODY, LINGERING), (LINGERING, CLOSED)}),
    "expect_continue": (expect_continue, app, None, {(IDLE, BODY), (BODY, ANSWERING), (ANSWERING, IDLE)}),
    # /boom-late fails after its response began: the connection ends lingering, as after any last response
    "handler_errors": (handler_errors, app, None, {(ANSWERING, IDLE), (IDLE, ANSWERING), (ANSWERING, LINGERING)}),
    "timeouts": (
        timeouts,
        app,
        QUICK,
        {
            (HEAD, CLOSING),  # nothing arrived
            (HEAD, ANSWERING),  # a head too slow: its 408 queued
            (ANSWERING, LINGERING),
            (IDLE, CLOSING),  # keep-alive timeout
            (HEAD, BODY),
            (BODY, ANSWERING),  # a body too slow
        },
    ),
    "drain": (drain, app, None, {(ANSWERING, LINGERING), (IDLE, CLOSING), (HEAD, CLOSING), (LINGERING, CLOSED)}),
    "drain_next_request": (
        drain_next_request,
        app,
        None,
        {(ANSWERING, IDLE), (IDLE, ANSWERING), (ANSWERING, LINGERING), (LINGERING, CLOSED)},
    ),
    "drain_cut": (
        drain_cut,
        app,
        HTTPConfig(header_timeout=30),
        {(LINGERING, CLOSING), (BODY, CLOSING), (HEAD, CLOSING)},
    ),
    "resets": (
        resets,
        app,
        None,
        {
            (HEAD, CLOSED),
            (IDLE, CLOSED),
            (ANSWERING, CLOSED),
            (BODY, CLOSED),
            (ANSWERING, HALF_CLOSED),
            (HALF_CLOSED, CLOSED),
        },
    ),
    "half_closes": (
        half_closes,
        app,
        None,
        {(ANSWERING, HALF_CLOSED), (BODY, HALF_CLOSED), (HALF_CLOSED, CLOSING)},
    ),
    "refused": (refused, app, None, {(HEAD, ANSWERING), (IDLE, ANSWERING), (ANSWERING, LINGERING)}),
    "connection_close": (connection_close, app, None, {(ANSWERING, LINGERING), (LINGERING, CLOSED)}),
}


def observe(h: Any, scenario: Scenario, handler: Any, config: HTTPConfig | None) -> list[tuple[State, State]]:
    """The moves of every connection the scenario made. An illegal one is
    reported first, also when the scenario failed (its symptom)."""
    with state.checking(HTTPProtocol, strict=False) as moves:

        async def main() -> None:
            srv = HTTPServer(handler, config=config)
            await srv.start("127.0.0.1", 0)
            port = srv.sockets[0].getsockname()[1]
            try:
                await scenario(srv, port)
            finally:
                await srv.shutdown(timeout=2)
            conns = {conn for conn, _, _ in moves}
            assert await until(lambda: all(c.state is CLOSED for c in conns)), {c.state for c in conns}

        try:
            h.run(main(), timeout=60)
        except BaseException as exc:
            illegal = state.illegal(moves)
            if illegal:
                raise AssertionError(f"moves http/state.py's TRANSITIONS does not allow: {illegal}") from exc
            raise
    h.take_errors("HTTP handler failed")  # /boom and /boom-late: what handler_errors asserts on itself
    return [(a, b) for _, a, b in moves]


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenario_moves_are_in_the_table(h: Any, name: str) -> None:
    scenario, handler, config, expected = SCENARIOS[name]
    moves = observe(h, scenario, handler, config)
    illegal = sorted({f"{a.name} -> {b.name}" for a, b in moves if (a, b) not in MOVES})
    assert not illegal, f"moves http/state.py's TRANSITIONS does not allow: {illegal}"
    missing = sorted(f"{a.name} -> {b.name}" for a, b in expected - set(moves))
    assert not missing, f"moves this scenario must make and did not: {missing}; made {moves}"


class FakeTransport:
    """A transport without write_eof (as a transport-like object may be): a
    last response closes at once instead of lingering."""

    def __init__(self) -> None:
        self.written = b""
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += bytes(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


@pytest.mark.parametrize(
    "request_bytes, path",
    [
        (b"GET / HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n", [HEAD, ANSWERING, CLOSING, CLOSED]),
        (post(b"/ignore-body", 10) + b"12345", [HEAD, BODY, CLOSING, CLOSED]),
    ],
    ids=["answering", "body"],
)
def test_a_last_response_without_write_eof_closes_at_once(request_bytes: bytes, path: list[State]) -> None:
    async def main() -> FakeTransport:
        conn = HTTPProtocol(_native_runner(app), HTTPConfig())
        t = FakeTransport()
        conn.connection_made(t)
        conn.data_received(request_bytes)
        assert await until(lambda: t.closed)
        conn.connection_lost(None)
        return t

    with state.checking(HTTPProtocol) as moves:
        t = asyncio.run(main())
    assert b"Connection: close" in t.written
    assert [HEAD] + [b for _, _, b in moves] == path


def _native_runner(handler: Any) -> Any:
    from uringserve.http.native import native_runner

    return native_runner(handler)


FAKE_MOVES = {(ANSWERING, CLOSING), (BODY, CLOSING)}  # what the test just above makes


def test_the_scenarios_name_every_move_in_the_table() -> None:
    """Each scenario test asserts the moves it names were made: named
    together, they are every move the table allows, so no move in the
    table is one the code never makes."""
    named = set().union(*(expected for _, _, _, expected in SCENARIOS.values())) | FAKE_MOVES
    unnamed = sorted(f"{a.name} -> {b.name}" for a, b in MOVES - named)
    assert not unnamed, f"moves in the table no scenario makes: {unnamed}"
    assert named <= MOVES


def test_a_response_after_abort_moves_nothing() -> None:
    """abort() cuts a connection while its handler runs: the handler's
    answer to its cancellation completes the exchange on a CLOSING
    connection, which must stay CLOSING (not wait for a next request)."""

    class Aborting(FakeTransport):
        def abort(self) -> None:
            self.closed = True

    async def slow(req: Request) -> Any:
        await asyncio.sleep(10)
        return Response(b"late")

    async def main() -> HTTPProtocol:
        conn = HTTPProtocol(_native_runner(slow), HTTPConfig())
        conn.connection_made(Aborting())
        conn.data_received(GET)
        assert conn.state is ANSWERING
        await asyncio.sleep(0)  # the handler runs, and waits
        tasks = conn.abort()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert conn._served == 1  # the cancelled exchange was completed (its 500 went nowhere)
        return conn

    with state.checking(HTTPProtocol, strict=False) as moves:
        conn = asyncio.run(main())
        assert conn.state is CLOSING
    assert [(a, b) for _, a, b in moves] == [(HEAD, ANSWERING), (ANSWERING, CLOSING)]


def test_every_state_is_in_the_table() -> None:
    assert set(TRANSITIONS) == set(State)
    reached = {b for _, b in MOVES} | {HEAD}
    assert reached == set(State)  # every state is entered; a connection starts in HEAD


def test_an_illegal_move_is_caught() -> None:
    """A store the table does not allow (here BODY -> IDLE: a body's end
    taken for the end of its answer, skipping ANSWERING) raises
    IllegalMove where it is made, and is recorded."""

    async def main() -> None:
        conn = HTTPProtocol(_native_runner(app), HTTPConfig())
        conn.connection_made(FakeTransport())
        conn.state = BODY
        with pytest.raises(IllegalMove, match="BODY -> IDLE"):
            conn.state = IDLE
        conn.stop_timer()

    with state.checking(HTTPProtocol) as moves:
        asyncio.run(main())
    assert state.illegal(moves) == ["BODY -> IDLE"]
    assert "state" not in HTTPProtocol.__dict__  # the watch is gone: stores are plain again
