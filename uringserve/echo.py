"""Echo server: one asyncio.Protocol, runnable on uringserve, the stdlib loop or uvloop.

    uringserve echo --port 7000                 # the command's listeners, TLS, workers
    python -m uringserve.echo --host 127.0.0.1 --port 8000 [--loop uring|asyncio|uvloop]
    python apps/echo.py --uds /tmp/echo.sock [--uds-mode 660]  |  --fd 3   # the demo in a checkout: this main()

The protocol code is identical on every loop, so the loops can be compared;
uringserve.server gives it listeners, the registry and the graceful drain
(the default hook: close once what was written has gone out).
Ablation switches (--send-mode, --recv-mode, --regular-fds, --bundle and
the buffer sizes, RING_OPTIONS) choose which io_uring features the uring
loop uses, each a ring setting as ring_settings.py declares it;
bench/echo_bench.py drives them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from .ring_settings import SETTING, RingConfig, RingConfigError, validate
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


class BufferedEcho(Connection, asyncio.BufferedProtocol):
    """The same echo as a BufferedProtocol (--buffered): the loop reads into
    the protocol's own buffer, 256 KiB as asyncio's loops read, and the echo
    writes straight from it (a transport copies what it cannot send before
    write() returns, so the buffer may be reused at once)."""

    def __init__(self) -> None:
        super().__init__()
        self._buf = memoryview(bytearray(256 * 1024))

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._buf

    def buffer_updated(self, nbytes: int) -> None:
        self.transport.write(self._buf[:nbytes])
        if self.idle_timeout:
            self.touch()

    pause_writing = Echo.pause_writing
    resume_writing = Echo.resume_writing


# The ring settings the demo's switches set (bench/echo_bench.py's
# ablations), by option. Their help, choices and rules are the settings'
# own declarations (ring_settings.py), as the `uringserve` command's ring
# options are; a switch (a bool setting) sets the opposite of the
# setting's default, so --regular-fds is fixed_files=False.
RING_OPTIONS: dict[str, str] = {
    "--send-mode": "send_mode",
    "--recv-mode": "recv_mode",
    "--regular-fds": "fixed_files",
    "--bundle": "recv_bundle",
    "--buf-count": "buf_count",
    "--buf-size": "buf_size",
    "--inplace-min": "inplace_min",
    "--bulk-bytes": "bulk_bytes",
}


def _add_ring_options(p: argparse.ArgumentParser) -> None:
    """RING_OPTIONS on `p`, each with its setting's name as dest; not given: None."""
    for flag, name in RING_OPTIONS.items():
        s = SETTING[name]
        if s.kind is bool:
            p.add_argument(
                flag, dest=name, action="store_const", const=not s.default, help=f"{name}={not s.default}: {s.help}"
            )
        elif s.choices is not None:
            p.add_argument(flag, dest=name, choices=list(s.choices), help=f"{s.help}; default {s.default}")
        else:
            rule = f", {s.allowed}" if s.lo is not None else ""
            p.add_argument(flag, dest=name, type=int, metavar="N", help=f"{s.help}; default {s.default}{rule}")


def ring_config(args: argparse.Namespace) -> RingConfig | None:
    """The ring the switches set (None off the uring loop); what is not given
    is left to RingConfig. A value that breaks its setting's rule stops the
    demo, named by its option."""
    if args.loop != "uring":
        return None
    config = RingConfig(**{name: v for name in RING_OPTIONS.values() if (v := getattr(args, name)) is not None})
    try:
        validate(config, names={name: flag for flag, name in RING_OPTIONS.items()})
    except RingConfigError as exc:
        raise SystemExit("echo: " + "; ".join(exc.problems)) from None
    return config


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
    _add_ring_options(p)
    p.add_argument("--backlog", type=int, default=1024)
    p.add_argument("--uds", help="listen on this Unix socket path (@name: abstract) instead of TCP")
    p.add_argument("--uds-mode", type=lambda v: int(v, 8), help="octal file mode of the --uds socket, e.g. 660")
    p.add_argument("--fd", type=int, help="serve an inherited listening socket on this fd instead of TCP")
    p.add_argument("--idle-timeout", type=float, default=0, help="close a connection idle this many seconds (0: never)")
    p.add_argument("--shutdown-timeout", type=float, default=10.0, help="seconds SIGTERM waits for connections")
    p.add_argument("--stats-file", help="write the ring's counters (JSON) here at shutdown (benchmarks)")
    p.add_argument("--buffered", action="store_true", help="the echo as an asyncio.BufferedProtocol (get_buffer)")
    args = p.parse_args(argv)
    kind = BufferedEcho if args.buffered else Echo

    def factory() -> Echo | BufferedEcho:
        e = kind()
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
