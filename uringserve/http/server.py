"""HTTPServer: the native or ASGI front end on a listening socket, with
graceful shutdown; `run()` for a process that serves until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal
import socket
from collections.abc import Callable
from typing import Any

from .asgi import Lifespan, asgi_runner
from .config import HTTPConfig
from .native import native_runner
from .protocol import HTTPProtocol
from .static import FileCache

logger = logging.getLogger("uringserve.http")


def detect_interface(app: Any) -> str:
    """'asgi' for app(scope, receive, send), 'native' for handler(request)."""
    target = app if inspect.isfunction(app) or inspect.ismethod(app) else getattr(app, "__call__", app)  # noqa: B004 (its signature)
    try:
        params = [
            p
            for p in inspect.signature(target).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        raise TypeError(f"cannot tell whether {app!r} is an ASGI app or a handler: pass interface=") from None
    if len(params) == 3:
        return "asgi"
    if len(params) == 1:
        return "native"
    raise TypeError(
        f"{app!r} takes {len(params)} arguments: a native handler takes (request), an ASGI app (scope, receive, send)"
    )


class HTTPServer:
    def __init__(
        self,
        app: Callable[..., Any],
        *,
        interface: str = "auto",
        config: HTTPConfig | None = None,
        lifespan: str = "auto",
        root_path: str = "",
    ) -> None:
        self.app = app
        self.interface = detect_interface(app) if interface == "auto" else interface
        if self.interface not in ("native", "asgi"):
            raise ValueError(f"interface must be 'auto', 'native' or 'asgi', not {interface!r}")
        self.config = config or HTTPConfig()
        self.connections: set[HTTPProtocol] = set()
        self.files = FileCache()  # ASGI http.response.pathsend
        self._lifespan = Lifespan(app, lifespan) if self.interface == "asgi" else None
        self._root_path = root_path
        self._server: asyncio.Server | None = None
        self._runner: Any = None

    async def start(
        self,
        host: str | None = "127.0.0.1",
        port: int = 8000,
        *,
        sock: socket.socket | None = None,
        backlog: int = 1024,
        reuse_port: bool = False,
    ) -> asyncio.Server:
        loop = asyncio.get_running_loop()
        if self._lifespan is not None:
            await self._lifespan.startup()
            self._runner = asgi_runner(self.app, self._lifespan.state, self.files, self._root_path)
        else:
            self._runner = native_runner(self.app)
        if sock is not None:
            self._server = await loop.create_server(self._protocol, sock=sock, backlog=backlog)
        else:
            self._server = await loop.create_server(
                self._protocol, host, port, backlog=backlog, reuse_port=reuse_port or None
            )
        return self._server

    def _protocol(self) -> HTTPProtocol:
        p = HTTPProtocol(self._runner, self.config, self.connections)
        if self._server is not None and self._server.sockets:
            p.server_addr = self._server.sockets[0].getsockname()[:2]
        return p

    @property
    def sockets(self) -> tuple:
        return tuple(self._server.sockets) if self._server is not None else ()

    async def shutdown(self, timeout: float | None = None) -> None:
        """Stop accepting, close idle connections, let requests in flight
        finish (answered with Connection: close) for up to `timeout` seconds
        (config.shutdown_timeout), abort what remains, then lifespan shutdown."""
        timeout = self.config.shutdown_timeout if timeout is None else timeout
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.shutdown()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.connections and loop.time() < deadline:
            await asyncio.sleep(0.01)
        cut: list[asyncio.Task] = []
        for conn in list(self.connections):
            logger.warning("aborting a connection still busy after the %.1fs shutdown timeout", timeout)
            cut += conn.abort()
        if cut:  # their handlers are cancelled: none outlives the server
            await asyncio.gather(*cut, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        if self._lifespan is not None:
            await self._lifespan.shutdown()
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
) -> None:
    """Serve `app` until SIGTERM or SIGINT, then shut down gracefully.
    loop: 'uring' (UringEventLoop) or 'asyncio' (the stdlib loop, for comparison)."""
    server = HTTPServer(app, interface=interface, config=config)

    async def main() -> None:
        await server.start(host, port)
        stop = asyncio.get_running_loop().create_future()

        def on_signal() -> None:
            if not stop.done():
                stop.set_result(None)

        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, on_signal)
        if ready is not None:
            ready(server)
        await stop
        await server.shutdown()
        if on_shutdown is not None:
            on_shutdown()

    if loop == "uring":
        import uringserve

        uringserve.run(main())
    else:
        asyncio.run(main())
