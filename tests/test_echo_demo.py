"""The echo demo (apps/echo.py, what bench/echo_bench.py runs) as a Protocol
and as a BufferedProtocol (--buffered), on each loop: every byte back, in
order, for messages from 1 byte to past the protocol's 256 KiB buffer, with
several connections at once."""

from __future__ import annotations

import random
import socket
import threading

import pytest
from conftest import PY, Proc

LOOPS = ["uring", "asyncio"]


def exchange(port: int, seed: int, out: dict[int, bool]) -> None:
    try:
        out[seed] = _exchange(port, seed)
    except OSError:  # a timeout: what was sent did not all come back
        out[seed] = False


def _exchange(port: int, seed: int) -> bool:
    rng = random.Random(seed)
    data = rng.randbytes(3 * 2**20)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        # a writer thread, so a peer that echoes as it reads never waits on us
        pieces, at = [], 0
        while at < len(data):
            n = rng.choice((1, 7, 4096, 65536, 300_000))
            pieces.append(data[at : at + n])
            at += n
        sender = threading.Thread(target=send_all, args=(s, pieces), daemon=True)
        sender.start()
        got = bytearray()
        while len(got) < len(data):
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            got += chunk
        sender.join(30)
    return bytes(got) == data


def send_all(s: socket.socket, pieces: list[bytes]) -> None:
    try:
        for p in pieces:
            s.sendall(p)
    except OSError:  # the reader's side reports it
        pass


@pytest.mark.parametrize("buffered", [False, True], ids=["protocol", "buffered"])
@pytest.mark.parametrize("loop", LOOPS)
def test_the_echo_demo_returns_every_byte_in_order(loop: str, buffered: bool) -> None:
    srv = Proc([PY, "apps/echo.py", "--port", "0", "--loop", loop, *(["--buffered"] if buffered else [])])
    try:
        results: dict[int, bool] = {}
        threads = [threading.Thread(target=exchange, args=(srv.port, seed, results)) for seed in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        srv.stop()
    assert results == dict.fromkeys(range(4), True)
