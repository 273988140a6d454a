"""Observing responses: the access log (HTTPConfig.access_log,
`--access-log`) and anything else given as the protocol's observer (the
Prometheus metrics). The access log is one line per response, in the
Common Log Format plus the seconds it took:

    127.0.0.1 - - [30/Nov/2026:14:45:00 +0000] "GET / HTTP/1.1" 200 14 0.000093

logged to `uringserve.access` with the fields as record attributes too
(the JSON log format writes them as keys). Observing is off by default: it
costs a clock read and the observers' work per request, and it turns off
the one-frame path (HTTPProtocol._answer_common), which answers without
the exchange methods this hooks."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from . import framing
from .state import CLOSED

logger = logging.getLogger("uringserve.access")
_classes: dict[type, type] = {}


def log(conn: Any, method: str, target: bytes, version: str, status: int, size: int, took: float) -> None:
    if not logger.isEnabledFor(logging.INFO):
        return
    client = conn.client[0] if isinstance(conn.client, tuple) else "-"
    path = target.decode("latin-1")
    when = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime())
    logger.info(
        '%s - - [%s] "%s %s HTTP/%s" %d %d %.6f',
        client,
        when,
        method,
        path,
        version,
        status,
        size,
        took,
        extra={
            "client": client,
            "method": method,
            "target": path,
            "http_version": version,
            "status": status,
            "bytes": size,
            "duration": round(took, 6),
        },
    )


Observer = Callable[[Any, str, bytes, str, int, int, float], None]


def chain(*observers: Observer | None) -> Observer | None:
    """One observer calling each given one (None when none is)."""
    present = [o for o in observers if o is not None]
    if len(present) <= 1:
        return present[0] if present else None

    def both(*args: Any) -> None:
        for o in present:
            o(*args)

    return both


def observed(base: Any) -> Any:
    """`base` (the runner's Exchange class) calling its connection's
    observer (conn, method, target, version, status, body bytes, seconds)
    once per response."""
    cls = _classes.get(base)
    if cls is None:

        class Logged(base):
            status: int  # Exchange's (declared for the type checker: the base is dynamic)
            finished: bool
            started: bool

            def __init__(self, *args: Any, **kw: Any) -> None:
                super().__init__(*args, **kw)
                self._t0 = time.monotonic()
                self._sent = 0
                self._logged = False

            # Each logs before the base method: that may answer the next pipelined
            # request at once (a plain handler), whose line must come after this one.
            # A whole response (respond_prepared) is logged by the connection
            # (HTTPProtocol._respond_whole_observed), which the front ends call.

            # Body bytes are counted where every front end's body passes
            # (start()'s first part and Exchange.send() both frame here), not
            # by overriding send(): ASGIExchange.send is ASGI's send(message),
            # whose awaitable an override of the byte-level send() would drop.
            def _frame(self, data: bytes) -> bytes:
                out = super()._frame(data)
                self._sent += len(data)
                return out

            def send_file(self, file: Any, offset: int, count: int) -> Any:
                out = super().send_file(file, offset, count)
                if self._body_allowed():
                    self._sent += count
                return out

            def end(self) -> None:
                if not self.finished:
                    self.log_response(self.status, self._sent)
                super().end()

            def fail(self, exc: BaseException) -> None:
                if not self.finished:
                    if self.started:  # the connection ends: what was sent is all there is
                        self.log_response(self.status, self._sent)
                    else:  # the error response fail() answers with, and its body
                        status, message = framing.failure_of(exc)
                        bodyless = self.conn.state is CLOSED or self.head_only
                        self.log_response(status, 0 if bodyless else len(framing.error_body(status, message)))
                super().fail(exc)

            def log_response(self, status: int, size: int) -> None:
                """The observer's one call for this response (later calls do nothing)."""
                if not self._logged:
                    self._logged = True
                    took = time.monotonic() - self._t0
                    conn = self.conn
                    conn.observer(conn, self.method, self.target, self.version, status or 500, size, took)

        Logged.__name__ = f"Observed{base.__name__}"
        Logged.__qualname__ = Logged.__name__
        _classes[base] = cls = Logged
    return cls
