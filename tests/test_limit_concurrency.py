"""`--limit-concurrency N` (HTTPConfig.limit_concurrency), on both loops:
with N requests in flight (handlers waiting on an event the test holds),
the next one is answered 503 with Retry-After at once, on a connection
kept alive; the N finish with 200 when released, and requests succeed
again afterwards. The 503s are counted (uringserve_http_limited_total).
ASGI apps, async native handlers, and plain function handlers (whose
immediate answers are never refused)."""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any

import httptools
import pytest
from prometheus_client import CollectorRegistry

from uringserve.http import HTTPConfig, HTTPServer
from uringserve.http.messages import Request, Response, StreamingResponse
from uringserve.metrics import Metrics

N = 3
GET = b"GET /%s HTTP/1.1\r\nHost: t\r\n\r\n"


class Reader:
    """Responses read off one connection, one at a time (httptools)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.done: list[tuple[int, dict[bytes, bytes], bytes]] = []
        self._headers: dict[bytes, bytes] = {}
        self._body = b""
        self.parser = httptools.HttpResponseParser(self)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        self.done.append((self.parser.get_status_code(), self._headers, self._body))
        self._headers, self._body = {}, b""

    def ask(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response(self) -> tuple[int, dict[bytes, bytes], bytes]:
        n = len(self.done)
        while len(self.done) == n:
            chunk = self.sock.recv(65536)
            assert chunk, "the server closed the connection"
            self.parser.feed_data(chunk)
        return self.done[n]

    def close(self) -> None:
        self.sock.close()


class Gate:
    """Handlers that wait: `started` counts them in (a thread-safe event when
    `want` have), `release()` (from the client's thread) lets them all go."""

    def __init__(self, want: int) -> None:
        self.want = want
        self.started = 0
        self.all_in = threading.Event()
        self.go: asyncio.Event | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    async def wait(self) -> None:
        if self.go is None:
            self.go = asyncio.Event()
            self.loop = asyncio.get_running_loop()
        self.started += 1
        if self.started >= self.want:
            self.all_in.set()
        await self.go.wait()

    def release(self) -> None:
        assert self.loop is not None and self.go is not None
        self.loop.call_soon_threadsafe(self.go.set)


def serve(h, app: Any, client: Any, limit: int = N, observer: Any = None) -> tuple[Any, HTTPServer, float | None]:
    """Serve `app` with the limit; run client(port) in a thread; the result,
    the server and the limited counter a Metrics sampled from it."""

    async def main() -> Any:
        srv = HTTPServer(app, config=HTTPConfig(limit_concurrency=limit))
        srv.observer = observer
        await srv.start("127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        try:
            result = await asyncio.to_thread(client, port)
            registry = CollectorRegistry()
            Metrics(registry).sample(srv, asyncio.get_running_loop())
            return result, srv, registry.get_sample_value("uringserve_http_limited_total")
        finally:
            await srv.shutdown(timeout=5)

    return h.run(main(), timeout=60)


def overload(port: int, gate: Gate, slow: bytes, fast: bytes) -> dict[str, Any]:
    """N slow requests in flight, then two more on one connection (503, 503
    kept alive), release, the N answered, then that connection again (200)."""
    held = [Reader(port) for _ in range(N)]
    extra = Reader(port)
    try:
        for r in held:
            r.ask(slow)
        assert gate.all_in.wait(20), f"only {gate.started} of {N} handlers started"
        extra.ask(slow)
        first = extra.response()
        extra.ask(fast)
        second = extra.response()  # the 503 kept the connection: it answers again
        in_flight_then = gate.started
        gate.release()
        answered = [r.response() for r in held]
        extra.ask(slow)
        after = extra.response()
        return {
            "first": first,
            "second": second,
            "answered": answered,
            "after": after,
            "started": in_flight_then,
        }
    finally:
        for r in [*held, extra]:
            r.close()


def check_refusal(resp: tuple[int, dict[bytes, bytes], bytes]) -> None:
    status, headers, body = resp
    assert status == 503, resp
    assert headers[b"retry-after"] == b"1"
    assert b"connection" not in headers  # kept alive: the answer is complete
    assert body.startswith(b"503 Service Unavailable")


def test_asgi_requests_beyond_the_limit_get_503_at_once(h) -> None:
    gate = Gate(N)

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            raise RuntimeError("no lifespan here")
        if scope["path"] == "/slow":
            await gate.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done " + scope["path"].encode()})

    statuses: list[int] = []  # what the access log and the per-status metrics see

    def observe(conn, method, target, version, status, size, took) -> None:
        statuses.append(status)

    out, srv, counted = serve(h, app, lambda port: overload(port, gate, GET % b"slow", GET % b"fast"), observer=observe)
    check_refusal(out["first"])
    check_refusal(out["second"])  # an ASGI request is a task whatever its path: refused too
    assert sorted(statuses) == [200] * (N + 1) + [503, 503]
    assert out["started"] == N  # the refused ones never reached the app
    assert [a[0] for a in out["answered"]] == [200] * N and out["answered"][0][2] == b"done /slow"
    assert out["after"][0] == 200 and gate.started == N + 1
    assert srv.concurrency is not None and srv.concurrency.refused == 2 and srv.concurrency.in_flight == 0
    assert counted == 2


def test_async_native_handler_beyond_the_limit_gets_503(h) -> None:
    gate = Gate(N)

    async def handler(req: Request) -> Any:
        if req.raw_path == b"/slow":
            await gate.wait()
        return Response(b"done")

    out, srv, counted = serve(h, handler, lambda port: overload(port, gate, GET % b"slow", GET % b"fast"))
    check_refusal(out["first"])
    check_refusal(out["second"])
    assert [a[:1] for a in out["answered"]] == [(200,)] * N and out["after"][0] == 200
    assert counted == 2 and srv.concurrency is not None and srv.concurrency.in_flight == 0


def test_plain_handler_answers_at_once_and_its_streams_count(h) -> None:
    """A plain function's immediate answers are never refused (they hold
    nothing in flight, and take the one-frame path); its streamed responses
    count while they stream, and a request whose body must arrive first is
    a task, refused at the limit."""
    gate = Gate(N)

    async def slow_body():
        await gate.wait()
        yield b"streamed"

    def handler(req: Request) -> Any:
        if req.raw_path == b"/slow":
            return StreamingResponse(slow_body())
        return Response(b"at once")

    def client(port: int) -> dict[str, Any]:
        post = b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\n"
        out = overload_plain(port, gate, post)
        return out

    def overload_plain(port: int, gate: Gate, post: bytes) -> dict[str, Any]:
        held = [Reader(port) for _ in range(N)]
        extra = Reader(port)
        try:
            for r in held:
                r.ask(GET % b"slow")
            assert gate.all_in.wait(20)
            extra.ask(GET % b"fast")
            fast = extra.response()
            extra.ask(post)  # its head only: the handler would wait for the body as a task
            refused = extra.response()
            gate.release()
            answered = [r.response() for r in held]
            return {"fast": fast, "refused": refused, "answered": answered}
        finally:
            for r in [*held, extra]:
                r.close()

    out, srv, counted = serve(h, handler, client)
    assert out["fast"][0] == 200 and out["fast"][2] == b"at once"
    status, headers, _ = out["refused"]
    # refused before its body arrived: that body would be read as the next request, so the connection closes
    assert status == 503 and headers[b"retry-after"] == b"1" and headers[b"connection"] == b"close"
    assert [a[2] for a in out["answered"]] == [b"streamed"] * N
    assert counted == 1 and srv.concurrency is not None and srv.concurrency.in_flight == 0


def test_limit_off_builds_nothing_and_bad_values_are_refused() -> None:
    from uringserve.http.asgi import asgi_runner
    from uringserve.http.limit import ConcurrencyLimit
    from uringserve.http.native import native_runner

    assert HTTPServer(lambda req: b"", config=HTTPConfig()).concurrency is None

    # a plain handler keeps the connection's one-frame path, limit or not
    def plain(req: Request) -> Any:
        return b""

    assert native_runner(plain).plain_handler is plain  # type: ignore[attr-defined]
    assert native_runner(plain, ConcurrencyLimit(1)).plain_handler is plain  # type: ignore[attr-defined]
    assert hasattr(asgi_runner(lambda s, r, se: None, {}, None, "", ConcurrencyLimit(1)), "exchange_class")
    for bad in ({"limit_concurrency": -1}, {"retry_after": -1}):
        with pytest.raises(ValueError, match="must be >= 0"):
            HTTPConfig(**bad)
    with pytest.raises(ValueError, match="at least 1"):
        ConcurrencyLimit(0)


def test_retry_after_is_configurable(h) -> None:
    gate = Gate(1)

    async def handler(req: Request) -> Any:
        if req.raw_path == b"/slow":
            await gate.wait()
        return Response(b"ok")

    def client(port: int) -> Any:
        held, extra = Reader(port), Reader(port)
        try:
            held.ask(GET % b"slow")
            assert gate.all_in.wait(20)
            extra.ask(GET % b"x")
            got = extra.response()
            gate.release()
            held.response()
            return got
        finally:
            held.close()
            extra.close()

    async def main() -> Any:
        srv = HTTPServer(handler, config=HTTPConfig(limit_concurrency=1, retry_after=7))
        await srv.start("127.0.0.1", 0)
        try:
            return await asyncio.to_thread(client, srv.sockets[0].getsockname()[1])
        finally:
            await srv.shutdown(timeout=5)

    status, headers, _ = h.run(main(), timeout=60)
    assert status == 503 and headers[b"retry-after"] == b"7"


@pytest.mark.parametrize("loop", ["uring", "asyncio"])
@pytest.mark.parametrize("demo", ["apps.http:app", "apps.http:asgi_app"], ids=["native", "asgi"])
def test_the_command_sheds_beyond_the_limit_and_counts(demo: str, loop: str) -> None:
    """`uringserve run --limit-concurrency 1`: a request in flight (its
    handler reading a body the test holds back; its 100 Continue says it
    runs), the next one 503 at once, the held one 200 when its body comes,
    and the 503 counted in /metrics."""
    from conftest import wait_until
    from test_metrics import scrape, start

    srv, mport = start(demo, "--limit-concurrency", "1", "--loop", loop)
    try:
        held = Reader(srv.port)
        held.ask(b"POST /echo HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n")
        assert held.sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"  # its handler reads: in flight
        # a request with a body (the native demo's plain handler answers a GET at once: never refused)
        post = b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi"
        refused = Reader(srv.port)
        refused.ask(post)
        status, headers, _ = refused.response()
        # answered before its body was read: the connection ends, as after any early answer
        assert (status, headers[b"retry-after"], headers[b"connection"]) == (503, b"1", b"close")
        refused.close()
        held.ask(b"3\r\nabc\r\n0\r\n\r\n")
        assert held.response()[::2] == (200, b"abc")
        extra = Reader(srv.port)
        extra.ask(post)
        assert extra.response()[::2] == (200, b"hi")
        # counters are sampled each second
        assert wait_until(lambda: scrape(mport).get("uringserve_http_limited_total") == 1, interval=0.2)
        m = scrape(mport)
        held.close()
        extra.close()
    finally:
        code = srv.stop()
    assert code == 0, srv.output()
    assert m['uringserve_http_requests_total{code="5xx"}'] == 1
    assert m['uringserve_http_requests_total{code="2xx"}'] == 2
