"""Prefork workers: a supervisor process that opens the listeners and keeps
N worker processes serving them, each with its own loop and ring.

Workers are fresh interpreters (`python -m uringserve` with the same
command line), not forks: a ring does not survive fork(), and a reload
must import the app's code again. They get the listening sockets as
inherited fds (`URINGSERVE_WORKER`, JSON) and say they are ready on a pipe.

Balancing: one listening socket shared by every worker (the kernel hands
each connection to one of the accepts armed on it), or, with --reuse-port,
one SO_REUSEPORT socket per worker slot (the kernel hashes connections over
them). Either way the supervisor holds the sockets, so a worker that dies
or is replaced loses no listener and no connection waiting in a backlog.

Signals, as gunicorn's: TERM/INT drain the workers (each drains as
Server.shutdown does) and stop, a second one cuts the drain; QUIT stops at
once; HUP starts a new generation and, once every new worker is ready,
drains the old one (the sockets never close: no connection is refused);
TTIN/TTOU add or remove a worker. A worker that exits is replaced: at once
after a planned exit (--max-requests), with backoff after a crash; a worker
that crashes before it is ready three times in a row stops the supervisor
with its exit status, not a restart storm.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from .server.listeners import TCP, Listener

logger = logging.getLogger("uringserve.workers")

START_FAILURES = 3  # consecutive crashes before ready: the supervisor gives up
BACKOFF_MAX = 5.0
READY_TIMEOUT = 60.0  # a worker not ready by then is treated as failed to start


@dataclass
class Worker:
    slot: int
    generation: int
    proc: subprocess.Popen
    ready_fd: int  # read end of the readiness pipe
    started: float = field(default_factory=time.monotonic)
    ready: bool = False
    retiring: bool = False  # asked to stop: its exit is not a crash


class Supervisor:
    def __init__(
        self,
        argv: list[str],
        listeners: list[Listener],
        workers: int,
        *,
        reuse_port: bool = False,
        graceful_timeout: float = 30.0,
        name: str = "uringserve",
        metrics: tuple[str, int] | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.argv = argv
        self.specs = listeners
        self.target = workers
        self.reuse_port = reuse_port
        self.graceful_timeout = graceful_timeout
        self.name = name
        self.metrics_address = metrics
        self.endpoint: Any = None
        self.restarts: Any = None
        self._metrics_dir: str | None = None
        self.generation = 0
        self.workers: dict[int, Worker] = {}  # pid -> worker
        self.shared: list[socket.socket] = []  # every worker gets these
        self.per_slot: dict[int, list[socket.socket]] = {}  # --reuse-port: one set per slot
        self.tcp_reuse: list[TCP] = []  # the TCP specs bound per slot (their port fixed once known)
        self.where: list[str] = []  # each listener, described once
        self.failures: dict[int, int] = {}  # slot -> consecutive crashes before ready
        self.restart_at: dict[int, float] = {}  # slot -> when to start its replacement
        self.stopping: str | None = None  # "graceful" or "now"
        self.stop_deadline = 0.0
        self.exit_code = 0
        self._sel = selectors.DefaultSelector()
        self._signals: list[int] = []

    # -- listeners ------------------------------------------------------------------
    def open_listeners(self) -> None:
        for spec in self.specs:
            if self.reuse_port and isinstance(spec, TCP):
                self.tcp_reuse.append(dataclasses.replace(spec, reuse_port=True))
            else:
                socks = spec.open()
                for s in socks:
                    s.set_inheritable(True)
                self.shared += socks
                self.where += [spec.describe(s) for s in socks]
        for slot in range(self.target):
            self._open_slot(slot)
        for spec, s in zip(self.tcp_reuse, self.per_slot.get(0, []), strict=False):
            self.where.append(spec.describe(s) + " (SO_REUSEPORT, one socket per worker)")

    def _open_slot(self, slot: int) -> None:
        if not self.tcp_reuse or slot in self.per_slot:
            return
        socks: list[socket.socket] = []
        for i, spec in enumerate(self.tcp_reuse):
            opened = spec.open()
            if spec.port == 0:  # the next slots bind the port the kernel gave the first
                self.tcp_reuse[i] = dataclasses.replace(spec, port=opened[0].getsockname()[1])
            socks += opened
        for s in socks:
            s.set_inheritable(True)
        self.per_slot[slot] = socks

    def _close_slot(self, slot: int) -> None:
        for s in self.per_slot.pop(slot, []):
            s.close()

    def _all_sockets(self) -> list[socket.socket]:
        return self.shared + [s for socks in self.per_slot.values() for s in socks]

    # -- workers ------------------------------------------------------------------
    def spawn(self, slot: int) -> Worker:
        self._open_slot(slot)
        socks = self.shared + self.per_slot.get(slot, [])
        r, w = os.pipe()
        os.set_inheritable(w, True)
        fds = [s.fileno() for s in socks]
        spec = {"fds": fds, "ready_fd": w, "slot": slot, "supervisor": os.getpid()}
        env = {**os.environ, "URINGSERVE_WORKER": json.dumps(spec)}
        proc = subprocess.Popen(
            [sys.executable, "-m", "uringserve", *self.argv], pass_fds=[*fds, w], env=env, close_fds=True
        )
        os.close(w)
        os.set_blocking(r, False)
        worker = Worker(slot, self.generation, proc, r)
        self.workers[proc.pid] = worker
        self._sel.register(r, selectors.EVENT_READ, worker)
        logger.info("worker %d (slot %d, generation %d) started", proc.pid, slot, self.generation)
        return worker

    def _on_ready_pipe(self, worker: Worker) -> None:
        try:
            data = os.read(worker.ready_fd, 64)
        except BlockingIOError:
            return
        if data and not worker.ready:
            worker.ready = True
            self.failures[worker.slot] = 0
            logger.info("worker %d ready", worker.proc.pid)
        if not data:  # the worker closed its end: it exited
            self._forget_pipe(worker)

    def _forget_pipe(self, worker: Worker) -> None:
        if worker.ready_fd >= 0:
            self._sel.unregister(worker.ready_fd)
            os.close(worker.ready_fd)
            worker.ready_fd = -1

    def _reap(self) -> None:
        for pid, worker in list(self.workers.items()):
            code = worker.proc.poll()
            if code is None:
                continue
            del self.workers[pid]
            if self.endpoint is not None:
                from .metrics import worker_exited

                worker_exited(pid)
            self._forget_pipe(worker)
            self._exited(worker, code)

    def _exited(self, worker: Worker, code: int) -> None:
        pid = worker.proc.pid
        if self.stopping or worker.retiring or worker.generation != self.generation:
            logger.info("worker %d stopped (exit status %d)", pid, code)
            if worker.slot >= self.target and not any(w.slot == worker.slot for w in self.workers.values()):
                self._close_slot(worker.slot)
            return
        if code == 0:  # a planned exit (--max-requests): replace it now
            logger.info("worker %d recycled", pid)
            self.restart_at[worker.slot] = time.monotonic()
            return
        how = f"signal {-code}" if code < 0 else f"exit status {code}"
        if not worker.ready:
            n = self.failures[worker.slot] = self.failures.get(worker.slot, 0) + 1
            if n >= START_FAILURES:
                print(
                    f"{self.name}: a worker failed to start {n} times in a row (last: {how}); stopping",
                    file=sys.stderr,
                    flush=True,
                )
                self.exit_code = 1
                self.stop("now")
                return
        else:
            n = 1
        delay = min(BACKOFF_MAX, 0.1 * 2 ** (n - 1))
        logger.warning("worker %d died (%s); replacing it in %.1fs", pid, how, delay)
        self.restart_at[worker.slot] = time.monotonic() + delay
        if self.restarts is not None:
            self.restarts.inc()

    def _slots_filled(self) -> set[int]:
        return {w.slot for w in self.workers.values() if w.generation == self.generation and not w.retiring}

    def _fill(self) -> None:
        if self.stopping:
            return
        now = time.monotonic()
        filled = self._slots_filled()
        for slot in range(self.target):
            if slot not in filled and self.restart_at.get(slot, 0.0) <= now:
                self.restart_at.pop(slot, None)
                self.spawn(slot)

    def _check_start_timeouts(self) -> None:
        now = time.monotonic()
        for w in self.workers.values():
            if not w.ready and not w.retiring and now - w.started > READY_TIMEOUT:
                logger.warning("worker %d not ready after %.0fs: killing it", w.proc.pid, READY_TIMEOUT)
                w.proc.kill()

    # -- signals ------------------------------------------------------------------
    def _on_signal(self, signum: int, frame: Any) -> None:
        self._signals.append(signum)

    def _handle(self, signum: int) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            self.stop("now" if self.stopping else "graceful")
        elif signum == signal.SIGQUIT:
            self.stop("now")
        elif signum == signal.SIGHUP and not self.stopping:
            self.reload()
        elif signum == signal.SIGTTIN and not self.stopping:
            self.target += 1
            logger.info("SIGTTIN: %d workers", self.target)
        elif signum == signal.SIGTTOU and not self.stopping and self.target > 1:
            self.target -= 1
            logger.info("SIGTTOU: %d workers", self.target)
            for w in self.workers.values():
                if w.slot >= self.target and not w.retiring:
                    w.retiring = True
                    w.proc.send_signal(signal.SIGTERM)

    def stop(self, how: str) -> None:
        if self.stopping == "now":
            return
        self.stopping = how
        self.stop_deadline = time.monotonic() + (self.graceful_timeout + 5 if how == "graceful" else 5)
        sig = signal.SIGTERM if how == "graceful" else signal.SIGQUIT
        for w in self.workers.values():
            w.proc.send_signal(sig)  # a no-op for one that has exited

    def reload(self) -> None:
        """A new generation; the old one drains once every new worker is ready."""
        self.generation += 1
        logger.info("SIGHUP: starting generation %d", self.generation)
        self.restart_at.clear()
        self.failures.clear()

    def _retire_old(self) -> None:
        current = [w for w in self.workers.values() if w.generation == self.generation]
        if len(current) < self.target or not all(w.ready for w in current):
            return
        for w in self.workers.values():
            if w.generation != self.generation and not w.retiring:
                w.retiring = True
                w.proc.send_signal(signal.SIGTERM)

    # -- the loop -----------------------------------------------------------------
    def ready(self) -> bool:
        """/ready: serving, every worker slot filled with a ready worker, no drain begun."""
        current = [w for w in self.workers.values() if w.generation == self.generation and not w.retiring]
        return not self.stopping and len(current) >= self.target and all(w.ready for w in current)

    def _start_metrics(self) -> None:
        import tempfile

        # workers write their metrics here (prometheus_client's multiprocess mode); the endpoint sums them
        self._metrics_dir = tempfile.mkdtemp(prefix="uringserve-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = self._metrics_dir
        from . import metrics

        self.restarts = metrics.worker_restarts()
        assert self.metrics_address is not None
        self.endpoint = metrics.Endpoint(
            *self.metrics_address, metrics.collect(metrics.multiprocess_registry()), self.ready
        )

    def run(self) -> int:
        try:
            self.open_listeners()
            if self.metrics_address is not None:
                self._start_metrics()
        except OSError as exc:  # a listener that cannot open: one line, as run_command() says it
            print(f"{self.name}: {exc}", file=sys.stderr)
            for s in self._all_sockets():
                s.close()
            return 1
        wake_r, wake_w = os.pipe()
        for fd in (wake_r, wake_w):
            os.set_blocking(fd, False)
        old_wakeup = signal.set_wakeup_fd(wake_w)
        handled = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in handled}
        previous[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, self._on_signal)
        self._sel.register(wake_r, selectors.EVENT_READ, None)
        announced = False
        try:
            while True:
                self._reap()
                while self._signals:
                    sig = self._signals.pop(0)
                    if sig != signal.SIGCHLD:
                        self._handle(sig)
                if self.stopping:
                    if not self.workers:
                        break
                    if time.monotonic() > self.stop_deadline:
                        for w in self.workers.values():
                            logger.warning("worker %d did not stop in time: killing it", w.proc.pid)
                            w.proc.kill()
                        self.stop_deadline = time.monotonic() + 5
                else:
                    self._fill()
                    self._retire_old()
                    self._check_start_timeouts()
                    if not announced and self.workers and all(w.ready for w in self.workers.values()):
                        announced = True
                        print(
                            f"{self.name} on {', '.join(self.where)} ({self.target} workers, "
                            f"supervisor pid {os.getpid()})",
                            flush=True,
                        )
                timeout = 0.5
                if self.restart_at:
                    timeout = max(0.0, min(timeout, min(self.restart_at.values()) - time.monotonic()))
                for key, _ in self._sel.select(timeout):
                    if key.data is None:
                        try:
                            while os.read(wake_r, 512):
                                pass
                        except BlockingIOError:
                            pass
                    else:
                        self._on_ready_pipe(key.data)
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            for w in self.workers.values():
                w.proc.kill()
                w.proc.wait()
            self._sel.close()
            os.close(wake_r)
            os.close(wake_w)
            for s in self._all_sockets():
                s.close()
            for spec in self.specs:
                spec.close()
            if self.endpoint is not None:
                self.endpoint.close()
            if self._metrics_dir is not None:
                import shutil

                shutil.rmtree(self._metrics_dir, ignore_errors=True)
        return self.exit_code


# -- the worker's side -------------------------------------------------------------------
def worker_spec() -> dict[str, Any] | None:
    """What the supervisor passed this process, when it is a worker."""
    raw = os.environ.get("URINGSERVE_WORKER")
    return json.loads(raw) if raw else None


def die_with_supervisor(spec: dict[str, Any]) -> None:
    """SIGTERM this worker if the supervisor dies (PR_SET_PDEATHSIG), and
    exit now if it already has."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != spec["supervisor"]:
        raise SystemExit(f"uringserve worker: the supervisor (pid {spec['supervisor']}) is gone")


def report_ready(spec: dict[str, Any]) -> None:
    fd = spec["ready_fd"]
    try:
        os.write(fd, b"R")
    except OSError:
        pass
