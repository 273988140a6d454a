"""HTTPServer: the native, ASGI or WSGI front end on the server layer
(uringserve.server: listeners, registry, graceful drain, run())."""

from __future__ import annotations

import inspect
import logging
import socket
from collections.abc import Callable
from typing import Any

from ..server import Server
from .asgi import Lifespan, asgi_runner
from .config import HTTPConfig
from .forwarded import ForwardedHTTPProtocol, Forwarding
from .limit import ConcurrencyLimit
from .native import native_runner
from .protocol import HTTPProtocol
from .static import FileCache
from .wsgi import WSGIPool, wsgi_runner

logger = logging.getLogger("uringserve.http")


def detect_interface(app: Any) -> str:
    """'asgi' for app(scope, receive, send), 'wsgi' for app(environ,
    start_response), 'native' for handler(request): told apart by the count
    of positional parameters, which no two of them share."""
    target = app if inspect.isfunction(app) or inspect.ismethod(app) else getattr(app, "__call__", app)  # noqa: B004 (its signature)
    try:
        params = [
            p
            for p in inspect.signature(target).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        raise TypeError(f"cannot tell whether {app!r} is an ASGI or WSGI app or a handler: pass interface=") from None
    if len(params) == 3:
        return "asgi"
    if len(params) == 2:
        return "wsgi"
    if len(params) == 1:
        return "native"
    raise TypeError(
        f"{app!r} takes {len(params)} arguments: a native handler takes (request), a WSGI app (environ, "
        "start_response), an ASGI app (scope, receive, send)"
    )


class HTTPServer(Server):
    """The native or ASGI front end on the server layer: lifespan startup
    before listening, HTTPProtocol per connection, and the layer's drain
    (requests in flight finish, answered with Connection: close; idle
    keep-alive connections close at once) before lifespan shutdown."""

    def __init__(
        self,
        app: Callable[..., Any],
        *,
        interface: str = "auto",
        config: HTTPConfig | None = None,
        lifespan: str = "auto",
        root_path: str = "",
        ssl: Any = None,
        forwarding: Forwarding | None = None,
        multiprocess: bool = False,
        ws: Any = "auto",
    ) -> None:
        """`multiprocess`: what a WSGI app's environ says (wsgi.multiprocess:
        served by several workers). `ws`: "auto" (WebSockets with WSConfig's
        defaults), a uringserve.ws.WSConfig, or "none"/None: an upgrade
        request is plain HTTP to the app (uvicorn's --ws none); a WSGI app
        has none."""
        self.config = config or HTTPConfig()
        # --proxy-headers: the client, scheme and server as trusted proxies say (http/forwarded.py)
        self.forwarding = forwarding
        super().__init__(shutdown_timeout=self.config.shutdown_timeout, ssl=ssl)
        self.app = app
        self.interface = detect_interface(app) if interface == "auto" else interface
        if self.interface not in ("native", "asgi", "wsgi"):
            raise ValueError(f"interface must be 'auto', 'native', 'asgi' or 'wsgi', not {interface!r}")
        self.files = FileCache()  # ASGI http.response.pathsend
        self._lifespan = Lifespan(app, lifespan) if self.interface == "asgi" else None
        self._root_path = root_path
        self._runner: Any = None
        self._addrs: dict[socket.socket, Any] = {}  # listener -> the ASGI scope's "server"
        self.observer: Any = None  # called once per response (metrics); see http/access.py
        # --limit-concurrency's count and its 503s (the metrics read `refused`), once started
        self.concurrency: ConcurrencyLimit | None = None
        self._multiprocess = multiprocess
        self.wsgi_pool: WSGIPool | None = None  # the WSGI app's threads, once started
        # WebSockets: HTTPProtocol's ws_upgrade hook, and what the metrics read (ws_stats)
        self.ws_upgrade: Any = None
        self.ws_config: Any = None  # the WSConfig, unless WebSockets are off
        self.ws_stats: Any = None
        if ws not in (None, "none") and self.interface != "wsgi":
            from ..ws.config import WSConfig
            from ..ws.upgrade import Upgrader

            if ws == "auto":
                ws = WSConfig()
            elif not isinstance(ws, WSConfig):
                raise ValueError(f"ws must be 'auto', 'none' or a WSConfig, not {ws!r}")
            self.ws_config = ws
            self.ws_upgrade = Upgrader(ws)
            self.ws_stats = self.ws_upgrade.stats

    async def on_start(self) -> None:
        cfg = self.config
        if cfg.limit_concurrency:
            self.concurrency = ConcurrencyLimit(cfg.limit_concurrency, cfg.retry_after)
        if self._lifespan is not None:
            await self._lifespan.startup()
            websocket = None
            if self.ws_upgrade is not None:
                from ..ws.asgi import websocket_runner

                websocket = websocket_runner(self.app, self._lifespan.state, self._root_path)
            self._runner = asgi_runner(
                self.app, self._lifespan.state, self.files, self._root_path, self.concurrency, websocket
            )
        elif self.interface == "wsgi":
            self.wsgi_pool = WSGIPool(cfg.wsgi_threads)
            self._runner = wsgi_runner(self.app, self.wsgi_pool, self._root_path, self._multiprocess, self.concurrency)
        else:
            self._runner = native_runner(self.app, self.concurrency)

    def make_protocol(self, sock: socket.socket) -> HTTPProtocol:
        p: HTTPProtocol
        if self.forwarding is not None:
            p = ForwardedHTTPProtocol(self._runner, self.config, self.forwarding, observer=self.observer)
        else:
            p = HTTPProtocol(self._runner, self.config, observer=self.observer)
        if self.ssl is not None:
            p.scheme = "https"
        if self.ws_upgrade is not None:
            p.ws_upgrade = self.ws_upgrade
        addr = self._addrs.get(sock)
        if addr is None:
            name = sock.getsockname()
            self._addrs[sock] = addr = name[:2] if isinstance(name, tuple) else (name, None)
        p.server_addr = addr
        return p

    async def on_stop(self) -> None:
        if self._lifespan is not None:
            await self._lifespan.shutdown()
        if self.wsgi_pool is not None:
            # threads the drain could not wait for: named, and left behind (daemons)
            for name, what in self.wsgi_pool.running():
                logger.warning("WSGI thread %s still running %s at exit; the worker exits without it", name, what)
            self.wsgi_pool.close()
        self.files.close()


def run(
    app: Callable[..., Any],
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    interface: str = "auto",
    config: HTTPConfig | None = None,
    loop: str = "uring",
    ready: Callable[[HTTPServer], None] | None = None,
    on_shutdown: Callable[[], None] | None = None,
    **listen: Any,
) -> None:
    """Serve `app` until SIGTERM or SIGINT, then shut down gracefully.
    loop: 'uring' (UringEventLoop), 'asyncio' (the stdlib loop) or 'uvloop';
    `listen`: Server.start()'s keywords (uds=, sock=, listeners=, ...)."""
    server = HTTPServer(app, interface=interface, config=config)
    server.run(host, port, loop=loop, ready=ready, **listen)  # type: ignore[arg-type]  # ready takes the HTTPServer it is given
    if on_shutdown is not None:
        on_shutdown()
