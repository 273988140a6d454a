"""Which receive path an echo's bytes take: the ring's counters, no timing.

    python bench/recv_paths.py [--sizes 64,4096,65536,1048576] [--conns 20] [--rounds 100] [--bulk-bytes N]

An asyncio echo (a Protocol, and a BufferedProtocol with one 256 KiB
buffer) on UringEventLoop; blocking clients in threads send a message and
read it back, `--rounds` times each. Printed per run are the server ring's
counters: receives and bytes through the provided-buffer ring and in bulk
(into the protocol's memory), switches to bulk, answers refused for the
budget and the most memory parked at once. Counts only: timing is
echo_bench.py's, on a quiet machine.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import uringserve  # noqa: E402
from uringserve.ring import RingConfig  # noqa: E402

KEYS = (
    "pbuf_recvs",
    "pbuf_recv_bytes",
    "bulk_recvs",
    "bulk_recv_bytes",
    "bulk_switches",
    "bulk_refused",
    "bulk_parked_peak",
)


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = transport

    def data_received(self, data: bytes) -> None:
        self.t.write(data)  # type: ignore[attr-defined]


class BufferedEcho(asyncio.BufferedProtocol):
    def __init__(self) -> None:
        self.buf = bytearray(256 * 1024)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = transport

    def get_buffer(self, sizehint: int) -> bytearray:
        return self.buf

    def buffer_updated(self, nbytes: int) -> None:
        self.t.write(bytes(self.buf[:nbytes]))  # type: ignore[attr-defined]


def client(port: int, size: int, rounds: int, done: list[int]) -> None:
    msg = b"x" * size
    with socket.create_connection(("127.0.0.1", port)) as s:
        for _ in range(rounds):
            s.sendall(msg)
            got = 0
            while got < size:
                got += len(s.recv(1 << 20))
    done.append(1)


def run(protocol: type, size: int, conns: int, rounds: int, bulk_bytes: int) -> dict[str, int]:
    loop = uringserve.new_event_loop(RingConfig(bulk_bytes=bulk_bytes))

    async def main() -> None:
        server = await loop.create_server(protocol, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        done: list[int] = []
        threads = [threading.Thread(target=client, args=(port, size, rounds, done), daemon=True) for _ in range(conns)]
        for t in threads:
            t.start()
        for t in threads:
            await loop.run_in_executor(None, t.join)
        server.close()
        await server.wait_closed()

    try:
        loop.run_until_complete(main())
        return loop.ring_stats()
    finally:
        loop.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="64,4096,65536,1048576")
    ap.add_argument("--conns", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--bulk-bytes", type=int, default=RingConfig().bulk_bytes)
    args = ap.parse_args()
    print("| protocol | message B | conns x rounds | " + " | ".join(KEYS) + " |")
    print("|---" * (3 + len(KEYS)) + "|")
    for protocol in (Echo, BufferedEcho):
        for size in (int(x) for x in args.sizes.split(",")):
            rounds = max(1, min(args.rounds, (64 << 20) // (size * args.conns)))  # at most 64 MiB a run
            s = run(protocol, size, args.conns, rounds, args.bulk_bytes)
            cells = " | ".join(f"{s[k]:,}" for k in KEYS)
            print(f"| {protocol.__name__} | {size:,} | {args.conns} x {rounds} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
