"""WebSockets (RFC 6455, RFC 7692 permessage-deflate) on the HTTP server:
the upgrade from HTTP/1.1, ASGI's websocket scope, and the native
callback API (ws/native.py). See docs/handlers.md and the README's
WebSockets section."""

from .config import WSConfig
from .native import Accept, WebSocketHandler, accept
from .protocol import WebSocketClosed, WebSocketProtocol, WSStats

WebSocket = WebSocketProtocol  # what handlers are given: the connection

__all__ = [
    "WSConfig",
    "WebSocketHandler",
    "WebSocket",
    "WebSocketProtocol",
    "WebSocketClosed",
    "WSStats",
    "accept",
    "Accept",
]
