"""The RESP demo: uringserve.resp.server's in-memory key-value server, run
from a checkout (`make resp`).

    python apps/resp_server.py --host 127.0.0.1 --port 6379 [--loop uring|asyncio|uvloop]
    python apps/resp_server.py --uds /tmp/resp.sock

The server, its commands and keyspace are in the package (`uringserve resp`
serves the same from an installed wheel).
"""

from __future__ import annotations

import sys

from uringserve.resp.server import RESPServer, main

__all__ = ["RESPServer", "main"]

if __name__ == "__main__":
    sys.exit(main())
