"""The access log: one record per response with what was answered (status,
body bytes, method, target), for every handler kind (tests/http_kinds.py)
and every way a response is made, alone and chained with the metrics
observer, on both loops; nothing when it is off; JSON lines from the
command for both demo kinds."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from typing import Any

import pytest
from conftest import ROOT
from http_client import Resp, exchange, talk
from http_kinds import ROUTES, kind, serve  # noqa: F401 (kind: the fixture)
from prometheus_client import CollectorRegistry
from test_http_server import H, app, run, sync_app

from uringserve.http import HTTPConfig, HTTPError, Request
from uringserve.http.framing import error_body
from uringserve.metrics import Metrics

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


def logged(access: list[logging.LogRecord]) -> list[tuple[str, str, int, int]]:
    """(method, target, status, bytes) of each record, checked against its CLF line."""
    out = []
    for r in access:
        m = CLF.match(r.getMessage())
        assert m, r.getMessage()
        fields = (r.method, r.target, r.status, r.bytes)  # type: ignore[attr-defined]
        assert (m.group(1), m.group(2), int(m.group(4)), int(m.group(5))) == fields
        out.append(fields)
    return out


# what each route's response was, as the log must say it: HEAD sends no body
WANT = [(r.method, r.path, r.status, len(r.body)) for r in ROUTES]


@pytest.mark.parametrize("metrics", [False, True], ids=["log", "log+metrics"])
def test_every_kind_logs_every_response_with_what_was_sent(h, kind, access, metrics: bool) -> None:  # noqa: F811
    """Every handler kind, alone and with the metrics observer beside the
    log (the two chained): the same bytes on the wire (serve() checks them),
    one line per response, in order, naming the body bytes sent."""
    registry = CollectorRegistry()
    observer = Metrics(registry).observe if metrics else None
    serve(h, kind, config=HTTPConfig(access_log=True), observer=observer)
    assert logged(access) == WANT
    if metrics:
        assert registry.get_sample_value("uringserve_http_request_duration_seconds_count") == len(WANT)


def test_a_response_cut_by_a_failing_stream_logs_what_was_sent(h, access) -> None:
    run(
        h,
        app,
        lambda port: talk(port, b"GET /boom-late HTTP/1.1\r\n" + H + b"\r\n"),
        config=HTTPConfig(access_log=True),
    )
    h.take_errors("HTTP handler failed")
    assert logged(access) == [("GET", "/boom-late", 200, len(b"first"))]


def test_a_request_that_cannot_be_parsed_is_logged(h, access) -> None:
    answer = run(h, sync_app, lambda port: talk(port, b"GARBAGE\r\n\r\n"), config=HTTPConfig(access_log=True))
    body = answer.partition(b"\r\n\r\n")[2]
    assert answer.startswith(b"HTTP/1.1 400 ") and body
    assert logged(access) == [("-", "-", 400, len(body))]


def test_an_error_a_handler_raises_is_logged_as_answered(h, access) -> None:
    """A body over the limit found while the handler reads it (HTTPError
    413), and an HTTPError a handler raises itself, to GET and to HEAD: the
    log has the status and the body bytes the wire has (fail() and the log
    take them from one decision)."""
    chunked = (
        b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n14\r\n" + b"x" * 20 + b"\r\n0\r\n\r\n"
    )
    result = run(h, app, lambda port: exchange(port, chunked), config=HTTPConfig(access_log=True, max_body_bytes=10))
    (resp,) = result.responses
    assert resp.status == 413 and resp.body == error_body(413, "request body larger than 10 bytes")
    assert logged(access) == [("POST", "/echo", 413, len(resp.body))]
    access.clear()

    def refusing(req: Request) -> None:
        raise HTTPError(422, "no such thing")

    def client(port: int) -> list[Resp]:
        head = exchange(port, b"HEAD /x HTTP/1.1\r\n" + H + b"\r\n", head_for={0}).responses
        return head + exchange(port, b"GET /y HTTP/1.1\r\n" + H + b"\r\n").responses

    head, get = run(h, refusing, client, config=HTTPConfig(access_log=True))
    assert (head.status, head.body, get.status) == (422, b"", 422)
    assert get.body == error_body(422, "no such thing")
    assert logged(access) == [("HEAD", "/x", 422, 0), ("GET", "/y", 422, len(get.body))]


def test_nothing_is_logged_when_it_is_off(h, access) -> None:
    run(h, sync_app, lambda port: talk(port, b"GET / HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n"))
    assert access == []


@pytest.mark.parametrize("demo", ["apps.http:app", "apps.http:asgi_app"], ids=["native", "asgi"])
def test_the_command_writes_json_lines(demo: str) -> None:
    p = subprocess.Popen(
        [sys.executable, "-m", "uringserve", "run", demo, "--port", "0"] + ["--access-log", "--log-format", "json"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert p.stdout is not None
        port = int(re.search(r":(\d+) ", p.stdout.readline()).group(1))  # type: ignore[union-attr]
        answer = talk(port, b"GET /?q=1 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"\r\n\r\nHello, world!\n")
    finally:
        p.terminate()
        _, err = p.communicate(timeout=20)
    lines = [json.loads(line) for line in err.splitlines()]  # every line is JSON
    hits = [x for x in lines if x["logger"] == "uringserve.access"]
    assert len(hits) == 1
    hit = hits[0]
    assert (hit["method"], hit["target"], hit["status"], hit["bytes"]) == ("GET", "/?q=1", 200, len(b"Hello, world!\n"))
    assert hit["client"] == "127.0.0.1" and hit["duration"] >= 0 and hit["level"] == "info"
