"""Prefork workers (`uringserve run --workers N`): both balancing modes
serve with every worker; a worker killed under load is replaced and no
listener is lost; SIGTERM under load finishes every request a worker took;
SIGHUP under constant load loses no request and serves the new code; a
reload whose code cannot start keeps the old generation serving, and a
later one with fixed code succeeds; a worker that cannot start stops the
supervisor instead of a restart storm; TTIN/TTOU; --max-requests recycles
workers within their limit without losing requests, with one worker too;
SIGQUIT stops at once. Every count is the client's own.

The process lifecycle (signals from a terminal, a second signal, the kill
after the graceful timeout, the ready timeout, workers dying with their
supervisor, --workers 0, the environment) is in test_workers_lifecycle.py."""

from __future__ import annotations

import collections
import itertools
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import Proc
from prometheus_client.parser import text_string_to_metric_families

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable


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
        try:
            with open(f"/proc/{self.p.pid}/task/{self.p.pid}/children") as f:
                return {int(x) for x in f.read().split()}
        except FileNotFoundError:
            return set()

    def wait_children(self, cond: Callable[[set[int]], bool], timeout: float = 30.0) -> set[int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            kids = self.children()
            if cond(kids):
                return kids
            time.sleep(0.02)
        raise AssertionError(f"children never matched: {self.children()}\n{self.output()}")

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
        self.proc._drainer.join(10)  # EOF once its workers are gone too
        if not self.proc._drainer.is_alive() and self.p.stdout is not None:
            self.p.stdout.close()


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
        pool.close()


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
    length = [line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
    if len(length) != 1 or len(body) != int(length[0].split(b":")[1]):
        raise ConnectionError(f"short body: {data[:80]!r}")
    return body


def pid_of(body: bytes) -> int:
    """The worker's pid: the body's last word (the apps here answer "[VERSION ]PID")."""
    return int(body.split()[-1])


class Load:
    """Threads making requests on new connections until stopped; every body, in order, and every failure."""

    def __init__(self, port: int, threads: int = 4) -> None:
        self.port = port
        self.bodies: list[bytes] = []
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        for t in self._threads:
            t.start()

    @property
    def ok(self) -> int:
        return len(self.bodies)

    @property
    def pids(self) -> list[int]:
        return [pid_of(b) for b in self.bodies]

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                body = get(self.port)
                with self._lock:
                    self.bodies.append(body)
            except (OSError, ValueError) as exc:
                with self._lock:
                    self.failed.append(repr(exc))

    def wait_for(self, n: int, timeout: float = 30.0) -> None:
        """Until n more requests were answered (bounded: the asserts say what happened)."""
        deadline = time.monotonic() + timeout
        start = self.ok
        while self.ok - start < n and time.monotonic() < deadline:
            time.sleep(0.01)

    def until(self, cond: Callable[[], bool], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not cond() and time.monotonic() < deadline:
            time.sleep(0.01)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)


class AppModule:
    """An app module of the test's own, in a folder on the workers' PYTHONPATH,
    rewritten as a deploy would (atomically) to serve "VERSION PID"."""

    def __init__(self, folder: Path, name: str = "deployed_app") -> None:
        self.path = folder / f"{name}.py"
        self.spec = f"{name}:app"
        # no bytecode cache: a rewrite within the same second is imported afresh
        self.env = {"PYTHONPATH": f"{folder}{os.pathsep}{ROOT}", "PYTHONDONTWRITEBYTECODE": "1"}

    def write(self, source: str) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(source)
        os.replace(tmp, self.path)

    def serve(self, version: str) -> None:
        self.write(
            "import os\n"
            "from uringserve.http import Response\n\n\n"
            "def app(request):\n"
            f"    return Response(b'{version} %d' % os.getpid())\n"
        )

    def break_it(self) -> None:
        self.write('raise RuntimeError("a broken deploy")\n')


@pytest.mark.parametrize("mode", ["shared", "reuseport"])
def test_two_workers_serve(pools: list[Pool], mode: str) -> None:
    pool = Pool("--workers", "2", *(["--reuse-port"] if mode == "reuseport" else []))
    pools.append(pool)
    kids = pool.wait_children(lambda k: len(k) == 2)
    served = collections.Counter(pid_of(get(pool.port)) for _ in range(200))
    # both serve: one worker taking every connection would leave the other idle
    assert set(served) == kids and min(served.values()) >= 20, served
    code, out = pool.stop()
    assert code == 0, out


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
    code, out = pool.stop()
    assert code == 0, out


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
    code, out = pool.stop(signal_it=False)
    assert code == 0, out


@pytest.mark.parametrize("mode", ["shared", "reuseport"])
def test_sighup_under_constant_load_serves_the_new_code_and_loses_no_request(
    pools: list[Pool], mode: str, tmp_path: Path
) -> None:
    app = AppModule(tmp_path)
    app.serve("v1")
    pool = Pool("--workers", "2", *(["--reuse-port"] if mode == "reuseport" else []), app=app.spec, env=app.env)
    pools.append(pool)
    old = pool.wait_children(lambda k: len(k) == 2)
    load = Load(pool.port)
    try:
        load.wait_for(100)
        app.serve("v2")
        pool.p.send_signal(signal.SIGHUP)
        new = pool.wait_children(lambda k: len(k) == 2 and not (k & old))
        seen = len(load.bodies)
        load.wait_for(200)
    finally:
        load.stop()
    assert load.failed == [], load.failed[:5]
    after = load.bodies[seen:]
    # once the old workers are gone, every answer is the new code's, from a new worker
    assert len(after) >= 200 and all(b.startswith(b"v2 ") and pid_of(b) in new for b in after), after[:5]
    assert load.bodies[0].startswith(b"v1 ")
    code, out = pool.stop()
    assert code == 0, out


def test_a_reload_that_cannot_start_keeps_the_old_generation_serving(pools: list[Pool], tmp_path: Path) -> None:
    """nginx's rule: a bad deploy and SIGHUP leave the site up on the old code;
    the next SIGHUP, with the code fixed, takes."""
    app = AppModule(tmp_path)
    app.serve("v1")
    pool = Pool("--workers", "2", "--metrics", "127.0.0.1:0", app=app.spec, env=app.env, level="info")
    pools.append(pool)
    metrics = re.search(r"metrics on (http://\S+)\)", pool.wait_line(lambda line: "uringserve on " in line))
    assert metrics, pool.output()
    old = pool.wait_children(lambda k: len(k) == 2)
    load = Load(pool.port)
    try:
        load.wait_for(50)
        app.break_it()
        pool.p.send_signal(signal.SIGHUP)
        failed = pool.wait_line(lambda line: "reload failed" in line, timeout=60)
        pool.wait_children(lambda k: k == old)  # the failed generation's workers are gone, the old ones serve
        assert reloads(metrics[1]) == {"failed": 1.0}
        load.wait_for(50)
        broken_until = len(load.bodies)
        app.serve("v2")
        pool.p.send_signal(signal.SIGHUP)
        pool.wait_line(lambda line: "reload done: generation 2 serving" in line, timeout=60)
        new = pool.wait_children(lambda k: len(k) == 2 and not (k & old))
        fixed_from = len(load.bodies)
        load.wait_for(50)
        assert reloads(metrics[1]) == {"failed": 1.0, "ok": 1.0}
    finally:
        load.stop()
    assert failed.startswith(
        "uringserve: reload failed: generation 1 could not start: "
        "a worker failed to start 3 times in a row (last: exit status 1); generation 0 keeps serving"
    ), failed
    assert load.failed == [], load.failed[:5]  # served throughout
    before = load.bodies[:broken_until]
    assert all(b.startswith(b"v1 ") and pid_of(b) in old for b in before), before[-5:]
    after = load.bodies[fixed_from:]
    assert len(after) >= 50 and all(b.startswith(b"v2 ") and pid_of(b) in new for b in after), after[:5]
    assert get(pool.port).startswith(b"v2 ")
    code, out = pool.stop()
    assert code == 0, out
    assert out.count("RuntimeError: a broken deploy") <= 2 * 3  # three tries at most per slot: no storm


def reloads(url: str) -> dict[str, float]:
    """uringserve_reloads_total by result, from the supervisor's /metrics."""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return {
        s.labels["result"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "uringserve_reloads_total"
    }


def test_a_slot_that_cannot_be_refilled_leaves_the_others_serving(pools: list[Pool], tmp_path: Path) -> None:
    """The code on disk broken, a worker dies: its replacement cannot start,
    the other worker serves on (the supervisor does not stop them all), and
    the slot is refilled once the code is fixed."""
    app = AppModule(tmp_path)
    app.serve("v1")
    pool = Pool("--workers", "2", app=app.spec, env=app.env, level="info")
    pools.append(pool)
    kids = pool.wait_children(lambda k: len(k) == 2)
    survivor, victim = sorted(kids)
    app.break_it()
    load = Load(pool.port, threads=2)
    try:
        load.wait_for(20)
        os.kill(victim, signal.SIGKILL)
        pool.wait_line(lambda line: "a worker failed to start 3 times in a row" in line and "retrying" in line)
        retried_from = len(load.bodies)
        load.wait_for(50)
        assert pool.p.poll() is None  # still supervising
        app.serve("v2")
        refilled = pool.wait_children(lambda k: len(k) == 2 and survivor in k and victim not in k, timeout=30)
        load.until(lambda: any(b.startswith(b"v2 ") for b in load.bodies[retried_from:]), timeout=30)
    finally:
        load.stop()
    # only requests the killed worker had taken can have failed: at most one per load thread
    assert len(load.failed) <= 2, load.failed
    during = load.bodies[retried_from:]
    assert len(during) >= 50 and all(b == b"v1 %d" % survivor or b.startswith(b"v2 ") for b in during)
    assert any(b.startswith(b"v2 ") and pid_of(b) in refilled - {survivor} for b in during)
    code, out = pool.stop()
    assert code == 0, out


def test_a_worker_that_cannot_start_stops_the_supervisor() -> None:
    p = subprocess.run(
        [PY, "-m", "uringserve", "run", "tests.broken_app:app", "--port", "0", "--workers", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 1
    assert "uringserve: a worker failed to start 3 times in a row (last: exit status 1); stopping\n" in p.stderr
    crashes = p.stderr.count("RuntimeError: this app cannot start")
    assert 3 <= crashes <= 2 * 3  # two slots, three tries at most each: no restart storm
    assert p.stdout == ""  # no banner: it never served


def test_ttin_and_ttou_change_the_worker_count(pools: list[Pool]) -> None:
    pool = Pool("--workers", "2")
    pools.append(pool)
    two = pool.wait_children(lambda k: len(k) == 2)
    pool.p.send_signal(signal.SIGTTIN)
    three = pool.wait_children(lambda k: len(k) == 3)
    assert two < three
    pool.p.send_signal(signal.SIGTTOU)
    pool.wait_children(lambda k: len(k) == 2)
    assert pid_of(get(pool.port)) in pool.children()
    code, out = pool.stop()
    assert code == 0, out


def test_max_requests_recycles_each_worker_within_its_limit(pools: list[Pool]) -> None:
    threads = 2
    pool = Pool("--workers", "2", "--max-requests", "20", "--max-requests-jitter", "5")
    pools.append(pool)
    pool.wait_children(lambda k: len(k) == 2)
    load = Load(pool.port, threads=threads)
    try:
        load.until(lambda: len(set(load.pids)) >= 6)  # four workers recycled at least
    finally:
        load.stop()
    assert load.failed == [], load.failed[:5]
    served = collections.Counter(load.pids)
    current = pool.children()
    recycled = {pid: n for pid, n in served.items() if pid not in current}
    assert len(recycled) >= 4, served
    # 20 plus its jitter (0..5), plus at most what the other load thread had in flight
    assert all(20 <= n <= 25 + threads - 1 for n in recycled.values()), recycled
    code, out = pool.stop()
    assert code == 0, out


def test_max_requests_with_one_worker_recycles_it_through_a_supervisor(pools: list[Pool]) -> None:
    """--max-requests with the default --workers 1: a supervisor starts the
    replacement (as gunicorn's master does), not a limit silently ignored."""
    pool = Pool("--max-requests", "5")
    pools.append(pool)
    assert f"(1 worker, supervisor pid {pool.p.pid})" in pool.wait_line(lambda line: "uringserve on " in line)
    pids = [pid_of(get(pool.port)) for _ in range(16)]  # one at a time
    runs = [len(list(group)) for _, group in itertools.groupby(pids)]
    assert len(runs) >= 3, pids  # two recycled at least
    # each served its 5 (one more if the next connection came as it stopped listening)
    assert all(n in (5, 6) for n in runs[:-1]), pids
    assert len(set(pids)) == len(runs)  # each run a fresh process
    code, out = pool.stop()
    assert code == 0, out


def test_sigquit_stops_at_once_and_says_work_was_cut(pools: list[Pool]) -> None:
    pool = Pool("--workers", "2", "--graceful-timeout", "60")
    pools.append(pool)
    pool.wait_children(lambda k: len(k) == 2)
    s = socket.create_connection(("127.0.0.1", pool.port), timeout=20)
    s.sendall(b"GET /stream/30000 HTTP/1.1\r\nHost: t\r\n\r\n")
    got = b""
    while b"start;" not in got:
        got += s.recv(4096)
    t0 = time.monotonic()
    code, out = pool.stop(signal.SIGQUIT)
    assert time.monotonic() - t0 < 10  # not the 30 s the request wanted, nor the 60 s drain
    assert code == 1, out  # work in flight was cut
    assert "SIGQUIT: aborting 1 connection(s) with work in flight" in out
    rest = b""
    try:
        while chunk := s.recv(4096):
            rest += chunk
    except ConnectionResetError:
        pass
    assert b"end" not in rest  # cut, not finished
    s.close()


def test_two_echo_workers(pools: list[Pool]) -> None:
    pool = Pool("--workers", "2", app=None, cmd="echo")
    pools.append(pool)
    pool.wait_children(lambda k: len(k) == 2)
    for i in range(50):
        with socket.create_connection(("127.0.0.1", pool.port), timeout=10) as s:
            payload = b"%d" % i * 1000
            s.sendall(payload)
            got = b""
            while len(got) < len(payload):
                got += s.recv(65536)
            assert got == payload
    code, out = pool.stop()
    assert code == 0, out
