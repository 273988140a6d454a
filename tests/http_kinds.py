"""Every handler kind the server runs, answering the same routes with the
same bytes: the `kind` fixture. Options that wrap the request path (the
access log, metrics: the protocol's observer) are tested with every kind
through it (tests/test_access_log.py, tests/test_metrics.py), so a wrapper
that works for one front end and breaks another fails a test. A new front
end (WSGI, WebSockets) is a new entry in KINDS.

This module is the fixture and its routes; test_http_kinds.py checks that
every kind answers them byte for byte, with and without an observer.

The routes (ROUTES: what each answers, byte for byte, and what an observer
must see):
    HEAD /         200, the GET's head, no body
    GET  /         200, "Hello, world!\\n" with its length
    POST /echo     200, the body back
    GET  /stream   200, three parts, chunked
    GET  /file     200, a file sent by the ring (FileResponse, http.response.pathsend)
    GET  /slow     200, chunked, after SLOW seconds (a latency the histogram must place)
    GET  /nope     404
    GET  /boom     the handler raises before answering: the server's 500
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from http_client import Resp, exchange
from procs import ROOT

from uringserve.http import FileResponse, HTTPConfig, HTTPServer, Request, Response, StreamingResponse
from uringserve.http.framing import HANDLER_FAILED, error_body
from uringserve.http.static import FileCache

FILE = os.path.join(ROOT, "apps", "static", "index.html")
with open(FILE, "rb") as _f:
    FILE_BYTES = _f.read()
SLOW = 0.06  # seconds /slow waits: beyond the histogram's 0.05 bucket, whatever the load
HELLO = b"Hello, world!\n"
PARTS = (b"part0;", b"part1;", b"part2;")
TEXT = "text/plain; charset=utf-8"
CLOSE = b"\r\nConnection: close\r\n\r\n"


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    status: int
    body: bytes  # the response body (a HEAD response's: none)
    headers: dict[str, str]  # every header but Date, as the client sees them
    request_body: bytes = b""

    @property
    def request(self) -> bytes:
        head = f"{self.method} {self.path} HTTP/1.1\r\nHost: t\r\n"
        if self.request_body:
            head += f"Content-Length: {len(self.request_body)}\r\n"
        return head.encode() + b"\r\n" + self.request_body


def _length(body: bytes, ctype: str = TEXT, **more: str) -> dict[str, str]:
    return {"server": "uringserve", "content-type": ctype, "content-length": str(len(body)), **more}


_CHUNKED = {"server": "uringserve", "content-type": TEXT, "transfer-encoding": "chunked"}
FAILED_BODY = error_body(500, HANDLER_FAILED)
ROUTES = [  # HEAD first: tests/http_client.py parses a HEAD response that begins what it reads
    Route("HEAD", "/", 200, b"", _length(HELLO)),
    Route("GET", "/", 200, HELLO, _length(HELLO)),
    Route("POST", "/echo", 200, b"hello", _length(b"hello", "application/octet-stream"), b"hello"),
    Route("GET", "/stream", 200, b"".join(PARTS), _CHUNKED),
    Route("GET", "/file", 200, FILE_BYTES, _length(FILE_BYTES, "text/html")),
    Route("GET", "/slow", 200, b"slow\n", _CHUNKED),
    Route("GET", "/nope", 404, b"not found\n", _length(b"not found\n")),
    Route("GET", "/boom", 500, FAILED_BODY, _length(FAILED_BODY)),
]


# ---- the kinds --------------------------------------------------------------------


class Boom(RuntimeError):
    """What /boom raises (the test takes it from the loop's exception handler)."""


async def _parts() -> Any:
    for p in PARTS:
        yield p


async def _slow() -> Any:
    await asyncio.sleep(SLOW)
    yield b"slow\n"


def native_app(files: FileCache, is_async: bool) -> Callable[[Request], Any]:
    def answer(req: Request, body: bytes = b"") -> Any:
        path = req.raw_path
        if path == b"/":
            return Response(HELLO)
        if path == b"/echo":
            return Response(body or req.content, content_type="application/octet-stream")
        if path == b"/stream":
            return StreamingResponse(_parts(), content_type=TEXT)
        if path == b"/file":
            f = files.open(FILE)
            return FileResponse(f, 0, f.size, headers=[("content-type", "text/html")])
        if path == b"/slow":
            return StreamingResponse(_slow(), content_type=TEXT)
        if path == b"/boom":
            raise Boom("boom")
        return Response(b"not found\n", status=404)

    if not is_async:
        return answer

    async def answer_async(req: Request) -> Any:
        return answer(req, await req.body())  # a coroutine reads its body itself

    return answer_async


async def asgi_app(scope: dict, receive: Any, send: Any) -> None:
    if scope["type"] != "http":  # no lifespan (the tutorial shape: auto serves it)
        return
    path = scope["path"]

    async def whole(status: int, body: bytes, ctype: bytes = TEXT.encode()) -> None:
        headers = [(b"content-type", ctype), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def chunked(parts: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", TEXT.encode())]})
        async for p in parts:
            await send({"type": "http.response.body", "body": p, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    if path == "/":
        await whole(200, HELLO)
    elif path == "/echo":
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        await whole(200, body, b"application/octet-stream")
    elif path == "/stream":
        await chunked(_parts())
    elif path == "/file":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/html")]})
        await send({"type": "http.response.pathsend", "path": FILE})
    elif path == "/slow":
        await chunked(_slow())
    elif path == "/boom":
        raise Boom("boom")
    else:
        await whole(404, b"not found\n")


@dataclass
class Kind:
    name: str
    app: Any
    interface: str
    demo: str  # the same kind in the demo app, for `uringserve run` (apps/http.py)


KINDS = ["native-sync", "native-async", "asgi"]


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> Iterator[Kind]:
    """Each handler kind (see the module). Put it after `h` in a test's
    arguments: its open files close before h checks for leaked fds."""
    files = FileCache()
    name = request.param
    if name == "asgi":
        yield Kind(name, asgi_app, "asgi", "apps.http:asgi_app")
    else:
        yield Kind(name, native_app(files, name == "native-async"), "native", "apps.http:app")
    files.close()


def serve(h: Any, kind: Kind, config: HTTPConfig | None = None, observer: Any = None) -> list[Resp]:
    """Every route, pipelined on one connection, through `kind` served with
    `config` and `observer`: the responses, checked against ROUTES."""
    # the last request closes the connection: nothing but ROUTES reaches an observer
    wire = b"".join(r.request for r in ROUTES[:-1]) + ROUTES[-1].request.replace(b"\r\n\r\n", CLOSE, 1)
    heads = {i for i, r in enumerate(ROUTES) if r.method == "HEAD"}

    async def main() -> Any:
        srv = HTTPServer(kind.app, interface=kind.interface, config=config)
        srv.observer = observer
        await srv.start("127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        try:
            return await asyncio.to_thread(exchange, port, wire, responses=len(ROUTES), head_for=heads)
        finally:
            await srv.shutdown(timeout=5)

    result = h.run(main(), timeout=60)
    failures = h.take_errors("HTTP handler failed")
    assert [type(e["exception"]) for e in failures] == [Boom]  # /boom's, reported once
    check_responses(result.responses, result.raw)
    return result.responses


def check_responses(responses: list[Resp], raw: bytes) -> None:
    assert len(responses) == len(ROUTES), responses
    for i, (route, resp) in enumerate(zip(ROUTES, responses, strict=True)):
        headers = {k: v for k, v in resp.headers.items() if k != "date"}
        want = route.headers if i < len(ROUTES) - 1 else {**route.headers, "connection": "close"}
        assert (resp.status, headers, resp.body) == (route.status, want, route.body), route.path
        assert re.fullmatch(r"\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT", resp.headers["date"])
    assert raw.count(b"HTTP/1.1 ") == len(ROUTES)  # nothing else on the wire
