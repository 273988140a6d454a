"""uvicorn with its own httptools protocol, on `--loop uringserve.uvicorn:loop_factory`."""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import free_port

pytest.importorskip("uvicorn")
pytest.importorskip("starlette")
pytest.importorskip("httptools")

HERE = Path(__file__).resolve().parent


@pytest.fixture
def server():
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "asgi_app:app",
            "--port",
            str(port),
            "--http",
            "httptools",
            "--loop",
            "uringserve.uvicorn:loop_factory",
            "--timeout-graceful-shutdown",
            "5",
        ],
        cwd=HERE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    end = time.monotonic() + 20
    while True:
        probe = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        try:
            probe.request("GET", "/")
            probe.getresponse().read()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > end:
                proc.kill()
                pytest.fail(f"uvicorn did not start: {proc.communicate()[0]}")
            time.sleep(0.1)
        finally:
            probe.close()
    yield port, proc
    if proc.poll() is None:
        proc.kill()
    proc.communicate()


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
    port, proc = server
    result: dict = {}

    def slow() -> None:
        result["resp"] = get(port, "/stream?n=10&delay=0.1")

    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.3)  # the response is streaming
    proc.send_signal(signal.SIGTERM)
    t.join(15)
    out, _ = proc.communicate(timeout=15)
    # uvicorn re-raises the signal it caught once shutdown is complete
    assert proc.returncode in (0, -signal.SIGTERM), out
    status, body, _ = result["resp"]
    assert status == 200 and body == b"".join(f"chunk {i}\n".encode() for i in range(10))
    assert "lifespan shutdown ran" in out
    assert "Finished server process" in out
