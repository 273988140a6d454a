"""Misbehaving servers for the load generator's tests (stdlib asyncio).

    python tests/load_servers.py MODE [N] [--tls CERT KEY] [--expect METHOD BODY_FILE]

The server binds a port the kernel picks and prints "load_servers on
127.0.0.1:PORT (MODE)" when listening (what tests/conftest.py's Proc reads).

Modes: ok (200 hello), status500, reset (half a response, then RST),
cut (half a response, then FIN), silent (reads, never answers), garbage
(answers with something that is not HTTP), close (reads a request,
closes without an answer), stall (200 hello; at the Nth
request the whole server sleeps 1 s, once), warm (500 to the first N
requests, then 200 hello), batch (answers a connection's requests only
once N of them have arrived, then all N: a client that does not pipeline
N waits forever), expect (200 when the request's method and body are
--expect's, else 400 saying what came), corrupt-echo (echoes, one byte
flipped in every Nth chunk), slow-echo (every Nth echo comes 0.5 s late).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import socket
import ssl
import struct
import time
from pathlib import Path

HELLO = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nContent-Type: text/plain\r\n\r\nhello\n"
ERROR = b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\noops"
HALF = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part of it"
CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.I)


class Server(asyncio.Protocol):
    served = 0
    stalled = False

    def __init__(self, mode: str, n: int, expect: tuple[bytes, bytes] | None) -> None:
        self.mode, self.n, self.expect = mode, n, expect
        self.buf = b""
        self.waiting = 0  # batch: requests received, not yet answered

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.mode == "slow-echo":
            Server.served += 1
            if Server.served % self.n == 0:  # this connection's echo comes late; others go on
                asyncio.get_running_loop().call_later(0.5, self.t.write, data)
            else:
                self.t.write(data)
            return
        if self.mode == "corrupt-echo":
            Server.served += 1
            if Server.served % self.n == 0:
                data = bytes([data[0] ^ 0xFF]) + data[1:]
            self.t.write(data)
            return
        self.buf += data
        while (end := self.buf.find(b"\r\n\r\n")) >= 0:
            head = self.buf[: end + 2]
            m = CONTENT_LENGTH.search(head)
            size = int(m.group(1)) if m else 0
            if len(self.buf) < end + 4 + size:
                return  # the body has not all arrived
            body = self.buf[end + 4 : end + 4 + size]
            self.buf = self.buf[end + 4 + size :]
            self.request(head, body)

    def request(self, head: bytes, body: bytes) -> None:
        Server.served += 1
        m = self.mode
        if m == "ok":
            self.t.write(HELLO)
        elif m == "stall":
            if Server.served >= self.n and not Server.stalled:
                Server.stalled = True
                time.sleep(1.0)  # the whole server stops, as a GC pause or a blocking call would
            self.t.write(HELLO)
        elif m == "warm":
            self.t.write(ERROR if Server.served <= self.n else HELLO)
        elif m == "batch":
            self.waiting += 1
            if self.waiting == self.n:
                self.waiting = 0
                self.t.write(HELLO * self.n)
        elif m == "expect":
            assert self.expect is not None
            method = head.split(b" ", 1)[0]
            if (method, body) == self.expect:
                self.t.write(HELLO)
            else:
                got = b"got %s with %d bytes of body" % (method[:20], len(body))
                self.t.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: %d\r\n\r\n%s" % (len(got), got))
        elif m == "status500":
            self.t.write(ERROR)
        elif m in ("reset", "cut"):
            self.t.write(HALF)
            if m == "reset":
                sock = self.t.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.t.abort()
            else:
                self.t.close()
        elif m == "garbage":
            self.t.write(b"HELLO THERE\r\n\r\n")
        elif m == "close":
            self.t.close()
        # silent: nothing


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode")
    p.add_argument("n", type=int, nargs="?", default=100)
    p.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    p.add_argument("--expect", nargs=2, metavar=("METHOD", "BODY_FILE"))
    args = p.parse_args()
    ctx = None
    if args.tls:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(*args.tls)
    expect = (args.expect[0].encode(), Path(args.expect[1]).read_bytes()) if args.expect else None
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Server(args.mode, args.n, expect), "127.0.0.1", 0, backlog=1024, ssl=ctx)
    port = server.sockets[0].getsockname()[1]
    print(f"load_servers on 127.0.0.1:{port} ({args.mode})", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
