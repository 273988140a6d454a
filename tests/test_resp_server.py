"""apps/resp_server.py with clients nobody here wrote: redis-py (sync and
asyncio, pipelines, a 100,000-key bulk load), redis-cli (inline commands,
error texts), redis-benchmark (counts checked afterwards), a byte-for-byte
comparison with Debian's redis-server, bad input, expiry, SCAN's guarantee,
bounded memory against a client that does not read, and SIGTERM. The server
runs as the demo runs, in its own process, on UringEventLoop and on the
stdlib loop."""

from __future__ import annotations

import asyncio
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import redis
import redis.asyncio

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVER = os.path.join(ROOT, "apps", "resp_server.py")


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed: `make test` installs redis-tools and redis-server")
    return path


class Proc:
    def __init__(self, *args: str, loop: str = "uring") -> None:
        self.p = subprocess.Popen(
            [sys.executable, SERVER, "--port", "0", "--loop", loop, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.loop = loop
        assert self.p.stdout is not None
        line = self.p.stdout.readline()
        m = re.match(r"resp on 127\.0\.0\.1:(\d+) ", line)
        if not m:
            self.p.kill()
            raise RuntimeError(f"the server did not start: {line!r} {self.p.stderr.read() if self.p.stderr else ''}")
        self.port = int(m.group(1))

    def rss_kib(self) -> int:
        with open(f"/proc/{self.p.pid}/status") as f:
            return int(next(line for line in f if line.startswith("VmRSS:")).split()[1])

    def stop(self) -> tuple[int, str]:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
        try:
            _, err = self.p.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.p.kill()
            _, err = self.p.communicate()
        return self.p.returncode, err


@pytest.fixture(scope="module", params=["uring", "asyncio"])
def server(request: pytest.FixtureRequest) -> Iterator[Proc]:
    proc = Proc(loop=request.param)
    yield proc
    code, err = proc.stop()
    assert code == 0, err
    assert "Traceback" not in err, err


@pytest.fixture
def r(server: Proc) -> Iterator[redis.Redis]:
    client = redis.Redis(port=server.port, socket_timeout=30)
    client.flushall()
    yield client
    client.close()


SENTINEL = b"ECHO end-of-exchange\r\n"
SENTINEL_REPLY = b"$15\r\nend-of-exchange\r\n"


def raw(port: int, data: bytes, timeout: float = 5.0, sentinel: bool = True) -> bytes:
    """Send `data` and a sentinel command; read until the sentinel's reply
    (removed), the server's close (marked <EOF>), or 0.3 s of quiet (data
    that left the parser inside a command swallows the sentinel)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data + SENTINEL if sentinel else data)
        s.settimeout(0.3)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
                if out.endswith(SENTINEL_REPLY):
                    return out[: -len(SENTINEL_REPLY)]
            out += b"<EOF>"
        except TimeoutError:
            pass
        return out


# -- redis-py ---------------------------------------------------------------------
@pytest.mark.parametrize("protocol", [2, 3])
def test_redis_py_strings_keys_and_expiry(server: Proc, protocol: int) -> None:
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


def test_redis_py_asyncio_clients_in_parallel(server: Proc) -> None:
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
    assert r.info("stats")["expired_keys"] == 2000


# -- redis-cli -----------------------------------------------------------------------
def test_redis_cli_commands_and_error_texts(server: Proc, r: redis.Redis) -> None:
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


def test_inline_commands_as_telnet_sends_them(server: Proc) -> None:
    got = raw(server.port, b"SET q \"hello\\x21 there\"\r\nGET q\r\nPING\r\n\r\nECHO 'a b'\nQUIT\r\nPING\r\n")
    assert got == b"+OK\r\n$12\r\nhello! there\r\n+PONG\r\n$3\r\na b\r\n+OK\r\n<EOF>"


# -- redis-benchmark ---------------------------------------------------------------------
@pytest.mark.parametrize("pipeline", [1, 16])
def test_redis_benchmark_counts_hold(server: Proc, r: redis.Redis, pipeline: int) -> None:
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
    r.delete("key:__rand_int__")
    run("-t", "set", "-n", "4000", "-r", "500", "-d", "100")
    assert 1 <= r.dbsize() <= 2 + 500  # counter, mylist, at most 500 keys
    assert all(len(v) == 100 for v in r.mget(r.keys("key:*")))
    run("-t", "get,ping", "-n", "4000")


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
]


@pytest.fixture(scope="module")
def real_redis() -> Iterator[int]:
    exe = need("redis-server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield port
    finally:
        p.terminate()
        p.wait(timeout=10)


@pytest.mark.parametrize("case", range(len(COMPARED)))
def test_replies_are_byte_for_byte_redis_servers(server: Proc, real_redis: int, case: int) -> None:
    data = COMPARED[case]
    raw(real_redis, b"FLUSHALL\r\n")
    raw(server.port, b"FLUSHALL\r\n")
    expected = raw(real_redis, data)
    assert expected  # the reference answered
    assert raw(server.port, data) == expected


# -- bad input, limits, memory ------------------------------------------------------------
def test_garbage_gets_an_error_or_a_close_and_others_are_served(server: Proc, r: redis.Redis) -> None:
    rng = random.Random(15)
    for _ in range(30):
        junk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400)))
        got = raw(server.port, junk, timeout=5)
        # whatever it is: replies that parse, and if one is a protocol error it is the last, then EOF
        if b"-ERR Protocol error" in got:
            assert got.endswith(b"\r\n<EOF>")
        assert r.ping()


def test_a_half_sent_command_then_a_close_leaves_nothing_behind(server: Proc, r: redis.Redis) -> None:
    for data in (b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$100\r\nabc", b"SET k", b"*2\r\n$3"):
        with socket.create_connection(("127.0.0.1", server.port)) as s:
            s.sendall(data)
    assert r.get("k") is None
    deadline = time.monotonic() + 10  # the closes reach the server after the sends returned
    while r.info("clients")["connected_clients"] > 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert r.info("clients")["connected_clients"] == 1  # only this client


def test_limits_are_answered_with_a_protocol_error_and_a_close() -> None:
    proc = Proc("--max-bulk", "1024", "--max-args", "8")
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
        code, err = proc.stop()
    assert code == 0, err


def test_a_client_that_does_not_read_holds_bounded_memory(server: Proc, r: redis.Redis) -> None:
    r.set("big", b"x" * 16384)
    before = server.rss_kib()
    request = b"GET big\r\n" * 1000
    sent = 0
    s = socket.create_connection(("127.0.0.1", server.port))
    s.settimeout(3)
    try:
        # 4,000,000 GETs (36 MB, far beyond socket buffers) would be 64 GB of
        # replies: the server must stop reading, and then sendall() blocks
        while sent < 4000:
            s.sendall(request)
            sent += 1
    except TimeoutError:
        pass
    try:
        grew = server.rss_kib() - before
        assert sent < 4000, "the server kept reading a client that reads nothing"
        # what a read of pipelined commands can make it hold: the commands, and replies up to the high-water mark
        assert grew < 40_000, f"RSS grew {grew} KiB"
        assert r.ping()  # others are served meanwhile
    finally:
        s.close()


def test_sigterm_drains_and_exits_cleanly() -> None:
    proc = Proc(loop="uring")
    c = socket.create_connection(("127.0.0.1", proc.port))
    c.sendall(b"SET k v\r\n")
    assert c.recv(100) == b"+OK\r\n"
    code, err = proc.stop()
    assert code == 0 and "Traceback" not in err, err
    assert c.recv(100) == b""  # the idle client was closed by the drain
    c.close()
