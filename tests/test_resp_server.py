"""apps/resp_server.py with clients nobody here wrote: redis-py (sync and
asyncio, pipelines, a 100,000-key bulk load, TLS, Unix sockets), redis-cli
(inline commands, error texts, --tls, -s), redis-benchmark (counts checked
afterwards), a byte-for-byte comparison with Debian's redis-server (replies,
COMMAND's table, INFO's fields and counters), bad input, expiry, the idle
timeout, SCAN's guarantee, bounded memory against a client that does not
read, and SIGTERM. The server runs as the demo runs, in its own process, on
UringEventLoop and on the stdlib loop."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio
from conftest import PY, ROOT, Proc, TLSFiles, rss_kib, uringserve

from uringserve.resp.commands import COMMANDS

SERVER = str(ROOT / "apps" / "resp_server.py")


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed: `make test` installs redis-tools and redis-server")
    return path


class Resp(Proc):
    """apps/resp_server.py on a port the kernel picks, on `loop`; all it
    prints is read as it comes and kept (conftest's Proc)."""

    def __init__(self, *args: str, loop: str = "uring") -> None:
        super().__init__([PY, SERVER, "--port", "0", "--loop", loop, *args])
        self.loop = loop

    def stopped(self) -> None:
        """SIGTERM: it exits 0, without a traceback."""
        code = self.stop()
        assert code == 0 and "Traceback" not in self.output(), self.output()


@pytest.fixture(scope="module", params=["uring", "asyncio"])
def server(request: pytest.FixtureRequest) -> Iterator[Resp]:
    proc = Resp(loop=request.param)
    yield proc
    proc.stopped()


@pytest.fixture
def r(server: Resp) -> Iterator[redis.Redis]:
    client = redis.Redis(port=server.port, socket_timeout=30)
    client.flushall()
    yield client
    client.close()


SENTINEL = b"ECHO end-of-exchange\r\n"
SENTINEL_REPLY = b"$15\r\nend-of-exchange\r\n"


def connect(address: int | str, timeout: float = 30.0) -> socket.socket:
    """A TCP port on 127.0.0.1, or a Unix socket's path."""
    if isinstance(address, int):
        return socket.create_connection(("127.0.0.1", address), timeout=timeout)
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(timeout)
    s.connect(address)
    return s


def raw(address: int | str, data: bytes, sentinel: bool = True) -> bytes:
    """Send `data` and a sentinel command; read until the sentinel's reply
    (removed) or the server's close (marked <EOF>). Every exchange ends one
    way or the other: one that does neither (a reply lost, a server stuck
    inside a command) fails on the 30 s socket timeout, it is never taken
    for an answer."""
    with connect(address) as s:
        s.sendall(data + SENTINEL if sentinel else data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
            if sentinel and out.endswith(SENTINEL_REPLY):
                return out[: -len(SENTINEL_REPLY)]
        return out + b"<EOF>"


def parse_reply(data: bytes, pos: int = 0) -> tuple[object, int]:
    """The RESP2/RESP3 reply at `pos` and where the next begins; ValueError
    when it is not one, IndexError when it is cut short. (Error replies
    come back as ResponseError.)"""
    end = data.index(b"\r\n", pos)
    kind, line = data[pos : pos + 1], data[pos + 1 : end]
    pos = end + 2
    if kind == b"+":
        return line, pos
    if kind == b"-":
        return redis.ResponseError(line.decode("utf-8", "replace")), pos
    if kind == b"_":
        return None, pos
    n = int(line)  # ValueError for anything but a number
    if kind == b":":
        return n, pos
    if kind == b"$":
        if n < 0:
            return None, pos
        if len(data) < pos + n + 2:
            raise IndexError("a bulk cut short")
        if data[pos + n : pos + n + 2] != b"\r\n":
            raise ValueError("a bulk without its CRLF")
        return data[pos : pos + n], pos + n + 2
    if kind in (b"*", b"%"):
        if n < 0:
            return None, pos
        items = []
        for _ in range(n * (2 if kind == b"%" else 1)):
            item, pos = parse_reply(data, pos)
            items.append(item)
        return items, pos
    raise ValueError(f"not a reply: {data[pos - len(line) - 3 :][:20]!r}")


def parse_replies(data: bytes) -> list[object]:
    """Every reply in `data`, which must hold whole replies and nothing else."""
    out, pos = [], 0
    while pos < len(data):
        reply, pos = parse_reply(data, pos)
        out.append(reply)
    return out


def ask(address: int | str, *commands: bytes) -> list[object]:
    """The parsed replies to `commands` (inline), on a new connection."""
    replies = parse_replies(raw(address, b"".join(c + b"\r\n" for c in commands)))
    assert len(replies) == len(commands), replies
    return replies


# -- redis-py ---------------------------------------------------------------------
@pytest.mark.parametrize("protocol", [2, 3])
def test_redis_py_strings_keys_and_expiry(server: Resp, protocol: int) -> None:
    r = redis.Redis(port=server.port, protocol=protocol, client_name="t1")
    r.flushall()
    assert r.ping() is True
    assert r.echo(b"a\r\nb") == b"a\r\nb"
    assert r.set("k", b"v\x00") is True and r.get("k") == b"v\x00"
    assert r.get("missing") is None
    assert r.set("k", "x", nx=True) is None and r.get("k") == b"v\x00"
    assert r.set("k2", "x", xx=True) is None and r.exists("k2") == 0
    assert r.set("k", "w", get=True) == b"v\x00"
    assert r.getset("k", "z") == b"w"
    assert r.set("n", 10) and r.incr("n") == 11 and r.decr("n") == 10
    assert r.incrby("n", 5) == 15 and r.decrby("n", 20) == -5
    assert r.append("s", "ab") == 2 and r.append("s", "cd") == 4 and r.strlen("s") == 4
    assert r.mset({"a": 1, "b": 2}) and r.mget("a", "missing", "b") == [b"1", None, b"2"]
    assert r.exists("a", "a", "missing") == 2
    assert r.delete("a", "b", "missing") == 2
    assert r.ttl("k") == -1 and r.ttl("missing") == -2
    assert r.expire("k", 100) and 99 <= r.ttl("k") <= 100 and 99_000 < r.pttl("k") <= 100_000
    assert r.persist("k") and r.ttl("k") == -1 and not r.persist("k")
    assert r.pexpire("k", 100_000, gt=True) is False  # no deadline counts as forever
    assert r.set("t", "v", px=50_000) and 49_000 < r.pttl("t") <= 50_000
    assert r.client_getname() in ("t1", b"t1")  # redis-py decodes it under RESP2 only
    assert r.dbsize() == 4
    assert sorted(r.keys("*")) == [b"k", b"n", b"s", b"t"]
    assert sorted(r.keys("[kn]")) == [b"k", b"n"] and sorted(r.keys("[^kn]")) == [b"s", b"t"]
    assert r.info()["redis_version"] == "7.0.0"
    ring = r.info("ring")  # the core's counters, on UringEventLoop only
    assert (ring["sqes"] > 0 and ring["accepts"] >= 1) if server.loop == "uring" else ring == {}
    assert r.type("k") == b"string" and r.type("missing") == b"none"
    assert r.flushdb() and r.dbsize() == 0
    r.close()


def test_redis_py_errors_are_redis_texts(r: redis.Redis) -> None:
    r.rpush("list", "a")
    r.set("s", "abc")
    r.set("max", str(2**63 - 1))
    cases = [
        (lambda: r.get("list"), "WRONGTYPE Operation against a key holding the wrong kind of value"),
        (lambda: r.incr("s"), "value is not an integer or out of range"),
        (lambda: r.incr("max"), "increment or decrement would overflow"),
        (lambda: r.set("k", "v", ex=0), "invalid expire time in 'set' command"),
        (lambda: r.execute_command("SET", "k", "v", "NX", "XX"), "syntax error"),
        (lambda: r.execute_command("GET"), "wrong number of arguments for 'get' command"),
        (lambda: r.execute_command("NOPE", "a"), "unknown command 'NOPE', with args beginning with: 'a' "),
        (lambda: r.execute_command("SELECT", "1"), "DB index is out of range"),
    ]
    for call, text in cases:
        with pytest.raises(redis.ResponseError) as e:
            call()
        assert str(e.value) == text


def test_redis_py_pipeline_loads_100000_keys(r: redis.Redis) -> None:
    pipe = r.pipeline(transaction=False)
    for i in range(100_000):
        pipe.set(f"key:{i}", f"value:{i}")
    assert pipe.execute() == [True] * 100_000
    assert r.dbsize() == 100_000
    picks = random.Random(7).sample(range(100_000), 1000)
    assert r.mget([f"key:{i}" for i in picks]) == [f"value:{i}".encode() for i in picks]
    # SCAN walks them all, each once
    seen = list(r.scan_iter(count=500))
    assert len(seen) == len(set(seen)) == 100_000
    assert len(list(r.scan_iter(match="key:1234*"))) == 11


def test_redis_py_asyncio_clients_in_parallel(server: Resp) -> None:
    async def main() -> None:
        clients = [redis.asyncio.Redis(port=server.port) for _ in range(8)]
        await clients[0].flushall()

        async def work(i: int, c: redis.asyncio.Redis) -> None:
            for j in range(200):
                await c.incr("shared")
                await c.set(f"c{i}:{j}", j)
            async with c.pipeline(transaction=False) as p:
                for j in range(200):
                    p.get(f"c{i}:{j}")
                assert await p.execute() == [str(j).encode() for j in range(200)]

        await asyncio.gather(*(work(i, c) for i, c in enumerate(clients)))
        assert await clients[0].get("shared") == b"1600"
        for c in clients:
            await c.aclose()

    asyncio.run(main())


def test_scan_returns_every_key_present_throughout_while_others_come_and_go(r: redis.Redis) -> None:
    r.mset({f"stay:{i}": 1 for i in range(3000)})
    cursor, seen, churn = 0, [], 0
    while True:
        cursor, keys = r.scan(cursor, count=50)
        seen += keys
        r.mset({f"new:{churn}:{i}": 1 for i in range(20)})  # added and removed between calls
        r.delete(*[f"new:{churn - 1}:{i}" for i in range(20)])
        churn += 1
        if cursor == 0:
            break
    stay = [k for k in seen if k.startswith(b"stay:")]
    assert len(stay) == len(set(stay)) == 3000


# -- expiry ---------------------------------------------------------------------------
def test_expired_keys_nobody_touches_are_swept(r: redis.Redis) -> None:
    # the counter is the server's since it started (as Redis's): earlier tests' expiries are in it
    expired_before = r.info("stats")["expired_keys"]
    r.set("stays", "v")
    pipe = r.pipeline(transaction=False)
    for i in range(2000):
        pipe.set(f"vol:{i}", "v", px=30)
    pipe.execute()
    deadline = time.monotonic() + 20
    # DBSIZE counts what is stored, expired or not, and touches no key: only the sweep lowers it
    while r.dbsize() > 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert r.dbsize() == 1 and r.get("stays") == b"v"
    assert r.info("stats")["expired_keys"] - expired_before == 2000


# -- redis-cli -----------------------------------------------------------------------
def test_redis_cli_commands_and_error_texts(server: Resp, r: redis.Redis) -> None:
    cli = need("redis-cli")

    def run(*args: str, stdin: str | None = None) -> str:
        out = subprocess.run(
            [cli, "-p", str(server.port), *args], input=stdin, capture_output=True, text=True, timeout=30
        )
        assert out.returncode == 0, out.stderr
        assert "Warning" not in out.stderr and "Error" not in out.stderr, out.stderr
        return out.stdout

    assert run("SET", "greeting", "hello world") == "OK\n"
    assert run("GET", "greeting") == "hello world\n"
    assert run("INCRBY", "n", "41") == "41\n"
    assert run("NOPE", "x") == "ERR unknown command 'NOPE', with args beginning with: 'x' \n\n"  # as with Redis
    # commands on stdin, one per line: redis-cli's batch mode
    assert run(stdin="SET a 1\nINCR a\nGET a\nLPUSH a x\n") == (
        "OK\n2\n2\nWRONGTYPE Operation against a key holding the wrong kind of value\n\n"
    )
    assert run("--raw", "MGET", "a", "missing") == "2\n\n"
    assert "redis_version:7.0.0" in run("INFO", "server")


def test_inline_commands_as_telnet_sends_them(server: Resp) -> None:
    got = raw(server.port, b"SET q \"hello\\x21 there\"\r\nGET q\r\nPING\r\n\r\nECHO 'a b'\nQUIT\r\nPING\r\n")
    assert got == b"+OK\r\n$12\r\nhello! there\r\n+PONG\r\n$3\r\na b\r\n+OK\r\n<EOF>"


# -- redis-benchmark ---------------------------------------------------------------------
@pytest.mark.parametrize("pipeline", [1, 16])
def test_redis_benchmark_counts_hold(server: Resp, r: redis.Redis, pipeline: int) -> None:
    bench = need("redis-benchmark")

    def run(*args: str) -> str:
        out = subprocess.run(
            [bench, "-p", str(server.port), "-c", "20", "-P", str(pipeline), "-q", *args],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0 and "requests per second" in out.stdout, (out.stdout, out.stderr)
        return out.stdout

    # counts that are multiples of clients x pipeline: redis-benchmark sends whole pipelines
    run("-t", "incr", "-n", "5120")
    assert r.get("counter:__rand_int__") == b"5120"  # every INCR counted once
    run("-t", "lpush", "-n", "3200")
    assert r.llen("mylist") == 3200
    assert r.dbsize() == 2
    run("-t", "set", "-n", "6400", "-r", "500", "-d", "100")
    # 6,400 SETs of 500 random keys: every key met (the chance that one is
    # missed is 500 x (1 - 1/500)^6400, under 1e-3), each holding the one
    # 100-byte value redis-benchmark sends
    keys = r.keys("key:*")
    assert len(keys) == 500 and r.dbsize() == 502, (len(keys), r.dbsize())
    (value,) = set(r.mget(keys))
    assert len(value) == 100
    # GET and PING (inline and multibulk) are only read: the server's own count shows each ran once
    before = r.info("stats")["total_commands_processed"]
    out = run("-t", "get,ping", "-n", "3200")
    assert "PING_INLINE:" in out and "PING_MBULK:" in out and "GET:" in out, out
    ran = r.info("stats")["total_commands_processed"] - before - 1  # less the first INFO
    # redis-benchmark also asks CONFIG GET save and appendonly on starting
    assert ran == 3 * 3200 + 2, ran


# -- the same bytes as redis-server ------------------------------------------------------
COMPARED = [
    b"SET k v\r\nGET k\r\nGET nope\r\nSET k v NX\r\nSET k w XX GET\r\nSET k v EX\r\nSET k v EX 0\r\n",
    b"SET k v EX abc\r\nSET k v EX 10 PX 100\r\nSET k v PX 9223372036854775807\r\nSET k v KEEPTTL EX 5\r\n",
    b"LPUSH l a b\r\nGET l\r\nAPPEND l x\r\nGETSET l y\r\nSET l v GET\r\nINCR l\r\nSTRLEN l\r\nMGET l k\r\n",
    b"SET n 9223372036854775807\r\nINCR n\r\nSET m -9223372036854775808\r\nDECR m\r\nINCRBY n x\r\nDECRBY n 1\r\n",
    b"SET s abc\r\nINCR s\r\nSET z 007\r\nINCR z\r\nSET e ''\r\nINCR e\r\nAPPEND s def\r\nSTRLEN s\r\nSTRLEN nope\r\n",
    b"FOO a b\r\nfoo\r\nGET\r\nSET k\r\nPING a b\r\nECHO\r\nMSET a\r\nKEYS\r\nEXISTS k k nope\r\nDEL k k nope\r\n",
    b"*1\r\n$3\r\nfoo\r\n*0\r\n*-1\r\nPING\r\n\r\nPING hi\r\nECHO 'x y'\r\n",
    b"SET k v\r\nEXPIRE k abc\r\nEXPIRE k 10 XX GT\r\nTTL nope\r\nPTTL nope\r\nTTL k\r\n",
    b"SET k v\r\nEXPIRE k 9223372036854775807\r\n",
    b"SET k v\r\nEXPIRE k 100 NX\r\nEXPIRE k 50 LT\r\nTTL k\r\nEXPIRE k 10 NX XX\r\n",
    b"SET k v\r\nEXPIRE k 10 GT LT\r\nEXPIRE k 1 FOO\r\nEXPIRE k 200 GT\r\nTTL k\r\n",
    b"SET k v\r\nPERSIST k\r\nEXPIRE k 0\r\nGET k\r\nEXISTS k\r\nPEXPIRE k 9223372036854775807\r\n",
    b"MSET a 1 b 2 c 3\r\nMGET a nope c\r\nDBSIZE\r\nFLUSHDB foo\r\nFLUSHDB\r\nDBSIZE\r\nFLUSHALL SYNC\r\n",
    b"SCAN x\r\nSCAN 0 COUNT 0\r\nSCAN 0 COUNT x\r\nSCAN 0 TYPE\r\nSCAN 0 FOO 1\r\nSELECT 0\r\nSELECT x\r\n",
    b"RPUSH l a b c\r\nLRANGE l 0 -1\r\nLRANGE l -2 10\r\nLPOP l\r\nRPOP l 5\r\nLPOP l\r\nLPOP l 2\r\nLLEN l\r\n",
    b"RPUSH l a\r\nlpop l x\r\nlpop l -1\r\nTYPE l\r\nTYPE nope\r\n",
    b"HELLO 4\r\nHELLO x\r\nCLIENT SETNAME a b\r\nCLIENT SETNAME ab\r\nCLIENT GETNAME\r\nCLIENT FOO\r\n",
    b'CLIENT SETNAME\r\nCLIENT SETNAME "a b"\r\nCONFIG GET save\r\nCONFIG GET appendonly\r\nQUIT\r\nPING\r\n',
    b'SET q "a b\r\n',
    b"*2\r\n$3\r\nGET\r\n$-5\r\n",
    b"*2\r\nGET\r\n",
    b"*99999999999999\r\n",
    b"*2\r\n$3\r\nGET\r\n$abc\r\n",
    b"*abc\r\n",
    b"PING\r\n*1\r\n$4\r\nPING\r\n*2\r\n$3\r\nGET\r\n$600000000\r\n",
    b"INFO keyspace\r\nSET a 1\r\nSET b 2 EX 100\r\nINFO keyspace\r\nINFO nosuch\r\nINFO KEYSPACE\r\n",
    b"COMMAND INFO nosuch\r\nCOMMAND FOO\r\nCONFIG GET timeout\r\n",
    # a fixed arity is exact: one argument too many is refused as one too few is
    b"SET k v\r\nGET k extra\r\nECHO a b\r\nTTL k k\r\nDBSIZE x\r\nTYPE k k\r\nLLEN l l\r\n",
    # XX sets a deadline only over one there is; TYPE filters SCAN; a bad \x escape is literal
    b"SET k v\r\nEXPIRE k 100 XX\r\nTTL k\r\nEXPIRE k 100\r\nEXPIRE k 50 XX\r\nTTL k\r\n",
    b"RPUSH l a\r\nSET s v\r\nSCAN 0 TYPE string\r\nSCAN 0 TYPE list\r\nSCAN 0 TYPE hash\r\n",
    b'SET q "\\xz1\\x4g"\r\nGET q\r\n',
    # an unknown subcommand is named in the error, cut at 128 characters
    b"CLIENT " + b"x" * 200 + b"\r\n",
]


@pytest.fixture(scope="module")
def real_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Debian's redis-server on a Unix socket of its own (no TCP port, so
    none to race for): its path."""
    exe = need("redis-server")
    path = str(tmp_path_factory.mktemp("redis") / "redis.sock")
    args = [exe, "--port", "0", "--unixsocket", path, "--save", "", "--appendonly", "no", "--daemonize", "no"]
    p = Proc(args, ready="")
    try:
        p.wait_line(lambda line: "ready to accept connections" in line.lower(), 30)
        yield path
    finally:
        p.stop()


@pytest.mark.parametrize("case", range(len(COMPARED)))
def test_replies_are_byte_for_byte_redis_servers(server: Resp, real_redis: str, case: int) -> None:
    data = COMPARED[case]
    raw(real_redis, b"FLUSHALL\r\n")
    raw(server.port, b"FLUSHALL\r\n")
    expected = raw(real_redis, data)
    assert expected  # the reference answered
    assert raw(server.port, data) == expected


def test_client_ids_count_from_1_in_each_server() -> None:
    """CLIENT ID: each connection's own number, counted from 1 in a new server."""
    srv = Resp()
    try:
        assert ask(srv.port, b"CLIENT ID", b"CLIENT ID") == [1, 1]
        assert ask(srv.port, b"CLIENT ID") == [2]
    finally:
        srv.stopped()


# -- bad input, limits, memory ------------------------------------------------------------
def test_garbage_gets_replies_that_parse_and_others_are_served(server: Resp, r: redis.Redis) -> None:
    rng = random.Random(15)
    errors = 0
    for _ in range(30):
        junk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400)))
        with connect(server.port) as s:
            s.sendall(junk)
            s.shutdown(socket.SHUT_WR)  # the server answers what it could parse, then closes
            got = b""
            while chunk := s.recv(65536):
                got += chunk
        # whatever it is: whole replies and nothing else (parse_replies
        # raises on a cut or malformed one), a protocol error only as the last
        replies = parse_replies(got)
        protocol = [i for i, x in enumerate(replies) if "Protocol error" in str(x)]
        assert protocol in ([], [len(replies) - 1]), replies
        errors += bool(protocol)
        assert r.ping()
    assert errors > 0  # the junk did reach the parser's errors


def test_a_half_sent_command_then_a_close_leaves_nothing_behind(server: Resp, r: redis.Redis) -> None:
    for data in (b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$100\r\nabc", b"SET k", b"*2\r\n$3"):
        with connect(server.port) as s:
            # answered: the server counts this client (accepting is not counting it: on the
            # stdlib loop an INFO can be answered between the two, and count one client)
            s.sendall(b"PING\r\n")
            assert s.recv(100) == b"+PONG\r\n"
            s.sendall(data)
    assert r.get("k") is None
    deadline = time.monotonic() + 10  # the closes reach the server after the sends returned
    while r.info("clients")["connected_clients"] > 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert r.info("clients")["connected_clients"] == 1  # only this client


def test_limits_are_answered_with_a_protocol_error_and_a_close() -> None:
    proc = Resp("--max-bulk", "1024", "--max-args", "8")
    try:
        ok = raw(proc.port, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1024\r\n" + b"x" * 1024 + b"\r\nSTRLEN k\r\n")
        assert ok == b"+OK\r\n:1024\r\n"
        assert raw(proc.port, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1025\r\n") == (
            b"-ERR Protocol error: invalid bulk length\r\n<EOF>"
        )
        assert raw(proc.port, b"*9\r\n") == b"-ERR Protocol error: invalid multibulk length\r\n<EOF>"
        # (without a sentinel: a line that ends within the same read is a command, also to Redis)
        assert raw(proc.port, b"A" * 70000, sentinel=False) == b"-ERR Protocol error: too big inline request\r\n<EOF>"
        assert raw(proc.port, b"APPEND k " + b"y" * 10 + b"\r\nSTRLEN k\r\n") == (
            b"-ERR string exceeds maximum allowed size (proto-max-bulk-len)\r\n:1024\r\n"
        )
    finally:
        proc.stopped()


def test_a_client_that_does_not_read_holds_bounded_memory(server: Resp, r: redis.Redis) -> None:
    """A client pipelines 2,000 GETs of 1 KiB values (2 MB of replies from
    20 KB of commands), then PINGs without end, and reads nothing: the
    server stops reading it (its sends block) with bounded memory and
    serves others meanwhile; once the client reads, every reply it asked
    for arrives, whole and in order."""
    values = [bytes([65 + k]) * 1024 for k in range(8)]
    r.mset({f"big{k}": v for k, v in enumerate(values)})
    gets = b"".join(b"GET big%d\r\n" % (k % 8) for k in range(2000))
    get_replies = b"".join(b"$1024\r\n" + values[k % 8] + b"\r\n" for k in range(2000))
    pings = b"PING\r\n" * 10_000
    offered = 2000 * len(pings)  # 20 million PINGs: 140 MB of replies
    before = rss_kib(server.p.pid)
    s = socket.create_connection(("127.0.0.1", server.port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    s.settimeout(30)
    s.sendall(gets)
    sent = 0  # bytes of PINGs
    done = threading.Event()

    def send() -> None:
        nonlocal sent
        s.settimeout(1.0)
        try:
            while sent < offered:
                sent += s.send(pings[sent % len(pings) :])
        except TimeoutError:
            pass  # blocked a whole second: the server stopped reading us
        done.set()

    threading.Thread(target=send, daemon=True).start()
    try:
        assert done.wait(60)
        assert sent < offered, "the server kept reading a client that reads nothing"
        grew = rss_kib(server.p.pid) - before
        # what a read of pipelined commands can make it hold: the commands, and replies up to the high-water mark
        assert grew < 40_000, f"RSS grew {grew} KiB"
        assert r.ping()  # others are served meanwhile
        # the client reads now, after sending the rest of its last PING and an end marker
        cut = sent % 6
        expected = get_replies + b"+PONG\r\n" * -(-sent // 6) + SENTINEL_REPLY
        received = bytearray()

        def read_all() -> None:
            while len(received) < len(expected):
                chunk = s.recv(1 << 20)
                if not chunk:
                    break
                received.extend(chunk)

        s.settimeout(30)
        reader = threading.Thread(target=read_all, daemon=True)
        reader.start()
        s.sendall((b"PING\r\n"[cut:] if cut else b"") + SENTINEL)
        reader.join(60)
        if received != expected:  # where they part, not megabytes of diff
            at = next((i for i, (a, b) in enumerate(zip(received, expected, strict=False)) if a != b), None)
            pytest.fail(f"{len(received)} bytes of replies, {len(expected)} expected; first difference at {at}")
    finally:
        s.close()


def test_sigterm_drains_and_exits_cleanly() -> None:
    proc = Resp(loop="uring")
    c = socket.create_connection(("127.0.0.1", proc.port))
    c.sendall(b"SET k v\r\n")
    assert c.recv(100) == b"+OK\r\n"
    proc.stopped()
    assert c.recv(100) == b""  # the idle client was closed by the drain
    c.close()


# -- COMMAND and INFO, against redis-server's --------------------------------------------
def test_command_table_is_redis_servers_for_every_command(server: Resp, real_redis: str) -> None:
    """COMMAND lists what this server runs (COMMAND COUNT of them); for each,
    the name, arity, key positions and write flag are redis-server's, which
    is what clients (cluster routing, read-only replicas) read."""
    table, count = ask(server.port, b"COMMAND", b"COMMAND COUNT")
    assert isinstance(table, list) and count == len(table) == len(COMMANDS)
    names = [entry[0] for entry in table]
    assert sorted(names) == sorted(n.lower() for n in COMMANDS)
    (ours,) = ask(server.port, b"COMMAND INFO " + b" ".join(names))
    (theirs,) = ask(real_redis, b"COMMAND INFO " + b" ".join(names))
    assert ours == table  # COMMAND INFO gives the same entries
    for mine, real in zip(ours, theirs, strict=True):
        assert mine[:2] + mine[3:6] == real[:2] + real[3:6], (mine, real)  # name, arity, first, last, step
        assert (b"write" in mine[2]) == (b"write" in real[2]), (mine, real)


def info(address: int | str, *sections: bytes) -> dict[str, dict[str, str]]:
    """INFO's sections: {"Server": {"redis_version": "7.0.0", ...}, ...}."""
    (text,) = ask(address, b" ".join((b"INFO", *sections)))
    assert isinstance(text, bytes) and b"\n" not in text.replace(b"\r\n", b"")  # lines end in CRLF
    out: dict[str, dict[str, str]] = {}
    for line in text.decode().split("\r\n"):
        if line.startswith("# "):
            current = out.setdefault(line[2:], {})
        elif line:
            name, _, value = line.partition(":")
            current[name] = value
    return out


def test_info_sections_and_fields_are_redis_servers(server: Resp, real_redis: str) -> None:
    """Every section and field INFO answers is one redis-server answers
    under that name (tools parse them), in redis-server's order; the
    additions are uringserve's version and, on the ring, INFO ring."""
    for address in (real_redis, server.port):  # a key in each, so that both have a keyspace line
        assert ask(address, b"FLUSHALL", b"SET k v") == [b"OK", b"OK"]
    theirs_all = info(real_redis, b"everything")
    ours_all = info(server.port, b"everything")
    assert list(ours_all) == [s for s in theirs_all if s in ours_all] + (["Ring"] if server.loop == "uring" else [])
    for section, fields in ours_all.items():
        if section == "Ring":
            assert fields["sqes"].isdigit()
            continue
        theirs = list(theirs_all[section])
        mine = [f for f in fields if f != "uringserve_version"]
        assert mine == [f for f in theirs if f in fields], (section, mine)
    # the default set: the same sections as redis-server's default, less those it has and this server not
    theirs_default = list(info(real_redis))
    assert list(info(server.port)) == [s for s in theirs_default if s in ours_all]
    assert list(info(server.port, b"server", b"clients")) == ["Server", "Clients"]


def test_info_counters_move_as_redis_servers_do(server: Resp, real_redis: str) -> None:
    """The same exchange on both servers moves total_connections_received,
    connected_clients, total_commands_processed (which counts commands that
    ran, not refused ones, and not the INFO answering) and expired_keys
    alike."""

    def exchange(address: int | str) -> list[int]:
        raw(address, b"FLUSHALL\r\n")
        with connect(address) as c:

            def counters() -> list[int]:
                c.sendall(b"INFO everything\r\n")
                data = b""
                while True:
                    data += c.recv(65536)
                    try:
                        text, _ = parse_reply(data)
                        break
                    except IndexError:
                        continue
                fields = dict(line.split(":", 1) for line in text.decode().split("\r\n") if ":" in line)  # type: ignore[union-attr]
                names = ("total_connections_received", "connected_clients", "total_commands_processed", "expired_keys")
                return [int(fields[n]) for n in names]

            # clients of earlier tests may still be closing: from when this one is alone
            deadline = time.monotonic() + 10
            while (before := counters())[1] != 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            others = [connect(address) for _ in range(3)]
            for o in others:
                o.sendall(b"PING\r\n")
                assert o.recv(100) == b"+PONG\r\n"  # accepted and served
            c.sendall(b"SET k v\r\nGET k\r\nNOPE\r\nGET\r\nINCR k\r\nPING\r\nSET e v PX 1\r\n")
            replies = b""
            while replies.count(b"\r\n") < 8:  # 7 replies, GET's in two lines
                replies += c.recv(65536)
            time.sleep(0.01)  # past e's 1 ms
            c.sendall(b"GET e\r\n")
            assert c.recv(100) == b"$-1\r\n"  # expired: removed when touched
            during = counters()
            for o in others:
                o.close()
        return [a - b for a, b in zip(during, before, strict=True)]

    expected = exchange(real_redis)
    # for the reader, what redis-server 7 does: 3 connections, 3 open, commands: the
    # first INFO, 3 PINGs, the 5 of the 7 pipelined that ran (not NOPE, nor GET
    # without its key), GET e; e expired
    assert expected == [3, 3, 1 + 3 + 5 + 1, 1]
    assert exchange(server.port) == expected


# -- the idle timeout -----------------------------------------------------------------------
def test_idle_timeout_closes_a_silent_client_not_a_busy_one() -> None:
    srv = Resp("--idle-timeout", "1")
    try:
        assert ask(srv.port, b"CONFIG GET timeout") == [[b"timeout", b"1"]]
        busy = connect(srv.port)
        answers: list[bytes] = []
        stop = threading.Event()

        def ping() -> None:  # a command every 50 ms: never idle for long
            try:
                while not stop.is_set():
                    busy.sendall(b"PING\r\n")
                    answers.append(busy.recv(100))
                    stop.wait(0.05)
            except OSError as exc:
                answers.append(repr(exc).encode())

        pinger = threading.Thread(target=ping, daemon=True)
        pinger.start()
        # the busy client is half a timeout older than the silent one: were
        # its activity not counted, it would be closed first
        time.sleep(0.5)
        silent = connect(srv.port)
        sent = time.monotonic()  # the server's idle second starts later: when it reads the PING
        silent.sendall(b"PING\r\n")
        assert silent.recv(100) == b"+PONG\r\n"
        assert silent.recv(100) == b""  # closed by the server
        idle = time.monotonic() - sent
        stop.set()
        pinger.join(30)
        assert idle >= 1.0, idle  # not before its time (the same clock: CLOCK_MONOTONIC)
        assert answers and set(answers) == {b"+PONG\r\n"}, answers[-3:]
        busy.sendall(b"PING\r\n")
        assert busy.recv(100) == b"+PONG\r\n"  # still open
        busy.close()
        silent.close()
    finally:
        assert srv.stop() == 0, srv.output()


def test_a_negative_idle_timeout_is_refused() -> None:
    out = subprocess.run([PY, SERVER, "--idle-timeout", "-1"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--idle-timeout must be 0 (never) or more" in out.stderr


def test_help_says_what_the_server_is_in_whole_sentences() -> None:
    out = subprocess.run([PY, SERVER, "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    text = " ".join(out.stdout.split())
    assert (
        "The RESP demo: an in-memory key-value server speaking RESP2 (and RESP3 after HELLO 3), "
        "which redis-py, redis-cli and redis-benchmark talk to as to Redis." in text
    )
    assert "One process, one keyspace, in memory" in text
    assert "--idle-timeout IDLE_TIMEOUT close a client that sent nothing this many seconds" in text


# -- Unix sockets, TLS, workers -----------------------------------------------------------------
@pytest.mark.parametrize(
    "command",
    [[PY, SERVER], [PY, "-m", "uringserve", "resp", "--uds-mode", "600"]],
    ids=["apps/resp_server.py", "uringserve resp"],
)
def test_a_unix_socket_serves_redis_cli_and_redis_py_and_is_removed(tmp_path: Path, command: list[str]) -> None:
    path = str(tmp_path / "resp.sock")
    srv = Proc([*command, "--uds", path], ready="")
    try:
        srv.wait_line(lambda line: line.startswith(f"resp on unix:{path} "), 30)
        cli = need("redis-cli")
        out = subprocess.run([cli, "-s", path, "SET", "k", "over unix"], capture_output=True, text=True, timeout=30)
        assert out.stdout == "OK\n", out.stderr
        client = redis.Redis(unix_socket_path=path)
        assert client.get("k") == b"over unix"
        client.close()
        if "--uds-mode" in command:
            assert os.stat(path).st_mode & 0o777 == 0o600
    finally:
        assert srv.stop() == 0, srv.output()
    assert not os.path.exists(path)  # nothing left behind


def test_tls_serves_redis_cli_and_redis_py(tls_files: TLSFiles) -> None:
    args = ["--tls-cert", str(tls_files.cert), "--tls-key", str(tls_files.key)]
    srv = Proc([PY, "-m", "uringserve", "resp", "--port", "0", *args])
    try:
        cli = [need("redis-cli"), "-p", str(srv.port), "--tls", "--cacert", str(tls_files.cacert)]
        out = subprocess.run([*cli, "SET", "k", "over tls"], capture_output=True, text=True, timeout=30)
        assert out.stdout == "OK\n", out.stderr
        client = redis.Redis(
            host="127.0.0.1", port=srv.port, ssl=True, ssl_ca_certs=str(tls_files.cacert), socket_timeout=30
        )
        assert client.get("k") == b"over tls"
        pipe = client.pipeline(transaction=False)
        for _ in range(1000):
            pipe.incr("n")
        assert pipe.execute() == list(range(1, 1001))
        client.close()
        # plain text to a TLS port gets no reply
        with connect(srv.port) as s:
            s.sendall(b"PING\r\n")
            got = b""
            while chunk := s.recv(100):
                got += chunk
        assert b"PONG" not in got
    finally:
        assert srv.stop() == 0, srv.output()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workers", "2"], "uringserve resp: 2 workers would be 2 separate keyspaces"),
        (["--max-requests", "100"], "uringserve resp: --max-requests would replace the process and lose every key"),
    ],
)
def test_uringserve_resp_refuses_what_would_split_or_lose_the_keyspace(args: list[str], message: str) -> None:
    out = uringserve("resp", "--port", "0", *args)
    assert out.returncode == 1
    assert out.stdout == "" and out.stderr.count("\n") == 1 and message in out.stderr, out.stderr
