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
TTIN/TTOU add or remove a worker. Workers run in a session of their own:
they take orders from the supervisor only, never from a terminal (Ctrl-C
reaches the supervisor, which drains them once), and die with it
(PR_SET_PDEATHSIG: a supervisor killed outright leaves no worker behind).

A worker that is not ready holds no connection (and its startup may never
end, or take no signal): whenever the supervisor stops or retires one, it
is killed, and that is no crash and no cut work.

A worker that exits is replaced: at once after a planned exit
(--max-requests), with backoff after a crash. A worker that crashes before
it is ready (or is not ready within --ready-timeout) three times in a row:
- during a reload, fails the reload, as nginx does: the new generation is
  stopped and the one serving keeps serving (logged, and counted in
  uringserve_reloads_total{result="failed"}); a later SIGHUP tries again;
- when no worker is serving, stops the supervisor with exit status 1 (an
  app that cannot import does not become a restart storm);
- otherwise (others serve), is retried every BACKOFF_MAX seconds.

After a failed reload the code on disk is the code that cannot start, and
only the workers already serving run the good one: they stop recycling
(--max-requests) until a reload succeeds, since each recycle would replace
a good worker with one that cannot start. A worker that crashes meanwhile
is still replaced from the code on disk (its slot then retried as above).

With --reload (reload.py) the supervisor runs one worker and a file
watcher whose changes start the same reload as SIGHUP, one at a time (the
changes made during one start another after it); one failure to start fails
such a reload, and the next change tries again. Nor does a worker that
cannot start when none serves stop the supervisor: it waits for a change.

Exit status: 0 after a clean drain; 1 when a worker could not start, when
a stop signal came before any worker served, or when the stop cut work in
flight (a second signal, SIGQUIT, a worker that did not finish within
--graceful-timeout).
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

from . import logs
from .server.listeners import TCP, Listener

logger = logging.getLogger("uringserve.workers")

START_FAILURES = 3  # consecutive crashes before ready: the supervisor gives up
BACKOFF_MAX = 5.0
READY_TIMEOUT = 60.0  # a worker not ready by then is treated as failed to start
KILL_AFTER = 5.0  # seconds past the graceful timeout before a worker that has not stopped is killed


@dataclass
class Worker:
    slot: int
    generation: int
    proc: subprocess.Popen
    ready_fd: int  # read end of the readiness pipe
    started: float = field(default_factory=time.monotonic)
    ready: bool = False
    retiring: bool = False  # asked to stop: its exit is not a crash
    timed_out: bool = False  # killed for not being ready within ready_timeout
    killed: bool = False  # killed for not stopping in time
    killed_unready: bool = False  # stopped or retired before it was ready: killed, it had no work


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
        ready_timeout: float = READY_TIMEOUT,
        recycling: bool = False,
        watcher: Any = None,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.argv = argv
        self.specs = listeners
        self.target = workers
        self.reuse_port = reuse_port
        self.graceful_timeout = graceful_timeout
        self.ready_timeout = ready_timeout
        self.name = name
        self.metrics_address = metrics
        self.endpoint: Any = None
        self.restarts: Any = None
        self.reloads: Any = None
        self._metrics_dir: str | None = None
        self.generation = 0  # the generation being started or serving
        self.previous: int | None = None  # during a reload: the generation serving until it succeeds
        self._generations = 0  # the last generation number given out
        self.reload_failures = 0
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
        self.stop_signal: str | None = None  # the signal that began the stop
        self.announced = False  # the banner was printed: the workers served
        # --max-requests: the workers read one byte here before they recycle
        # ("1": paused, while the last reload failed); a memfd, so nothing is
        # left on disk however the supervisor ends
        self.recycling = recycling
        self.recycling_paused = False
        self._pause_fd = -1
        # TLS session tickets: one secret for every worker (and every
        # generation), so a client resumes on any of them (tls.CoreTLS derives
        # the rotated keys from it); a memfd, as the pause byte, never on disk
        self._ticket_fd = -1
        self._sel = selectors.DefaultSelector()
        self._signals: list[int] = []
        # --reload (reload.Watcher): a change reloads as SIGHUP does. Until the
        # files change again the code that failed fails the same way, so one
        # failure fails the reload: one traceback per save, not three
        self.watcher = watcher
        self.changed: set[str] = set()  # changed since the last reload began
        self.start_failures = 1 if watcher is not None else START_FAILURES

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
        self._steer()

    def _steer(self) -> None:
        """--reuse-port: while a removed slot's socket is open (its worker
        drains), new connections go to the kept slots' sockets only, so none
        waits in a backlog that its close would reset (reuseport.py)."""
        if not self.tcp_reuse or 0 not in self.per_slot:
            return
        from . import reuseport

        removed = any(slot >= self.target for slot in self.per_slot)
        for sock in self.per_slot[0]:  # one per TCP listener: each its own group
            try:
                if removed:
                    reuseport.steer(sock, self.target)
                else:
                    reuseport.unsteer(sock)
            except OSError as exc:  # a kernel without it: the kernel's hash, as before
                logger.warning("cannot steer connections away from removed slots: %s", exc)

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
        passed = [*fds, w]
        if self._pause_fd >= 0:
            spec["pause_fd"] = self._pause_fd
            passed.append(self._pause_fd)
        if self._ticket_fd >= 0:
            spec["tls_ticket_fd"] = self._ticket_fd
            passed.append(self._ticket_fd)
        env = {**os.environ, "URINGSERVE_WORKER": json.dumps(spec)}
        # start_new_session: the worker takes orders from the supervisor only;
        # in its process group a terminal's Ctrl-C would reach it beside the
        # supervisor's SIGTERM, as a second signal that cuts its drain
        # -P: the working directory is not put first on sys.path, so a checkout's
        # uringserve/ there (the container's WORKDIR) does not shadow the installed
        # package the supervisor runs; load_app() still finds the app's module there
        proc = subprocess.Popen(
            [sys.executable, "-P", "-m", "uringserve", *self.argv],
            pass_fds=passed,
            env=env,
            close_fds=True,
            start_new_session=True,
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
        how = _how(worker, code)
        if self.stopping or worker.retiring or worker.generation != self.generation:
            # A ready worker drains on SIGTERM and aborts on SIGQUIT, exiting 1
            # if it cut work; one that was done already may die of the signal.
            # One that was not ready was killed (_retire): it had no work.
            if worker.killed_unready:
                logger.info("worker %d stopped (%s)", pid, how)
            elif code in (0, -signal.SIGTERM, -signal.SIGQUIT) and not worker.killed:
                logger.info("worker %d stopped", pid)
            else:  # it cut work in flight, crashed, or was killed: the stop was not clean
                logger.warning("worker %d stopped (%s)", pid, how)
                if self.stopping:
                    self.exit_code = 1
            if worker.slot >= self.target and not any(w.slot == worker.slot for w in self.workers.values()):
                self._close_slot(worker.slot)
            return
        if code == 0:  # a planned exit (--max-requests): replace it now
            logger.info("worker %d recycled", pid)
            self.restart_at[worker.slot] = time.monotonic()
            return
        delay_n = 1
        if not worker.ready:
            n = self.failures[worker.slot] = self.failures.get(worker.slot, 0) + 1
            delay_n = n
            if n >= self.start_failures:
                what = f"a worker failed to start {n} times in a row (last: {how})"
                if n == 1:  # --reload: one try
                    what = f"a worker failed to start ({how})"
                if self.previous is not None:
                    self._reload_failed(what)
                    return
                if not self._serving() and self.watcher is not None:  # --reload: the fix is a change away
                    logs.error(f"{self.name}: {what}; waiting for a change to start again", generation=self.generation)
                    self.restart_at[worker.slot] = float("inf")
                    return
                if not self._serving():
                    logs.error(f"{self.name}: {what}; stopping", generation=self.generation)
                    self.exit_code = 1
                    self.stop("now")
                    return
                # others serve: the slot stays empty, tried again slowly rather than taking them down
                logger.error("slot %d: %s; %d worker(s) serve; retrying", worker.slot, what, len(self._serving()))
                delay_n = 100
        delay = min(BACKOFF_MAX, 0.1 * 2 ** (delay_n - 1))
        logger.warning("worker %d died (%s); replacing it in %.1fs", pid, how, delay)
        self.restart_at[worker.slot] = time.monotonic() + delay
        if self.restarts is not None:
            self.restarts.inc()

    def _serving(self) -> list[Worker]:
        return [w for w in self.workers.values() if w.ready and not w.retiring]

    def _reload_failed(self, what: str) -> None:
        """The new generation cannot start: stop it, keep the one serving (as nginx does)."""
        failed, kept = self.generation, self.previous
        assert kept is not None
        logs.error(
            f"{self.name}: reload failed: generation {failed} could not start: {what}; generation {kept} keeps serving",
            generation=failed,
            serving_generation=kept,
        )
        for w in list(self.workers.values()):
            if w.generation == failed and not w.retiring:
                self._retire(w)
        self.generation, self.previous = kept, None
        self.failures.clear()
        self.restart_at.clear()
        self.reload_failures += 1
        if self.reloads is not None:
            self.reloads.labels(result="failed").inc()
        self._pause_recycling(True)

    def _pause_recycling(self, paused: bool) -> None:
        """While the last reload failed, the workers serving do not recycle:
        their replacements would run the code that could not start."""
        if not self.recycling or self._pause_fd < 0 or paused == self.recycling_paused:
            return
        self.recycling_paused = paused
        os.pwrite(self._pause_fd, b"1" if paused else b"0", 0)
        if paused:
            logger.warning(
                "--max-requests recycling paused: a recycled worker would be replaced by the code that cannot "
                "start; the workers serving stay until a reload succeeds"
            )
        else:
            logger.info("--max-requests recycling resumed")

    def _retire(self, w: Worker, sig: int = signal.SIGTERM) -> None:
        """Ask `w` to stop: `sig` if it is ready (SIGTERM drains, SIGQUIT
        aborts); killed if it is not, since it holds no connection and its
        startup may never end (an app's lifespan that hangs) or take no
        signal (Python's default SIGQUIT dumps core)."""
        w.retiring = True
        if not w.ready and w.ready_fd >= 0:
            self._on_ready_pipe(w)  # a ready byte not read yet: it serves
        if w.ready:
            w.proc.send_signal(sig)  # a no-op for one that has exited
        elif not w.killed_unready:
            w.killed_unready = True
            w.proc.kill()

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
            if not w.ready and not w.retiring and not w.timed_out and now - w.started > self.ready_timeout:
                logger.warning("worker %d not ready after %gs: killing it", w.proc.pid, self.ready_timeout)
                w.timed_out = True
                w.proc.kill()

    # -- signals ------------------------------------------------------------------
    def _on_signal(self, signum: int, frame: Any) -> None:
        self._signals.append(signum)

    def _handle(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT) and self.stop_signal is None:
            self.stop_signal = name
        if signum in (signal.SIGTERM, signal.SIGINT):
            if self.stopping:
                self.stop("now", f"a second stop signal ({name}) cut the drain")
            else:
                self.stop("graceful", name)
        elif signum == signal.SIGQUIT:
            self.stop("now", name)
        elif signum == signal.SIGHUP and not self.stopping:
            self.reload()
        elif signum == signal.SIGTTIN and not self.stopping:
            self.target += 1
            logger.info("SIGTTIN: %d workers", self.target)
            self._steer()
        elif signum == signal.SIGTTOU and not self.stopping and self.target > 1:
            self.target -= 1
            logger.info("SIGTTOU: %d workers", self.target)
            self._steer()  # before the removed slot's worker stops accepting
            for w in list(self.workers.values()):
                if w.slot >= self.target and not w.retiring:
                    self._retire(w)

    def stop(self, how: str, why: str = "") -> None:
        """ "graceful": the workers drain (SIGTERM); "now": they abort what
        they have (SIGQUIT). A worker not ready yet is killed (_retire).
        `why` is what the log says did it."""
        if self.stopping == "now":
            return
        if how == "graceful":
            logger.info("%s: draining %d worker(s) (a second signal cuts it short)", why or "stop", len(self.workers))
        elif why:
            logger.warning("%s: the workers abort what they have", why)
        self.stopping = how
        self.stop_deadline = time.monotonic() + (
            self.graceful_timeout + KILL_AFTER if how == "graceful" else KILL_AFTER
        )
        sig = signal.SIGTERM if how == "graceful" else signal.SIGQUIT
        for w in list(self.workers.values()):
            self._retire(w, sig)

    def reload(self, why: str = "SIGHUP") -> None:
        """A new generation; the serving one drains once every new worker is
        ready, or keeps serving if the new one cannot start."""
        if self.previous is None:
            self.previous = self.generation
        else:  # a reload in progress is replaced by this one; the generation serving stays
            for w in list(self.workers.values()):
                if w.generation == self.generation and not w.retiring:
                    self._retire(w)
        self._generations += 1
        self.generation = self._generations
        logger.info("%s: starting generation %d", why, self.generation)
        self.restart_at.clear()
        self.failures.clear()

    def _changes(self, paths: set[str]) -> None:
        if paths and self.previous is not None and not self.stopping:
            from .reload import describe

            logger.info("%s changed during a reload: one more reload after it", describe(paths))
        self.changed |= paths

    def _reload_on_change(self) -> None:
        """--reload: the files changed since the last reload began start a
        generation once the first one served and no reload is in flight, so
        a burst of changes is one reload, and a change during a reload (which
        may have imported the file before it) is one more after it, whether
        that one took or failed. When no worker could start, they start again."""
        if not self.changed:
            return
        from .reload import describe

        why = f"WatchFiles detected changes in {describe(self.changed)}"
        if float("inf") in self.restart_at.values():  # no worker could start: start them again, now
            logger.info("%s: starting the workers again", why)
            self.changed.clear()
            self.restart_at.clear()
            self.failures.clear()
        elif self.announced and self.previous is None:
            self.changed.clear()
            self.reload(why)

    def _retire_old(self) -> None:
        current = [w for w in self.workers.values() if w.generation == self.generation and not w.retiring]
        if len(current) < self.target or not all(w.ready for w in current):
            return
        for w in list(self.workers.values()):
            if w.generation != self.generation and not w.retiring:
                self._retire(w)
        if self.previous is not None:
            logger.info("reload done: generation %d serving", self.generation)
            self.previous = None
            if self.reloads is not None:
                self.reloads.labels(result="ok").inc()
            self._pause_recycling(False)

    # -- the loop -----------------------------------------------------------------
    def ready(self) -> bool:
        """/ready: no drain begun, and as many ready workers serve as there
        are slots (during a reload, the generation serving until it is done)."""
        return not self.stopping and len(self._serving()) >= self.target

    def _start_metrics(self) -> None:
        import tempfile

        # workers write their metrics here (prometheus_client's multiprocess mode); the endpoint sums them
        self._metrics_dir = tempfile.mkdtemp(prefix="uringserve-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = self._metrics_dir
        from . import metrics

        self.restarts = metrics.worker_restarts()
        self.reloads = metrics.reloads()
        assert self.metrics_address is not None
        self.endpoint = metrics.Endpoint(
            *self.metrics_address, metrics.collect(metrics.multiprocess_registry()), self.ready
        )

    def _close(self) -> None:
        """What run() opened: sockets (and socket files), the metrics
        endpoint and directory, the pause byte."""
        for s in self._all_sockets():
            s.close()
        for spec in self.specs:
            spec.close()
        if self.endpoint is not None:
            self.endpoint.close()
        if self._metrics_dir is not None:
            import shutil

            shutil.rmtree(self._metrics_dir, ignore_errors=True)
        if self._pause_fd >= 0:
            os.close(self._pause_fd)
            self._pause_fd = -1
        if self._ticket_fd >= 0:
            os.close(self._ticket_fd)
            self._ticket_fd = -1

    def run(self) -> int:
        try:
            self.open_listeners()
            if self.metrics_address is not None:
                self._start_metrics()
        except OSError as exc:  # a listener that cannot open: one line, as run_command() says it
            logs.error(f"{self.name}: {exc}")
            self._close()
            return 1
        if self.recycling:
            self._pause_fd = os.memfd_create("uringserve-recycling")
            os.pwrite(self._pause_fd, b"0", 0)
        self._ticket_fd = os.memfd_create("uringserve-tls-tickets")
        os.pwrite(self._ticket_fd, os.urandom(32), 0)
        wake_r, wake_w = os.pipe()
        for fd in (wake_r, wake_w):
            os.set_blocking(fd, False)
        old_wakeup = signal.set_wakeup_fd(wake_w)
        handled = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in handled}
        previous[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, self._on_signal)
        self._sel.register(wake_r, selectors.EVENT_READ, None)
        try:
            if self.watcher is not None:
                self.watcher.start()
                self._sel.register(self.watcher.fileno(), selectors.EVENT_READ, self.watcher)
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
                            if not w.killed:
                                logger.warning("worker %d did not stop in time: killing it", w.proc.pid)
                                w.killed = True
                                w.proc.kill()
                        self.stop_deadline = time.monotonic() + KILL_AFTER
                else:
                    self._reload_on_change()
                    self._fill()
                    self._retire_old()
                    self._check_start_timeouts()
                    if not self.announced and self.workers and all(w.ready for w in self.workers.values()):
                        self.announced = True
                        metrics = "" if self.endpoint is None else f", metrics on {self.endpoint.url}"
                        logs.banner(
                            f"{self.name} on {', '.join(self.where)} ({self.target} "
                            f"worker{'s' if self.target != 1 else ''}, supervisor pid {os.getpid()}{metrics})",
                            listeners=self.where,
                            workers=self.target,
                            pid=os.getpid(),
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
                    elif key.data is self.watcher:
                        self._changes(self.watcher.take())
                    else:
                        self._on_ready_pipe(key.data)
        finally:
            if self.watcher is not None:
                self.watcher.stop()
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            for w in self.workers.values():
                w.proc.kill()
                w.proc.wait()
            self._sel.close()
            os.close(wake_r)
            os.close(wake_w)
            self._close()
        if self.stop_signal is not None and not self.announced and self.exit_code == 0:
            # stopped before any worker served: as one process says it (run_command)
            logs.error(f"{self.name}: {self.stop_signal} during startup: stopped before serving")
            self.exit_code = 1
        return self.exit_code


def _how(worker: Worker, code: int) -> str:
    if worker.killed_unready:
        return "not ready: killed"
    if worker.timed_out:
        return "not ready in time: killed"
    if worker.killed:
        return "did not stop in time: killed"
    if code < 0:
        return f"signal {-code}"
    return f"exit status {code}"


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


def ticket_secret() -> bytes | None:
    """The supervisor's TLS session-ticket secret, in a worker; None elsewhere."""
    spec = worker_spec()
    if not spec or "tls_ticket_fd" not in spec:
        return None
    return os.pread(spec["tls_ticket_fd"], 32, 0)


def report_ready(spec: dict[str, Any]) -> None:
    fd = spec["ready_fd"]
    try:
        os.write(fd, b"R")
    except OSError:
        pass
