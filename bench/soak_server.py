"""The soak's server: the HTTP demo and the echo demo on one UringEventLoop
(two listeners, one ring), sampling itself once a second.

    python bench/soak_server.py HTTP_PORT ECHO_PORT SAMPLES.jsonl

Each sample is one JSON line: seconds since start, RSS, open fds, the ring's
fixed slots in use, arena chunks and send segments in use, provided buffers
out of the ring, open connections, asyncio tasks, requests served. SIGTERM
drains both servers and exits."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import uringserve  # noqa: E402
from apps.http import app  # noqa: E402
from uringserve.echo import Echo  # noqa: E402
from uringserve.http import HTTPConfig, HTTPServer  # noqa: E402
from uringserve.server import Server  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")


class TimedEcho(Echo):
    idle_timeout = 10.0  # a peer that stalls is let go


def sample(t0: float, loop: asyncio.AbstractEventLoop, servers: list) -> dict:
    with open("/proc/self/statm") as f:
        rss = int(f.read().split()[1]) * PAGE
    st = loop.ring_stats()  # type: ignore[attr-defined]
    return {
        "t": round(time.monotonic() - t0, 2),
        "rss": rss,
        "fds": len(os.listdir("/proc/self/fd")),
        "slots_used": st["slots_used"],
        "arena_in_use": st["arena_in_use"],
        "ext_in_use": st["ext_in_use"],
        "bufs_out": st["bufs_out"],
        "connections": sum(len(s.connections) for s in servers),
        "tasks": len(asyncio.all_tasks()),
        "served": sum(s.requests_served() for s in servers),
    }


async def main(http_port: int, echo_port: int, samples: str) -> None:
    loop = asyncio.get_running_loop()
    http = HTTPServer(app, config=HTTPConfig(header_timeout=3.0, body_timeout=3.0, send_timeout=5.0))
    echo = Server(TimedEcho)
    await http.start("127.0.0.1", http_port)
    await echo.start("127.0.0.1", echo_port)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    t0 = time.monotonic()
    with open(samples, "w") as out:
        while not stop.is_set():
            out.write(json.dumps(sample(t0, loop, [http, echo])) + "\n")
            out.flush()
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
            except TimeoutError:
                pass
    await asyncio.gather(http.shutdown(5.0), echo.shutdown(5.0))


if __name__ == "__main__":
    uringserve.run(main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]))
