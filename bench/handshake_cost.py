"""Server instructions per connection, one request each: full TLS 1.3
handshakes, resumed ones (the client offers the ticket of its last
connection), and plain HTTP (and, to set the connection's cost apart from
the request's, keep-alive requests over TLS and plain), for uringserve and nginx, counted by callgrind.

    python bench/handshake_cost.py [-n 320] [--concurrency 16] [--servers uringserve,nginx]
                                   [--modes full,resume,plain,keepalive,plain-keepalive] [--top 25] [--keep DIR]

Instruction counts, not time: they do not move with what else runs on the
machine, so this can run while others work (tls_bench.py's CPU times
cannot). Each server runs under `valgrind --tool=callgrind` with the
instrumentation off; after `--warmup` connections of a mode the counters
are zeroed (callgrind_control -z), `-n` connections run, and the counters
are dumped (-d): what the server's process executed in user space for
those connections, divided by their number. The kernel's share (TCP,
io_uring, epoll) is not in it: `perf record` tells that part.

`--concurrency 16` runs 16 clients at once, as tls_bench.py's wrk does, so
the loop's per-iteration costs are shared as on a busy server; with 1 each
connection is served alone and pays them whole.

The client (this process) does what wrk does per connection: TLS 1.3
handshake (no ALPN), `GET /` with `Connection: close`, read the whole
response, send close_notify, close. It counts the session tickets each
server sends (NewSessionTicket messages) and checks that resumed
connections were resumed. Both servers use the same certificate and key
(trustme's: ECDSA P-256) and nginx is configured as in tls_bench.py.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import trustme

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import free_port, stop, wait_listening  # noqa: E402
from tls_bench import NGINX_CONF, commands  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
NEW_SESSION_TICKET = 4


class Client:
    """One-request connections as wrk makes them."""

    def __init__(self, port: int, mode: str) -> None:
        self.port, self.mode = port, mode
        self.session: ssl.SSLSession | None = None
        self.tickets = 0
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # as wrk: the client's own costs are not measured
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3

        def count(conn, direction, version, content_type, msg_type, data):  # noqa: ANN001
            if direction == "read" and content_type == ssl._TLSContentType.HANDSHAKE and msg_type == NEW_SESSION_TICKET:  # type: ignore[attr-defined]
                self.tickets += 1

        ctx._msg_callback = count  # type: ignore[attr-defined]
        self.ctx = ctx

    def one(self) -> None:
        if self.mode.endswith("keepalive"):
            self.keepalive()
            return
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=120)
        if self.mode == "plain":
            s: socket.socket = raw
        else:
            resume = self.session if self.mode == "resume" else None
            s = self.ctx.wrap_socket(raw, server_hostname="127.0.0.1", session=resume)
        try:
            s.sendall(REQUEST)
            data = read_response(s, eof_ends=True)
            if not data.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"unexpected answer: {data[:100]!r}")
            if isinstance(s, ssl.SSLSocket):
                if self.mode == "resume" and self.session is not None and not s.session_reused:
                    raise RuntimeError("the session was not resumed")
                self.session = s.session
                s.setblocking(False)
                try:  # close_notify, as wrk's SSL_shutdown, without waiting for the server's
                    s.unwrap()
                except (ssl.SSLError, OSError):
                    pass
        finally:
            s.close()

    def many(self, n: int) -> None:
        for _ in range(n):
            self.one()

    _conn: socket.socket | None = None

    def keepalive(self) -> None:
        """One request on a connection kept open (the per-request cost, to set the per-connection one apart)."""
        if self._conn is None:
            raw = socket.create_connection(("127.0.0.1", self.port), timeout=120)
            plain = self.mode == "plain-keepalive"
            self._conn = raw if plain else self.ctx.wrap_socket(raw, server_hostname="127.0.0.1")
        s = self._conn
        s.sendall(REQUEST.replace(b"Connection: close", b"Connection: keep-alive"))
        read_response(s, eof_ends=False)


def read_response(s: socket.socket, eof_ends: bool) -> bytes:
    """One response, to the end of its Content-Length; an EOF before that
    ends it where `eof_ends` (a Connection: close request), else is an error."""
    data = b""
    while True:
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep:
            m = re.search(rb"(?i)content-length:\s*(\d+)", head)
            if m and len(body) >= int(m.group(1)):
                return data
        chunk = s.recv(65536)
        if not chunk:
            if eof_ends:
                return data
            raise RuntimeError("the server closed a keep-alive connection")
        data += chunk


def callgrind(cmd: list[str], out: str) -> list[str]:
    return ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}", *cmd]


def control(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True, timeout=120)


def parse(path: str) -> tuple[int, dict[tuple[str, str], int], dict[tuple[str, str], int]]:
    """(total Ir, exclusive Ir by (object, function), inclusive Ir by (object, function)) of a callgrind dump."""
    names: dict[str, dict[str, str]] = {"ob": {}, "fl": {}, "fn": {}}
    kind_of = {"ob": "ob", "cob": "ob", "fn": "fn", "cfn": "fn"}
    kind_of.update(dict.fromkeys(("fl", "fi", "fe", "cfi", "cfl"), "fl"))
    self_cost: dict[tuple[str, str], int] = defaultdict(int)
    incl: dict[tuple[str, str], int] = defaultdict(int)
    ob = fn = ""
    in_call = False
    total = 0
    spec = re.compile(r"^(ob|cob|fl|fi|fe|cfi|cfl|fn|cfn)=(?:\((\d+)\))?\s*(.*)$")
    for line in Path(path).read_text(errors="replace").splitlines():
        if not line:
            continue
        c = line[0]
        if c.isdigit() or c in "+-*":
            if in_call:  # the inclusive cost of the call just named
                in_call = False
                incl[(ob, fn)] += int(line.split()[-1])
                continue
            n = int(line.split()[-1])
            self_cost[(ob, fn)] += n
            incl[(ob, fn)] += n
            continue
        if line.startswith("calls="):
            in_call = True
            continue
        if line.startswith(("summary:", "totals:")):
            total = int(line.split()[1])
            continue
        m = spec.match(line)
        if not m:
            continue
        key, ident, name = m.groups()
        table = names[kind_of[key]]
        if ident is not None and name:
            table[ident] = name
        value = table.get(ident, name) if ident is not None else name
        if key == "ob":
            ob = value
        elif key == "fn":
            fn = value
    if not total:
        total = sum(self_cost.values())
    return total, self_cost, incl


def short(obj: str) -> str:
    name = os.path.basename(obj)
    return re.sub(r"\.(so|abi3\.so)[.\d]*$", "", name) or "?"


def report(label: str, n: int, tickets: float, path: str, top: int) -> None:
    total, excl, incl = parse(path)
    print(f"\n== {label}: {total / n:,.0f} instructions per connection ({n} connections, {tickets:g} tickets each)")
    by_obj: dict[str, int] = defaultdict(int)
    for (ob, _fn), v in excl.items():
        by_obj[short(ob)] += v
    print("  by object:")
    for ob, v in sorted(by_obj.items(), key=lambda kv: -kv[1])[:10]:
        print(f"    {v / n:>12,.0f}  {100 * v / total:5.1f}%  {ob}")
    print(f"  top {top} functions (self):")
    for (ob, fn), v in sorted(excl.items(), key=lambda kv: -kv[1])[:top]:
        print(f"    {v / n:>12,.0f}  {100 * v / total:5.1f}%  {fn} [{short(ob)}]")
    print(f"  top {top} functions (inclusive, C entry points):")
    shown = 0
    for (ob, fn), v in sorted(incl.items(), key=lambda kv: -kv[1]):
        if "python" in short(ob) or fn.startswith(("0x", "???")):
            continue  # the interpreter's frames nest in each other: their inclusive counts add up past 100%
        print(f"    {v / n:>12,.0f}  {100 * v / total:5.1f}%  {fn} [{short(ob)}]")
        shown += 1
        if shown == top:
            break


def started(cmd: list[str], out: str, port: int) -> subprocess.Popen:
    """`cmd` under callgrind, listening on `port` (slowly: the interpreter runs on valgrind's CPU)."""
    proc = subprocess.Popen(callgrind(cmd, out), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_listening(port, proc, timeout=180)
    except RuntimeError as exc:
        stop(proc)
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        raise RuntimeError(f"{' '.join(cmd)}: {exc}\n{err[-2000:]}") from None
    return proc


def run_server(name: str, modes: list[str], args: argparse.Namespace, cert: str, key: str, tmp: str) -> None:
    port = free_port()
    cmd = commands(port, tmp, cert, key)[name]
    if name == "nginx":
        conf = NGINX_CONF.format(tmp=tmp, port=port, cert=cert, key=key)
        if "plain" in modes or "plain-keepalive" in modes:
            plain_port = free_port()
            tls_listen = f"listen 127.0.0.1:{port} ssl;"
            conf = conf.replace(tls_listen, f"{tls_listen}\n        listen 127.0.0.1:{plain_port};")
        Path(tmp, "nginx.conf").write_text(conf)
    elif "plain" in modes or "plain-keepalive" in modes:
        plain_port = free_port()
    out = os.path.join(tmp, f"cg.{name}")
    procs = []
    try:
        proc = started(cmd, out, port)
        procs.append(proc)
        ports = {"full": port, "resume": port, "keepalive": port}
        pids = {"full": proc.pid, "resume": proc.pid, "keepalive": proc.pid}
        outs = {"full": out, "resume": out, "keepalive": out}
        if "plain" in modes or "plain-keepalive" in modes:
            if name == "nginx":
                for m in ("plain", "plain-keepalive"):
                    ports[m], pids[m], outs[m] = plain_port, proc.pid, out
            else:  # --tls-cert serves TLS on every listener: a second server for plain HTTP
                pcmd = commands(plain_port, tmp, cert, key)[name]
                pcmd = pcmd[: pcmd.index("--tls-cert")]
                pout = out + ".plain"
                pproc = started(pcmd, pout, plain_port)
                procs.append(pproc)
                for m in ("plain", "plain-keepalive"):
                    ports[m], pids[m], outs[m] = plain_port, pproc.pid, pout
        dumps: dict[str, int] = defaultdict(int)
        for mode in modes:
            clients = [Client(ports[mode], mode) for _ in range(args.concurrency)]
            for client in clients:
                for _ in range(max(1, args.warmup // len(clients))):
                    client.one()
            control(pids[mode], "-i", "on")
            control(pids[mode], "-z")
            for client in clients:
                client.tickets = 0
            each = args.n // len(clients)
            with ThreadPoolExecutor(len(clients)) as pool:  # the server runs slower than they all: its loop batches
                for f in [pool.submit(c.many, each) for c in clients]:
                    f.result()
            control(pids[mode], "-d")
            dumps[outs[mode]] += 1
            path = f"{outs[mode]}.{dumps[outs[mode]]}"
            n = each * len(clients)
            report(f"{name} {mode} (x{len(clients)})", n, sum(c.tickets for c in clients) / n, path, args.top)
            if args.keep:
                shutil.copy(path, os.path.join(args.keep, f"{name}.{mode}.callgrind"))
    finally:
        for p in procs:
            stop(p)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=200, help="connections counted per mode (200)")
    p.add_argument("--warmup", type=int, default=30, help="connections before counting (30)")
    p.add_argument("--servers", default="uringserve,nginx", help="of tls_bench.py's: uringserve,uringserve-asgi,nginx")
    p.add_argument("--modes", default="full,resume,plain", help="of full,resume,plain,keepalive,plain-keepalive")
    p.add_argument("--top", type=int, default=25)
    p.add_argument(
        "--concurrency", type=int, default=1,
        help="clients at once (1: each connection alone, the loop's per-iteration costs included; "
        "16: as tls_bench.py's wrk, a busy server's batches)",
    )  # fmt: skip
    p.add_argument("--keep", help="a directory to copy the callgrind dumps to (callgrind_annotate reads them)")
    args = p.parse_args()
    for tool in ("valgrind", "callgrind_control", "nginx"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing: apt-get install valgrind nginx-light")
    modes = args.modes.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        issued = trustme.CA().issue_cert("127.0.0.1")
        cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        issued.cert_chain_pems[0].write_to_path(cert)
        issued.private_key_pem.write_to_path(key)
        os.chmod(tmp, 0o755)
        for path in (cert, key):
            os.chmod(path, 0o644)
        for name in args.servers.split(","):
            run_server(name, modes, args, cert, key, tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
