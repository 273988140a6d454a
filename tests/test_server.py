"""uringserve.server on the stdlib loop and on UringEventLoop: every kind of
listener (TCP v4/v6/dual stack, Unix path with mode, stale and live socket
files, abstract names, inherited sockets and fds), the registry's counts,
the idle timer, and the drain contract (idle connections close at once,
busy ones finish, the rest is cut at the timeout and their tasks awaited)."""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import socket
import stat
import subprocess
import sys
from typing import Any

import pytest
from conftest import until

from uringserve.server import KIND_IDLE, KIND_USER, TCP, Connection, Inherited, Server, Unix

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Echo(Connection, asyncio.Protocol):
    transports: list[str] = []

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        Echo.transports.append(type(transport).__name__)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)
        self.touch()


class PlainUpper(asyncio.Protocol):
    """Not a Connection: the server wraps it."""

    def connection_made(self, transport: Any) -> None:
        self.t = transport

    def data_received(self, data: bytes) -> None:
        self.t.write(data.upper())


async def roundtrip(family: int, addr: Any, payload: bytes = b"ping") -> bytes:
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(s, addr)
    except OSError:
        s.close()
        raise
    reader, writer = await asyncio.open_connection(sock=s)
    writer.write(payload)
    data = await reader.readexactly(len(payload))
    writer.close()
    await writer.wait_closed()
    return data


def expected_transport(h) -> str:
    # on UringEventLoop every listener kind is accepted through the ring
    return "UringTransport" if h.uring else "_SelectorSocketTransport"


def ipv6_or_skip() -> None:
    """Skip where this host has no IPv6 loopback (a container or kernel
    without IPv6), as test_hard_paths does: these tests need one."""
    if not socket.has_ipv6:
        pytest.skip("Python was built without IPv6")
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")


def test_tcp_v4_v6_and_dual_stack(h) -> None:
    ipv6_or_skip()

    async def main() -> None:
        Echo.transports = []
        srv = Server(Echo)
        await srv.start(listeners=[TCP("127.0.0.1", 0), TCP("::1", 0), TCP("::", 0, dual_stack=True)])
        v4, v6, dual = (s.getsockname() for s in srv.sockets)
        assert await roundtrip(socket.AF_INET, v4[:2]) == b"ping"
        assert await roundtrip(socket.AF_INET6, v6[:2]) == b"ping"
        assert await roundtrip(socket.AF_INET, ("127.0.0.1", dual[1])) == b"ping"  # v4 on the v6 socket
        assert await roundtrip(socket.AF_INET6, ("::1", dual[1])) == b"ping"
        assert Echo.transports == [expected_transport(h)] * 4
        assert srv.connections.counts()["accepted"] == 4
        await srv.shutdown(2)

    h.run(main())


def test_ipv6_only_refuses_ipv4(h) -> None:
    ipv6_or_skip()

    async def main() -> None:
        srv = Server(Echo)
        await srv.start(listeners=[TCP("::", 0, dual_stack=False)])
        port = srv.sockets[0].getsockname()[1]
        with pytest.raises(ConnectionRefusedError):
            await roundtrip(socket.AF_INET, ("127.0.0.1", port))
        await srv.shutdown(2)

    h.run(main())


def test_unix_socket_with_mode_removed_at_shutdown(h, tmp_path) -> None:
    path = str(tmp_path / "s.sock")

    async def main() -> None:
        Echo.transports = []
        srv = Server(Echo)
        await srv.start(uds=path, uds_mode=0o660)  # group-writable: more than the usual umask lets through
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
        assert await roundtrip(socket.AF_UNIX, path, b"x" * 100_000) == b"x" * 100_000
        assert Echo.transports == [expected_transport(h)]
        await srv.shutdown(2)
        assert not os.path.exists(path)

    h.run(main())


@pytest.mark.parametrize("umask,mode", [(0o022, 0o755), (0o077, 0o700), (0o002, 0o775)])
def test_unix_socket_without_a_mode_gets_what_the_umask_leaves(h, tmp_path, umask: int, mode: int) -> None:
    """The README's promise for Unix(path) without `mode`: 0o777 less the
    umask (0o755 under the usual 022: only the owner may connect)."""
    path = str(tmp_path / "u.sock")

    async def main() -> None:
        srv = Server(Echo)
        old = os.umask(umask)
        try:
            await srv.start(listeners=[Unix(path)])
        finally:
            os.umask(old)
        assert stat.S_IMODE(os.stat(path).st_mode) == mode
        assert await roundtrip(socket.AF_UNIX, path) == b"ping"
        await srv.shutdown(2)

    h.run(main())


def test_unix_peer_and_local_names(h, tmp_path) -> None:
    path = str(tmp_path / "names.sock")
    # abstract: a name longer than the 26 path bytes the accept event holds
    client_path = f"\0uringserve-test-client-name-longer-than-26-{os.getpid()}"
    seen: dict[str, Any] = {}

    class Names(Connection, asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            seen["peer"] = transport.get_extra_info("peername")
            seen["sock"] = transport.get_extra_info("sockname")
            transport.write(b"k")

    async def main() -> None:
        srv = Server(Names)
        await srv.start(uds=path)
        for bind in (None, client_path):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            if bind:
                s.bind(bind)
            s.setblocking(False)
            await asyncio.get_running_loop().sock_connect(s, path)
            assert await asyncio.get_running_loop().sock_recv(s, 1) == b"k"
            s.close()
            assert seen == {"peer": bind.encode() if bind else "", "sock": path}
        await srv.shutdown(2)

    h.run(main())


def test_stale_socket_file_is_replaced(h, tmp_path) -> None:
    path = str(tmp_path / "stale.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)
    dead.close()  # the file stays, nobody listens: what a killed server leaves

    async def main() -> None:
        srv = Server(Echo)
        await srv.start(uds=path)
        assert await roundtrip(socket.AF_UNIX, path) == b"ping"
        await srv.shutdown(2)

    h.run(main())


def test_a_live_socket_or_a_plain_file_is_not_replaced(h, tmp_path) -> None:
    live_path, file_path = str(tmp_path / "live.sock"), str(tmp_path / "file")
    with open(file_path, "w") as f:
        f.write("keep me")

    async def main() -> None:
        first = Server(Echo)
        await first.start(uds=live_path)
        second = Server(Echo)
        with pytest.raises(OSError, match="another server is listening on it") as e:
            await second.start(uds=live_path)
        assert e.value.errno == 98
        assert await roundtrip(socket.AF_UNIX, live_path) == b"ping"  # the first still serves
        with pytest.raises(OSError) as e:
            await Server(Echo).start(uds=file_path)
        assert (e.value.errno, e.value.strerror) == (
            errno.EEXIST,
            f"cannot listen on {file_path}: it exists and is not a socket; not replacing it",
        )
        with open(file_path) as f:
            assert f.read() == "keep me"
        # a path that cannot be bound: the OS's errno and reason, with the path
        missing = str(tmp_path / "no-such-dir" / "s.sock")
        with pytest.raises(OSError) as e:
            await Server(Echo).start(uds=missing)
        why = f"cannot listen on {missing}: No such file or directory"
        assert (e.value.errno, e.value.strerror) == (errno.ENOENT, why)
        await first.shutdown(2)

    h.run(main())


def test_abstract_unix_name(h) -> None:
    name = f"@uringserve-test-{os.getpid()}-{h.name}"

    async def main() -> None:
        srv = Server(PlainUpper)
        await srv.start(uds=name)
        assert await roundtrip(socket.AF_UNIX, "\0" + name[1:]) == b"PING"
        await srv.shutdown(2)
        with pytest.raises(ConnectionRefusedError):
            await roundtrip(socket.AF_UNIX, "\0" + name[1:])

    h.run(main())
    with pytest.raises(ValueError, match="abstract"):
        Unix("@x", mode=0o600).open()


def test_an_inherited_socket_is_described_by_its_address_fd_and_name() -> None:
    """What the start-up banner says of an inherited socket (socket activation's name when it has one)."""
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", 0))
        where = f"127.0.0.1:{s.getsockname()[1]}"
        assert Inherited(s).describe(s) == f"{where} (fd {s.fileno()})"
        assert Inherited(s, name="web").describe(s) == f"{where} (fd {s.fileno()}, web)"
    finally:
        s.close()


def test_a_socket_given_to_start_listens_with_the_backlog_given(h) -> None:
    """start(sock=..., backlog=N): the socket listens with N (ss shows a
    listener's backlog as its Send-Q)."""

    async def main() -> str:
        bound = socket.socket()
        bound.bind(("127.0.0.1", 0))  # bound, not listening: start() listens
        srv = Server(Echo)
        await srv.start(sock=bound, backlog=7)
        port = srv.sockets[0].getsockname()[1]
        try:
            ss = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, timeout=30)
        finally:
            await srv.shutdown(2)
        return ss.stdout

    (line,) = h.run(main()).splitlines()
    assert line.split()[:3] == ["LISTEN", "0", "7"], line


def test_an_unknown_loop_is_refused_naming_the_choices() -> None:
    from uringserve.server.lifecycle import new_loop

    with pytest.raises(ValueError, match=r"^loop must be one of uring, asyncio, uvloop, not 'tokio'$"):
        new_loop("tokio")


def test_inherited_socket_and_fd(h) -> None:
    async def main() -> None:
        bound = socket.socket()
        bound.bind(("127.0.0.1", 0))  # bound, not listening: start() listens
        raw = socket.socket()
        raw.bind(("127.0.0.1", 0))
        raw.listen()
        fd = raw.detach()  # a bare fd, as socket activation passes it
        srv = Server(PlainUpper)
        await srv.start(listeners=[Inherited(bound), Inherited(fd)])
        for s in srv.sockets:
            assert await roundtrip(socket.AF_INET, s.getsockname()) == b"PING"
        await srv.shutdown(2)
        with pytest.raises(OSError):
            os.fstat(fd)  # the server owned it and closed it

    h.run(main())


def test_connections_accepted_as_a_listener_stops_are_served(h) -> None:
    """Prefork workers share a listening socket: a worker that stops must not
    drop a connection it already took from the backlog. Clients connect and
    the first server stops in the same loop turn (on the ring, accepts armed
    in the kernel complete as they are cancelled); a second server on the
    same socket serves the rest. Every client gets its echo."""

    class FirstEcho(Echo):
        """Drains as HTTP does a new connection: after answering its first message."""

        draining = answered = False

        def shutdown(self) -> None:
            self.draining = True
            if self.answered:
                self.transport.close()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self.answered = True
            if self.draining:
                self.transport.close()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        shared = socket.socket()
        shared.bind(("127.0.0.1", 0))
        shared.listen(128)
        addr = shared.getsockname()
        first = Server(FirstEcho)
        await first.start(listeners=[Inherited(shared.dup())])
        clients = []
        for i in range(24):
            c = socket.create_connection(addr)  # blocking: the handshake completes in the kernel
            c.sendall(b"client %02d\n" % i)
            clients.append(c)
        stopping = asyncio.ensure_future(first.shutdown(5))  # in this same turn
        second = Server(FirstEcho)
        await second.start(listeners=[Inherited(shared.dup())])

        def read(c: socket.socket) -> bytes:
            c.settimeout(10)
            data = b""
            while len(data) < 10:
                chunk = c.recv(64)
                if not chunk:
                    break
                data += chunk
            return data

        got = await asyncio.gather(*(loop.run_in_executor(None, read, c) for c in clients))
        assert got == [b"client %02d\n" % i for i in range(24)]
        # the first server's drain reached its late connections too: it ends
        # while every client still holds its connection open
        await asyncio.wait_for(stopping, 3)
        for c in clients:
            c.close()
        await second.shutdown(5)
        shared.close()

    h.run(main())


def test_inherited_fds_that_cannot_serve_are_refused_clearly(h, tmp_path) -> None:
    async def main() -> None:
        with open(tmp_path / "f", "w") as f:
            with pytest.raises(OSError, match=f"inherited fd {f.fileno()} is not a socket"):
                await Server(Echo).start(sock=f.fileno())
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with pytest.raises(OSError, match="not a stream socket"):
            await Server(Echo).start(sock=udp)
        udp.close()
        r, w = os.pipe()
        os.close(r)
        os.close(w)
        with pytest.raises(OSError, match=f"inherited fd {r} is not open") as e:
            await Server(Echo).start(sock=r)
        assert e.value.errno == errno.EBADF

    h.run(main())


def test_a_listener_that_fails_closes_the_others_and_runs_on_stop(h) -> None:
    stops: list[int] = []

    class S(Server):
        async def on_stop(self) -> None:
            stops.append(1)

    async def main() -> None:
        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        srv = S(Echo)
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port}"):
            await srv.start(listeners=[TCP("127.0.0.1", 0), TCP("127.0.0.1", port)])
        assert stops == [1] and not srv.sockets
        taken.close()

    h.run(main())


class Watched(Echo):
    """Echo that notes, on the loop's clock (the one its deadline uses), when
    it was made, each read, and when its deadline fired: what the server
    itself saw, whatever the load."""

    idle_timeout = 0.3

    def connection_made(self, transport: Any) -> None:
        self.clock = asyncio.get_running_loop().time
        self.seen = [self.clock()]  # before the deadline is set: it cannot be earlier than this + timeout
        self.fired: tuple[int, float] | None = None
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.seen.append(self.clock())
        super().data_received(data)  # touch()

    def timed_out(self, kind: int) -> None:
        self.fired = (kind, self.clock())
        super().timed_out(kind)


def test_idle_timeout_closes_only_idle_connections(h) -> None:
    """An idle connection is closed by its timer, and not before
    idle_timeout has passed; one that keeps sending for three idle timeouts
    stays open (touch() moved its deadline on). If the busy one is closed
    anyway, the server's own clock must show it quiet for a whole timeout
    (a loop stalled that long on a loaded machine: closing it was right);
    that round shows nothing, and is run again."""
    timeout = Watched.idle_timeout

    async def round_(srv: Server, port: int) -> bool:
        idle_r, idle_w = await asyncio.open_connection("127.0.0.1", port)
        busy_r, busy_w = await asyncio.open_connection("127.0.0.1", port)
        assert await until(lambda: len(srv.connections) == 2)
        by_port = {c.transport.get_extra_info("peername")[1]: c for c in srv.connections}
        idle = by_port[idle_w.get_extra_info("sockname")[1]]
        busy = by_port[busy_w.get_extra_info("sockname")[1]]
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            while loop.time() - start < 3 * timeout:
                busy_w.write(b"x")  # back to back: quiet for a few loop turns, not for a timeout
                if await busy_r.read(1) != b"x":
                    break
        except ConnectionError:
            pass  # the server closed it while a ping was on its way: judged below
        assert await asyncio.wait_for(idle_r.read(), 10) == b""  # closed by the timer
        assert idle.fired is not None and idle.fired[0] == KIND_IDLE
        assert idle.fired[1] - idle.seen[0] >= timeout  # not early
        if busy.fired is None:  # touch() kept it open past its first deadline, three times over
            assert not busy_r.at_eof() and list(srv.connections) == [busy]
            assert busy.seen[-1] - busy.seen[0] >= 2 * timeout
        else:  # closed: right only if the server saw it quiet for a whole timeout
            assert busy.fired[0] == KIND_IDLE and busy.fired[1] - busy.seen[-1] >= timeout, (busy.fired, busy.seen[-3:])
        for w in (idle_w, busy_w):
            w.close()
        assert await until(lambda: not srv.connections)
        return busy.fired is None

    async def main() -> None:
        srv = Server(Watched)
        await srv.start("127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        for _ in range(5):
            if await round_(srv, port):
                break
        else:
            pytest.fail("the loop stalled for a whole idle timeout in every round: nothing was shown")
        await srv.shutdown(2)

    h.run(main(), timeout=60)


class Job(Connection, asyncio.Protocol):
    """A request is a line; the answer comes `delay` seconds later from a
    task. Drain: close when no job runs."""

    delay = 0.2
    gate: asyncio.Event | None = None  # when set: the job answers once the test opens it, not after `delay`
    aborted = 0

    def __init__(self) -> None:
        self.task: asyncio.Task | None = None
        self.draining = False

    def data_received(self, data: bytes) -> None:
        self.task = asyncio.get_running_loop().create_task(self.answer(data))

    async def answer(self, data: bytes) -> None:
        if self.gate is not None:
            await self.gate.wait()
        else:
            await asyncio.sleep(self.delay)
        self.transport.write(b"done:" + data)
        self.task = None
        if self.draining:
            self.transport.close()

    def shutdown(self) -> None:
        self.draining = True
        if self.task is None:
            self.transport.close()

    def abort(self) -> list[asyncio.Task]:
        Job.aborted += 1
        super().abort()
        tasks = [self.task] if self.task is not None else []
        for t in tasks:
            t.cancel()
        return tasks


def test_drain_finishes_busy_closes_idle_at_once(h) -> None:
    """The idle connection is closed while the busy one's job is still held
    (it cannot finish until the test lets it): the drain does not wait for
    the busy one first. Then the job finishes, is answered, and closes."""

    class Held(Job):
        gate = asyncio.Event()

    async def main() -> None:
        srv = Server(Held)
        await srv.start("127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        idle_r, idle_w = await asyncio.open_connection("127.0.0.1", port)
        busy_r, busy_w = await asyncio.open_connection("127.0.0.1", port)
        busy_w.write(b"j1")
        assert await until(lambda: len(srv.connections) == 2 and any(c.task for c in srv.connections))
        stop = asyncio.create_task(srv.shutdown(30))
        assert await asyncio.wait_for(idle_r.read(), 10) == b""  # closed while the job is held
        assert len(srv.connections) == 1 and not stop.done() and not busy_r.at_eof()
        Held.gate.set()
        assert await asyncio.wait_for(busy_r.read(), 10) == b"done:j1"  # finished, then closed
        await stop
        assert not srv.connections and srv.connections.counts() == {"open": 0, "accepted": 2, "closed": 2}
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)  # not accepting
        busy_w.close()
        idle_w.close()

    h.run(main())


def test_drain_cuts_what_outlasts_the_timeout_and_awaits_its_tasks(h) -> None:
    async def main() -> None:
        Job.aborted = 0

        class Slow(Job):
            delay = 60

        srv = Server(Slow)
        await srv.start("127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"slow")
        assert await until(lambda: any(c.task for c in srv.connections))
        task = next(iter(srv.connections)).task
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await srv.shutdown(0.2)
        assert 0.15 < loop.time() - t0 < 5
        assert Job.aborted == 1 and task.cancelled()  # awaited: no task outlives the server
        assert await r.read() == b""
        w.close()

    h.run(main())


def test_cut_ends_a_drain_at_once_and_says_so(h, caplog: pytest.LogCaptureFixture) -> None:
    """Server.cut() without a reason: the busy connection is aborted now,
    not at the 30 s timeout, and the log line says the drain was cut."""

    class Held(Job):
        gate = asyncio.Event()  # never set: only the cut ends the job

    async def main() -> None:
        Job.aborted = 0
        srv = Server(Held)
        await srv.start("127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"held")
        assert await until(lambda: any(c.task for c in srv.connections))
        stop = asyncio.create_task(srv.shutdown(30))
        assert await until(lambda: srv.connections.counts()["open"] == 1 and not srv.sockets)  # draining
        srv.cut()
        await asyncio.wait_for(stop, 10)
        assert Job.aborted == 1 and srv.aborted == 1
        assert await r.read() == b""
        w.close()

    with caplog.at_level("WARNING", logger="uringserve"):
        h.run(main())
    assert "the drain was cut short: aborting 1 connection(s) with work in flight" in caplog.messages


class Blast(asyncio.Protocol):
    """Not a Connection: writes 4 MiB at once, more than the socket buffers take."""

    SIZE = 4 << 20

    def connection_made(self, transport: Any) -> None:
        transport.write(bytes(range(256)) * (self.SIZE // 256))


def test_a_plain_protocol_drains_by_closing_after_what_was_written(h) -> None:
    async def main() -> None:
        srv = Server(Blast)
        await srv.start("127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        r, w = await asyncio.open_connection("127.0.0.1", port)
        assert await r.readexactly(256) == bytes(range(256))
        stop = asyncio.create_task(srv.shutdown(10))  # the rest is still queued in the transport
        rest = await r.read()
        await stop
        assert len(rest) == Blast.SIZE - 256 and rest[:256] == bytes(range(256))  # all of it, then EOF
        w.close()

    h.run(main())


def test_serve_forever_cancelled_shuts_down(h) -> None:
    async def main() -> None:
        srv = Server(Echo)
        await srv.start("127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        r, w = await asyncio.open_connection("127.0.0.1", port)
        forever = asyncio.create_task(srv.serve_forever())
        await asyncio.sleep(0)
        forever.cancel()
        with pytest.raises(asyncio.CancelledError):
            await forever
        assert await r.read() == b"" and not srv.serving
        w.close()
        with pytest.raises(RuntimeError, match="already started"):
            await srv.start("127.0.0.1", 0)

    h.run(main())


SERVE = """
import sys
from uringserve.server import Server
sys.path.insert(0, {tests!r})
from test_server import Job


class Acked(Job):
    def data_received(self, data):
        self.transport.write(b"+")  # the client signals once the job runs
        super().data_received(data)


Job.delay = float(sys.argv[2])
Server(Acked, shutdown_timeout=30).run(uds=sys.argv[1], loop={loop!r}, ready=lambda s: print("ready", flush=True))
print("stopped", flush=True)
"""


@pytest.mark.parametrize("loop", ["uring", "asyncio"])
@pytest.mark.parametrize("signals", [1, 2], ids=["drain", "second-signal-cuts"])
def test_run_drains_on_sigterm_and_a_second_signal_cuts(tmp_path, loop: str, signals: int) -> None:
    path = str(tmp_path / "run.sock")
    code = SERVE.format(tests=os.path.join(ROOT, "tests"), loop=loop)
    proc = subprocess.Popen(
        [sys.executable, "-c", code, path, "1.0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        c = socket.socket(socket.AF_UNIX)
        c.settimeout(20)
        c.connect(path)
        c.sendall(b"job")
        assert c.recv(1) == b"+"
        proc.send_signal(signal.SIGTERM)
        if signals == 2:
            proc.send_signal(signal.SIGINT)
        got = b""
        while chunk := c.recv(100):
            got += chunk
        assert got == (b"done:job" if signals == 1 else b"")
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        assert out == "stopped\n"
        assert not os.path.exists(path)
        c.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_demo_whose_listener_cannot_open_says_so_in_one_line() -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        out = subprocess.run(
            [sys.executable, os.path.join(ROOT, "apps", "echo.py"), "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        taken.close()
    assert out.returncode == 1
    assert out.stderr == f"echo: [Errno 98] cannot listen on 127.0.0.1:{port}: Address already in use\n"


def test_a_deadline_moved_earlier_fires_at_the_earlier_time(h) -> None:
    fired = asyncio.Event()

    class Early(Connection, asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self.set_deadline(KIND_USER, 60)
            self.set_deadline(KIND_USER, 0.05)  # the handle made for 60 s must not be the one that fires

        def timed_out(self, kind: int) -> None:
            fired.set()
            super().timed_out(kind)

    async def main() -> None:
        srv = Server(Early)
        await srv.start("127.0.0.1", 0)
        r, w = await asyncio.open_connection(*srv.sockets[0].getsockname()[:2])
        await asyncio.wait_for(fired.wait(), 10)
        assert await r.read() == b""
        w.close()
        await srv.shutdown(2)

    h.run(main())


class PlainBuffered(asyncio.BufferedProtocol):
    """Not a Connection: a BufferedProtocol the server wraps as one."""

    def __init__(self) -> None:
        self.buf = bytearray(64)

    def connection_made(self, transport: Any) -> None:
        self.t = transport

    def get_buffer(self, sizehint: int) -> Any:
        return memoryview(self.buf)

    def buffer_updated(self, nbytes: int) -> None:
        self.t.write(b"%d:" % nbytes + bytes(self.buf[:nbytes]).swapcase())  # the count it was given, too


def test_a_plain_buffered_protocol_is_served_as_one(h) -> None:
    async def main() -> None:
        srv = Server(PlainBuffered)
        await srv.start(port=0)  # the default host: 127.0.0.1
        host, port = srv.sockets[0].getsockname()[:2]
        assert host == "127.0.0.1"
        r, w = await asyncio.open_connection(host, port)
        w.write(b"MiXeD")
        assert await r.readexactly(7) == b"5:mIxEd"
        w.close()
        await w.wait_closed()
        assert srv.connections.counts()["accepted"] == 1
        await srv.shutdown(2)

    h.run(main())


def test_shutdown_timeout_must_be_positive() -> None:
    assert Server(Echo, shutdown_timeout=0.5).shutdown_timeout == 0.5
    for bad in (0, -1):
        with pytest.raises(ValueError, match="shutdown_timeout must be a positive number of seconds"):
            Server(Echo, shutdown_timeout=bad)


def test_an_inherited_socket_that_cannot_listen_says_why(h) -> None:
    async def main() -> None:
        other = socket.socket()
        other.bind(("127.0.0.1", 0))
        other.listen()
        connected = socket.create_connection(other.getsockname())
        with pytest.raises(OSError, match="inherited socket .* cannot listen: Invalid argument") as e:
            await Server(Echo).start(sock=connected)  # a connected socket cannot listen
        assert e.value.errno == errno.EINVAL
        connected.close()
        other.close()

    h.run(main())
