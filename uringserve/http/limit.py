"""`--limit-concurrency N`: beyond N requests in flight in a worker, a new
one is answered `503 Service Unavailable` with `Retry-After` at once
instead of waiting its turn behind them (uvicorn's flag; nginx's
limit_conn answers 503 the same way).

In flight: a request whose handler runs as a task that has started and
not ended -- an ASGI app's call (a WebSocket handshake is an HTTP request
until the app answers it), an async native handler, a plain one waiting
for its body, a streamed or file response being sent. A plain function
handler that answers at once holds nothing in flight (it ends before any
other request runs on the worker), so it is neither counted nor refused:
HTTPProtocol's one-frame path (_answer_common) stays as it is, and the
limit costs nothing where it could not matter. With the limit off no
runner carries any of this.

The 503 keeps the connection alive when the request allows it (its body
read, keep-alive asked, as for any response): the answer is complete, and
a client told to retry after a second may do so on the same connection.
nginx keeps it alive too; uvicorn closes. A request whose body has not
been read closes, as every early answer does (keeps_alive()).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import framing

BODY = b"503 Service Unavailable: too many requests in flight; retry later\n"


class ConcurrencyLimit:
    """The count of requests in flight in one worker and what answers beyond
    it. The runners, wrapped by wrap(), call admit() as a request's handler
    starts and hold() with its task; `refused` counts the 503s (the metrics read it)."""

    __slots__ = ("limit", "in_flight", "refused", "head", "body", "_release")

    def __init__(self, limit: int, retry_after: int = 1) -> None:
        if limit < 1:
            raise ValueError(f"the concurrency limit must be at least 1, got {limit}")
        if retry_after < 0:
            raise ValueError(f"Retry-After must be a number of seconds >= 0, got {retry_after}")
        self.limit = limit
        self.in_flight = 0
        self.refused = 0
        self.body = BODY
        # what respond_whole() takes: status line, headers, Content-Length (Date and the rest are the connection's)
        self.head = framing.status_line(503) + (
            b"Content-Type: text/plain; charset=utf-8\r\nRetry-After: %d\r\nContent-Length: %d\r\n"
            % (retry_after, len(BODY))
        )
        self._release = self.release

    def wrap(self, run: Callable[[Any], None]) -> Callable[[Any], None]:
        """`run` (a runner, or the part of one that makes a task) counted in:
        each request admitted and held until its task ends, or answered 503.
        The runners call this only with the limit on: off, nothing of it is
        on the way."""
        admit, hold = self.admit, self.hold

        def limited(ex: Any) -> None:
            if admit(ex):
                try:
                    run(ex)
                finally:
                    hold(ex.task)

        return limited

    def admit(self, ex: Any) -> bool:
        """Count `ex` in, or, at the limit, answer it 503 now and say no."""
        if self.in_flight >= self.limit:
            self.refused += 1
            ex.conn.respond_whole(ex, 503, self.head, self.body)
            return False
        self.in_flight += 1
        return True

    def hold(self, task: Any) -> None:
        """An admitted request stays counted until `task` (its handler's) ends;
        None or a task already done (an eager task that did not wait, a runner
        that raised before making one) lets go now."""
        if task is None or task.done():
            self.in_flight -= 1
        else:
            task.add_done_callback(self._release)

    def count(self, task: Any) -> None:
        """A request that becomes a task after its handler returned (a plain
        handler's streamed or file response): counted from now, never refused
        (its handler has run)."""
        self.in_flight += 1
        self.hold(task)

    def release(self, _task: Any = None) -> None:
        self.in_flight -= 1
