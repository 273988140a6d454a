"""The RESP server's commands: each takes (session, argv) and returns the
encoded reply. Replies and error texts are Redis 7.0's, checked against a
real redis-server by tests/test_resp_server.py; the differences (one
database, no RESP3) are listed in README's RESP section."""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import uringserve

from . import reply
from .keyspace import Keyspace, glob, type_name
from .reply import EMPTY_ARRAY, NULL, NULL3, OK, ONE, ZERO, array, bulk, error, integer

REDIS_VERSION = "7.0.0"  # the command set and replies this server follows
INT64_MAX = (1 << 63) - 1
INT64_MIN = -(1 << 63)
_INT = re.compile(rb"-?(?:0|[1-9][0-9]{0,18})")

WRONGTYPE = error("WRONGTYPE Operation against a key holding the wrong kind of value")
NOT_INT = error("ERR value is not an integer or out of range")
SYNTAX = error("ERR syntax error")


class Stats:
    def __init__(self) -> None:
        self.started = time.time()
        self.connections = 0
        # as Redis's total_commands_processed: commands that ran (an error
        # they answer included), not those refused (unknown, wrong arity),
        # each counted once it is done (INFO does not count itself)
        self.commands = 0
        self.next_client_id = 1


class Session:
    """What a command sees: the keyspace, the server's counters, this client."""

    keyspace: Keyspace
    stats: Stats
    name: bytes | None
    client_id: int
    quit: bool
    open_clients: Callable[[], int]
    max_bulk: int
    idle_timeout: float | None
    resp3 = False  # HELLO 3: nulls and maps in RESP3 form
    null = NULL


class CommandError(Exception):
    """A command refused: the reply is the error line."""

    def __init__(self, line: bytes) -> None:
        self.line = line


def to_int(arg: bytes, err: bytes = NOT_INT) -> int:
    """Redis's string2ll: an optional '-', digits, no leading zeros, int64."""
    if _INT.fullmatch(arg):
        n = int(arg)
        if INT64_MIN <= n <= INT64_MAX:
            return n
    raise CommandError(err)


def _string(s: Session, key: bytes) -> bytes | None:
    v = s.keyspace.get(key)
    if v is not None and type(v) is not bytes:
        raise CommandError(WRONGTYPE)
    return v


# -- connection -----------------------------------------------------------------
def ping(s: Session, argv: list[bytes]) -> bytes:
    if len(argv) > 2:
        return wrong_args(argv)
    return b"+PONG\r\n" if len(argv) == 1 else bulk(argv[1])


def echo(s: Session, argv: list[bytes]) -> bytes:
    return bulk(argv[1])


def quit_(s: Session, argv: list[bytes]) -> bytes:
    s.quit = True
    return OK


def select(s: Session, argv: list[bytes]) -> bytes:
    if to_int(argv[1]) != 0:
        return error("ERR DB index is out of range")  # one database
    return OK


def hello(s: Session, argv: list[bytes]) -> bytes:
    if len(argv) > 1:
        try:
            ver = to_int(argv[1])
        except CommandError:
            return error("ERR Protocol version is not an integer or out of range")
        if ver not in (2, 3):
            return error("NOPROTO unsupported protocol version")
        i = 2
        while i < len(argv):
            opt = argv[i].upper()
            if opt == b"SETNAME" and i + 1 < len(argv):
                if not _valid_name(argv[i + 1]):
                    return _BAD_NAME
                s.name = argv[i + 1] or None
                i += 2
            elif opt == b"AUTH" and i + 2 < len(argv):
                return error("ERR AUTH <password> called without any password configured for the default user")
            else:
                return error(f"ERR Syntax error in HELLO option '{argv[i].decode(errors='replace')}'")
        s.resp3 = ver == 3
        s.null = NULL3 if s.resp3 else NULL
    fields = [
        bulk(b"server"),
        bulk(b"redis"),
        bulk(b"version"),
        bulk(REDIS_VERSION.encode()),
        bulk(b"proto"),
        integer(3 if s.resp3 else 2),
        bulk(b"id"),
        integer(s.client_id),
        bulk(b"mode"),
        bulk(b"standalone"),
        bulk(b"role"),
        bulk(b"master"),
        bulk(b"modules"),
        EMPTY_ARRAY,
    ]
    return reply.raw_map(fields, s.resp3)


_BAD_NAME = error("ERR Client names cannot contain spaces, newlines or special characters.")


def _valid_name(name: bytes) -> bool:
    return all(33 <= c <= 126 for c in name)


def client(s: Session, argv: list[bytes]) -> bytes:
    sub = argv[1].upper()
    n = len(argv)
    if sub == b"SETNAME":
        if n != 3:
            return error("ERR wrong number of arguments for 'client|setname' command")
        if not _valid_name(argv[2]):
            return _BAD_NAME
        s.name = argv[2] or None
        return OK
    if sub == b"GETNAME" and n == 2:
        return bulk(s.name, s.null)
    if sub == b"ID" and n == 2:
        return integer(s.client_id)
    if sub == b"SETINFO" and n == 4:
        return OK  # what redis-py sends on connect (lib-name, lib-ver)
    if sub == b"INFO" and n == 2:
        return bulk(f"id={s.client_id} name={(s.name or b'').decode(errors='replace')} db=0\n".encode())
    return error(f"ERR unknown subcommand '{argv[1].decode(errors='replace')[:128]}'. Try CLIENT HELP.")


def command(s: Session, argv: list[bytes]) -> bytes:
    if len(argv) == 1:
        return reply.raw_array([_command_info(name) for name in COMMANDS])
    sub = argv[1].upper()
    if sub == b"COUNT":
        return integer(len(COMMANDS))
    if sub == b"DOCS":
        return EMPTY_ARRAY  # redis-cli asks for hints; it has its own
    if sub == b"INFO":
        names = [a.upper() for a in argv[2:]] or list(COMMANDS)
        return reply.raw_array([_command_info(n) if n in COMMANDS else s.null for n in names])
    return error(f"ERR unknown subcommand '{argv[1].decode(errors='replace')[:128]}'. Try COMMAND HELP.")


def _command_info(name: bytes) -> bytes:
    _, arity, first_key, writes = COMMANDS[name]
    flags = [b"write"] if writes else [b"readonly"]
    last, step = (first_key, 1) if first_key else (0, 0)
    if name in (b"DEL", b"EXISTS", b"MGET"):
        last = -1
    elif name == b"MSET":
        last, step = -1, 2
    return reply.raw_array(
        [bulk(name.lower()), integer(arity), array(flags), integer(first_key), integer(last), integer(step)]
    )


def info(s: Session, argv: list[bytes]) -> bytes:
    ks = s.keyspace
    sections: dict[str, list[tuple[str, Any]]] = {
        "server": [
            ("redis_version", REDIS_VERSION),
            ("uringserve_version", uringserve.__version__),
            ("redis_mode", "standalone"),
            ("process_id", os.getpid()),
            ("uptime_in_seconds", int(time.time() - s.stats.started)),
        ],
        "clients": [("connected_clients", s.open_clients())],
        "stats": [
            ("total_connections_received", s.stats.connections),
            ("total_commands_processed", s.stats.commands),
            ("expired_keys", ks.expired),
        ],
        "keyspace": [("db0", f"keys={len(ks)},expires={len(ks.expires)},avg_ttl=0")] if len(ks) else [],
    }
    ring_stats = getattr(asyncio.get_running_loop(), "ring_stats", None)
    if ring_stats is not None:  # UringEventLoop: the core's counters (INFO ring)
        sections["ring"] = sorted(ring_stats().items())
    wanted = {a.decode(errors="replace").lower() for a in argv[1:]} or {"default"}
    lines = []
    for name, fields in sections.items():
        if wanted & {"all", "everything", name} or ("default" in wanted and name != "ring"):
            lines.append(f"# {name.capitalize()}")
            lines += [f"{k}:{v}" for k, v in fields]
            lines.append("")
    return bulk("\r\n".join(lines).encode())


def config(s: Session, argv: list[bytes]) -> bytes:
    if argv[1].upper() != b"GET" or len(argv) < 3:
        return error("ERR CONFIG supports GET only here")
    values = {
        b"save": b"",
        b"appendonly": b"no",
        b"databases": b"1",
        b"timeout": f"{s.idle_timeout or 0:g}".encode(),  # --idle-timeout
        b"proto-max-bulk-len": b"%d" % s.max_bulk,
        b"maxmemory": b"0",
    }
    out: list[bytes] = []
    for pattern in argv[2:]:
        match = glob(pattern.lower())
        for k, v in values.items():
            if match(k) and bulk(k) not in out:
                out += [bulk(k), bulk(v)]
    return reply.raw_map(out, s.resp3)


# -- strings --------------------------------------------------------------------
def get(s: Session, argv: list[bytes]) -> bytes:
    v = s.keyspace.get(argv[1])
    if v is None:
        return s.null
    if type(v) is not bytes:
        return WRONGTYPE
    return b"$%d\r\n%s\r\n" % (len(v), v)


def set_(s: Session, argv: list[bytes]) -> bytes:
    ks = s.keyspace
    key, value = argv[1], argv[2]
    if len(argv) == 3:  # the common form
        ks.set(key, value)
        return OK
    nx = xx = want_old = keep_ttl = False
    unit = 0  # 1000: EX, 1: PX
    amount = b""
    i = 3
    while i < len(argv):
        opt = argv[i].upper()
        if opt == b"NX" and not xx:
            nx = True
        elif opt == b"XX" and not nx:
            xx = True
        elif opt == b"GET":
            want_old = True
        elif opt == b"KEEPTTL" and not unit:
            keep_ttl = True
        elif opt in (b"EX", b"PX") and not unit and not keep_ttl and i + 1 < len(argv):
            unit = 1000 if opt == b"EX" else 1
            i += 1
            amount = argv[i]
        else:
            return SYNTAX
        i += 1
    ttl_ms = 0
    if unit:
        n = to_int(amount)
        if n <= 0 or n > INT64_MAX // unit or n * unit > INT64_MAX - int(time.time() * 1000):
            return error("ERR invalid expire time in 'set' command")
        ttl_ms = n * unit
    old = _string(s, key) if want_old else ks.get(key)
    if (nx and old is not None) or (xx and old is None):
        return bulk(old, s.null) if want_old else s.null
    ks.set(key, value, keep_ttl=keep_ttl)
    if ttl_ms:
        ks.set_deadline(key, ks.now_ms() + ttl_ms)
    return bulk(old, s.null) if want_old else OK


def getset(s: Session, argv: list[bytes]) -> bytes:
    old = _string(s, argv[1])
    s.keyspace.set(argv[1], argv[2])
    return bulk(old, s.null)


def incrby(s: Session, argv: list[bytes]) -> bytes:
    name = argv[0].upper()
    if name in (b"INCR", b"DECR"):
        by = 1
    else:
        by = to_int(argv[2])
    if name in (b"DECR", b"DECRBY"):
        if by == INT64_MIN:
            return error("ERR decrement would overflow")
        by = -by
    old = _string(s, argv[1])
    cur = 0 if old is None else to_int(old)
    new = cur + by
    if not INT64_MIN <= new <= INT64_MAX:
        return error("ERR increment or decrement would overflow")
    s.keyspace.set(argv[1], b"%d" % new, keep_ttl=True)
    return integer(new)


def append(s: Session, argv: list[bytes]) -> bytes:
    old = _string(s, argv[1])
    new = argv[2] if old is None else old + argv[2]
    if len(new) > s.max_bulk:
        return error("ERR string exceeds maximum allowed size (proto-max-bulk-len)")
    s.keyspace.set(argv[1], new, keep_ttl=True)
    return integer(len(new))


def strlen(s: Session, argv: list[bytes]) -> bytes:
    v = _string(s, argv[1])
    return integer(0 if v is None else len(v))


def mget(s: Session, argv: list[bytes]) -> bytes:
    ks = s.keyspace
    values = []
    for k in argv[1:]:
        v = ks.get(k)
        values.append(v if type(v) is bytes else None)
    return array(values, s.null)


def mset(s: Session, argv: list[bytes]) -> bytes:
    if len(argv) % 2 == 0:
        return wrong_args(argv)
    ks = s.keyspace
    for i in range(1, len(argv), 2):
        ks.set(argv[i], argv[i + 1])
    return OK


# -- keys -----------------------------------------------------------------------
def delete(s: Session, argv: list[bytes]) -> bytes:
    ks = s.keyspace
    return integer(sum(ks.delete(k) for k in argv[1:]))


def exists(s: Session, argv: list[bytes]) -> bytes:
    ks = s.keyspace
    return integer(sum(k in ks for k in argv[1:]))


def type_(s: Session, argv: list[bytes]) -> bytes:
    return b"+" + type_name(s.keyspace.get(argv[1])) + b"\r\n"


def expire(s: Session, argv: list[bytes]) -> bytes:
    name = argv[0].lower()
    unit = 1000 if name == b"expire" else 1
    n = to_int(argv[2])
    flags = {a.upper() for a in argv[3:]}
    for f in flags:
        if f not in (b"NX", b"XX", b"GT", b"LT"):
            return error(f"ERR Unsupported option {f.decode(errors='replace')}")
    if b"NX" in flags and flags & {b"XX", b"GT", b"LT"}:
        return error("ERR NX and XX, GT or LT options at the same time are not compatible")
    if {b"GT", b"LT"} <= flags:
        return error("ERR GT and LT options at the same time are not compatible")
    if n > INT64_MAX // unit or n * unit > INT64_MAX - int(time.time() * 1000):
        return error(f"ERR invalid expire time in '{name.decode()}' command")
    ks = s.keyspace
    key = argv[1]
    if key not in ks:
        return ZERO
    left = ks.ttl_ms(key)  # None: no deadline, i.e. forever
    new = n * unit
    if (
        (b"NX" in flags and left is not None)
        or (b"XX" in flags and left is None)
        or (b"GT" in flags and (left is None or new <= left))
        or (b"LT" in flags and left is not None and new >= left)
    ):
        return ZERO
    ks.set_deadline(key, ks.now_ms() + new)
    return ONE


def ttl(s: Session, argv: list[bytes]) -> bytes:
    ks = s.keyspace
    if argv[1] not in ks:
        return integer(-2)
    left = ks.ttl_ms(argv[1])
    if left is None:
        return integer(-1)
    return integer(int(left + 500) // 1000 if argv[0].upper() == b"TTL" else int(left))


def persist(s: Session, argv: list[bytes]) -> bytes:
    ks = s.keyspace
    return ONE if argv[1] in ks and ks.persist(argv[1]) else ZERO


def keys(s: Session, argv: list[bytes]) -> bytes:
    if argv[1] == b"*":
        return array(s.keyspace.keys())
    match = glob(argv[1])
    return array([k for k in s.keyspace.keys() if match(k)])


def scan(s: Session, argv: list[bytes]) -> bytes:
    if not argv[1].isdigit() or int(argv[1]) >= 1 << 64:
        return error("ERR invalid cursor")
    cursor = int(argv[1])
    count, match, want_type = 10, None, None
    i = 2
    while i < len(argv):
        opt = argv[i].upper()
        if i + 1 >= len(argv):
            return SYNTAX
        if opt == b"COUNT":
            count = to_int(argv[i + 1])
            if count < 1:
                return SYNTAX
        elif opt == b"MATCH":
            match = glob(argv[i + 1])
        elif opt == b"TYPE":
            want_type = argv[i + 1].lower()
        else:
            return SYNTAX
        i += 2
    ks = s.keyspace
    nxt, found = ks.scan(cursor, count)
    if match is not None:
        found = [k for k in found if match(k)]
    if want_type is not None:
        found = [k for k in found if type_name(ks.data.get(k)) == want_type]
    return b"*2\r\n" + bulk(b"%d" % nxt) + array(found)


def dbsize(s: Session, argv: list[bytes]) -> bytes:
    return integer(len(s.keyspace))


def flush(s: Session, argv: list[bytes]) -> bytes:
    if len(argv) > 2 or (len(argv) == 2 and argv[1].upper() not in (b"ASYNC", b"SYNC")):
        return SYNTAX
    s.keyspace.flush()
    return OK


# -- lists (so that WRONGTYPE means something) ------------------------------------
def push(s: Session, argv: list[bytes]) -> bytes:
    ks = s.keyspace
    lst = ks.get(argv[1])
    if lst is None:
        lst = deque()
        ks.set(argv[1], lst)
    elif type(lst) is not deque:
        return WRONGTYPE
    if argv[0].upper() == b"LPUSH":
        lst.extendleft(argv[2:])
    else:
        lst.extend(argv[2:])
    return integer(len(lst))


def pop(s: Session, argv: list[bytes]) -> bytes:
    if len(argv) > 3:
        return wrong_args(argv)
    count = None
    if len(argv) == 3:
        count = to_int(argv[2], error("ERR value is out of range, must be positive"))
        if count < 0:
            return error("ERR value is out of range, must be positive")
    ks = s.keyspace
    lst = ks.get(argv[1])
    if lst is None:
        return s.null if count is None else array(None, s.null)
    if type(lst) is not deque:
        return WRONGTYPE
    take = lst.popleft if argv[0].upper() == b"LPOP" else lst.pop
    out = [take() for _ in range(min(1 if count is None else count, len(lst)))]
    if not lst:
        ks.delete(argv[1])
    return bulk(out[0]) if count is None else array(out)


def llen(s: Session, argv: list[bytes]) -> bytes:
    lst = s.keyspace.get(argv[1])
    if lst is not None and type(lst) is not deque:
        return WRONGTYPE
    return integer(0 if lst is None else len(lst))


def lrange(s: Session, argv: list[bytes]) -> bytes:
    start, stop = to_int(argv[2]), to_int(argv[3])
    lst = s.keyspace.get(argv[1])
    if lst is None:
        return EMPTY_ARRAY
    if type(lst) is not deque:
        return WRONGTYPE
    n = len(lst)
    start = max(0, start + n if start < 0 else start)
    stop = min(n - 1, stop + n if stop < 0 else stop)
    return array(list(lst)[start : stop + 1] if start <= stop else [])


def wrong_args(argv: list[bytes]) -> bytes:
    return error(f"ERR wrong number of arguments for '{argv[0].decode(errors='replace').lower()}' command")


def unknown(argv: list[bytes]) -> bytes:
    args = ""
    for a in argv[1:]:
        if len(args) >= 128:
            break
        args += "'" + a.decode(errors="replace")[: 128 - len(args)] + "' "
    return error(f"ERR unknown command '{argv[0].decode(errors='replace')[:128]}', with args beginning with: {args}")


# name -> (function, arity as Redis counts it (negative: at least), first key, writes)
COMMANDS: dict[bytes, tuple[Callable[[Session, list[bytes]], bytes], int, int, bool]] = {
    b"PING": (ping, -1, 0, False),
    b"ECHO": (echo, 2, 0, False),
    b"QUIT": (quit_, -1, 0, False),
    b"SELECT": (select, 2, 0, False),
    b"HELLO": (hello, -1, 0, False),
    b"CLIENT": (client, -2, 0, False),
    b"COMMAND": (command, -1, 0, False),
    b"INFO": (info, -1, 0, False),
    b"CONFIG": (config, -2, 0, False),
    b"GET": (get, 2, 1, False),
    b"SET": (set_, -3, 1, True),
    b"GETSET": (getset, 3, 1, True),
    b"INCR": (incrby, 2, 1, True),
    b"DECR": (incrby, 2, 1, True),
    b"INCRBY": (incrby, 3, 1, True),
    b"DECRBY": (incrby, 3, 1, True),
    b"APPEND": (append, 3, 1, True),
    b"STRLEN": (strlen, 2, 1, False),
    b"MGET": (mget, -2, 1, False),
    b"MSET": (mset, -3, 1, True),
    b"DEL": (delete, -2, 1, True),
    b"EXISTS": (exists, -2, 1, False),
    b"TYPE": (type_, 2, 1, False),
    b"EXPIRE": (expire, -3, 1, True),
    b"PEXPIRE": (expire, -3, 1, True),
    b"TTL": (ttl, 2, 1, False),
    b"PTTL": (ttl, 2, 1, False),
    b"PERSIST": (persist, 2, 1, True),
    b"KEYS": (keys, 2, 0, False),
    b"SCAN": (scan, -2, 0, False),
    b"DBSIZE": (dbsize, 1, 0, False),
    b"FLUSHDB": (flush, -1, 0, True),
    b"FLUSHALL": (flush, -1, 0, True),
    b"LPUSH": (push, -3, 1, True),
    b"RPUSH": (push, -3, 1, True),
    b"LPOP": (pop, -2, 1, True),
    b"RPOP": (pop, -2, 1, True),
    b"LLEN": (llen, 2, 1, False),
    b"LRANGE": (lrange, 4, 1, False),
}


def execute(s: Session, argv: list[bytes]) -> bytes:
    entry = COMMANDS.get(argv[0]) or COMMANDS.get(argv[0].upper())
    if entry is None:
        return unknown(argv)
    fn, arity = entry[0], entry[1]
    n = len(argv)
    if (arity > 0 and n != arity) or n < -arity:
        return wrong_args(argv)
    try:
        reply = fn(s, argv)
    except CommandError as exc:
        reply = exc.line
    s.stats.commands += 1
    return reply


__all__ = ["COMMANDS", "Session", "Stats", "execute"]
