"""No response lost at close: when the server ends a connection after a
response while the client is still sending, everything written reaches the
client. Closing a socket with unread bytes in its receive queue makes the
kernel answer RST, and the RST drops what was still in the send queue:
the end of the response. So the server lingers (http/protocol.py _linger:
FIN after the response, then read and discard until the client closes, at
most LINGER seconds), as nginx's lingering_close.

Each path that ends a connection after writing is driven with a client
that keeps sending while it reads, on both loops: a streamed response
(native StreamingResponse, ASGI more_body) ended by the client's
Connection: close or by keepalive_requests, a streamed response whose
handler fails midway (what was sent arrives, then a clean EOF, not a
reset), and a drain. And whole runs of wrk and uringload over connections
the server ends every 100 requests (--keepalive-requests 100) count no
socket error on either loop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import select
import shutil
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import PY, Proc
from test_http_server import H, handler_errors, run

from loadtest import build_plan
from loadtest import run as load
from loadtest.engine import LOAD_ERRORS
from uringserve.http import HTTPConfig, HTTPServer, Response, StreamingResponse, protocol

CHUNK = 32 * 1024
CHUNKS = 8  # 256 KiB: more than the loopback socket buffers take at once, so the end is in flight at the close
ROUNDS = 50
PIPELINED = (b"GET /more HTTP/1.1\r\n" + H + b"\r\n") * 64
WRK = shutil.which("wrk") or "/usr/bin/wrk"


def part(i: int) -> bytes:
    return bytes([97 + i]) * CHUNK


async def _parts(fail_after: int | None = None) -> Any:
    for i in range(CHUNKS):
        if i == fail_after:
            raise RuntimeError("stream broke")
        yield part(i)
        await asyncio.sleep(0)


def native(req: Any) -> Any:
    if req.raw_path == b"/broken":
        return StreamingResponse(_parts(fail_after=4))
    return StreamingResponse(_parts())


async def asgi(scope: dict, receive: Any, send: Any) -> None:
    assert scope["type"] == "http"
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    for i in range(CHUNKS):
        await send({"type": "http.response.body", "body": part(i), "more_body": True})
        await asyncio.sleep(0)
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def keeps_sending(port: int, request: bytes) -> bytes:
    """Send `request`, then keep sending pipelined requests from a second
    thread while reading to the end. What was read, and "<RST>" if the
    connection was reset rather than closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        stop = threading.Event()

        def junk() -> None:
            try:
                while not stop.is_set():
                    s.sendall(PIPELINED)
            except OSError:
                pass  # reset (the test fails on what was read) or closed by us

        t = threading.Thread(target=junk)
        t.start()
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
        except ConnectionResetError:
            data += b"<RST>"
        finally:
            stop.set()
            with contextlib.suppress(OSError):  # not connected any more after a reset
                s.shutdown(socket.SHUT_RDWR)  # ends a sendall blocked on a full buffer
            t.join(10)
        return data


def dechunk(body: bytes) -> tuple[bytes, bool]:
    """A chunked body's content, and whether its last chunk came."""
    out = []
    while True:
        size_line, sep, rest = body.partition(b"\r\n")
        if not sep:
            return b"".join(out), False
        size = int(size_line, 16)
        if size == 0:
            return b"".join(out), rest == b"\r\n"
        if len(rest) < size + 2:
            return b"".join(out) + rest[:size], False
        out.append(rest[:size])
        body = rest[size + 2 :]


WHOLE = b"".join(part(i) for i in range(CHUNKS))


def assert_whole(data: bytes) -> None:
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"connection: close" in head.lower(), data[:200]
    content, last = dechunk(body)
    assert content == WHOLE and last, (len(content), data[-60:])


CLOSE_REQUEST = b"GET /stream HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n"
PLAIN_REQUEST = b"GET /stream HTTP/1.1\r\n" + H + b"\r\n"


@pytest.mark.parametrize(
    "interface, request_bytes, config",
    [
        ("native", CLOSE_REQUEST, None),
        ("asgi", CLOSE_REQUEST, None),
        ("native", PLAIN_REQUEST, HTTPConfig(keepalive_requests=1)),
        ("asgi", PLAIN_REQUEST, HTTPConfig(keepalive_requests=1)),
    ],
    ids=["native-close", "asgi-close", "native-keepalive-requests", "asgi-keepalive-requests"],
)
def test_streamed_responses_to_a_client_that_keeps_sending_arrive_whole(
    h: Any, interface: str, request_bytes: bytes, config: HTTPConfig | None
) -> None:
    app = native if interface == "native" else asgi

    def client(port: int) -> list[bytes]:
        return [keeps_sending(port, request_bytes) for _ in range(ROUNDS)]

    got = run(h, app, client, config=config, interface=interface)
    cut = [i for i, data in enumerate(got) if not data.endswith(b"0\r\n\r\n")]
    assert not cut, f"{len(cut)} of {ROUNDS} responses cut: {got[cut[0]][-60:]!r}"
    for data in got:
        assert_whole(data)


def test_a_stream_that_fails_midway_ends_with_what_was_sent_and_a_clean_close(h: Any) -> None:
    """A handler that fails after its response began: the connection ends
    (no last chunk: the client knows it is cut), but what was sent before
    arrives, followed by EOF, not a reset, while the client keeps sending."""

    def client(port: int) -> list[bytes]:
        return [keeps_sending(port, b"GET /broken HTTP/1.1\r\n" + H + b"\r\n") for _ in range(ROUNDS)]

    got = run(h, native, client)
    assert len(handler_errors(h)) == ROUNDS
    for data in got:
        assert not data.endswith(b"<RST>"), data[-60:]
        content, last = dechunk(data.partition(b"\r\n\r\n")[2])
        assert content == WHOLE[: 4 * CHUNK] and not last, (len(content), data[-60:])


@pytest.mark.parametrize("when", ["before-head", "after-head"])
def test_a_drain_ends_a_streamed_response_whole_while_the_client_keeps_sending(h: Any, when: str) -> None:
    """A drain while a streamed response is in flight, the client pipelining
    more. Begun before the response's head: it says Connection: close and
    arrives whole. Begun after it (the head promised keep-alive): the
    response arrives whole, then the answer to the next request, which says
    Connection: close, and the rest is read and discarded."""
    started = threading.Event()
    go = asyncio.Event()

    async def gated() -> Any:
        await go.wait()
        async for chunk in _parts():
            yield chunk

    async def app(req: Any) -> Any:
        started.set()
        if when == "before-head":
            await go.wait()
            return StreamingResponse(_parts())
        return StreamingResponse(gated())

    async def main() -> bytes:
        srv = HTTPServer(app)
        await srv.start("127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        answer = asyncio.ensure_future(asyncio.to_thread(keeps_sending, port, PLAIN_REQUEST))
        await asyncio.to_thread(started.wait, 10)
        stop = asyncio.ensure_future(srv.shutdown(timeout=10))
        await asyncio.sleep(0)  # the drain has begun
        go.set()
        data = await answer
        await stop
        return data

    data = h.run(main(), timeout=60)
    if when == "after-head":
        head, _, rest = data.partition(b"\r\n\r\n")
        assert b"connection" not in head.lower()  # kept alive: the drain began after it was sent
        end = rest.index(b"\r\n0\r\n\r\n") + 7
        assert dechunk(rest[:end]) == (WHOLE, True)
        data = rest[end:]
    assert_whole(data)


def test_a_slow_reader_of_a_large_last_response_gets_it_whole(h: Any, monkeypatch: Any) -> None:
    """LINGER counts from when the response has left, not from the FIN's
    request: a last response that takes longer than LINGER to leave (a
    large one, a slow reader) is not cut by the linger's end while the
    client keeps sending (LINGER shortened to 0.2 s, a 16 MiB response read
    64 KiB at a time at ~30 MB/s, through a small receive window)."""
    monkeypatch.setattr(protocol, "LINGER", 0.2)
    big = b"z" * (16 << 20)

    def app(req: Any) -> Any:
        return Response(big)

    def client(port: int) -> bytes:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        s.settimeout(10)
        s.connect(("127.0.0.1", port))
        with s:
            s.sendall(CLOSE_REQUEST)
            stop = threading.Event()

            def junk() -> None:
                with contextlib.suppress(OSError):
                    while not stop.is_set():
                        s.sendall(PIPELINED)

            t = threading.Thread(target=junk)
            t.start()
            data = bytearray()
            try:
                while chunk := s.recv(65536):
                    data += chunk
                    time.sleep(0.002)  # the slow reader this test is about
            except ConnectionResetError:
                data += b"<RST>"
            finally:
                stop.set()
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                t.join(10)
            return bytes(data)

    data = run(h, app, client)
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"connection: close" in head.lower()
    assert body == big, (len(body), data[-40:])


def tls_keeps_sending(port: int, ctx: ssl.SSLContext, request: bytes) -> bytes:
    """keeps_sending() over TLS, in one thread (an SSL socket takes no
    concurrent reads and writes): reads until the response's last chunk,
    the close, or a reset, sending pipelined requests whenever it can."""
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="localhost")
    with s:
        s.sendall(request)
        s.setblocking(False)
        data = b""
        while not data.endswith(b"\r\n0\r\n\r\n"):
            readable, writable, _ = select.select([s], [s], [], 10)
            assert readable or writable, "neither readable nor writable in 10 s"
            try:
                if readable or s.pending():
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                if writable:
                    s.send(PIPELINED)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                continue
            except OSError as exc:  # a reset, or the server's close that cut the response
                return data + f"<{exc!r}>".encode()
        return data


def server_tls(kind: str, ca: Any, folder: Path) -> Any:
    """What HTTPServer(ssl=) is given: asyncio's SSLProtocol's context, or
    the core's TLS (uringserve.tls.CoreTLS; its stdlib context on the asyncio loop)."""
    issued = ca.issue_cert("localhost")
    if kind == "sslprotocol":
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        issued.configure_cert(ctx)
        return ctx
    from uringserve.tls import CoreTLS

    issued.private_key_and_cert_chain_pem.write_to_path(str(folder / "server.pem"))
    return CoreTLS(str(folder / "server.pem"))


@pytest.mark.parametrize("tls", ["sslprotocol", "core"])
def test_streamed_responses_over_tls_to_a_client_that_keeps_sending_arrive_whole(
    h: Any, tls: str, tmp_path: Path
) -> None:
    """TLS: asyncio's SSL transport cannot half-close, and its close
    (close_notify, then reading the client's) aborts on the client's further
    bytes, resetting the end of the response: 15-22 of 30 cut on both loops.
    A framed last response lingers without FIN instead."""
    import trustme

    ca = trustme.CA()
    server_ctx = server_tls(tls, ca, tmp_path)
    client_ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(client_ctx)

    def client(port: int) -> list[bytes]:
        return [tls_keeps_sending(port, client_ctx, CLOSE_REQUEST) for _ in range(ROUNDS)]

    got = run(h, native, client, ssl=server_ctx)
    cut = [i for i, data in enumerate(got) if not data.endswith(b"0\r\n\r\n")]
    assert not cut, f"{len(cut)} of {ROUNDS} responses cut: {got[cut[0]][-60:]!r}"
    for data in got:
        assert_whole(data)


@pytest.mark.parametrize(
    "request_bytes", [b"GET /stream HTTP/1.0\r\n" + H + b"\r\n", b"GET /broken HTTP/1.1\r\n" + H + b"\r\n"]
)
@pytest.mark.parametrize("tls", ["sslprotocol", "core"])
def test_over_tls_a_body_the_close_delimits_ends_with_the_close(
    h: Any, monkeypatch: Any, request_bytes: bytes, tls: str, tmp_path: Path
) -> None:
    """Over TLS, where lingering sends no FIN, a body that only the close
    ends is not held back by a linger: HTTP/1.0 without a length, and a
    chunked body cut midway by its handler's failure (LINGER made 60 s: a
    linger would leave the client waiting past its 10 s timeout)."""
    import trustme

    monkeypatch.setattr(protocol, "LINGER", 60.0)
    ca = trustme.CA()
    server_ctx = server_tls(tls, ca, tmp_path)
    client_ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(client_ctx)

    def client(port: int) -> bytes:
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        with client_ctx.wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(request_bytes)
            data = b""
            with contextlib.suppress(ssl.SSLEOFError):  # a close without close_notify still ends it
                while chunk := s.recv(65536):
                    data += chunk
            return data

    data = run(h, native, client, ssl=server_ctx)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    if b"HTTP/1.0" in request_bytes:
        assert b"transfer-encoding" not in head.lower() and body == WHOLE, len(body)
    else:
        assert len(handler_errors(h)) == 1
        assert dechunk(body) == (WHOLE[: 4 * CHUNK], False)


def test_over_the_cores_tls_a_last_framed_response_ends_with_close_notify_and_fin(
    h: Any, monkeypatch: Any, tmp_path: Path
) -> None:
    """A framed last response (Connection: close) to a client that reads to
    the end: the core's TLS transport half-closes as TLS does (close_notify,
    then FIN, the client's further bytes still read), so the client sees the
    clean end at once; the linger then waits for its close. Before, neither
    left until the client closed or LINGER passed (made 60 s here: the
    client's 10 s timeout would fail first). asyncio's SSL transport cannot
    half-close (the test above), so this is the core's, on the ring."""
    import trustme

    if h.name != "uring":
        pytest.skip("the core's TLS runs on UringEventLoop; the asyncio loop uses SSLProtocol")
    monkeypatch.setattr(protocol, "LINGER", 60.0)
    ca = trustme.CA()
    server_ctx = server_tls("core", ca, tmp_path)
    client_ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(client_ctx)

    def client(port: int) -> tuple[bytes, str]:
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        # ragged EOFs raise: a FIN without close_notify would be SSLEOFError
        with client_ctx.wrap_socket(raw, server_hostname="localhost", suppress_ragged_eofs=False) as s:
            s.sendall(CLOSE_REQUEST)
            data = b""
            try:
                while chunk := s.recv(65536):
                    data += chunk
            except OSError as exc:
                return data, repr(exc)
            return data, "close_notify"

    data, end = run(h, native, client, ssl=server_ctx)
    assert end == "close_notify"
    assert_whole(data)


# -- whole runs: connections the server ends every 100 requests -----------------------------
LOOPS = ["uring", "asyncio"]


def server(loop: str) -> Proc:
    return Proc(
        [PY, "-m", "uringserve", "run", "apps.http:app", "--port", "0", "--loop", loop, "--keepalive-requests", "100"]
    )


@pytest.mark.skipif(not os.path.exists(WRK), reason="wrk is not installed (make test's setup installs it)")
@pytest.mark.parametrize("loop", LOOPS)
def test_wrk_sees_no_socket_error_at_keepalive_requests_closes(loop: str) -> None:
    srv = server(loop)
    try:
        out = subprocess.run(
            ["setpriv", "--pdeathsig", "KILL", "--", WRK, "-t1", "-c20", "-d2s", f"http://127.0.0.1:{srv.port}/"],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
    finally:
        srv.stop()
    n = re.search(r"(\d+) requests in", out)
    assert n and int(n.group(1)) > 2000, out  # 20+ closes by the server per connection
    assert "Socket errors" not in out and "Non-2xx" not in out, out


@pytest.mark.parametrize("loop", LOOPS)
def test_uringload_sees_no_socket_error_at_keepalive_requests_closes(loop: str) -> None:
    srv = server(loop)
    try:
        res = load(build_plan(f"http://127.0.0.1:{srv.port}/", conns=20, duration=1.5))
    finally:
        srv.stop()
    assert res.stats["closes_by_peer"] > 20, res.stats
    assert res.stats["errors"] == dict.fromkeys(LOAD_ERRORS, 0)
    assert res.stats["by_class"][2] == res.requests
