"""Prefork workers (`uringserve run --workers N`): both balancing modes
serve; a worker killed under load is replaced and no listener is lost;
SIGTERM under load finishes every request a worker took; SIGHUP under
constant load loses no request; a worker that cannot start stops the
supervisor instead of a restart storm; TTIN/TTOU; --max-requests recycles
workers without losing requests; SIGQUIT stops at once. Every count is the
client's own."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Pool:
    def __init__(self, *args: str, app: str = "tests.worker_app:app") -> None:
        self.p = subprocess.Popen(
            [sys.executable, "-m", "uringserve", "run", app, "--port", "0", "--log-level", "warning", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.p.stdout is not None
        line = self.p.stdout.readline()
        m = re.search(r"127\.0\.0\.1:(\d+)", line)
        if not m:
            self.p.kill()
            raise AssertionError(f"the pool did not start: {line!r} {self.p.communicate()[1]}")
        self.port = int(m.group(1))

    def children(self) -> set[int]:
        try:
            with open(f"/proc/{self.p.pid}/task/{self.p.pid}/children") as f:
                return {int(x) for x in f.read().split()}
        except FileNotFoundError:
            return set()

    def wait_children(self, cond, timeout: float = 30.0) -> set[int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            kids = self.children()
            if cond(kids):
                return kids
            time.sleep(0.02)
        raise AssertionError(f"children never matched: {self.children()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0, signal_it: bool = True) -> tuple[int, str]:
        if signal_it and self.p.poll() is None:
            self.p.send_signal(sig)
        try:
            _, err = self.p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            _, err = self.p.communicate()
            raise AssertionError(f"the supervisor did not stop: {err}") from None
        return self.p.returncode, err


@pytest.fixture
def pools() -> Iterator[list[Pool]]:
    started: list[Pool] = []
    yield started
    for pool in started:
        if pool.p.poll() is None:
            kids = pool.children()
            pool.p.kill()
            pool.p.wait()
            for pid in kids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def get(port: int, path: str = "/", timeout: float = 10.0) -> bytes:
    """One request on its own connection; the body (raises on anything but a whole 200)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200 "):
        raise ConnectionError(f"not a whole 200: {data[:80]!r}")
    m = re.search(rb"content-length: (\d+)", head, re.I)
    if m is None or len(body) != int(m.group(1)):
        raise ConnectionError(f"short body: {data[:80]!r}")
    return body


class Load:
    """Threads making requests on new connections until stopped; counts everything."""

    def __init__(self, port: int, threads: int = 4) -> None:
        self.port = port
        self.ok = 0
        self.failed: list[str] = []
        self.pids: list[int] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        for t in self._threads:
            t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                pid = int(get(self.port))
                with self._lock:
                    self.ok += 1
                    self.pids.append(pid)
            except (OSError, ValueError) as exc:
                with self._lock:
                    self.failed.append(repr(exc))

    def wait_for(self, n: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        start = self.ok
        while self.ok - start < n and time.monotonic() < deadline:
            time.sleep(0.01)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)


@pytest.mark.parametrize("mode", ["shared", "reuseport"])
def test_two_workers_serve(pools: list[Pool], mode: str) -> None:
    pool = Pool("--workers", "2", *(["--reuse-port"] if mode == "reuseport" else []))
    pools.append(pool)
    kids = pool.wait_children(lambda k: len(k) == 2)
    pids = [int(get(pool.port)) for _ in range(200)]
    assert set(pids) <= kids
    if mode == "reuseport":  # the kernel hashes new connections over the two sockets
        assert set(pids) == kids
    code, err = pool.stop()
    assert code == 0, err


def test_a_killed_worker_is_replaced_and_no_listener_is_lost(pools: list[Pool]) -> None:
    pool = Pool("--workers", "2")
    pools.append(pool)
    kids = pool.wait_children(lambda k: len(k) == 2)
    load = Load(pool.port)
    try:
        load.wait_for(50)
        victim = min(kids)
        os.kill(victim, signal.SIGKILL)
        new = pool.wait_children(lambda k: len(k) == 2 and victim not in k)
        seen = len(load.pids)
        load.wait_for(200)
    finally:
        load.stop()
    after = load.pids[seen:]
    assert len(after) >= 200 and set(after) <= new
    # only requests the killed worker had taken can have failed: at most one per load thread
    assert len(load.failed) <= 4, load.failed
    code, err = pool.stop()
    assert code == 0, err


def test_sigterm_finishes_every_request_a_worker_took(pools: list[Pool]) -> None:
    pool = Pool("--workers", "2", "--graceful-timeout", "20")
    pools.append(pool)
    pool.wait_children(lambda k: len(k) == 2)
    conns = []
    for _ in range(12):
        s = socket.create_connection(("127.0.0.1", pool.port), timeout=20)
        s.sendall(b"GET /stream/700 HTTP/1.1\r\nHost: t\r\n\r\n")
        conns.append(s)
    pending = []
    for s in conns:  # each is in flight: its first chunk arrived
        got = b""
        while b"start;" not in got:
            got += s.recv(4096)
        pending.append(got)
    pool.p.send_signal(signal.SIGTERM)
    for s, data in zip(conns, pending, strict=True):
        while chunk := s.recv(4096):
            data += chunk
        s.close()
        # the whole chunked body, then the close (its head went out before the drain began)
        assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"3\r\nend\r\n0\r\n\r\n"), data
    code, err = pool.stop(signal_it=False)
    assert code == 0, err


@pytest.mark.parametrize("mode", ["shared", "reuseport"])
def test_sighup_under_constant_load_loses_no_request(pools: list[Pool], mode: str) -> None:
    pool = Pool("--workers", "2", *(["--reuse-port"] if mode == "reuseport" else []))
    pools.append(pool)
    old = pool.wait_children(lambda k: len(k) == 2)
    load = Load(pool.port)
    try:
        load.wait_for(100)
        pool.p.send_signal(signal.SIGHUP)
        new = pool.wait_children(lambda k: len(k) == 2 and not (k & old))
        seen = len(load.pids)
        load.wait_for(200)
    finally:
        load.stop()
    assert load.failed == [], load.failed[:5]
    assert set(load.pids[seen:]) <= new and load.ok >= 300
    code, err = pool.stop()
    assert code == 0, err


def test_a_worker_that_cannot_start_stops_the_supervisor(pools: list[Pool]) -> None:
    p = subprocess.run(
        [sys.executable, "-m", "uringserve", "run", "tests.broken_app:app", "--port", "0", "--workers", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 1
    assert "a worker failed to start 3 times in a row (last: exit status 1); stopping" in p.stderr
    crashes = p.stderr.count("RuntimeError: this app cannot start")
    assert 3 <= crashes <= 2 * 3  # two slots, three tries at most each: no restart storm


def test_ttin_and_ttou_change_the_worker_count(pools: list[Pool]) -> None:
    pool = Pool("--workers", "2")
    pools.append(pool)
    two = pool.wait_children(lambda k: len(k) == 2)
    pool.p.send_signal(signal.SIGTTIN)
    three = pool.wait_children(lambda k: len(k) == 3)
    assert two < three
    pool.p.send_signal(signal.SIGTTOU)
    pool.wait_children(lambda k: len(k) == 2)
    assert int(get(pool.port)) in pool.children()
    code, err = pool.stop()
    assert code == 0, err


def test_max_requests_recycles_workers_without_losing_requests(pools: list[Pool]) -> None:
    pool = Pool("--workers", "2", "--max-requests", "20", "--max-requests-jitter", "5")
    pools.append(pool)
    first = pool.wait_children(lambda k: len(k) == 2)
    load = Load(pool.port, threads=2)
    try:
        deadline = time.monotonic() + 30
        while set(load.pids) <= first and time.monotonic() < deadline:
            time.sleep(0.02)
        load.wait_for(100)  # and on through the replacement
    finally:
        load.stop()
    assert load.failed == [], load.failed[:5]
    assert not set(load.pids) <= first  # workers were replaced
    code, err = pool.stop()
    assert code == 0, err


def test_sigquit_stops_at_once(pools: list[Pool]) -> None:
    pool = Pool("--workers", "2", "--graceful-timeout", "60")
    pools.append(pool)
    pool.wait_children(lambda k: len(k) == 2)
    s = socket.create_connection(("127.0.0.1", pool.port), timeout=20)
    s.sendall(b"GET /stream/30000 HTTP/1.1\r\nHost: t\r\n\r\n")
    got = b""
    while b"start;" not in got:
        got += s.recv(4096)
    t0 = time.monotonic()
    code, err = pool.stop(signal.SIGQUIT)
    assert code == 0, err
    assert time.monotonic() - t0 < 10  # not the 30 s the request wanted, nor the 60 s drain
    rest = b""
    try:
        while chunk := s.recv(4096):
            rest += chunk
    except ConnectionResetError:
        pass
    assert b"end" not in rest  # cut, not finished
    s.close()


def test_two_echo_workers(pools: list[Pool]) -> None:
    p = subprocess.Popen(
        [sys.executable, "-m", "uringserve", "echo", "--port", "0", "--workers", "2", "--log-level", "warning"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    pool = Pool.__new__(Pool)  # the same helpers around a pool of the echo demo
    pool.p = p
    pools.append(pool)
    assert p.stdout is not None
    line = p.stdout.readline()
    port = int(re.search(r"127\.0\.0\.1:(\d+)", line).group(1))  # type: ignore[union-attr]
    pool.wait_children(lambda k: len(k) == 2)
    for i in range(50):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            payload = b"%d" % i * 1000
            s.sendall(payload)
            got = b""
            while len(got) < len(payload):
                got += s.recv(65536)
            assert got == payload
    code, err = pool.stop()
    assert code == 0, err
