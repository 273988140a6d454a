"""A WebSocket echo load generator on picows' client (uvloop): the check
that uringload's ws:// mode is not the bottleneck of bench/ws_bench.py (the
issue: the benchmark uses whichever generator reaches the higher message
rate on the same server). Closed loop like uringload: each connection
sends one message, compares the echo byte for byte, sends the next.

    python bench/ws_picows_load.py ws://127.0.0.1:8000/ws -c 100 -d 4 --size 64 \
        [--binary] [--warmup 0.5] [--server-pid PID] [--cafile CA.pem]

A wss:// URL connects over TLS, trusting --cafile (else the system's CAs).

Prints JSON with the keys bench/_common.loadtest() reads from uringload's:
rps (messages/s), server_cpu_us_per_request (per message), errors,
non_2xx_3xx, plus "generator": "picows". No permessage-deflate (picows has
none).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import sys
import time
from pathlib import Path
from typing import Any

import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from loadtest import cpu  # noqa: E402
from loadtest.plan import _pattern, _text_pattern  # noqa: E402

DATA = (WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CONTINUATION)


class Stats:
    def __init__(self) -> None:
        self.messages = 0
        self.errors = {"mismatch": 0, "closed": 0, "connect": 0}
        self.running = True


class Client(WSListener):
    def __init__(self, st: Stats, messages: list[bytes], kind: WSMsgType, first: int) -> None:
        self.st, self.messages, self.kind, self.k = st, messages, kind, first
        self.buf = bytearray()
        self.cur = b""
        self.t: WSTransport | None = None

    def _next(self) -> None:
        assert self.t
        self.cur = self.messages[self.k % len(self.messages)]
        self.k += 1
        self.t.send(self.kind, self.cur)

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.t = transport
        self._next()

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type in DATA:
            if frame.fin and not self.buf:
                payload = frame.get_payload_as_bytes()
            else:
                self.buf += frame.get_payload_as_memoryview()
                if not frame.fin:
                    return
                payload, self.buf = bytes(self.buf), bytearray()
            if payload != self.cur:
                self.st.errors["mismatch"] += 1
                transport.disconnect()
                return
            self.st.messages += 1
            if self.st.running:
                self._next()
        elif frame.msg_type == WSMsgType.CLOSE:
            if self.st.running:
                self.st.errors["closed"] += 1
            transport.disconnect()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    st = Stats()
    pattern = _pattern if args.binary else _text_pattern
    messages = [pattern(args.size, k) for k in range(4)]
    kind = WSMsgType.BINARY if args.binary else WSMsgType.TEXT
    pids = [args.server_pid] if args.server_pid else []

    tls = ssl.create_default_context(cafile=args.cafile) if args.url.startswith("wss:") else None

    async def one(i: int) -> WSTransport | None:
        try:
            factory = lambda: Client(st, messages, kind, i)  # noqa: E731
            t, _ = await ws_connect(factory, args.url, max_frame_size=1 << 24, ssl_context=tls)
            return t
        except Exception:  # counted: the benchmark fails on any error
            st.errors["connect"] += 1
            return None

    transports = await asyncio.gather(*(one(i) for i in range(args.connections)))
    await asyncio.sleep(args.warmup)
    n0, t0 = st.messages, time.monotonic()
    before = cpu.tree_ns(pids) if pids else {}
    await asyncio.sleep(args.duration)
    n1, t1 = st.messages, time.monotonic()
    after = cpu.tree_ns(pids) if pids else {}
    st.running = False
    for t in transports:
        if t is not None:
            t.send_close()
            t.disconnect()
    n = n1 - n0
    server = cpu.window_ns(before, after) if pids else None
    return {
        "generator": "picows",
        "url": args.url,
        "requests": n,
        "rps": n / (t1 - t0),
        "errors": st.errors,
        "non_2xx_3xx": 0,
        "server_cpu_us_per_request": server / 1e3 / n if server is not None and n else None,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("url")
    p.add_argument("-c", "--connections", type=int, default=100)
    p.add_argument("-d", "--duration", type=float, default=4.0, help="measured seconds")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--binary", action="store_true")
    p.add_argument("--warmup", type=float, default=0.5)
    p.add_argument("--server-pid", type=int, default=0)
    p.add_argument("--cafile", default=None, help="the CA a wss:// server's certificate is checked against")
    args = p.parse_args()
    print(json.dumps(uvloop.run(run(args))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
