"""Memory per idle connection: the same asyncio echo code on each loop.

    python bench/idle_bench.py [--conns 10000] [--loops asyncio,uvloop,uring]

The server (apps/echo.py) gets 100 warm-up connections, then `--conns`
more, each held open after one echo round trip; reported is the growth of
its RSS (VmRSS) divided by the connections. With a provided buffer ring an
idle connection parks no receive buffer, so what it costs is the transport,
the protocol and the kernel's socket (the socket's memory is not in RSS).
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, free_port, stop, wait_listening  # noqa: E402


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def settle(pid: int) -> int:
    """RSS once it stops moving (the server finishing its last accepts)."""
    last = rss_kb(pid)
    for _ in range(50):
        time.sleep(0.1)
        now = rss_kb(pid)
        if now == last:
            return now
        last = now
    return last


def one(loop: str, conns: int) -> float:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "apps/echo.py", "--loop", loop, "--port", str(port), "--backlog", "4096"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    socks: list[socket.socket] = []
    try:
        wait_listening(port, proc)

        def open_one() -> None:
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"x")
            if s.recv(1) != b"x":
                raise RuntimeError("no echo")
            socks.append(s)

        for _ in range(100):
            open_one()
        before = settle(proc.pid)
        for _ in range(conns):
            open_one()
        after = settle(proc.pid)
        return (after - before) * 1024 / conns
    finally:
        for s in socks:
            s.close()
        stop(proc)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--conns", type=int, default=10000)
    p.add_argument("--loops", default="asyncio,uvloop,uring")
    args = p.parse_args()
    print(report(args.conns, args.loops.split(",")))
    return 0


def report(conns: int, loops: list[str]) -> str:
    lines = [f"{'loop':10} {'bytes per idle connection':>26}  ({conns} connections held after one echo)"]
    for loop in loops:
        lines.append(f"{loop:10} {one(loop, conns):26.0f}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
