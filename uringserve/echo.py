"""Echo server: one asyncio.Protocol, runnable on uringserve, the stdlib loop or uvloop.

    uringserve echo --port 7000                 # the command's listeners, TLS, workers
    python -m uringserve.echo --host 127.0.0.1 --port 8000 [--loop uring|asyncio|uvloop]
    python apps/echo.py --uds /tmp/echo.sock [--uds-mode 660]  |  --fd 3   # the demo in a checkout: this main()

The protocol code is identical on every loop, so the loops can be compared;
uringserve.server gives it listeners, the registry and the graceful drain
(the default hook: close once what was written has gone out).
Ablation switches (--send-mode, --recv-mode, --regular-fds) choose which
io_uring features the uring loop uses; bench/echo_bench.py drives them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from .server import Connection, Server, run_command


class Echo(Connection, asyncio.Protocol):
    def data_received(self, data: bytes) -> None:
        self.transport.write(data)
        if self.idle_timeout:
            self.touch()

    # a peer that sends but does not read: stop reading it until it does,
    # so what waits to be echoed stays at the transport's high-water mark
    def pause_writing(self) -> None:
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()


def ring_config(args: argparse.Namespace) -> object | None:
    if args.loop != "uring":
        return None
    import uringserve

    sizes = {
        k: v
        for k, v in (("buf_count", args.buf_count), ("buf_size", args.buf_size), ("inplace_min", args.inplace_min))
        if v
    }
    return uringserve.RingConfig(
        send_mode=args.send_mode,
        recv_mode=args.recv_mode,
        fixed_files=not args.regular_fds,
        recv_bundle=args.bundle,
        **sizes,
    )


class StatsServer(Server):
    """Writes the ring's counters at shutdown: which paths a benchmark run took
    (zero-copy sends and how many the kernel copied anyway)."""

    def __init__(self, factory: Any, stats_file: str, **kw: Any) -> None:
        super().__init__(factory, **kw)
        self.stats_file = stats_file

    async def on_stop(self) -> None:
        loop = asyncio.get_running_loop()
        stats = loop.ring_stats() if hasattr(loop, "ring_stats") else {}
        with open(self.stats_file, "w") as f:
            json.dump(stats, f)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--loop", choices=["uring", "asyncio", "uvloop"], default="uring")
    p.add_argument("--send-mode", choices=["auto", "plain", "zc", "zc_fixed"], default="auto")
    p.add_argument("--recv-mode", choices=["pbuf", "plain"], default="pbuf")
    p.add_argument("--regular-fds", action="store_true", help="ablation: no fixed-file table")
    p.add_argument("--bundle", action="store_true", help="recv bundles (6.10+)")
    p.add_argument("--buf-count", type=int, help="provided buffers (power of two)")
    p.add_argument("--buf-size", type=int, help="bytes per provided buffer")
    p.add_argument("--inplace-min", type=int, help="bytes writes this large are sent without a copy")
    p.add_argument("--backlog", type=int, default=1024)
    p.add_argument("--uds", help="listen on this Unix socket path (@name: abstract) instead of TCP")
    p.add_argument("--uds-mode", type=lambda v: int(v, 8), help="octal file mode of the --uds socket, e.g. 660")
    p.add_argument("--fd", type=int, help="serve an inherited listening socket on this fd instead of TCP")
    p.add_argument("--idle-timeout", type=float, default=0, help="close a connection idle this many seconds (0: never)")
    p.add_argument("--shutdown-timeout", type=float, default=10.0, help="seconds SIGTERM waits for connections")
    p.add_argument("--stats-file", help="write the ring's counters (JSON) here at shutdown (benchmarks)")
    args = p.parse_args(argv)

    def factory() -> Echo:
        e = Echo()
        e.idle_timeout = args.idle_timeout or None
        return e

    server = (
        StatsServer(factory, args.stats_file, shutdown_timeout=args.shutdown_timeout)
        if args.stats_file
        else Server(factory, shutdown_timeout=args.shutdown_timeout)
    )
    return run_command(
        server,
        "echo",
        args.host,
        args.port,
        loop=args.loop,
        ring_config=ring_config(args),
        uds=args.uds,
        uds_mode=args.uds_mode,
        sock=args.fd,
        backlog=args.backlog,
    )


if __name__ == "__main__":
    sys.exit(main())
