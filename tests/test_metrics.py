"""--metrics: the Prometheus endpoint's names and values after known
traffic, parsed with prometheus_client's own text parser. In process for
every handler kind (the response classes, the latency histogram's buckets
and sum); through `uringserve run` for both demo kinds with --access-log
too (the bytes, the log lines, the counters), open and refused
connections, workers summed by the supervisor with a dead worker's gauges
dropped from the sum; /ready turns 503 as soon as a drain begins; worker
restarts are counted.

The endpoint binds the port given (0: the kernel picks) and logs where it
listens; the tests read that line, never guess a free port."""

from __future__ import annotations

import math
import os
import re
import signal
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from conftest import Proc, children, uringserve, wait_until
from http_client import talk
from http_kinds import ROUTES, SLOW, kind, serve  # noqa: F401 (kind: the fixture)
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from uringserve import faults
from uringserve.metrics import LATENCY_BUCKETS, Metrics

HIST = "uringserve_http_request_duration_seconds"


# ---- in process: every handler kind -------------------------------------------------


def histogram(value: Callable[..., Any]) -> dict[str, float]:
    """The latency histogram's buckets (by `le`), count and sum."""
    out = {le: value(f"{HIST}_bucket", {"le": le}) for le in [*map(str, LATENCY_BUCKETS), "+Inf"]}
    out["count"] = value(f"{HIST}_count")
    out["sum"] = value(f"{HIST}_sum")
    return out


def check_histogram(hist: dict[str, float], count: int, slow: int) -> None:
    """`count` observations, `slow` of them longer than SLOW seconds."""
    buckets = [hist[str(le)] for le in LATENCY_BUCKETS] + [hist["+Inf"]]
    assert buckets == sorted(buckets), hist  # cumulative
    assert hist["+Inf"] == hist["count"] == count, hist
    assert hist["0.05"] <= count - slow, hist  # SLOW (0.06 s) is beyond the 0.05 bucket
    assert hist["sum"] >= slow * SLOW, hist


def test_every_kind_is_counted_by_class_and_timed(h, kind) -> None:  # noqa: F811
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    began = time.monotonic()
    serve(h, kind, observer=metrics.observe)
    took = time.monotonic() - began
    value = registry.get_sample_value
    by_class = {c: value("uringserve_http_requests_total", {"code": f"{c}xx"}) for c in range(1, 6)}
    assert by_class == {c: sum(1 for r in ROUTES if r.status // 100 == c) for c in range(1, 6)}
    assert by_class[5] == 1  # /boom
    hist = histogram(value)
    check_histogram(hist, len(ROUTES), slow=1)
    # in seconds: no response is timed longer than the whole exchange took
    within = next((le for le in LATENCY_BUCKETS if le >= took), None)
    if within is not None:  # the exchange took less than the last bucket (10 s)
        assert hist[str(within)] == len(ROUTES), (hist, took)


# ---- through the command --------------------------------------------------------


def start(*args: str, env: dict[str, str] | None = None) -> tuple[Proc, int]:
    """`uringserve run ARGS --metrics 127.0.0.1:0`: the server and its metrics port."""
    srv = Proc(
        [sys.executable, "-m", "uringserve", "run", *args, "--port", "0", "--metrics", "127.0.0.1:0"],
        env=None if env is None else dict(os.environ, **env),
    )
    return srv, srv.metrics_port()  # in the banner, once the endpoint listens


def scrape(port: int) -> dict[str, float]:
    """Every sample, by name and labels (name{k="v"})."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def scraped_histogram(m: dict[str, float]) -> dict[str, float]:
    def value(name: str, labels: dict[str, str] | None = None) -> float:
        key = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
        return m[key]

    return histogram(value)


def status(port: int, path: str) -> int:
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10).status
    except urllib.error.HTTPError as exc:
        return exc.code


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode()


HELLO_RESPONSE = re.compile(
    rb"HTTP/1\.1 200 OK\r\n(?i:Content-Type): text/plain; charset=utf-8\r\nContent-Length: 14\r\n"
    rb"Date: \w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT\r\nServer: uringserve\r\nConnection: close\r\n\r\n"
    rb"Hello, world!\n"
)
# the demo's traffic: (request, status, the access log's method, target and bytes)
TRAFFIC = [(get("/"), 200, "GET", "/", 14)] * 5 + [
    (get("/nope"), 404, "GET", "/nope", 14),
    (get("/nope"), 404, "GET", "/nope", 14),
    (b"NOT HTTP\r\n\r\n", 400, "-", "-", None),
    (b"GET / HTTP/1.2\r\nHost: t\r\n\r\n", 505, "-", "-", None),
]
# tests.worker_app answers every path with its pid
WORKER_TRAFFIC = [(get("/"), 200)] * 5 + [(b"NOT HTTP\r\n\r\n", 400), (b"GET / HTTP/1.2\r\nHost: t\r\n\r\n", 505)]
ACCESS = re.compile(r'uringserve\.access: 127\.0\.0\.1 - - \[[^]]+\] "(\S+) (\S+) HTTP/1\.1" (\d{3}) (\d+) \d+\.\d{6}$')


@pytest.mark.parametrize("demo", ["apps.http:app", "apps.http:asgi_app"], ids=["native", "asgi"])
def test_one_process_with_access_log_and_metrics(demo: str) -> None:
    """Both options that wrap the request path at once, for both demo kinds:
    the exact response, one log line per response, the counters."""
    srv, mport = start(demo, "--access-log")
    try:
        assert (status(mport, "/ready"), status(mport, "/live"), status(mport, "/x")) == (200, 200, 404)
        with pytest.raises(urllib.error.HTTPError) as nope:  # a wrong path says which are served
            urllib.request.urlopen(f"http://127.0.0.1:{mport}/x", timeout=10)
        assert (nope.value.headers["Content-Type"], nope.value.read()) == ("text/plain", b"/metrics, /ready or /live\n")
        for req, code, *_ in TRAFFIC:
            answer = talk(srv.port, req)
            assert answer.startswith(b"HTTP/1.1 %d " % code), answer
            if code == 200:
                assert HELLO_RESPONSE.fullmatch(answer), answer
        # responses are counted as they happen; connections are sampled each second
        assert wait_until(lambda: scrape(mport).get("uringserve_connections_accepted_total", 0) >= len(TRAFFIC))
        m = scrape(mport)
        log = [ACCESS.search(line) for line in srv.output().splitlines() if "uringserve.access" in line]
    finally:
        code = srv.stop()
    assert code == 0, srv.output()
    assert m['uringserve_http_requests_total{code="2xx"}'] == 5
    assert m['uringserve_http_requests_total{code="4xx"}'] == 3  # two 404s and a 400
    assert m['uringserve_http_requests_total{code="5xx"}'] == 1  # the 505
    check_histogram(scraped_histogram(m), len(TRAFFIC), slow=0)
    assert m["uringserve_connections_accepted_total"] == len(TRAFFIC)
    assert m["uringserve_ring_accepts_total"] == len(TRAFFIC) and m["uringserve_ring_sqes_total"] > 0
    assert m["uringserve_ring_slots_total"] > 0
    # small requests: every byte through the provided-buffer ring, none parked for bulk
    assert m["uringserve_ring_pbuf_recv_bytes_total"] == m["uringserve_ring_recv_bytes_total"] > 0
    assert m["uringserve_ring_bulk_recv_bytes_total"] == m["uringserve_ring_bulk_parked"] == 0
    assert m["uringserve_connections_refused_total"] == 0
    assert all(log) and len(log) == len(TRAFFIC), log
    got = [(x.group(1), x.group(2), int(x.group(3)), int(x.group(4))) for x in log if x]
    assert [g[:3] for g in got] == [(meth, target, code) for _, code, meth, target, _ in TRAFFIC]
    assert [g[3] for g, t in zip(got, TRAFFIC, strict=True) if t[4] is not None] == [t[4] for t in TRAFFIC if t[4]]


def test_open_connections_are_a_gauge() -> None:
    srv, mport = start("apps.http:app")
    held = []
    try:
        for _ in range(3):  # answered, then held open (keep-alive)
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
            s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            assert s.recv(4096).endswith(b"Hello, world!\n")
            held.append(s)
        assert wait_until(lambda: scrape(mport)["uringserve_connections_open"] == 3), scrape(mport)
        for s in held:
            s.close()
        assert wait_until(lambda: scrape(mport)["uringserve_connections_open"] == 0), scrape(mport)
        assert scrape(mport)["uringserve_connections_accepted_total"] == 3
    finally:
        for s in held:
            s.close()
        srv.stop()


def test_failed_accepts_are_counted_as_refused() -> None:
    """An accept the kernel fails (injected: ECONNABORTED, a peer gone from
    the backlog) is counted; the listener goes on accepting."""
    srv, mport = start("apps.http:app", env={faults.ENV: "accept=ECONNABORTED:nth=1"})
    try:
        for _ in range(2):
            assert HELLO_RESPONSE.fullmatch(talk(srv.port, get("/")))
        assert wait_until(lambda: scrape(mport).get("uringserve_connections_accepted_total") == 2)
        assert wait_until(lambda: scrape(mport).get("uringserve_connections_refused_total") == 1), scrape(mport)
        m = scrape(mport)
        assert m["uringserve_ring_accept_errors_total"] == 1 and m["uringserve_ring_accepts_total"] == 2
    finally:
        srv.stop()


# ---- workers ------------------------------------------------------------------


def hold_on_both(port: int, per_worker: int = 2, tries: int = 200) -> dict[int, list[socket.socket]]:
    """Keep-alive connections, answered (tests.worker_app says which worker
    holds each) and held open: at least `per_worker` on each of two workers."""
    held: dict[int, list[socket.socket]] = {}
    for _ in range(tries):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        data = b""
        while not re.search(rb"\r\n\r\n\d+$", data) or len(data.rpartition(b"\r\n\r\n")[2]) < int(
            re.search(rb"Content-Length: (\d+)", data).group(1)  # type: ignore[union-attr]
        ):
            data += s.recv(4096)
        held.setdefault(int(data.rpartition(b"\r\n\r\n")[2]), []).append(s)
        if len(held) == 2 and all(len(v) >= per_worker for v in held.values()):
            return held
    raise AssertionError(f"connections never reached both workers: {[(p, len(v)) for p, v in held.items()]}")


def test_workers_are_summed_and_a_dead_workers_gauges_leave_the_sum() -> None:
    srv, mport = start("tests.worker_app:app", "--workers", "2", "--reuse-port")
    held: dict[int, list[socket.socket]] = {}
    try:
        assert wait_until(lambda: len(children(srv.p.pid)) == 2)
        for _ in range(2):
            for req, code in WORKER_TRAFFIC:
                assert talk(srv.port, req).startswith(b"HTTP/1.1 %d " % code)
        held = hold_on_both(srv.port)
        total = sum(len(v) for v in held.values())
        assert wait_until(lambda: scrape(mport)["uringserve_connections_open"] == total), scrape(mport)
        m = scrape(mport)
        assert m['uringserve_http_requests_total{code="2xx"}'] == 10 + total
        assert m['uringserve_http_requests_total{code="4xx"}'] == 2
        assert m['uringserve_http_requests_total{code="5xx"}'] == 2
        assert m.get("uringserve_worker_restarts_total", 0) == 0
        assert m["uringserve_ring_slots_used"] >= total  # a summed ring gauge

        victim = min(held)
        os.kill(victim, signal.SIGKILL)
        for s in held[victim]:  # the kernel ends its connections
            s.settimeout(10)
            assert s.recv(1) == b""
        survivors = total - len(held[victim])
        # the dead worker's last samples must not stay in the sums
        assert wait_until(lambda: scrape(mport)["uringserve_connections_open"] == survivors), scrape(mport)
        assert wait_until(lambda: scrape(mport).get("uringserve_worker_restarts_total", 0) == 1), (
            scrape(mport),
            srv.output(),
        )
        assert wait_until(lambda: status(mport, "/ready") == 200)
        m = scrape(mport)
        assert m['uringserve_http_requests_total{code="2xx"}'] == 10 + total  # a dead worker's counts stay
        assert m["uringserve_connections_open"] == survivors
        assert not math.isnan(m["uringserve_ring_slots_used"])
    finally:
        for conns in held.values():
            for s in conns:
                s.close()
        code = srv.stop()
    assert code == 0, srv.output()


def test_ready_turns_503_when_the_drain_begins() -> None:
    """A request in flight holds the drain open for as long as the test
    wants (its body is sent only once 503 was seen), so the server cannot
    exit before the 503 is looked for however slow the machine; it then
    finishes, and the process exits 0."""
    srv, mport = start("apps.http:app", "--graceful-timeout", "120")  # a bound: the test ends the request
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
    try:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n")
        got = b""
        while not got.endswith(b"\r\n\r\n"):  # the server has the request: it is in flight
            got += s.recv(4096)
        assert got == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(b"hello")
        assert status(mport, "/ready") == 200
        srv.p.send_signal(signal.SIGTERM)
        assert wait_until(lambda: status(mport, "/ready") == 503), srv.output()
        assert srv.p.poll() is None  # still draining: the request is not done
        s.sendall(b"world")
        got = b""
        while chunk := s.recv(4096):  # the request in flight still finishes
            got += chunk
        assert got.startswith(b"HTTP/1.1 200 OK\r\n") and got.endswith(b"\r\n\r\nhelloworld"), got
        assert b"\r\nConnection: close\r\n" in got  # draining: the last response on it
        s.close()
        assert srv.p.wait(60) == 0, srv.output()  # signalled once: a second signal would cut the drain
    finally:
        s.close()
        srv.stop()


def test_a_metrics_address_in_use_is_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = uringserve("run", "apps.http:app", "--port", "0", "--metrics", f"127.0.0.1:{port}", timeout=30)
    assert out.returncode != 0 and f"cannot listen for --metrics on 127.0.0.1:{port}" in out.stderr
    assert re.search(r"Traceback", out.stderr) is None, out.stderr
