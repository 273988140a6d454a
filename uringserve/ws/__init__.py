"""uringserve.ws: WebSockets (RFC 6455, RFC 7692 permessage-deflate) on the
server layer. frames/deflate/handshake are the sans-I/O codec; the upgrade
from HTTP/1.1 (upgrade.py), the connection (protocol.py), ASGI's websocket
scope (asgi.py) and the native callback API (native.py) build on them. See
docs/handlers.md and the README's WebSockets section."""

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
