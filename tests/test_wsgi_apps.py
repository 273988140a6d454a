"""WSGI apps nobody here wrote, served by `uringserve run` as a user would:
Flask (routing, JSON, stream_with_context, send_file) and Django (a
minimal project: views, a streamed response, FileResponse), driven by
http.client and compared byte for byte; and a WSGI app that blocks forever,
whose worker a SIGTERM still ends after --graceful-timeout, naming the
thread it left behind."""

from __future__ import annotations

import http.client
import json
import os
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Proc

pytest.importorskip("flask")
pytest.importorskip("django")


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("wsgi") / "data.bin"
    p.write_bytes(os.urandom(1024 * 1024 + 17))
    return p


def serve(app: str, data_file: Path, *extra: str) -> Proc:
    env = dict(os.environ, WSGI_TEST_FILE=str(data_file))
    return Proc([sys.executable, "-m", "uringserve", "run", app, "--port", "0", *extra], env=env)


@pytest.fixture(params=["wsgi", "auto"])
def flask_server(request: pytest.FixtureRequest, data_file: Path) -> Iterator[Proc]:
    srv = serve("tests.wsgi_flask_app:app", data_file, "--interface", request.param)
    try:
        yield srv
    finally:
        srv.stop()


def call(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None) -> tuple:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, dict((k.lower(), v) for k, v in r.getheaders()), r.read()
    finally:
        c.close()


def test_flask(flask_server: Proc, data_file: Path) -> None:
    port = flask_server.port
    assert call(port, "GET", "/")[2] == b"hello from flask"
    assert call(port, "GET", "/user/ada")[2] == b"user ada"
    assert call(port, "GET", "/missing")[0] == 404
    payload = {"items": [1, 2, 3], "name": "é"}
    status, headers, body = call(
        port, "POST", "/json", json.dumps(payload).encode(), {"Content-Type": "application/json"}
    )
    assert status == 200 and headers["content-type"] == "application/json"
    assert json.loads(body) == {"got": payload, "n": 3}
    status, headers, body = call(port, "GET", "/stream?n=4")
    assert headers.get("transfer-encoding") == "chunked"
    assert body == b"/stream:0;/stream:1;/stream:2;/stream:3;"
    status, headers, body = call(port, "GET", "/file")
    assert status == 200 and body == data_file.read_bytes()
    assert headers["content-length"] == str(data_file.stat().st_size)
    # keep-alive across requests on one connection (http.client reuses it)
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        for name in ("a", "b", "c"):
            c.request("GET", f"/user/{name}")
            assert c.getresponse().read() == f"user {name}".encode()
    finally:
        c.close()


def test_django(data_file: Path) -> None:
    srv = serve("tests.wsgi_django_app:application", data_file)  # auto-detected
    try:
        port = srv.port
        assert call(port, "GET", "/?a=1")[2] == b"hello from django GET /?a=1"
        status, _, body = call(port, "POST", "/echo", b"x" * 70000, {"Content-Type": "application/octet-stream"})
        assert status == 200 and json.loads(body) == {"size": 70000, "type": "application/octet-stream"}
        assert call(port, "GET", "/stream")[2] == b"part0;part1;part2;part3;"
        status, headers, body = call(port, "GET", "/file")
        assert status == 200 and body == data_file.read_bytes()
        assert headers["content-disposition"].startswith("attachment")
        assert call(port, "GET", "/nope")[0] == 404
    finally:
        srv.stop()


def test_a_blocked_app_thread_does_not_keep_the_worker_from_exiting(tmp_path: Path) -> None:
    srv = Proc(
        [
            sys.executable,
            "-m",
            "uringserve",
            "run",
            "tests.wsgi_block_app:app",
            "--port",
            "0",
            "--graceful-timeout",
            "1",
        ]
    )
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
    try:
        s.sendall(b"GET /block HTTP/1.1\r\nHost: t\r\n\r\n")
        srv.wait_line(lambda line: "app: blocking" in line)
        # the loop still answers others while that thread blocks
        assert call(srv.port, "GET", "/ok")[2] == b"ok"
        got: list[bytes] = []
        reader = threading.Thread(target=lambda: got.append(s.recv(100)), daemon=True)
        reader.start()
        code = srv.stop()  # SIGTERM; SIGKILL only after 10 s
        reader.join(20)
    finally:
        s.close()
    out = srv.output()
    assert code == 1, out  # exited by itself (not SIGKILL), 1 as any drain that had to abort
    assert "uringserve-wsgi-1 still running GET /block" in out, out
    assert got == [b""]  # its connection was cut, not left open
