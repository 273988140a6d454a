"""The soak's server: the HTTP demo and the echo demo on one UringEventLoop
(two listeners, one ring), sampling itself once a second.

    python bench/soak_server.py HTTP_PORT ECHO_PORT SAMPLES.jsonl

Each sample is one JSON line: seconds since start, RSS, open fds, the ring's
fixed slots in use, arena chunks and send segments in use, provided buffers
out of the ring, open connections, asyncio tasks, requests served; and where
RSS lives, to say which allocator grows when it rises: anonymous and
file-backed RSS (/proc/self/status: a file-backed rise is code and data of
the binaries paged in as new paths run, which stops when every path has
run), glibc malloc's bytes in use and free inside its arenas
(mallinfo2(), all arenas summed; the core, OpenSSL, CPython's large objects),
and pymalloc's blocks and arenas (sys.getallocatedblocks() each second,
the arena count from sys._debugmallocstats() every tenth). SIGTERM drains
both servers and exits."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import json
import os
import re
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import uringserve  # noqa: E402
from apps.http import app  # noqa: E402
from uringserve.echo import Echo  # noqa: E402
from uringserve.http import HTTPConfig, HTTPServer  # noqa: E402
from uringserve.server import Server  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")
PYMALLOC_EVERY = 10  # samples between two sys._debugmallocstats() (it prints a few hundred lines)


class MallInfo2(ctypes.Structure):
    """glibc's struct mallinfo2 (2.33+): every field a size_t."""

    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")
        + ("keepcost",)
    ]


def _libc_mallinfo2():  # type: ignore[no-untyped-def]
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    fn = getattr(libc, "mallinfo2", None)
    if fn is not None:
        fn.restype = MallInfo2
    return fn


MALLINFO2 = _libc_mallinfo2()


def malloc_parts() -> dict:
    """glibc malloc: bytes handed out (small chunks and mmapped ones), bytes
    free inside its arenas (fragmentation and the cache it keeps), and the
    heap's size."""
    if MALLINFO2 is None:
        return {}
    m = MALLINFO2()
    # heap: what the arenas took from the OS (sbrk'd and mmapped); RSS counts only its touched pages
    return {"malloc_in_use": m.uordblks + m.hblkhd, "malloc_free": m.fordblks, "malloc_heap": m.arena + m.hblkhd}


def rss_parts() -> dict:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("RssAnon:", "RssFile:")):
                key, value = line.split(":")
                out["rss_anon" if key == "RssAnon" else "rss_file"] = int(value.split()[0]) * 1024
    return out


def pymalloc_arenas() -> int:
    """The arenas pymalloc holds now: sys._debugmallocstats() writes to the
    C stderr, so fd 2 is pointed at a temporary file while it runs."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        found = re.search(r"# arenas allocated current\s*=\s*([\d,]+)", tmp.read())
    return int(found.group(1).replace(",", "")) if found else -1


class TimedEcho(Echo):
    idle_timeout = 10.0  # a peer that stalls is let go


def sample(t0: float, loop: asyncio.AbstractEventLoop, servers: list, arenas: int) -> dict:
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
        **rss_parts(),
        **malloc_parts(),
        "py_blocks": sys.getallocatedblocks(),
        "pymalloc_arenas": arenas,
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
    arenas, n = pymalloc_arenas(), 0
    with open(samples, "w") as out:
        while not stop.is_set():
            n += 1
            if n % PYMALLOC_EVERY == 0:
                arenas = pymalloc_arenas()
            out.write(json.dumps(sample(t0, loop, [http, echo], arenas)) + "\n")
            out.flush()
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
            except TimeoutError:
                pass
    await asyncio.gather(http.shutdown(5.0), echo.shutdown(5.0))


if __name__ == "__main__":
    uringserve.run(main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]))
