"""The HTTP connection's rules, each written once, and the hot path's inline
copies held to them: HTTPProtocol.respond_whole() (Exchange.respond_prepared())
settles keep-alive and takes the next request's turn inline; here it is run
in every combination of the state those decisions read, beside a reference
that calls the rules themselves (HTTPProtocol.keeps_alive,
HTTPProtocol.response_done), and both must leave the same bytes and the same
connection state. (The one-frame path, _answer_common(), is held to the
general path by the differential tests in test_http_scan.py; the moves
between states are held to http/state.py's table by test_http_state_machine.py.)"""

from __future__ import annotations

import asyncio
import itertools
from types import SimpleNamespace
from typing import Any

import pytest

from uringserve.http import HTTPConfig, framing, protocol
from uringserve.http.body import Body
from uringserve.http.protocol import Exchange, HTTPProtocol
from uringserve.http.state import ANSWERING, BODY, CLOSED, HALF_CLOSED


class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False
        self.reading = True

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


STATE = [
    "keep_alive",  # the request allows keep-alive
    "body_done",  # its body was read to the end
    "draining",
    "at_limit",  # keepalive_requests reached with this response
    "lost",
    "another_queued",  # a pipelined request waits behind it
    "disconnect_waiter",  # an ASGI receive() waits for the end
    "half_closed",  # the client sent EOF after its requests
    "paused",
    "next_head_begun",  # bytes of the next request head arrived
]
KINDS = [("1.1", "GET"), ("1.0", "GET"), ("1.1", "HEAD")]


def build(state: dict[str, bool], version: str, method: str) -> tuple[HTTPProtocol, FakeTransport, Exchange, list]:
    runs: list[Exchange] = []
    conn = HTTPProtocol(runs.append, HTTPConfig(keepalive_requests=3))
    t = FakeTransport()
    conn.connection_made(t)
    ex = Exchange(method.encode(), b"/", version, [], state["keep_alive"])
    conn.state = ANSWERING
    if not state["body_done"]:
        ex.has_body = True
        ex.body_in = Body(lambda: None, None)
        conn.state = BODY
    ex.conn = conn
    ex.running = True
    conn._queue.append(ex)
    if state["another_queued"]:
        other = Exchange(b"GET", b"/next", version, [], True)
        other.conn = conn
        conn._queue.append(other)
    conn._draining = state["draining"]
    conn._served = conn._last_keepalive if state["at_limit"] else conn._last_keepalive - 1
    if state["half_closed"]:
        conn.state = HALF_CLOSED
    if state["lost"]:
        conn.state = CLOSED
    if state["disconnect_waiter"]:
        conn._disconnect_waiters.append(conn._loop.create_future())
    if state["paused"]:
        conn._pause()
    if state["next_head_begun"]:
        conn._parser.head_bytes = 5
    return conn, t, ex, runs


def reference(ex: Exchange, status: int, head: bytes, body: bytes) -> None:
    """respond_prepared() as the rules say it: no inline copies."""
    conn = ex.conn
    ex.started = ex.finished = True
    ex.status = status
    ex.keep_alive = conn.keeps_alive(ex)
    if conn.state is not CLOSED:
        tail = (conn._tail_11 if ex.version == "1.1" else conn._tail_10) if ex.keep_alive else conn._tail_close
        conn._transport.write(head + framing.date_header() + tail + (b"" if ex.method == "HEAD" else body))
    conn.response_done(ex)


def observe(conn: HTTPProtocol, t: FakeTransport, ex: Exchange, runs: list) -> dict[str, Any]:
    return {
        "written": b"".join(t.written),
        "keep_alive": ex.keep_alive,
        "queue": [e.target for e in conn._queue],
        "served": conn._served,
        "state": conn.state,
        "timer": conn._timer_kind,
        "closed": t.closed,
        "reading": t.reading,
        "paused": conn._paused,
        "waiters_woken": [w.done() for w in conn._disconnect_waiters],
        "answered_next": [e.target for e in runs],
    }


@pytest.fixture
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> Any:
    """One wall-clock second for the whole test: the fast path's inline Date
    (protocol._time) and the reference's framing.date_header() read the same
    clock, so a second boundary between the two cannot make their Date
    headers differ."""
    now = 1_700_000_000.25  # in the past: the cached Date is refreshed after the test
    saved = list(framing.DATE)
    monkeypatch.setattr(protocol, "_time", lambda: now)
    monkeypatch.setattr(framing, "time", SimpleNamespace(time=lambda: now))
    framing.DATE[0] = 0.0  # refreshed at the frozen time on first use
    yield now
    framing.DATE[:] = saved


def inline_turn(state: dict[str, bool]) -> bool:
    """Whether respond_prepared() takes the next request's turn inline: the
    response keeps the connection and nothing else waits or has arrived."""
    keeps = state["keep_alive"] and state["body_done"] and not (state["draining"] or state["at_limit"])
    others = ("lost", "another_queued", "disconnect_waiter", "half_closed", "paused", "next_head_begun")
    return keeps and not any(state[k] for k in others)


def test_respond_prepared_is_the_rules_in_every_state(frozen_clock, monkeypatch: pytest.MonkeyPatch) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n"  # as framing.whole_head() makes it
    date = b"Date: Tue, 14 Nov 2023 22:13:20 GMT\r\n"  # the frozen second
    general: list[HTTPProtocol] = []  # connections that went through the rule itself
    rule = HTTPProtocol.response_done

    def counted(self: HTTPProtocol, ex: Exchange) -> None:
        general.append(self)
        rule(self, ex)

    monkeypatch.setattr(HTTPProtocol, "response_done", counted)

    async def main() -> list[tuple[tuple[bool, ...], str, str]]:
        inline = []
        for values in itertools.product([False, True], repeat=len(STATE)):
            state = dict(zip(STATE, values, strict=True))
            for version, method in KINDS:
                fast = build(state, version, method)
                slow = build(state, version, method)
                fast[2].respond_prepared(200, head, b"hello")
                reference(slow[2], 200, head, b"hello")
                got, want = observe(*fast), observe(*slow)
                assert got == want, (state, version, method)
                assert not want["written"] or date in want["written"]
                if fast[0] not in general:
                    inline.append((values, version, method))
                for conn in (fast[0], slow[0]):
                    conn.stop_timer()
        return inline

    loop = asyncio.new_event_loop()
    try:
        inline = loop.run_until_complete(main())
    finally:
        loop.close()
    # the inline copy is what runs where its conditions hold (the hot path), and only there
    every = itertools.product([False, True], repeat=len(STATE))
    want = [(v, ver, m) for v in every for ver, m in KINDS if inline_turn(dict(zip(STATE, v, strict=True)))]
    assert inline == want and len(want) == len(KINDS)


@pytest.mark.parametrize("case", ["at_limit", "draining"])
def test_a_500_says_close_when_the_connection_will_close(case: str) -> None:
    async def main() -> None:
        state = dict.fromkeys(STATE, False) | {"keep_alive": True, "body_done": True, case: True}
        conn, t, ex, _ = build(state, "1.1", "GET")
        ex.fail(ValueError("boom"))
        sent = b"".join(t.written)
        assert sent.startswith(b"HTTP/1.1 500 ") and b"Connection: close\r\n" in sent
        assert t.closed and not ex.keep_alive
        conn.stop_timer()

    loop = asyncio.new_event_loop()
    loop.set_exception_handler(lambda _l, _c: None)  # the handler failure is reported; not this test's subject
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
