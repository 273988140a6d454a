"""WSGI (PEP 3333, uringserve/http/wsgi.py) on both loops: the environ,
wsgi.input streaming with backpressure while the loop serves others,
streamed responses paused by a client that does not read, close() and the
thread freed on a disconnect, file_wrapper through the file path, and
every misuse of the spec the issue lists. Served in process here; Flask
and Django through `uringserve run` in test_wsgi_apps.py."""

from __future__ import annotations

import asyncio
import io
import os
import socket
import sys
import tempfile
import threading
import time
from typing import Any

import pytest
from http_client import exchange
from test_http_server import H, read_to_close

from uringserve.http import HTTPConfig, HTTPServer
from uringserve.http.server import detect_interface


def serve(h, app, client, config: HTTPConfig | None = None, **kw) -> Any:
    """Serve WSGI `app`; `client(port, server)` runs in a thread."""

    async def main() -> Any:
        srv = HTTPServer(app, interface="wsgi", config=config, **kw)
        await srv.start("127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        try:
            return await asyncio.to_thread(client, port, srv)
        finally:
            await srv.shutdown(timeout=2)

    return h.run(main(), timeout=60)


def get(port: int, path: str = "/", extra: bytes = b"") -> Any:
    return exchange(port, b"GET " + path.encode() + b" HTTP/1.1\r\n" + H + extra + b"\r\n")


def hello(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello " + environ["PATH_INFO"].encode("latin-1")]


def wait_for(cond, timeout: float = 20.0) -> None:
    """In the client thread: until cond() (a bound that only stops a hang)."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_two_positional_parameters_are_detected_as_wsgi() -> None:
    class Flaskish:
        def __call__(self, environ, start_response): ...

    assert detect_interface(hello) == "wsgi"
    assert detect_interface(Flaskish()) == "wsgi"
    assert HTTPServer(hello).interface == "wsgi"


def test_environ_per_pep_3333(h) -> None:
    seen: dict[str, Any] = {}

    def app(environ, start_response):
        seen.update(environ)
        seen["body"] = environ["wsgi.input"].read()
        start_response("201 Created", [("X-A", "1")])
        return [b"ok"]

    def client(port, srv):
        body = b"a=1&b=2"
        return exchange(
            port,
            b"POST /api/x%20y/z?q=1&r=%41 HTTP/1.1\r\nHost: example.org\r\nX-Multi: one\r\nX-Multi: two\r\n"
            b"Cookie: a=1\r\nCookie: b=2\r\nX_Spoof: no\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            + b"Content-Length: %d\r\n\r\n" % len(body)
            + body,
        )

    r = serve(h, app, client, root_path="/api")
    resp = r.responses[0]
    assert resp.status == 201 and resp.body == b"ok" and resp.header("x-a") == "1" and not r.closed
    assert seen["REQUEST_METHOD"] == "POST"
    assert seen["SCRIPT_NAME"] == "/api" and seen["PATH_INFO"] == "/x y/z"
    assert seen["QUERY_STRING"] == "q=1&r=%41"
    assert seen["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert seen["SERVER_NAME"] == "127.0.0.1" and seen["SERVER_PORT"].isdigit()
    assert seen["REMOTE_ADDR"] == "127.0.0.1" and seen["REMOTE_PORT"].isdigit()
    assert seen["CONTENT_TYPE"] == "application/x-www-form-urlencoded" and seen["CONTENT_LENGTH"] == "7"
    assert "HTTP_CONTENT_TYPE" not in seen and "HTTP_CONTENT_LENGTH" not in seen
    assert seen["HTTP_HOST"] == "example.org"
    assert seen["HTTP_X_MULTI"] == "one,two" and seen["HTTP_COOKIE"] == "a=1; b=2"
    assert "HTTP_X_SPOOF" not in seen  # an underscore name would pose as a dashed one
    assert seen["wsgi.version"] == (1, 0) and seen["wsgi.url_scheme"] == "http"
    assert seen["wsgi.multithread"] is True and seen["wsgi.multiprocess"] is False
    assert seen["wsgi.run_once"] is False and seen["wsgi.errors"] is sys.stderr
    assert seen["body"] == b"a=1&b=2"
    assert all(type(k) is str for k in seen)


def test_input_read_forms_and_pipelined_keep_alive(h) -> None:
    got: list[Any] = []

    def app(environ, start_response):
        inp = environ["wsgi.input"]
        got.append((inp.readline(), inp.read(3), inp.readlines(), inp.read(), inp.read(5)))
        start_response("200 OK", [])
        return [b"n"]

    body = b"line1\nabcline2\nline3\nrest"
    req = b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
    req += b"".join(b"%x\r\n%s\r\n" % (len(body[i : i + 4]), body[i : i + 4]) for i in range(0, len(body), 4))
    req += b"0\r\n\r\n"
    r = serve(h, app, lambda port, srv: exchange(port, req * 2, responses=2))
    assert [x.body for x in r.responses] == [b"n", b"n"] and not r.closed
    assert got == [(b"line1\n", b"abc", [b"line2\n", b"line3\n", b"rest"], b"", b"")] * 2


def test_a_slow_body_waits_in_the_thread_while_the_loop_serves_others(h) -> None:
    reading = threading.Event()
    got: list[bytes] = []

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/upload":
            reading.set()
            got.append(environ["wsgi.input"].read(10))  # waits for the rest, in this thread
        start_response("200 OK", [])
        return [environ["PATH_INFO"].encode()]

    def client(port, srv):
        s = socket.create_connection(("127.0.0.1", port), timeout=20)
        try:
            s.sendall(b"POST /upload HTTP/1.1\r\n" + H + b"Content-Length: 10\r\n\r\n12345")
            assert reading.wait(20)
            # the upload's thread waits for its body: the loop answers another client meanwhile
            other = get(port, "/other")
            assert other.responses[0].body == b"/other"
            assert not got
            s.sendall(b"67890")
            return s.recv(1000)
        finally:
            s.close()

    raw = serve(h, app, client)
    assert raw.endswith(b"/upload") and got == [b"1234567890"]


def test_a_large_upload_is_never_buffered_whole(h) -> None:
    size = 48 * 1024 * 1024
    go = threading.Event()
    total = []

    def app(environ, start_response):
        inp = environ["wsgi.input"]
        n = len(inp.read(65536))
        go.wait(30)  # the app pauses: the body waits in the kernel, not in the server
        while True:
            data = inp.read(65536)
            if not data:
                break
            n += len(data)
        total.append(n)
        start_response("200 OK", [])
        return [str(n).encode()]

    def client(port, srv):
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        try:
            s.sendall(b"PUT / HTTP/1.1\r\n" + H + b"Content-Length: %d\r\n\r\n" % size)
            s.setblocking(False)
            block = b"x" * 65536
            sent = 0
            stalled = 0.0
            deadline = time.monotonic() + 30
            while sent < size and time.monotonic() < deadline:  # until the server stops taking more
                try:
                    sent += s.send(block[: size - sent])
                    stalled = 0.0
                except BlockingIOError:
                    if not stalled:
                        stalled = time.monotonic()
                    elif time.monotonic() - stalled > 0.5:
                        break
                    time.sleep(0.01)
            taken = sent
            go.set()
            s.setblocking(True)
            rest = size - sent
            while rest:
                rest -= s.send(block[: min(rest, len(block))])
            return taken, s.recv(1000)
        finally:
            s.close()

    taken, raw = serve(h, app, client, config=HTTPConfig(max_body_bytes=size))
    # what was taken while the app did not read: socket buffers and the server's body buffer, not the body
    assert taken < size // 3, taken
    assert raw.endswith(str(size).encode()) and total == [size]


def test_a_client_that_does_not_read_pauses_the_generator(h) -> None:
    yielded = [0]
    closed = threading.Event()
    block = b"y" * 65536

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/next":
            start_response("200 OK", [])
            return [b"served"]
        start_response("200 OK", [("Content-Type", "application/octet-stream")])

        def endless():
            try:
                while True:
                    yielded[0] += 1
                    yield block
            finally:
                closed.set()

        return endless()

    def client(port, srv):
        s = socket.create_connection(("127.0.0.1", port), timeout=20)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        s.sendall(b"GET /stream HTTP/1.1\r\n" + H + b"\r\n")
        wait_for(lambda: len(srv.connections) == 1)
        conn = next(iter(srv.connections))
        wait_for(lambda: conn.write_paused)
        # paused: the thread waits for the client; it yields nothing more until it reads
        paused_at = yielded[0]
        time.sleep(0.3)  # proving that nothing happens takes a while: no event says "still paused"
        assert yielded[0] <= paused_at + 1
        assert yielded[0] * len(block) < 32 * 1024 * 1024
        s.recv(65536)  # a little read does not unblock an endless stream for long
        s.close()  # gone mid-response: close() runs, the thread is freed
        assert closed.wait(20)
        return get(port, "/next")

    r = serve(h, app, client, config=HTTPConfig(wsgi_threads=1))
    assert r.responses[0].body == b"served"  # the pool's one thread took the next request


def test_chunked_generator_and_write_callable_and_http10(h) -> None:
    def app(environ, start_response):
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        if environ["PATH_INFO"] == "/write":
            write(b"w1;")
            write(b"w2;")
            return [b"r1;", b"r2;"]
        return (b"g%d;" % i for i in range(3))

    def client(port, srv):
        a = get(port, "/gen")
        b = get(port, "/write")
        c = exchange(port, b"GET /gen HTTP/1.0\r\n\r\n")
        return a, b, c

    a, b, c = serve(h, app, client)
    assert a.responses[0].body == b"g0;g1;g2;" and a.responses[0].header("transfer-encoding") == "chunked"
    assert not a.closed
    assert b.responses[0].body == b"w1;w2;r1;r2;"
    assert c.responses[0].body == b"g0;g1;g2;" and c.closed  # HTTP/1.0: the close delimits it


def test_a_whole_response_is_one_write_with_its_length(h) -> None:
    def app(environ, start_response):
        start_response("200 OK", [("Content-Length", "5"), ("Connection", "close")])
        return [b"12345"]

    r = serve(h, app, lambda port, srv: get(port))
    assert r.responses[0].body == b"12345" and r.responses[0].header("content-length") == "5"
    assert r.closed  # the app's Connection: close is honoured
    assert r.raw.count(b"Content-Length") == 1


def test_file_wrapper_goes_through_the_file_path_and_other_files_are_iterated(h) -> None:
    data = os.urandom(300_000)
    closes: list[str] = []
    with tempfile.NamedTemporaryFile() as f:
        f.write(data)
        f.flush()

        class Tracked(io.FileIO):
            def read(self, *args: Any) -> Any:
                closes.append("read")  # not on the file path: the ring reads our own fd
                return super().read(*args)

            def close(self) -> None:
                closes.append("file")
                super().close()

        class Bytes(io.BytesIO):
            def close(self) -> None:
                closes.append("bytes")
                super().close()

        def app(environ, start_response):
            if environ["PATH_INFO"] == "/file":
                fl = Tracked(f.name, "rb")
                fl.seek(1000)  # from the file's position, as the spec says
                start_response("200 OK", [("Content-Type", "application/octet-stream")])
                return environ["wsgi.file_wrapper"](fl, 32768)
            start_response("200 OK", [("Content-Length", str(len(data)))])
            return environ["wsgi.file_wrapper"](Bytes(data), 8192)

        def client(port, srv):
            return (
                get(port, "/file"),
                get(port, "/bytes"),
                exchange(port, b"HEAD /file HTTP/1.1\r\n" + H + b"\r\n", head_for={0}),
            )

        a, b, c = serve(h, app, client)
    assert a.responses[0].body == data[1000:] and a.responses[0].header("content-length") == str(len(data) - 1000)
    assert not a.closed
    assert b.responses[0].body == data and not b.closed
    assert c.responses[0].status == 200 and c.responses[0].header("content-length") == str(len(data) - 1000)
    assert closes == ["file", "bytes", "file"]


# -- misuse: each answered, logged, and the worker serves on -------------------------------
def _errors(h) -> list:
    return h.take_errors("HTTP handler failed")


def test_a_raise_before_start_response_is_a_500_and_logged(h) -> None:
    def app(environ, start_response):
        if environ["PATH_INFO"] == "/boom":
            raise ValueError("app bug")
        return hello(environ, start_response)

    a, b = serve(h, app, lambda port, srv: (get(port, "/boom"), get(port, "/after")))
    assert a.responses[0].status == 500 and b"app bug" not in a.raw
    assert b.responses[0].body == b"hello /after"
    errs = _errors(h)
    assert len(errs) == 1 and isinstance(errs[0]["exception"], ValueError)


def test_a_raise_after_start_response_before_any_body_is_a_500(h) -> None:
    def app(environ, start_response):
        start_response("200 OK", [])

        def gen():
            raise KeyError("late")
            yield b"never"

        return gen()

    r = serve(h, app, lambda port, srv: get(port))
    assert r.responses[0].status == 500
    assert isinstance(_errors(h)[0]["exception"], KeyError)


def test_a_raise_after_the_head_ends_the_connection(h) -> None:
    closes = []

    class Body:
        def __iter__(self):
            yield b"first"
            raise RuntimeError("stream broke")

        def close(self):
            closes.append(1)

    def app(environ, start_response):
        start_response("200 OK", [])
        return Body()

    def client(port, srv):
        with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
            s.sendall(b"GET / HTTP/1.1\r\n" + H + b"\r\n")
            return read_to_close(s)

    raw = serve(h, app, client)
    assert raw.startswith(b"HTTP/1.1 200") and b"first" in raw and not raw.endswith(b"0\r\n\r\n")
    assert closes == [1]
    assert isinstance(_errors(h)[0]["exception"], RuntimeError)


def test_start_response_twice_is_an_error_and_exc_info_replaces_the_head(h) -> None:
    def app(environ, start_response):
        start_response("200 OK", [])
        if environ["PATH_INFO"] == "/twice":
            start_response("404 Not Found", [])
            return [b"no"]
        try:
            raise ValueError("handled")
        except ValueError:
            start_response("503 Service Unavailable", [("X-Why", "e")], sys.exc_info())
        return [b"sorry"]

    a, b = serve(h, app, lambda port, srv: (get(port, "/twice"), get(port, "/exc")))
    assert a.responses[0].status == 500
    assert "twice" in str(_errors(h)[0]["exception"])
    assert b.responses[0].status == 503 and b.responses[0].body == b"sorry" and b.responses[0].header("x-why") == "e"


def test_exc_info_after_the_head_reraises_and_ends_the_connection(h) -> None:
    def app(environ, start_response):
        start_response("200 OK", [])

        def gen():
            yield b"part"
            try:
                raise ValueError("mid-body")
            except ValueError:
                start_response("500 Oops", [], sys.exc_info())
            yield b"never"

        return gen()

    def client(port, srv):
        with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
            s.sendall(b"GET / HTTP/1.1\r\n" + H + b"\r\n")
            return read_to_close(s)

    raw = serve(h, app, client)
    assert raw.startswith(b"HTTP/1.1 200") and b"part" in raw and b"never" not in raw
    assert isinstance(_errors(h)[0]["exception"], ValueError)


def test_a_non_iterable_or_headless_return_is_a_500(h) -> None:
    def app(environ, start_response):
        if environ["PATH_INFO"] == "/int":
            start_response("200 OK", [])
            return 42
        if environ["PATH_INFO"] == "/str":
            start_response("200 OK", [])
            return ["text, not bytes"]
        return [b"no start_response"]

    a, b, c = serve(h, app, lambda port, srv: (get(port, "/int"), get(port, "/str"), get(port, "/none")))
    assert [x.responses[0].status for x in (a, b, c)] == [500, 500, 500]
    kinds = [type(e["exception"]) for e in _errors(h)]
    assert kinds == [TypeError, TypeError, RuntimeError]


@pytest.mark.parametrize("shape", ["list", "generator", "filled-then-more"])
def test_more_bytes_than_the_content_length_end_the_connection(h, shape: str) -> None:
    def app(environ, start_response):
        start_response("200 OK", [("Content-Length", "3")])
        if shape == "filled-then-more":  # the first chunk fills the length: the next is one too many
            return iter([b"abc", b"def"])
        return [b"abcdef"] if shape == "list" else iter([b"ab", b"cdef"])

    def client(port, srv):
        with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
            s.sendall(b"GET / HTTP/1.1\r\n" + H + b"\r\n")
            return read_to_close(s)

    raw = serve(h, app, client)
    assert b"cdef" not in raw and b"def" not in raw  # never more than promised
    assert "Content-Length" in str(_errors(h)[0]["exception"])


@pytest.mark.parametrize("shape", ["list", "generator"])
def test_fewer_bytes_than_the_content_length_end_the_connection(h, shape: str) -> None:
    def app(environ, start_response):
        start_response("200 OK", [("Content-Length", "10")])
        return [b"abc"] if shape == "list" else iter([b"a", b"bc"])

    def client(port, srv):
        with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
            s.sendall(b"GET / HTTP/1.1\r\n" + H + b"\r\n")
            return read_to_close(s)

    raw = serve(h, app, client)
    assert raw.startswith(b"HTTP/1.1 200") and raw.endswith(b"\r\n\r\nabc")
    assert "short" in str(_errors(h)[0]["exception"])


def test_requests_beyond_the_threads_wait_their_turn(h) -> None:
    release = threading.Event()
    running = [0]
    most = [0]
    lock = threading.Lock()

    def app(environ, start_response):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        release.wait(20)
        with lock:
            running[0] -= 1
        return hello(environ, start_response)

    def client(port, srv):
        results: list[Any] = []
        ts = [threading.Thread(target=lambda i=i: results.append(get(port, f"/{i}"))) for i in range(5)]
        for t in ts:
            t.start()
        wait_for(lambda: running[0] == 2)
        release.set()
        for t in ts:
            t.join(20)
        return results

    results = serve(h, app, client, config=HTTPConfig(wsgi_threads=2))
    assert sorted(r.responses[0].body for r in results) == [b"hello /%d" % i for i in range(5)]
    assert most[0] == 2


def test_limit_concurrency_refuses_beyond_its_count_and_multiprocess_is_said(h) -> None:
    release = threading.Event()
    started = threading.Event()
    seen: list[Any] = []

    def app(environ, start_response):
        seen.append(environ["wsgi.multiprocess"])
        if environ["PATH_INFO"] == "/hold":
            started.set()
            release.wait(20)
        return hello(environ, start_response)

    def client(port, srv):
        held: list[Any] = []
        t = threading.Thread(target=lambda: held.append(get(port, "/hold")))
        t.start()
        assert started.wait(20)
        refused = get(port, "/more")
        release.set()
        t.join(20)
        return held[0], refused, get(port, "/after")

    held, refused, after = serve(
        h, app, client, config=HTTPConfig(limit_concurrency=1, wsgi_threads=4), multiprocess=True
    )
    assert held.responses[0].body == b"hello /hold"
    assert refused.responses[0].status == 503 and refused.responses[0].header("retry-after") == "1"
    assert after.responses[0].body == b"hello /after"
    assert seen == [True, True]  # the refused request never reached the app


def test_an_iterator_that_fills_its_content_length_at_once_is_one_write(h, monkeypatch) -> None:
    from uringserve.http import wsgi

    hops: list[str] = []
    real = wsgi._Call.hop

    def counted(self, op, *args):
        hops.append(op.__name__)
        return real(self, op, *args)

    monkeypatch.setattr(wsgi._Call, "hop", counted)

    class Closing:  # werkzeug's ClosingIterator in shape: an iterator with close()
        def __init__(self, parts):
            self.parts = iter(parts)

        def __iter__(self):
            return self.parts

        def close(self):
            pass

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/one":
            start_response("200 OK", [("Content-Length", "5")])
            return Closing([b"12345"])
        if environ["PATH_INFO"] == "/empty-tail":
            start_response("200 OK", [("Content-Length", "5")])
            return Closing([b"12345", b""])
        start_response("200 OK", [])  # no length: streamed as it comes
        return Closing([b"ab"])

    a, b, c = serve(h, app, lambda port, srv: (get(port, "/one"), get(port, "/empty-tail"), get(port, "/stream")))
    assert a.responses[0].body == b"12345" and b.responses[0].body == b"12345" and not b.closed
    assert c.responses[0].body == b"ab" and c.responses[0].header("transfer-encoding") == "chunked"
    # /one: none; /empty-tail: the first chunk, an empty one (nothing to hop), the end; /stream: a chunk, the end
    assert hops == ["op_send", "op_end", "op_send", "op_end"]
