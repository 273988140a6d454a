"""ASGI 3 WebSockets (spec version 2.4): the `websocket` scope, its
messages, and the `websocket.http.response` extension (the app answers the
handshake with its own HTTP response).

The app's task starts when the handshake is checked (ws/upgrade.py). Until
it answers, the connection is HTTP's: `websocket.accept` answers 101 and
hands it to a WebSocketProtocol whose handler is this adapter;
`websocket.close` refuses with 403 (as uvicorn does);
`websocket.http.response.start`/`.body` is the app's own response. Errors
(ASGI's: a message out of turn or of the wrong shape) raise RuntimeError in
the app, naming what was wrong; an app that fails closes the connection
cleanly: 500 while the handshake is pending, 1011 once open.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

from ..http import framing
from ..http.asgi import _mark_async, tls_extension
from ..http.body import ClientDisconnected
from ..http.parser import HeaderBlock
from ..http.protocol import Exchange
from .protocol import OPEN, WebSocketClosed

logger = logging.getLogger("uringserve.ws")

_ASGI = {"version": "3.0", "spec_version": "2.4"}
_EXTENSIONS: dict[str, Any] = {"websocket.http.response": {}}

# the app's side: the handshake waits for its answer; it accepted; it is
# sending its own HTTP response; it answered over HTTP (refused or its
# response ended) or closed the WebSocket: nothing more may be sent
PENDING, ACCEPTED, RESPONDING, DONE = 1, 2, 3, 4


def websocket_runner(app: Callable[..., Any], state: dict[str, Any], root_path: str = "") -> Callable[[Any], None]:
    """What asgi_runner calls for an exchange whose `ws` is a checked
    handshake: the websocket scope, and the app's task."""

    def run(ex: Any) -> None:
        conn = ex.conn
        raw_path = ex.raw_path
        headers = ex._headers
        path = raw_path.decode("latin-1")
        scope = {
            "type": "websocket",
            "asgi": _ASGI,
            "http_version": ex.version,
            "scheme": "wss" if conn.scheme == "https" else "ws",
            "server": conn.server_addr,
            "client": conn.client,
            "root_path": root_path,
            "path": unquote(path) if "%" in path else path,
            "raw_path": raw_path,
            "query_string": ex.query_string,
            "headers": headers.pairs() if type(headers) is HeaderBlock else headers,
            "subprotocols": ex.ws.subprotocols,
            "state": state.copy() if state else {},
            "extensions": _EXTENSIONS,
        }
        if conn.scheme != "http" and (tls := tls_extension(conn)) is not None:  # wss: the http scope's tls extension
            scope["extensions"] = {**_EXTENSIONS, "tls": tls}
        session = ASGIWebSocket(app, scope, ex)
        ex.task = session.task = conn.spawn(session.run())

    return run


class ASGIWebSocket:
    """One app call on a websocket scope: its receive and send, and the
    WebSocketProtocol's handler once accepted."""

    def __init__(self, app: Callable[..., Any], scope: dict[str, Any], ex: Any) -> None:
        self.app = app
        self.scope = scope
        self.ex = ex
        conn = ex.conn
        self.loop = conn.loop
        self.request = ex.ws
        self.max_queue = ex.ws.upgrader.config.max_queue
        self.state = PENDING
        self.ws: Any = None
        self.task: asyncio.Task | None = None
        self.connect_sent = False
        self.disconnected = False  # the disconnect message is in the queue (or was taken)
        self.disconnect_taken = False
        self.queue: collections.deque[dict[str, Any]] = collections.deque()
        self.waiter: asyncio.Future | None = None
        self.done = conn.completed  # a future already done: what send() returns when nothing waits
        self.response_status = 0
        self.response_headers: list[tuple[bytes, bytes]] = []
        # the client leaving before the app answers is a disconnect (1006)
        conn.disconnect_waiter().add_done_callback(self._http_gone)
        self.deadline = self.loop.call_later(ex.ws.upgrader.config.handshake_timeout, self._handshake_timed_out)

    async def run(self) -> None:
        ex = self.ex
        try:
            await self.app(self.scope, self.receive, self.send)
        except BaseException as exc:
            self._failed(exc)
            if isinstance(exc, (SystemExit, KeyboardInterrupt)):
                raise
            return
        finally:
            self.deadline.cancel()
        if self.state is PENDING:
            self._failed(RuntimeError("ASGI app returned without accepting or refusing the WebSocket handshake"))
        elif self.state is RESPONDING:
            ex.fail(RuntimeError("ASGI app returned without completing its websocket.http.response"))
        elif self.state is ACCEPTED and self.ws is not None:
            self.ws.close(1000)  # the app is done with it (its receive loop ended without a close)

    def _failed(self, exc: BaseException) -> None:
        ex = self.ex
        if isinstance(exc, ClientDisconnected) and (self.disconnected or ex.conn.state_closed):
            return  # the client left: nothing to answer, nobody to tell
        if isinstance(exc, asyncio.CancelledError) and self.state is DONE:
            return  # cut by the server (the handshake timeout, the drain's abort): answered there
        if self.state is PENDING or self.state is RESPONDING:
            self.state = DONE
            self._push_disconnect(1006, "")
            ex.fail(exc)  # 500 if nothing was sent; reported there
            return
        self.loop.call_exception_handler(
            {"message": f"ASGI WebSocket app failed for {self.scope['path']}", "exception": exc}
        )
        ws = self.ws
        if ws is not None and ws.state is OPEN:
            ws.close(1011, "internal error")

    def _http_gone(self, _: Any) -> None:
        if self.state is PENDING and self.ex.conn.state_closed:
            self.state = DONE
            self._push_disconnect(1006, "")

    def _handshake_timed_out(self) -> None:
        if self.state is PENDING and self.task is not None:
            self.task.cancel()
            self.state = DONE
            self.ex.fail(
                RuntimeError(
                    "ASGI app did not answer the WebSocket handshake in "
                    f"{self.request.upgrader.config.handshake_timeout:g}s"
                )
            )

    # -- receive ---------------------------------------------------------------------
    async def receive(self) -> dict[str, Any]:
        if not self.connect_sent:
            self.connect_sent = True
            return {"type": "websocket.connect"}
        if self.disconnect_taken:
            raise ClientDisconnected("ASGI: websocket receive after websocket.disconnect: the connection is closed")
        queue = self.queue
        while not queue:
            self.waiter = w = self.loop.create_future()
            try:
                await w
            finally:
                self.waiter = None
        msg = queue.popleft()
        ws = self.ws
        if ws is not None and ws.read_paused and len(queue) < self.max_queue:
            ws.resume_reading()
        if msg["type"] == "websocket.disconnect":
            self.disconnect_taken = True
        return msg

    def _push(self, msg: dict[str, Any]) -> None:
        self.queue.append(msg)
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _push_disconnect(self, code: int, reason: str) -> None:
        if not self.disconnected:
            self.disconnected = True
            self._push({"type": "websocket.disconnect", "code": code, "reason": reason})

    # -- the WebSocketProtocol's handler -----------------------------------------------
    def on_connect(self, ws: Any) -> None:
        self.ws = ws

    def on_message(self, ws: Any, data: str | bytes) -> None:
        queue = self.queue
        queue.append(
            {"type": "websocket.receive", "text": data}
            if type(data) is str
            else {"type": "websocket.receive", "bytes": data}
        )
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)
        if len(queue) >= self.max_queue:
            ws.pause_reading()  # the app is behind: the peer waits (--ws-max-queue)

    def on_close(self, ws: Any, code: int, reason: str) -> None:
        self._push_disconnect(code, reason)

    def abort(self) -> list[asyncio.Task]:
        """The drain timed out: the app's task is cancelled."""
        task = self.task
        if task is not None and not task.done():
            self.state = DONE
            task.cancel()
            return [task]
        return []

    # -- send ----------------------------------------------------------------------
    def send(self, message: dict[str, Any]) -> Awaitable[None]:
        """ASGI's send; not a coroutine function (see http/asgi.py's): what
        need not wait returns a future already done."""
        kind = message["type"]
        state = self.state
        if state is ACCEPTED:
            ws = self.ws
            if kind == "websocket.send":
                data = message.get("bytes")
                text = message.get("text")
                if data is None:
                    if text is None:
                        raise RuntimeError("ASGI: websocket.send with neither 'text' nor 'bytes'")
                    data = text
                elif text is not None:
                    raise RuntimeError("ASGI: websocket.send with both 'text' and 'bytes' (one of them must be None)")
                if ws.state is not OPEN:
                    raise WebSocketClosed("ASGI: websocket.send after the client closed the WebSocket")
                ws.send(data)
                if ws.write_paused:
                    return ws.drain()  # a peer that does not read holds the app here
                return self.done
            if kind == "websocket.close":
                if ws.state is OPEN:
                    try:
                        ws.close(int(message.get("code") or 1000), message.get("reason") or "")
                    except ValueError as exc:  # a code an endpoint must not send, a reason too long
                        raise RuntimeError(f"ASGI: websocket.close: {exc}") from None
                self.state = DONE
                return self.done
            if kind == "websocket.accept":
                raise RuntimeError("ASGI: websocket.accept sent twice")
            raise RuntimeError(
                f"ASGI: unexpected message type {kind!r} on an open websocket (websocket.send or websocket.close)"
            )
        if state is PENDING:
            return self._answer(kind, message)
        if state is RESPONDING:
            return self._response_body(kind, message)
        raise RuntimeError(
            f"ASGI: {kind} after websocket.close"
            if self.ws is not None or self.response_status == 403
            else f"ASGI: {kind} after the handshake was answered over HTTP"
        )

    send = _mark_async(send)  # an "asynchronous callable" to tools that ask (as http/asgi.py's send)

    def _answer(self, kind: str, message: dict[str, Any]) -> Awaitable[None]:
        ex = self.ex
        if kind == "websocket.accept":
            if ex.conn.state_closed:
                self.state = DONE
                raise ClientDisconnected("the client closed the connection before the WebSocket was accepted")
            headers = message.get("headers") or ()
            self.state = ACCEPTED
            try:
                self.request.open(ex, self, message.get("subprotocol"), headers)
            except RuntimeError as exc:
                self.state = PENDING
                raise RuntimeError(f"ASGI: websocket.accept: {exc}") from None
            self.deadline.cancel()
            return self.done
        if kind == "websocket.close":
            # refused before the accept: 403, as uvicorn answers
            self.state = DONE
            self.response_status = 403
            self.deadline.cancel()
            self._push_disconnect(1006, "")
            ex.start(403, b"", 0)
            ex.end()
            return self.done
        if kind == "websocket.http.response.start":
            status = message.get("status")
            if not isinstance(status, int) or not 100 <= status <= 599:
                raise RuntimeError(f"ASGI: websocket.http.response.start with an invalid status {status!r}")
            framing.status_line(status)
            headers = list(message.get("headers") or ())
            self.response_block = framing.encode_headers(headers, [])
            self.response_status = status
            self.state = RESPONDING
            self.deadline.cancel()
            return self.done
        if kind == "websocket.send":
            raise RuntimeError("ASGI: websocket.send before websocket.accept")
        raise RuntimeError(
            f"ASGI: expected websocket.accept, websocket.close or websocket.http.response.start, got {kind!r}"
        )

    def _response_body(self, kind: str, message: dict[str, Any]) -> Awaitable[None]:
        if kind != "websocket.http.response.body":
            raise RuntimeError(f"ASGI: expected websocket.http.response.body after its start, got {kind!r}")
        ex = self.ex
        body = message.get("body", b"")
        more = message.get("more_body", False)
        if not ex.started:
            ex.start(self.response_status, self.response_block, None if more else len(body), bytes(body))
        elif body:
            Exchange.send(ex, bytes(body))  # the bytes, not ASGI's send(message)
        if not more:
            self.state = DONE
            self._push_disconnect(1006, "")
            ex.end()
            return self.done
        if ex.conn.write_paused:
            return ex.conn.drain()
        return self.done


__all__ = ["websocket_runner", "ASGIWebSocket"]
