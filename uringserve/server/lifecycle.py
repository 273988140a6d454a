"""Server: listeners, the connection registry and one graceful-drain
contract for every protocol; `run()` for a process that serves until
SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import ssl as ssl_module
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .. import heap
from .connection import Connections, served
from .listeners import TCP, Inherited, Listener, Unix
from .proxy_protocol import ProxyProtocol

if TYPE_CHECKING:
    from ..tls import CoreTLS

logger = logging.getLogger("uringserve.server")

LOOPS = ("uring", "asyncio", "uvloop")
# SIGTERM/SIGINT drain; SIGQUIT stops at once (what remains is aborted)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)


class StartupError(Exception):
    """A server that cannot start for a reason its user fixes (an app's
    startup refused, a setting that does not work here): run_command()
    prints the message as one line and exits 1, no traceback."""


class StoppedBeforeServing(StartupError):
    """A stop signal came while the server was starting (its app's startup
    may never end): start() was cancelled, what it opened is closed."""


def new_loop(kind: str = "uring", ring_config: Any = None) -> asyncio.AbstractEventLoop:
    """'uring' (UringEventLoop), 'asyncio' (the stdlib loop) or 'uvloop'."""
    if kind == "uring":
        from .. import faults
        from ..loop import UringEventLoop

        # tests only: the one place a server process takes a fault plan from
        # its environment (URINGSERVE_FAULTS), so a whole server runs under it
        return UringEventLoop(ring_config, faults=faults.from_env())
    if ring_config is not None:
        raise ValueError(f"ring_config applies to the uring loop only, not {kind!r}")
    if kind == "asyncio":
        return asyncio.new_event_loop()
    if kind == "uvloop":
        try:
            import uvloop
        except ImportError:
            raise RuntimeError("loop 'uvloop' needs the uvloop package: pip install uvloop") from None
        return uvloop.new_event_loop()
    raise ValueError(f"loop must be one of {', '.join(LOOPS)}, not {kind!r}")


class Server:
    """Serves `protocol_factory()` on every listener given to start().

    Drain contract (shutdown()): stop accepting; call each connection's
    shutdown() hook, which lets one with work in flight finish it and close
    and closes an idle one (HTTP's after a short grace: its next request may
    be on its way; the default hook at once); when `timeout` passes, abort()
    what is left and wait for the tasks it cancels. Subclasses hook in with
    on_start() (before listening) and on_stop() (after the last connection).
    """

    def __init__(
        self,
        protocol_factory: Callable[[], Any] | None = None,
        *,
        shutdown_timeout: float = 30.0,
        ssl: ssl_module.SSLContext | CoreTLS | None = None,
        max_connections: int | None = None,
    ) -> None:
        self._factory = protocol_factory
        # open connections at which accepting pauses (the rest wait in the
        # listen backlog); the uring loop's, counted in its ring
        self.max_connections = max_connections
        # TLS on every listener: a tls.CoreTLS is served by the core on UringEventLoop
        # (its stdlib context elsewhere); an ssl.SSLContext by asyncio's SSLProtocol
        self.ssl = ssl
        if not shutdown_timeout > 0:
            raise ValueError(f"shutdown_timeout must be a positive number of seconds, got {shutdown_timeout}")
        self.shutdown_timeout = shutdown_timeout
        self.connections = Connections()
        self._specs: list[Listener] = []
        self._bound: list[tuple[Listener, socket.socket]] = []
        self._servers: list[asyncio.AbstractServer] = []
        self._stopped: asyncio.Event | None = None
        self._cut: asyncio.Event | None = None
        self._cut_by = ""  # what cut the drain short (cut()'s reason)
        # connections with work in flight that the last shutdown aborted:
        # run_command() exits non-zero when there were any
        self.aborted = 0
        # the first stop signal run() took (None: none; a shutdown begun
        # otherwise, e.g. by --max-requests, is not a signal's)
        self.signalled: str | None = None
        self._state = "new"  # new -> serving -> draining -> stopped

    #: a proxy_protocol.ProxyProtocol: every connection begins with a PROXY header (--proxy-protocol)
    proxy_protocol: ProxyProtocol | None = None

    def make_protocol(self, sock: socket.socket) -> Any:
        """The protocol for a connection accepted on `sock`: protocol_factory()
        (a subclass may override this and use the listener)."""
        if self._factory is None:
            raise TypeError("Server needs a protocol_factory, or a subclass that overrides make_protocol()")
        return self._factory()

    async def on_start(self) -> None:
        """Before the first listener opens (an app's startup)."""

    async def on_stop(self) -> None:
        """After the last connection ended (an app's shutdown)."""

    # -- lifecycle ----------------------------------------------------------------
    async def start(
        self,
        host: str | None = "127.0.0.1",
        port: int = 8000,
        *,
        listeners: Sequence[Listener] = (),
        sock: socket.socket | int | None = None,
        uds: str | None = None,
        uds_mode: int | None = None,
        backlog: int = 1024,
        reuse_port: bool = False,
    ) -> None:
        """Open the listeners and accept. TCP on host:port, unless `sock` (a
        bound socket or an inherited fd), `uds` (a Unix socket path, "@name"
        for an abstract one) or `listeners` (any number of TCP/Unix/Inherited)
        say where instead; to add TCP beside them, put a TCP in `listeners`."""
        if self._state != "new":
            raise RuntimeError(f"the server was already started (it is {self._state})")
        specs: list[Listener] = list(listeners)
        if sock is not None:
            specs.append(Inherited(sock, backlog=backlog))
        if uds is not None:
            specs.append(Unix(uds, mode=uds_mode, backlog=backlog))
        elif uds_mode is not None:
            raise ValueError("uds_mode applies to a Unix socket: pass uds= too")
        if not specs:
            specs.append(TCP(host, port, backlog=backlog, reuse_port=reuse_port))
        if self.proxy_protocol is not None and self.ssl is not None:
            # asyncio's server TLS reads the handshake before any protocol of ours could read the header
            raise ValueError("the PROXY protocol with TLS is not supported: terminate TLS at the proxy")
        heap.keep_heap_top()  # large received bytes objects, freed and made again (heap.py)
        loop = asyncio.get_running_loop()
        if self.max_connections is not None:
            self._limit_connections(loop, self.max_connections)
        self._stopped = asyncio.Event()
        self._cut = asyncio.Event()
        self._state = "serving"
        started = False
        try:
            await self.on_start()
            started = True
            for spec in specs:
                socks = spec.open()
                self._specs.append(spec)
                for i, sock in enumerate(socks):
                    try:
                        srv = await loop.create_server(
                            self._factory_for(sock), sock=sock, backlog=spec.backlog, ssl=_tls_for(loop, self.ssl)
                        )
                    except BaseException:
                        for s in socks[i:]:
                            s.close()
                        raise
                    self._servers.append(srv)
                    self._bound.append((spec, sock))
        except BaseException:
            await self._close_listeners()
            try:
                if started:
                    await self.on_stop()
            finally:
                self._state = "stopped"
                self._stopped.set()
            raise
        for spec, sock in self._bound:
            logger.info("listening on %s", spec.describe(sock))

    @staticmethod
    def _limit_connections(loop: asyncio.AbstractEventLoop, limit: int) -> None:
        if not isinstance(limit, int) or limit < 1:
            raise ValueError(f"max_connections must be a positive number of connections, got {limit!r}")
        set_limit = getattr(loop, "set_connection_limit", None)
        if set_limit is None:
            # asyncio's and uvloop's servers have no public way to pause accepting
            raise ValueError(
                f"max_connections needs the uring loop (this is {type(loop).__name__}, which cannot pause accepting)"
            )
        set_limit(limit)

    def _factory_for(self, sock: socket.socket) -> Callable[[], Any]:
        registry = self.connections
        proxy = self.proxy_protocol
        if proxy is not None:  # each connection's PROXY header is read first
            name = sock.getsockname()

            def proxied() -> Any:
                return served(proxy.reader(served(self.make_protocol(sock), registry), name), registry)

            return proxied

        def factory() -> Any:
            return served(self.make_protocol(sock), registry)

        return factory

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return tuple(s for srv in self._servers for s in getattr(srv, "sockets", ()))

    def requests_served(self) -> int:
        """Requests answered so far (connections, for a protocol that does not count requests)."""
        return self.connections.finished_requests + sum(c.requests_served() for c in self.connections)

    @property
    def serving(self) -> bool:
        return self._state == "serving"

    async def serve_forever(self) -> None:
        """Until shutdown() has finished; cancelled, it shuts down first."""
        if self._stopped is None:
            raise RuntimeError("start() the server first")
        try:
            await self._stopped.wait()
        except asyncio.CancelledError:
            await asyncio.shield(self.shutdown())
            raise

    async def shutdown(self, timeout: float | None = None) -> None:
        """Drain (see the class) for at most `timeout` seconds (shutdown_timeout)."""
        if self._stopped is None:
            return
        if self._state != "serving":
            await self._stopped.wait()
            return
        self._state = "draining"
        timeout = self.shutdown_timeout if timeout is None else timeout
        conns = self.connections
        servers = self._stop_listening()
        told = set(conns)
        for conn in told:
            conn.shutdown()
        # One loop turn: connections the kernel accepted as the listeners
        # stopped (on UringEventLoop: late accepts, reaped by the stop) join
        # the registry; they drain too, before the registry is counted.
        await asyncio.sleep(0)
        for conn in conns:
            if conn not in told:
                conn.shutdown()
        if len(conns):
            assert self._cut is not None
            waits = [asyncio.ensure_future(conns.wait_empty()), asyncio.ensure_future(self._cut.wait())]
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            for w in waits:
                w.cancel()
        cut: list[asyncio.Task] = []
        if len(conns):
            self.aborted = len(conns)
            why = self._cut_by or f"the {timeout:g}s shutdown timeout passed"
            logger.warning("%s: aborting %d connection(s) with work in flight", why, len(conns))
            for conn in conns:
                cut += conn.abort()
        if cut:  # their handlers are cancelled: none outlives the server
            await asyncio.gather(*cut, return_exceptions=True)
        for srv in servers:
            await srv.wait_closed()
        try:
            await self.on_stop()
        finally:
            self._state = "stopped"
            self._stopped.set()

    def cut(self, reason: str = "the drain was cut short") -> None:
        """End a shutdown in progress now: what is still draining is aborted
        (`reason`, e.g. "a second SIGTERM", is what the abort is logged with)."""
        if self._cut is not None and not self._cut.is_set():
            self._cut_by = reason
            self._cut.set()

    def _stop_listening(self) -> list[asyncio.AbstractServer]:
        # closed, not yet awaited: from 3.12 wait_closed() waits for the connections too
        servers, self._servers = self._servers, []
        for srv in servers:
            srv.close()
        for spec in self._specs:
            spec.close()
        return servers

    async def _close_listeners(self) -> None:
        for srv in self._stop_listening():
            await srv.wait_closed()

    # -- a process that serves ------------------------------------------------------
    def run(
        self,
        host: str | None = "127.0.0.1",
        port: int = 8000,
        *,
        loop: str = "uring",
        ring_config: Any = None,
        ready: Callable[[Server], None] | None = None,
        **listen: Any,
    ) -> None:
        """start() with these arguments (`listen`: start()'s keywords), serve
        until SIGTERM or SIGINT, then drain. A second signal during the drain
        cuts it short; SIGQUIT stops at once. A stop signal while starting
        (an app's startup that never ends) cancels start() and raises
        StoppedBeforeServing. `ready(server)` is called once listening. What
        the drain had to abort is `self.aborted`."""

        async def main() -> None:
            running = asyncio.get_running_loop()
            main_task = asyncio.current_task()
            assert main_task is not None
            signals = 0
            started = False
            early: list[str] = []  # stop signals that came while starting
            tasks: set[asyncio.Task] = set()

            def on_signal(signum: int) -> None:
                nonlocal signals
                name = signal.Signals(signum).name
                if not started:
                    # start() may wait on anything (an app's lifespan startup that
                    # hangs): a stop signal cancels it, and start() closes what it
                    # opened. A second one cancels that cleanup too.
                    early.append(name)
                    main_task.cancel()
                    return
                signals += 1
                if self.signalled is None:
                    self.signalled = name
                if signum == signal.SIGQUIT:  # immediate stop, as gunicorn's workers take it
                    logger.info("SIGQUIT: stopping now")
                    self.cut("SIGQUIT")
                    task = running.create_task(self.shutdown(0))
                elif signals == 1:
                    logger.info("%s: draining (a second signal cuts it short)", name)
                    task = running.create_task(self.shutdown())
                else:
                    self.cut(f"a second stop signal ({name}) cut the drain")
                    return
                tasks.add(task)
                task.add_done_callback(tasks.discard)

            # before the listeners open: a process that listens always drains
            # on SIGTERM, never dies of it with a connection just accepted
            for sig in STOP_SIGNALS:
                running.add_signal_handler(sig, on_signal, sig)
            try:
                try:
                    await self.start(host, port, **listen)
                except asyncio.CancelledError:
                    if not early:
                        raise
                    self.signalled = early[0]
                    raise StoppedBeforeServing(f"{early[0]} during startup: stopped before serving") from None
                # nothing ran between start()'s last step and here: a signal
                # that came meanwhile cancelled start() instead (above)
                started = True
                if ready is not None and self.serving:
                    ready(self)
                await self.serve_forever()
            finally:
                for sig in STOP_SIGNALS:
                    running.remove_signal_handler(sig)

        with asyncio.Runner(loop_factory=lambda: new_loop(loop, ring_config)) as runner:
            runner.run(main())


def run_command(
    server: Server,
    name: str,
    host: str | None = "127.0.0.1",
    port: int = 8000,
    *,
    loop: str = "uring",
    ring_config: Any = None,
    on_ready: Callable[[Server], None] | None = None,
    quiet: bool = False,
    note: str = "",
    **listen: Any,
) -> int:
    """A server as a command: run() until SIGTERM/SIGINT, printing
    "NAME on WHERE (LOOP loop, pid N)" once it listens (unless `quiet`: a
    worker, whose supervisor says it) and calling `on_ready`; a listener
    that cannot open is one line on stderr and exit status 1, not a
    traceback. So is a stop signal before it listens ("SIGTERM during
    startup: stopped before serving"). The exit status is 1 too when the
    drain aborted work in flight (a second signal, SIGQUIT or the shutdown
    timeout cut it).
    `note` ends the banner's parenthesis (e.g. where the metrics are)."""
    from .. import logs

    def ready(s: Server) -> None:
        if not quiet:
            where = [spec.describe(sock) for spec, sock in s._bound]
            logs.banner(
                f"{name} on {', '.join(where)} ({loop} loop, pid {os.getpid()}{', ' + note if note else ''})",
                listeners=where,
                loop=loop,
                pid=os.getpid(),
            )
        if on_ready is not None:
            on_ready(s)

    try:
        server.run(host, port, loop=loop, ring_config=ring_config, ready=ready, **listen)
    except (OSError, StartupError) as exc:  # the message names the listener (or the app) and the reason
        logs.error(f"{name}: {exc}")
        return 1
    return 1 if server.aborted else 0


def _tls_for(loop: asyncio.AbstractEventLoop, tls: Any) -> Any:
    """What create_server() takes for `tls`: a CoreTLS only where the core serves it."""
    from ..loop import UringEventLoop
    from ..tls import CoreTLS

    if isinstance(tls, CoreTLS) and not isinstance(loop, UringEventLoop):
        return tls.context
    return tls
