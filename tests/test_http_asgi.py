"""The ASGI adapter with a real Starlette app, on both loops: routing,
request bodies, streaming responses, lifespan startup/shutdown and state,
errors, pathsend (zero-copy files), and the demo app's ASGI routes."""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any

import pytest
from http_client import exchange
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route
from test_http_server import H, run

from uringserve.http import HTTPServer

events: list[str] = []


def make_app(tmp_file: str) -> Starlette:
    async def hello(request: Request) -> Any:
        return PlainTextResponse(f"hello {request.path_params['name']} {request.app.state.greeting}")

    async def echo(request: Request) -> Any:
        return PlainTextResponse(await request.body(), media_type="application/octet-stream")

    async def count(request: Request) -> Any:
        n = 0
        async for chunk in request.stream():
            n += len(chunk)
        return JSONResponse({"bytes": n, "query": dict(request.query_params)})

    async def stream(request: Request) -> Any:
        async def gen():
            for i in range(4):
                yield f"tick{i}\n"
                await asyncio.sleep(0.01)

        return StreamingResponse(gen(), media_type="text/plain")

    async def boom(request: Request) -> Any:
        raise RuntimeError("starlette handler bug")

    async def file(request: Request) -> Any:
        return FileResponse(tmp_file)  # Starlette uses http.response.pathsend when offered

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        events.append("startup")
        app.state.greeting = "from lifespan"
        yield
        events.append("shutdown")

    return Starlette(
        routes=[
            Route("/hello/{name}", hello),
            Route("/echo", echo, methods=["POST"]),
            Route("/count", count, methods=["POST"]),
            Route("/stream", stream),
            Route("/boom", boom),
            Route("/file", file),
        ],
        lifespan=lifespan,
    )


@pytest.fixture
def blob(tmp_path):
    data = os.urandom(1024 * 1024 + 3)
    p = tmp_path / "blob.bin"
    p.write_bytes(data)
    return str(p), data


def test_starlette_routes_bodies_streams_and_lifespan(h, blob) -> None:
    path, data = blob
    events.clear()
    body = os.urandom(300_000)
    chunked = (
        b"".join(
            b"%x\r\n%s\r\n" % (len(body[i : i + 100_000]), body[i : i + 100_000]) for i in range(0, len(body), 100_000)
        )
        + b"0\r\n\r\n"
    )
    reqs = (
        b"GET /hello/ann HTTP/1.1\r\n"
        + H
        + b"\r\n"
        + b"POST /echo HTTP/1.1\r\n"
        + H
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
        + b"POST /count?a=1 HTTP/1.1\r\n"
        + H
        + b"Transfer-Encoding: chunked\r\n\r\n"
        + chunked
        + b"GET /stream HTTP/1.1\r\n"
        + H
        + b"\r\n"
        + b"GET /missing HTTP/1.1\r\n"
        + H
        + b"\r\n"
        + b"GET /file HTTP/1.1\r\n"
        + H
        + b"\r\n"
    )
    r = run(h, make_app(path), lambda port: exchange(port, reqs, responses=6))
    got = [(x.status, x.body) for x in r.responses]
    assert got[0] == (200, b"hello ann from lifespan")
    assert got[1] == (200, body)
    assert got[2] == (200, b'{"bytes":300000,"query":{"a":"1"}}')
    assert got[3] == (200, b"tick0\ntick1\ntick2\ntick3\n")
    assert r.responses[3].header("transfer-encoding") == "chunked"
    assert got[4][0] == 404
    assert got[5] == (200, data) and r.responses[5].header("content-length") == str(len(data))
    assert not r.closed
    assert events == ["startup", "shutdown"]
    if h.uring:
        assert h.loop.ring_stats()["file_bytes"] >= len(data)  # pathsend went through the ring


def test_starlette_errors_are_500_and_the_connection_survives(h, blob) -> None:
    path, _ = blob
    reqs = b"GET /boom HTTP/1.1\r\n" + H + b"\r\n" + b"GET /hello/bo HTTP/1.1\r\n" + H + b"\r\n"
    r = run(h, make_app(path), lambda port: exchange(port, reqs, responses=2))
    assert [x.status for x in r.responses] == [500, 200]
    # Starlette answers 500 itself, then re-raises: logged once, with the app's exception
    errors = h.take_errors("HTTP handler failed")
    assert [str(e["exception"]) for e in errors] == ["starlette handler bug"]


def test_raw_asgi_contract(h) -> None:
    seen: dict[str, Any] = {}

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            raise RuntimeError("no lifespan here")  # auto mode: runs without
        seen.update(
            {k: scope[k] for k in ("http_version", "method", "path", "raw_path", "query_string", "scheme", "root_path")}
        )
        seen["headers"] = scope["headers"]
        seen["client"] = scope["client"]
        seen["async"] = asyncio.iscoroutinefunction(receive) and asyncio.iscoroutinefunction(send)
        msg = await receive()
        seen["first"] = msg
        await send(
            {"type": "http.response.start", "status": 201, "headers": [(b"x-a", b"1"), (b"content-length", b"2")]}
        )
        await send({"type": "http.response.body", "body": b"o", "more_body": True})
        await send({"type": "http.response.body", "body": b"k"})
        seen["after"] = await receive()

    req = b"PUT /a%20b?q=1 HTTP/1.1\r\n" + H + b"X-Y: z\r\nContent-Length: 2\r\n\r\nhi"
    r = run(h, app, lambda port: exchange(port, req), interface="asgi")
    assert r.responses[0].status == 201 and r.responses[0].body == b"ok"
    assert r.responses[0].header("content-length") == "2" and r.responses[0].header("x-a") == "1"
    assert seen["method"] == "PUT" and seen["path"] == "/a b" and seen["raw_path"] == b"/a%20b"
    assert seen["query_string"] == b"q=1" and seen["http_version"] == "1.1" and seen["scheme"] == "http"
    assert (b"x-y", b"z") in seen["headers"]
    assert seen["first"] == {"type": "http.request", "body": b"hi", "more_body": False}
    assert seen["after"] == {"type": "http.disconnect"}
    assert seen["client"][0] == "127.0.0.1"
    assert seen["async"]  # asgiref and others ask before they await


def test_app_framing_headers_are_the_servers(h) -> None:
    """An app's Transfer-Encoding and Connection never reach the wire as it
    wrote them: the server frames the body, and `Connection: close` from the
    app (in any of several Connection fields) closes after the response."""

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            raise RuntimeError("no lifespan here")
        headers = [(b"Transfer-Encoding", b"chunked"), (b"X-K", b"v")]
        if scope["path"] == "/close":
            headers += [(b"Connection", b"keep-alive"), (b"connection", b"Close")]
        elif scope["path"] == "/close-list":
            headers += [(b"Connection", b"keep-alive ,close")]
        elif scope["path"] == "/not-close":
            headers += [(b"Connection", b"closed, x-close")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"abc"})

    for last in (b"/close", b"/close-list"):
        reqs = b"".join(b"GET %s HTTP/1.1\r\n%s\r\n" % (p, H) for p in (b"/keep", b"/not-close", last, b"/keep"))
        r = run(h, app, lambda port, reqs=reqs: exchange(port, reqs, responses=3), interface="asgi")
        first, second, third = r.responses
        assert (first.body, first.header("content-length"), first.header("x-k")) == (b"abc", "3", "v")
        assert first.header("transfer-encoding") is None and first.header("connection") is None
        assert second.header("connection") is None  # not the `close` option: dropped, kept alive
        assert third.body == b"abc" and third.header("connection") == "close" and r.closed
        assert r.raw.lower().count(b"transfer-encoding") == 0 and r.raw.count(b"HTTP/1.1 ") == 3


@pytest.mark.parametrize("misbehaviour", ["no-response", "body-before-start", "short-body"])
def test_asgi_apps_that_break_the_protocol(h, misbehaviour: str) -> None:
    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            raise RuntimeError("no lifespan")
        if misbehaviour == "body-before-start":
            await send({"type": "http.response.body", "body": b"x"})
        elif misbehaviour == "short-body":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"10")]})
            await send({"type": "http.response.body", "body": b"abc"})

    r = run(h, app, lambda port: exchange(port, b"GET / HTTP/1.1\r\n" + H + b"\r\n"), interface="asgi")
    if misbehaviour == "short-body":
        # the promised length cannot be met: what was sent goes, then the connection ends
        assert r.closed and b"\r\n\r\nabc" in r.raw and r.raw.endswith(b"abc")
    else:
        assert r.responses[0].status == 500
    assert h.take_errors()


def test_pathsend_longer_than_the_content_length_is_the_apps_error(h, tmp_path) -> None:
    """A file longer than the Content-Length the app declared: its send()
    raises, saying so, and the response is not finished with bytes it did not promise."""
    path = tmp_path / "ten.txt"
    path.write_bytes(b"0123456789")
    raised: list[str] = []

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            raise RuntimeError("no lifespan")
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"3")]})
        try:
            await send({"type": "http.response.pathsend", "path": str(path)})
        except RuntimeError as exc:
            raised.append(str(exc))
            raise

    r = run(h, app, lambda port: exchange(port, b"GET / HTTP/1.1\r\n" + H + b"\r\n"), interface="asgi")
    assert raised == ["file range longer than the response's Content-Length"]
    assert b"0123456789" not in r.raw
    assert h.take_errors()


def test_lifespan_failure_stops_startup(h) -> None:
    async def app(scope, receive, send):
        assert scope["type"] == "lifespan"
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "database unreachable"})

    async def main():
        with pytest.raises(RuntimeError, match="database unreachable"):
            await HTTPServer(app, interface="asgi").start("127.0.0.1", 0)

    h.run(main())


def test_interface_detection() -> None:
    async def asgi(scope, receive, send): ...

    def native(request): ...

    assert HTTPServer(asgi).interface == "asgi"
    assert HTTPServer(native).interface == "native"
    with pytest.raises(TypeError, match="takes 4 arguments"):
        HTTPServer(lambda a, b, c, d: None)


def test_demo_app_in_both_interfaces(h) -> None:
    import importlib

    demo = importlib.import_module("apps.http")
    reqs = (
        b"GET / HTTP/1.1\r\n"
        + H
        + b"\r\n"
        + b"POST /echo HTTP/1.1\r\n"
        + H
        + b"Content-Length: 4\r\n\r\nping"
        + b"GET /static/index.html HTTP/1.1\r\n"
        + H
        + b"\r\n"
        + b"GET /stats HTTP/1.1\r\n"
        + H
        + b"\r\n"
    )
    for target in (demo.app, demo.asgi_app):
        r = run(h, target, lambda port: exchange(port, reqs, responses=4))
        assert [x.status for x in r.responses] == [200, 200, 200, 200]
        assert r.responses[0].body == b"Hello, world!\n" and r.responses[1].body == b"ping"
        assert b"<h1>uringserve</h1>" in r.responses[2].body
        assert r.responses[3].header("content-type") == "application/json"
    demo.STATIC.close()


def test_header_injection_is_refused(h) -> None:
    """A CR or LF in a response header would split the response: the app
    gets an error (500), and the injected header never reaches the wire."""

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            raise RuntimeError("no lifespan")
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-a", b"1\r\nSet-Cookie: evil=1")]})
        await send({"type": "http.response.body", "body": b"x"})

    r = run(h, app, lambda port: exchange(port, b"GET / HTTP/1.1\r\n" + H + b"\r\n"), interface="asgi")
    assert r.responses[0].status == 500 and b"evil" not in r.raw
    assert h.take_errors("HTTP handler failed")

    from uringserve.http import Response

    with pytest.raises(ValueError, match="invalid response header"):
        Response(b"x", headers={"X-A": "1\r\nSet-Cookie: evil=1"})


def test_a_receive_waiting_when_the_response_ends_gets_disconnect(h) -> None:
    """Starlette's StreamingResponse listens for http.disconnect while it
    sends: a receive() pending when the response completes returns
    http.disconnect then, on a connection that stays open, not when the
    client finally leaves."""
    import threading

    woken = threading.Event()

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            raise RuntimeError("no lifespan")
        await receive()  # the (empty) body
        waiter = asyncio.ensure_future(receive())
        await asyncio.sleep(0)  # the waiter is waiting
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})
        if await asyncio.wait_for(waiter, 20) == {"type": "http.disconnect"}:
            woken.set()

    def client(port: int) -> tuple[bytes, bool]:
        import socket

        with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
            s.sendall(b"GET / HTTP/1.1\r\n" + H + b"\r\n")
            data = b""
            while not data.endswith(b"ok"):
                data += s.recv(1000)
            return data, woken.wait(10)  # the connection is still open meanwhile

    data, was_woken = run(h, app, client, interface="asgi")
    assert data.startswith(b"HTTP/1.1 200 ") and b"connection: close" not in data.lower()
    assert was_woken, "receive() pending at the response's end was not answered with http.disconnect"


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
def test_nothing_after_a_last_request_is_answered(h, bytewise: bool) -> None:
    """As for native handlers (RFC 9112 §9.6): the request after one with
    `Connection: close` gets no answer, not even a 400."""

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            raise RuntimeError("no lifespan")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": scope["path"].encode()})

    reqs = (
        b"GET /first HTTP/1.1\r\n"
        + H
        + b"\r\n"
        + b"GET /last HTTP/1.1\r\n"
        + H
        + b"Connection: close\r\n\r\n"
        + b"GET /after HTTP/1.1\r\n"
        + H
        + b"\r\n"
    )
    r = run(h, app, lambda port: exchange(port, reqs, responses=3, bytewise=bytewise), interface="asgi")
    assert [x.body for x in r.responses] == [b"/first", b"/last"] and r.raw.count(b"HTTP/1.1 ") == 2
    assert r.responses[1].header("connection") == "close" and r.closed
