"""The native WebSocket API: callbacks, as picows' and asyncio's protocols
are, so a message costs one call into the app and a send one write.

    class Echo(uringserve.ws.WebSocketHandler):
        def on_message(self, ws, data):
            ws.send(data)

    def app(request):  # the native HTTP handler
        if request.raw_path == b"/ws":
            return uringserve.ws.accept(Echo)
        return Response(b"hello")

A handler returns accept(handler, subprotocol=None, headers=()) for a
WebSocket handshake request (request.ws is not None: checked already; a
bad one was answered 400/426 before the handler ran) to answer it 101;
any Response refuses it (the client sees that response). `handler` is a
WebSocketHandler class (one instance per connection) or an instance
(shared by the connections it is given to). `ws` is the connection
(ws/protocol.py's WebSocketProtocol): ws.send(str | bytes) queues one
message at once (text for str); ws.write_paused and `await ws.drain()`
for a sender that may outrun its peer; ws.close(code, reason);
ws.ping(); ws.pause_reading()/ws.resume_reading(); ws.subprotocol,
ws.client. Callbacks run on the event loop: one that must wait starts a
task.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class WebSocketHandler:
    """Override what you need; each is called on the event loop."""

    def on_connect(self, ws: Any) -> None:
        """The 101 is out: the connection is open."""

    def on_message(self, ws: Any, data: str | bytes) -> None:
        """A whole message: str for text, bytes for binary."""

    def on_close(self, ws: Any, code: int, reason: str) -> None:
        """Once, when the connection closed or began to: the code of the close
        handshake (the peer's, or ours when we began it; 1006 when the TCP
        connection ended without one)."""


class Accept:
    """What a native handler returns to accept a WebSocket handshake
    (made by accept()); the HTTP front end calls take_over()."""

    __slots__ = ("handler", "subprotocol", "headers")

    def __init__(self, handler: Any, subprotocol: str | None, headers: Sequence[tuple[bytes, bytes]]) -> None:
        self.handler = handler
        self.subprotocol = subprotocol
        self.headers = headers

    def take_over(self, ex: Any) -> None:
        req = ex.ws
        if req is None:
            raise TypeError(
                f"uringserve.ws.accept() answers a WebSocket handshake request; {ex.method} "
                f"{ex.target.decode('latin-1')} is not one (or the server runs with --ws none)"
            )
        handler = self.handler
        if isinstance(handler, type):
            handler = handler()
        req.open(ex, handler, self.subprotocol, self.headers)


def accept(handler: Any, subprotocol: str | None = None, headers: Sequence[tuple[bytes, bytes]] = ()) -> Accept:
    """The native handler's answer accepting a WebSocket handshake: 101 with
    `subprotocol` (one the client offered: request.ws.subprotocols) and the
    extra `headers`, then `handler` (a WebSocketHandler class or instance)
    serves the connection."""
    return Accept(handler, subprotocol, headers)


__all__ = ["WebSocketHandler", "Accept", "accept"]
