"""The hand-off from HTTP: an upgrade request to websocket is checked
(handshake.py: the one place for its rules), refused with 400/426, or
given to the app's front end (native handler or ASGI) with its
`WSRequest`; the app's accept opens the WebSocket (the 101, then
HTTPProtocol.switch_protocol hands the transport to a WebSocketProtocol).

HTTPProtocol calls `Upgrader(conn, ex)` for a request with an Upgrade
header, in its turn (requests pipelined before it are answered first):
never on the one-frame path, whose recogniser declines such heads."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..http import access
from . import deflate as _deflate
from . import handshake
from .config import WSConfig
from .handshake import HandshakeError
from .protocol import WebSocketProtocol, WSStats


class WSRequest:
    """A valid WebSocket handshake, waiting for the app's answer (the
    exchange's `ws`). open() accepts it; the front ends refuse it with an
    HTTP response through the exchange, as any response."""

    __slots__ = ("handshake", "extension", "deflate", "upgrader", "opened")

    def __init__(self, hs: Any, extension: str | None, deflate: Any, upgrader: Upgrader) -> None:
        self.handshake = hs
        self.extension = extension  # the Sec-WebSocket-Extensions answer, or None
        self.deflate = deflate
        self.upgrader = upgrader
        self.opened = False

    @property
    def subprotocols(self) -> list[str]:
        """What the client offered (Sec-WebSocket-Protocol), in its order."""
        return list(self.handshake.subprotocols)

    def open(
        self,
        ex: Any,
        handler: Any,
        subprotocol: str | None = None,
        headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> WebSocketProtocol:
        """Answer 101 and hand the connection to a WebSocketProtocol serving
        `handler`. RuntimeError for a subprotocol the client did not offer
        (RFC 6455 §4.2.2: the client would fail the connection) or headers
        that are not (bytes, bytes)."""
        if self.opened:
            raise RuntimeError("the WebSocket handshake was already accepted")
        if subprotocol is not None and subprotocol not in self.handshake.subprotocols:
            offered = ", ".join(self.handshake.subprotocols) or "none"
            raise RuntimeError(f"subprotocol {subprotocol!r} was not offered by the client (offered: {offered})")
        extra = []
        for pair in headers:
            name, value = pair
            if not isinstance(name, bytes) or not isinstance(value, bytes):
                raise RuntimeError(f"a response header is a (bytes, bytes) pair, not {pair!r}")
            if b"\r" in name or b"\n" in name or b"\r" in value or b"\n" in value:
                raise RuntimeError(f"response header {name!r} has a line break in it")
            extra.append((name, value))
        conn = ex.conn
        head = handshake.response_101(self.handshake.key, subprotocol, self.extension, extra)
        up = self.upgrader
        log = access.log if conn.config.access_log else None
        proto = WebSocketProtocol(
            up.config,
            handler,
            self.deflate,
            up.stats,
            subprotocol,
            (conn.client, ex.method, ex.target, ex.version),
            log,
            conn.requests_served(),
        )
        self.opened = True
        conn.switch_protocol(ex, proto, head)
        return proto


class Upgrader:
    """HTTPProtocol's `ws_upgrade` hook for one server: `config`, the
    server's WSStats, and `run(conn, ex)`, which gives a checked handshake
    to the front end (the runner: the native handler answers with
    uringserve.ws.accept(), the ASGI app gets a websocket scope)."""

    def __init__(self, config: WSConfig, stats: WSStats | None = None) -> None:
        self.config = config
        self.stats = stats if stats is not None else WSStats()

    def __call__(self, conn: Any, ex: Any) -> bool:
        """True when `ex` is a WebSocket upgrade (now this hook's to
        answer); False for any other Upgrade (h2c...), which is plain HTTP."""
        if not handshake.is_upgrade(ex.method, ex.raw_headers):
            return False
        # after this read is parsed: the bytes after the head (the parser's
        # upgrade_rest) are then all known, and belong to the WebSocket
        conn.loop.call_soon(self._begin, conn, ex)
        return True

    def _begin(self, conn: Any, ex: Any) -> None:
        if conn.state_closed:
            return
        try:
            self._check(conn, ex)
        except BaseException as exc:  # our own failure: 500, as a runner's
            if isinstance(exc, (SystemExit, KeyboardInterrupt)):
                raise
            ex.fail(exc)

    def _check(self, conn: Any, ex: Any) -> None:
        try:
            if ex.has_body:
                raise HandshakeError(400, "a WebSocket handshake request has no body")
            hs = handshake.check(ex.method, ex.version, ex.raw_headers)
            extension, deflate = _deflate.negotiate(hs.extensions, self.config.per_message_deflate)
        except HandshakeError as err:
            refuse(ex, err)
            return
        ex.ws = WSRequest(hs, extension, deflate, self)
        conn.run_app(ex)


def refuse(ex: Any, err: HandshakeError) -> None:
    """The handshake's refusal (400 naming the fault, 426 with the version),
    written whole; the connection closes after it, as after any upgrade
    request's HTTP answer."""
    name = ex.conn.config.server_header
    data = handshake.refusal(err, name.encode("latin-1") if name else None)
    raw_response(ex, err.status, data)


def raw_response(ex: Any, status: int, data: bytes) -> None:
    """A whole response made elsewhere (`data`, head and body), as the
    exchange's: logged, then the connection closes."""
    conn = ex.conn
    ex.keep_alive = False
    log: Callable[[int, int], None] | None = getattr(ex, "log_response", None)  # access.observed()'s
    if log is not None:
        log(status, len(data.partition(b"\r\n\r\n")[2]))
    ex.started = ex.finished = True
    ex.status = status
    conn.write(data)
    conn.response_done(ex)


__all__ = ["Upgrader", "WSRequest", "refuse"]
