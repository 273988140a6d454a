"""Limits and timeouts of WebSocket connections, with uvicorn's defaults
(its --ws-* options have the same names and values)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WSConfig:
    """What a WebSocket connection may do and how long it may take; the
    README's WebSockets section says what each does to a connection."""

    #: a message (reassembled, inflated), bytes -> close 1009 (uvicorn: --ws-max-size 16 MiB)
    max_size: int = 16 * 1024 * 1024
    #: messages received and not yet taken by an ASGI app; reading pauses beyond (uvicorn: --ws-max-queue 32)
    max_queue: int = 32
    #: seconds between keep-alive pings; 0: none (uvicorn: --ws-ping-interval 20)
    ping_interval: float = 20.0
    #: seconds a ping waits for its pong -> close 1011 (uvicorn: --ws-ping-timeout 20)
    ping_timeout: float = 20.0
    #: RFC 7692 permessage-deflate offered by a client is accepted (uvicorn: --ws-per-message-deflate)
    per_message_deflate: bool = True
    #: seconds an app has to accept or refuse a handshake -> 500 (websockets: open_timeout 10)
    handshake_timeout: float = 10.0
    #: seconds the peer has to answer our close frame (or read what is unsent) before the
    #: connection is cut (websockets: close_timeout 10)
    close_timeout: float = 10.0

    def __post_init__(self) -> None:
        for name in ("max_size", "max_queue"):
            if getattr(self, name) < 1:
                raise ValueError(f"WSConfig.{name} must be at least 1, got {getattr(self, name)}")
        for name in ("ping_interval", "ping_timeout"):
            if getattr(self, name) < 0:
                raise ValueError(f"WSConfig.{name} must be >= 0 seconds, got {getattr(self, name)}")
        for name in ("handshake_timeout", "close_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"WSConfig.{name} must be a positive number of seconds, got {getattr(self, name)}")
