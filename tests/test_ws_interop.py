"""Interop with WebSocket clients nobody here wrote: the `websockets` client
(sync and asyncio), `wsproto` (sans-I/O, over a plain socket), aiohttp's
client and picows' client, each against the demo's echo endpoint `/ws`
(`uringserve run apps.http:app`, native and ASGI, both loops): text,
binary, fragmented messages (where the client can send fragments), 1 MiB
messages, ping/pong, close codes and reasons, with and without
permessage-deflate. Then Starlette and FastAPI apps with @websocket
endpoints run by `uringserve run module:app`, driven by `websockets`.
WS_TEST_SERVERS=uvicorn runs the same against uvicorn (tests/ws_servers.py)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import Iterator

import aiohttp
import picows
import pytest
import websockets
import wsproto
import wsproto.events as ev
from websockets.asyncio.client import connect as aconnect
from websockets.sync.client import connect
from ws_servers import KINDS, WSServer
from wsproto.extensions import PerMessageDeflate

pytestmark = pytest.mark.timeout(180)

MIB = 1 << 20
TEXT = "héllo wörld ✓ " * 3
TARGETS = [(k, "native") for k in KINDS] + [(k, "asgi") for k in KINDS if k != "uvicorn"]


@pytest.fixture(scope="module", params=TARGETS, ids=[f"{k}-{a}" for k, a in TARGETS])
def srv(request: pytest.FixtureRequest) -> Iterator[WSServer]:
    kind, app = request.param
    s = WSServer(kind, app=app)
    yield s
    assert s.alive(), s.output()
    s.stop()


deflate_param = pytest.mark.parametrize("deflate", [True, False], ids=["deflate", "plain"])


def big_text() -> str:
    return (os.urandom(MIB // 2).hex())[:MIB]


# -- websockets, sync -------------------------------------------------------------------------


@deflate_param
def test_websockets_sync(srv: WSServer, deflate: bool) -> None:
    with connect(srv.url(), compression="deflate" if deflate else None, max_size=4 * MIB, open_timeout=30) as ws:
        agreed = ws.response.headers.get("Sec-WebSocket-Extensions") or ""
        assert agreed.startswith("permessage-deflate") == deflate, agreed
        ws.send(TEXT)
        assert ws.recv(timeout=30) == TEXT
        data = os.urandom(1000)
        ws.send(data)
        assert ws.recv(timeout=30) == data
        ws.send(["frag", "ment", "ed ✓"])  # one message in three frames
        assert ws.recv(timeout=30) == "fragmented ✓"
        ws.send([b"\x00\x01", b"", b"\x02"])
        assert ws.recv(timeout=30) == b"\x00\x01\x02"
        big = big_text()
        ws.send(big)
        assert ws.recv(timeout=60) == big
        blob = os.urandom(MIB)
        ws.send(blob)
        assert ws.recv(timeout=60) == blob
        assert ws.ping(b"are you there").wait(30)
        ws.close(4321, "done here ✓")
    assert (ws.close_code, ws.close_reason) == (4321, "done here ✓")


# -- websockets, asyncio ----------------------------------------------------------------------


@deflate_param
def test_websockets_asyncio(srv: WSServer, deflate: bool) -> None:
    async def main() -> None:
        async with aconnect(srv.url(), compression="deflate" if deflate else None, max_size=4 * MIB) as ws:
            await ws.send(TEXT)
            assert await ws.recv() == TEXT
            await ws.send(["a", "b", "c"])
            assert await ws.recv() == "abc"
            blob = os.urandom(MIB)
            await ws.send(blob)
            assert await ws.recv() == blob
            # 50 messages in flight at once come back in order
            for i in range(50):
                await ws.send(f"m{i}")
            assert [await ws.recv() for _ in range(50)] == [f"m{i}" for i in range(50)]
            latency = await asyncio.wait_for(await ws.ping(b"x"), 30)
            assert latency >= 0
            await ws.close(1000, "bye")
        assert (ws.close_code, ws.close_reason) == (1000, "bye")

    asyncio.run(asyncio.wait_for(main(), 120))


def test_websockets_many_clients_at_once(srv: WSServer) -> None:
    async def one(i: int) -> None:
        async with aconnect(srv.url()) as ws:
            for j in range(5):
                await ws.send(f"{i}:{j}")
                assert await ws.recv() == f"{i}:{j}"

    async def main() -> None:
        await asyncio.gather(*(one(i) for i in range(50)))

    asyncio.run(asyncio.wait_for(main(), 120))


def test_websockets_chat_broadcast(srv: WSServer) -> None:
    """Three /ws/chat members: each message reaches all three, sender included, in order."""
    with (
        connect(srv.url("/ws/chat")) as a,
        connect(srv.url("/ws/chat")) as b,
        connect(srv.url("/ws/chat")) as c,
    ):
        # joined: a round trip on each, so all three are members before the broadcast
        for ws in (a, b, c):
            ws.send(f"hello {id(ws)}")
        seen = {ws: [ws.recv(timeout=30) for _ in range(3)] for ws in (a, b, c)}
        for i in range(3):
            a.send(f"from a {i}")
        b.send(b"\x00bin")
        for ws in (a, b, c):
            rest = [ws.recv(timeout=30) for _ in range(4)]
            assert rest == ["from a 0", "from a 1", "from a 2", b"\x00bin"], (seen, rest)


def test_server_deflate_off(srv: WSServer) -> None:
    """--ws-per-message-deflate false: an offer is declined, messages go plain."""
    s = WSServer(srv.kind, "--ws-per-message-deflate", "false")
    try:
        with connect(s.url(), compression="deflate") as ws:
            assert ws.response.headers.get("Sec-WebSocket-Extensions") is None
            ws.send(TEXT)
            assert ws.recv(timeout=30) == TEXT
    finally:
        s.stop()


# -- wsproto over a plain socket --------------------------------------------------------------


class WsprotoClient:
    def __init__(self, port: int, deflate: bool) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.conn = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        exts = [PerMessageDeflate()] if deflate else []
        self.sock.sendall(self.conn.send(ev.Request(host=f"127.0.0.1:{port}", target="/ws", extensions=exts)))
        self.events: list[ev.Event] = []
        accept = self.next()
        assert isinstance(accept, ev.AcceptConnection), accept
        self.extensions = accept.extensions

    def next(self) -> ev.Event:
        while not self.events:
            data = self.sock.recv(1 << 20)
            self.conn.receive_data(data or None)
            self.events += list(self.conn.events())
        return self.events.pop(0)

    def send(self, event: ev.Event) -> None:
        self.sock.sendall(self.conn.send(event))

    def message(self) -> str | bytes:
        parts: list[str | bytes] = []
        while True:
            e = self.next()
            assert isinstance(e, ev.Message), e
            parts.append(e.data)
            if e.message_finished:
                return "".join(parts) if isinstance(e, ev.TextMessage) else b"".join(parts)  # type: ignore[arg-type]


@deflate_param
def test_wsproto(srv: WSServer, deflate: bool) -> None:
    c = WsprotoClient(srv.port, deflate)
    try:
        assert bool(c.extensions) == deflate, c.extensions
        c.send(ev.TextMessage(TEXT))
        assert c.message() == TEXT
        c.send(ev.BytesMessage(b"\xff\x00" * 10))
        assert c.message() == b"\xff\x00" * 10
        c.send(ev.TextMessage("part one, ", message_finished=False))
        c.send(ev.Ping(b"in between"))
        c.send(ev.TextMessage("part two", message_finished=True))
        pong = c.next()
        assert isinstance(pong, ev.Pong) and pong.payload == b"in between", pong
        assert c.message() == "part one, part two"
        blob = os.urandom(MIB)
        c.send(ev.BytesMessage(blob))
        assert c.message() == blob
        big = big_text()
        c.send(ev.TextMessage(big))
        assert c.message() == big
        c.send(ev.CloseConnection(code=3001, reason="wsproto says bye"))
        closing = c.next()
        assert isinstance(closing, ev.CloseConnection), closing
        assert (closing.code, closing.reason) == (3001, "wsproto says bye")
        assert c.sock.recv(10) == b""  # the server ends the TCP connection
    finally:
        c.sock.close()


# -- aiohttp ----------------------------------------------------------------------------------


@deflate_param
def test_aiohttp(srv: WSServer, deflate: bool) -> None:
    async def main() -> None:
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(srv.url(), compress=15 if deflate else 0, autoping=False, max_msg_size=4 * MIB) as ws,
        ):
            assert bool(ws.compress) == deflate, ws.compress
            await ws.send_str(TEXT)
            assert (await ws.receive(30)).data == TEXT
            await ws.send_bytes(b"\x01\x02\x03")
            assert (await ws.receive(30)).data == b"\x01\x02\x03"
            blob = os.urandom(MIB)
            await ws.send_bytes(blob)
            assert (await ws.receive(60)).data == blob
            await ws.ping(b"aiohttp-ping")
            msg = await ws.receive(30)
            assert (msg.type, msg.data) == (aiohttp.WSMsgType.PONG, b"aiohttp-ping")
            await ws.close(code=4004, message=b"aiohttp done")
            assert ws.close_code == 4004

    asyncio.run(asyncio.wait_for(main(), 120))


# -- picows -----------------------------------------------------------------------------------


class PicowsListener(picows.WSListener):
    def __init__(self) -> None:
        self.frames: asyncio.Queue[tuple[picows.WSMsgType, bytes, bool, int | None, bytes]] = asyncio.Queue()

    def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
        code = frame.get_close_code() if frame.msg_type == picows.WSMsgType.CLOSE else None
        reason = frame.get_close_message() if frame.msg_type == picows.WSMsgType.CLOSE else b""
        self.frames.put_nowait((frame.msg_type, frame.get_payload_as_bytes(), frame.fin, code, reason or b""))


def test_picows(srv: WSServer) -> None:
    """picows works frame by frame (no permessage-deflate): messages,
    fragments it sends itself, ping, close with a code."""
    T, B, C, P = picows.WSMsgType.TEXT, picows.WSMsgType.BINARY, picows.WSMsgType.CONTINUATION, picows.WSMsgType.PING

    async def main() -> None:
        transport, client = await picows.ws_connect(PicowsListener, srv.url(), max_frame_size=4 * MIB)
        assert isinstance(client, PicowsListener)

        async def message() -> tuple[picows.WSMsgType, bytes]:
            kind, data, fin, _, _ = await asyncio.wait_for(client.frames.get(), 60)
            parts = [data]
            while not fin:
                k, data, fin, _, _ = await asyncio.wait_for(client.frames.get(), 60)
                assert k == C
                parts.append(data)
            return kind, b"".join(parts)

        transport.send(T, TEXT.encode())
        assert await message() == (T, TEXT.encode())
        transport.send(B, b"\x00" * 300)
        assert await message() == (B, b"\x00" * 300)
        transport.send(T, "κό".encode()[:3], fin=False)  # a code point split across fragments
        transport.send(C, "κό".encode()[3:] + b" done", fin=True)
        assert await message() == (T, "κό done".encode())
        blob = os.urandom(MIB)
        transport.send(B, blob)
        assert await message() == (B, blob)
        transport.send(P, b"picows-ping")
        kind, data, *_ = await asyncio.wait_for(client.frames.get(), 30)
        assert (kind, data) == (picows.WSMsgType.PONG, b"picows-ping")
        transport.send_close(picows.WSCloseCode(4005), b"picows done")
        kind, _, _, code, reason = await asyncio.wait_for(client.frames.get(), 30)
        assert kind == picows.WSMsgType.CLOSE and (int(code), reason) == (4005, b"picows done")  # type: ignore[arg-type]
        await asyncio.wait_for(transport.wait_disconnected(), 30)

    asyncio.run(asyncio.wait_for(main(), 120))


# -- Starlette and FastAPI apps run by `uringserve run module:app` --------------------------------

APP_KINDS = [k for k in KINDS if k != "asyncio"] or KINDS  # the ASGI path is the same on both loops


@pytest.fixture(scope="module", params=APP_KINDS)
def starlette_srv(request: pytest.FixtureRequest) -> Iterator[WSServer]:
    s = WSServer(request.param, module_app="tests.ws_starlette_app:app")
    yield s
    assert s.alive(), s.output()
    s.stop()


def test_starlette_accept_with_subprotocol_and_headers(starlette_srv: WSServer) -> None:
    with connect(starlette_srv.url("/chat"), subprotocols=["chat.v1", "chat.v2"]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "chat.v2"
        assert ws.response.headers.get("x-app") == "starlette"
        ws.send("hi ✓")
        assert ws.recv(timeout=30) == "echo:hi ✓"
        ws.send(b"abc")
        assert ws.recv(timeout=30) == b"cba"


def test_starlette_no_subprotocol_when_none_offered(starlette_srv: WSServer) -> None:
    with connect(starlette_srv.url("/chat")) as ws:
        assert ws.subprotocol is None
        assert ws.response.headers.get("Sec-WebSocket-Protocol") is None


def test_starlette_close_with_code(starlette_srv: WSServer) -> None:
    with connect(starlette_srv.url("/chat")) as ws:
        ws.send("close-me")
        with pytest.raises(websockets.ConnectionClosed) as info:
            ws.recv(timeout=30)
    assert info.value.rcvd is not None and (info.value.rcvd.code, info.value.rcvd.reason) == (4003, "asked")


def test_starlette_client_close_reaches_the_app(starlette_srv: WSServer) -> None:
    """The client leaves; the server keeps serving others (the app saw websocket.disconnect)."""
    for _ in range(3):
        with connect(starlette_srv.url("/chat")) as ws:
            ws.send("x")
            assert ws.recv(timeout=30) == "echo:x"
        assert ws.close_code == 1000


def test_starlette_denied_before_accept_is_403(starlette_srv: WSServer) -> None:
    with pytest.raises(websockets.InvalidStatus) as info:
        connect(starlette_srv.url("/denied"), open_timeout=30)
    assert info.value.response.status_code == 403


def test_starlette_denial_response(starlette_srv: WSServer) -> None:
    """websocket.http.response: the app's own status, headers and body."""
    with pytest.raises(websockets.InvalidStatus) as info:
        connect(starlette_srv.url("/denied-custom"), open_timeout=30)
    r = info.value.response
    assert r.status_code == 401 and r.headers.get("x-why") == "token" and r.body == b"no entry", r


def test_starlette_unknown_path_is_refused(starlette_srv: WSServer) -> None:
    with pytest.raises(websockets.InvalidStatus) as info:
        connect(starlette_srv.url("/nowhere"), open_timeout=30)
    assert info.value.response.status_code == 403


def test_fastapi_websocket_endpoint() -> None:
    s = WSServer(APP_KINDS[0], module_app="tests.ws_starlette_app:fastapi_app")
    try:
        with connect(s.url("/items/42?q=find"), compression="deflate") as ws:
            ws.send(json.dumps({"n": 1, "s": "ü"}))
            assert json.loads(ws.recv(timeout=30)) == {"item": 42, "q": "find", "got": {"n": 1, "s": "ü"}}
    finally:
        s.stop()
