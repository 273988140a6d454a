"""Shared fixtures: every loop-level test runs on the stdlib loop and on
UringEventLoop, and checks that nothing (fds, slots, in-flight ops) is left
and that no callback failed unnoticed: an exception raised inside a
protocol callback reaches the loop's exception handler, not the test, so
the fixture fails the test with it unless the test took it with
`h.take_errors()` to assert on it."""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme

# the process helpers live in procs.py (tests/stress.py, no pytest, uses them too)
from procs import (  # noqa: F401 (re-exported: `from conftest import Proc` and the others)
    BANNER,
    METRICS_LINE,
    PY,
    ROOT,
    Pool,
    Proc,
    children,
    die_with_parent,
    get,
    pid_of,
    rss_kib,
    uringserve,
    wait_port,
    wait_until,
)

import uringserve as uringserve_package

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uring": uringserve_package.new_event_loop,
}


def open_fds() -> set[int]:
    return {int(x) for x in os.listdir("/proc/self/fd")}


def fd_targets(fds: set[int]) -> dict[int, str]:
    out = {}
    for fd in fds:
        try:
            out[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            pass
    return out


class LoopHarness:
    def __init__(self, name: str, loop: asyncio.AbstractEventLoop) -> None:
        self.name = name
        self.loop = loop
        self.errors: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _l, ctx: self.errors.append(ctx))

    def take_errors(self, match: str = "") -> list[dict[str, Any]]:
        """The exception-handler calls whose message contains `match`,
        removed: what a test expects and asserts on itself."""
        taken = [e for e in self.errors if match in e.get("message", "")]
        self.errors = [e for e in self.errors if e not in taken]
        return taken

    def run(self, coro: Any, timeout: float = 20.0) -> Any:
        return self.loop.run_until_complete(asyncio.wait_for(coro, timeout))

    @property
    def uring(self) -> bool:
        return self.name == "uring"


@pytest.fixture(params=list(LOOPS))
def h(request: pytest.FixtureRequest) -> Any:
    gc.collect()
    before = open_fds()
    loop = LOOPS[request.param]()
    harness = LoopHarness(request.param, loop)
    yield harness
    pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for t in pending:
        t.cancel()
    if pending:
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()
    gc.collect()
    leaked = open_fds() - before
    assert not leaked, f"fds left open: {fd_targets(leaked)}"
    assert not harness.errors, "callback errors no test took: " + "; ".join(
        f"{e.get('message')}: {e.get('exception')!r}" for e in harness.errors
    )


async def until(cond: Callable[[], object], timeout: float = 10.0) -> bool:
    """Poll `cond` on the running loop until it is true; whether it became
    true before `timeout`, which bounds a hang and is never waited out by a
    correct program. For state no event announces (counters, registries)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(0.005)
    return True


def blocking_client(
    port: int, payload: bytes, expect: int, result: dict, shut: bool = True, timeout: float = 20.0
) -> threading.Thread:
    """A plain-socket peer in a thread: sends payload, reads `expect` bytes."""

    def run() -> None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
                sender = threading.Thread(target=s.sendall, args=(payload,))
                sender.start()
                buf = bytearray()
                while len(buf) < expect:
                    chunk = s.recv(1 << 20)
                    if not chunk:
                        break
                    buf += chunk
                sender.join()
                if shut:
                    s.shutdown(socket.SHUT_WR)
                result["data"] = bytes(buf)
        except Exception as exc:  # reported by the test
            result["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


async def serve_and_read(loop: asyncio.AbstractEventLoop, factory: Callable[[], asyncio.BaseProtocol]) -> bytes:
    """Serve `factory` on an ephemeral port, connect once, read to EOF, shut all down."""
    server = await loop.create_server(factory, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()
    return data


@dataclass(frozen=True)
class TLSFiles:
    """A certificate for 127.0.0.1 from a throwaway CA, as the files a
    server and a client are given."""

    ca: trustme.CA  # configure_trust(ctx) for an ssl client; issue_cert() for a client certificate
    cert: Path  # the certificate chain (--tls-cert with --tls-key)
    key: Path  # its private key
    cacert: Path  # the CA's certificate: what a client trusts (--tls-ca, --cacert)
    cert_and_key: Path  # the key and the chain in one file (--tls-cert alone)


def make_tls_files(folder: Path) -> TLSFiles:
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1")
    files = TLSFiles(ca, folder / "cert.pem", folder / "key.pem", folder / "ca.pem", folder / "cert-and-key.pem")
    issued.cert_chain_pems[0].write_to_path(str(files.cert))
    issued.private_key_pem.write_to_path(str(files.key))
    issued.private_key_and_cert_chain_pem.write_to_path(str(files.cert_and_key))
    ca.cert_pem.write_to_path(str(files.cacert))
    return files


@pytest.fixture
def tls_files(tmp_path: Path) -> TLSFiles:
    """A CA and a certificate for 127.0.0.1 (see TLSFiles); make_tls_files(folder) for a wider scope."""
    return make_tls_files(tmp_path)


@pytest.fixture
def pools() -> Iterator[list[Pool]]:
    """Append each Pool the test starts: one still running at the end is
    killed with its workers."""
    started: list[Pool] = []
    yield started
    for pool in started:
        pool.kill()
