"""Echo server: one asyncio.Protocol, runnable on uringserve, the stdlib loop or uvloop.

    python apps/echo.py --host 127.0.0.1 --port 8000 [--loop uring|asyncio|uvloop]

The protocol code is identical on every loop, so the loops can be compared.
Ablation switches (--send-mode, --recv-mode, --regular-fds) choose which
io_uring features the uring loop uses; bench/echo_bench.py drives them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]


def make_loop(args: argparse.Namespace) -> asyncio.AbstractEventLoop:
    if args.loop == "asyncio":
        return asyncio.new_event_loop()
    if args.loop == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    import uringserve

    sizes = {
        k: v
        for k, v in (("buf_count", args.buf_count), ("buf_size", args.buf_size), ("inplace_min", args.inplace_min))
        if v
    }
    cfg = uringserve.RingConfig(
        send_mode=args.send_mode,
        recv_mode=args.recv_mode,
        fixed_files=not args.regular_fds,
        recv_bundle=args.bundle,
        **sizes,
    )
    return uringserve.new_event_loop(cfg)


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
    args = p.parse_args(argv)

    loop = make_loop(args)
    asyncio.set_event_loop(loop)
    server = loop.run_until_complete(
        loop.create_server(Echo, args.host, args.port, backlog=args.backlog, reuse_address=True)
    )
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    addr = server.sockets[0].getsockname()
    print(f"echo on {addr[0]}:{addr[1]} ({args.loop} loop, pid {os.getpid()})", flush=True)
    try:
        loop.run_until_complete(stop.wait())
    finally:
        server.close()
        loop.run_until_complete(server.wait_closed())
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
