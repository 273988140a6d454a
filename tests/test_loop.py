"""asyncio's own machinery over UringSelector, on both loops."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import threading
import time

import pytest

import uringserve


def test_timers_fire_in_order(h) -> None:
    fired: list[int] = []

    async def main() -> None:
        for delay, tag in ((0.05, 3), (0.01, 1), (0.03, 2)):
            h.loop.call_later(delay, fired.append, tag)
        h.loop.call_soon(fired.append, 0)
        start = h.loop.time()
        await asyncio.sleep(0.08)
        assert h.loop.time() - start >= 0.08

    h.run(main())
    assert fired == [0, 1, 2, 3]


def test_call_soon_threadsafe_wakes_a_sleeping_loop(h) -> None:
    async def main() -> float:
        fut = h.loop.create_future()
        t0 = time.monotonic()
        threading.Timer(0.1, lambda: h.loop.call_soon_threadsafe(fut.set_result, "woke")).start()
        assert await fut == "woke"
        return time.monotonic() - t0

    # the loop was idle in the ring's wait with no timer due; the self-pipe's
    # poll completion must wake it (DEFER_TASKRUN runs it only when we enter)
    assert h.run(main()) < 5


def test_many_threadsafe_calls_all_run(h) -> None:
    got: list[int] = []

    async def main() -> None:
        done = h.loop.create_future()

        def spam() -> None:
            for i in range(2000):
                h.loop.call_soon_threadsafe(got.append, i)
            h.loop.call_soon_threadsafe(done.set_result, None)

        threading.Thread(target=spam).start()
        await done

    h.run(main())
    assert got == list(range(2000))


def test_add_reader_is_level_triggered(h) -> None:
    """A reader that leaves data unread is called again, as with epoll."""
    a, b = socket.socketpair()
    a.setblocking(False)
    calls: list[bytes] = []

    async def main() -> None:
        done = h.loop.create_future()

        def on_readable() -> None:
            calls.append(a.recv(1))  # one byte at a time: the rest stays readable
            if len(calls) == 5:
                h.loop.remove_reader(a)
                done.set_result(None)

        h.loop.add_reader(a, on_readable)
        b.send(b"abcde")
        await done

    try:
        h.run(main())
    finally:
        a.close()
        b.close()
    assert b"".join(calls) == b"abcde"


def test_add_writer_and_remove(h) -> None:
    a, b = socket.socketpair()
    a.setblocking(False)

    async def main() -> None:
        fut = h.loop.create_future()
        h.loop.add_writer(a, lambda: fut.done() or fut.set_result("w"))
        assert await fut == "w"
        assert h.loop.remove_writer(a)
        assert not h.loop.remove_writer(a)
        assert not h.loop.remove_reader(a)

    try:
        h.run(main())
    finally:
        a.close()
        b.close()


def test_reader_fd_closed_and_reused(h) -> None:
    """remove_reader + close + a new socket on the same fd number works."""

    async def main() -> None:
        for _ in range(20):
            a, b = socket.socketpair()
            fut = h.loop.create_future()
            h.loop.add_reader(a, lambda f=fut, s=a: f.done() or f.set_result(s.recv(10)))
            b.send(b"hi")
            assert await fut == b"hi"
            h.loop.remove_reader(a)
            a.close()
            b.close()

    h.run(main())


def test_sock_level_helpers(h) -> None:
    async def main() -> None:
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        srv.setblocking(False)
        cli = socket.socket()
        cli.setblocking(False)
        await h.loop.sock_connect(cli, srv.getsockname())
        conn, _ = await h.loop.sock_accept(srv)
        conn.setblocking(False)
        await h.loop.sock_sendall(cli, b"ping")
        assert await h.loop.sock_recv(conn, 4) == b"ping"
        for s in (conn, cli, srv):
            s.close()

    h.run(main())


def test_signal_handler(h) -> None:
    async def main() -> None:
        fut = h.loop.create_future()
        h.loop.add_signal_handler(signal.SIGUSR1, fut.set_result, "sig")
        threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGUSR1)).start()
        assert await fut == "sig"
        assert h.loop.remove_signal_handler(signal.SIGUSR1)

    h.run(main())


def test_subprocess(h) -> None:
    async def main() -> None:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            "import sys; sys.stdout.write(sys.stdin.read().upper())",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await proc.communicate(b"hello subprocess")
        assert out == b"HELLO SUBPROCESS"
        assert proc.returncode == 0

    h.run(main())


def test_run_in_executor_and_wait_for(h) -> None:
    async def main() -> None:
        assert await h.loop.run_in_executor(None, sum, [1, 2, 3]) == 6
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.sleep(10), 0.05)

    h.run(main())


def test_uringserve_run_and_policy() -> None:
    async def which() -> str:
        return type(asyncio.get_running_loop()).__name__

    assert uringserve.run(which()) == "UringEventLoop"
    old = asyncio.get_event_loop_policy()
    asyncio.set_event_loop_policy(uringserve.EventLoopPolicy())
    try:
        loop = asyncio.new_event_loop()
        try:
            assert isinstance(loop, uringserve.UringEventLoop)
            assert loop.run_until_complete(which()) == "UringEventLoop"
        finally:
            loop.close()
    finally:
        asyncio.set_event_loop_policy(old)


def test_closing_twice_and_running_closed_loop() -> None:
    loop = uringserve.new_event_loop()
    loop.close()
    loop.close()
    coro = asyncio.sleep(0)
    with pytest.raises(RuntimeError):
        loop.run_until_complete(coro)
    coro.close()


def test_fd_closed_while_registered_does_not_spin(h) -> None:
    """Closing an fd without remove_reader: the loop must not busy-loop on it."""
    a, b = socket.socketpair()
    calls: list[int] = []

    async def main() -> None:
        # spinning is counted in loop iterations (selector waits), not CPU
        # time, which a busy machine would distort
        selector = h.loop._selector
        real_select = selector.select
        waits = [0]

        def select(timeout=None):
            waits[0] += 1
            return real_select(timeout)

        selector.select = select
        h.loop.add_reader(a.fileno(), calls.append, 1)
        fd = a.fileno()
        a.close()
        await asyncio.sleep(0.3)
        h.loop.remove_reader(fd)
        selector.select = real_select
        # an idle 0.3 s is a few waits (the sleep's timer, a wakeup); a spinning loop makes thousands
        assert waits[0] < 20, f"loop spun: {waits[0]} selector waits while idle"

    try:
        h.run(main())
    finally:
        b.close()
    assert len(calls) <= 1


@pytest.mark.filterwarnings("ignore:unclosed:ResourceWarning")  # connections left open on purpose
@pytest.mark.parametrize("name", ["asyncio", "uring"])
def test_loop_run_in_another_thread_then_closed_here(name: str) -> None:
    """asyncio allows creating a loop in one thread, running it in another and
    closing it in the first. UringEventLoop binds its ring to the thread that
    runs it: closing from elsewhere works and leaves nothing behind; running it
    from a second thread is refused with a precise error."""
    import gc

    from conftest import LOOPS, fd_targets, open_fds

    class Echo(asyncio.Protocol):
        def connection_made(self, t) -> None:
            self.t = t

        def data_received(self, d: bytes) -> None:
            self.t.write(d)

    gc.collect()
    before = open_fds()
    loop = LOOPS[name]()

    async def work() -> bytes:
        srv = await loop.create_server(Echo, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"ping")
        got = await r.readexactly(4)
        srv.close()  # the connections are left open on purpose
        return got

    out: dict = {}
    th = threading.Thread(target=lambda: out.update(got=loop.run_until_complete(work())))
    th.start()
    th.join(20)
    assert out["got"] == b"ping"
    coro = asyncio.sleep(0)
    if name == "uring":
        with pytest.raises(RuntimeError, match="bound to the thread that first ran it"):
            loop.run_until_complete(coro)
    else:
        loop.run_until_complete(coro)
    coro.close()
    loop.close()
    gc.collect()
    leaked = open_fds() - before
    assert not leaked, fd_targets(leaked)


def test_callback_checks_match_asyncio(h) -> None:
    """In debug mode call_soon/call_later/call_at refuse coroutines and
    non-callables with asyncio's messages (outside it asyncio checks nothing,
    and neither do we); every kind of callable works."""
    import functools

    async def coro_fn() -> None:
        pass

    class C:
        def m(self) -> None:
            got.append("m")

        async def am(self) -> None:
            pass

        def __call__(self) -> None:
            got.append("call")

    got: list = []
    loop = h.loop
    loop.set_debug(True)
    for method, call in (
        ("call_soon", lambda cb: loop.call_soon(cb)),
        ("call_at", lambda cb: loop.call_at(loop.time(), cb)),
        ("call_later", lambda cb: loop.call_later(0, cb)),
    ):
        name = "call_at" if method == "call_later" else method
        for bad in (coro_fn, C().am, functools.partial(coro_fn)):
            with pytest.raises(TypeError, match=f"coroutines cannot be used with {name}"):
                call(bad)
        coro = coro_fn()
        with pytest.raises(TypeError, match=f"coroutines cannot be used with {name}"):
            call(coro)
        coro.close()
        with pytest.raises(TypeError, match=f"a callable object was expected by {name}"):
            call(42)
    with pytest.raises(TypeError, match="delay must not be None"):
        loop.call_later(None, print)
    loop.set_debug(False)
    with pytest.raises(TypeError, match="delay must not be None"):
        loop.call_later(None, print)

    async def main() -> None:
        fut = loop.create_future()
        loop.call_soon(C().m)
        loop.call_soon(C())
        loop.call_soon(functools.partial(got.append, "partial"))
        loop.call_soon(got.append, "builtin")
        loop.call_later(0.01, fut.set_result, "timer")
        h_ = loop.call_later(0.02, got.append, "cancelled")
        h_.cancel()
        assert await fut == "timer"
        await asyncio.sleep(0.05)

    h.run(main())
    assert got == ["m", "call", "partial", "builtin"]


def test_debug_mode_keeps_source_tracebacks(h) -> None:
    h.loop.set_debug(True)
    handle = h.loop.call_soon(print)
    timer = h.loop.call_later(10, print)
    assert handle._source_traceback and timer._source_traceback
    handle.cancel()
    timer.cancel()
    h.loop.set_debug(False)


def test_create_eager_task_runs_the_first_step_at_once() -> None:
    loop = uringserve.new_event_loop()
    log: list = []

    async def quick() -> str:
        log.append(("quick", asyncio.current_task() is not None))
        return "done"

    async def waits() -> str:
        log.append("waits: before")
        await asyncio.sleep(0)
        log.append("waits: after")
        return "later"

    def from_a_callback() -> None:
        t1 = loop.create_eager_task(quick())
        log.append(("t1 done at once", t1.done() and t1.result() == "done"))
        t2 = loop.create_eager_task(waits())
        log.append(("t2 done at once", t2.done()))
        holder.extend([t1, t2])

    async def inside_a_task() -> None:
        t3 = loop.create_eager_task(quick())  # another task is running: an ordinary task
        log.append(("t3 done at once", t3.done()))
        await t3

    holder: list = []
    try:
        loop.call_soon(from_a_callback)
        loop.run_until_complete(asyncio.sleep(0.01))
        loop.run_until_complete(holder[1])
        loop.run_until_complete(inside_a_task())
    finally:
        loop.close()
    assert log[:5] == [
        ("quick", True),
        ("t1 done at once", True),
        "waits: before",
        ("t2 done at once", False),
        "waits: after",
    ]
    if sys.version_info >= (3, 12):  # eager_start runs even inside another task
        assert log[5:] == [("quick", True), ("t3 done at once", True)]
    else:
        assert log[5:] == [("t3 done at once", False), ("quick", True)]


def test_writes_reach_the_kernel_when_the_loop_stops() -> None:
    """asyncio's write() sends at once; a ring sends at its next enter. The
    loop submits when run_until_complete() returns, so bytes written in the
    last round arrive even if the loop is never run again."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen()
    loop = uringserve.new_event_loop()
    try:

        async def connect() -> None:
            tr, _ = await loop.create_connection(asyncio.Protocol, *lsock.getsockname())
            await asyncio.sleep(0.01)
            holder.append(tr)

        holder: list = []
        loop.run_until_complete(connect())

        def write_and_stop() -> None:  # the loop's last round: no select() after it
            holder[0].write(b"last words" * 1000)
            loop.stop()

        loop.call_soon(write_and_stop)
        loop.run_forever()
        peer, _ = lsock.accept()
        peer.settimeout(2)
        got = b""
        while len(got) < 10000:
            got += peer.recv(65536)
        assert got == b"last words" * 1000
        peer.close()
        holder[0].close()
        loop.run_until_complete(asyncio.sleep(0.01))
    finally:
        loop.close()
        lsock.close()


def test_many_timers_with_cancellations_fire_in_order(h) -> None:
    """Enough timers, mostly cancelled, to take the heap-compaction path:
    the live ones fire in time order and no cancelled one fires."""
    fired: list = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        base = loop.time() + 0.05
        handles = []
        for i in range(600):
            when = base + (i % 7) * 0.01  # repeated deadlines
            handles.append((i, when, loop.call_at(when, fired.append, i)))
        for i, _, th in handles:
            if i % 3:
                th.cancel()
        await asyncio.sleep(0.2)
        whens = {i: when for i, when, _ in handles}
        assert sorted(fired) == [i for i in range(600) if not i % 3]  # every live one, no cancelled one
        fired_whens = [whens[i] for i in fired]
        assert fired_whens == sorted(fired_whens)  # in time order (asyncio orders ties arbitrarily)

    h.run(main())


def test_debug_mode_reports_slow_callbacks(h, caplog) -> None:
    h.loop.set_debug(True)
    h.loop.slow_callback_duration = 0.01

    def slow() -> None:
        time.sleep(0.03)

    async def main() -> None:
        asyncio.get_running_loop().call_later(0.001, slow)
        await asyncio.sleep(0.1)

    with caplog.at_level("WARNING", logger="asyncio"):
        h.run(main())
    h.loop.set_debug(False)
    assert any("took" in r.getMessage() and "slow" in r.getMessage() for r in caplog.records)


def test_every_event_kind_the_core_declares_has_a_place_in_the_loop(monkeypatch) -> None:
    """ring.EVENTS is core.h's US_EVENTS list: it names every US_EV_* the
    core defines, and a kind the loop does not place stops the loop's
    dispatch table from being made (a new kind is a line of
    _CONNECTION_EVENTS and a transport method, or one of the loop's own)."""
    from uringserve import loop as loop_module
    from uringserve._native import lib
    from uringserve.ring import EVENTS

    assert EVENTS == {name[6:]: getattr(lib, name) for name in dir(lib) if name.startswith("US_EV_")}
    table = loop_module._handler_table()
    assert [name for name, kind in EVENTS.items() if table[kind] is not None] == sorted(
        loop_module._CONNECTION_EVENTS, key=EVENTS.__getitem__
    )
    monkeypatch.setattr(loop_module, "EVENTS", {**EVENTS, "NEW": max(EVENTS.values()) + 1})
    with pytest.raises(RuntimeError, match="NEW"):
        loop_module._handler_table()
