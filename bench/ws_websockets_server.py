"""The `websockets` library's own asyncio server on uvloop, echoing (the
benchmark's peer for the library uvicorn runs on).

    python bench/ws_websockets_server.py PORT
"""

from __future__ import annotations

import asyncio
import sys

import uvloop
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed


async def echo(ws: ServerConnection) -> None:
    try:
        async for msg in ws:
            await ws.send(msg)
    except ConnectionClosed:
        pass


async def main(port: int) -> None:
    # compression="deflate" (the default): used when the client offers it
    async with serve(echo, "127.0.0.1", port, max_size=None):
        await asyncio.Future()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1])))
