"""The process lifecycle of `uringserve run`, with and without workers:
Ctrl-C on a real terminal drains the workers once (they take orders from the
supervisor only) and a request in flight completes; a second signal cuts a
drain, says which signal and how many connections, and exits 1; so does the
graceful timeout; a worker that cannot take a signal is killed after the
graceful timeout; a worker not ready within --ready-timeout is a failed
start; workers die with a supervisor killed outright; --workers 0 is one
per CPU; URINGSERVE_* variables reach every worker."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import PY, ROOT, Pool, Proc, get, uringserve, wait_until


def in_flight(port: int, path: str = "/stream/30000") -> tuple[socket.socket, bytes]:
    """A request whose first chunk has arrived: the server is working on it."""
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    got = b""
    while b"start;" not in got:
        chunk = s.recv(4096)
        assert chunk, got
        got += chunk
    return s, got


def rest_of(s: socket.socket, got: bytes) -> bytes:
    try:
        while chunk := s.recv(4096):
            got += chunk
    except ConnectionResetError:
        pass
    s.close()
    return got


WHOLE = b"3\r\nend\r\n0\r\n\r\n"  # the stream's last chunk and the chunked body's end


class Terminal:
    """A process on a pseudo-terminal of its own, as a shell starts a
    foreground job: its own session, the pty its controlling terminal, so
    the terminal's Ctrl-C is a SIGINT to its foreground process group."""

    def __init__(self, args: list[str]) -> None:
        self.master, slave = os.openpty()
        take_tty = (
            "import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); os.execv(sys.argv[1], sys.argv[1:])"
        )
        self.p = subprocess.Popen(
            [PY, "-c", take_tty, PY, *args],
            cwd=ROOT,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
        )
        os.close(slave)
        self.text = ""
        self._seen = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:  # EIO: every process holding the terminal is gone
                data = b""
            with self._seen:
                if not data:
                    self.text += "\0"
                    self._seen.notify_all()
                    return
                self.text += data.decode(errors="replace").replace("\r\n", "\n")
                self._seen.notify_all()

    def wait_for(self, pattern: str, timeout: float = 60.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        with self._seen:
            while not (m := re.search(pattern, self.text)):
                left = deadline - time.monotonic()
                if left <= 0 or "\0" in self.text:
                    raise AssertionError(f"no {pattern!r} on the terminal:\n{self.text}")
                self._seen.wait(left)
            return m

    def ctrl_c(self) -> None:
        os.write(self.master, b"\x03")  # the line discipline makes it SIGINT to the foreground group

    def close(self) -> None:
        if self.p.poll() is None:
            os.killpg(self.p.pid, signal.SIGKILL)
            self.p.wait()
        self._reader.join(10)
        os.close(self.master)


def test_ctrl_c_on_a_terminal_drains_the_workers_once() -> None:
    args = ["-m", "uringserve", "run", "tests.worker_app:app", "--port", "0", "--workers", "2"]
    term = Terminal([*args, "--graceful-timeout", "30"])
    try:
        port = int(term.wait_for(r"uringserve on 127\.0\.0\.1:(\d+) \(2 workers")[1])
        s, got = in_flight(port, "/stream/1500")
        term.ctrl_c()
        term.wait_for(r"SIGINT: draining 2 worker")
        got = rest_of(s, got)
        assert term.p.wait(30) == 0, term.text
    finally:
        term.close()
    assert got.startswith(b"HTTP/1.1 200 ") and got.endswith(WHOLE), got  # finished, not cut
    assert "aborting" not in term.text and "cut the drain" not in term.text, term.text
    # the workers heard of it once, from the supervisor: SIGTERM, not the terminal's SIGINT
    assert term.text.count("uringserve.server: SIGTERM: draining") == 2, term.text
    assert "uringserve.server: SIGINT" not in term.text, term.text


def test_a_second_signal_cuts_the_supervisors_drain_and_exits_1(pools: list[Pool]) -> None:
    pool = Pool("--workers", "2", "--graceful-timeout", "60", level="info")
    pools.append(pool)
    pool.wait_children(lambda k: len(k) == 2)
    s, got = in_flight(pool.port)
    t0 = time.monotonic()
    pool.p.send_signal(signal.SIGTERM)
    pool.wait_line(lambda line: "SIGTERM: draining 2 worker(s)" in line)
    pool.p.send_signal(signal.SIGINT)
    code, out = pool.stop(signal_it=False)
    assert time.monotonic() - t0 < 20, out  # not the 60 s drain
    assert code == 1, out
    assert "a second stop signal (SIGINT) cut the drain: the workers abort what they have" in out
    assert "SIGQUIT: aborting 1 connection(s) with work in flight" in out  # the worker that had it
    assert "shutdown timeout" not in out
    assert not rest_of(s, got).endswith(WHOLE)


@pytest.mark.parametrize("cut", ["second-signal", "timeout"])
def test_one_process_says_what_cut_its_drain_and_exits_1(cut: str) -> None:
    timeout = "60" if cut == "second-signal" else "1"
    p = Pool("--graceful-timeout", timeout, level="info")
    try:
        s, got = in_flight(p.port)
        p.p.send_signal(signal.SIGTERM)
        if cut == "second-signal":
            p.wait_line(lambda line: "SIGTERM: draining" in line)
            p.p.send_signal(signal.SIGTERM)
        code, out = p.stop(signal_it=False)
    finally:
        if p.p.poll() is None:
            p.p.kill()
            p.p.wait()
        p.close()
    says = {
        "second-signal": "a second stop signal (SIGTERM) cut the drain: aborting 1 connection(s) with work in flight",
        "timeout": "the 1s shutdown timeout passed: aborting 1 connection(s) with work in flight",
    }
    assert code == 1 and says[cut] in out, out
    assert not rest_of(s, got).endswith(WHOLE)


def test_a_worker_that_does_not_stop_is_killed_after_the_graceful_timeout(pools: list[Pool]) -> None:
    pool = Pool("--workers", "2", "--graceful-timeout", "1", level="info")
    pools.append(pool)
    kids = pool.wait_children(lambda k: len(k) == 2)
    s, got = in_flight(pool.port, "/stream-block/120000")  # its worker's loop is blocked from now on
    t0 = time.monotonic()
    code, out = pool.stop(timeout=60)
    took = time.monotonic() - t0
    m = re.search(r"worker (\d+) did not stop in time: killing it", out)
    assert m and int(m.group(1)) in kids, out
    assert code == 1, out
    assert f"worker {m.group(1)} stopped (did not stop in time: killed)" in out
    assert 1 + 5 - 0.5 <= took < 40, took  # the graceful timeout, then 5 s more, then the kill
    assert not rest_of(s, got).endswith(WHOLE)


def test_a_worker_not_ready_in_time_is_a_failed_start(tmp_path: Path) -> None:
    (tmp_path / "hanging_app.py").write_text(
        "import time\n\ntime.sleep(3600)  # an import that never ends\napp = None\n"
    )
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    t0 = time.monotonic()
    out = uringserve(
        "run", "hanging_app:app", "--port", "0", "--workers", "2", "--ready-timeout", "1", env=env, timeout=90
    )
    assert out.returncode == 1, out.stderr
    assert "not ready after 1s: killing it" in out.stderr
    assert (
        "uringserve: a worker failed to start 3 times in a row (last: not ready in time: killed); stopping"
        in out.stderr
    )
    assert time.monotonic() - t0 < 60  # three ready timeouts, not the default 60 s each
    assert out.stdout == ""  # it never served


def test_stopping_after_failed_starts_kills_a_worker_still_starting(tmp_path: Path) -> None:
    """Slot 0 cannot start (three tries), slot 1 is still in its import: the
    supervisor stops "now", and slot 1's worker, which has no work, is
    killed, not sent SIGQUIT (Python's default for it dumps core)."""
    (tmp_path / "slotted_app.py").write_text(
        "import json, os, time\n\n"
        "if json.loads(os.environ['URINGSERVE_WORKER'])['slot'] == 0:\n"
        "    raise RuntimeError('slot 0 cannot start')\n"
        "os.write(1, b'slot 1 importing\\n')\n"
        "time.sleep(3600)\n"
    )
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    out = uringserve("run", "slotted_app:app", "--port", "0", "--workers", "2", env=env)
    assert out.returncode == 1, out.stderr
    assert "uringserve: a worker failed to start 3 times in a row (last: exit status 1); stopping" in out.stderr
    [slot1] = re.findall(r"worker (\d+) \(slot 1, generation 0\) started", out.stderr)
    assert f"worker {slot1} stopped (not ready: killed)" in out.stderr, out.stderr
    assert "uringserve on " not in out.stdout  # it never served


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


def test_workers_die_with_a_supervisor_killed_outright(pools: list[Pool]) -> None:
    pool = Pool("--workers", "2")
    pools.append(pool)
    kids = pool.wait_children(lambda k: len(k) == 2)
    assert all(_alive(pid) for pid in kids)
    pool.p.kill()  # SIGKILL: the supervisor cannot tell them
    pool.p.wait()
    wait_until(lambda: not any(_alive(pid) for pid in kids))
    left = [pid for pid in kids if _alive(pid)]
    for pid in left:  # orphans are no longer the supervisor's children: the fixture cannot find them
        os.kill(pid, signal.SIGKILL)
    assert not left, "workers outlived their supervisor"
    with pytest.raises(OSError):  # and nobody listens any more
        socket.create_connection(("127.0.0.1", pool.port), timeout=5).close()


def test_workers_0_is_one_per_cpu_this_process_may_use(pools: list[Pool]) -> None:
    n = len(os.sched_getaffinity(0))
    pool = Pool("--workers", "0")
    pools.append(pool)
    banner = pool.wait_line(lambda line: "uringserve on " in line)
    if n == 1:  # one CPU: served in this process
        assert "(uring loop, pid" in banner and pool.children() == set()
    else:
        assert f"({n} workers, supervisor pid {pool.p.pid})" in banner
        kids = pool.wait_children(lambda k: len(k) == n)
        assert {int(get(pool.port)) for _ in range(50 * n)} == kids
    code, out = pool.stop()
    assert code == 0, out


def test_the_environment_reaches_every_worker(pools: list[Pool]) -> None:
    env = {"URINGSERVE_ROOT_PATH": "/api", "URINGSERVE_RING_BUF_COUNT": "64", "URINGSERVE_WORKERS": "2"}
    pool = Pool(app="tests.worker_app:info_app", env=env)
    pools.append(pool)
    kids = pool.wait_children(lambda k: len(k) == 2)
    seen: dict[int, dict] = {}
    for _ in range(200):
        info = json.loads(get(pool.port))
        seen[info["pid"]] = info
        if len(seen) == 2:
            break
    assert set(seen) == kids
    for info in seen.values():
        assert info["root_path"] == "/api" and info["ring"]["buf_count"] == 64, info
    code, out = pool.stop()
    assert code == 0, out


@pytest.mark.parametrize(
    "workers,sig", [(1, signal.SIGTERM), (1, signal.SIGINT), (2, signal.SIGTERM)], ids=["1-TERM", "1-INT", "2-TERM"]
)
def test_a_stop_signal_during_startup_stops_at_once(workers: int, sig: signal.Signals) -> None:
    """An app whose lifespan startup never ends: a stop signal ends the
    process (no SIGKILL needed, as systemctl stop would wait for), with one
    line and exit status 1, and no banner ever. One process cancels the
    startup; a supervisor kills its workers (not ready: they have no work)."""
    args = [PY, "-m", "uringserve", "run", "tests.asgi_app:startup_hangs", "--port", "0", "--workers", str(workers)]
    p = Proc(args, ready="")  # no banner: it never serves
    try:
        assert wait_until(lambda: p.output().count("startup_hangs: waiting in startup") == workers), p.output()
        p.p.send_signal(sig)
        code = p.p.wait(30)
    finally:
        if p.p.poll() is None:
            p.p.kill()
            p.p.wait()
        p.close()
    out = p.output()
    assert code == 1, out
    assert out.count(f"uringserve: {sig.name} during startup: stopped before serving\n") == 1, out
    assert "uringserve on " not in out and "Traceback" not in out, out
    if workers == 1:
        assert "startup_hangs: startup cancelled" in out, out  # the app's startup was cancelled, not abandoned
    else:
        assert out.count("stopped (not ready: killed)") == workers, out


def test_a_metrics_port_that_cannot_open_leaves_nothing_behind(tmp_path: Path) -> None:
    """--metrics on a busy port with workers: one line, exit 1, and neither
    the metrics directory nor the Unix socket file is left."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    uds = tmp_path / "s.sock"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = uringserve(
            "run", "tests.worker_app:app", "--uds", str(uds), "--workers", "2", "--metrics", f"127.0.0.1:{port}",
            env={"TMPDIR": str(tmp)},
        )  # fmt: skip
    assert out.returncode == 1, out
    busy = f"uringserve: [Errno 98] cannot listen for --metrics on 127.0.0.1:{port}: Address already in use\n"
    assert out.stderr == busy
    assert list(tmp.iterdir()) == [] and not uds.exists()
