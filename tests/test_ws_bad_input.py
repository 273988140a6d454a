"""Bad WebSocket input at the server level: `uringserve run apps.http:app`
(both loops) with small limits through the CLI (--ws-max-size 1 MiB,
--header-timeout 2), fed by the raw-frame client (tests/ws_raw.py). Each
case asserts a clear answer (a close code, the connection ended), that the
server's memory stays bounded (VmRSS before and after), and that other
connections keep working; the last ones that nothing is left behind
(/stats: the ring's slots, buffers and arena; the ws_connections_open
gauge; the server's fds). WS_TEST_SERVERS=uvicorn runs what applies to
uvicorn too (its ring counters and header timeout are uringserve's own)."""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
import urllib.request
import zlib
from collections.abc import Iterator

import pytest
from procs import rss_kib, wait_until
from ws_raw import BINARY, CLOSE, CONT, PING, TEXT, Closed, RawWS, close_payload, frame
from ws_servers import KINDS, WSServer

pytestmark = pytest.mark.timeout(240)

MAX = 1 << 20
HEADER_TIMEOUT = 2.0
MIB_KIB = 1024  # RSS is in KiB


OPTIONS = ("--ws-max-size", str(MAX), "--header-timeout", str(HEADER_TIMEOUT), "--metrics", "127.0.0.1:0")


@pytest.fixture(scope="module", params=KINDS)
def srv(request: pytest.FixtureRequest) -> Iterator[WSServer]:
    s = WSServer(request.param, *OPTIONS)
    yield s
    assert s.alive(), s.output()
    s.stop()


@pytest.fixture(params=["native", "asgi"])
def app_srv(request: pytest.FixtureRequest, srv: WSServer) -> Iterator[WSServer]:
    """The module's server (apps.http:app's native handlers), or the same
    routes as ASGI (apps.http:asgi_app: send awaits) on a server of its own."""
    if request.param == "native" or not srv.uringserve:
        if not srv.uringserve and request.param == "asgi":
            pytest.skip("one app on uvicorn")
        yield srv
        return
    s = WSServer(srv.kind, *OPTIONS, app="asgi")
    yield s
    assert s.alive(), s.output()
    s.stop()


def still_serves(srv: WSServer) -> None:
    """Another connection is answered at once (text and a ping)."""
    with RawWS(srv.port, timeout=30) as ws:
        assert ws.status == 101
        ws.send_message("still here ✓")
        assert ws.recv_message()[1] == "still here ✓".encode()
        ws.send_frame(PING, b"p")
        f = ws.recv_frame()
        assert (f.opcode, f.payload) == (0xA, b"p")


def metrics(srv: WSServer) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    port = srv.proc.metrics_port() if srv.uringserve else None
    if port is None:
        return {}
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=20).read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def reset_peak(pid: int) -> int:
    """Start a new peak for `pid`'s resident memory (VmHWM, reset to VmRSS by
    clear_refs 5), so a test sees a buffer the server held and freed again
    (an inflated bomb); its RSS now, in KiB."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError:  # not ours to reset: the peak is the process's whole life's, still an upper bound
        pass
    return rss_kib(pid)


def peak_kib(pid: int) -> int:
    """`pid`'s peak resident memory since reset_peak (VmHWM), in KiB."""
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("VmHWM:")).split()[1])


def closes(m: dict[str, float]) -> float:
    """uringserve_ws_close_total summed over its codes: the WebSocket connections that ended."""
    return sum(v for k, v in m.items() if k.startswith("uringserve_ws_close_total{"))


def quiet_metrics(srv: WSServer, gauge: str = "uringserve_ws_connections_open") -> dict[str, float]:
    """A scrape once no WebSocket is open (the earlier tests' closes are not
    announced, and a scrape is the last one-second sample): its gauge 0, or
    what it still shows after 30 s."""
    wait_until(lambda: srv.stats().get("slots_used", 0) <= 1 and metrics(srv).get(gauge, 0) == 0, 30, 0.25)
    return metrics(srv)


def server_fds(srv: WSServer) -> int:
    return len(os.listdir(f"/proc/{srv.pid}/fd"))


# -- the handshake ----------------------------------------------------------------------------------


@pytest.mark.parametrize("cut", [20, 60, 110], ids=["in-request-line", "in-headers", "before-blank-line"])
def test_a_handshake_cut_in_the_middle_is_closed_at_the_header_timeout(srv: WSServer, cut: int) -> None:
    """Part of an upgrade request and then nothing: no 101, and the
    connection is closed once --header-timeout has passed (a 408 at most)."""
    if not srv.uringserve:
        pytest.skip("uvicorn has no header timeout")
    ws = RawWS(srv.port, handshake=False, timeout=HEADER_TIMEOUT * 10)
    try:
        assert len(ws.request) > cut
        ws.send(ws.request[:cut])
        start = time.monotonic()
        got = b""
        try:
            while chunk := ws.sock.recv(4096):
                got += chunk
        except ConnectionResetError:
            pass
        elapsed = time.monotonic() - start
    finally:
        ws.close()
    assert b" 101 " not in got.split(b"\r\n")[0], got
    assert got == b"" or got.startswith(b"HTTP/1.1 408"), got
    assert HEADER_TIMEOUT * 0.5 <= elapsed < HEADER_TIMEOUT * 8, elapsed
    still_serves(srv)


# -- frames split everywhere ------------------------------------------------------------------------


def bytewise(ws: RawWS, data: bytes) -> None:
    """One byte per send, each read by the server before the next is sent."""
    for i in range(len(data)):
        ws.send_read(data[i : i + 1])


@pytest.mark.parametrize("size", [0, 1, 125, 126, 1000, 65535, 65536, 70000])
def test_a_frame_header_split_at_every_byte(srv: WSServer, size: int) -> None:
    """Header, mask key and the first bytes of the payload one byte per send
    (TCP_NODELAY: a segment each, each read by the server before the next
    goes), the rest at once: the echo is right."""
    with RawWS(srv.port, nodelay=True) as ws:
        payload = os.urandom(size)
        raw = frame(BINARY, payload)
        head = 2 + (0 if size < 126 else 2 if size < 65536 else 8) + 4
        bytewise(ws, raw[: head + 16])
        ws.send(raw[head + 16 :])
        assert ws.recv_message()[1] == payload


def test_every_split_point_of_one_frame(srv: WSServer) -> None:
    """The same 64-bit-length frame sent in two pieces, for every split
    point in its header and the start of its payload."""
    with RawWS(srv.port, nodelay=True) as ws:
        payload = os.urandom(65536 + 3)
        raw = frame(BINARY, payload)
        for k in range(1, 2 + 8 + 4 + 4):
            ws.send_read(raw[:k])
            ws.send(raw[k:])
            assert ws.recv_message()[1] == payload, k


def test_control_frames_and_fragments_byte_by_byte(srv: WSServer) -> None:
    with RawWS(srv.port, nodelay=True) as ws:
        bytewise(ws, frame(TEXT, "κό".encode(), fin=False) + frame(PING, b"mid") + frame(CONT, "σμε".encode()))
        opcode, data, controls = ws.recv_message()
        assert (opcode, data.decode()) == (TEXT, "κόσμε")
        assert [c.payload for c in controls] == [b"mid"]
        bytewise(ws, frame(CLOSE, close_payload(1000, b"bye")))
        assert ws.expect_close(1000).reason == b"bye"


# -- lengths and limits -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "length", [1 << 63, (1 << 64) - 1, (1 << 63) - 1, 1 << 40], ids=["2^63", "2^64-1", "2^63-1", "2^40"]
)
def test_a_huge_length_is_refused_from_the_header(srv: WSServer, length: int) -> None:
    """A 64-bit length beyond the limit (2^63 and up: the RFC's most significant
    bit must be 0): 1002 or 1009 from the header alone, nothing allocated."""
    rss = reset_peak(srv.pid)
    with RawWS(srv.port) as ws:
        ws.send(frame(BINARY, b"", length=length))
        ws.expect_close(1002, 1009)
    assert peak_kib(srv.pid) - rss < 32 * MIB_KIB
    still_serves(srv)


def test_a_1gib_message_sent_slowly_is_refused_at_the_limit(srv: WSServer) -> None:
    """A frame announcing 1 GiB: refused (1009) from its header, before any
    payload; the client's first 256 KiB of payload is all the server sees."""
    rss = reset_peak(srv.pid)
    with RawWS(srv.port) as ws:
        ws.send(frame(BINARY, b"", length=1 << 30)[:14])  # the header and mask key
        ws.send(os.urandom(256 * 1024))
        ws.expect_close(1009)
    assert peak_kib(srv.pid) - rss < 32 * MIB_KIB
    still_serves(srv)


def test_a_1gib_fragmented_message_is_cut_at_the_limit(srv: WSServer) -> None:
    """Fragments of 64 KiB, sent one after another, of a message that would
    be 1 GiB: the close 1009 comes once the fragments pass --ws-max-size,
    after at most a few MiB, and the server's RSS never grows by the message."""
    rss = reset_peak(srv.pid)
    sent = 0
    chunk = os.urandom(65536)
    with RawWS(srv.port, timeout=60) as ws:
        try:
            ws.send(frame(BINARY, chunk, fin=False))
            sent += len(chunk)
            while sent < 1 << 30:
                ws.send(frame(CONT, chunk, fin=False))
                sent += len(chunk)
        except OSError:  # the server closed: the rest cannot be sent
            pass
        ws.expect_close(1009)
    assert sent < 64 * MAX, f"the server took {sent} bytes before refusing"
    assert peak_kib(srv.pid) - rss < 48 * MIB_KIB
    still_serves(srv)


def test_a_deflate_bomb_is_refused_without_inflating_it(srv: WSServer) -> None:
    """256 MiB of zeros compress to ~256 KiB (under the 1 MiB limit on the
    wire): the server stops inflating at --ws-max-size and closes 1009."""
    bomb = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = bytes(1 << 20)
    payload = b"".join(bomb.compress(zeros) for _ in range(256)) + bomb.flush(zlib.Z_SYNC_FLUSH)
    payload = payload[:-4]
    assert len(payload) < MAX
    rss = reset_peak(srv.pid)
    with RawWS(srv.port, extensions="permessage-deflate") as ws:
        assert (ws.extension or "").startswith("permessage-deflate"), ws.headers
        ws.send_frame(BINARY, payload, rsv=4)
        ws.expect_close(1009)
    assert peak_kib(srv.pid) - rss < 48 * MIB_KIB
    still_serves(srv)


# -- peers that do not read, peers that vanish ------------------------------------------------------


FLOOD_BYTES = 256 * MAX  # what a flood sends at most
RSS_GUARD_KIB = 384 * MIB_KIB  # a flood stops once the server has grown this much: no test hurts the machine


def flood(sock: socket.socket, stop: threading.Event, result: dict[str, int], pid: int) -> None:
    """Send 64 KiB binary messages until `stop`, the socket blocks 5 s,
    FLOOD_BYTES, or the server's RSS has grown by RSS_GUARD_KIB."""
    msg = frame(BINARY, os.urandom(65536 - 14))
    sock.settimeout(5)
    sent, rss0, peak = 0, rss_kib(pid), 0
    try:
        while not stop.is_set() and sent < FLOOD_BYTES:
            sock.sendall(msg)
            sent += len(msg)
            if sent % (64 * len(msg)) == 0:
                peak = max(peak, rss_kib(pid) - rss0)
                if peak > RSS_GUARD_KIB:
                    break
    except OSError:  # blocked for 5 s (backpressure) or closed by the server
        pass
    result["sent"], result["peak"] = sent, max(peak, rss_kib(pid) - rss0)


def test_a_client_that_never_reads_the_echo(app_srv: WSServer) -> None:
    """The echo of a client that sends and never reads: the server stops
    reading it once its sends back up (the client's sends block), its RSS
    stays bounded, and another client is served meanwhile."""
    rss = reset_peak(app_srv.pid)
    with RawWS(app_srv.port) as ws:
        ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stop, result = threading.Event(), dict[str, int]()
        t = threading.Thread(target=flood, args=(ws.sock, stop, result, app_srv.pid), daemon=True)
        t.start()
        t.join(120)  # ends when blocked for 5 s, or at FLOOD_BYTES
        stop.set()
        grown = max(peak_kib(app_srv.pid) - rss, result.get("peak", 0))
        still_serves(app_srv)
    assert not t.is_alive()
    assert grown < 96 * MIB_KIB, f"RSS grew by {grown} KiB (the client sent {result['sent']} bytes, read none)"
    assert result["sent"] < FLOOD_BYTES, f"the server read {result['sent']} bytes it could not answer"


def test_a_chat_member_that_never_reads_while_another_floods(app_srv: WSServer) -> None:
    """/ws/chat: member A never reads, member B floods the broadcast. Every
    message goes to A too: the server must not hold them all (RSS bounded,
    by backpressure on B or by closing A), and the echo serves others."""
    rss = reset_peak(app_srv.pid)
    a = RawWS(app_srv.port, "/ws/chat")
    a.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    b = RawWS(app_srv.port, "/ws/chat")
    stop, result = threading.Event(), dict[str, int]()
    drained = [0]

    def drain_b() -> None:  # B reads its own copies, so only A is slow
        try:
            b.sock.settimeout(30)
            while not stop.is_set() and b.sock.recv(1 << 20):
                drained[0] += 1
        except OSError:
            pass

    reader = threading.Thread(target=drain_b, daemon=True)
    reader.start()
    try:
        t = threading.Thread(target=flood, args=(b.sock, stop, result, app_srv.pid), daemon=True)
        t.start()
        t.join(120)
        peak = max(peak_kib(app_srv.pid) - rss, result.get("peak", 0))
        still_serves(app_srv)
        stop.set()
    finally:
        a.close()
        b.close()
        reader.join(40)
    assert peak < 128 * MIB_KIB, f"RSS grew by {peak} KiB while A did not read (B sent {result.get('sent')} bytes)"


@pytest.mark.parametrize("where", ["in-header", "in-payload", "in-fragmented-message", "in-handshake"])
def test_a_peer_that_resets_mid_frame(srv: WSServer, where: str) -> None:
    """SO_LINGER 0 and close: an RST in the middle of a frame, 20 times;
    the server goes on (and test_abandoned... shows nothing is held)."""
    for _ in range(20):
        ws = RawWS(srv.port, handshake=where != "in-handshake")
        if where == "in-header":
            ws.send(frame(BINARY, b"x" * 300)[:3])
        elif where == "in-payload":
            ws.send(frame(BINARY, os.urandom(200_000))[:100_000])
        elif where == "in-fragmented-message":
            ws.send(frame(TEXT, b"first", fin=False) + frame(CONT, b"second", fin=False))
        else:
            ws.send(ws.request[:40])
        ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        ws.close()
    still_serves(srv)


# -- 1,000 connections abandoned: nothing left behind -------------------------------------------------


def abandon(port: int, i: int, extensions: str | None) -> socket.socket | None:
    """One WebSocket opened and left in one of five ways; the socket if still open."""
    ws = RawWS(port, extensions=extensions if i % 2 else None, timeout=60)
    assert ws.status == 101
    if ws.extension:
        ws.enable_deflate()
    way = i % 5
    if way == 0:  # a message, then gone without a close frame
        ws.send_message("bye without close")
        ws.recv_message()
    elif way == 1:  # mid-frame
        ws.send(frame(BINARY, os.urandom(5000))[:2000])
    elif way == 2:  # mid fragmented message
        ws.send(frame(TEXT, b"never", fin=False))
    elif way == 3:  # reset mid-frame
        ws.send(frame(BINARY, os.urandom(100))[:50])
        ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    return ws.sock


def settled(srv: WSServer, before: dict, fds_before: int) -> tuple[bool, dict, int]:
    state: dict = {}
    fds = 0

    def done() -> bool:
        nonlocal state, fds
        state = srv.stats()
        fds = server_fds(srv)
        ring_ok = all(
            state.get(k, 0) <= before.get(k, 0) for k in ("slots_used", "arena_in_use", "ext_in_use", "bufs_out")
        )
        return ring_ok and fds <= fds_before

    ok = wait_until(done, timeout=60, interval=0.25)
    return ok, state, fds


def test_1000_abandoned_connections_leave_nothing_behind(srv: WSServer) -> None:
    """1,000 WebSockets, 250 at a time, each opened and abandoned (closed
    without a close frame, some mid-frame or mid-message, some reset, half
    with deflate): afterwards the ring's slots in use, provided buffers
    out, arena chunks and send segments, the server's fds and the
    ws_connections_open gauge are back to their counts before."""
    still_serves(srv)
    gauge = "uringserve_ws_connections_open"
    m_before = quiet_metrics(srv)  # the counts before: once the earlier tests' connections are gone
    before, fds_before = srv.stats(), server_fds(srv)
    rss = reset_peak(srv.pid)
    for batch in range(4):
        socks = [abandon(srv.port, batch * 250 + i, "permessage-deflate") for i in range(250)]
        for s in socks:
            if s is not None:
                s.close()
    ok, after, fds = settled(srv, before, fds_before)
    assert ok, f"left behind: before {before} fds {fds_before}; after {after} fds {fds}"
    assert peak_kib(srv.pid) - rss < 96 * MIB_KIB
    if srv.uringserve:
        assert gauge in m_before, f"no {gauge} in /metrics: {sorted(k for k in m_before if 'ws' in k)}"
        # the metrics are sampled each second: a scrape that counts the 1,000
        # closes is one taken after them, and its gauge is the one to judge
        closed_before = closes(m_before)
        last: dict[str, float] = {}

        def back() -> bool:
            nonlocal last
            last = metrics(srv)
            return closes(last) >= closed_before + 1000 and last.get(gauge) == m_before[gauge]

        assert wait_until(back, timeout=60, interval=0.5), (m_before.get(gauge), last.get(gauge), closes(last))
    still_serves(srv)


def test_open_connections_gauge_counts_and_returns(srv: WSServer) -> None:
    """ws_connections_open rises by the connections held open and falls back once they go."""
    if not srv.uringserve:
        pytest.skip("uringserve's metrics")
    gauge = "uringserve_ws_connections_open"
    base = quiet_metrics(srv).get(gauge)
    assert base is not None, "no uringserve_ws_connections_open in /metrics"
    held = [RawWS(srv.port) for _ in range(10)]
    try:
        assert wait_until(lambda: metrics(srv).get(gauge) == base + 10, timeout=30, interval=0.25), metrics(srv).get(
            gauge
        )
    finally:
        for ws in held:
            ws.close()
    assert wait_until(lambda: metrics(srv).get(gauge) == base, timeout=30, interval=0.25), metrics(srv).get(gauge)


def test_the_server_closes_what_it_cannot_answer(srv: WSServer) -> None:
    """A few malformed frames one after another on fresh connections: each
    gets its close code and the connection ends; the server never dies."""
    cases = [
        (frame(TEXT, b"x", masked=False), (1002,)),
        (frame(TEXT, b"\xff"), (1007,)),
        (frame(0x3, b""), (1002,)),
        (frame(CONT, b"x"), (1002,)),
        (frame(PING, b"x" * 126), (1002,)),
        (frame(CLOSE, b"\x03"), (1002,)),
        (frame(TEXT, b"", length=MAX + 1), (1009,)),
    ]
    for raw, codes in cases:
        with RawWS(srv.port) as ws:
            ws.send(raw)
            try:
                ws.expect_close(*codes)
            except Closed:
                raise AssertionError(f"{raw[:8]!r}: closed without a close frame") from None
    still_serves(srv)
