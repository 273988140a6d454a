"""Misbehaving servers for the load generator's tests (stdlib asyncio).

    python tests/load_servers.py MODE PORT [N]

Modes: ok (200 hello), status500, reset (half a response, then RST),
cut (half a response, then FIN), silent (reads, never answers), garbage
(answers with something that is not HTTP), stall (200 hello; every N
requests the whole server sleeps 1 s), corrupt-echo (echoes, one byte
flipped in every Nth chunk), slow-echo (every Nth echo comes 0.5 s late). Prints "ready" when listening.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import sys
import time

HELLO = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nContent-Type: text/plain\r\n\r\nhello\n"
ERROR = b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\noops"
HALF = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part of it"


class Server(asyncio.Protocol):
    served = 0

    def __init__(self, mode: str, n: int) -> None:
        self.mode, self.n = mode, n
        self.buf = b""

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
        while b"\r\n\r\n" in self.buf:
            _, self.buf = self.buf.split(b"\r\n\r\n", 1)
            self.request()

    def request(self) -> None:
        Server.served += 1
        m = self.mode
        if m == "ok":
            self.t.write(HELLO)
        elif m == "stall":
            if Server.served % self.n == 0:
                time.sleep(1.0)  # the whole server stops, as a GC pause or a blocking call would
            self.t.write(HELLO)
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
        # silent: nothing


async def main() -> None:
    mode, port = sys.argv[1], int(sys.argv[2])
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 100
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Server(mode, n), "127.0.0.1", port, backlog=1024)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
