"""WebSocket connections (uringserve.ws) on both loops: the upgrade from
HTTP (101 and its accept hash, 426, 400 naming the fault, subprotocols and
the app's headers, frames pipelined right behind the handshake, --ws none),
the close handshake and its codes, ping/pong, the keep-alive ping timeout
(1011), the closing timeout, flow control both ways (a client that never
reads holds the sender; a full queue pauses reading), the drain (1001),
the counters and access-log line, and nothing left behind.

The wire is driven by raw sockets (asyncio streams) where the exact bytes
matter and by the `websockets` client elsewhere; servers run in-process on
the test's loop (the `h` fixture: asyncio and UringEventLoop)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from conftest import until
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

import uringserve.ws as ws_mod
from uringserve.http import HTTPConfig, HTTPServer, Request, Response
from uringserve.ws import WebSocketHandler, WSConfig, accept

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
KEY = base64.b64encode(b"0123456789abcdef")


# -- the wire, by hand ----------------------------------------------------------------------
def handshake(path: str = "/ws", key: bytes = KEY, version: bytes = b"13", extra: bytes = b"") -> bytes:
    return (
        b"GET %s HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: %s\r\n%s\r\n" % (path.encode(), key, version, extra)
    )


def frame(op: int, payload: bytes = b"", fin: bool = True, mask: bool = True) -> bytes:
    """A client frame (masked unless told)."""
    b0 = (0x80 if fin else 0) | op
    n = len(payload)
    m = 0x80 if mask else 0
    if n < 126:
        head = bytes((b0, m | n))
    elif n < 65536:
        head = struct.pack("!BBH", b0, m | 126, n)
    else:
        head = struct.pack("!BBQ", b0, m | 127, n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def close_frame(code: int | None = None, reason: bytes = b"") -> bytes:
    return frame(0x8, b"" if code is None else struct.pack("!H", code) + reason)


async def read_head(r: asyncio.StreamReader) -> tuple[int, dict[bytes, bytes], bytes]:
    head = await r.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if b":" in line:
            n, _, v = line.partition(b":")
            headers[n.strip().lower()] = v.strip()
    body = b""
    if b"content-length" in headers:
        body = await r.readexactly(int(headers[b"content-length"]))
    return status, headers, body


async def read_frame(r: asyncio.StreamReader) -> tuple[int, bytes]:
    """A server frame: (opcode, payload); server frames are never masked."""
    b0, b1 = await r.readexactly(2)
    assert not b1 & 0x80, "a server frame is never masked"
    n = b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", await r.readexactly(2))
    elif n == 127:
        (n,) = struct.unpack("!Q", await r.readexactly(8))
    return b0 & 0x0F, await r.readexactly(n)


async def opened(port: int, path: str = "/ws", extra: bytes = b"", then: bytes = b"") -> Any:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(handshake(path, extra=extra) + then)
    status, headers, _ = await read_head(r)
    assert status == 101, status
    return r, w, headers


async def at_eof(r: asyncio.StreamReader) -> bool:
    """The server closed the TCP connection (what is left unread is returned empty)."""
    rest = await r.read()
    return rest == b""


# -- apps -----------------------------------------------------------------------------------
class Echo(WebSocketHandler):
    def on_message(self, ws: Any, data: str | bytes) -> None:
        ws.send(data)


class Recorder(WebSocketHandler):
    """Echoes, and keeps what happened (one instance shared by the test)."""

    def __init__(self) -> None:
        self.connected: list[Any] = []
        self.closed: list[tuple[int, str]] = []
        self.closed_event = asyncio.Event()

    def on_connect(self, ws: Any) -> None:
        self.connected.append(ws)

    def on_message(self, ws: Any, data: str | bytes) -> None:
        if data == "close-please":
            ws.close(4001, "asked")
            return
        ws.send(data)

    def on_close(self, ws: Any, code: int, reason: str) -> None:
        self.closed.append((code, reason))
        self.closed_event.set()


def native(handler: Any, subprotocol: str | None = None, headers: Any = ()) -> Callable[[Request], Any]:
    def app(request: Request) -> Any:
        if request.raw_path.startswith(b"/ws"):
            return accept(handler, subprotocol, headers)
        return Response(b"plain\n")

    return app


async def serving(
    h: Any, app: Any, body: Callable[[int, HTTPServer], Awaitable[Any]], ws: Any = "auto", **kw: Any
) -> Any:
    srv = HTTPServer(app, ws=ws, **kw)
    await srv.start("127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    try:
        return await body(port, srv)
    finally:
        await srv.shutdown(timeout=5)


def serve(h: Any, app: Any, body: Callable[[int, HTTPServer], Awaitable[Any]], **kw: Any) -> Any:
    return h.run(serving(h, app, body, **kw), timeout=60)


# -- the upgrade --------------------------------------------------------------------------------
def test_101_with_the_accept_hash_and_frames_pipelined_behind_the_handshake(h) -> None:
    async def body(port: int, srv: HTTPServer) -> None:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        # the handshake and two frames in one write: the frames are the WebSocket's, not HTTP's
        w.write(handshake() + frame(0x1, b"first") + frame(0x2, b"\x00second"))
        status, headers, _ = await read_head(r)
        assert status == 101
        assert headers[b"upgrade"].lower() == b"websocket" and headers[b"connection"].lower() == b"upgrade"
        assert headers[b"sec-websocket-accept"] == base64.b64encode(hashlib.sha1(KEY + GUID).digest())
        assert await read_frame(r) == (0x1, b"first")
        assert await read_frame(r) == (0x2, b"\x00second")
        w.write(close_frame(1000))
        assert await read_frame(r) == (0x8, struct.pack("!H", 1000))
        assert await at_eof(r)  # the server closes the TCP connection after the handshake
        w.close()

    serve(h, native(Echo), body)


def test_an_http_request_pipelined_before_the_upgrade_is_answered_first(h) -> None:
    async def body(port: int, srv: HTTPServer) -> None:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n" + handshake() + frame(0x1, b"after"))
        status, _, plain = await read_head(r)
        assert (status, plain) == (200, b"plain\n")
        assert (await read_head(r))[0] == 101
        assert await read_frame(r) == (0x1, b"after")
        w.close()

    serve(h, native(Echo), body)


@pytest.mark.parametrize(
    "request_bytes, status, says",
    [
        (handshake(version=b"8"), 426, b""),
        (handshake(key=b"short"), 400, b"Sec-WebSocket-Key"),
        (handshake().replace(b"Sec-WebSocket-Key: " + KEY + b"\r\n", b""), 400, b"Sec-WebSocket-Key"),
        (
            handshake()
            .replace(b"GET /ws HTTP/1.1\r\n", b"POST /ws HTTP/1.1\r\n")
            .replace(b"\r\n\r\n", b"\r\nContent-Length: 2\r\n\r\nhi"),
            400,
            b"",
        ),
    ],
    ids=["version", "bad-key", "no-key", "post-with-body"],
)
def test_bad_handshakes_are_refused_naming_the_fault(h, request_bytes: bytes, status: int, says: bytes) -> None:
    async def body(port: int, srv: HTTPServer) -> None:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(request_bytes)
        got, headers, text = await read_head(r)
        assert got == status, (got, text)
        if status == 426:
            assert headers[b"sec-websocket-version"] == b"13"
        assert says in text
        assert await at_eof(r)
        w.close()

    serve(h, native(Echo), body)


def test_subprotocol_and_the_apps_headers(h) -> None:
    async def body(port: int, srv: HTTPServer) -> None:
        async with connect(f"ws://127.0.0.1:{port}/ws", subprotocols=["v1.chat", "v2.chat"], compression=None) as c:
            assert c.subprotocol == "v2.chat"
            assert c.response.headers["X-Room"] == "blue"
            await c.send("x")
            assert await c.recv() == "x"

    serve(h, native(Echo, "v2.chat", [(b"X-Room", b"blue")]), body)


def test_a_subprotocol_the_client_did_not_offer_is_a_500(h) -> None:
    async def body(port: int, srv: HTTPServer) -> None:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(handshake(extra=b"Sec-WebSocket-Protocol: a\r\n"))
        status, _, _ = await read_head(r)
        assert status == 500
        w.close()

    serve(h, native(Echo, "b"), body)
    assert h.take_errors("HTTP handler failed")


def test_ws_none_serves_an_upgrade_request_as_plain_http(h) -> None:
    seen = []

    async def app(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return
        seen.append(scope["type"])
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"3")]})
        await send({"type": "http.response.body", "body": b"no\n"})

    async def body(port: int, srv: HTTPServer) -> None:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(handshake() + frame(0x1, b"ignored"))
        status, _, text = await read_head(r)
        assert (status, text) == (200, b"no\n")
        assert await at_eof(r)
        w.close()

    serve(h, app, body, ws="none")
    assert seen == ["http"]


# -- frames, pings, the close handshake -----------------------------------------------------------
def test_ping_is_answered_with_the_same_payload_and_an_unsolicited_pong_is_ignored(h) -> None:
    async def body(port: int, srv: HTTPServer) -> None:
        r, w, _ = await opened(port)
        w.write(frame(0xA, b"unasked") + frame(0x9, b"payload-1") + frame(0x1, b"m"))
        assert await read_frame(r) == (0xA, b"payload-1")
        assert await read_frame(r) == (0x1, b"m")
        w.close()

    serve(h, native(Echo), body)


@pytest.mark.parametrize(
    "sent, echoed, told",
    [
        (close_frame(4000, "ciao ✓".encode()), struct.pack("!H", 4000) + "ciao ✓".encode(), (4000, "ciao ✓")),
        (close_frame(), b"", (1005, "")),  # no code: an empty close frame answers it
    ],
    ids=["code-and-reason", "empty"],
)
def test_the_peers_close_is_echoed_then_the_server_closes_tcp(h, sent: bytes, echoed: bytes, told: Any) -> None:
    rec = Recorder()

    async def body(port: int, srv: HTTPServer) -> None:
        r, w, _ = await opened(port)
        w.write(sent)
        assert await read_frame(r) == (0x8, echoed)
        assert await at_eof(r)
        w.close()
        assert await until(lambda: not len(srv.connections))

    serve(h, native(rec), body)
    assert rec.closed == [told]


def test_the_servers_close_waits_for_the_peers_then_closes(h) -> None:
    rec = Recorder()

    async def body(port: int, srv: HTTPServer) -> None:
        r, w, _ = await opened(port)
        w.write(frame(0x1, b"close-please"))
        assert await read_frame(r) == (0x8, struct.pack("!H", 4001) + b"asked")
        # a message sent before the client saw our close is dropped, not an error
        w.write(frame(0x1, b"late") + close_frame(4001))
        assert await at_eof(r)
        w.close()

    serve(h, native(rec), body)
    assert rec.closed == [(4001, "asked")]
    assert len(rec.connected) == 1


@pytest.mark.parametrize(
    "bad, code",
    [
        (frame(0x1, b"x", mask=False), 1002),  # client frames must be masked
        (frame(0x3, b""), 1002),  # a reserved opcode
        (frame(0x9, b"x" * 126), 1002),  # a control frame over 125 bytes
        (frame(0x1, b"\xff\xfe"), 1007),  # invalid UTF-8 in text
    ],
    ids=["unmasked", "opcode", "long-ping", "utf8"],
)
def test_a_protocol_error_closes_with_its_code(h, bad: bytes, code: int) -> None:
    rec = Recorder()

    async def body(port: int, srv: HTTPServer) -> None:
        r, w, _ = await opened(port)
        w.write(bad)
        op, payload = await read_frame(r)
        assert op == 0x8 and struct.unpack("!H", payload[:2])[0] == code
        assert await at_eof(r)
        w.close()
        assert await until(lambda: not len(srv.connections))

    serve(h, native(rec), body)
    assert [c for c, _ in rec.closed] == [code]


def test_a_message_over_max_size_is_1009(h) -> None:
    async def body(port: int, srv: HTTPServer) -> None:
        r, w, _ = await opened(port)
        w.write(frame(0x2, b"x" * 1001))
        op, payload = await read_frame(r)
        assert op == 0x8 and struct.unpack("!H", payload[:2])[0] == 1009
        assert await at_eof(r)
        w.close()

    serve(h, native(Echo), body, ws=WSConfig(max_size=1000))


def test_a_peer_that_does_not_answer_pings_is_closed_with_1011(h) -> None:
    rec = Recorder()

    async def body(port: int, srv: HTTPServer) -> None:
        r, w, _ = await opened(port)
        op, payload = await read_frame(r)  # the keep-alive ping: never answered
        assert op == 0x9 and payload
        op, payload = await read_frame(r)
        assert op == 0x8 and struct.unpack("!H", payload[:2])[0] == 1011
        assert await at_eof(r)
        w.close()

    serve(h, native(rec), body, ws=WSConfig(ping_interval=0.2, ping_timeout=0.3))
    assert [c for c, _ in rec.closed] == [1011]


def test_a_peer_that_answers_pings_stays_open(h) -> None:
    async def body(port: int, srv: HTTPServer) -> None:
        r, w, _ = await opened(port)
        for _ in range(3):  # three rounds of ping, each answered: still open after the timeout
            op, payload = await read_frame(r)
            assert op == 0x9
            w.write(frame(0xA, payload))
        w.write(frame(0x1, b"still here"))
        assert await read_frame(r) == (0x1, b"still here")
        w.close()

    serve(h, native(Echo), body, ws=WSConfig(ping_interval=0.1, ping_timeout=0.15))


def test_a_peer_that_never_answers_our_close_is_cut_after_the_closing_timeout(h) -> None:
    rec = Recorder()

    async def body(port: int, srv: HTTPServer) -> None:
        r, w, _ = await opened(port)
        w.write(frame(0x1, b"close-please"))
        assert (await read_frame(r))[0] == 0x8
        # no close frame back: the server cuts the connection itself
        assert await at_eof(r)
        assert await until(lambda: not len(srv.connections))
        w.close()

    serve(h, native(rec), body, ws=WSConfig(close_timeout=0.3))
    # no close frame came from the peer: 1006, not the code we sent (RFC 6455 §7.1.5)
    assert rec.closed == [(1006, "")]


def test_a_peer_that_drops_tcp_after_our_close_is_told_as_1006(h) -> None:
    rec = Recorder()

    async def body(port: int, srv: HTTPServer) -> None:
        r, w, _ = await opened(port)
        w.write(frame(0x1, b"close-please"))
        assert (await read_frame(r))[0] == 0x8
        w.transport.abort()  # no close frame, the TCP connection gone
        assert await until(lambda: not len(srv.connections))
        assert srv.ws_stats.close_codes == {1006: 1}

    serve(h, native(rec), body, ws=WSConfig(close_timeout=30))
    assert rec.closed == [(1006, "")]


# -- flow control -------------------------------------------------------------------------------
def test_a_client_that_never_reads_holds_the_sender_and_memory_stays_bounded(h) -> None:
    state: dict[str, Any] = {"sent": 0}
    blob = b"x" * 65536

    class Flood(WebSocketHandler):
        def on_connect(self, ws: Any) -> None:
            state["ws"] = ws
            state["task"] = asyncio.get_running_loop().create_task(self.flood(ws))

        async def flood(self, ws: Any) -> None:
            try:
                while True:
                    ws.send(blob)
                    state["sent"] += 1
                    if ws.write_paused:
                        await ws.drain()
            except ConnectionError:
                pass

    async def body(port: int, srv: HTTPServer) -> None:
        r, w, _ = await opened(port)  # and then never reads
        assert await until(lambda: "ws" in state and state["ws"].write_paused)
        sent = state["sent"]
        for _ in range(50):  # the loop runs on: the sender stays held
            await asyncio.sleep(0)
        assert state["sent"] == sent
        buffered = state["ws"].transport.get_write_buffer_size()
        assert buffered < 8 * 1024 * 1024, buffered
        w.transport.abort()
        await asyncio.wait_for(state["task"], 10)

    serve(h, native(Flood()), body)


def test_the_native_ws_has_no_queue_reading_pauses_on_request(h) -> None:
    held: list[Any] = []

    class Slow(WebSocketHandler):
        def on_message(self, ws: Any, data: Any) -> None:
            held.append(data)
            if len(held) == 2:
                ws.pause_reading()

    async def body(port: int, srv: HTTPServer) -> None:
        r, w, _ = await opened(port)
        w.write(frame(0x1, b"1") + frame(0x1, b"2"))
        assert await until(lambda: len(held) == 2)
        w.write(frame(0x1, b"3"))
        for _ in range(20):
            await asyncio.sleep(0)
        ws = next(iter(srv.connections))
        assert ws.read_paused and held == ["1", "2"]
        ws.resume_reading()
        assert await until(lambda: held == ["1", "2", "3"])
        w.close()

    serve(h, native(Slow()), body)


# -- the server around it -----------------------------------------------------------------------
def test_the_drain_sends_1001_and_waits_for_the_handshake(h) -> None:
    rec = Recorder()

    async def main() -> None:
        srv = HTTPServer(native(rec))
        await srv.start("127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        c = await connect(f"ws://127.0.0.1:{port}/ws", compression=None)
        await c.send("hi")
        assert await c.recv() == "hi"
        stopping = asyncio.ensure_future(srv.shutdown(timeout=10))
        with pytest.raises(ConnectionClosed):
            await c.recv()
        assert c.close_code == 1001
        await stopping
        assert srv.aborted in (0, None) and not len(srv.connections)

    h.run(main())
    assert rec.closed == [(1001, "server shutting down")]


def test_counters_and_the_access_log_line(h, caplog) -> None:
    async def body(port: int, srv: HTTPServer) -> None:
        async with connect(f"ws://127.0.0.1:{port}/ws?room=1", compression=None) as c:
            for m in ("a", b"bb", "ccc"):
                await c.send(m)
                assert await c.recv() == m
            assert srv.ws_stats.open == 1
        assert await until(lambda: srv.ws_stats.closed == 1)
        t = srv.ws_stats.totals(srv.connections)
        assert t["messages_in"] == t["messages_out"] == 3
        assert t["bytes_out"] == (2 + 1) + (2 + 2) + (2 + 3) + 4  # three frames and the close (2 + code)
        assert t["bytes_in"] > t["bytes_out"]  # masked: 4 bytes more per frame
        assert srv.ws_stats.close_codes == {1000: 1}

    with caplog.at_level(logging.INFO, logger="uringserve.access"):
        serve(h, native(Echo), body, config=HTTPConfig(access_log=True))
    lines = [r for r in caplog.records if r.name == "uringserve.access"]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    rec = lines[0]
    assert rec.status == 101 and rec.target == "/ws?room=1" and rec.method == "GET"
    assert '"GET /ws?room=1 HTTP/1.1" 101' in rec.getMessage()


def test_nothing_is_left_behind(h) -> None:
    async def body(port: int, srv: HTTPServer) -> None:
        loop = asyncio.get_running_loop()
        tasks_before = len(asyncio.all_tasks(loop))
        ring = getattr(loop, "ring_stats", None)
        levels = ("slots_used", "bufs_out")
        before = {k: ring()[k] for k in levels} if ring else {}
        for i in range(60):
            r, w, _ = await opened(port)
            if i % 3 == 0:
                w.transport.abort()  # abandoned: reset
            elif i % 3 == 1:
                w.write(close_frame(1000))
                await read_frame(r)
                w.close()
            else:
                w.write(frame(0x1, b"half a frame")[:5])  # cut mid-frame
                w.close()
        assert await until(lambda: not len(srv.connections) and srv.ws_stats.open == 0)
        assert srv.connections.counts()["accepted"] == srv.connections.counts()["closed"] == 60
        assert len(asyncio.all_tasks(loop)) == tasks_before
        assert sum(srv.ws_stats.close_codes.values()) == 60
        if ring:  # UringEventLoop: every fixed slot and provided buffer is back (the listener's own excepted)
            assert await until(lambda: {k: ring()[k] for k in levels} == before), (ring(), before)

    serve(h, native(Echo), body)


def test_the_public_names() -> None:
    assert ws_mod.WebSocket is ws_mod.WebSocketProtocol
    assert issubclass(ws_mod.WebSocketClosed, ConnectionError)


def test_wss_over_tls_with_the_scheme_in_the_asgi_scope(h) -> None:
    import ssl

    import trustme

    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(client_ctx)
    schemes: list[str] = []

    async def app(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return
        schemes.append(scope["scheme"])
        await receive()
        await send({"type": "websocket.accept"})
        msg = await receive()
        await send({"type": "websocket.send", "bytes": msg["bytes"] * 2})
        await receive()

    async def body(port: int, srv: HTTPServer) -> None:
        async with connect(f"wss://127.0.0.1:{port}/ws", ssl=client_ctx) as c:
            await c.send(b"\x01" * 70000)  # larger than a TLS record
            assert await c.recv() == b"\x01" * 140000

    serve(h, app, body, ssl=server_ctx)
    assert schemes == ["wss"]
