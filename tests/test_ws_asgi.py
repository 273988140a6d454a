"""ASGI WebSockets (spec 2.4) on both loops: the websocket scope, connect /
accept (subprotocol, headers) / receive / send / close / disconnect, the
websocket.http.response extension, every error the spec names (each a
RuntimeError in the app naming what was wrong, and a clean close: 500
while the handshake is pending, 1011 once open), the bounded receive queue
(--ws-max-queue pauses reading), a Starlette app, and the demo's ASGI
/ws and /ws/chat."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import pytest
from conftest import until
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect
from test_ws_protocol import close_frame, frame, handshake, opened, read_frame, read_head, serve
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

import apps.http as demo
from uringserve.http import HTTPServer
from uringserve.ws import WSConfig

raised: list[BaseException] = []


def app_of(body: Any) -> Any:
    """An ASGI app running `body(scope, receive, send)` on websocket scopes,
    recording what it raises (then re-raising it: the server's to handle)."""

    async def app(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return
        try:
            await body(scope, receive, send)
        except BaseException as exc:
            raised.append(exc)
            raise

    return app


@pytest.fixture(autouse=True)
def _clear() -> None:
    raised.clear()


def app_errors(h: Any) -> list:
    return h.take_errors("ASGI WebSocket app failed") + h.take_errors("HTTP handler failed")


def test_the_scope_and_a_conversation(h) -> None:
    scopes: list[dict] = []

    async def body(scope: dict, receive: Any, send: Any) -> None:
        scopes.append(scope)
        assert await receive() == {"type": "websocket.connect"}
        await send({"type": "websocket.accept", "subprotocol": "b", "headers": [(b"x-app", b"1")]})
        while True:
            msg = await receive()
            if msg["type"] == "websocket.disconnect":
                scopes.append(msg)
                return
            if msg.get("text") is not None:
                await send({"type": "websocket.send", "text": msg["text"].upper()})
            else:
                await send({"type": "websocket.send", "bytes": msg["bytes"][::-1]})

    async def client(port: int, srv: HTTPServer) -> None:
        async with connect(
            f"ws://127.0.0.1:{port}/chat%20room?x=1", subprotocols=["a", "b"], additional_headers={"X-Hi": "there"}
        ) as c:
            assert c.subprotocol == "b" and c.response.headers["x-app"] == "1"
            await c.send("hello")
            assert await c.recv() == "HELLO"
            await c.send(b"\x01\x02")
            assert await c.recv() == b"\x02\x01"
            await c.close(4000, "done")
        assert await until(lambda: len(scopes) == 2)

    serve(h, app_of(body), client)
    scope, disconnect = scopes
    assert scope["type"] == "websocket" and scope["asgi"] == {"version": "3.0", "spec_version": "2.4"}
    assert scope["path"] == "/chat room" and scope["raw_path"] == b"/chat%20room"
    assert scope["query_string"] == b"x=1" and scope["scheme"] == "ws" and scope["http_version"] == "1.1"
    assert scope["subprotocols"] == ["a", "b"] and (b"x-hi", b"there") in scope["headers"]
    assert scope["client"][0] == "127.0.0.1" and scope["server"][0] == "127.0.0.1"
    assert "websocket.http.response" in scope["extensions"]
    assert disconnect == {"type": "websocket.disconnect", "code": 4000, "reason": "done"}


def test_close_before_accept_is_403_and_the_app_sees_1006(h) -> None:
    seen: list[Any] = []

    async def body(scope: dict, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.close", "code": 1008})
        seen.append(await receive())

    async def client(port: int, srv: HTTPServer) -> None:
        with pytest.raises(InvalidStatus) as e:
            await connect(f"ws://127.0.0.1:{port}/ws")
        assert e.value.response.status_code == 403

    serve(h, app_of(body), client)
    assert seen == [{"type": "websocket.disconnect", "code": 1006, "reason": ""}]


def test_the_http_response_extension_denies_with_the_apps_answer(h) -> None:
    async def body(scope: dict, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.http.response.start", "status": 401, "headers": [(b"x-why", b"token")]})
        await send({"type": "websocket.http.response.body", "body": b"no ", "more_body": True})
        await send({"type": "websocket.http.response.body", "body": b"entry\n"})

    async def client(port: int, srv: HTTPServer) -> None:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(handshake())
        status, headers, _ = await read_head(r)
        assert status == 401 and headers[b"x-why"] == b"token"
        rest = await r.read()  # chunked, then the close
        assert b"no " in rest and b"entry\n" in rest
        w.close()

    serve(h, app_of(body), client)


ERRORS = {
    # (what the app does, where it fails, the words of the RuntimeError, what the client sees)
    "send-before-accept": ([{"type": "websocket.send", "text": "x"}], "before websocket.accept", 500),
    "wrong-type-pending": ([{"type": "http.response.start", "status": 200}], "expected websocket.accept", 500),
    "bad-status": ([{"type": "websocket.http.response.start", "status": 99}], "invalid status", 500),
    "both-text-and-bytes": (
        [{"type": "websocket.accept"}, {"type": "websocket.send", "text": "a", "bytes": b"b"}],
        "both 'text' and 'bytes'",
        1011,
    ),
    "neither": ([{"type": "websocket.accept"}, {"type": "websocket.send"}], "neither 'text' nor 'bytes'", 1011),
    "wrong-type-open": (
        [{"type": "websocket.accept"}, {"type": "http.response.body", "body": b""}],
        "unexpected message type 'http.response.body'",
        1011,
    ),
    "accept-twice": ([{"type": "websocket.accept"}, {"type": "websocket.accept"}], "accept sent twice", 1011),
    "send-after-close": (
        [{"type": "websocket.accept"}, {"type": "websocket.close"}, {"type": "websocket.send", "text": "x"}],
        "websocket.send after websocket.close",
        1000,
    ),
    "body-without-start": (
        [{"type": "websocket.http.response.start", "status": 200}, {"type": "websocket.send", "text": "x"}],
        "expected websocket.http.response.body",
        500,  # nothing of the app's response was written yet
    ),
    "close-code-not-to-send": (
        [{"type": "websocket.accept"}, {"type": "websocket.close", "code": 1006}],
        "websocket.close: ",
        1011,
    ),
    "close-reason-too-long": (
        [{"type": "websocket.accept"}, {"type": "websocket.close", "code": 1000, "reason": "x" * 124}],
        "123 bytes",
        1011,
    ),
    "subprotocol-not-offered": ([{"type": "websocket.accept", "subprotocol": "zz"}], "was not offered", 500),
    # a header the 101 cannot carry: the app's error, not a connection left hanging
    "header-name-not-a-token": (
        [{"type": "websocket.accept", "headers": [(b"x bad", b"v")]}],
        "websocket.accept: ",
        500,
    ),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_every_asgi_error_raises_in_the_app_and_closes_cleanly(h, case: str) -> None:
    messages, words, outcome = ERRORS[case]

    async def body(scope: dict, receive: Any, send: Any) -> None:
        await receive()
        for m in messages:
            await send(m)

    async def client(port: int, srv: HTTPServer) -> None:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(handshake())
        status, _, _ = await read_head(r)
        if outcome >= 1000:
            assert status == 101
            op, payload = await read_frame(r)
            assert op == 0x8 and struct.unpack("!H", payload[:2])[0] == outcome
            w.write(close_frame(outcome))
        else:
            assert status == outcome
        assert await r.read() is not None  # to the end: the server closes
        w.close()
        assert await until(lambda: not len(srv.connections))

    serve(h, app_of(body), client)
    assert len(raised) == 1 and isinstance(raised[0], RuntimeError), raised
    assert words in str(raised[0]), str(raised[0])
    app_errors(h)


def test_an_app_that_raises_after_accept_is_1011_and_before_is_500(h) -> None:
    async def body(scope: dict, receive: Any, send: Any) -> None:
        await receive()
        if scope["path"] == "/after":
            await send({"type": "websocket.accept"})
        raise ValueError("app bug")

    async def client(port: int, srv: HTTPServer) -> None:
        with pytest.raises(InvalidStatus) as e:
            await connect(f"ws://127.0.0.1:{port}/before")
        assert e.value.response.status_code == 500
        async with connect(f"ws://127.0.0.1:{port}/after") as c:
            with pytest.raises(ConnectionClosed):
                await c.recv()
            assert c.close_code == 1011

    serve(h, app_of(body), client)
    assert len(app_errors(h)) == 2


def test_an_app_that_returns_without_answering_is_500(h) -> None:
    async def body(scope: dict, receive: Any, send: Any) -> None:
        await receive()

    async def client(port: int, srv: HTTPServer) -> None:
        with pytest.raises(InvalidStatus) as e:
            await connect(f"ws://127.0.0.1:{port}/ws")
        assert e.value.response.status_code == 500

    serve(h, app_of(body), client)
    assert len(app_errors(h)) == 1


def test_receive_after_disconnect_raises_and_send_after_the_peer_closed_raises(h) -> None:
    done = asyncio.Event()

    async def body(scope: dict, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        assert (await receive())["type"] == "websocket.disconnect"
        try:
            with pytest.raises(ConnectionError, match="after websocket.disconnect"):
                await receive()
            with pytest.raises(ConnectionError, match="after the client closed"):
                await send({"type": "websocket.send", "text": "late"})
        finally:
            done.set()

    async def client(port: int, srv: HTTPServer) -> None:
        async with connect(f"ws://127.0.0.1:{port}/ws"):
            pass
        await asyncio.wait_for(done.wait(), 10)

    serve(h, app_of(body), client)
    assert raised == []


def test_a_full_queue_pauses_reading_until_the_app_receives(h) -> None:
    go = asyncio.Event()
    got: list[str] = []

    async def body(scope: dict, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await go.wait()  # not receiving: the queue fills
        while True:
            msg = await receive()
            if msg["type"] == "websocket.disconnect":
                return
            got.append(msg["text"])
            if len(got) == 20:
                await send({"type": "websocket.send", "text": "all"})

    async def client(port: int, srv: HTTPServer) -> None:
        r, w, _ = await opened(port)
        w.write(b"".join(frame(0x1, str(i).encode()) for i in range(20)))
        assert await until(lambda: any(getattr(c, "read_paused", False) for c in srv.connections))
        ws = next(iter(srv.connections))
        assert len(ws.handler.queue) == 4  # --ws-max-queue: the rest waits unread
        go.set()
        assert await read_frame(r) == (0x1, b"all")
        assert got == [str(i) for i in range(20)]
        assert not ws.read_paused
        w.close()

    serve(h, app_of(body), client, ws=WSConfig(max_queue=4))


def test_a_client_that_never_reads_holds_the_apps_send(h) -> None:
    sent = [0]
    state: dict[str, Any] = {}

    async def body(scope: dict, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        blob = b"y" * 65536
        try:
            while True:
                await send({"type": "websocket.send", "bytes": blob})
                sent[0] += 1
        except ConnectionError:
            state["ended"] = True

    async def client(port: int, srv: HTTPServer) -> None:
        r, w, _ = await opened(port)  # never reads
        assert await until(lambda: any(getattr(c, "write_paused", False) for c in srv.connections))
        n = sent[0]
        for _ in range(50):
            await asyncio.sleep(0)
        assert sent[0] == n  # held in send()
        ws = next(iter(srv.connections))
        assert ws.transport.get_write_buffer_size() < 8 * 1024 * 1024
        w.transport.abort()
        assert await until(lambda: state.get("ended"))

    serve(h, app_of(body), client)


def test_a_starlette_websocket_endpoint(h) -> None:
    async def endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            while True:
                text = await websocket.receive_text()
                await websocket.send_json({"got": text, "path": websocket.url.path})
        except WebSocketDisconnect:
            pass

    app = Starlette(routes=[WebSocketRoute("/live", endpoint)])

    async def client(port: int, srv: HTTPServer) -> None:
        async with connect(f"ws://127.0.0.1:{port}/live") as c:
            await c.send("ping")
            assert await c.recv() == '{"got":"ping","path":"/live"}'
        with pytest.raises(InvalidStatus) as e:  # no such route: Starlette closes before accept
            await connect(f"ws://127.0.0.1:{port}/nowhere")
        assert e.value.response.status_code == 403

    serve(h, app, client)


def test_the_demo_asgi_echo_and_chat(h) -> None:
    async def client(port: int, srv: HTTPServer) -> None:
        async with connect(f"ws://127.0.0.1:{port}/ws") as c:
            await c.send("t")
            assert await c.recv() == "t"
            await c.send(b"b")
            assert await c.recv() == b"b"
        a = await connect(f"ws://127.0.0.1:{port}/ws/chat")
        b = await connect(f"ws://127.0.0.1:{port}/ws/chat")
        await a.send("one")
        await b.send(b"two")
        assert [await a.recv(), await a.recv()] == ["one", b"two"]
        assert [await b.recv(), await b.recv()] == ["one", b"two"]
        await a.close()
        await b.close()

    serve(h, demo.asgi_app, client)


def test_the_drain_sends_1001_to_an_asgi_app_and_it_sees_the_disconnect(h) -> None:
    seen: list[dict] = []

    async def body(scope: dict, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        seen.append(await receive())

    async def main() -> None:
        srv = HTTPServer(app_of(body))
        await srv.start("127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        c = await connect(f"ws://127.0.0.1:{port}/ws")
        stopping = asyncio.ensure_future(srv.shutdown(timeout=10))
        with pytest.raises(ConnectionClosed):
            await c.recv()
        assert c.close_code == 1001
        await stopping
        assert not len(srv.connections)

    h.run(main())
    assert seen == [{"type": "websocket.disconnect", "code": 1001, "reason": "server shutting down"}]


def test_reading_pauses_while_the_app_decides_and_the_frames_wait_for_the_websocket(h) -> None:
    go = asyncio.Event()

    async def body(scope: dict, receive: Any, send: Any) -> None:
        await receive()
        await go.wait()
        await send({"type": "websocket.accept"})
        msg = await receive()
        await send({"type": "websocket.send", "text": msg["text"]})

    async def client(port: int, srv: HTTPServer) -> None:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(handshake())
        (conn,) = list(srv.connections)
        # the bytes after the head are not HTTP's to read: nothing more is, until the accept
        assert await until(lambda: not conn.transport.is_reading())
        w.write(frame(0x1, b"sent early"))
        await w.drain()
        go.set()
        assert (await read_head(r))[0] == 101
        assert await read_frame(r) == (0x1, b"sent early")
        w.close()

    serve(h, app_of(body), client)


def test_a_handshake_accepted_during_the_drain_is_closed_with_1001(h) -> None:
    go = asyncio.Event()

    async def body(scope: dict, receive: Any, send: Any) -> None:
        await receive()
        await go.wait()
        await send({"type": "websocket.accept"})
        await receive()

    async def main() -> None:
        srv = HTTPServer(app_of(body))
        await srv.start("127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(handshake())
        assert await until(lambda: len(srv.connections) == 1)
        stopping = asyncio.ensure_future(srv.shutdown(timeout=10))
        await asyncio.sleep(0)
        go.set()  # accepted after the drain told the HTTP connection
        assert (await read_head(r))[0] == 101
        op, payload = await read_frame(r)
        assert op == 0x8 and struct.unpack("!H", payload[:2])[0] == 1001
        w.write(close_frame(1001))
        await stopping
        assert not len(srv.connections) and not srv.aborted
        w.close()

    h.run(main())


def test_the_scope_says_what_trusted_proxy_headers_say(h) -> None:
    from uringserve.http.forwarded import Forwarding

    scopes: list[dict] = []

    async def body(scope: dict, receive: Any, send: Any) -> None:
        scopes.append(scope)
        await receive()
        await send({"type": "websocket.close"})

    async def client(port: int, srv: HTTPServer) -> None:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(handshake(extra=b"X-Forwarded-For: 203.0.113.7\r\nX-Forwarded-Proto: https\r\n"))
        assert (await read_head(r))[0] == 403
        w.close()

    serve(h, app_of(body), client, forwarding=Forwarding("127.0.0.1"))
    assert scopes[0]["client"][0] == "203.0.113.7" and scopes[0]["scheme"] == "wss"


def test_an_app_that_never_answers_the_handshake_is_cut_with_500(h) -> None:
    async def body(scope: dict, receive: Any, send: Any) -> None:
        await receive()
        await asyncio.Event().wait()  # never

    async def client(port: int, srv: HTTPServer) -> None:
        with pytest.raises(InvalidStatus) as e:
            await connect(f"ws://127.0.0.1:{port}/ws")
        assert e.value.response.status_code == 500
        assert await until(lambda: not len(srv.connections))

    serve(h, app_of(body), client, ws=WSConfig(handshake_timeout=0.3))
    assert len(raised) == 1 and isinstance(raised[0], asyncio.CancelledError)
    errors = app_errors(h)
    assert len(errors) == 1 and "did not answer the WebSocket handshake" in str(errors[0]["exception"])


def test_a_peer_that_ignores_the_drains_1001_is_cut_at_the_drain_timeout_and_the_app_cancelled(h) -> None:
    async def body(scope: dict, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await asyncio.Event().wait()  # never receives: only the abort ends it

    async def main() -> None:
        srv = HTTPServer(app_of(body))
        await srv.start("127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        r, w, _ = await opened(port)
        loop = asyncio.get_running_loop()
        before = len(asyncio.all_tasks(loop))
        await srv.shutdown(timeout=0.3)
        op, payload = await read_frame(r)
        assert op == 0x8 and struct.unpack("!H", payload[:2])[0] == 1001
        assert srv.aborted == 1 and not len(srv.connections)
        assert len(asyncio.all_tasks(loop)) == before - 1  # the app's task is gone
        w.close()

    h.run(main())
    assert len(raised) == 1 and isinstance(raised[0], asyncio.CancelledError)


def test_an_open_asgi_websocket_counts_against_limit_concurrency(h) -> None:
    from uringserve.http import HTTPConfig

    async def body(scope: dict, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await receive()

    async def client(port: int, srv: HTTPServer) -> None:
        async with connect(f"ws://127.0.0.1:{port}/ws"):
            with pytest.raises(InvalidStatus) as e:
                await connect(f"ws://127.0.0.1:{port}/ws")
            assert e.value.response.status_code == 503
        assert await until(lambda: srv.concurrency.in_flight == 0)
        async with connect(f"ws://127.0.0.1:{port}/ws"):  # its slot is free again
            pass

    serve(h, app_of(body), client, config=HTTPConfig(limit_concurrency=1))


def test_a_push_only_app_and_a_peer_that_reads_nothing_end_at_the_ping_timeout(h) -> None:
    """The app never calls receive() (its queue fills, reading pauses) and
    pushes; the peer reads nothing and answers no ping. A missing pong is
    excused while we hold reading only if the peer still takes our bytes:
    this one does not (writes back up), so 1011 ends it at the timeout and
    the app's send raises."""
    state: dict[str, Any] = {}
    go = asyncio.Event()

    async def body(scope: dict, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await go.wait()  # reading is paused by the app's full queue first
        blob = b"y" * 65536
        try:
            while True:
                await send({"type": "websocket.send", "bytes": blob})
        except ConnectionError:
            state["ended"] = True

    async def client(port: int, srv: HTTPServer) -> None:
        r, w, _ = await opened(port)  # never reads
        w.write(frame(0x1, b"a") + frame(0x1, b"b") + frame(0x1, b"c"))  # past max_queue: the server stops reading
        assert await until(lambda: any(getattr(c, "read_paused", False) for c in srv.connections))
        go.set()
        assert await until(lambda: state.get("ended"), timeout=20)
        assert await until(lambda: not len(srv.connections), timeout=20)
        assert srv.ws_stats.close_codes == {1011: 1}
        w.transport.abort()

    serve(h, app_of(body), client, ws=WSConfig(max_queue=1, ping_interval=0.2, ping_timeout=0.2, close_timeout=0.3))
