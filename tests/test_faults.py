"""Echo traffic under injected kernel faults (uringserve.faults).

The server runs on a UringEventLoop with a fault plan; its clients run on a
stdlib loop in a thread, so only the server's ring fails. For each operation
and error: every connection either completes byte-exact or ends with a clean
error whose partial data is a prefix of what it was owed; the faults really
fired; the server keeps accepting; and nothing is left behind (fds, fixed
slots, provided buffers, arena chunks and segments, transports, tasks).
"""

from __future__ import annotations

import asyncio
import errno
import gc
import http.client
import json
import os
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from conftest import Proc, fd_targets, open_fds
from test_hard_paths import run_uring

import uringserve
from loadtest import build_plan, run
from loadtest.engine import LOAD_ERRORS
from uringserve import RingConfig, faults
from uringserve.loop import UringEventLoop
from uringserve.ring import Ring
from uringserve.server import new_loop

OK, ERROR = "ok", "error"


@dataclass
class Run:
    outcomes: list[str]
    counts: dict[str, tuple[int, int]]
    stats: dict[str, int]
    errors: list[dict]
    made: int
    lost: int


class Echo(asyncio.Protocol):
    made = lost = 0

    def connection_made(self, transport) -> None:
        Echo.made += 1
        self.t = transport

    def data_received(self, data: bytes) -> None:
        self.t.write(data)

    def connection_lost(self, exc) -> None:
        Echo.lost += 1


def message(conn: int, rnd: int, size: int) -> bytes:
    head = f"{conn}:{rnd}:".encode()
    return (head + os.urandom(32)) * (size // (len(head) + 32) + 1)


async def client(port: int, conn: int, rounds: int, size: int) -> str:
    """OK, ERROR, or raises AssertionError on a byte that was not sent."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return ERROR
    try:
        for rnd in range(rounds):
            msg = message(conn, rnd, size)
            writer.write(msg)
            try:
                got = await reader.readexactly(len(msg))
            except asyncio.IncompleteReadError as e:
                assert msg.startswith(e.partial), f"conn {conn} round {rnd}: received bytes never sent"
                return ERROR
            assert got == msg, f"conn {conn} round {rnd}: echo differs"
        return OK
    except (ConnectionError, OSError):
        return ERROR
    finally:
        writer.close()


def clients_in_thread(port: int, conns: int, rounds: int, size: int) -> list[str]:
    async def all_of_them() -> list[str]:
        return list(await asyncio.gather(*(client(port, i, rounds, size) for i in range(conns))))

    loop = asyncio.SelectorEventLoop()
    try:
        return loop.run_until_complete(asyncio.wait_for(all_of_them(), 30))
    finally:
        loop.close()


def run_under(
    plan: str,
    cfg: RingConfig | None = None,
    conns: int = 16,
    rounds: int = 6,
    size: int = 20_000,
    make_loop: Callable[[RingConfig | None], asyncio.AbstractEventLoop] = uringserve.new_event_loop,
) -> Run:
    """Echo `conns` clients through a server whose ring runs `plan`; then
    one more client with the plan cleared (the server still accepts), and
    the leak checks."""
    gc.collect()
    fds = open_fds()
    Echo.made = Echo.lost = 0
    loop = make_loop(cfg)
    errors: list[dict] = []
    loop.set_exception_handler(lambda _l, ctx: errors.append(ctx))
    ring = loop._ring  # type: ignore[attr-defined]
    faults.inject(ring, [f for f in faults.parse(plan) if isinstance(f, faults.Fault)])

    async def main():
        server = await loop.create_server(Echo, "127.0.0.1", 0, backlog=128)
        port = server.sockets[0].getsockname()[1]
        outcomes = await loop.run_in_executor(None, clients_in_thread, port, conns, rounds, size)
        counts = faults.counts(ring)
        faults.clear(ring)
        after = await loop.run_in_executor(None, clients_in_thread, port, 1, 2, size)
        assert after == [OK], "the server stopped serving after the faults"
        # every connection closed by its client: the server's side goes too
        deadline = loop.time() + 10
        while (loop._conns or ring.stats()["slots_used"]) and loop.time() < deadline:  # type: ignore[attr-defined]
            await asyncio.sleep(0.01)
        stats = ring.stats()
        server.close()
        await server.wait_closed()
        others = [t for t in asyncio.all_tasks(loop) if t is not asyncio.current_task()]
        assert not others, f"tasks left: {others}"
        return outcomes, counts, stats

    try:
        outcomes, counts, stats = loop.run_until_complete(main())  # every wait in it is bounded
    finally:
        loop.close()
    gc.collect()
    leaked = open_fds() - fds
    assert not leaked, f"fds left open: {fd_targets(leaked)}"
    # nothing held once every connection is gone
    assert stats["slots_used"] == 0, stats
    assert stats["bufs_out"] == 0, "provided buffers not returned to the ring"
    assert stats["arena_in_use"] == 0, "arena chunks still held"
    assert stats["ext_in_use"] == 0, "send segments still held"
    assert Echo.lost == Echo.made, f"connection_lost {Echo.lost} times for {Echo.made} connections"
    return Run(outcomes, counts, stats, errors, Echo.made, Echo.lost)


# faults the server recovers from: every connection completes
RECOVERABLE = [
    ("recv=ENOBUFS:rate=0.5:seed=3", "recv", {}),
    ("recv=ECANCELED:rate=0.5:seed=4", "recv", {}),
    ("recv=EINTR:every=2", "recv", {}),
    ("send=EAGAIN:every=2", "send", {}),
    ("send=short:every=1", "send", {}),
    ("send=short:rate=0.5:seed=5", "send", {"send_mode": "zc_fixed"}),
    ("accept=ECONNABORTED:every=2", "accept", {}),
    ("accept=ECANCELED:nth=1", "accept", {"accept_depth": 1}),
    ("zc_copied:every=1", "zc_copied", {"send_mode": "zc_fixed"}),
]


@pytest.mark.parametrize("plan,op,cfg", RECOVERABLE, ids=[p for p, _, _ in RECOVERABLE])
def test_recoverable_faults_lose_nothing(plan: str, op: str, cfg: dict) -> None:
    # plain recv arms once per message, so recv faults hit mid-stream too
    config = RingConfig(**cfg) if cfg else None
    run = run_under(plan, config)
    assert run.counts[op][1] > 0, f"the fault never fired: {run.counts}"
    assert run.outcomes == [OK] * 16
    assert not run.errors, [e["message"] for e in run.errors]
    if op == "zc_copied":
        assert run.stats["zc_copied"] == run.stats["zc_notifs"] > 0
    if plan.startswith("send=short"):
        assert run.stats["send_partial"] >= run.counts["send"][1] > 0


@pytest.mark.parametrize("mode", ["pbuf", "plain"])
def test_recv_faults_between_messages_keep_order(mode: str) -> None:
    """Single-shot recv re-arms per message: ENOBUFS and ECANCELED land
    between the messages of one connection, whose bytes stay in order."""
    run = run_under("recv=ENOBUFS:every=3", RingConfig(recv_mode=mode), conns=4, rounds=20, size=3000)
    assert run.outcomes == [OK] * 4
    assert run.counts["recv"][1] > (4 if mode == "plain" else 0)


FATAL = [
    ("recv=ECONNRESET:rate=0.3:seed=7", "recv"),
    ("recv=ETIMEDOUT:nth=2", "recv"),
    ("send=EPIPE:rate=0.2:seed=8", "send"),
    ("send=ECONNRESET:nth=3", "send"),
    ("send=ECANCELED:nth=5", "send"),
]


@pytest.mark.parametrize("plan,op", FATAL, ids=[p for p, _ in FATAL])
def test_fatal_faults_end_only_their_connections_cleanly(plan: str, op: str) -> None:
    run = run_under(plan)
    fired = run.counts[op][1]
    assert fired > 0
    failed = run.outcomes.count(ERROR)
    # each fault ends at most its own connection; the rest are untouched
    assert 1 <= failed <= fired, (failed, fired, run.outcomes)
    assert run.outcomes.count(OK) == 16 - failed
    assert not run.errors, [e["message"] for e in run.errors]  # a peer's error is not the server's


@pytest.mark.parametrize("err", ["ECONNRESET", "EPIPE", "ECONNABORTED", "ETIMEDOUT", "EHOSTUNREACH"])
def test_a_receive_error_reaches_connection_lost_as_the_socket_module_raises_it(err: str) -> None:
    """The errno a failed receive ends with reaches connection_lost() as the
    OSError asyncio's transports pass on, which the socket module raised:
    its subclass for the errno, the errno, and its words."""
    code = getattr(errno, err)
    lost: list = []

    class Watch(asyncio.Protocol):
        def connection_lost(self, exc) -> None:
            lost.append(exc)

    async def main(loop) -> None:
        server = await loop.create_server(Watch, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        faults.inject(loop._ring, [faults.Fault("recv", err, nth=1)])
        with socket.create_connection(("127.0.0.1", port)):
            deadline = loop.time() + 10
            while not lost and loop.time() < deadline:
                await asyncio.sleep(0.01)
        server.close()
        await server.wait_closed()

    run_uring(RingConfig(), main)
    (exc,) = lost
    expected = OSError(code, os.strerror(code))  # of the subclass the errno maps to (OSError for EHOSTUNREACH)
    assert type(exc) is type(expected)
    assert (exc.errno, exc.strerror, str(exc)) == (code, os.strerror(code), str(expected))


@pytest.mark.parametrize("err", ["EMFILE", "ENFILE", "ENOMEM", "EPERM"])
def test_accept_errors_are_reported_and_accepting_resumes(err: str) -> None:
    """Out of fds (or refused by a security module) with no connection of
    ours to close: asyncio's answer, an error through the exception
    handler and a retry a second later, not a listener that stops."""
    run = run_under(f"accept={err}:nth=1", RingConfig(accept_depth=1), conns=4, rounds=2)
    assert run.counts["accept"][1] == 1
    assert run.outcomes == [OK] * 4
    assert run.stats["accept_errors"] == 1
    (report,) = run.errors
    assert "accepting again in 1 second" in report["message"]
    assert report["exception"].errno == getattr(errno, err)


@pytest.mark.parametrize("stage,words", [("arena", "RLIMIT_MEMLOCK"), ("buffer-ring", "buffer ring")])
def test_registration_failure_at_start_is_a_clear_error(stage: str, words: str) -> None:
    faults.fail_next_setup(faults.SetupFault(stage, "ENOMEM"))
    fds = open_fds()
    with pytest.raises(OSError, match=words) as info:
        Ring(RingConfig())
    assert info.value.errno == errno.ENOMEM
    assert open_fds() == fds  # the half-made ring closed what it had opened
    Ring(RingConfig()).close()  # one failure only: the next ring is fine


def test_fault_plans_explain_their_mistakes() -> None:
    for plan, words in [
        ("recv=EBOGUS:nth=1", "errno name"),
        ("recv=EPIPE", "never fires"),
        ("accept=short:nth=1", "send fault"),
        ("send=EPIPE:sometimes=1", "expected one of"),
        ("send=EPIPE:rate=2", "between 0 and 1"),
        ("disk=EIO:nth=1", "unknown operation"),
        ("setup=arena", "setup=STAGE:ERRNO"),
    ]:
        with pytest.raises(ValueError, match=words):
            faults.parse(plan)


def test_a_plan_given_to_a_loop_fails_its_setup_and_its_operations() -> None:
    """Whoever wants faults passes a Plan: UringEventLoop(faults=...) gives it
    to its Ring, whose setup and operations then meet it."""
    run = run_under(
        "", conns=2, rounds=2, make_loop=lambda cfg: UringEventLoop(cfg, faults=faults.plan("send=short:every=1"))
    )
    assert run.outcomes == [OK, OK]
    assert run.counts["send"][1] > 0 and run.stats["send_partial"] > 0
    with pytest.raises(OSError, match="RLIMIT_MEMLOCK"):
        Ring(RingConfig(), faults=faults.plan("setup=arena:ENOMEM"))


def test_environment_plan_applies_where_a_server_makes_its_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """URINGSERVE_FAULTS: how a whole server process is run under faults.
    It is read where a server makes its loop (server.new_loop; a load worker
    reads it too), never by Ring."""
    monkeypatch.setenv(faults.ENV, "send=short:every=1")
    run = run_under("", conns=2, rounds=2, make_loop=lambda cfg: new_loop("uring", cfg))
    assert run.outcomes == [OK, OK]
    assert run.counts["send"][1] > 0 and run.stats["send_partial"] > 0
    monkeypatch.setenv(faults.ENV, "setup=arena:ENOMEM")
    with pytest.raises(OSError, match="RLIMIT_MEMLOCK"):
        new_loop("uring")
    Ring(RingConfig()).close()  # a ring made elsewhere takes no plan from the environment


def test_a_ring_without_a_plan_counts_nothing() -> None:
    ring = Ring(RingConfig())
    try:
        assert all(v == (0, 0) for v in faults.counts(ring).values())
    finally:
        ring.close()


def test_faults_reach_only_the_ring_they_were_given() -> None:
    """Two rings in one process (a server and a client loop): the plan is
    the ring's, not the process's."""
    a, b = Ring(RingConfig()), Ring(RingConfig())
    try:
        faults.inject(a, faults.parse("send=EPIPE:every=1"))
        assert faults.counts(b)["send"] == (0, 0)
    finally:
        a.close()
        b.close()


# ---- a whole HTTP server process under a plan (URINGSERVE_FAULTS) -------------


def _sent_again(stats: dict, requests: int) -> bool:
    """Sends retried after EAGAIN: each response is one send without faults."""
    return stats["sends"] >= requests + max(1, requests // 50)


# (plan, recoverable, what /stats shows when its rules fired). One rule per
# operation: a later rule for the same operation replaces the earlier
# (faults.inject). zc_copied is left to the echo tests above: the HTTP
# demo's small responses never use zero-copy sends, so it could not fire.
HTTP_PLANS = [
    # recoverable: every request answered, no error of any class
    (
        "recv=ENOBUFS:rate=0.5:seed=1;send=EAGAIN:rate=0.1:seed=3",
        True,
        lambda st, requests: st["enobufs"] > 0 and _sent_again(st, requests),
    ),
    ("send=short:rate=0.5:seed=2", True, lambda st, requests: st["send_partial"] > 0),
    ("accept=ECONNABORTED:every=2", True, lambda st, requests: st["accept_errors"] > 0),
    # fatal to the connection hit: only connection errors, never a wrong byte
    ("recv=ECONNRESET:rate=0.2:seed=4", False, None),
    ("send=EPIPE:rate=0.02:seed=5", False, None),
]


def _stats_through_faults(port: int) -> dict:
    """/stats, asked again when the plan's faults hit this connection too."""
    for _ in range(20):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=10) as r:
                return json.loads(r.read())
        except (ConnectionError, urllib.error.URLError, http.client.HTTPException):
            continue
    raise AssertionError("the server never answered /stats")


@pytest.mark.parametrize("plan,recoverable,fired", HTTP_PLANS, ids=[p for p, _, _ in HTTP_PLANS])
def test_http_server_under_faults(plan: str, recoverable: bool, fired) -> None:
    srv = Proc(
        [sys.executable, "-m", "uringserve", "run", "apps.http:app", "--port", "0"],
        env=dict(os.environ, **{faults.ENV: plan}),
    )
    try:
        res = run(build_plan(f"http://127.0.0.1:{srv.port}/", conns=8, duration=0.8))
        # afterwards the server answers, and holds nothing for the closed connections
        stats = _stats_through_faults(srv.port)
    finally:
        srv.stop()
    errors = res.stats["errors"]
    assert res.requests > 100
    assert res.stats["by_class"][2] == res.requests  # every response a 200
    assert errors["protocol"] == 0, errors  # no byte out of place
    if recoverable:
        assert errors == dict.fromkeys(LOAD_ERRORS, 0)
        # the server's ring really ran the plan: a server ignoring it would pass the rest
        assert fired(stats, res.requests), {k: stats[k] for k in ("enobufs", "sends", "send_partial", "accept_errors")}
    else:  # a fault-free server has no connection errors: these are the plan's
        assert errors["read"] + errors["write"] + errors["short"] > 0, errors
        assert errors["timeout"] == 0, errors  # a failed connection is closed, never left hanging
    assert stats["slots_used"] <= 1  # the /stats connection itself
    assert stats["arena_in_use"] == 0 and stats["ext_in_use"] == 0
    assert stats["bufs_out"] <= 1  # the buffer holding the /stats request
