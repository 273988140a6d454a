"""The RESP server: an in-memory key-value server speaking RESP2 (and RESP3
after HELLO 3), which redis-py, redis-cli and redis-benchmark talk to as to
Redis.

    uringserve resp --port 6379                 # the command's listeners, TLS
    python -m uringserve.resp.server --host 127.0.0.1 --port 6379 [--loop uring|asyncio|uvloop]
    python apps/resp_server.py --uds /tmp/resp.sock  # the demo in a checkout: this main()

Commands: uringserve/resp/commands.py (strings, expiry, KEYS/SCAN, lists, and
the connection commands clients send on connect). Protocol errors, bulks over
--max-bulk and commands over --max-args are answered with Redis's
`-ERR Protocol error: ...` and the connection is closed. The keyspace lives
in this process's memory: one process is one database (`uringserve resp`
refuses --workers, which would make several).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import Any

from ..server import Connection, Server, run_command
from .commands import Session, Stats, execute
from .keyspace import Keyspace
from .parser import MAX_ARGS, MAX_BULK, RequestParser

logger = logging.getLogger("uringserve.resp")
BATCH = 64 * 1024  # bytes of replies written at a time while working through a pipeline


class RESPProtocol(Connection, Session, asyncio.Protocol):
    """One client: commands are run in the order they arrive, their replies
    written together (pipelining costs one write per 64 KiB, not one per
    command). While the client does not read its replies, no more commands
    are run and nothing more is read."""

    def __init__(self, server: RESPServer) -> None:
        self.keyspace = server.keyspace
        self.stats = server.stats
        self.max_bulk = server.max_bulk
        self.open_clients = server.connections.__len__
        self.parser = RequestParser(server.max_bulk, server.max_args)
        self.idle_timeout = server.idle_timeout
        self.name = None
        self.quit = False
        self.held: list[list[bytes]] = []  # parsed commands waiting for the client to read replies
        self.writing_paused = False
        self.client_id = server.stats.next_client_id
        server.stats.next_client_id += 1
        server.stats.connections += 1

    def data_received(self, data: bytes) -> None:
        parser = self.parser
        commands = parser.feed(data)
        if self.idle_timeout:
            self.touch()
        if len(commands) == 1 and parser.error is None and not self.held:  # the common case, unpipelined
            self.transport.write(execute(self, commands[0]))
            if self.quit:
                self.transport.close()
            return
        self.held += commands
        self._run()

    def _run(self) -> None:
        """Answer the held commands in order, writing every BATCH bytes of
        replies; stop while the transport is over its high-water mark (the
        rest waits for resume_writing), so what one read of pipelined
        commands can make the server hold is bounded, however large the
        replies (256 KiB of 'GET big' would otherwise be gigabytes)."""
        held = self.held
        out: list[bytes] = []
        size = i = 0
        while i < len(held) and not self.quit:
            reply = execute(self, held[i])
            i += 1
            out.append(reply)
            size += len(reply)
            if size >= BATCH:
                self.transport.write(b"".join(out))
                out, size = [], 0
                if self.writing_paused:
                    break
        del held[:i]
        if not held and self.parser.error is not None and not self.quit:
            logger.debug("closing a client after a protocol error: %s", self.parser.error)
            out.append(self.parser.error.reply())
            self.quit = True
        if out:
            self.transport.write(b"".join(out))
        if self.quit:
            held.clear()
            self.transport.close()
        elif held:
            self.transport.pause_reading()  # no more input until these are answered

    def pause_writing(self) -> None:
        self.writing_paused = True
        self.transport.pause_reading()  # a client that does not read gets no more answers queued

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.held:
            self._run()
        if not self.held and not self.transport.is_closing():
            self.transport.resume_reading()


class RESPServer(Server):
    """A Server of RESPProtocol connections over one Keyspace, with the
    active-expiry sweep running while it serves."""

    def __init__(
        self,
        *,
        max_bulk: int = MAX_BULK,
        max_args: int = MAX_ARGS,
        idle_timeout: float | None = None,
        sweep_interval: float = 0.1,
        shutdown_timeout: float = 10.0,
    ) -> None:
        super().__init__(shutdown_timeout=shutdown_timeout)
        if max_bulk < 1 or max_args < 1:
            raise ValueError(f"max_bulk and max_args must be at least 1, got {max_bulk}, {max_args}")
        self.keyspace = Keyspace()
        self.stats = Stats()
        self.max_bulk = max_bulk
        self.max_args = max_args
        self.idle_timeout = idle_timeout or None
        self.sweep_interval = sweep_interval
        self._sweeper: asyncio.TimerHandle | None = None

    def make_protocol(self, sock: Any) -> RESPProtocol:
        return RESPProtocol(self)

    async def on_start(self) -> None:
        self._sweeper = asyncio.get_running_loop().call_later(self.sweep_interval, self._sweep)

    def _sweep(self) -> None:
        # Redis's active expiry at its default hz 10: at most 1 ms of work a tick
        self.keyspace.sweep(budget_s=0.001)
        self._sweeper = asyncio.get_running_loop().call_later(self.sweep_interval, self._sweep)

    async def on_stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="The RESP demo: an in-memory key-value server speaking RESP2 (and RESP3 after HELLO 3), "
        "which redis-py, redis-cli and redis-benchmark talk to as to Redis.",
        epilog="One process, one keyspace, in memory: nothing is kept when it stops. Protocol errors, bulks "
        "over --max-bulk and commands over --max-args are answered with -ERR Protocol error and the "
        "connection is closed.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=6379, help="TCP port (default: 6379; 0: one the kernel picks)")
    p.add_argument("--uds", help="listen on this Unix socket path (@name: abstract) instead of TCP")
    p.add_argument("--loop", choices=["uring", "asyncio", "uvloop"], default="uring", help="event loop (uring)")
    p.add_argument("--max-bulk", type=int, default=MAX_BULK, help="longest bulk string, bytes (proto-max-bulk-len)")
    p.add_argument("--max-args", type=int, default=MAX_ARGS, help="most arguments in one command")
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=0,
        help="close a client that sent nothing this many seconds (Redis's timeout; 0: never)",
    )
    args = p.parse_args(argv)
    if args.max_bulk < 1 or args.max_args < 1:
        p.error("--max-bulk and --max-args must be at least 1")
    if args.idle_timeout < 0:
        p.error("--idle-timeout must be 0 (never) or more")
    server = RESPServer(max_bulk=args.max_bulk, max_args=args.max_args, idle_timeout=args.idle_timeout)

    return run_command(server, "resp", args.host, args.port, loop=args.loop, uds=args.uds)


if __name__ == "__main__":
    sys.exit(main())
