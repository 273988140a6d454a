"""One HTTP/1.1 connection as a state machine: its states, the moves
between them and what causes each. HTTPProtocol (protocol.py) holds its
state in `conn.state` and moves it with plain stores of these members;
this module is where the machine is written down.

    HEAD ─request─> ANSWERING ─kept alive─> IDLE ─request─> ANSWERING ...
      └─request with a body─> BODY ─body ends─> ANSWERING
    ANSWERING ─last response─> LINGERING ─client closes─> CLOSED

A connection starts in HEAD. A request head moves it to ANSWERING (or to
BODY while the request's body arrives); when the last request in hand is
answered it waits in IDLE (kept alive), HEAD (part of the next head came
already), or it ends: LINGERING (FIN sent after a last response, what
the client still sends is read and discarded), CLOSING (closed without
lingering, or cut), CLOSED (the transport is gone).

A deadline belongs to the state that set it: HEAD, BODY and IDLE each
set theirs on entry (header_timeout, body_timeout between reads,
keepalive_timeout), and HTTPProtocol.timed_out() acts only while the
connection is still in the state that set it. Leaving a state needs no
timer work, which keeps a state change one attribute store.

Beside its state a connection has three conditions that change no state:
reading paused (flow control: too many requests queued, too much body
buffered, or the client not reading our responses), writing paused (the
transport's buffer above its high-water mark), and draining (the server
is shutting down: no response keeps the connection alive, and one with
nothing in hand closes once quiet for DRAIN_GRACE since its last response,
so a client's next request already on its way is answered, with
Connection: close, rather than reset). Each exchange (one request and its response) has its own
progress, in its own fields: queued, running (its handler was called),
started (the response head was written), finished.

The moves are not checked as they happen (a check per request would cost
the hot path); `checking()` checks them, for tests and debugging.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Callable, Iterator
from typing import Any

from ..server.connection import KIND_USER


class State(enum.IntEnum):
    """Where one connection is. The waiting states (HEAD, IDLE, BODY) are
    also the kinds of the deadline they set (server.Connection's timer,
    numbered from KIND_USER). The ending states come last, so
    `state >= LINGERING` asks whether the connection is ending."""

    HEAD = KIND_USER  # waiting for a request head with nothing in hand: new, or the next head has begun
    IDLE = KIND_USER + 1  # kept alive: between requests, nothing of the next one arrived
    BODY = KIND_USER + 2  # a request body is arriving (its handler may run already)
    ANSWERING = KIND_USER + 3  # requests in hand, no body arriving: a handler runs or a response is written
    HALF_CLOSED = KIND_USER + 4  # the client sent EOF: what it sent is answered, then the connection closes
    LINGERING = KIND_USER + 5  # ended after a last response: FIN sent (not over TLS), the client's bytes discarded
    CLOSING = KIND_USER + 6  # closed or cut: nothing more is read or answered
    CLOSED = KIND_USER + 7  # connection_lost(): the transport is gone


# the members as module constants: what the protocol's hot paths load and compare with `is`
HEAD = State.HEAD
IDLE = State.IDLE
BODY = State.BODY
ANSWERING = State.ANSWERING
HALF_CLOSED = State.HALF_CLOSED
LINGERING = State.LINGERING
CLOSING = State.CLOSING
CLOSED = State.CLOSED

# What moves a connection, from each state: {state: {event: next state}}.
# An event not listed for a state does not happen there (or moves nothing:
# a pipelined request queued while ANSWERING, a response with more requests
# queued behind it). Events every live state shares:
_CUT = "cut: abort() (send timeout, drain timeout)"
_LOST = "the transport is gone: the client reset the connection, or our close completed"

TRANSITIONS: dict[State, dict[str, State]] = {
    HEAD: {
        "a request head without a body": ANSWERING,
        "a request head with a body": BODY,
        "a head that cannot be parsed, or did not arrive in header_timeout: its error answer queued": ANSWERING,
        "nothing arrived: header_timeout (DRAIN_GRACE when draining), or the client's EOF": CLOSING,
        _CUT: CLOSING,
        _LOST: CLOSED,
    },
    IDLE: {
        "bytes of the next request head": HEAD,
        "a request head without a body": ANSWERING,
        "a request head with a body": BODY,
        "bytes that are no request: the error answer queued": ANSWERING,
        "keepalive_timeout, the client's EOF, or a drain (at once if quiet for DRAIN_GRACE, else when it is)": CLOSING,
        _CUT: CLOSING,
        _LOST: CLOSED,
    },
    BODY: {
        "the body ended, or could not be parsed, or paused in body_timeout (its error answer queued)": ANSWERING,
        "the client's EOF: the body fails, what is in hand is answered": HALF_CLOSED,
        "a response that does not keep the connection (its own, sent before the body was read), "
        "or that failed midway": LINGERING,
        "as above, on a transport that cannot send FIN alone (no write_eof; TLS lingers without FIN "
        "unless the close delimits the body)": CLOSING,
        _CUT: CLOSING,
        _LOST: CLOSED,
    },
    ANSWERING: {
        "the last response in hand kept the connection": IDLE,
        "the last response in hand kept the connection, and the next head has begun": HEAD,
        "a pipelined request head with a body (while an earlier one is answered)": BODY,
        "the client's EOF": HALF_CLOSED,
        "a response that does not keep the connection (Connection: close, an error answer, draining), "
        "or that cannot be completed (its handler failed after it began)": LINGERING,
        "as above, on a transport that cannot send FIN alone (no write_eof; TLS lingers without FIN "
        "unless the close delimits the body)": CLOSING,
        _CUT: CLOSING,
        _LOST: CLOSED,
    },
    HALF_CLOSED: {
        "the last response in hand, or one that failed midway (no lingering: the client sends nothing more)": CLOSING,
        _CUT: CLOSING,
        _LOST: CLOSED,
    },
    LINGERING: {
        "the client closed too, or LINGER seconds passed": CLOSED,
        "abort() (drain timeout)": CLOSING,
    },
    CLOSING: {
        _LOST: CLOSED,
    },
    CLOSED: {},
}

#: every (from, to) pair the table allows; a store of the state a connection is already in is no move
MOVES: frozenset[tuple[State, State]] = frozenset((a, b) for a, events in TRANSITIONS.items() for b in events.values())


class IllegalMove(AssertionError):
    """A connection moved between two states the table does not connect."""


Move = tuple[Any, State, State]  # (connection, from, to)


@contextlib.contextmanager
def checking(
    cls: type, on_move: Callable[[Any, State, State], None] | None = None, strict: bool = True
) -> Iterator[list[Move]]:
    """While inside: every state store of a `cls` connection (HTTPProtocol)
    made inside is checked against TRANSITIONS and recorded. Yields the
    list of moves, (connection, from, to) in order. An illegal one is
    recorded too and, when `strict`, raises IllegalMove where the store is
    (inside a protocol callback that ends the connection, so a test that
    drives whole exchanges passes strict=False and asserts on illegal()).
    Connections made before entering are not watched. For tests and
    debugging only: it puts a descriptor on the class."""
    moves: list[Move] = []
    key = "_checked_state"

    class Watched:
        def __get__(self, conn: Any, owner: type | None = None) -> Any:
            if conn is None:
                return self
            return conn.__dict__.get(key, HEAD)

        def __set__(self, conn: Any, new: State) -> None:
            old = conn.__dict__.get(key)
            conn.__dict__[key] = new
            if old is None or old is new:  # the first store (__init__), or no move
                return
            moves.append((conn, old, new))
            if on_move is not None:
                on_move(conn, old, new)
            if strict and (old, new) not in MOVES:
                raise IllegalMove(f"{old.name} -> {new.name} is not in http/state.py's TRANSITIONS")

    saved = cls.__dict__.get("state", None)
    cls.state = Watched()  # type: ignore[attr-defined]
    try:
        yield moves
    finally:
        if saved is None:
            del cls.state  # type: ignore[attr-defined]
        else:
            cls.state = saved  # type: ignore[attr-defined]


def illegal(moves: list[Move]) -> list[str]:
    """The moves in `moves` the table does not allow, as text."""
    return sorted({f"{a.name} -> {b.name}" for _, a, b in moves if (a, b) not in MOVES})


__all__ = ["State", "TRANSITIONS", "MOVES", "IllegalMove", "checking", "illegal"]
