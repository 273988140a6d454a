"""The `websockets` library's own asyncio server on uvloop, echoing (the
benchmark's peer for the library uvicorn runs on).

    python bench/ws_websockets_server.py PORT [CERT KEY]   (CERT KEY: over TLS)
"""

from __future__ import annotations

import asyncio
import ssl
import sys
from pathlib import Path

import uvloop
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import server_context  # noqa: E402


async def echo(ws: ServerConnection) -> None:
    try:
        async for msg in ws:
            await ws.send(msg)
    except ConnectionClosed:
        pass


async def main(port: int, tls: ssl.SSLContext | None) -> None:
    # compression="deflate" (the default): used when the client offers it
    async with serve(echo, "127.0.0.1", port, max_size=None, ssl=tls):
        await asyncio.Future()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]), server_context(sys.argv[2:])))
