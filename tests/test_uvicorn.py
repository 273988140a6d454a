"""uvicorn with its own httptools protocol, on `--loop uringserve.uvicorn:loop_factory`."""

from __future__ import annotations

import http.client
import os
import re
import signal
import sys
from pathlib import Path

import pytest
from conftest import Proc

pytest.importorskip("uvicorn")
pytest.importorskip("starlette")
pytest.importorskip("httptools")

HERE = Path(__file__).resolve().parent


# uvicorn binds port 0 itself and prints the port the kernel gave it
UVICORN = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+) ")


@pytest.fixture
def server():
    srv = Proc(
        [sys.executable, "-m", "uvicorn", "asgi_app:app", "--app-dir", str(HERE), "--port", "0"]
        + ["--http", "httptools", "--loop", "uringserve.uvicorn:loop_factory", "--timeout-graceful-shutdown", "5"],
        banner=UVICORN,
    )
    yield srv.port, srv
    if srv.p.poll() is None:
        srv.p.kill()
    srv.stop()


def get(
    port: int, path: str, method: str = "GET", body: bytes | None = None, conn: http.client.HTTPConnection | None = None
) -> tuple[int, bytes, dict]:
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request(method, path, body=body)
        r = c.getresponse()
        return r.status, r.read(), dict(r.getheaders())
    finally:
        if conn is None:
            c.close()


def test_requests_streaming_and_bodies(server) -> None:
    port, _ = server
    assert get(port, "/loop")[1] == b"UringEventLoop"
    assert get(port, "/lifespan")[1] == b"True"
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    for _ in range(20):  # keep-alive: one connection, many requests
        status, body, _ = get(port, "/", conn=conn)
        assert (status, body) == (200, b"hello")
    payload = os.urandom(3 << 20)
    status, body, headers = get(port, "/echo", "POST", payload, conn=conn)
    assert status == 200 and body == payload
    status, body, headers = get(port, "/stream?n=50", conn=conn)
    assert headers.get("transfer-encoding") == "chunked"
    assert body == b"".join(f"chunk {i}\n".encode() for i in range(50))
    assert get(port, "/missing")[0] == 404
    conn.close()


def test_graceful_shutdown_finishes_a_request_in_flight(server) -> None:
    """SIGTERM once the first chunk of a streamed response has arrived: the
    rest of it still comes, then the lifespan shutdown runs."""
    port, srv = server
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    conn.request("GET", "/stream?n=10&delay=0.1")
    r = conn.getresponse()
    first = r.readline()  # the response is streaming
    srv.p.send_signal(signal.SIGTERM)
    body = first + r.read()
    conn.close()
    srv.p.wait(15)  # the drain ran: stop() no longer signals it, only collects what it printed
    status, out = srv.stop(), srv.output()
    # uvicorn re-raises the signal it caught once shutdown is complete
    assert status in (0, -signal.SIGTERM), out
    assert r.status == 200 and body == b"".join(f"chunk {i}\n".encode() for i in range(10))
    assert "lifespan shutdown ran" in out
    assert "Finished server process" in out
