"""Processes the tests start and look at: `Proc` (a server of the
repository's, its port read from its banner, everything it prints kept),
`Pool` (a `uringserve` supervisor and its workers), `uringserve(...)` (the
command run to its end), `children(pid)`, `rss_kib(pid)`, `wait_until(cond)` for
state no event announces, the metrics endpoint's address from its start-up line,
and `die_with_parent` for helpers that must not outlive the tests.

No import of uringserve or pytest here: tests/stress.py, a plain script,
uses it too. `from conftest import ...` still finds everything."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable

BANNER = re.compile(r"^[\w.]+(?: \([\w ]+\))? on (?:https?://)?(?:\[[0-9a-f:]+\]|[\w.-]+):(\d+)\b")
# the line `--metrics HOST:0` logs once it listens (in the banner, or beside it with workers)
METRICS_LINE = re.compile(r"metrics on http://(?:\[[0-9a-f:]+\]|[\d.]+):(\d+)/metrics")


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
        # setpriv: the kernel kills the server if this test process dies
        # without stop() (a mutmut or pytest timeout's SIGKILL): no server,
        # nor its workers (which die with it), outlives the run. A wrapper that
        # execs rather than a preexec_fn, which is unsafe beside the threads here
        self.p = subprocess.Popen(
            ["setpriv", "--pdeathsig", "KILL", "--", *args],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
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

    def metrics_port(self, timeout: float = 30.0) -> int:
        """The port its `--metrics HOST:0` endpoint listens on, from the line that says so."""
        m = METRICS_LINE.search(self.wait_line(METRICS_LINE.search, timeout))
        assert m
        return int(m.group(1))

    def close(self, timeout: float = 5.0) -> None:
        """Once it has exited: its output read to the end (EOF comes once
        every process holding the pipe, its workers too, is gone)."""
        self._drainer.join(timeout)
        if not self._drainer.is_alive() and self.p.stdout:
            self.p.stdout.close()

    def stop(self) -> int:
        """SIGTERM, then SIGKILL after 10 s; the exit status."""
        self.p.terminate()
        try:
            self.p.wait(10)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
        self.close()
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


def wait_until(cond: Callable[[], object], timeout: float = 30.0, interval: float = 0.01) -> bool:
    """Poll `cond` until it is true; whether it became true before
    `timeout`, which bounds a hang and is never waited out by a correct
    program. For state no event announces (a process's children, a counter
    sampled each second); the sync twin of conftest's async `until`.
    `interval`: longer where asking costs the server work (a scrape)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True


def children(pid: int) -> list[int]:
    """`pid`'s child processes, oldest first, forked by any of its threads
    ([] once it is gone). A fork is not announced: wait for one with
    wait_until."""
    kids: list[int] = []
    try:
        tasks = sorted(os.listdir(f"/proc/{pid}/task"), key=int)
    except FileNotFoundError:
        return kids
    for task in tasks:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # a thread just ended
            found = Path(f"/proc/{pid}/task/{task}/children").read_text().split()
            kids += [int(k) for k in found if int(k) not in kids]
    return kids


def rss_kib(pid: int) -> int:
    """Process `pid`'s resident memory (VmRSS), in KiB."""
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("VmRSS:")).split()[1])


def uringserve(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60.0, cwd: str | Path = ROOT
) -> subprocess.CompletedProcess[str]:
    """`python -m uringserve ARGS` run to its end in the checkout: what it
    printed (stdout, stderr) and its exit status. `env`: variables set over
    this process's environment."""
    return subprocess.run(
        [PY, "-m", "uringserve", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=None if env is None else {**os.environ, **env},
    )


PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """A Popen preexec_fn: the kernel kills the child (SIGKILL) when the
    thread that started it ends, so a helper outlives no test run, even one
    killed outright."""
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")


# -- a worker pool ---------------------------------------------------------------------------


class Pool:
    """A supervisor (or one server) of `uringserve CMD`, its port read from
    its banner; every line it and its workers print is kept (`output()`)."""

    def __init__(
        self,
        *args: str,
        app: str | None = "tests.worker_app:app",
        cmd: str = "run",
        env: dict[str, str] | None = None,
        level: str = "warning",
    ) -> None:
        argv = [PY, "-m", "uringserve", cmd, *([app] if app else []), "--port", "0", "--log-level", level, *args]
        self.proc = Proc(argv, env={**os.environ, **(env or {})}, timeout=60)
        self.p = self.proc.p
        self.port = self.proc.port

    def children(self) -> set[int]:
        return set(children(self.p.pid))

    def wait_children(self, cond: Callable[[set[int]], bool], timeout: float = 30.0) -> set[int]:
        """Its workers, once `cond` holds for them; an error naming them and the output if it never does."""
        if not wait_until(lambda: cond(self.children()), timeout):
            raise AssertionError(f"children never matched: {self.children()}\n{self.output()}")
        return self.children()

    def wait_line(self, match: Callable[[str], object], timeout: float = 30.0) -> str:
        return self.proc.wait_line(match, timeout)

    def output(self) -> str:
        return self.proc.output()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0, signal_it: bool = True) -> tuple[int, str]:
        """Signal it (unless signalled already) and wait: its exit status and all it printed."""
        if signal_it and self.p.poll() is None:
            self.p.send_signal(sig)
        try:
            self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
            raise AssertionError(f"the supervisor did not stop: {self.output()}") from None
        self.close()
        return self.p.returncode, self.output()

    def close(self) -> None:
        self.proc.close(10)  # EOF once its workers are gone too

    def kill(self) -> None:
        """The supervisor and its workers, at once (a test's end that did not stop it)."""
        if self.p.poll() is None:
            kids = self.children()
            self.p.kill()
            self.p.wait()
            for pid in kids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.close()


def get(port: int, path: str = "/", timeout: float = 10.0) -> bytes:
    """One request on its own connection; the body (raises on anything but a whole 200).

    The request leaves with the connection, as a browser's does: in one
    sendto(MSG_FASTOPEN) the kernel connects and sends it (in the SYN where
    the server takes TCP Fast Open, else right after the handshake). A
    connect() then a sendall() leave a gap in which this process can stall
    (a gc pause in mutmut's big process, a loaded machine), and a server
    that drains (a reload, a recycle) gives a new connection DRAIN_GRACE
    (1 s) to send its first request, then closes it, as it may: the test's
    own stall would lose the request."""
    request = f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode()
    with socket.socket() as s:
        # blocking (with a timeout set the socket is non-blocking, and the
        # connect would return EINPROGRESS, the request unsent); bounded by SO_SNDTIMEO
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", int(timeout), int(timeout % 1 * 1e6)))
        try:
            sent = s.sendto(request, socket.MSG_FASTOPEN, ("127.0.0.1", port))
        except OSError as exc:
            if exc.errno != errno.EOPNOTSUPP:  # client Fast Open off (net.ipv4.tcp_fastopen): the gap stays
                raise
            s.connect(("127.0.0.1", port))
            sent = 0
        s.settimeout(timeout)
        s.sendall(request[sent:])
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200 "):
        raise ConnectionError(f"not a whole 200: {data[:80]!r}")
    length = [line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
    if len(length) != 1 or len(body) != int(length[0].split(b":")[1]):
        raise ConnectionError(f"short body: {data[:80]!r}")
    return body


def pid_of(body: bytes) -> int:
    """The worker's pid: the body's last word (the apps here answer "[VERSION ]PID")."""
    return int(body.split()[-1])
