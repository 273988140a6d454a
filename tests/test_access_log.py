"""The access log: one record per response with what was answered (status,
body bytes, method, target), for every way a response is made, on both
loops; nothing when it is off; JSON lines from the command."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import sys
from typing import Any

import pytest
from test_http_server import H, app, run, sync_app

from uringserve.http import HTTPConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLF = re.compile(
    r"^127\.0\.0\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d \+0000\] "
    r'"(\S+) (\S+) HTTP/(1\.[01])" (\d{3}) (\d+) \d+\.\d{6}$'
)


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def access() -> Any:
    handler = Records()
    log = logging.getLogger("uringserve.access")
    log.addHandler(handler)
    old = log.level
    log.setLevel(logging.INFO)
    yield handler.records
    log.removeHandler(handler)
    log.setLevel(old)


def talk(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


@pytest.mark.parametrize("handler", [app, sync_app], ids=["async", "sync"])
def test_every_response_is_logged_with_what_was_sent(h, access, handler) -> None:
    requests = [
        (b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: 5\r\n\r\nhello", "POST", "/echo", 200, 5),
        (b"HEAD /echo HTTP/1.1\r\n" + H + b"\r\n", "HEAD", "/echo", 200, 0),
        (b"GET /boom HTTP/1.1\r\n" + H + b"\r\n", "GET", "/boom", 500, None),
    ]
    if handler is app:
        requests += [
            (b"GET /stream HTTP/1.1\r\n" + H + b"\r\n", "GET", "/stream", 200, len(b"part0;part1;part2;part3;part4;")),
            (b"GET /nope HTTP/1.1\r\n" + H + b"\r\n", "GET", "/nope", 404, 4),
        ]
    wire = b"".join(r[0] for r in requests) + b"GET / HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n"

    def client(port: int) -> bytes:
        return talk(port, wire)

    run(h, handler, client, config=HTTPConfig(access_log=True))
    h.take_errors("HTTP handler failed")
    got = [(r.method, r.target, r.status, r.bytes) for r in access]  # type: ignore[attr-defined]
    want = [(m, t, s, b) for _, m, t, s, b in requests] + [("GET", "/", 200, None)]
    assert len(got) == len(want), got
    for (m, t, s, b), (gm, gt, gs, gb) in zip(want, got, strict=True):
        assert (gm, gt, gs) == (m, t, s)
        if b is not None:
            assert gb == b
    for r in access:
        m = CLF.match(r.getMessage())
        assert m, r.getMessage()
        assert (m.group(1), m.group(2), int(m.group(4)), int(m.group(5))) == (r.method, r.target, r.status, r.bytes)  # type: ignore[attr-defined]


def test_a_request_that_cannot_be_parsed_is_logged(h, access) -> None:
    run(h, sync_app, lambda port: talk(port, b"GARBAGE\r\n\r\n"), config=HTTPConfig(access_log=True))
    assert [(r.method, r.status) for r in access] == [("-", 400)]  # type: ignore[attr-defined]


def test_nothing_is_logged_when_it_is_off(h, access) -> None:
    run(h, sync_app, lambda port: talk(port, b"GET / HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n"))
    assert access == []


def test_the_command_writes_json_lines() -> None:
    p = subprocess.Popen(
        [sys.executable, "-m", "uringserve", "run", "apps.http:app", "--port", "0"]
        + ["--access-log", "--log-format", "json"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert p.stdout is not None
        port = int(re.search(r":(\d+) ", p.stdout.readline()).group(1))  # type: ignore[union-attr]
        talk(port, b"GET /?q=1 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    finally:
        p.terminate()
        _, err = p.communicate(timeout=20)
    lines = [json.loads(line) for line in err.splitlines()]  # every line is JSON
    hits = [x for x in lines if x["logger"] == "uringserve.access"]
    assert len(hits) == 1
    hit = hits[0]
    assert (hit["method"], hit["target"], hit["status"], hit["bytes"]) == ("GET", "/?q=1", 200, len(b"Hello, world!\n"))
    assert hit["client"] == "127.0.0.1" and hit["duration"] >= 0 and hit["level"] == "info"
