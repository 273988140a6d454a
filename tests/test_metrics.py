"""--metrics: the Prometheus endpoint's names and values after known
traffic, for one process and for workers summed by the supervisor; /ready
turns 503 as soon as a drain begins; worker restarts are counted."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

from conftest import free_port
from prometheus_client.parser import text_string_to_metric_families
from test_workers import Pool, get, pools  # noqa: F401 (pools: the fixture)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def scrape(port: int) -> dict[str, float]:
    """Every sample, by name and labels (name{k="v"})."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def status(port: int, path: str) -> int:
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10).status
    except urllib.error.HTTPError as exc:
        return exc.code


def traffic(port: int) -> None:
    for _ in range(5):
        get(port)
    for _ in range(2):
        try:
            get(port, "/nope")
        except ConnectionError:
            pass  # a 404 is not a whole 200
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"NOT HTTP\r\n\r\n")
        while s.recv(1000):
            pass


def wait_for(cond, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


def test_one_process(pools) -> None:  # noqa: F811
    mport = free_port()
    pool = Pool("--metrics", f"127.0.0.1:{mport}", app="apps.http:app")
    pools.append(pool)
    assert status(mport, "/ready") == 200 and status(mport, "/live") == 200 and status(mport, "/x") == 404
    traffic(pool.port)
    # connections and ring counters are sampled each second; responses are counted as they happen
    assert wait_for(lambda: scrape(mport).get("uringserve_connections_accepted_total", 0) >= 8)
    m = scrape(mport)
    assert m['uringserve_http_requests_total{code="2xx"}'] == 5
    assert m['uringserve_http_requests_total{code="4xx"}'] == 3  # two 404s and a 400
    assert m["uringserve_http_request_duration_seconds_count"] == 8
    assert m["uringserve_connections_accepted_total"] == 8
    assert m["uringserve_ring_sqes_total"] > 0 and m["uringserve_ring_accepts_total"] == 8
    assert m["uringserve_ring_slots_total"] > 0
    code, err = pool.stop()
    assert code == 0, err


def test_workers_are_summed_and_restarts_counted(pools) -> None:  # noqa: F811
    mport = free_port()
    pool = Pool("--workers", "2", "--metrics", f"127.0.0.1:{mport}", app="apps.http:app")
    pools.append(pool)
    kids = pool.wait_children(lambda k: len(k) == 2)
    for _ in range(4):
        traffic(pool.port)  # 32 connections over the two workers
    assert wait_for(lambda: scrape(mport).get("uringserve_connections_accepted_total", 0) >= 32)
    m = scrape(mport)
    assert m['uringserve_http_requests_total{code="2xx"}'] == 20
    assert m['uringserve_http_requests_total{code="4xx"}'] == 12
    assert m.get("uringserve_worker_restarts_total", 0) == 0
    os.kill(min(kids), signal.SIGKILL)
    pool.wait_children(lambda k: len(k) == 2 and min(kids) not in k)
    assert wait_for(lambda: scrape(mport).get("uringserve_worker_restarts_total", 0) == 1)
    assert wait_for(lambda: status(mport, "/ready") == 200)
    # the dead worker's responses stay counted
    assert scrape(mport)['uringserve_http_requests_total{code="2xx"}'] == 20
    code, err = pool.stop()
    assert code == 0, err


def test_ready_turns_503_when_the_drain_begins(pools) -> None:  # noqa: F811
    mport = free_port()
    pool = Pool("--metrics", f"127.0.0.1:{mport}", "--graceful-timeout", "20")
    pools.append(pool)
    s = socket.create_connection(("127.0.0.1", pool.port), timeout=20)
    s.sendall(b"GET /stream/1500 HTTP/1.1\r\nHost: t\r\n\r\n")
    got = b""
    while b"start;" not in got:
        got += s.recv(4096)
    assert status(mport, "/ready") == 200
    pool.p.send_signal(signal.SIGTERM)
    assert wait_for(lambda: status(mport, "/ready") == 503, timeout=5)
    while chunk := s.recv(4096):  # the request in flight still finishes
        got += chunk
    assert got.endswith(b"3\r\nend\r\n0\r\n\r\n")
    s.close()
    code, err = pool.stop(signal_it=False)  # signalled already: a second signal would cut the drain
    assert code == 0, err


def test_a_metrics_address_in_use_is_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run(
            [sys.executable, "-m", "uringserve", "run", "apps.http:app", "--port", "0"]
            + ["--metrics", f"127.0.0.1:{port}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert out.returncode != 0 and f"cannot listen for --metrics on 127.0.0.1:{port}" in out.stderr
    assert re.search(r"Traceback", out.stderr) is None, out.stderr
