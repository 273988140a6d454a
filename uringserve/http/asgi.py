"""ASGI 3 over HTTPProtocol: the `http` scope and `lifespan`, with the
extensions (asgiref's docs/extensions.rst) `http.response.pathsend` and
`http.response.zerocopysend` (files sent through the ring's file path),
`http.response.early_hint` (103) and `http.response.trailers`."""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import ssl
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

from ..server.lifecycle import StartupError
from . import framing
from .appfile import AppFile
from .body import ClientDisconnected
from .limit import ConcurrencyLimit
from .parser import HeaderBlock, HTTPError
from .protocol import Exchange, Runner
from .state import CLOSED

logger = logging.getLogger("uringserve.http")

_ASGI = {"version": "3.0", "spec_version": "2.4"}
# Advertised on every request, trailers included: the spec has the app
# send them regardless and the server send them only to a client whose
# request said `TE: trailers` (the others never see them: see _trailers()).
_EXTENSIONS: dict[str, Any] = {
    "http.response.pathsend": {},
    "http.response.zerocopysend": {},
    "http.response.early_hint": {},
    "http.response.trailers": {},
}
_TLS_VERSIONS = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}


def tls_extension(conn: Any) -> dict[str, Any] | None:
    """ASGI's `tls` extension for a connection served over TLS (the
    client's certificate chain for mTLS), None for one that is not (`https`
    from --proxy-headers alone). The http and websocket scopes both carry
    it; made once per connection."""
    obj = conn.transport.get_extra_info("ssl_object") if conn.transport is not None else None
    if obj is None:
        return None
    from .. import tls

    chain = tls.peer_chain_der(obj)
    server = tls.server_cert_der(obj)
    return {
        "server_cert": ssl.DER_cert_to_PEM_cert(server) if server else None,
        # every certificate the client sent, its own first, PEM
        "client_cert_chain": [ssl.DER_cert_to_PEM_cert(der) for der in chain],
        "client_cert_name": _rfc4514(obj.getpeercert()) if chain else None,
        "client_cert_error": None,  # a certificate that fails verification fails the handshake
        "tls_version": _TLS_VERSIONS.get(obj.version() or ""),
        "cipher_suite": tls.cipher_id(obj),
    }


def _tls_extensions(conn: Any) -> dict[str, Any]:
    """The http scope's extensions on a connection whose scheme is not
    "http": _EXTENSIONS, and over TLS the `tls` extension, made once per
    connection (the handshake is over when a request arrives)."""
    ext = conn.asgi_extensions
    if ext is None:
        tls = tls_extension(conn)
        ext = _EXTENSIONS if tls is None else {**_EXTENSIONS, "tls": tls}
        conn.asgi_extensions = ext
    return ext


def _rfc4514(cert: dict[str, Any] | None) -> str | None:
    """The subject of a decoded certificate as RFC 4514 writes it (the last RDN first)."""
    if not cert or not cert.get("subject"):
        return None
    rdns = ("+".join(f"{_RDN_KEYS.get(k, k)}={_rdn_escape(v)}" for k, v in rdn) for rdn in cert["subject"])
    return ",".join(reversed(list(rdns)))


def _rdn_escape(value: str) -> str:
    for ch in '\\,+"<>;=':
        value = value.replace(ch, "\\" + ch)
    return value


_RDN_KEYS = {"commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU", "countryName": "C",
             "localityName": "L", "stateOrProvinceName": "ST", "emailAddress": "emailAddress"}  # fmt: skip
# where a response that announced trailers (`trailers: True`) is
TRAILERS_PROMISED, TRAILERS_DUE, TRAILERS_SENT = 1, 2, 3
_dropped_said = False  # trailers dropped for a client that did not ask: logged once per process


def _mark_async(func: Callable[..., Any]) -> Callable[..., Any]:
    if hasattr(inspect, "markcoroutinefunction"):  # 3.12+
        return inspect.markcoroutinefunction(func)
    func._is_coroutine = asyncio.coroutines._is_coroutine  # type: ignore[attr-defined]  # what 3.11 reads
    return func


class ASGIExchange(Exchange):
    """An exchange with the ASGI `receive` and `send` of its request."""

    files: Any = None  # the runner's FileCache (a subclass per runner sets it)
    asgi_status = 0
    asgi_block: bytes | None = None  # the encoded header block, once http.response.start came
    asgi_length: int | None = None
    disc: asyncio.Future | None = None
    body_sent_end = False
    # http.response.trailers: 0, or where the response that promised them is;
    # and whether this client gets them (else they are dropped)
    asgi_trailers = 0
    trailers_out = False
    trailer_block = b""

    async def receive(self) -> dict[str, Any]:
        body = self.body_in
        conn = self.conn
        if not self.body_sent_end and conn.state is not CLOSED:
            try:
                data = await body.next_chunk()
            except ClientDisconnected:
                return {"type": "http.disconnect"}
            more = bool(data) and not (body.done and not body.buffered)
            if not more:
                self.body_sent_end = True
            return {"type": "http.request", "body": data, "more_body": more}
        # nothing more to read: the next message is the disconnect, once the
        # response is complete or the client is gone
        if not self.finished and conn.state is not CLOSED:
            self.disc = conn.disconnect_waiter()
            await self.disc
        return {"type": "http.disconnect"}

    def send(self, message: dict[str, Any]) -> Awaitable[None]:  # type: ignore[override]  # ASGI's, not bytes
        """ASGI's send. Not a coroutine function: what needs no waiting (almost
        every message) is done before it returns, and the awaitable returned is
        an already-completed future, which costs no coroutine frame per message.
        What must wait (drain, a file the transport cannot queue) returns a
        coroutine."""
        conn = self.conn
        kind = message["type"]
        if conn.state is CLOSED:
            if kind == "http.response.body" or kind == "http.response.pathsend" or kind == _ZEROCOPY:
                raise ClientDisconnected("the client closed the connection")
            return conn.completed
        if kind == "http.response.body":
            data = message.get("body", b"")
            more = message.get("more_body", False)
            if not self.started:
                block = self.asgi_block
                if block is None:
                    raise RuntimeError("ASGI: http.response.body before http.response.start")
                length = self.asgi_length
                if not more and (length is None or length == len(data)) and not self.trailers_out:
                    # a whole response: one write
                    head, data = framing.whole_head(
                        self.asgi_status, block, data if type(data) is bytes else bytes(data)
                    )
                    conn.respond_whole(self, self.asgi_status, head, data)
                    return conn.completed
                self.start(self.asgi_status, block, length, bytes(data))
            elif self.finished or self.asgi_trailers > TRAILERS_PROMISED:
                raise RuntimeError("ASGI: the response body is already complete")
            elif data:
                Exchange.send(self, bytes(data))
            if not more:
                if self.asgi_trailers:
                    return self._body_ended()
                self.end()
            elif conn.write_paused:
                return conn.drain()
            return conn.completed
        if kind == "http.response.start":
            if self.asgi_block is not None or self.started:
                raise RuntimeError("ASGI: http.response.start sent twice")
            status = self.asgi_status = int(message["status"])
            framing.status_line(status)  # a bad status is the app's error, raised here
            # the server writes the framing headers itself
            framing_headers: list[tuple[bytes, bytes]] = []
            block = framing.encode_headers(message.get("headers", ()), framing_headers)
            if "trailers" in message and message["trailers"]:
                self._promise_trailers(framing_headers)  # which may refuse the start: nothing taken yet
            self.asgi_block = block
            for lname, value in framing_headers:
                if lname == b"content-length":
                    self.asgi_length = int(value)
                elif lname == b"connection" and framing.close_option(value):
                    self.keep_alive = False
            return conn.completed
        if kind == "http.response.pathsend":
            if self.asgi_block is None or self.started:
                raise RuntimeError("ASGI: http.response.pathsend needs http.response.start and no body")
            f = self.files.open(os.fspath(message["path"]))
            if self.asgi_trailers:  # framed as a body message that ends the body, with trailers to follow
                return self._send_range(f, 0, f.size, False)
            self.start(self.asgi_status, self.asgi_block, f.size if self.asgi_length is None else self.asgi_length)
            pending = self.send_file(f, 0, f.size)
            if pending is not None:
                return self._end_after(pending)
            self.end()
            return conn.completed
        if kind == _ZEROCOPY:
            return self._zerocopy(message)
        if kind == "http.response.early_hint":
            if self.started:
                raise RuntimeError("ASGI: http.response.early_hint after the response began")
            # RFC 9110 15.2: no 1xx to an HTTP/1.0 client (the spec lets a server ignore hints)
            if self.version == "1.1":
                conn.write(framing.early_hints(message.get("links", ())))
            return conn.completed
        if kind == "http.response.trailers":
            return self._trailers(message)
        raise RuntimeError(f"ASGI: unexpected message type {kind!r} on an http scope")

    # ASGI calls send "an asynchronous callable": tools that ask whether a
    # callable is async (asgiref's async_to_sync, inspect/asyncio's
    # iscoroutinefunction) must hear yes although it is a plain function
    send = _mark_async(send)

    async def _end_after(self, pending: Any) -> None:
        await pending
        self.end()

    # -- http.response.trailers ----------------------------------------------------
    def _promise_trailers(self, framing_headers: list[tuple[bytes, bytes]]) -> None:
        """http.response.start said `trailers: True`: the body is chunked and
        ends with the trailers the app sends after it, for a client that
        asked (TE: trailers) over HTTP/1.1 with a body to carry them; for any
        other the response ends with its body and the trailers are dropped."""
        if any(name == b"content-length" for name, _ in framing_headers):
            raise RuntimeError("ASGI: a response with trailers is chunked: it cannot have a Content-Length")
        self.asgi_trailers = TRAILERS_PROMISED
        self.trailers_out = (
            self.version == "1.1"
            and not self.head_only
            and framing.body_allowed(self.asgi_status)
            and framing.accepts_trailers(self.raw_headers)
        )

    def _body_ended(self) -> Awaitable[None]:
        """The last body message of a response that promised trailers: its end
        waits for them when the client gets them."""
        self.asgi_trailers = TRAILERS_DUE
        if not self.trailers_out:
            self.end()
        return self.conn.completed

    def _trailers(self, message: dict[str, Any]) -> Awaitable[None]:
        state = self.asgi_trailers
        if not state:
            raise RuntimeError("ASGI: http.response.trailers, but http.response.start did not say trailers: True")
        if state == TRAILERS_PROMISED and not self.finished:  # finished: a whole body or a file ended it
            raise RuntimeError("ASGI: http.response.trailers before the body ended (more_body: False)")
        if state == TRAILERS_SENT:
            raise RuntimeError("ASGI: http.response.trailers after the last one (more_trailers: False)")
        block = framing.encode_trailers(message.get("headers", ()))
        more = message.get("more_trailers", False)
        if self.trailers_out:
            self.trailer_block += block
            if not more:
                self.asgi_trailers = TRAILERS_SENT
                self.conn.write(framing.last_chunk(self.trailer_block))
                self.chunked_out = False  # its last chunk is written: end() must not write another
                self.end()
            return self.conn.completed
        if not more:
            self.asgi_trailers = TRAILERS_SENT
        global _dropped_said
        if not _dropped_said:
            _dropped_said = True
            logger.debug("ASGI trailers dropped: sent only to a client whose request says TE: trailers (logged once)")
        return self.conn.completed

    # -- http.response.zerocopysend ------------------------------------------------
    def _zerocopy(self, message: dict[str, Any]) -> Awaitable[None]:
        """A range of the app's open file, as a body message would send it
        (Content-Length, chunked, or up to the close), through the
        connection's file path: on the ring, read into registered memory and
        sent from there. The file is ours to hold (AppFile) until sent, so
        the app may close its own once this resolves."""
        if self.asgi_block is None:
            raise RuntimeError("ASGI: http.response.zerocopysend before http.response.start")
        if self.finished or self.asgi_trailers > TRAILERS_PROMISED:
            raise RuntimeError("ASGI: the response body is already complete")
        src = message["file"]
        f = AppFile(src)
        offset, count = f.span(message.get("offset"), message.get("count"), src)
        return self._send_range(f, offset, count, message.get("more_body", False))

    def _send_range(self, f: Any, offset: int, count: int, more: bool) -> Awaitable[None]:
        """A file range as one body message: the head first if it is not
        out (Content-Length `count` when this is the whole body), then the
        range (in a chunk of its own when chunked)."""
        if not self.started:
            block = self.asgi_block
            assert block is not None  # its callers checked: http.response.start came
            length = self.asgi_length
            if length is None and not more and not self.trailers_out:
                length = count  # the whole body: framed by its length, as a whole body message is
            elif length is not None and count > length:
                raise RuntimeError(
                    f"ASGI: http.response.zerocopysend of {count} bytes, longer than the Content-Length {length}"
                )
            self.start(self.asgi_status, block, length)
        chunked = self.chunked_out and count > 0
        if chunked:
            self.conn.write(b"%x\r\n" % count)
        pending = self.send_file(f, offset, count)
        if pending is not None:
            return self._zerocopy_after(pending, chunked, more)
        if chunked:
            self.conn.write(b"\r\n")
        if not more:
            if self.asgi_trailers:
                return self._body_ended()
            self.end()
            return self.conn.completed
        if self.conn.write_paused:
            return self.conn.drain()
        return self.conn.completed

    async def _zerocopy_after(self, pending: Any, chunked: bool, more: bool) -> None:
        # the transport sends the rest itself (asyncio's sendfile): what
        # follows the range is written once it is out
        await pending
        if chunked:
            self.conn.write(b"\r\n")
        if not more:
            if self.asgi_trailers:
                self._body_ended()
            else:
                self.end()


_ZEROCOPY = "http.response.zerocopysend"


def asgi_runner(
    app: Callable[..., Any],
    state: dict[str, Any],
    files: Any,
    root_path: str = "",
    limit: ConcurrencyLimit | None = None,
    websocket: Callable[[Any], None] | None = None,
) -> Runner:
    """The runner of an ASGI app; with `limit`, beyond its count of requests
    in flight a request is answered 503 before the app sees it (limit.py).
    `websocket(ex)` runs the app on a checked WebSocket handshake (the
    exchange's `ws`, set only where the server has WebSockets on:
    uringserve.ws.asgi.websocket_runner)."""

    class _Exchange(ASGIExchange):
        pass

    _Exchange.files = files

    def run(ex: ASGIExchange) -> None:
        if ex.ws is not None:  # a checked WebSocket handshake (uringserve.ws.upgrade): the websocket scope
            websocket(ex)  # type: ignore[misc]  # given whenever ws can be set
            return
        conn = ex.conn
        raw_path = ex.raw_path
        target = ex.target
        headers = ex._headers
        path = raw_path.decode("latin-1")
        scope = {
            "type": "http",
            "asgi": _ASGI,
            "http_version": ex.version,
            "server": conn.server_addr,
            "client": conn.client,
            "scheme": conn.scheme,
            "method": ex.method,
            "root_path": root_path,
            "path": unquote(path) if "%" in path else path,
            "raw_path": raw_path,
            "query_string": b"" if raw_path is target else target[len(raw_path) + 1 :],  # query_string, inline
            "headers": headers.pairs() if type(headers) is HeaderBlock else headers,  # raw_headers, inline
            "state": state.copy() if state else {},
            "extensions": _EXTENSIONS if conn.scheme == "http" else _tls_extensions(conn),
        }
        ex.task = conn.spawn(_run(app, scope, ex))

    # with the limit on, a runner of its own: nothing of it on the way when it is off
    runner: Callable[[Any], None] = run if limit is None else limit.wrap(run)
    runner.exchange_class = _Exchange  # type: ignore[attr-defined]
    return runner


async def _run(app: Callable[..., Any], scope: dict[str, Any], ex: ASGIExchange) -> None:
    try:
        await app(scope, ex.receive, ex.send)
    except BaseException as exc:
        if isinstance(exc, ClientDisconnected) and ex.conn.state is CLOSED:
            return
        ex.fail(exc)
        if isinstance(exc, (SystemExit, KeyboardInterrupt)):
            raise
        return
    if not ex.finished:
        if ex.conn.state is CLOSED:
            return
        what = "without sending a response" if not ex.started else "without completing its response"
        ex.fail(RuntimeError(f"ASGI app returned {what}"))


class LifespanError(StartupError, RuntimeError):
    """The app's lifespan refused the startup (lifespan.startup.failed), or,
    with lifespan "on", raised before completing it. run_command() prints it
    as one line and exits 1."""


class Lifespan:
    """The lifespan protocol, with uvicorn's `--lifespan` rule
    (uvicorn/lifespan/on.py).

    "auto": an app that returns or raises in the lifespan scope before it
    sends lifespan.startup.complete does not speak lifespan (most tutorial
    apps return at once for any scope but "http"): that is logged once and
    the app is served without it. "on": an app that raises there is an
    error (its traceback logged); one that returns is served, as in "auto"
    (uvicorn takes a return as a startup without complaint in either mode).
    "off": the lifespan scope is never called. lifespan.startup.failed is
    an error in every mode, naming the app's message. An app whose lifespan
    task ends after startup completed is served on; its error is logged,
    and shutdown is not sent to it (nothing would receive it). Where this
    differs from uvicorn: uvicorn logs "Application startup complete" for
    an app that returned (here: that it does not support lifespan), and
    logs a lifespan task that raises after startup at info level in "auto"
    (here: an error, in both modes)."""

    def __init__(self, app: Callable[..., Any], mode: str = "auto") -> None:
        if mode not in ("auto", "on", "off"):
            raise ValueError(f"lifespan mode must be 'auto', 'on' or 'off', not {mode!r}")
        self.app = app
        self.mode = mode
        self.state: dict[str, Any] = {}
        self._inbox: asyncio.Queue = asyncio.Queue()
        self._started: asyncio.Future | None = None
        self._stopped: asyncio.Future | None = None
        self._task: asyncio.Task | None = None
        self._shutting_down = False
        self.supported = False

    async def startup(self) -> None:
        if self.mode == "off":
            return
        loop = asyncio.get_running_loop()
        self._started = loop.create_future()
        self._stopped = loop.create_future()
        self._task = loop.create_task(self._main())
        await self._inbox.put({"type": "lifespan.startup"})
        try:
            await asyncio.wait([self._started, self._task], return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # cancelled (a stop signal while starting): the app's startup is cancelled too
            await self._end_task()
            raise
        if self._started.done():
            ok, msg = self._started.result()
            if not ok:
                await self._end_task()
                raise LifespanError(f"ASGI lifespan startup failed: {msg}" if msg else "ASGI lifespan startup failed")
            self.supported = True
            self._task.add_done_callback(self._ended)
            return
        # the app ended its lifespan scope without answering the startup
        exc = self._task.exception()
        if exc is not None and self.mode == "on":
            logger.error("ASGI lifespan startup raised", exc_info=exc)
            raise LifespanError(f"ASGI lifespan startup did not complete: the app raised {exc!r} (--lifespan on)")
        how = "returned" if exc is None else f"raised {exc!r}"
        logger.info("ASGI app does not support lifespan (it %s before startup complete); serving without it", how)

    async def _end_task(self) -> None:
        """The app's lifespan task, cancelled if it still runs; its outcome is
        reported by the caller (not "exception never retrieved" at exit)."""
        task = self._task
        if task is None:
            return
        if not task.done():
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    def _ended(self, task: asyncio.Task) -> None:
        """The lifespan task ended after startup complete: at shutdown, or by
        itself while serving."""
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None or (self._stopped is not None and self._stopped.done()):
            return
        if self._shutting_down:
            logger.error("ASGI lifespan shutdown raised", exc_info=exc)
        else:
            logger.error(
                "ASGI lifespan task raised after startup complete; serving on, without the app's shutdown",
                exc_info=exc,
            )

    async def shutdown(self) -> None:
        if not self.supported or self._task is None:
            return
        if self._task.done():  # ended already (_ended() said so if it raised): nothing to tell
            return
        self._shutting_down = True
        await self._inbox.put({"type": "lifespan.shutdown"})
        assert self._stopped is not None
        await asyncio.wait([self._stopped, self._task], return_when=asyncio.FIRST_COMPLETED)
        if self._stopped.done():
            ok, msg = self._stopped.result()
            if not ok:
                logger.error("ASGI lifespan shutdown failed: %s", msg)
        await self._end_task()

    async def _main(self) -> None:
        scope = {"type": "lifespan", "asgi": _ASGI, "state": self.state}
        await self.app(scope, self._inbox.get, self._send)

    async def _send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind in ("lifespan.startup.complete", "lifespan.startup.failed"):
            assert self._started is not None
            if not self._started.done():
                self._started.set_result((kind.endswith("complete"), message.get("message", "")))
        elif kind in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
            assert self._stopped is not None
            if not self._stopped.done():
                self._stopped.set_result((kind.endswith("complete"), message.get("message", "")))
        else:
            raise RuntimeError(f"ASGI: unexpected lifespan message {kind!r}")


__all__ = ["asgi_runner", "Lifespan", "LifespanError", "HTTPError"]
