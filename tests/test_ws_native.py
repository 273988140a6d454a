"""The native WebSocket API (uringserve.ws.accept and WebSocketHandler) on
both loops, the guide's snippet, and the demo served by `uringserve run`:
/ws echo and /ws/chat broadcast for the native and ASGI apps, SIGTERM's
1001, --ws none, the metrics and the access-log line."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import urllib.request
from typing import Any

import pytest
from conftest import Proc, until
from procs import wait_until
from prometheus_client.parser import text_string_to_metric_families
from test_ws_protocol import Echo, Recorder, frame, handshake, native, opened, read_frame, read_head, serve
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect as sync_connect

import apps.http as demo
from uringserve.http import HTTPServer, Request, Response
from uringserve.ws import WebSocketHandler, accept

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_handler_class_gets_an_instance_per_connection_an_instance_is_shared(h) -> None:
    made: list[Any] = []

    class Counted(Echo):
        def __init__(self) -> None:
            made.append(self)

    shared = Recorder()

    def app(request: Request) -> Any:
        return accept(Counted if request.raw_path == b"/each" else shared)

    async def body(port: int, srv: HTTPServer) -> None:
        for path in ("/each", "/each", "/shared", "/shared"):
            async with connect(f"ws://127.0.0.1:{port}{path}") as c:
                await c.send(path)
                assert await c.recv() == path

    serve(h, app, body)
    assert len(made) == 2 and len(shared.connected) == 2 and len(shared.closed) == 2


def test_a_response_refuses_the_handshake_and_accept_on_plain_http_is_a_500(h) -> None:
    def app(request: Request) -> Any:
        if request.ws is not None and request.raw_path == b"/private":
            return Response(b"members only\n", status=403)
        return accept(Echo)  # wrong for a plain request: the handler's bug, answered 500

    async def body(port: int, srv: HTTPServer) -> None:
        with pytest.raises(InvalidStatus) as e:
            await connect(f"ws://127.0.0.1:{port}/private")
        assert e.value.response.status_code == 403 and e.value.response.body == b"members only\n"
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert (await read_head(r))[0] == 500
        w.close()

    serve(h, app, body)
    errors = h.take_errors("HTTP handler failed")
    assert len(errors) == 1 and "is not one" in str(errors[0]["exception"])


def test_an_async_handler_accepts_too(h) -> None:
    async def app(request: Request) -> Any:
        await asyncio.sleep(0)
        return accept(Echo, headers=[(b"X-Async", b"yes")])

    async def body(port: int, srv: HTTPServer) -> None:
        r, w, headers = await opened(port, then=b"")
        assert headers[b"x-async"] == b"yes"
        w.close()

    serve(h, app, body)


def test_send_after_close_raises_and_close_codes_are_checked(h) -> None:
    seen: list[Any] = []

    class Strict(WebSocketHandler):
        def on_message(self, ws: Any, data: Any) -> None:
            with pytest.raises(ValueError):
                ws.close(1005)  # a code an endpoint must not send
            ws.close(4002, "done")
            with pytest.raises(ConnectionError):
                ws.send("after")
            seen.append(ws.closed)

    async def body(port: int, srv: HTTPServer) -> None:
        async with connect(f"ws://127.0.0.1:{port}/ws") as c:
            await c.send("x")
            with pytest.raises(ConnectionClosed):
                await c.recv()
            assert c.close_code == 4002

    serve(h, native(Strict()), body)
    assert seen == [True]


def test_the_demo_native_echo_and_chat(h) -> None:
    async def body(port: int, srv: HTTPServer) -> None:
        async with connect(f"ws://127.0.0.1:{port}/ws") as c:
            await c.send("t")
            assert await c.recv() == "t"
            await c.send(b"\x00b")
            assert await c.recv() == b"\x00b"
        a = await connect(f"ws://127.0.0.1:{port}/ws/chat")
        b = await connect(f"ws://127.0.0.1:{port}/ws/chat")
        await a.send("one")
        await b.send(b"two")
        assert [await a.recv(), await a.recv()] == ["one", b"two"]
        assert [await b.recv(), await b.recv()] == ["one", b"two"]
        await a.close()
        await b.send("three")  # a has left: only b hears it
        assert await b.recv() == "three"
        await b.close()
        assert await until(lambda: not demo.CHAT.handler.members)

    serve(h, demo.app, body)


def test_the_guides_websocket_snippet_runs_against_this_checkout(tmp_path) -> None:
    """tests/test_handlers_doc.py runs every block against the installed
    package; this one runs the WebSocket block against the checkout too."""
    with open(os.path.join(ROOT, "docs", "handlers.md")) as f:
        text = f.read()
    section = text.split("## WebSockets: a native handler", 1)[1]
    code = re.search(r"```python\n(.*?)^```", section, re.S | re.M).group(1)
    (tmp_path / "shout.py").write_text(code)
    out = subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error", str(tmp_path / "shout.py")],
        cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=ROOT),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and out.stderr == "", out.stderr
    assert out.stdout.splitlines() == ["welcome shout.v1", "HELLO", "closed 1000 bye"]


# -- `uringserve run` -------------------------------------------------------------------------
def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


@pytest.mark.parametrize("loop", ["uring", "asyncio"])
@pytest.mark.parametrize("app", ["apps.http:app", "apps.http:asgi_app"], ids=["native", "asgi"])
def test_uringserve_run_serves_the_demo_counts_it_logs_it_and_drains_with_1001(app: str, loop: str) -> None:
    srv = Proc(
        [sys.executable, "-m", "uringserve", "run", app, "--port", "0", "--loop", loop]
        + ["--access-log", "--metrics", "127.0.0.1:0", "--ws-max-size", "1000"]
    )
    try:
        mport = srv.metrics_port()
        url = f"ws://127.0.0.1:{srv.port}"
        with sync_connect(url + "/ws") as c:
            c.send("hello")
            assert c.recv(timeout=10) == "hello"
            c.send(b"x" * 1001)  # over --ws-max-size
            with pytest.raises(ConnectionClosed):
                c.recv(timeout=10)
            assert c.close_code == 1009
        with sync_connect(url + "/ws/chat") as a, sync_connect(url + "/ws/chat") as b:
            a.send("all")
            assert a.recv(timeout=10) == b.recv(timeout=10) == "all"
        assert wait_until(lambda: scrape(mport).get('uringserve_ws_close_total{code="1000"}') == 2)
        m = scrape(mport)
        assert m["uringserve_ws_connections_open"] == 0
        assert m['uringserve_ws_close_total{code="1009"}'] == 1
        assert m['uringserve_ws_messages_total{direction="in"}'] == 2  # hello and all (the large one is refused)
        assert m['uringserve_ws_messages_total{direction="out"}'] == 3  # hello, all twice
        # compressed (the client offers permessage-deflate, on by default): bytes on the wire, counted
        assert m['uringserve_ws_bytes_total{direction="in"}'] > 0
        assert m['uringserve_ws_bytes_total{direction="out"}'] > 0
        with sync_connect(url + "/ws") as held:
            held.send("still")
            assert held.recv(timeout=10) == "still"
            assert wait_until(lambda: scrape(mport).get("uringserve_ws_connections_open") == 1)
            srv.p.terminate()  # SIGTERM: the drain says 1001 and waits for the handshake
            with pytest.raises(ConnectionClosed):
                held.recv(timeout=10)
            assert held.close_code == 1001
        assert srv.p.wait(20) == 0
    finally:
        srv.stop()
    lines = [line for line in srv.output().splitlines() if "uringserve.access" in line and '" 101 ' in line]
    assert len(lines) == 4, srv.output()
    assert all(re.search(r'"GET /ws(/chat)? HTTP/1\.1" 101 \d+ \d+\.\d{6}$', line) for line in lines), lines


def test_uringserve_run_ws_none() -> None:
    srv = Proc([sys.executable, "-m", "uringserve", "run", "apps.http:app", "--port", "0", "--ws", "none"])
    try:
        with pytest.raises(InvalidStatus) as e:
            sync_connect(f"ws://127.0.0.1:{srv.port}/ws")
        assert e.value.response.status_code == 500  # the handler's accept() on a plain request
        assert "--ws none" in srv.wait_line(lambda line: "--ws none" in line, 10)
    finally:
        srv.stop()


def test_raw_frames_reach_the_demo_through_uringserve_run() -> None:
    srv = Proc([sys.executable, "-m", "uringserve", "run", "apps.http:app", "--port", "0"])

    async def talk() -> None:
        r, w, _ = await opened(srv.port, then=b"")
        w.write(frame(0x1, b"raw"))
        assert await read_frame(r) == (0x1, b"raw")
        w.close()

    try:
        asyncio.run(asyncio.wait_for(talk(), 20))
    finally:
        srv.stop()
    assert handshake()  # the same bytes the in-process tests send


def test_a_handler_that_raises_closes_1011_and_bad_accept_headers_are_a_500(h) -> None:
    """A native handler's own failure is the peer's 1011 close, not a
    half-switched connection (on_connect) or a reset (on_message); accept
    headers the 101 cannot carry are the handler's error, answered 500."""

    class Broken(Echo):
        def on_connect(self, ws: Any) -> None:
            raise ZeroDivisionError("on_connect")

    class BrokenLater(Echo):
        def on_message(self, ws: Any, data: Any) -> None:
            raise ZeroDivisionError("on_message")

    def app(request: Request) -> Any:
        if request.raw_path == b"/connect":
            return accept(Broken)
        if request.raw_path == b"/message":
            return accept(BrokenLater)
        return accept(Echo, headers=[(b"x bad", b"v")])

    async def body(port: int, srv: HTTPServer) -> None:
        for path in ("/connect", "/message"):
            async with connect(f"ws://127.0.0.1:{port}{path}") as c:
                with pytest.raises(ConnectionClosed) as e:
                    await c.send("x")
                    await c.recv()
                assert e.value.rcvd is not None and e.value.rcvd.code == 1011, path
        with pytest.raises(InvalidStatus) as e2:
            await connect(f"ws://127.0.0.1:{port}/bad-header")
        assert e2.value.response.status_code == 500

    serve(h, app, body)
    assert len(h.take_errors("WebSocket handler's on_connect failed")) == 1
    assert len(h.take_errors("WebSocket handler's on_message failed")) == 1
    assert len(h.take_errors("HTTP handler failed")) == 1


def test_a_pause_in_on_connect_holds_the_frames_that_came_with_the_handshake(h) -> None:
    """on_connect pauses reading: the frames pipelined behind the handshake
    (fed by the hand-off) and those after wait until it resumes, then come
    in order. The hand-off resumed the transport after on_connect once,
    undoing the pause."""
    got: list[Any] = []

    class Paused(Echo):
        def on_connect(self, ws: Any) -> None:
            ws.pause_reading()
            got.append(ws)

        def on_message(self, ws: Any, data: Any) -> None:
            got.append(data)
            ws.send(data)

    async def body(port: int, srv: HTTPServer) -> None:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(handshake() + frame(0x1, b"one") + frame(0x1, b"two"))
        assert (await read_head(r))[0] == 101
        assert await until(lambda: got and got[0].bytes_in > 0)  # the pipelined frames reached the WebSocket
        w.write(frame(0x1, b"three"))
        for _ in range(20):
            await asyncio.sleep(0)
        ws = got[0]
        assert got[1:] == [] and ws.read_paused, got[1:]
        ws.resume_reading()
        for want in (b"one", b"two", b"three"):
            assert await read_frame(r) == (0x1, want)
        assert got[1:] == ["one", "two", "three"]
        w.close()

    serve(h, native(Paused), body)
