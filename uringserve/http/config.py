"""Limits and timeouts of the HTTP server, with nginx-like defaults."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HTTPConfig:
    """Every limit answers with a status and every timeout closes; see the
    README's HTTP section for what each one does to a connection."""

    #: request line + headers, bytes (nginx: large_client_header_buffers 4 8k) -> 431
    max_header_bytes: int = 32 * 1024
    #: header fields per request -> 431
    max_headers: int = 100
    #: request-target length, bytes (nginx: one 8k buffer) -> 414
    max_target_bytes: int = 8 * 1024
    #: request body, bytes (nginx: client_max_body_size 1m) -> 413
    max_body_bytes: int = 1024 * 1024
    #: requests parsed ahead of the one being answered; reading pauses beyond
    max_pipelined: int = 16
    #: request bodies buffered ahead of the handler, bytes; reading pauses beyond
    body_buffer_bytes: int = 256 * 1024
    #: seconds to receive a request head once it began, and the first one on a new connection
    #: (nginx: client_header_timeout 60s) -> 408, close
    header_timeout: float = 60.0
    #: seconds between two reads of a request body (nginx: client_body_timeout 60s) -> 408, close
    body_timeout: float = 60.0
    #: seconds a client may leave our responses unread while we wait to write (nginx: send_timeout 60s) -> abort
    send_timeout: float = 60.0
    #: seconds an idle keep-alive connection stays open (nginx: keepalive_timeout 75s)
    keepalive_timeout: float = 75.0
    #: requests served on one connection before it closes (nginx: keepalive_requests 1000)
    keepalive_requests: int = 1000
    #: seconds a graceful shutdown waits for requests in flight before aborting them
    shutdown_timeout: float = 30.0
    #: the Server header; None leaves it out
    server_header: str | None = "uringserve"
    #: one log line per response (uringserve.access); costs per request, so off by default
    access_log: bool = False
    #: requests in flight per worker (handlers running as tasks) beyond which a request
    #: is answered 503 with Retry-After at once (uvicorn: --limit-concurrency); 0: no limit
    limit_concurrency: int = 0
    #: the Retry-After of those 503s, seconds
    retry_after: int = 1
    #: threads a WSGI app runs on, per worker (gunicorn gthread: --threads); a request beyond waits its turn
    wsgi_threads: int = 10

    def __post_init__(self) -> None:
        for name in (
            "max_header_bytes",
            "max_headers",
            "max_target_bytes",
            "max_pipelined",
            "body_buffer_bytes",
            "keepalive_requests",
            "wsgi_threads",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"HTTPConfig.{name} must be at least 1, got {getattr(self, name)}")
        for name in ("max_body_bytes", "limit_concurrency", "retry_after"):
            if getattr(self, name) < 0:
                raise ValueError(f"HTTPConfig.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("header_timeout", "body_timeout", "send_timeout", "keepalive_timeout", "shutdown_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"HTTPConfig.{name} must be a positive number of seconds, got {getattr(self, name)}")
