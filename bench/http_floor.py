"""The floor under any Python HTTP server on UringEventLoop: a protocol that
answers each received segment with a fixed hello-world response, without
parsing. bench/http_bench.py runs it as `floor` (what the loop and the
kernel cost; the rest of uringserve.http's number is HTTP in Python)."""
from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import uringserve  # noqa: E402

RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: floor\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: 14\r\n\r\nHello, world!\n")


class Floor(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.write = transport.write  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.write(RESPONSE)


async def main(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Floor, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=8000)
    uringserve.run(main(p.parse_args().port))
