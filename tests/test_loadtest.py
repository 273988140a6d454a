"""The load generator (loadtest/): about a second of load against the demo
servers and against servers that misbehave on purpose.

Counts are held to each server's own count; every error class is produced
by a server made to cause it; the constant-rate mode is held to its
schedule and to the stall it must expose (coordinated omission); the
command's options reach the wire (method, body, pipelining, warm-up) and
its exit status says whether anything succeeded.
"""

from __future__ import annotations

import gc
import io
import json
import os
import pty
import re
import socket
import struct
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import PY, ROOT, Proc, TLSFiles, children, open_fds
from hypothesis import given, settings
from hypothesis import strategies as st

from loadtest import build_plan, run
from loadtest.engine import HIST_HIGHEST, HIST_LEN, LOAD_ERRORS, hist_index, resp_replies
from loadtest.plan import PlanError
from loadtest.report import PERCENTILES, hist_summary, text, to_json
from loadtest.run import histogram_from, new_histogram
from uringserve import faults, ring

HIST = new_histogram()


@pytest.fixture
def misbehaving() -> Iterator[Callable[..., int]]:
    """start(mode, n, *options): a tests/load_servers.py server; its port."""
    procs: list[Proc] = []

    def start(mode: str, n: int = 100, *options: str) -> int:
        procs.append(Proc([PY, "tests/load_servers.py", mode, str(n), *options]))
        return procs[-1].port

    yield start
    for p in procs:
        p.stop()


def count_at_least(h, ns: int) -> int:
    """How many recorded latencies are at least `ns` (within the histogram's precision)."""
    return sum(i.count_added_in_this_iter_step for i in h.get_recorded_iterator() if i.value_iterated_to >= ns)


def uringload(*args: str, timeout: float = 60, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`uringload ARGS` run to its end; `env`: variables set over this process's environment."""
    return subprocess.run(
        [PY, "-m", "loadtest", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=None if env is None else {**os.environ, **env},
    )


def ordered(s: dict) -> None:
    """Percentiles never decrease; min <= mean <= max."""
    values = [s["percentiles"][str(q)] for q in PERCENTILES]
    assert values == sorted(values), values
    assert s["min"] <= s["mean"] <= s["max"]
    assert values[-1] <= s["max"]


# ---- against the demo servers ------------------------------------------------


def _metric(text: str, name: str, label: str) -> float:
    m = re.search(rf"^{name}\{{{label}\}} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def test_http_counts_match_the_servers_own_count() -> None:
    srv = Proc([PY, "-m", "uringserve", "run", "apps.http:app", "--port", "0", "--metrics", "127.0.0.1:0"])
    port, mport = srv.port, srv.metrics_port()
    try:
        fds = open_fds()
        res = run(build_plan(f"http://127.0.0.1:{port}/", conns=20, duration=1.0), server_pids=[srv.p.pid])
        assert open_fds() == fds  # the ring and its connections are gone
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=10).read().decode()
    finally:
        srv.stop()
    served = _metric(metrics, "uringserve_http_requests_total", 'code="2xx"')
    st = res.stats
    assert st["errors"] == dict.fromkeys(LOAD_ERRORS, 0)
    assert res.requests > 1000
    # the server answered every request counted, and none that was not sent
    assert res.requests <= served <= st["sent"], (res.requests, served, st["sent"])
    assert st["by_class"][2] == res.requests
    assert res.latency.get_total_count() == res.requests
    ordered(hist_summary(res.latency))
    assert res.left_open == 0
    assert res.server_cpu_ns and res.server_cpu_ns > 0
    # requests went out of registered memory: all but what was still queued when
    # the run stopped (a send is prepared at the next enter; one per connection)
    assert res.ring["staged_sends"] >= st["units_sent"] - 20, (res.ring["staged_sends"], st["units_sent"])


def test_connections_the_server_ends_never_end_another() -> None:
    """keepalive_requests=5: the server ends a connection every 5 requests
    with a lingering close (FIN by IORING_OP_SHUTDOWN, then close). SHUTDOWN
    runs in io-wq and finds its fixed file when it runs; closed meanwhile,
    the slot held the next accepted connection and that one was shut down
    (new connections ended after a request or two: read errors here). The
    core now closes after the SHUTDOWN completes (closes_deferred)."""
    srv = Proc([PY, "-m", "uringserve", "run", "apps.http:app", "--port", "0", "--keepalive-requests", "5"])
    port = srv.port
    try:
        res = run(build_plan(f"http://127.0.0.1:{port}/", conns=50, duration=1.0))
        stats = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=10).read())
    finally:
        srv.stop()
    assert res.stats["closes_by_peer"] > 100
    assert res.stats["errors"] == dict.fromkeys(LOAD_ERRORS, 0)
    assert stats["closes_deferred"] > 0  # the race was there to lose


def test_echo_is_checked_byte_for_byte() -> None:
    srv = Proc([PY, "apps/echo.py", "--port", "0"])
    port = srv.port
    try:
        res = run(build_plan(f"tcp://127.0.0.1:{port}", conns=8, duration=1.0, size=4096, pipeline=2))
    finally:
        srv.stop()
    st = res.stats
    assert sum(st["errors"].values()) == 0
    assert res.requests > 500
    # every message counted came back whole; at most the last units were partly back
    assert res.requests * 4096 <= st["bytes_in"] < (res.requests + 8 * 2) * 4096


def test_echo_that_changes_a_byte_is_a_protocol_error(misbehaving) -> None:
    port = misbehaving("corrupt-echo", 50)
    res = run(build_plan(f"tcp://127.0.0.1:{port}", conns=4, duration=0.7, size=64))
    assert res.stats["errors"]["protocol"] > 0
    assert res.requests > 0


def test_echo_after_a_timeout_starts_again_from_what_is_sent_next(misbehaving) -> None:
    port = misbehaving("slow-echo", 40)
    res = run(build_plan(f"tcp://127.0.0.1:{port}", conns=4, duration=1.0, size=64, timeout=0.2))
    errors = res.stats["errors"]
    assert errors["timeout"] > 0
    # the connection that replaced a timed-out one compares with what it sent itself
    assert errors["protocol"] == 0, errors
    assert res.requests > 100


def test_resp_counts_match_the_servers_own_count() -> None:
    srv = Proc([PY, "apps/resp_server.py", "--port", "0"])
    port = srv.port
    try:
        res = run(build_plan(f"redis://127.0.0.1:{port}", conns=10, duration=1.0, command="INCR hits", pipeline=4))
        value = int(redis.Redis(port=port).get("hits"))
    finally:
        srv.stop()
    assert sum(res.stats["errors"].values()) == 0
    assert res.requests > 1000
    assert res.requests <= value <= res.stats["sent"]
    assert res.stats["by_class"][2] == res.requests


def test_resp_error_replies_are_counted() -> None:
    srv = Proc([PY, "apps/resp_server.py", "--port", "0"])
    port = srv.port
    try:
        res = run(build_plan(f"redis://127.0.0.1:{port}", conns=2, duration=0.5, command="NOSUCHCOMMAND x"))
    finally:
        srv.stop()
    assert res.requests > 0 and res.stats["by_class"][5] == res.requests
    assert "Error replies: " in text(res)


# ---- error classes -------------------------------------------------------------


def test_non_2xx_responses_are_counted_not_errors(misbehaving) -> None:
    port = misbehaving("status500")
    res = run(build_plan(f"http://127.0.0.1:{port}/", conns=4, duration=0.5))
    assert res.requests > 0
    assert res.stats["by_class"][5] == res.requests
    assert sum(res.stats["errors"].values()) == 0
    assert to_json(res)["non_2xx_3xx"] == res.requests
    assert "Non-2xx or 3xx responses: " in text(res)


@pytest.mark.parametrize(
    ("mode", "cls"),
    [("reset", "read"), ("cut", "short"), ("silent", "timeout"), ("garbage", "protocol"), ("close", "read")],
)
def test_each_error_class(misbehaving, mode: str, cls: str) -> None:
    port = misbehaving(mode)
    res = run(build_plan(f"http://127.0.0.1:{port}/", conns=4, duration=0.6, timeout=0.2))
    errors = res.stats["errors"]
    assert errors[cls] > 0, errors
    assert res.requests == 0
    others = {k: v for k, v in errors.items() if k != cls}
    assert not any(others.values()), errors  # each fault is reported as itself
    assert res.left_open == 0


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port bound but not listening, held so that nothing else takes it: connecting is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


def test_nothing_listening_is_a_connect_error(closed_port: int) -> None:
    res = run(build_plan(f"http://127.0.0.1:{closed_port}/", conns=2, duration=0.3))
    assert res.stats["errors"]["connect"] > 0
    assert res.stats["last_errno"] == 111  # ECONNREFUSED
    # retried every 10 ms per connection, not in a spin
    assert res.stats["errors"]["connect"] < 2 * 0.3 / 0.01 * 1.5
    assert "Socket errors: connect " in text(res)


def test_no_keepalive_makes_a_connection_per_request(misbehaving) -> None:
    port = misbehaving("ok")
    res = run(build_plan(f"http://127.0.0.1:{port}/", conns=4, duration=0.5, keepalive=False))
    assert res.requests > 50
    assert sum(res.stats["errors"].values()) == 0
    # each connection was made for one request (the last few may not have been answered yet)
    assert res.requests <= res.stats["connects"] <= res.requests + 4


# ---- constant rate ---------------------------------------------------------------


def test_constant_rate_keeps_its_schedule(misbehaving) -> None:
    """Request g is due at start + g/rate and never sent before: at most
    rate x elapsed (+1) go out, however fast the server. Late sends (a busy
    machine) are caught up, and their lateness is in the corrected latency,
    which is never below the uncorrected one."""
    port = misbehaving("ok")
    rate, conns = 400, 5
    res = run(build_plan(f"http://127.0.0.1:{port}/", conns=conns, duration=1.0, rate=rate))
    sent = res.stats["sent"]
    # never ahead (0.05 s: the schedule starts just before the measured window does)
    assert sent <= rate * (res.elapsed + 0.05) + 1, (sent, res.elapsed)
    # and not far behind: a rate halved or split twice would be (only a
    # machine that starves this process for half a second would be too)
    assert sent >= rate * 1.0 * 0.5, sent
    assert sum(res.stats["errors"].values()) == 0
    assert res.corrected.get_total_count() == res.latency.get_total_count() == res.requests
    # each latency from the due time is at least the one from the actual send
    for q in (1, 25, 50, 75, 99, 100):
        assert res.corrected.get_value_at_percentile(q) >= res.latency.get_value_at_percentile(q), q
    # due times follow the schedule: times computed from the wrong rate or
    # from the run's start would put the median hundreds of ms late
    c, u = res.corrected.get_value_at_percentile(50), res.latency.get_value_at_percentile(50)
    assert c < u + 200_000_000, (c, u)


def test_a_stall_shows_in_the_corrected_latency_only(misbehaving) -> None:
    port = misbehaving("stall", 200)  # the whole server sleeps 1 s at its 200th request, once
    conns = 4
    res = run(build_plan(f"http://127.0.0.1:{port}/", conns=conns, duration=2.0, rate=1000))
    assert sum(res.stats["errors"].values()) == 0
    # the ~1000 requests due during the stall waited for it: corrected shows it
    assert count_at_least(res.corrected, 500_000_000) >= 100
    # from their actual send, only the requests in flight during the stall
    # saw it: one per connection at most (each has one in flight)
    assert 1 <= count_at_least(res.latency, 900_000_000) <= conns
    assert res.latency.get_max_value() > 900_000_000
    out = text(res, latency_table=True)
    assert "corrected" in out and "(uncorr.)" in out


# ---- workers, scenarios, histograms -----------------------------------------


def test_threads_merge_their_histograms(misbehaving) -> None:
    port = misbehaving("ok")
    res = run(build_plan(f"http://127.0.0.1:{port}/", conns=6, threads=2, duration=0.6))
    assert len(res.samples) == 2
    assert res.requests > 0 and res.latency.get_total_count() == res.requests
    assert sum(res.stats["errors"].values()) == 0


def test_scenario_requests_per_connection(tmp_path: Path) -> None:
    scenario = tmp_path / "scenario.py"
    scenario.write_text(
        "def requests(conn):\n"
        "    yield ('GET', '/')\n"
        "    yield {'method': 'GET', 'target': '/missing', 'headers': {'X-Conn': str(conn)}}\n"
    )
    srv = Proc([PY, "apps/http.py", "--port", "0"])
    port = srv.port
    try:
        res = run(build_plan(f"http://127.0.0.1:{port}/", conns=4, duration=0.5, scenario=str(scenario)))
    finally:
        srv.stop()
    ok, missing = res.stats["by_class"][2], res.stats["by_class"][4]
    assert ok > 10 and abs(ok - missing) <= 4  # alternating, per connection


def test_scenario_mistakes_are_explained(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def requests(conn):\n    yield 42\n")
    with pytest.raises(PlanError, match=r"yielded 42; yield \(method, target, headers, body\)"):
        build_plan("http://127.0.0.1:1/", scenario=str(bad))
    none = tmp_path / "none.py"
    none.write_text("x = 1\n")
    with pytest.raises(PlanError, match="defines no requests"):
        build_plan("http://127.0.0.1:1/", scenario=str(none))


@given(st.integers(min_value=1, max_value=HIST_HIGHEST))
@settings(max_examples=2000, deadline=None)
def test_native_histogram_index_is_hdrhistograms(ns: int) -> None:
    assert hist_index(ns) == HIST._counts_index_for(ns)


def test_native_histogram_layout_is_hdrhistograms() -> None:
    h = new_histogram()
    values = [1, 2, 1000, 2047, 2048, 2049, 4095, 123_456, 10**9, 3 * 10**12, HIST_HIGHEST]
    for v in values:
        h.record_value(v)
        assert hist_index(v) == h._counts_index_for(v)
    # rebuilding from the native (index, count) pairs gives the same histogram
    buckets = [(hist_index(v), 1) for v in values]
    again = histogram_from(buckets)
    assert [again.get_value_at_percentile(p) for p in (10, 50, 90, 100)] == [
        h.get_value_at_percentile(p) for p in (10, 50, 90, 100)
    ]
    assert HIST_LEN == h.counts_len


def test_resp_reply_counter() -> None:
    assert resp_replies(b"+OK\r\n:1\r\n$3\r\nabc\r\n$-1\r\n") == 4
    assert resp_replies(b"*2\r\n$1\r\na\r\n*1\r\n:2\r\n-ERR x\r\n") == 2
    assert resp_replies(b"%1\r\n+k\r\n+v\r\n_\r\n*0\r\n") == 3
    assert resp_replies(b"*2\r\n$1\r\na\r\n") == 0  # incomplete
    assert resp_replies(b"$5\r\nab") == 0
    assert resp_replies(b"?what\r\n") == -1
    assert resp_replies(b"$x\r\n") == -1


# ---- https ----------------------------------------------------------------------


@pytest.fixture
def tls_server(tls_files: TLSFiles) -> Iterator[tuple[int, Path, Proc]]:
    srv = Proc(
        [PY, "-m", "uringserve", "run", "apps.http:app", "--port", "0",
         "--tls-cert", str(tls_files.cert), "--tls-key", str(tls_files.key)],
    )  # fmt: skip
    yield srv.port, tls_files.cacert, srv
    srv.stop()


def no_transport_left_open() -> None:
    """The https runs leave no transport of their ring open (one cancelled in
    its TLS handshake was once closed by a TLS shutdown that outlived the
    loop, and warned as unclosed in whichever test collected it)."""
    import gc

    from uringserve.transport import UringTransport

    gc.collect()
    left = [o for o in gc.get_objects() if isinstance(o, UringTransport) and not o.is_closing()]
    assert not left, left


def test_https_verified_with_the_given_ca(tls_server) -> None:
    port, ca, srv = tls_server
    res = run(build_plan(f"https://127.0.0.1:{port}/", conns=4, duration=0.6, cafile=str(ca)), [srv.p.pid])
    no_transport_left_open()
    assert res.requests > 50
    assert sum(res.stats["errors"].values()) == 0
    assert res.stats["by_class"][2] == res.requests == res.latency.get_total_count()
    # kept alive: a new connection only where the server ended one (its keepalive_requests)
    closes = res.stats["closes_by_peer"]
    assert closes <= res.stats["connects"] <= 4 + closes  # no new connection without a close


def test_https_refuses_an_unverified_certificate_unless_insecure(tls_server) -> None:
    port, _, _ = tls_server
    res = run(build_plan(f"https://127.0.0.1:{port}/", conns=2, duration=0.3))
    no_transport_left_open()
    assert res.requests == 0 and res.stats["errors"]["connect"] > 0
    res = run(build_plan(f"https://127.0.0.1:{port}/", conns=2, duration=0.3, insecure=True, rate=200))
    assert res.requests > 20 and sum(res.stats["errors"].values()) == 0
    assert res.corrected.get_total_count() == res.requests


# ---- the command -------------------------------------------------------------------


def test_cli_json_hgrm_and_compare(misbehaving, tmp_path: Path) -> None:
    port = misbehaving("ok")
    outs = []
    for k in range(2):
        hgrm = tmp_path / f"run{k}.hgrm"
        out = subprocess.run(
            [PY, "-m", "loadtest", "-c", "3", "-d", "0.4s", "--json", "--hgrm", str(hgrm), f"http://127.0.0.1:{port}/"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        data = json.loads(out.stdout)
        assert data["requests"] > 0 and data["rps"] > 0 and data["errors"]["read"] == 0
        ordered(data["latency_ns"])
        (tmp_path / f"run{k}.json").write_text(out.stdout)
        outs.append(data)
        # HdrHistogram's percentile format: increasing values and percentiles, ending at 1.0
        rows = [ln.split() for ln in hgrm.read_text().splitlines() if re.match(r"\s+[0-9.]+\s+[0-9.]+\s+\d+", ln)]
        vals = [float(r[0]) for r in rows]
        pcts = [float(r[1]) for r in rows]
        assert vals == sorted(vals) and pcts == sorted(pcts) and pcts[-1] == 1.0
        assert int(rows[-1][2]) == data["requests"]
        assert abs(vals[-1] * 1e6 - data["latency_ns"]["max"]) <= data["latency_ns"]["max"] * 0.002
        footer = re.search(r"Mean += +([0-9.]+), StdDeviation += +([0-9.]+)", hgrm.read_text())
        assert footer, hgrm.read_text()[-300:]
        assert abs(float(footer.group(1)) - data["latency_ns"]["mean"] / 1e6) < 0.001  # in ms, as the values
        assert abs(float(footer.group(2)) - data["latency_ns"]["stdev"] / 1e6) < 0.001
    cmp = subprocess.run(
        [PY, "-m", "loadtest", "--compare", str(tmp_path / "run0.json"), str(tmp_path / "run1.json")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cmp.returncode == 0, cmp.stderr
    assert "requests/s" in cmp.stdout and "p99.9" in cmp.stdout and "ratio" in cmp.stdout
    # columns stay apart however long the URL: the header and url rows split back into their cells
    rows = cmp.stdout.splitlines()
    assert rows[0].split() == ["run0.json", "run1.json"]
    assert rows[1].split() == ["url", outs[0]["url"], outs[1]["url"]]
    # both columns right-aligned, each on one edge
    ends, middles = set(), set()
    for r in rows:
        last = r.split()[-1]
        ends.add(len(r))
        middles.add(len(r[: -len(last)].rstrip()))
    assert len(ends) == 1 and len(middles) == 1, cmp.stdout


def test_cli_text_is_wrk_shaped(misbehaving) -> None:
    port = misbehaving("ok")
    out = subprocess.run(
        [PY, "-m", "loadtest", "-c", "2", "-d", "0.3", "--latency", "-H", "X-Test: 1", f"http://127.0.0.1:{port}/"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    for line in (
        "Running 0.3s test @ http://127.0.0.1:",
        "Thread Stats   Avg",
        "Latency Distribution",
        "requests in",
        "Requests/sec:",
        "Transfer/sec:",
    ):
        assert line in out.stdout
    assert "\r" not in out.stderr  # no progress line when stderr is not a terminal


def test_progress_line_on_a_terminal(misbehaving) -> None:
    port = misbehaving("ok")
    master, slave = pty.openpty()
    try:
        out = subprocess.run(
            [PY, "-m", "loadtest", "-c", "2", "-d", "0.8", f"http://127.0.0.1:{port}/"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=slave, text=True, timeout=60,
        )  # fmt: skip
        os.close(slave)
        slave = -1
        seen = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the other side is closed
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    assert out.returncode == 0
    assert b"req/s" in seen and b"\r" in seen and b"errors 0" in seen, seen
    assert "req/s  " not in out.stdout  # the report itself has no progress line


def without(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`uringload ARGS` where `module` cannot be imported (as without the extra that brings it)."""
    code = f"import sys; sys.modules[{module!r}] = None; from loadtest.cli import main; sys.exit(main({list(args)!r}))"
    return subprocess.run([PY, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_plot_draws_the_corrected_and_uncorrected_curves(misbehaving, tmp_path: Path) -> None:
    """matplotlib is in the test extra (and the plot extra): the drawing
    itself is checked, both curves in their colours, at the set size."""
    from matplotlib.image import imread

    port = misbehaving("ok")
    png = tmp_path / "p.png"
    out = uringload("-c", "2", "-d", "0.5", "-R", "200", "--plot", str(png), f"http://127.0.0.1:{port}/", timeout=120)
    assert out.returncode == 0, out.stderr
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", data[16:24]) == (800, 450)  # IHDR: 8 x 4.5 in at 100 dpi
    pixels = imread(str(png))[:, :, :3]

    def near(rgb: tuple[float, float, float]) -> int:
        return int((abs(pixels - rgb).max(axis=2) < 0.05).sum())

    assert near((0.122, 0.467, 0.706)) > 200  # C0: corrected, drawn first
    assert near((1.0, 0.498, 0.055)) > 200  # C1: uncorrected


def test_plot_without_matplotlib_says_so_before_running(misbehaving, tmp_path: Path) -> None:
    port = misbehaving("ok")
    out = without("matplotlib", "-d", "3s", "--plot", str(tmp_path / "p.png"), f"http://127.0.0.1:{port}/")
    assert out.returncode == 2
    assert out.stderr == "uringload: --plot needs matplotlib: pip install 'uringserve[plot]'\n"
    assert out.stdout == ""  # refused before the 3 s run, not after it


def test_without_hdrhistogram_one_line_names_the_extra() -> None:
    for args in (["-d", "1s", "http://127.0.0.1:1/"], ["--compare", "a.json", "b.json"]):
        out = without("hdrh", *args)
        assert out.returncode == 2
        assert out.stderr == "uringload: the hdrhistogram package is missing: pip install 'uringserve[loadtest]'\n"


# ---- the exit status ----------------------------------------------------------------


def test_exit_status_1_when_nothing_succeeded_with_the_reason(closed_port: int, misbehaving) -> None:
    out = uringload("-c", "2", "-d", "0.3", f"http://127.0.0.1:{closed_port}/")
    assert out.returncode == 1
    assert "Socket errors: connect " in out.stdout  # the report is still printed
    (line,) = out.stderr.splitlines()
    assert re.fullmatch(
        rf"uringload: no request succeeded: \d+ connect errors \(last: Connection refused\): "
        rf"is a server listening on 127\.0\.0\.1:{closed_port}\?",
        line,
    ), line
    port = misbehaving("status500")
    out = uringload("-c", "2", "-d", "0.3", "--json", f"http://127.0.0.1:{port}/")
    assert out.returncode == 1
    n = json.loads(out.stdout)["requests"]
    assert n > 0 and out.stderr == f"uringload: no request succeeded: all {n} responses were 4xx or 5xx\n"


def test_exit_status_0_when_some_succeeded_beside_errors(misbehaving) -> None:
    port = misbehaving("slow-echo", 20)  # every 20th echo comes after the 0.2 s timeout
    out = uringload("-c", "2", "-d", "0.6", "--timeout", "0.2", "--json", f"tcp://127.0.0.1:{port}")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["errors"]["timeout"] > 0 and data["requests"] > 0
    assert out.stderr == ""


def test_an_untrusted_certificate_fails_with_the_tls_hint(tls_server) -> None:
    port, ca, _ = tls_server
    out = uringload("-c", "2", "-d", "0.3", f"https://127.0.0.1:{port}/")
    assert out.returncode == 1
    (line,) = out.stderr.splitlines()
    assert re.fullmatch(
        r"uringload: no request succeeded: \d+ connect errors; the server's certificate was refused "
        r"\(unable to get local issuer certificate\): trust its CA with --cacert FILE, "
        r"or skip verification with -k/--insecure",
        line,
    ), line
    assert uringload("-c", "2", "-d", "0.3", "--cacert", str(ca), f"https://127.0.0.1:{port}/").returncode == 0


# ---- options that reach the wire ------------------------------------------------------


def test_method_and_body_reach_the_server(misbehaving, tmp_path: Path) -> None:
    body = "naïve=1\r\nx=2"
    body_file = tmp_path / "body"
    body_file.write_bytes(body.encode())
    port = misbehaving("expect", 0, "--expect", "PUT", str(body_file))  # 200 for this request only, else 400
    url = f"http://127.0.0.1:{port}/"
    for args in (["-m", "PUT", "--body", body], ["-m", "put", "--body-file", str(body_file)]):
        out = uringload("-c", "2", "-d", "0.3", "--json", *args, url)
        assert out.returncode == 0, (args, out.stderr)
        data = json.loads(out.stdout)
        assert data["requests"] > 0 and data["status"]["2xx"] == data["requests"], (args, data["status"])
    # and the server does tell them apart: another method, or no body, is a 400
    for args in (["-m", "POST", "--body", body], ["-m", "PUT"]):
        out = uringload("-c", "2", "-d", "0.3", "--json", *args, url)
        assert out.returncode == 1 and json.loads(out.stdout)["status"]["4xx"] > 0, args


def test_http_pipelining_sends_n_requests_before_reading(misbehaving) -> None:
    port = misbehaving("batch", 8)  # answers a connection only once 8 requests have come
    res = run(build_plan(f"http://127.0.0.1:{port}/", conns=2, duration=0.5, pipeline=8, timeout=5))
    assert res.requests > 100 and sum(res.stats["errors"].values()) == 0
    assert res.stats["by_class"][2] == res.requests == res.latency.get_total_count()
    # 4 at a time never make 8: nothing is answered, every connection times out
    res = run(build_plan(f"http://127.0.0.1:{port}/", conns=2, duration=0.5, pipeline=4, timeout=0.2))
    assert res.requests == 0 and res.stats["errors"]["timeout"] > 0


@pytest.mark.parametrize(("pipeline", "errors"), [(4, False), (8, True)])
def test_pipelining_past_the_servers_keepalive_requests_is_a_read_error_per_close(pipeline: int, errors: bool) -> None:
    """What the README says of `--pipeline 16` against the demo: the server
    ends a connection after --keepalive-requests responses (Connection:
    close); requests pipelined behind the last one are unanswered, one read
    error per close, unless the pipeline depth divides the limit."""
    srv = Proc([PY, "-m", "uringserve", "run", "apps.http:app", "--port", "0", "--keepalive-requests", "20"])
    try:
        res = run(build_plan(f"http://127.0.0.1:{srv.port}/", conns=4, duration=0.5, pipeline=pipeline))
    finally:
        srv.stop()
    st = res.stats
    assert res.requests > 200 and st["closes_by_peer"] >= res.requests // 20 - 4
    others = {k: v for k, v in st["errors"].items() if k != "read"}
    assert not any(others.values()), st["errors"]
    assert st["errors"]["read"] == (st["closes_by_peer"] if errors else 0)


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_warmup_is_run_but_not_measured(misbehaving, tls_files: TLSFiles, scheme: str) -> None:
    options: list[str] = []
    cafile = None
    if scheme == "https":
        options = ["--tls", str(tls_files.cert), str(tls_files.key)]
        cafile = str(tls_files.cacert)
    # two servers that answer 500 to their first 10 requests, 200 after
    warmed, cold = (f"{scheme}://127.0.0.1:{misbehaving('warm', 10, *options)}/" for _ in range(2))
    # a second of warm-up is far more than 10 requests take: none of them is counted
    began = time.monotonic()
    res = run(build_plan(warmed, conns=2, duration=0.3, warmup=1.0, cafile=cafile))
    took = time.monotonic() - began
    st = res.stats
    assert res.requests > 0 and st["by_class"][5] == 0 and st["by_class"][2] == res.requests
    assert not any(st["errors"].values()), st["errors"]  # the counts begin again from 0 after the warm-up
    assert res.latency.get_total_count() == res.requests
    # the window reported is the measured one, which begins once the warm-up's
    # second has passed: however slow the machine, it is at most what the run
    # took less that second (a window counted from the start is not), and at
    # least the 0.3 s asked for
    assert 0.3 <= res.elapsed <= took - 1.0, (res.elapsed, took)
    # without a warm-up the same 10 are measured
    res = run(build_plan(cold, conns=2, duration=0.3, cafile=cafile))
    assert res.stats["by_class"][5] == 10 and res.requests > 10


def test_pipeline_and_warmup_reach_the_wire_through_the_command(misbehaving) -> None:
    """uringload's --pipeline and --warmup, not only build_plan()'s: the
    batch server answers only 8 requests sent together, the warm one answers
    its first 10 with 500, all within the warm-up."""
    batch = misbehaving("batch", 8)
    out = uringload("-c", "2", "-d", "0.5", "--pipeline", "8", "--timeout", "5", "--json", f"http://127.0.0.1:{batch}/")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["pipeline"] == 8 and data["requests"] > 0 and data["status"]["2xx"] == data["requests"], data
    warm = misbehaving("warm", 10)
    out = uringload("-c", "2", "-d", "0.3", "--warmup", "1", "--json", f"http://127.0.0.1:{warm}/")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["requests"] > 0 and data["status"]["5xx"] == 0 and data["status"]["2xx"] == data["requests"], data


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ftp://x/"], "unsupported scheme 'ftp'"),
        (["--insecure", "http://127.0.0.1:1/"], "--insecure and --cacert are for https:// and wss:// targets"),
        (["--cacert", "/nonexistent.pem", "https://127.0.0.1:1/"], "--cacert '/nonexistent.pem' does not exist"),
        (["-c", "1", "-t", "2", "http://127.0.0.1:1/"], "need at least one connection per thread"),
        (["-d", "soon", "http://127.0.0.1:1/"], "'soon' is not a duration"),
        (["-H", "novalue", "http://127.0.0.1:1/"], "header 'novalue' is not 'Name: value'"),
        (["--server-pid", "999999999", "http://127.0.0.1:1/"], "--server-pid 999999999: no such process"),
        (["--compare", "/nonexistent.json", "/x.json"], "not a saved --json result"),
        ([], "a URL is required"),
    ],
)
def test_cli_refuses_with_a_reason(args: list[str], message: str) -> None:
    out = subprocess.run([PY, "-m", "loadtest", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert message in out.stderr, out.stderr


def test_the_worker_does_not_leak_between_runs(misbehaving) -> None:
    """Runs in this process (-t 1) and in worker processes (-t 2), one after
    another: each leaves no fd, no ring and no process behind."""
    port = misbehaving("ok")
    gc.collect()
    fds, kids = open_fds(), children(os.getpid())
    rings = [o for o in gc.get_objects() if isinstance(o, ring.Ring) and not o.closed]
    for threads in (1, 1, 2):
        res = run(build_plan(f"http://127.0.0.1:{port}/", conns=50, threads=threads, duration=0.2))
        assert res.left_open == 0 and res.requests > 0
    gc.collect()
    assert open_fds() == fds
    assert children(os.getpid()) == kids  # the worker processes were waited for
    assert [o for o in gc.get_objects() if isinstance(o, ring.Ring) and not o.closed] == rings


def test_a_failed_load_worker_is_one_line(closed_port: int) -> None:
    """Both -t 2 workers fail for real: their ring cannot be set up (the send
    arena's registration fails, injected, as under a low RLIMIT_MEMLOCK).
    Each says why in the one line -t 1 would, uringload adds one: no
    traceback, nothing on stdout, exit 1."""
    out = uringload(
        "-t", "2", "-c", "2", "-d", "0.3", f"http://127.0.0.1:{closed_port}/", env={faults.ENV: "setup=arena:ENOMEM"}
    )
    assert out.returncode == 1, out.stderr
    why = (
        "uringload: [Errno 12] io_uring ring setup failed at registering the send arena (REGISTER_BUFFERS): "
        "Cannot allocate memory"
    )
    lines = out.stderr.splitlines()
    assert len(lines) == 3 and all(line.startswith(why) for line in lines[:2]), out.stderr
    assert lines[2] == "uringload: load worker(s) failed: [(0, 1), (1, 1)] (their stderr is above)"
    assert out.stdout == ""


def test_only_a_failed_load_worker_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any other RuntimeError in a run is a bug: its traceback, not a line that hides it."""
    import loadtest.cli

    def buggy(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug in the driver")

    monkeypatch.setattr(loadtest.cli, "run", buggy)
    with pytest.raises(RuntimeError, match="a bug in the driver"):
        loadtest.cli.main(["-t", "2", "-c", "2", "http://127.0.0.1:1/"])


# ---- the report, the CPU and the window, piece by piece (issue 22's mutation sample) ----


def made_result(*, elapsed: float = 1.0, requests: int = 0, errors: dict[str, int] | None = None, **kw: Any) -> Any:
    """A Result as run() returns one, with the given counts (no load run)."""
    from loadtest.run import Result

    hist = new_histogram()
    for _ in range(requests):
        hist.record_value(1_000_000)
    stats = {"responses": requests, "errors": {**dict.fromkeys(LOAD_ERRORS, 0), **(errors or {})}, "by_class": [0] * 6}
    fields: dict[str, Any] = {"client_cpu_ns": 0, "server_cpu_ns": None, "server_pids": [], "samples": [[]]}
    fields.update(kw)
    plan = build_plan("http://127.0.0.1:1/", conns=1, duration=1.0)
    return Result(plan=plan, elapsed=elapsed, stats=stats, latency=hist, corrected=new_histogram(), **fields)


def test_failure_counts_each_error_class_in_words() -> None:
    from loadtest.report import failure

    one, two = made_result(errors={"connect": 1}), made_result(errors={"connect": 2, "read": 1})
    assert failure(one) == "no request succeeded: 1 connect error"
    assert failure(two) == "no request succeeded: 2 connect errors, 1 read error"


def test_metric_units_start_at_their_scale() -> None:
    from loadtest.report import fmt_metric

    assert [fmt_metric(n) for n in (999.0, 1000.0, 999_999.0, 1e6)] == ["999.00", "1.00k", "1000.00k", "1.00M"]


def test_json_and_text_name_the_server_pids_and_a_zero_length_window() -> None:
    res = made_result(elapsed=0.0, server_pids=[os.getpid()], server_cpu_ns=0)
    assert to_json(res)["server_pids"] == [os.getpid()]
    assert "Transfer/sec:      0.00B" in text(res).splitlines()


def test_compare_shows_the_cpu_per_request_of_each_run(tmp_path: Path) -> None:
    from loadtest.report import compare

    paths = []
    for k, (client, server) in enumerate(((2_000_000, None), (3_000_000, 5_000_000))):
        res = made_result(requests=1000, client_cpu_ns=client, server_cpu_ns=server)
        paths.append(tmp_path / f"r{k}.json")
        paths[-1].write_text(json.dumps(to_json(res)))
    out = io.StringIO()
    compare([str(p) for p in paths], out)
    rows = {line[:14].strip(): line[14:].split() for line in out.getvalue().splitlines()}
    assert rows["client us/req"] == ["2.00", "3.00"]
    assert rows["server us/req"] == ["-", "5.00"]


def test_plot_puts_each_percentile_under_its_tick(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The x axis is 1/(1-p), its ticks labelled so (50% at 2, 90% at 10): of
    latencies 1..100 ms, 10 ms is the 10th percentile, at 1/0.9, and 19 ms the
    19th, at 1/0.81 (matplotlib is replaced by a recorder)."""
    from loadtest import report

    drawn: list[tuple[list[float], list[float]]] = []

    class Axes:
        def plot(self, xs: list[float], ys: list[float], label: str) -> None:
            drawn.append((xs, ys))

        def __getattr__(self, name: str) -> Callable[..., None]:
            return lambda *a, **k: None

    class Figure(Axes):
        pass

    class Plt:
        def subplots(self, **kw: object) -> tuple[Figure, Axes]:
            return Figure(), Axes()

        def close(self, fig: object) -> None:
            pass

    monkeypatch.setattr(report, "pyplot", Plt)
    res = made_result(requests=0)
    for v in range(1, 101):
        res.latency.record_value(v * 1_000_000)
    report.plot(res, str(tmp_path / "p.png"))
    ((xs, ys),) = drawn
    at = {round(y): x for x, y in zip(xs, ys, strict=True)}  # latency in ms (within the histogram's precision)
    assert at[1] == 1.0 and at[10] == pytest.approx(1 / 0.9) and at[19] == pytest.approx(1 / 0.81)


def test_window_ns_is_what_each_process_used_between_samples() -> None:
    from loadtest import cpu

    assert cpu.window_ns({1: 100, 2: 50, 4: 7}, {1: 150, 2: 60, 3: 10}) == 60


def test_descendants_are_the_tree_below_a_pid() -> None:
    from loadtest import cpu

    child = subprocess.Popen([PY, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        tree = cpu.descendants(os.getpid())
        assert tree[0] == os.getpid() and child.pid in tree
        assert cpu.descendants(child.pid) == [child.pid]
    finally:
        assert child.stdin
        child.stdin.close()
        child.wait(timeout=30)


def test_process_ns_counts_the_threads_left_after_one_that_ended(monkeypatch: pytest.MonkeyPatch) -> None:
    """A thread gone between the listing and its read is skipped; the others still count."""
    from loadtest import cpu

    real = os.listdir(f"/proc/{os.getpid()}/task")
    listdir = os.listdir
    monkeypatch.setattr(cpu.os, "listdir", lambda p: ["999999999", *real] if p.endswith("/task") else listdir(p))
    assert cpu.process_ns(os.getpid()) > 0


def test_window_samples_are_requests_per_second_and_its_cpu_a_difference(monkeypatch: pytest.MonkeyPatch) -> None:
    from loadtest import window

    clock = iter([1_000_000_000, 1_500_000_000, 2_000_000_000, 2_250_000_000])
    cpu_ns = iter([7_000, 10_000])
    monkeypatch.setattr(window, "time", type("T", (), {"monotonic_ns": staticmethod(lambda: next(clock))}))
    monkeypatch.setattr(window.cpu, "process_ns", lambda pid: next(cpu_ns) if pid == os.getpid() else 0)
    w = window.Window(1.0, None)
    w.sample(100)  # 100 responses in 0.5 s
    w.sample(150)  # 50 more in 0.5 s
    out = w.close()
    assert out == {"elapsed_ns": 1_250_000_000, "cpu_ns": 3_000, "samples": [200.0, 100.0]}


@pytest.mark.parametrize("bad", [("X-A", "1\r2"), ("X-A", "1\n2"), ("X\rA", "1")])
def test_a_header_with_a_lone_cr_or_lf_is_refused(bad: tuple[str, str]) -> None:
    from loadtest.plan import http_request

    with pytest.raises(PlanError, match="is not a valid header line"):
        http_request("GET", "/", "h", [bad])


def test_scenario_dicts_default_to_get_and_the_cycle_limit_is_inclusive(tmp_path: Path) -> None:
    scenario = tmp_path / "defaults.py"
    scenario.write_text("def requests():\n    yield {'target': '/x'}\n")
    plan = build_plan("http://127.0.0.1:1/", conns=1, scenario=str(scenario))
    assert plan.units == [(b"GET /x HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n", 1)]
    many = tmp_path / "many.py"  # 1024 requests pipelined 4096 deep: a cycle of exactly 4 * 1024
    many.write_text("def requests():\n    for i in range(1024):\n        yield ('GET', f'/{i}')\n")
    plan = build_plan("http://127.0.0.1:1/", conns=1, scenario=str(many), pipeline=4096)
    assert plan.sequences == [[0]] and plan.units[0][1] == 4096
    three = tmp_path / "three.py"
    three.write_text("def requests():\n    yield ('GET', '/a')\n    yield ('GET', '/b')\n    yield ('GET', '/c')\n")
    with pytest.raises(PlanError, match="make a cycle too long to stage"):
        build_plan("http://127.0.0.1:1/", conns=1, scenario=str(three), pipeline=4096)


def test_progress_is_reported_from_load_worker_processes(misbehaving) -> None:
    """With -t 2 each worker process sends its counts as it goes: the
    progress callback sees them merged before the run ends."""
    port = misbehaving("ok")
    seen: list[dict[str, Any]] = []
    res = run(
        build_plan(f"http://127.0.0.1:{port}/", conns=2, threads=2, duration=1.5),
        progress=lambda t, st: seen.append(st),
    )
    assert res.requests > 0
    assert seen and seen[-1]["responses"] > 0 and set(seen[-1]["errors"]) == set(LOAD_ERRORS)


# ---- tls.py's error classes, one connection over a scripted stream ----


@pytest.mark.parametrize(
    ("step", "cls", "errno_"),
    [(b"", "read", 0), (ConnectionResetError(104, "reset"), "read", 104), ("never", "timeout", 0)],
)
def test_tls_connection_counts_each_error_as_the_native_driver(
    monkeypatch: pytest.MonkeyPatch, step: object, cls: str, errno_: int
) -> None:
    """One request over a stream that closes before any answer (a read error,
    not a short response), is reset, or never answers (a timeout at --timeout,
    not a wait to the run's end). The stream replaces asyncio's TLS connection."""
    import asyncio

    from loadtest import tls

    plan = build_plan("https://127.0.0.1:1/", conns=1, duration=1.0, timeout=0.05, insecure=True)
    load = tls._Load(plan, tls.context(True))
    sent: list[bytes] = []

    class Reader:
        async def read(self, n: int) -> bytes:
            load.running = False  # this one attempt only
            if isinstance(step, BaseException):
                raise step
            if step == "never":
                await asyncio.Event().wait()
            assert isinstance(step, bytes)
            return step

    class Writer:
        def write(self, data: bytes) -> None:
            sent.append(data)

        def close(self) -> None:
            pass

    async def open_connection(*args: object, **kwargs: object) -> tuple[Reader, Writer]:
        return Reader(), Writer()

    async def one() -> None:
        task = asyncio.ensure_future(load.connection(0))
        done, _ = await asyncio.wait([task], timeout=10)
        assert task in done, "the connection waited past its --timeout"
        task.result()

    monkeypatch.setattr(asyncio, "open_connection", open_connection)
    asyncio.run(one())
    assert sent == [plan.units[0][0]]
    errors = load.stats["errors"]
    assert errors == {**dict.fromkeys(LOAD_ERRORS, 0), cls: 1}
    assert load.stats["last_errno"] == errno_
    assert load.stats["closes_by_peer"] == (step == b"")


def test_tls_window_ends_at_its_duration_not_a_slice_later(tls_server, monkeypatch: pytest.MonkeyPatch) -> None:
    """The last slice of the measured window is cut to what is left of it: with
    slices made 20 s long, a 0.3 s run still measures about 0.3 s."""
    from loadtest import tls

    port, ca, _ = tls_server
    monkeypatch.setattr(tls, "SLICE", 20.0)
    res = run(build_plan(f"https://127.0.0.1:{port}/", conns=1, duration=0.3, cafile=str(ca)))
    no_transport_left_open()
    assert res.requests > 0
    assert 0.3 <= res.elapsed < 10.0, res.elapsed


def test_a_load_the_core_refuses_says_which_step_and_why() -> None:
    """The core's refusals (an address it cannot take, units it cannot stage
    under the depth) are OSErrors with their errno and the step named."""
    import errno

    from loadtest.driver import ring_config
    from loadtest.engine import Load
    from uringserve import sockaddr
    from uringserve.ring import Ring

    plan = build_plan("http://127.0.0.1:1/", conns=1, duration=1.0)
    address = sockaddr.encode(plan.target.family, plan.target.address)
    r = Ring(ring_config(plan))
    try:
        good = {"mode": "http", "conns": 1, "units": plan.units, "sequences": plan.sequences}
        with pytest.raises(OSError) as exc:
            Load(r, **{**good, "address": b"\x02"})
        assert (exc.value.errno, exc.value.strerror) == (
            errno.EINVAL,
            "setting the load target: Invalid argument",
        )
        with pytest.raises(OSError) as exc:
            Load(r, **{**good, "address": address, "units": [(plan.units[0][0], 2)]})  # 2 requests, depth 1
        assert (exc.value.errno, exc.value.strerror) == (
            errno.EINVAL,
            "configuring the load (units, sequences, depth): Invalid argument",
        )
    finally:
        r.close()


def test_a_url_without_a_scheme_is_http() -> None:
    from loadtest.plan import parse_target

    t = parse_target("127.0.0.1:8080/x?y=1")
    assert (t.scheme, t.host, t.port, t.path, t.address) == ("http", "127.0.0.1", 8080, "/x?y=1", ("127.0.0.1", 8080))


def test_head_responses_are_framed_without_a_body() -> None:
    """-m HEAD: the server's Content-Length is not followed by a body, and
    the native driver must not wait for one (a timeout or protocol error each)."""
    srv = Proc([PY, "apps/http.py", "--port", "0"])
    try:
        res = run(build_plan(f"http://127.0.0.1:{srv.port}/", method="HEAD", conns=2, duration=0.4, timeout=1.0))
    finally:
        srv.stop()
    assert res.requests > 0 and res.stats["by_class"][2] == res.requests
    assert not any(res.stats["errors"].values()), res.stats["errors"]


def test_worker_processes_start_together_after_the_spawn(misbehaving, monkeypatch: pytest.MonkeyPatch) -> None:
    """-t 2: the shared start lies ahead of each worker's spawn (time for its
    process to start), and the server's CPU is first sampled at that start,
    not before the load began."""
    import sys

    run_module = sys.modules["loadtest.run"]  # loadtest.run is also the package's run()
    spawned: list[tuple[int, int]] = []
    sampled: list[int] = []
    spawn, tree_ns = run_module._spawn, run_module.cpu.tree_ns

    def spy_spawn(share: Any, start_at: int) -> Any:
        spawned.append((time.monotonic_ns(), start_at))
        return spawn(share, start_at)

    def spy_tree_ns(pids: list[int]) -> dict[int, int]:
        sampled.append(time.monotonic_ns())
        return tree_ns(pids)

    monkeypatch.setattr(run_module, "_spawn", spy_spawn)
    monkeypatch.setattr(run_module.cpu, "tree_ns", spy_tree_ns)
    port = misbehaving("ok")
    res = run(build_plan(f"http://127.0.0.1:{port}/", conns=2, threads=2, duration=0.3), server_pids=[os.getpid()])
    assert res.requests > 0 and len(spawned) == 2 and len(sampled) == 2
    ((t0, start), (t1, start1)) = spawned
    assert start == start1 and t0 < t1 < start <= sampled[0]
