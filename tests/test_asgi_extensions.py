"""The ASGI extensions the server offers (asgiref's docs/extensions.rst),
on both loops: http.response.early_hint (103 before the final response),
http.response.trailers (after a chunked body, to a client that asked with
`TE: trailers`), http.response.zerocopysend (an open file's range through
the connection's file path), and the errors an app gets for each misuse.

The client side is a raw socket for byte-exact checks, and h11 (a real
client's parser) where it reads what a client would."""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
from typing import Any

import h11
import pytest
from http_client import exchange
from test_http_server import H, run
from test_tls import ca, client_ctx, server_ctx  # noqa: F401 (fixtures)

from uringserve.http import asgi

EXTENSIONS = (
    "http.response.pathsend",
    "http.response.zerocopysend",
    "http.response.early_hint",
    "http.response.trailers",
)


def serve(h, app, client) -> Any:
    async def wrapped(scope, receive, send):
        if scope["type"] == "lifespan":
            raise RuntimeError("no lifespan here")  # auto mode: served without
        await app(scope, receive, send)

    return run(h, wrapped, client, interface="asgi")


def h11_get(port: int, target: str, headers: list[tuple[str, str]], requests: int = 1) -> tuple[list[Any], bytes]:
    """`requests` GETs of `target` on one connection, sent and read by h11:
    every event it parsed, and the raw bytes received."""
    conn = h11.Connection(h11.CLIENT)
    events: list[Any] = []
    raw = b""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        for i in range(requests):
            if i:
                conn.start_next_cycle()
            req = h11.Request(method="GET", target=target, headers=[("Host", "t"), *headers])
            s.sendall(conn.send(req) + conn.send(h11.EndOfMessage()))
            while True:
                ev = conn.next_event()
                if ev is h11.NEED_DATA:
                    data = s.recv(65536)
                    raw += data
                    conn.receive_data(data)
                    continue
                events.append(ev)
                if type(ev) is h11.EndOfMessage:
                    break
    return events, raw


def raw_exchange(port: int, request: bytes) -> bytes:
    """`request` on a connection of its own, and everything received until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(request)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def body_of(raw: bytes) -> bytes:
    return raw.partition(b"\r\n\r\n")[2]


# -- early hints ------------------------------------------------------------------


def test_extensions_are_advertised(h) -> None:
    seen: dict[str, Any] = {}

    async def app(scope, receive, send):
        seen.update(scope["extensions"])
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"ok"})

    serve(h, app, lambda port: exchange(port, b"GET / HTTP/1.1\r\n" + H + b"\r\n"))
    assert set(seen) == set(EXTENSIONS)


LINKS = [b"</style.css>; rel=preload; as=style", "</app.js>; rel=preload; as=script"]


async def hinting_app(scope, receive, send):
    await send({"type": "http.response.early_hint", "links": LINKS})
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    # after the start message, before the body: its head is not on the wire yet, so a hint still goes first
    await send({"type": "http.response.early_hint", "links": [b"</late.css>; rel=preload"]})
    await send({"type": "http.response.body", "body": b"final"})


def test_early_hints_come_before_the_response(h) -> None:
    def client(port: int) -> tuple[bytes, list[Any]]:
        with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            out = b""
            while chunk := s.recv(65536):
                out += chunk
        return out, h11_get(port, "/", [])[0]

    raw, events = serve(h, hinting_app, client)
    first = (
        b"HTTP/1.1 103 Early Hints\r\n"
        b"Link: </style.css>; rel=preload; as=style\r\n"
        b"Link: </app.js>; rel=preload; as=script\r\n\r\n"
    )
    second = b"HTTP/1.1 103 Early Hints\r\nLink: </late.css>; rel=preload\r\n\r\n"
    assert raw.startswith(first + second + b"HTTP/1.1 200 OK\r\n"), raw
    assert raw.endswith(b"\r\n\r\nfinal")
    # a real client's parser: two informational responses, then the response
    info = [e for e in events if type(e) is h11.InformationalResponse]
    assert [e.status_code for e in info] == [103, 103]
    assert [v for n, v in info[0].headers if n == b"link"] == [LINKS[0], LINKS[1].encode()]
    final = next(e for e in events if type(e) is h11.Response)
    assert final.status_code == 200
    assert b"".join(e.data for e in events if type(e) is h11.Data) == b"final"


def test_early_hints_are_not_sent_to_http_1_0(h) -> None:
    raw = serve(h, hinting_app, lambda port: raw_exchange(port, b"GET / HTTP/1.0\r\nHost: t\r\n\r\n"))
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n") and b"103" not in raw and raw.endswith(b"\r\n\r\nfinal")


# -- trailers ------------------------------------------------------------------------


async def trailing_app(scope, receive, send):
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"trailer", b"x-sum, x-more")], "trailers": True}
    )
    await send({"type": "http.response.body", "body": b"hello", "more_body": True})
    await send({"type": "http.response.body", "body": b" world", "more_body": True})
    await send({"type": "http.response.body", "body": b"!"})
    await send({"type": "http.response.trailers", "headers": [(b"x-sum", b"abc")], "more_trailers": True})
    await send({"type": "http.response.trailers", "headers": [(b"x-more", b"1")]})


TRAILED_BODY = b"5\r\nhello\r\n6\r\n world\r\n1\r\n!\r\n0\r\nx-sum: abc\r\nx-more: 1\r\n\r\n"


@pytest.mark.parametrize("te", ["trailers", "gzip;q=0.5, Trailers"])
def test_trailers_follow_the_last_chunk(h, te: str) -> None:
    events, raw = serve(h, trailing_app, lambda port: h11_get(port, "/", [("TE", te)], requests=2))
    # byte-exact: the chunks, the last chunk, the trailer section, twice on one kept-alive connection
    responses = raw.split(b"HTTP/1.1 200 OK\r\n")[1:]
    assert len(responses) == 2
    for r in responses:
        assert b"\r\nTransfer-Encoding: chunked\r\n" in r and b"Content-Length" not in r
        assert r.endswith(b"\r\n\r\n" + TRAILED_BODY)
    ends = [e for e in events if type(e) is h11.EndOfMessage]
    assert [list(e.headers) for e in ends] == [[(b"x-sum", b"abc"), (b"x-more", b"1")]] * 2
    assert b"".join(e.data for e in events if type(e) is h11.Data) == b"hello world!" * 2


def test_no_trailers_for_a_client_that_did_not_ask(h) -> None:
    events, raw = serve(h, trailing_app, lambda port: h11_get(port, "/", [("TE", "gzip")], requests=2))
    assert raw.count(b"\r\n\r\n5\r\nhello\r\n6\r\n world\r\n1\r\n!\r\n0\r\n\r\n") == 2
    assert b"x-sum: abc" not in raw and b"x-more: 1" not in raw  # the Trailer field in the head is the app's
    assert all(not list(e.headers) for e in events if type(e) is h11.EndOfMessage)
    # HTTP/1.0 even with TE: trailers: no chunked coding to carry them, the close ends the body
    raw10 = serve(
        h, trailing_app, lambda port: raw_exchange(port, b"GET / HTTP/1.0\r\nHost: t\r\nTE: trailers\r\n\r\n")
    )
    assert body_of(raw10) == b"hello world!"


def test_trailers_after_a_whole_body_and_a_head_request(h) -> None:
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "trailers": True})
        await send({"type": "http.response.body", "body": b"all"})
        await send({"type": "http.response.trailers", "headers": [(b"x-t", b"1")]})

    events, raw = serve(h, app, lambda port: h11_get(port, "/", [("TE", "trailers")]))
    assert raw.endswith(b"\r\n\r\n3\r\nall\r\n0\r\nx-t: 1\r\n\r\n")
    r = serve(
        h,
        app,
        lambda port: exchange(port, b"HEAD / HTTP/1.1\r\nHost: t\r\nTE: trailers\r\n\r\n", head_for={0}),
    )
    assert not r.closed and b"x-t" not in r.raw and r.raw.endswith(b"\r\n\r\n")


# -- zerocopysend ------------------------------------------------------------------------


@pytest.fixture
def blob(tmp_path) -> tuple[str, bytes]:
    data = os.urandom(1024 * 1024 + 7)
    p = tmp_path / "blob.bin"
    p.write_bytes(data)
    return str(p), data


def test_zerocopysend_mixed_with_body_chunked(h, blob) -> None:
    path, data = blob
    after: dict[str, Any] = {}

    async def app(scope, receive, send):
        with open(path, "rb") as f:
            await send({"type": "http.response.start", "status": 200})
            await send({"type": "http.response.body", "body": b"head:", "more_body": True})
            n = 1024 * 1024 + 1
            await send({"type": "http.response.zerocopysend", "file": f, "offset": 3, "count": n, "more_body": True})
            await send({"type": "http.response.body", "body": b"|mid|", "more_body": True})
            f.seek(10)  # no offset: from the file's position, which then moves past the range
            await send({"type": "http.response.zerocopysend", "file": f, "count": 100, "more_body": True})
            after["pos"] = f.tell()
            # a count past the end stops at the end, as sendfile(2)
            await send(
                {
                    "type": "http.response.zerocopysend",
                    "file": f,
                    "offset": len(data) - 4,
                    "count": 99,
                    "more_body": True,
                }
            )
            await send({"type": "http.response.body", "body": b":tail"})
            # still ours, open and where we left it
            after["read"] = f.read(5)
            after["stat"] = os.fstat(f.fileno()).st_size

    events, raw = serve(h, app, lambda port: h11_get(port, "/", [], requests=2))
    want = b"head:" + data[3 : 3 + 1024 * 1024 + 1] + b"|mid|" + data[10:110] + data[-4:] + b":tail"
    bodies = raw.split(b"HTTP/1.1 200 OK\r\n")[1:]
    for b in bodies:
        assert b"Transfer-Encoding: chunked" in b
    got = b"".join(e.data for e in events if type(e) is h11.Data)
    assert got == want * 2
    # byte-exact chunk framing of the second response's file ranges
    assert b"\r\n100001\r\n" + data[3:4] in raw and b"|mid|\r\n64\r\n" + data[10:110] + b"\r\n4\r\n" in raw
    assert after == {"pos": 110, "read": data[110:115], "stat": len(data)}


@pytest.mark.parametrize("length", ["declared", "implied"])
def test_zerocopysend_whole_file_and_closed_by_the_app_at_once(h, blob, length: str) -> None:
    """With a Content-Length (the app's, or the count's when one message is
    the whole body), and the app closing its file the moment send()
    resolves: the ring reads the range later, from a description of our own."""
    path, data = blob

    async def app(scope, receive, send):
        headers = [(b"content-length", b"%d" % (len(data) - 1))] if length == "declared" else []
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        f = open(path, "rb")  # noqa: SIM115 (closed right after the send, on purpose)
        await send({"type": "http.response.zerocopysend", "file": f, "offset": 1})
        f.close()
        # the fd number, free now, is taken by another file: what is sent must not change
        with open(os.devnull, "rb"):
            pass

    events, raw = serve(h, app, lambda port: h11_get(port, "/", [], requests=3))
    got = b"".join(e.data for e in events if type(e) is h11.Data)
    assert got == data[1:] * 3
    assert raw.count(b"\r\nContent-Length: %d\r\n" % (len(data) - 1)) == 3


def test_zerocopysend_to_http_1_0_and_head(h, blob) -> None:
    path, data = blob

    async def app(scope, receive, send):
        with open(path, "rb") as f:
            await send({"type": "http.response.start", "status": 200})
            await send(
                {
                    "type": "http.response.zerocopysend",
                    "file": f.fileno(),
                    "offset": 0,
                    "count": 5000,
                    "more_body": True,
                }
            )
            await send({"type": "http.response.zerocopysend", "file": f, "offset": 5000})

    raw = serve(h, app, lambda port: raw_exchange(port, b"GET / HTTP/1.0\r\nHost: t\r\n\r\n"))
    assert body_of(raw) == data and b"Transfer-Encoding" not in raw and b"Connection: close\r\n" in raw
    r = serve(h, app, lambda port: exchange(port, b"HEAD / HTTP/1.1\r\n" + H + b"\r\n", head_for={0}))
    assert not r.closed and r.raw.endswith(b"\r\n\r\n") and r.raw.count(b"\r\n\r\n") == 1


# -- what an app gets wrong: a clear error from its send() -------------------------------


def _start(**kw: Any) -> dict[str, Any]:
    return {"type": "http.response.start", "status": 200, **kw}


def _body(data: bytes = b"", more: bool = False) -> dict[str, Any]:
    return {"type": "http.response.body", "body": data, "more_body": more}


def _trailers(more: bool = False) -> dict[str, Any]:
    return {"type": "http.response.trailers", "headers": [(b"x-t", b"1")], "more_trailers": more}


def _zc(f: Any, **kw: Any) -> dict[str, Any]:
    return {"type": "http.response.zerocopysend", "file": f, **kw}


# name: (the messages before the bad one, the bad one, what send() raises, then the messages that finish)
MISUSES: dict[str, Any] = {
    "trailers with a content-length": (
        [],
        lambda f: _start(trailers=True, headers=[(b"content-length", b"2")]),
        "cannot have a Content-Length",
        lambda f: [_start(), _body(b"ok")],
    ),
    "trailers before the body ended": (
        lambda f: [_start(trailers=True), _body(b"o", more=True)],
        lambda f: _trailers(),
        "before the body ended",
        lambda f: [_body(b"k"), _trailers()],
    ),
    "trailers twice": (
        lambda f: [_start(trailers=True), _body(b"ok"), _trailers()],
        lambda f: _trailers(),
        "after the last one",
        lambda f: [],
    ),
    "trailers not promised": (
        lambda f: [_start(), _body(b"o", more=True)],
        lambda f: _trailers(),
        "did not say trailers: True",
        lambda f: [_body(b"k")],
    ),
    "a framing field as a trailer": (
        lambda f: [_start(trailers=True), _body(b"ok")],
        lambda f: {"type": "http.response.trailers", "headers": [(b"Content-Length", b"5")]},
        "content-length cannot be a trailer field",
        lambda f: [_trailers()],
    ),
    "a body after the body ended, trailers due": (
        lambda f: [_start(trailers=True), _body(b"ok")],
        lambda f: _body(b"more"),
        "already complete",
        lambda f: [_trailers()],
    ),
    "an early hint after the response began": (
        lambda f: [_start(), _body(b"o", more=True)],
        lambda f: {"type": "http.response.early_hint", "links": [b"</x>; rel=preload"]},
        "after the response began",
        lambda f: [_body(b"k")],
    ),
    "a hint that splits the response": (
        [],
        lambda f: {"type": "http.response.early_hint", "links": [b"</x>\r\nSet-Cookie: a=b"]},
        "invalid response header",
        lambda f: [_start(), _body(b"ok")],
    ),
    "zerocopysend before the start": (
        [],
        lambda f: _zc(f, offset=0, count=2),
        "before http.response.start",
        lambda f: [_start(), _body(b"ok")],
    ),
    "zerocopysend past the content-length": (
        lambda f: [_start(headers=[(b"content-length", b"2")])],
        lambda f: _zc(f, offset=0, count=3),
        "longer than the Content-Length 2",
        lambda f: [_body(b"ok")],
    ),
    "zerocopysend after the body": (
        lambda f: [_start(), _body(b"ok")],
        lambda f: _zc(f, offset=0, count=2),
        "already complete",
        lambda f: [],
    ),
    "zerocopysend of a pipe": (
        lambda f: [_start()],
        lambda f: _zc(PIPE[0]),
        "needs a regular file",
        lambda f: [_body(b"ok")],
    ),
    # opening a FIFO's /proc link waits for a writer: with none, the worker would freeze
    "zerocopysend of a FIFO with no writer": (
        lambda f: [_start()],
        lambda f: _zc(_orphan_fifo()),
        "needs a regular file",
        lambda f: [_body(b"ok")],
    ),
    "zerocopysend of an fd not open": (
        lambda f: [_start()],
        lambda f: _zc(1_000_000),
        "fd 1000000 is not open",
        lambda f: [_body(b"ok")],
    ),
    "zerocopysend at a negative offset": (
        lambda f: [_start()],
        lambda f: _zc(f, offset=-1),
        "negative offset or count",
        lambda f: [_body(b"ok")],
    ),
    "zerocopysend of no file": (
        lambda f: [_start()],
        lambda f: _zc(b"not a file"),
        "needs a file with fileno()",
        lambda f: [_body(b"ok")],
    ),
}
PIPE: list[int] = []  # fds the misuse cases use, closed after each


def _orphan_fifo() -> int:
    """A named pipe open for reading with no writer: reopening it through
    /proc waits for a writer (an anonymous pipe's link does not)."""
    path = os.path.join(tempfile.mkdtemp(), "fifo")
    os.mkfifo(path)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    os.unlink(path)
    PIPE.append(fd)
    return fd


@pytest.mark.parametrize("name", list(MISUSES))
def test_misuse_raises_a_clear_error_and_the_connection_goes_on(h, tmp_path, name: str) -> None:
    before, bad, message, after = MISUSES[name]
    path = tmp_path / "f.txt"
    path.write_bytes(b"0123456789")
    raised: list[BaseException] = []

    async def app(scope, receive, send):
        with open(path, "rb") as f:
            for m in before(f) if callable(before) else before:
                await send(m)
            try:
                await send(bad(f))
            except (RuntimeError, ValueError, TypeError, OSError) as exc:
                raised.append(exc)
            for m in after(f):
                await send(m)

    PIPE[:] = os.pipe()
    try:
        r = serve(
            h,
            app,
            lambda port: exchange(port, (b"GET / HTTP/1.1\r\n" + H + b"TE: trailers\r\n\r\n") * 2, responses=2),
        )
    finally:
        for fd in PIPE:
            os.close(fd)
    assert len(raised) == 2 and message in str(raised[0]), raised
    assert [x.status for x in r.responses] == [200, 200] and not r.closed
    assert [x.body for x in r.responses] == [b"ok", b"ok"]


def test_trailers_dropped_are_logged_once(h, caplog) -> None:
    asgi._dropped_said = False
    with caplog.at_level("DEBUG", logger="uringserve.http"):
        serve(h, trailing_app, lambda port: h11_get(port, "/", [], requests=3))
    assert [r.message for r in caplog.records if "trailers dropped" in r.message] == [
        "ASGI trailers dropped: sent only to a client whose request says TE: trailers (logged once)"
    ]


def test_extensions_on_an_observed_connection(h, blob) -> None:
    """With an observer (access log, metrics) the exchange is a subclass that
    counts body bytes: a trailers response and a zerocopysend one log their
    status and body size (file ranges included, framing not)."""
    from uringserve.http import HTTPConfig, HTTPServer

    path, data = blob
    seen: list[tuple[str, int, int]] = []

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            raise RuntimeError("no lifespan here")
        if scope["path"] == "/trailers":
            await trailing_app(scope, receive, send)
            return
        with open(path, "rb") as f:
            await send({"type": "http.response.early_hint", "links": [b"</a>; rel=preload"]})
            await send({"type": "http.response.start", "status": 200})
            await send(_zc(f, offset=0, count=1000, more_body=True))
            await send({"type": "http.response.body", "body": b"end"})

    async def main() -> Any:
        srv = HTTPServer(app, config=HTTPConfig(), interface="asgi")
        srv.observer = lambda conn, method, target, version, status, size, took: seen.append(
            (target.decode(), status, size)
        )
        await srv.start("127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        try:
            return await asyncio.to_thread(
                lambda: (h11_get(port, "/trailers", [("TE", "trailers")]), h11_get(port, "/file", []))
            )
        finally:
            await srv.shutdown(timeout=2)

    (t_events, _), (f_events, f_raw) = h.run(main(), timeout=60)
    assert [list(e.headers) for e in t_events if type(e) is h11.EndOfMessage] == [
        [(b"x-sum", b"abc"), (b"x-more", b"1")]
    ]
    assert b"".join(e.data for e in f_events if type(e) is h11.Data) == data[:1000] + b"end"
    assert f_raw.startswith(b"HTTP/1.1 103 Early Hints\r\n")
    assert seen == [("/trailers", 200, 12), ("/file", 200, 1003)]


@pytest.mark.parametrize("te", [True, False], ids=["te-trailers", "no-te"])
def test_pathsend_and_zerocopysend_end_a_body_with_trailers(h, blob, te: bool) -> None:
    """A file message that ends the body (more_body False) is a body message
    like any: with trailers promised, they follow its last chunk (or, for a
    client that did not ask, it ends the response and they are dropped)."""
    path, data = blob

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "trailers": True})
        if scope["path"] == "/path":
            await send({"type": "http.response.pathsend", "path": path})
        else:
            with open(path, "rb") as f:
                await send(_zc(f, offset=0, count=100, more_body=True))
                await send(_zc(f, offset=100))
        await send({"type": "http.response.trailers", "headers": [(b"x-t", b"1")]})

    def client(port: int) -> Any:
        headers = [("TE", "trailers")] if te else []
        return h11_get(port, "/path", headers), h11_get(port, "/zc", headers)

    for events, raw in serve(h, app, client):
        assert b"".join(e.data for e in events if type(e) is h11.Data) == data
        ends = [list(e.headers) for e in events if type(e) is h11.EndOfMessage]
        if te:
            assert ends == [[(b"x-t", b"1")]] and raw.endswith(b"\r\n0\r\nx-t: 1\r\n\r\n")
        else:
            assert ends == [[]] and b"x-t: 1" not in raw


def test_zerocopysend_over_tls(h, blob, server_ctx, client_ctx) -> None:  # noqa: F811 (the fixtures)
    """Behind TLS there is no file path to the socket: the range goes through
    asyncio's sendfile fallback (read, encrypt, write), byte-exact all the same."""
    from uringserve.http import HTTPServer

    path, data = blob

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            raise RuntimeError("no lifespan here")
        with open(path, "rb") as f:
            await send({"type": "http.response.start", "status": 200, "trailers": True})
            await send(_zc(f, offset=5, more_body=True))
            await send(_body(b"!"))
            await send(_trailers())

    def client(port: int) -> tuple[list[Any], bytes]:
        conn = h11.Connection(h11.CLIENT)
        events: list[Any] = []
        with socket.create_connection(("127.0.0.1", port), timeout=20) as raw_sock:
            with client_ctx.wrap_socket(raw_sock, server_hostname="localhost") as s:
                req = h11.Request(method="GET", target="/", headers=[("Host", "t"), ("TE", "trailers")])
                s.sendall(conn.send(req) + conn.send(h11.EndOfMessage()))
                while not events or type(events[-1]) is not h11.EndOfMessage:
                    ev = conn.next_event()
                    if ev is h11.NEED_DATA:
                        conn.receive_data(s.recv(65536))
                    else:
                        events.append(ev)
        return events, b""

    async def main() -> Any:
        srv = HTTPServer(app, interface="asgi", ssl=server_ctx)
        await srv.start("127.0.0.1", 0)
        try:
            return await asyncio.to_thread(client, srv.sockets[0].getsockname()[1])
        finally:
            await srv.shutdown(timeout=2)

    events, _ = h.run(main(), timeout=60)
    assert b"".join(e.data for e in events if type(e) is h11.Data) == data[5:] + b"!"
    assert [list(e.headers) for e in events if type(e) is h11.EndOfMessage] == [[(b"x-t", b"1")]]
