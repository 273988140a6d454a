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
import re
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import uringserve

ROOT = Path(__file__).resolve().parent.parent

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uring": uringserve.new_event_loop,
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


BANNER = re.compile(r"^[\w.]+(?: \([\w ]+\))? on (?:https?://)?(?:\[[0-9a-f:]+\]|[\w.-]+):(\d+)\b")


class Proc:
    """A server process of the repository's, stopped by stop().

    Give it `port=0` and the server's own `--port 0` (or no port at all for
    a command that prints one): the kernel picks a free port on the
    server's socket and the port is read back from the start-up banner
    ("NAME on HOST:PORT ..."), so no other process can take it in between.
    With `ready`, the first line must contain it instead. Everything the
    process prints (stdout and stderr) is kept: `output()`."""

    def __init__(
        self,
        args: list[str],
        port: int = 0,
        ready: str | None = None,
        env: dict[str, str] | None = None,
        timeout: float = 30.0,
        banner: re.Pattern[str] = BANNER,
        cwd: str | Path = ROOT,
    ) -> None:
        self.port = port
        self.args = args
        self._lines: list[str] = []
        self._seen = threading.Condition()
        self.p = subprocess.Popen(args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self._drainer = threading.Thread(target=self._drain, daemon=True)
        self._drainer.start()
        try:
            if ready is not None:  # "": any first line (the caller waits for its own with wait_line)
                line = self.wait_line(lambda line: True, timeout)
                assert ready in line, line
            elif port == 0:  # `banner`: another program's start-up line, the port its group 1
                m = banner.search(self.wait_line(banner.search, timeout))
                assert m
                self.port = int(m.group(1))
            else:
                wait_port(port, self.p)
        except BaseException:  # no test will stop() a server it never got: not left running
            self.p.kill()
            self.p.wait()
            raise

    def _drain(self) -> None:
        assert self.p.stdout
        for line in self.p.stdout:
            with self._seen:
                self._lines.append(line)
                self._seen.notify_all()
        with self._seen:
            self._lines.append("")  # EOF
            self._seen.notify_all()

    def wait_line(self, match: Callable[[str], object], timeout: float = 30.0) -> str:
        """The first line printed so far or later for which `match` is true;
        an error naming what was printed if the process ends or `timeout`
        passes first."""
        deadline = time.monotonic() + timeout
        with self._seen:
            i = 0
            while True:
                while i < len(self._lines):
                    line = self._lines[i]
                    if line == "":
                        raise RuntimeError(f"{self.args} exited ({self.p.wait()}) printing:\n{self.output()}")
                    if match(line):
                        return line
                    i += 1
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"{self.args}: no such line after {timeout}s; printed:\n{self.output()}")
                self._seen.wait(left)

    def output(self) -> str:
        """Everything printed so far."""
        with self._seen:
            return "".join(self._lines)

    def stop(self) -> int:
        """SIGTERM, then SIGKILL after 10 s; the exit status."""
        self.p.terminate()
        try:
            self.p.wait(10)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
        self._drainer.join(5)  # EOF once every process holding the pipe is gone
        if not self._drainer.is_alive() and self.p.stdout:
            self.p.stdout.close()
        return self.p.returncode


def wait_port(port: int, p: subprocess.Popen[str]) -> None:
    """Until something listens on `port`; an error if `p` exits first."""
    end = time.monotonic() + 20
    while time.monotonic() < end:
        if p.poll() is not None:
            raise RuntimeError(f"server exited with {p.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("server did not listen")
