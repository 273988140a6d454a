"""uringserve.http end to end, on the stdlib loop and on UringEventLoop:
keep-alive, pipelining, HTTP/1.0, bodies both ways, 100-continue, HEAD,
every limit and timeout with its status and whether the connection stays
open, smuggling attempts, handler errors, graceful shutdown. Requests are
sent whole and byte by byte."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from conftest import until
from http_client import exchange

from uringserve.http import HTTPConfig, HTTPServer, Request, Response, StreamingResponse
from uringserve.http.body import ClientDisconnected

H = b"Host: t\r\n"


async def app(req: Request) -> Any:
    """The test handler (async: runs as a task, streams bodies)."""
    path = req.raw_path
    if path == b"/":
        return Response(b"hello")
    if path == b"/echo":
        return Response(await req.body(), content_type="application/octet-stream")
    if path == b"/count":  # reads the body as it streams, answers with its size
        n = 0
        async for chunk in req.stream():
            n += len(chunk)
        return Response(str(n))
    if path == b"/ignore-body":
        return Response(b"not read")
    if path.startswith(b"/sleep/"):
        await asyncio.sleep(int(path[7:]) / 1000)
        return Response(path)
    if path == b"/boom":
        raise ValueError("handler bug")
    if path == b"/boom-late":
        return StreamingResponse(_fail_after_first())
    if path == b"/stream":
        return StreamingResponse(_parts(), content_type="text/plain")
    if path == b"/headers":
        return Response("|".join(f"{k}={v}" for k, v in req.headers.items()))
    return Response(b"nope", status=404)


async def _parts():
    for i in range(5):
        yield b"part%d;" % i
        await asyncio.sleep(0)


async def _fail_after_first():
    yield b"first"
    raise RuntimeError("stream broke")


def sync_app(req: Request) -> Any:
    """A plain function: runs without a task, gets the whole body."""
    if req.raw_path == b"/echo":
        return Response(req.content)
    if req.raw_path == b"/boom":
        raise ValueError("sync handler bug")
    return b"sync:" + req.raw_path


def _plain_hello(req: Request) -> Any:
    return Response(b"p:" + req.raw_path)  # a Response: the one-frame path takes it


async def _async_hello(req: Request) -> Any:
    return Response(b"a:" + req.raw_path)


def _stream_hello(req: Request) -> Any:
    # with its length: HTTP/1.0 keep-alive needs one (else the close ends the body)
    return StreamingResponse([b"s:", req.raw_path], content_length=2 + len(req.raw_path))


def run(h, handler, client, config: HTTPConfig | None = None, **kw) -> Any:
    """Serve `handler`, run the blocking `client(port)` in a thread, shut down."""

    async def main() -> Any:
        srv = HTTPServer(handler, config=config, **kw)
        await srv.start("127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        try:
            return await asyncio.to_thread(client, port)
        finally:
            await srv.shutdown(timeout=2)

    return h.run(main(), timeout=60)


def read_to_close(s: socket.socket) -> bytes:
    data = b""
    while True:
        chunk = s.recv(1000)
        if not chunk:
            return data
        data += chunk


def handler_errors(h) -> list:
    return h.take_errors("HTTP handler failed")


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
def test_keep_alive_and_pipelined_responses_in_order(h, bytewise: bool) -> None:
    # the first request takes longest: its response must still come first
    reqs = (
        b"GET /sleep/150 HTTP/1.1\r\n"
        + H
        + b"\r\n"
        + b"GET /sleep/1 HTTP/1.1\r\n"
        + H
        + b"\r\n"
        + b"POST /echo HTTP/1.1\r\n"
        + H
        + b"Content-Length: 3\r\n\r\nabc"
        + b"GET / HTTP/1.1\r\n"
        + H
        + b"\r\n"
    )
    r = run(h, app, lambda port: exchange(port, reqs, responses=4, bytewise=bytewise))
    assert [x.body for x in r.responses] == [b"/sleep/150", b"/sleep/1", b"abc", b"hello"]
    assert all(x.status == 200 for x in r.responses)
    assert not r.closed  # keep-alive
    first = r.responses[0]
    assert first.header("content-length") == "10" and first.header("server") == "uringserve"
    assert first.header("date").endswith(" GMT")


def test_plain_function_handler_fast_path(h) -> None:
    reqs = (
        b"GET /x HTTP/1.1\r\n"
        + H
        + b"\r\n"
        + b"POST /echo HTTP/1.1\r\n"
        + H
        + b"Transfer-Encoding: chunked\r\n\r\n2\r\nab\r\n1\r\nc\r\n0\r\n\r\n"
        + b"GET /boom HTTP/1.1\r\n"
        + H
        + b"\r\n"
        + b"GET /y HTTP/1.1\r\n"
        + H
        + b"\r\n"
    )
    r = run(h, sync_app, lambda port: exchange(port, reqs, responses=4))
    assert [(x.status, x.body) for x in r.responses][:2] == [(200, b"sync:/x"), (200, b"abc")]
    assert r.responses[2].status == 500 and r.responses[3].body == b"sync:/y"  # still usable after a 500
    assert not r.closed
    assert len(handler_errors(h)) == 1


def test_a_large_prepared_response_is_joined_once_per_date_and_tail(h) -> None:
    """A Response with a body of framing.WHOLE_MIN bytes or more, answered on
    the one-frame path, is written from one bytes object kept per Date and
    connection tail, not joined per request: each request still gets its
    own Date and its version's Connection header, byte-exact, and a HEAD
    gets no body."""
    from uringserve.http import framing

    body = os.urandom(framing.WHOLE_MIN + 123)
    big = Response(body, content_type="application/octet-stream")
    small = Response(b"small")
    seen: list[bytes] = []

    def handler(req: Request) -> Any:
        if req.raw_path == b"/newdate":
            # the next responses must carry a Date they have not seen yet
            framing.DATE[1] = b"Date: Thu, 01 Jan 2099 00:00:00 GMT\r\n"
            framing.DATE[0] = time.time() + 3600  # no refresh meanwhile
            return small
        seen.append(big._whole[2] if big._whole else b"")
        return big

    get = b"GET /big HTTP/1.1\r\n" + H + b"\r\n"
    reqs = (
        get
        + get
        + b"GET /big HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
        + get
        + b"GET /newdate HTTP/1.1\r\n"
        + H
        + b"\r\n"
        + get
    )
    try:
        r = run(h, handler, lambda port: exchange(port, reqs, responses=6))
    finally:
        framing.DATE[0] = 0.0  # refreshed at the next response
    bodies = [x.body for x in r.responses]
    assert bodies == [body, body, body, body, b"small", body]
    assert [x.header("content-length") for x in r.responses] == [str(len(body))] * 4 + ["5", str(len(body))]
    assert r.responses[2].header("connection") == "keep-alive"  # HTTP/1.0's tail, not the cached 1.1 one
    assert r.responses[3].header("connection") is None  # and back
    assert r.responses[5].header("date") == "Thu, 01 Jan 2099 00:00:00 GMT"
    assert r.responses[0].header("date") != r.responses[5].header("date")
    assert not r.closed
    # HEAD (first in its exchange: the test client reads a HEAD response whole)
    head = b"HEAD /big HTTP/1.1\r\n" + H + b"\r\n"
    r = run(h, handler, lambda port: exchange(port, head + get, responses=2, head_for={0}))
    assert [x.body for x in r.responses] == [b"", body]
    assert r.responses[0].header("content-length") == str(len(body))
    # the second request was written from the object the first one joined
    assert seen[1] and seen[1].endswith(body)


def _describe(req: Request) -> Response:
    h = req.headers
    # has_any before anything splits the block: the search, then the split headers
    asks = (h.has_any((b"range", b"if-none-match")), h.has_any((b"range", b"x-a")))
    # absent names: one not in the head at all, one that is only inside a value, one not ASCII
    absent = (h.get("range"), h.get("one", "-"), h.get("ÿ"), h.get("日本"), "X-A" in h, "Range" in h, asks)
    return Response(
        repr(
            (
                req.method,
                req.target,
                req.raw_path,
                req.query_string,
                req.path,
                req.http_version,
                h.get("x-a"),
                req.client[0],
                absent,
                h.raw,
            )
        )
    )


async def _describe_async(req: Request) -> Response:
    return _describe(req)


@pytest.mark.parametrize("handler", [_describe, _describe_async], ids=["plain", "async"])
def test_request_attributes(h, handler) -> None:
    reqs = (
        b"GET /a%20b/c?x=1&y=%41 HTTP/1.1\r\n"
        + H
        + b"X-A: one\r\nx-a: two\r\n\r\n"
        + b"DELETE /h HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
    )
    r = run(h, handler, lambda port: exchange(port, reqs, responses=2))
    assert eval(r.responses[0].body) == (
        "GET",
        b"/a%20b/c?x=1&y=%41",
        b"/a%20b/c",
        b"x=1&y=%41",
        "/a b/c",
        "1.1",
        "one, two",
        "127.0.0.1",
        (None, "-", None, None, True, False, (False, True)),
        [(b"host", b"t"), (b"x-a", b"one"), (b"x-a", b"two")],
    )
    assert eval(r.responses[1].body) == (
        "DELETE",
        b"/h",
        b"/h",
        b"",
        "/h",
        "1.0",
        None,
        "127.0.0.1",
        (None, "-", None, None, False, False, (False, False)),
        [(b"connection", b"keep-alive")],
    )
    assert r.responses[1].header("connection") == "keep-alive" and not r.closed


def test_response_is_immutable_and_encodes_once() -> None:
    resp = Response(b"abc", status=201, headers={"X-K": "v"})
    assert (resp.status, resp.body, resp.headers) == (
        201,
        b"abc",
        [(b"X-K", b"v"), (b"Content-Type", b"text/plain; charset=utf-8")],
    )
    for name in ("status", "body", "headers"):
        with pytest.raises(AttributeError):
            setattr(resp, name, None)
    resp.headers.append((b"X-Other", b"1"))  # a copy: the encoded response is unchanged
    assert len(resp.headers) == 2


def test_http_1_0_with_and_without_keep_alive(h) -> None:
    r = run(h, app, lambda port: exchange(port, b"GET / HTTP/1.0\r\n\r\n"))
    assert r.responses[0].body == b"hello" and r.closed
    assert r.responses[0].header("connection") == "close"
    r = run(h, app, lambda port: exchange(port, b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" * 2, responses=2))
    assert [x.body for x in r.responses] == [b"hello", b"hello"] and not r.closed
    assert r.responses[0].header("connection") == "keep-alive"


def test_connection_close_is_honoured(h) -> None:
    r = run(h, app, lambda port: exchange(port, b"GET / HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n"))
    assert r.responses[0].status == 200 and r.closed
    assert r.responses[0].header("connection") == "close"


@pytest.mark.parametrize("plain", [False, True], ids=["async", "plain"])
def test_handler_connection_header_is_honoured_not_copied(h, plain) -> None:
    """A handler's Connection header is the server's to write, as for ASGI
    apps: `close` (in any field, any case, in a token list) ends the
    connection after that response with one `Connection: close`; any other
    value is dropped, so the client never sees two Connection headers."""
    keep = Response(b"k", headers=[("Connection", "keep-alive"), ("X-A", "1")])
    close = Response(b"c", headers=[(b"connection", b"keep-alive, Close")])
    assert not keep.close and close.close
    assert keep.headers == [(b"X-A", b"1"), (b"Content-Type", b"text/plain; charset=utf-8")]

    def pick(req: Request) -> Any:
        if req.raw_path == b"/keep":
            return keep
        if req.raw_path == b"/stream-close":
            return StreamingResponse([b"s1", b"s2"], headers={"Connection": "close"})
        return close

    async def apick(req: Request) -> Any:
        return pick(req)

    reqs = b"".join(b"GET %s HTTP/1.1\r\n%s\r\n" % (p, H) for p in (b"/keep", b"/keep", b"/close", b"/keep"))
    r = run(h, pick if plain else apick, lambda port: exchange(port, reqs, responses=3))
    assert [x.body for x in r.responses] == [b"k", b"k", b"c"] and r.closed
    assert [x.header("connection") for x in r.responses] == [None, None, "close"]
    assert r.responses[0].header("x-a") == "1"
    assert r.raw.count(b"HTTP/1.1 ") == 3  # the request after the close is not answered
    # HTTP/1.0 keep-alive: the server's own `Connection: keep-alive`, once
    r = run(
        h,
        pick if plain else apick,
        lambda port: exchange(port, b"GET /keep HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" * 2, responses=2),
    )
    assert [x.header("connection") for x in r.responses] == ["keep-alive"] * 2 and not r.closed
    r = run(
        h,
        pick if plain else apick,
        lambda port: exchange(
            port, b"GET /stream-close HTTP/1.1\r\n" + H + b"\r\n" + b"GET /keep HTTP/1.1\r\n" + H + b"\r\n"
        ),
    )
    assert r.responses[0].body == b"s1s2" and r.responses[0].header("connection") == "close" and r.closed
    assert r.raw.count(b"HTTP/1.1 ") == 1


def test_streaming_request_and_response_bodies(h) -> None:
    body = bytes(range(256)) * 2000  # 512 000 bytes, under the 1 MiB default limit
    chunked = (
        b"".join(b"%x\r\n%s\r\n" % (len(body[i : i + 70000]), body[i : i + 70000]) for i in range(0, len(body), 70000))
        + b"0\r\n\r\n"
    )
    reqs = (
        b"POST /count HTTP/1.1\r\n"
        + H
        + b"Transfer-Encoding: chunked\r\n\r\n"
        + chunked
        + b"POST /echo HTTP/1.1\r\n"
        + H
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
        + b"GET /stream HTTP/1.1\r\n"
        + H
        + b"\r\n"
    )
    r = run(h, app, lambda port: exchange(port, reqs, responses=3))
    assert r.responses[0].body == str(len(body)).encode()
    assert r.responses[1].body == body
    assert r.responses[2].body == b"part0;part1;part2;part3;part4;"
    assert r.responses[2].header("transfer-encoding") == "chunked"
    assert r.responses[2].header("content-length") is None
    # HTTP/1.0 gets the stream close-delimited
    r = run(h, app, lambda port: exchange(port, b"GET /stream HTTP/1.0\r\n\r\n"))
    assert r.responses[0].body == b"part0;part1;part2;part3;part4;" and r.closed
    assert r.responses[0].header("transfer-encoding") is None


def test_expect_100_continue(h) -> None:
    req = b"POST /echo HTTP/1.1\r\n" + H + b"Expect: 100-continue\r\nContent-Length: 4\r\n\r\n"

    def client(port: int):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(req)
        interim = s.recv(100)
        s.sendall(b"data")
        rest = b""
        while b"data" not in rest:
            rest += s.recv(1000)
        s.close()
        return interim, rest

    interim, rest = run(h, app, client)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert rest.startswith(b"HTTP/1.1 200 OK\r\n") and rest.endswith(b"data")

    # a handler that answers without reading: no 100, and the unread body closes the connection
    req2 = b"POST /ignore-body HTTP/1.1\r\n" + H + b"Expect: 100-continue\r\nContent-Length: 4\r\n\r\n"
    r = run(h, app, lambda port: exchange(port, req2))
    assert b"100 Continue" not in r.raw
    assert r.responses[0].body == b"not read" and r.closed
    assert r.responses[0].header("connection") == "close"


def test_head_has_headers_but_no_body(h) -> None:
    r = run(
        h,
        app,
        lambda port: exchange(
            port, b"HEAD / HTTP/1.1\r\n" + H + b"\r\n" + b"GET / HTTP/1.1\r\n" + H + b"\r\n", responses=2, head_for={0}
        ),
    )
    assert r.responses[0].status == 200 and r.responses[0].header("content-length") == "5"
    assert r.responses[0].body == b"" and r.responses[1].body == b"hello"
    assert r.raw.count(b"hello") == 1


def test_server_header_is_configurable(h) -> None:
    r = run(
        h, app, lambda port: exchange(port, b"GET / HTTP/1.1\r\n" + H + b"\r\n"), config=HTTPConfig(server_header=None)
    )
    assert r.responses[0].header("server") is None
    r = run(
        h,
        app,
        lambda port: exchange(port, b"GET / HTTP/1.1\r\n" + H + b"\r\n"),
        config=HTTPConfig(server_header="demo/1"),
    )
    assert r.responses[0].header("server") == "demo/1"


def test_handler_exceptions(h, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="uringserve.http")
    r = run(
        h,
        app,
        lambda port: exchange(
            port, b"GET /boom HTTP/1.1\r\n" + H + b"\r\n" + b"GET / HTTP/1.1\r\n" + H + b"\r\n", responses=2
        ),
    )
    assert r.responses[0].status == 500 and r.responses[1].body == b"hello" and not r.closed
    # after the response started, the only honest answer is to cut the connection
    r = run(h, app, lambda port: exchange(port, b"GET /boom-late HTTP/1.1\r\n" + H + b"\r\n"))
    assert r.closed and b"first" in r.raw and b"0\r\n\r\n" not in r.raw
    assert "ending connection mid-response: stream broke" in caplog.messages
    errors = handler_errors(h)
    assert [type(e["exception"]) for e in errors] == [ValueError, RuntimeError]  # logged with the cause
    assert [e["message"] for e in errors] == [
        "HTTP handler failed for GET /boom",
        "HTTP handler failed for GET /boom-late",
    ]


SMALL = HTTPConfig(max_header_bytes=300, max_headers=6, max_target_bytes=64, max_body_bytes=100)


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
@pytest.mark.parametrize(
    "req,status,says",
    [
        (b"GET /" + b"a" * 100 + b" HTTP/1.1\r\n" + H + b"\r\n", 414, b"request target longer than 64 bytes"),
        (b"GET / HTTP/1.1\r\n" + H + b"X: " + b"v" * 400 + b"\r\n\r\n", 431, b"request head larger than 300 bytes"),
        (
            b"GET / HTTP/1.1\r\n" + H + b"".join(b"X%d: v\r\n" % i for i in range(8)) + b"\r\n",
            431,
            b"more than 6 header fields",
        ),
        (
            b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: 101\r\n\r\n" + b"x" * 101,
            413,
            b"request body of 101 bytes is larger than 100 bytes",
        ),
        (
            b"POST /echo HTTP/1.1\r\n"
            + H
            + b"Transfer-Encoding: chunked\r\n\r\n40\r\n"
            + b"x" * 64
            + b"\r\n40\r\n"
            + b"x" * 64
            + b"\r\n0\r\n\r\n",
            413,
            b"request body larger than 100 bytes",
        ),
        (
            b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
            b"malformed request: Transfer-Encoding can't be present with Content-Length",
        ),
        (
            b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
            400,
            b"malformed request: Duplicate Content-Length",
        ),
        (
            b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\nz\r\n",
            400,
            b"malformed request: Invalid character in chunk size",
        ),
        (
            b"GET / HTTP/1.1\r\n" + H + b"X: a\r\n folded\r\n\r\n",
            400,
            b"malformed request: Unexpected whitespace after header value",
        ),
        (b"GET / HTTP/1.1\n" + H + b"\n", 400, b"malformed request: Expected CRLF after version"),
        (b"garbage\r\n\r\n", 400, b"malformed request: Invalid method encountered"),
        (b"GET / HTTP/1.1\r\n\r\n", 400, b"an HTTP/1.1 request needs exactly one Host header"),
        (b"GET / HTTP/1.1\r\n" + H + H + b"\r\n", 400, b"an HTTP/1.1 request needs exactly one Host header"),
        (
            b"POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
            b"Transfer-Encoding in an HTTP/1.0 request",
        ),
        (b"GET / HTTP/2.0\r\n" + H + b"\r\n", 505, b"HTTP/2.0 is not supported; use HTTP/1.1"),
        (b"GET / HTTP/9.9\r\n" + H + b"\r\n", 505, b"only HTTP/1.0 and HTTP/1.1 are supported"),
        (b"CONNECT a:443 HTTP/1.1\r\n" + H + b"\r\n", 405, b"CONNECT is not supported"),
        (
            b"POST /echo HTTP/1.1\r\n" + H + b"Expect: magic\r\nContent-Length: 1\r\n\r\nx",
            417,
            b"unsupported expectation 'magic'",
        ),
    ],
)
def test_limits_and_malformed_requests_answer_then_close(
    h, req: bytes, status: int, says: bytes, bytewise: bool
) -> None:
    """Each refusal's status, and a body that says what was wrong."""
    r = run(h, app, lambda port: exchange(port, req, bytewise=bytewise), config=SMALL)
    assert [x.status for x in r.responses] == [status]
    body = r.responses[0].body
    assert body.startswith(b"%d " % status) and body.endswith(b": " + says + b"\n"), body  # the words, exactly
    assert r.responses[0].header("connection") == "close"
    assert r.closed


def test_smuggled_request_is_never_answered(h) -> None:
    """CL.TE: a front end honouring Content-Length would forward the
    second request inside the first's body; we refuse the first and close."""
    smuggle = (
        b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: 35\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\nGET /boom HTTP/1.1\r\n" + H + b"\r\n"
    )
    r = run(h, app, lambda port: exchange(port, smuggle, responses=2))
    assert [x.status for x in r.responses] == [400] and r.closed
    assert not handler_errors(h)


def test_errors_after_pipelined_requests_come_in_order(h) -> None:
    reqs = b"GET /sleep/50 HTTP/1.1\r\n" + H + b"\r\n" + b"GET / HTTP/9.9\r\n" + H + b"\r\n"
    r = run(h, app, lambda port: exchange(port, reqs, responses=2))
    assert [x.status for x in r.responses] == [200, 505] and r.closed


def _plain(req: Request) -> Response:
    return Response(b"p")


@pytest.mark.parametrize("handler", [app, _plain], ids=["async", "plain"])
def test_nothing_follows_the_last_keepalive_response_even_a_refusal(h, handler) -> None:
    """Found by fuzzing (tests/fuzz/http_request.py): keepalive_requests=2
    reached inside one read, then a malformed request in the same read. The
    second response ends the connection (FIN); the refusal of the third was
    written after it, which a transport refuses (write after write_eof)."""
    reqs = (b"GET / HTTP/1.1\r\n" + H + b"\r\n") * 2 + b"GET / HTTP/1.1\r\nHost:\x01\r\n\r\n"
    r = run(h, handler, lambda port: exchange(port, reqs, responses=3), config=HTTPConfig(keepalive_requests=2))
    assert [x.status for x in r.responses] == [200, 200] and r.closed
    assert r.responses[1].header("connection") == "close"


@pytest.mark.parametrize(
    "req,status",
    [
        (b"HEAD / HTTP/2.0\r\n\r\n", 505),
        (b"HEAD / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\n\r\n", 431),
        (b"HEAD /" + b"x" * 40 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414),
        (b"HEAD / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    ],
)
def test_a_refused_head_request_gets_no_body(h, req: bytes, status: int) -> None:
    """Found by fuzzing: a HEAD refused (bad version, too many fields, ...)
    was answered with a body, which a client reads as the next response."""
    cfg = HTTPConfig(max_headers=2, max_target_bytes=16)
    r = run(h, app, lambda port: exchange(port, req, head_for={0}), config=cfg)
    assert [x.status for x in r.responses] == [status] and r.closed
    assert r.responses[0].body == b"" and int(r.responses[0].header("content-length")) > 0


FAST = HTTPConfig(header_timeout=0.3, body_timeout=0.3, keepalive_timeout=0.3)


def test_slow_request_head_gets_408(h) -> None:
    def client(port: int):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        t0 = time.monotonic()
        s.sendall(b"GET / HTTP/1.1\r\n")
        data, sent = b"", 0
        # a byte of the head whenever 0.1 s passes without an answer, for up
        # to 10 s: a server that extended the deadline per byte would answer
        # only after the bytes stop
        while not data and time.monotonic() - t0 < 10:
            s.settimeout(0.1)
            try:
                data = s.recv(65536)
            except TimeoutError:
                try:
                    s.sendall(b"X")
                    sent += 1
                except OSError:
                    break
        s.settimeout(10)
        data += read_to_close(s)
        s.close()
        return data, sent, time.monotonic() - t0

    data, sent, took = run(h, app, client, config=FAST)
    assert data.startswith(b"HTTP/1.1 408 ") and b"Connection: close" in data
    assert sent >= 1  # bytes kept coming, and the deadline held
    assert took < 8  # the 0.3 s timeout, not the trickle's 10 s or the 60 s default, however busy the machine


@pytest.mark.parametrize("handler", [app, _plain_hello], ids=["async", "plain"])
def test_idle_keep_alive_connection_closes_silently(h, handler) -> None:
    """After the response, idle: closed at keepalive_timeout with no 408,
    whichever path answered (the plain handler's is the one-frame path)."""

    def client(port: int):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(b"GET / HTTP/1.1\r\n" + H + b"\r\n")
        t0 = time.monotonic()
        data = read_to_close(s)
        s.close()
        return data, time.monotonic() - t0

    data, took = run(h, handler, client, config=FAST)
    assert data.count(b"HTTP/1.1") == 1 and data.endswith(b"hello" if handler is app else b"p:/")  # no 408
    assert 0.2 < took < 10  # the 0.3 s keep-alive timeout, not the default

    # a new connection that sends nothing is closed too
    def silent(port: int) -> bytes:
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        data = s.recv(1000)
        s.close()
        return data

    assert run(h, app, silent, config=FAST) == b""


def test_stalled_request_body_gets_408(h) -> None:
    def client(port: int):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: 10\r\n\r\nabc")
        data = read_to_close(s)
        s.close()
        return data

    data = run(h, app, client, config=FAST)
    assert data.startswith(b"HTTP/1.1 408 ")


async def until_busy(srv: HTTPServer, connections: int) -> None:
    """Until the server holds `connections` connections, one answering a request."""
    assert await until(
        lambda: len(srv.connections) >= connections and any(c._queue for c in srv.connections), timeout=20
    ), "the request never reached the server"


def test_graceful_shutdown_finishes_requests_in_flight(h) -> None:
    async def main():
        srv = HTTPServer(app)
        await srv.start("127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        idle_r, idle_w = await asyncio.open_connection("127.0.0.1", port)
        busy = asyncio.ensure_future(asyncio.to_thread(exchange, port, b"GET /sleep/300 HTTP/1.1\r\n" + H + b"\r\n"))
        await until_busy(srv, 2)
        t0 = time.monotonic()
        await srv.shutdown(timeout=30)
        took = time.monotonic() - t0
        r = await busy
        idle_gone = await idle_r.read() == b""
        idle_w.close()
        refused = False
        try:
            await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            refused = True
        return r, idle_gone, refused, took

    r, idle_gone, refused, took = h.run(main())
    assert r.responses[0].body == b"/sleep/300" and r.responses[0].header("connection") == "close"
    assert r.closed and idle_gone and refused
    assert took < 15  # it returned when the request was done, not at the timeout


def test_graceful_shutdown_aborts_after_its_timeout(h) -> None:
    async def main():
        srv = HTTPServer(app)
        await srv.start("127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        busy = asyncio.ensure_future(
            asyncio.to_thread(exchange, port, b"GET /sleep/60000 HTTP/1.1\r\n" + H + b"\r\n", timeout=30)
        )
        await until_busy(srv, 1)
        await srv.shutdown(timeout=0.2)
        return await busy, srv.connections

    r, left = h.run(main())
    assert r.responses == [] and r.closed and not left


def test_pipelining_is_bounded(h) -> None:
    """More requests than max_pipelined are all answered, in order, while
    the server stops reading beyond the bound."""
    n = 50
    reqs = b"".join(b"GET /sleep/%d HTTP/1.1\r\n" % (i % 3) + H + b"\r\n" for i in range(n))
    r = run(h, app, lambda port: exchange(port, reqs, responses=n), config=HTTPConfig(max_pipelined=4))
    assert [x.body for x in r.responses] == [b"/sleep/%d" % (i % 3) for i in range(n)]


def ends_mid_body(h, end: Callable[[socket.socket], bytes]) -> tuple[list, bytes, int]:
    """A handler reading a 100,000-byte body of which the client sent 1,000,
    then `end(sock)`: what the handler's read raised, what `end` read back,
    and the connections the server still held once the handler had seen it."""
    got_some = threading.Event()
    seen: list = []

    async def reader(req: Request) -> Any:
        try:
            async for _ in req.stream():
                got_some.set()
        except BaseException as exc:
            seen.append(exc)
            raise
        return Response(b"never")

    def client(port: int) -> bytes:
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(b"POST /count HTTP/1.1\r\n" + H + b"Content-Length: 100000\r\n\r\n" + b"x" * 1000)
        assert got_some.wait(20)
        return end(s)

    async def main() -> tuple[bytes, int]:
        srv = HTTPServer(reader)
        await srv.start("127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        answer = await asyncio.to_thread(client, port)
        await until(lambda: seen and not srv.connections)
        left = len(srv.connections)
        await srv.shutdown(timeout=2)
        return answer, left

    answer, left = h.run(main())
    return seen, answer, left


def test_client_that_resets_mid_body_leaves_nothing(h) -> None:
    """A handler reading the body when the client resets gets
    ClientDisconnected saying so (not logged as a handler failure), and the
    connection is gone from the server."""

    def reset(s: socket.socket) -> bytes:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()
        return b""

    seen, _, left = ends_mid_body(h, reset)
    assert left == 0
    assert len(seen) == 1 and isinstance(seen[0], ClientDisconnected)
    assert str(seen[0]) == "the client closed the connection"
    assert not handler_errors(h)


def test_client_that_half_closes_mid_body_is_told_so(h) -> None:
    """A handler reading the body when the client sends EOF before the body
    ended gets ClientDisconnected saying that (not logged as a handler
    failure); the connection then ends."""

    def half_close(s: socket.socket) -> bytes:
        with s:
            s.shutdown(socket.SHUT_WR)
            return read_to_close(s)

    seen, answer, left = ends_mid_body(h, half_close)
    assert left == 0
    assert len(seen) == 1 and isinstance(seen[0], ClientDisconnected)
    assert str(seen[0]) == "the client closed before the body ended"
    assert not handler_errors(h)
    assert answer.count(b"HTTP/1.1 ") <= 1  # at most one answer to the one request, then the close


def test_a_client_that_does_not_read_stops_being_read(h) -> None:
    """200 pipelined requests for 256 KiB each, and a client that reads
    nothing for a while: the server stops reading it (flow control), so it
    has answered only a bounded number; then everything arrives in order."""
    big = b"z" * (256 * 1024)
    answered: list[int] = []

    def handler(req: Request) -> Any:
        answered.append(int(req.raw_path[1:]))
        return Response(big)

    n = 200

    def client(port: int):
        s = socket.create_connection(("127.0.0.1", port), timeout=20)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        s.sendall(b"".join(b"GET /%d HTTP/1.1\r\n" % i + H + b"\r\n" for i in range(n)))
        time.sleep(0.5)
        answered_while_stalled = len(answered)
        got = 0
        buf = b""
        want = n * len(big)
        while got < want:
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            got += chunk.count(b"z")
            buf = chunk[-64:]
        s.close()
        return answered_while_stalled, got, buf

    stalled, got, _ = run(h, handler, client)
    assert stalled < 40, stalled  # bounded by the write buffer, not by what was sent
    assert got == n * len(big)
    assert answered == list(range(n))


def test_a_client_that_never_reads_is_cut_after_send_timeout(h) -> None:
    """The client reads nothing until the server has cut the connection
    (the connection leaves the server's registry): then it finds less than
    the response, and the end. A server without the timeout never cuts,
    and the wait for it fails the test."""
    big = b"z" * (16 * 1024 * 1024)  # far more than the socket buffers hold
    cut = threading.Event()

    def client(port: int):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)  # before connect: a small window
        s.settimeout(20)
        s.connect(("127.0.0.1", port))
        s.sendall(b"GET / HTTP/1.1\r\n" + H + b"\r\n")
        assert cut.wait(20)
        got = 0
        try:
            while True:
                chunk = s.recv(1 << 20)
                if not chunk:
                    break
                got += len(chunk)
        except ConnectionResetError:
            pass
        s.close()
        return got

    async def main():
        srv = HTTPServer(lambda req: Response(big), config=HTTPConfig(send_timeout=0.3))
        await srv.start("127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        reader = asyncio.ensure_future(asyncio.to_thread(client, port))
        # the response is written at once (a plain handler): the connection
        # stays registered until the timeout cuts it, 0.3 s after it stalls
        assert await until(lambda: srv.connections)
        was_cut = await until(lambda: not srv.connections, timeout=20)
        cut.set()
        got = await reader
        await srv.shutdown(timeout=2)
        return was_cut, got

    was_cut, got = h.run(main(), timeout=60)
    assert was_cut, "the connection was not cut within 20 s of a 0.3 s send timeout"
    assert got < len(big)  # cut, not completed


class _FakeTransport:
    """What HTTPProtocol needs of a transport, recording what it is told."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.closed = False
        self.after_close = b""

    def write(self, data: bytes) -> None:
        if self.closed:
            self.after_close += data
        self.out += data

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else default

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.sampled_from(
                [
                    b"GET / HTTP/1.1\r\nHost: t\r\n\r\n",
                    b"\r\n",
                    b"POST /echo HTTP/1.1\r\n",
                    b"Content-Length: 3\r\n",
                    b"Transfer-Encoding: chunked\r\n",
                    b"abc",
                    b"3\r\nabc\r\n0\r\n\r\n",
                    b"HTTP/2.0",
                    b"\x00\xff",
                    b"Host: t\r\n",
                ]
            ),
            st.binary(max_size=6),
        ),
        max_size=25,
    )
)
def test_protocol_survives_garbage(parts: list[bytes]) -> None:
    """Any byte stream: no exception out of data_received, every answer a
    well-formed HTTP/1.1 response, and an error answer ends the connection."""
    from uringserve.http.native import native_runner
    from uringserve.http.protocol import HTTPProtocol

    async def main() -> _FakeTransport:
        proto = HTTPProtocol(native_runner(sync_app), HTTPConfig(max_body_bytes=64))
        t = _FakeTransport()
        proto.connection_made(t)
        for p in parts:
            proto.data_received(p)
        await asyncio.sleep(0)
        proto.connection_lost(None)
        return t

    t = asyncio.run(main())
    out = bytes(t.out)
    assert t.after_close == b""  # nothing is answered after the connection was ended
    statuses = parse_responses(out)
    if any(st in (400, 405, 413, 414, 417, 431, 505) for st in statuses):
        assert t.closed and statuses[-1] >= 400  # an error answer is the last one


def parse_responses(out: bytes) -> list[int]:
    """The statuses of the whole HTTP/1.1 responses `out` is made of: a
    response that does not parse, or bytes left over, fail the test."""
    import httptools

    class Collect:
        statuses: list[int] = []
        complete = 0

        def on_headers_complete(self) -> None:
            self.statuses.append(p.get_status_code())

        def on_message_complete(self) -> None:
            self.complete += 1

    c = Collect()
    c.statuses = []
    p = httptools.HttpResponseParser(c)
    p.feed_data(out)
    assert c.complete == len(c.statuses), f"a response ends short: {out[-200:]!r}"
    assert out == b"" or out.startswith(b"HTTP/1.1 ")
    return c.statuses


# -- keepalive_requests, end to end --------------------------------------------
@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
@pytest.mark.parametrize(
    "handler", [_plain_hello, sync_app, _async_hello, _stream_hello], ids=["plain", "plain-bytes", "async", "streamed"]
)
def test_keepalive_requests_ends_the_connection_after_the_last(h, handler, bytewise: bool) -> None:
    """keepalive_requests=3: the third response carries Connection: close
    and the connection ends; the two pipelined behind it are not answered.
    The plain handler takes the one-frame path (_answer_common), the async
    one respond_prepared(), the streamed one start()."""
    cfg = HTTPConfig(keepalive_requests=3)
    reqs = b"".join(b"GET /%d HTTP/1.1\r\n%s\r\n" % (i, H) for i in range(5))
    r = run(h, handler, lambda port: exchange(port, reqs, responses=5, bytewise=bytewise), config=cfg)
    assert len(r.responses) == 3 and r.raw.count(b"HTTP/1.1 ") == 3
    assert [x.header("connection") for x in r.responses] == [None, None, "close"]
    assert r.responses[2].body.endswith(b"/2") and r.closed
    # HTTP/1.0 keep-alive counts the same way
    reqs10 = b"GET /x HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" * 4
    r = run(h, handler, lambda port: exchange(port, reqs10, responses=4, bytewise=bytewise), config=cfg)
    assert [x.header("connection") for x in r.responses] == ["keep-alive", "keep-alive", "close"] and r.closed


def test_a_client_still_sending_gets_the_whole_last_response(h) -> None:
    """keepalive_requests=1 and a 2 MB response, while the client keeps
    pipelining requests without reading: the server must not close with
    their bytes unread (the kernel would answer RST and destroy the response
    the client has not read yet). It lingers: FIN after the response, reads
    and discards until the client closes. Without it this fails every time on
    the stdlib loop (on the ring the armed recv drains the socket until the
    close, so only bytes arriving after it are at risk)."""
    big = b"x" * 2_000_000

    def handler(req: Request) -> Any:
        return Response(big)

    def client(port: int) -> bytes:
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"GET /big HTTP/1.1\r\n" + H + b"\r\n")
            more = (b"GET /more HTTP/1.1\r\n" + H + b"\r\n") * 2000
            try:
                for _ in range(16):
                    s.sendall(more)  # about 1 MB the server will never answer
            except OSError:
                pass  # the server reset the connection: the test fails below
            s.settimeout(10)
            data = b""
            try:
                while chunk := s.recv(65536):
                    data += chunk
            except OSError as exc:
                return data + f"<{exc!r}>".encode()
            return data

    data = run(h, handler, client, config=HTTPConfig(keepalive_requests=1))
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"connection: close" in head.lower()
    assert body == big, (len(body), data[-80:])


def test_keepalive_requests_of_one_closes_after_the_first(h) -> None:
    r = run(
        h,
        sync_app,
        lambda port: exchange(port, (b"GET /a HTTP/1.1\r\n" + H + b"\r\n") * 2, responses=2),
        config=HTTPConfig(keepalive_requests=1),
    )
    assert [x.body for x in r.responses] == [b"sync:/a"] and r.closed
    assert r.responses[0].header("connection") == "close"


# -- a request body left unread ends the connection, whatever the response ------------
async def _answer_without_reading(req: Request) -> Any:
    if req.raw_path == b"/stream":
        return StreamingResponse([b"streamed"])
    return Response(b"whole")


@pytest.mark.parametrize("path", [b"/stream", b"/whole"])
def test_a_response_before_the_body_arrived_closes(h, path: bytes) -> None:
    """The handler answers while 97 bytes of the body are still to come: the
    server cannot tell where the next request would start, so the response
    says Connection: close and the connection ends (a streamed response
    goes through start(), a whole one through respond_prepared())."""
    req = b"POST %s HTTP/1.1\r\n%sContent-Length: 100\r\n\r\nabc" % (path, H)
    r = run(h, _answer_without_reading, lambda port: exchange(port, req))
    assert r.responses[0].status == 200 and r.responses[0].header("connection") == "close"
    assert r.closed


# -- max_pipelined: reading stops beyond the bound -----------------------------------
def test_pipelining_beyond_the_bound_stops_reading(h) -> None:
    """The first request's handler waits; 300 requests of 8 KiB each follow
    (2.4 MiB, more than one read takes). The server parses past
    max_pipelined only as far as the read it is handling, then stops
    reading: the queue stays far below what was sent. Opened, everything is
    answered in order."""
    n, pad = 300, b"X-Pad: " + b"p" * 8192 + b"\r\n"
    gate: dict = {}

    async def handler(req: Request) -> Any:
        if req.raw_path == b"/0":
            gate["event"] = ev = asyncio.Event()
            await ev.wait()
        return Response(req.raw_path)

    async def main():
        srv = HTTPServer(handler, config=HTTPConfig(max_pipelined=4))
        await srv.start("127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        reqs = b"".join(b"GET /%d HTTP/1.1\r\n%s%s\r\n" % (i, H, pad) for i in range(n))
        client = asyncio.ensure_future(asyncio.to_thread(exchange, port, reqs, responses=n, timeout=30))

        # reading pauses (the only pause a waiting handler can cause) or,
        # if it never does, everything gets queued: wait for either
        def paused_or_all_queued() -> bool:
            conns = list(srv.connections)
            return bool(conns) and (conns[0]._paused or len(conns[0]._queue) == n)

        await until(paused_or_all_queued, timeout=30)
        conn = list(srv.connections)[0]
        queued = len(conn._queue)
        paused = conn._paused and not conn._transport.is_reading()
        gate["event"].set()
        r = await client
        await srv.shutdown(timeout=2)
        return queued, paused, r

    queued, paused, r = h.run(main(), timeout=60)
    assert paused, "reading did not pause beyond max_pipelined"
    assert 4 < queued < n // 3, queued  # the bound, plus what one read carried
    assert [x.body for x in r.responses] == [b"/%d" % i for i in range(n)]
    assert not r.closed


def test_a_body_nobody_reads_is_held_to_body_buffer_bytes(h) -> None:
    """A streaming handler that does not read yet: 8 MiB of body arrive, the
    server buffers about body_buffer_bytes (plus the read in hand), stops
    reading, and resumes as the handler reads; every byte arrives."""
    limit, total = 64 * 1024, 8 << 20
    gate: dict = {}

    async def handler(req: Request) -> Any:
        gate["event"] = ev = asyncio.Event()
        await ev.wait()
        n = 0
        async for chunk in req.stream():
            n += len(chunk)
        return Response(str(n))

    async def main():
        srv = HTTPServer(handler, config=HTTPConfig(body_buffer_bytes=limit, max_body_bytes=total))
        await srv.start("127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        req = b"POST /up HTTP/1.1\r\n" + H + b"Content-Length: %d\r\n\r\n" % total + b"b" * total
        client = asyncio.ensure_future(asyncio.to_thread(exchange, port, req, timeout=30))

        def paused_or_all_buffered() -> bool:
            conns = list(srv.connections)
            ex = conns[0]._parsing if conns else None
            return ex is not None and (conns[0]._paused or ex.body_in.buffered >= total - limit)

        await until(paused_or_all_buffered, timeout=30)
        conn = list(srv.connections)[0]
        buffered, paused = conn._parsing.body_in.buffered, conn._paused
        gate["event"].set()
        r = await client
        await srv.shutdown(timeout=2)
        return buffered, paused, r

    buffered, paused, r = h.run(main(), timeout=60)
    assert paused, "reading did not pause with the body buffer full"
    assert limit < buffered <= limit + (1 << 20), buffered  # the bound, plus the read in hand
    assert r.responses[0].body == str(total).encode() and not r.closed


def test_data_after_a_refused_request_is_not_read() -> None:
    """A transport may deliver data after pause_reading() (TLS does, from
    what it has decrypted). After a request the parser refused, such data is
    ignored: the requests before it are answered, then the 400, then the
    end, and nothing escapes data_received."""
    from uringserve.http.native import native_runner
    from uringserve.http.protocol import HTTPProtocol

    async def main() -> _FakeTransport:
        gate = asyncio.Event()

        async def slow(req: Request) -> Any:
            await gate.wait()
            return Response(b"slow")

        proto = HTTPProtocol(native_runner(slow), HTTPConfig())
        t = _FakeTransport()
        proto.connection_made(t)
        proto.data_received(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\nGET / HTTP/1.1\r\nX-No")
        proto.data_received(b"-Host: t\r\n\r\n")  # refused by the server's own rule, in a parser callback
        proto.data_received(b"GET /after HTTP/1.1\r\nHost: t\r\n\r\n")  # delivered although paused
        gate.set()
        for _ in range(5):
            await asyncio.sleep(0)
        proto.connection_lost(None)
        return t

    t = asyncio.run(main())
    assert parse_responses(bytes(t.out)) == [200, 400] and t.closed and t.after_close == b""


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
@pytest.mark.parametrize("handler", [_plain_hello, _async_hello, _stream_hello], ids=["plain", "async", "streamed"])
@pytest.mark.parametrize(
    "last",
    [b"GET /last HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", b"GET /last HTTP/1.0\r\n\r\n"],
    ids=["close", "http-1.0"],
)
def test_nothing_after_a_last_request_is_answered(h, handler, bytewise: bool, last: bytes) -> None:
    """RFC 9112 §9.6: after the response to a request with the close option
    (or an HTTP/1.0 request without keep-alive) the server reads no further
    request and closes; what was pipelined behind it gets no answer at all,
    not even a 400."""
    reqs = b"GET /first HTTP/1.1\r\n" + H + b"\r\n" + last + b"GET /after HTTP/1.1\r\n" + H + b"\r\n"
    r = run(h, handler, lambda port: exchange(port, reqs, responses=3, bytewise=bytewise))
    assert [x.status for x in r.responses] == [200, 200] and r.raw.count(b"HTTP/1.") == 2
    assert r.responses[1].body.endswith(b"/last") and r.responses[1].header("connection") == "close"
    assert r.closed


@pytest.mark.parametrize("handler", [_plain_hello, _async_hello, _stream_hello], ids=["plain", "async", "streamed"])
def test_an_upgrade_request_is_answered_and_the_connection_closed(h, handler) -> None:
    """A request that asks to upgrade the connection to a protocol this
    server does not speak (h2c; websocket is tests/test_ws_*.py's) is
    answered like any other, with Connection: close, whichever way the
    response is sent; the bytes after it are not HTTP/1.1 and get no
    answer, and the connection ends."""
    req = b"GET /up HTTP/1.1\r\n" + H + b"Connection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
    r = run(h, handler, lambda port: exchange(port, req + b"\x81\x05hello" + b"GET / HTTP/1.1\r\n" + H + b"\r\n"))
    assert [x.status for x in r.responses] == [200] and r.raw.count(b"HTTP/1.") == 1
    assert r.responses[0].body.endswith(b"/up") and r.responses[0].header("connection") == "close"
    assert r.closed
    assert not handler_errors(h)


def test_header_values_reach_the_handler_as_sent(h) -> None:
    """Values of a recognised head keep every character but the optional
    whitespace after the colon."""
    reqs = b"GET / HTTP/1.1\r\nHost: t\r\nX-A: Xylophone\r\nX-B:\t  X X\r\n\r\n"
    r = run(h, lambda req: Response(repr((req.headers["x-a"], req.headers["x-b"]))), lambda port: exchange(port, reqs))
    assert r.responses[0].body == repr(("Xylophone", "X X")).encode()


def test_a_keepalive_timeout_shorter_than_the_header_timeout_is_kept(h) -> None:
    """The connection's one timer handle was made for the header timeout
    (60 s); the keep-alive deadline that follows a response is earlier."""

    async def main() -> float:
        srv = HTTPServer(sync_app, config=HTTPConfig(keepalive_timeout=0.3))
        await srv.start("127.0.0.1", 0)
        r, w = await asyncio.open_connection(*srv.sockets[0].getsockname()[:2])
        w.write(b"GET /a HTTP/1.1\r\n" + H + b"\r\n")
        await r.readuntil(b"sync:/a")
        t0 = time.monotonic()
        assert await asyncio.wait_for(r.read(), 10) == b""
        took = time.monotonic() - t0
        w.close()
        await srv.shutdown(timeout=2)
        return took

    assert h.run(main()) < 5  # its own 0.3 s, not the header timeout's 60


def test_a_drain_answers_the_first_request_of_a_connection_just_accepted(h) -> None:
    """A client sends its request right after connecting: a drain that
    begins in between must answer it (Connection: close), not close the
    connection as idle and lose it."""

    async def main() -> bytes:
        srv = HTTPServer(sync_app)
        await srv.start("127.0.0.1", 0)
        r, w = await asyncio.open_connection(*srv.sockets[0].getsockname()[:2])
        assert await until(lambda: len(srv.connections) == 1)
        stop = asyncio.ensure_future(srv.shutdown(timeout=10))
        await asyncio.sleep(0)  # the drain has begun
        w.write(b"GET /late HTTP/1.1\r\n" + H + b"\r\n")
        data = await asyncio.wait_for(r.read(), 10)
        await stop
        w.close()
        return data

    data = h.run(main())
    assert data.startswith(b"HTTP/1.1 200 ") and b"connection: close" in data.lower() and data.endswith(b"sync:/late")


def test_a_drain_finishes_a_request_whose_head_is_arriving(h) -> None:
    async def main() -> bytes:
        srv = HTTPServer(sync_app)
        await srv.start("127.0.0.1", 0)
        r, w = await asyncio.open_connection(*srv.sockets[0].getsockname()[:2])
        w.write(b"GET /first HTTP/1.1\r\n" + H + b"\r\n")
        await r.readuntil(b"sync:/first")  # a kept-alive connection, not a new one
        w.write(b"GET /half HTTP/1.1\r\n")  # the next head's first line only
        assert await until(lambda: any(c._parser.head_started for c in srv.connections))
        stop = asyncio.ensure_future(srv.shutdown(timeout=10))
        await asyncio.sleep(0)  # the drain has begun
        w.write(H + b"\r\n")
        data = await asyncio.wait_for(r.read(), 10)
        await stop
        w.close()
        return data

    data = h.run(main())
    assert data.startswith(b"HTTP/1.1 200 ") and b"connection: close" in data.lower() and data.endswith(b"sync:/half")
