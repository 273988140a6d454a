"""uringload's ws:// and wss:// targets against WebSocket servers nobody here
wrote (the `websockets` library's asyncio server, in a thread of the test),
made to misbehave on purpose where a test needs it: echoes cut off after a
count, a corrupted echo, a refused upgrade, a close code, fragmented echoes
with pings between the fragments, a declined deflate offer, TLS.

The native driver runs in this process with the GIL released (cffi), so the
server thread runs beside it; each run is about a second.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from conftest import PY, Proc, TLSFiles

from loadtest import build_plan, run
from loadtest.engine import LOAD_ERRORS
from loadtest.plan import PlanError, ws_deflate
from loadtest.report import failure, text, to_json

websockets = pytest.importorskip("websockets")
from websockets.asyncio.server import ServerConnection, serve  # noqa: E402
from websockets.datastructures import Headers  # noqa: E402
from websockets.exceptions import ConnectionClosed  # noqa: E402
from websockets.http11 import Response  # noqa: E402

NO_ERRORS = dict.fromkeys(LOAD_ERRORS, 0)


def wait_for(pred: Callable[[], bool], timeout: float = 10.0) -> None:
    """A server-side count catching up (bounded only to stop a hang)."""
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, "timed out waiting for the server's count"
        time.sleep(0.01)


@dataclass
class Behaviour:
    silent_after: int = 0  # > 0: echo this many messages per connection, then read and say nothing
    corrupt_nth: int = 0  # > 0: this message of each connection comes back with one byte changed
    refuse: int = 0  # an HTTP status answering every upgrade
    close_after: int = 0  # > 0: close with close_code after echoing this many messages
    close_code: int = 1008
    fragment: bool = False  # echo in three fragments with a ping before each
    compression: str | None = "deflate"
    as_binary: bool = False  # echo text messages as binary ones (same bytes, wrong type)
    stall_nth: int = 0  # > 0: this message of each connection is echoed after stall_s (the server's own delay)
    stall_s: float = 0.0
    received: int = 0
    echoed: int = 0
    deflated: int = 0  # connections that agreed permessage-deflate
    pongs: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class WSServer:
    """A websockets echo server on its own loop in a thread."""

    def __init__(self, b: Behaviour, tls: ssl.SSLContext | None = None) -> None:
        self.b = b
        self.tls = tls
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.port = 0
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    async def _handler(self, ws: ServerConnection) -> None:
        b, n = self.b, 0
        if any(type(e).__name__ == "PerMessageDeflate" for e in ws.protocol.extensions):
            with b.lock:
                b.deflated += 1
        try:
            async for msg in ws:
                n += 1
                with b.lock:
                    b.received += 1
                if b.silent_after and n > b.silent_after:
                    continue
                if b.corrupt_nth and n == b.corrupt_nth:
                    msg = (b"!" + msg[1:]) if isinstance(msg, bytes) else "!" + msg[1:]
                if b.stall_nth and n == b.stall_nth:
                    await asyncio.sleep(b.stall_s)
                if b.as_binary and isinstance(msg, str):
                    msg = msg.encode()
                with b.lock:  # counted before the send: the client may see the echo before this thread runs again
                    b.echoed += 1
                if b.fragment:
                    third = max(1, len(msg) // 3)
                    parts = [msg[:third], msg[third : 2 * third], msg[2 * third :]]
                    for _ in parts:
                        pong = await ws.ping()
                        await pong
                        with b.lock:
                            b.pongs += 1
                    await ws.send(iter(parts))
                else:
                    await ws.send(msg)
                if b.close_after and n == b.close_after:
                    await ws.close(b.close_code, "test")
                    return
        except ConnectionClosed:
            pass

    def _process_request(self, ws: ServerConnection, request: Any) -> Response | None:
        if self.b.refuse:
            return Response(self.b.refuse, "Refused", Headers([("Content-Length", "0")]), b"")
        return None

    async def _start(self) -> None:
        self.server = await serve(
            self._handler,
            "127.0.0.1",
            0,
            compression=self.b.compression,
            max_size=None,
            ssl=self.tls,
            process_request=self._process_request,
        )
        self.port = self.server.sockets[0].getsockname()[1]
        self.ready.set()

    def __enter__(self) -> WSServer:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop)
        assert self.ready.wait(10), "the websockets server did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            self.server.close()
            await asyncio.wait_for(self.server.wait_closed(), 10)

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(15)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def ws_server() -> Iterator[Any]:
    started: list[WSServer] = []

    def start(**kw: Any) -> WSServer:
        tls = kw.pop("tls", None)
        s = WSServer(Behaviour(**kw), tls)
        started.append(s.__enter__())
        return s

    yield start
    for s in started:
        s.__exit__(None, None, None)


@pytest.mark.parametrize("text_mode", [True, False], ids=["text", "binary"])
@pytest.mark.parametrize("deflate", [False, True], ids=["plain", "deflate"])
def test_message_counts_are_exact(ws_server, text_mode: bool, deflate: bool) -> None:
    """Each connection gets 5 echoes, then none: 5 per connection counted,
    6 sent (the one unanswered), no error: nothing counted twice or lost,
    whichever frames carry it."""
    srv = ws_server(silent_after=5)
    res = run(
        build_plan(
            f"ws://127.0.0.1:{srv.port}/echo",
            conns=4,
            duration=0.8,
            timeout=30.0,
            size=300,
            text=text_mode,
            deflate=deflate,
        )
    )
    assert res.stats["errors"] == NO_ERRORS
    assert res.requests == 20 and res.stats["sent"] == 24
    assert res.stats["by_class"][1] == 4  # four 101s, one handshake per connection
    assert srv.b.deflated == (4 if deflate else 0)
    assert res.latency.get_total_count() == 20


@pytest.mark.parametrize("size", [1, 125, 126, 65535, 65536, 70000])
def test_echo_runs_clean_at_every_length_encoding(ws_server, size: int) -> None:
    """7-bit, 16-bit and 64-bit payload lengths, both ways; the server
    counts what it got, which bounds what came back."""
    srv = ws_server()
    res = run(build_plan(f"ws://127.0.0.1:{srv.port}/", conns=3, duration=0.5, size=size, text=False))
    assert res.stats["errors"] == NO_ERRORS
    assert res.requests > 3
    assert res.requests <= srv.b.echoed and res.stats["sent"] - res.requests <= 3
    j = to_json(res)
    assert j["ws"]["handshakes"]["1xx"] == 3 and j["ws"]["close_codes"] == {}


def test_the_goodbye_is_a_close_frame_1000(ws_server) -> None:
    """At the end of the run each connection sends close 1000: the server
    saw every message sent (no reset dropped one)."""
    srv = ws_server()
    res = run(build_plan(f"ws://127.0.0.1:{srv.port}/", conns=4, duration=0.5, size=64))
    assert res.left_open == 0
    wait_for(lambda: srv.b.received >= res.stats["sent"])
    assert srv.b.received == res.stats["sent"]


def test_deflate_round_trip_compresses_on_the_wire(ws_server) -> None:
    """--deflate sends RSV1 frames (the precomputed payloads) and inflates
    the server's compressed echoes, context takeover included (websockets
    keeps its compression context across messages by default)."""
    srv = ws_server()
    res = run(build_plan(f"ws://127.0.0.1:{srv.port}/", conns=2, duration=0.5, size=4096, deflate=True))
    assert res.stats["errors"] == NO_ERRORS and res.requests > 10
    assert srv.b.deflated == 2
    # the echo is compressed too: far fewer bytes came back than the messages' size
    assert res.stats["bytes_in"] < res.requests * 4096 / 4
    payload = ws_deflate(b"a" * 4096)
    assert len(payload) < 100 and not payload.endswith(b"\x00\x00\xff\xff")


def test_a_declined_deflate_offer_is_a_handshake_error(ws_server) -> None:
    srv = ws_server(compression=None)
    res = run(build_plan(f"ws://127.0.0.1:{srv.port}/", conns=2, duration=0.3, deflate=True))
    assert res.requests == 0 and res.stats["errors"]["handshake"] > 0
    assert res.stats["hs_invalid"] == res.stats["errors"]["handshake"]


def test_a_corrupted_echo_is_a_mismatch(ws_server) -> None:
    """The 3rd echo of every connection has one byte changed: counted as a
    mismatch, the connection made again; the rest still count."""
    srv = ws_server(corrupt_nth=3)
    res = run(build_plan(f"ws://127.0.0.1:{srv.port}/", conns=2, duration=0.5, timeout=5.0))
    e = res.stats["errors"]
    assert e["mismatch"] >= 2 and res.stats["connects"] >= 4
    assert {k: v for k, v in e.items() if k != "mismatch"} == {k: 0 for k in e if k != "mismatch"}
    assert res.requests >= 4
    assert "Echoes not the message sent" in text(res)


def test_an_echo_of_the_wrong_type_is_a_mismatch(ws_server) -> None:
    """The same bytes in a binary message for a text one are not the echo."""
    srv = ws_server(as_binary=True)
    res = run(build_plan(f"ws://127.0.0.1:{srv.port}/", conns=2, duration=0.3, timeout=5.0))
    assert res.requests == 0 and res.stats["errors"]["mismatch"] >= 2


def test_a_refused_handshake_is_counted_with_its_status(ws_server) -> None:
    srv = ws_server(refuse=403)
    res = run(build_plan(f"ws://127.0.0.1:{srv.port}/chat", conns=2, duration=0.3))
    # tried again after 10 ms, not in a spin: at most ~30 upgrades per connection in 0.3 s
    assert res.stats["connects"] <= 2 * (0.3 / 0.01 + 5)
    assert res.requests == 0
    assert res.stats["errors"]["handshake"] > 0 and res.stats["by_class"][4] == res.stats["errors"]["handshake"]
    assert to_json(res)["ws"]["refused_status"] == 403
    assert to_json(res)["non_2xx_3xx"] == res.stats["errors"]["handshake"]
    reason = failure(res)
    assert reason and "answered 403" in reason and "'/chat'" in reason
    assert "last status 403" in text(res)


def test_a_close_frame_is_counted_by_code(ws_server) -> None:
    srv = ws_server(close_after=2, close_code=1008)
    res = run(build_plan(f"ws://127.0.0.1:{srv.port}/", conns=2, duration=0.4, timeout=5.0))
    closed = res.stats["errors"]["closed"]
    assert closed >= 2 and to_json(res)["ws"]["close_codes"] == {"1008": closed}
    assert res.stats["last_close_code"] == 1008
    assert res.requests >= 2 * closed  # two echoes per connection before each close
    assert "Closed by the server" in text(res)


def test_fragments_and_pings_between_them(ws_server) -> None:
    """Echoes in three fragments, a ping before each: reassembled in C and
    each ping answered with its pong (the server waits for it)."""
    srv = ws_server(fragment=True)
    res = run(build_plan(f"ws://127.0.0.1:{srv.port}/", conns=2, duration=0.5, size=1000, timeout=5.0))
    assert res.stats["errors"] == NO_ERRORS and res.requests > 2
    assert srv.b.pongs >= 3 * res.requests


def test_worker_processes_split_the_connections(ws_server) -> None:
    """-t 2: each worker process has its own ring and half the connections;
    the plan's WebSocket units cross to them as JSON."""
    srv = ws_server(silent_after=3)
    res = run(build_plan(f"ws://127.0.0.1:{srv.port}/", conns=4, threads=2, duration=0.6, timeout=30.0, deflate=True))
    assert res.stats["errors"] == NO_ERRORS
    assert res.requests == 12 and res.stats["sent"] == 16 and res.stats["by_class"][1] == 4


def test_constant_rate_is_held(ws_server) -> None:
    srv = ws_server()
    res = run(build_plan(f"ws://127.0.0.1:{srv.port}/", conns=4, duration=1.0, rate=300))
    assert res.stats["errors"] == NO_ERRORS
    assert 0.85 * 300 <= res.requests / res.elapsed <= 1.1 * 300
    assert res.corrected.get_total_count() == res.requests


def at_least(h: Any, ns: int) -> int:
    """How many recorded latencies are at least `ns` (within the histogram's precision)."""
    return sum(i.count_added_in_this_iter_step for i in h.get_recorded_iterator() if i.value_iterated_to >= ns)


def test_rate_mode_corrects_for_coordinated_omission(ws_server) -> None:
    """One echo per connection held 300 ms by the server, at 200 msg/s: the
    ~30 messages due meanwhile go out late; from their send they are fast
    (uncorrected), from when they were due they are not (corrected)."""
    srv = ws_server(stall_nth=20, stall_s=0.3)
    res = run(build_plan(f"ws://127.0.0.1:{srv.port}/", conns=2, duration=1.0, rate=200, timeout=5.0))
    assert res.stats["errors"] == NO_ERRORS
    assert at_least(res.latency, 150_000_000) <= 2
    assert at_least(res.corrected, 150_000_000) >= 20


def test_ws_options_are_checked() -> None:
    with pytest.raises(PlanError, match="one message per connection"):
        build_plan("ws://127.0.0.1:9/", pipeline=4)
    with pytest.raises(PlanError, match="--deflate is for ws"):
        build_plan("http://127.0.0.1:9/", deflate=True)
    with pytest.raises(PlanError, match="--size"):
        build_plan("ws://127.0.0.1:9/", size=0)


def test_wss_through_the_python_path(ws_server, tls_files: TLSFiles) -> None:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tls_files.cert, tls_files.key)
    srv = ws_server(tls=ctx)
    res = run(
        build_plan(f"wss://127.0.0.1:{srv.port}/", conns=2, duration=0.5, cafile=str(tls_files.cacert), deflate=True)
    )
    assert res.stats["errors"] == NO_ERRORS and res.requests > 2
    assert srv.b.deflated == 2


def test_wss_refuses_an_unverified_certificate_with_the_hint(ws_server, tls_files: TLSFiles) -> None:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tls_files.cert, tls_files.key)
    srv = ws_server(tls=ctx)
    res = run(build_plan(f"wss://127.0.0.1:{srv.port}/", conns=1, duration=0.3))
    assert res.requests == 0 and res.stats["cert_errors"] > 0
    reason = failure(res)
    assert reason and "--cacert" in reason
    ok = run(build_plan(f"wss://127.0.0.1:{srv.port}/", conns=1, duration=0.3, insecure=True, rate=100))
    assert ok.stats["errors"] == NO_ERRORS and ok.requests > 10
    assert ok.requests <= 60, ok.requests  # -R 100 over 0.3 s paces the Python path too (a closed loop makes thousands)


def test_the_command_line(ws_server) -> None:
    srv = ws_server(refuse=404)
    out = subprocess.run(
        [PY, "-m", "loadtest", "-c", "1", "-d", "0.3", f"ws://127.0.0.1:{srv.port}/nope"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert "answered 404" in out.stderr and "Traceback" not in out.stderr
    assert "Handshakes failed" in out.stdout


# ---- a raw server: frames cut anywhere, and frames a server must not send ---------------------


class RawWS:
    """A hand-written WebSocket echo over asyncio streams, for what no library
    server sends: `mode` bytewise (each echo written one byte per write, so
    headers arrive cut at every byte, payloads in pieces), ping101 (an unsolicited
    ping in the same write as the 101), masked (echo frames with the mask bit
    set), rsv2 (a reserved bit set), bigping (a 126-byte ping)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.pongs = 0
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            key = next(
                line.split(b":", 1)[1].strip()
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"sec-websocket-key:")
            )
            accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
            out = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            out += b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
            if self.mode == "ping101":
                out += b"\x89\x03abc"
            elif self.mode == "hugehead":
                out = out[:-2] + b"X-Pad: " + b"x" * 9000 + b"\r\n\r\n"
            elif self.mode == "garbage":
                out = b"SSH-2.0-OpenSSH_9.2\r\n\r\n"
            writer.write(out)
            while True:
                b0, b1 = await reader.readexactly(2)
                n = b1 & 0x7F
                if n == 126:
                    (n,) = struct.unpack("!H", await reader.readexactly(2))
                elif n == 127:
                    (n,) = struct.unpack("!Q", await reader.readexactly(8))
                mask = await reader.readexactly(4)
                data = bytes(x ^ mask[i & 3] for i, x in enumerate(await reader.readexactly(n)))
                op = b0 & 0x0F
                if op == 0xA:
                    self.pongs += 1
                    continue
                if op == 0x8:
                    return
                frame = self._frame(b0, data)
                if self.mode == "bytewise":
                    # the header and the payload's first bytes one by one, the rest in seven pieces
                    cuts = [*range(min(len(frame), 14)), *range(14, len(frame), max(1, len(frame) // 7))]
                    for i, j in zip(cuts, [*cuts[1:], len(frame)], strict=True):
                        writer.write(frame[i:j])
                        await writer.drain()
                        await asyncio.sleep(0)
                else:
                    writer.write(frame)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def _frame(self, b0: int, data: bytes) -> bytes:
        n = len(data)
        ext = bytes([n]) if n < 126 else b"\x7e" + struct.pack("!H", n) if n < 65536 else b"\x7f" + struct.pack("!Q", n)
        if self.mode == "masked":
            return bytes([0x80 | (b0 & 0x0F), 0x80 | ext[0]]) + ext[1:] + b"\0\0\0\0" + data
        if self.mode == "rsv2":
            return bytes([b0 | 0x20]) + ext + data
        if self.mode == "bigping":
            return b"\x89\x7e\x00\x7e" + b"p" * 126
        if self.mode == "interleave":  # two fragments with a ping and a pong between them
            half = len(data) // 2
            first, second = data[:half], data[half:]
            control = b"\x89\x02hi" + b"\x8a\x00"
            return bytes([b0 & 0x0F, len(first)]) + first + control + bytes([0x80, len(second)]) + second
        return bytes([b0]) + ext + data

    async def _start(self) -> None:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        self.ready.set()

    def __enter__(self) -> RawWS:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop)
        assert self.ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            self.server.close()
            await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(15)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.mark.parametrize("size", [5, 300, 70000])
def test_frames_cut_at_every_byte(size: int) -> None:
    """Echoes written a byte at a time: the header (2, 4 or 10 bytes) and
    the payload reassembled across receives."""
    with RawWS("bytewise") as srv:
        res = run(build_plan(f"ws://127.0.0.1:{srv.port}/", conns=2, duration=0.5, size=size, timeout=10.0))
    assert res.stats["errors"] == NO_ERRORS and res.requests >= 2


def test_a_ping_in_the_101s_write_is_answered() -> None:
    """Bytes after the 101's blank line are frames (here a ping): answered
    with the same payload, and the echo loop runs after it."""
    with RawWS("ping101") as srv:
        res = run(build_plan(f"ws://127.0.0.1:{srv.port}/", conns=2, duration=0.4))
        wait_for(lambda: srv.pongs >= 2)
    assert res.stats["errors"] == NO_ERRORS and res.requests > 2


def test_control_frames_between_fragments() -> None:
    """A ping (answered) and an unsolicited pong inside a fragmented echo."""
    with RawWS("interleave") as srv:
        res = run(build_plan(f"ws://127.0.0.1:{srv.port}/", conns=2, duration=0.4, size=100))
        wait_for(lambda: srv.pongs >= res.requests)
    assert res.stats["errors"] == NO_ERRORS and res.requests > 2


@pytest.mark.parametrize("mode", ["masked", "rsv2", "bigping"])
def test_frames_a_server_must_not_send_are_protocol_errors(mode: str) -> None:
    with RawWS(mode) as srv:
        res = run(build_plan(f"ws://127.0.0.1:{srv.port}/", conns=2, duration=0.3))
    assert res.requests == 0 and res.stats["errors"]["protocol"] >= 2
    assert {k: v for k, v in res.stats["errors"].items() if k != "protocol"} == {
        k: 0 for k in LOAD_ERRORS if k != "protocol"
    }


@pytest.mark.parametrize("mode", ["hugehead", "garbage"])
def test_an_answer_that_is_no_101_is_a_handshake_error(mode: str) -> None:
    """A head past 8 KiB, or not HTTP at all: a handshake error, no crash, no frames read."""
    with RawWS(mode) as srv:
        res = run(build_plan(f"ws://127.0.0.1:{srv.port}/", conns=2, duration=0.3))
    assert res.requests == 0 and res.stats["errors"]["handshake"] >= 2
    assert {k: v for k, v in res.stats["errors"].items() if k != "handshake"} == {
        k: 0 for k in LOAD_ERRORS if k != "handshake"
    }
    if mode == "garbage":
        assert res.stats["by_class"][0] == res.stats["errors"]["handshake"]
    else:
        assert res.stats["hs_invalid"] == res.stats["errors"]["handshake"]


def test_a_server_that_never_answers_the_upgrade_times_out() -> None:
    """No answer to the upgrade within --timeout: a timeout, the connection made again."""
    with socket.socket() as lsock:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(16)
        port = lsock.getsockname()[1]
        res = run(build_plan(f"ws://127.0.0.1:{port}/", conns=1, duration=0.5, timeout=0.1))
    assert res.requests == 0 and res.stats["errors"]["timeout"] >= 2


# ---- against uringserve's own server (i26-proto's /ws; skipped where it is not merged yet) --------


@pytest.mark.parametrize("loop", ["uring", "asyncio"])
@pytest.mark.parametrize("deflate", [False, True], ids=["plain", "deflate"])
def test_against_uringserve_ws_echo(loop: str, deflate: bool) -> None:
    pytest.importorskip("uringserve.ws", reason="uringserve's WebSocket server is not on this branch yet")
    srv = Proc([PY, "-m", "uringserve", "run", "apps.http:app", "--port", "0", "--loop", loop])
    try:
        res = run(
            build_plan(f"ws://127.0.0.1:{srv.port}/ws", conns=8, duration=0.6, size=2000, deflate=deflate),
            [srv.p.pid],
        )
        assert res.stats["errors"] == NO_ERRORS, text(res)
        assert res.requests > 8 and res.stats["by_class"][1] == 8
        assert res.server_cpu_ns and res.per_request_us(res.server_cpu_ns)
        refused = run(build_plan(f"ws://127.0.0.1:{srv.port}/no-such-ws", conns=1, duration=0.3))
        assert refused.requests == 0 and refused.stats["errors"]["handshake"] > 0
        assert to_json(refused)["ws"]["refused_status"] == 404
    finally:
        srv.stop()
