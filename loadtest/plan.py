"""What to send, where, and how hard: a target URL and options become a Plan.

A Plan is plain data (it crosses to worker processes as JSON): the
target's address, the byte strings to stage (units, each asking for a
number of responses) and which units each connection cycles through.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import importlib.util
import inspect
import math
import os
import socket
import sys
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

DEFAULT_PORTS = {"http": 80, "https": 443, "tcp": 7, "redis": 6379, "resp": 6379, "ws": 80, "wss": 443}
MODES = {"http": "http", "https": "http", "tcp": "echo", "redis": "resp", "resp": "resp", "ws": "ws", "wss": "ws"}
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 1.3
# what --deflate offers: our messages are compressed once, so we promise no context takeover
WS_DEFLATE_OFFER = "permessage-deflate; client_no_context_takeover"
# a scenario's generator is read this far per connection, then cycled: the
# requests are staged once in registered memory, so they are a finite set
SCENARIO_LIMIT = 1024


class PlanError(ValueError):
    """A target or option that cannot be run, with what to do instead."""


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    path: str  # HTTP request target: path and query
    family: int
    address: tuple[Any, ...]

    @property
    def mode(self) -> str:
        return MODES[self.scheme]

    @property
    def host_header(self) -> str:
        default = DEFAULT_PORTS[self.scheme]
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"

    def url(self) -> str:
        rest = self.path if self.mode in ("http", "ws") else ""
        return f"{self.scheme}://{self.host_header}{rest}"


def parse_target(url: str) -> Target:
    """http://, https:// (HTTP/1.1), tcp:// (echo), redis:// or resp:// (RESP), ws:// or wss:// (WebSocket echo)."""
    parts = urlsplit(url if "://" in url else "http://" + url)
    scheme = parts.scheme.lower()
    if scheme not in MODES:
        use = "http://, https://, tcp://, redis://, ws:// or wss://"
        raise PlanError(f"unsupported scheme {parts.scheme!r} in {url!r}: use {use}")
    if not parts.hostname:
        raise PlanError(f"no host in {url!r}")
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError as exc:
        raise PlanError(f"bad port in {url!r}: {exc}") from None
    try:
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise PlanError(f"cannot resolve {parts.hostname!r}: {exc.strerror}") from None
    family, _, _, _, address = next((i for i in infos if i[0] == socket.AF_INET), infos[0])
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(scheme, parts.hostname, port, path, family, tuple(address))


@dataclass
class Plan:
    """One run: what every worker process stages and sends."""

    target: Target
    conns: int
    threads: int
    duration: float
    units: list[tuple[bytes, int]]
    sequences: list[list[int]]  # per connection (all of the run, split among threads)
    depth: int = 1
    keepalive: bool = True
    head_only: bool = False
    rate: float = 0.0  # requests/s over all threads; 0: closed loop
    timeout: float = 2.0
    warmup: float = 0.0
    ring: dict[str, Any] = field(default_factory=dict)  # RingConfig overrides (ablations)
    insecure: bool = False  # https: no certificate verification
    cafile: str | None = None  # https: trust these CA certificates too
    # ws/wss: text, deflate, accept (the 101's Sec-WebSocket-Accept), hs_unit (the
    # upgrade request's unit), expect (unit k's echo is unit k + expect)
    ws: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["target"] = dataclasses.asdict(self.target)
        d["units"] = [[base64.b64encode(b).decode(), n] for b, n in self.units]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Plan:
        d = dict(d)
        t = d["target"]
        d["target"] = Target(**{**t, "address": tuple(t["address"])})
        d["units"] = [(base64.b64decode(b), n) for b, n in d["units"]]
        return cls(**d)

    def share(self, k: int) -> Plan:
        """Worker k's part: every threads-th connection from k, and its part of the rate."""
        seqs = self.sequences[k :: self.threads]
        return dataclasses.replace(self, conns=len(seqs), sequences=seqs, rate=self.rate / self.threads, threads=1)


# ---- HTTP ------------------------------------------------------------------


def http_request(
    method: str,
    target: str,
    host: str,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    keepalive: bool = True,
) -> bytes:
    names = set()
    lines = [f"{method} {target} HTTP/1.1"]
    for name, value in headers:
        if "\r" in name + value or "\n" in name + value or ":" in name or not name.strip():
            raise PlanError(f"header {name!r}: {value!r} is not a valid header line")
        names.add(name.lower())
        lines.append(f"{name}: {value}")
    if "host" not in names:
        lines.insert(1, f"Host: {host}")
    if body and "content-length" not in names and "transfer-encoding" not in names:
        lines.append(f"Content-Length: {len(body)}")
    if not keepalive and "connection" not in names:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def parse_header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise PlanError(f"header {text!r} is not 'Name: value'")
    return name.strip(), value.strip()


def _load_scenario(path: str) -> Any:
    p = Path(path)
    if not p.is_file():
        raise PlanError(f"scenario file {path!r} does not exist")
    spec = importlib.util.spec_from_file_location(f"loadtest_scenario_{p.stem}", p)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise PlanError(f"scenario {path!r} failed to import: {type(exc).__name__}: {exc}") from exc
    fn = getattr(module, "requests", None)
    if not callable(fn):
        raise PlanError(f"scenario {path!r} defines no requests(conn) function")
    return fn


def _scenario_request(item: Any, target: Target, keepalive: bool, where: str) -> tuple[bytes, bool]:
    """A yielded request: a mapping or tuple (method, target[, headers[, body]])."""
    if isinstance(item, Mapping):
        method, path = item.get("method", "GET"), item.get("target", target.path)
        headers, body = item.get("headers", ()), item.get("body", b"")
    elif isinstance(item, tuple | list) and 2 <= len(item) <= 4:
        method, path, headers, body = (*item, (), b"")[:4]
    else:
        raise PlanError(f"{where}: yielded {item!r}; yield (method, target, headers, body) or a dict with those keys")
    if isinstance(headers, Mapping):
        headers = list(headers.items())
    if isinstance(body, str):
        body = body.encode()
    return http_request(str(method), str(path), target.host_header, headers, bytes(body), keepalive), (
        str(method).upper() == "HEAD"
    )


def build_plan(
    url: str,
    *,
    conns: int = 10,
    threads: int = 1,
    duration: float = 10.0,
    method: str = "GET",
    headers: Iterable[str] = (),
    body: bytes = b"",
    pipeline: int = 1,
    keepalive: bool = True,
    rate: float = 0.0,
    timeout: float = 2.0,
    warmup: float = 0.0,
    scenario: str | None = None,
    size: int = 64,
    command: str = "PING",
    ring: dict[str, Any] | None = None,
    insecure: bool = False,
    cafile: str | None = None,
    text: bool = True,
    deflate: bool = False,
) -> Plan:
    target = parse_target(url)
    if threads < 1 or conns < threads:
        raise PlanError(f"{conns} connections over {threads} threads: need at least one connection per thread")
    if pipeline < 1 or pipeline > 4096:
        raise PlanError(f"--pipeline {pipeline}: must be 1..4096")
    if duration <= 0:
        raise PlanError("the duration must be positive")
    if rate < 0:
        raise PlanError("the rate must be positive")
    if cafile and not Path(cafile).is_file():
        raise PlanError(f"--cacert {cafile!r} does not exist")
    if (insecure or cafile) and target.scheme not in ("https", "wss"):
        raise PlanError("--insecure and --cacert are for https:// and wss:// targets")
    if deflate and target.mode != "ws":
        raise PlanError("--deflate is for ws:// and wss:// targets")
    per = 1 if rate else pipeline  # constant rate paces single requests; pipeline = how many may be in flight
    head_only = False
    units: list[tuple[bytes, int]] = []
    sequences: list[list[int]]
    ws: dict[str, Any] = {}
    if target.mode == "ws":
        if size < 1:
            raise PlanError("--size must be at least 1 byte")
        if pipeline > 1 and not rate:
            raise PlanError("ws:// sends one message per connection at a time in a closed loop: use -c for more")
        if not keepalive:
            raise PlanError("--no-keepalive is not for ws:// targets (the handshake is made once per connection)")
        units, ws = _ws_units(target, [parse_header(h) for h in headers], size, text, deflate)
        sequences = [[(i + k) % 4 for k in range(4)] for i in range(conns)]
    elif target.mode == "http":
        hdrs = [parse_header(h) for h in headers]
        if scenario:
            units, sequences, head_only = _scenario_units(scenario, target, conns, keepalive, per)
        else:
            head_only = method.upper() == "HEAD"
            req = http_request(method.upper(), target.path, target.host_header, hdrs, body, keepalive)
            units = [(req * per, per)]
            sequences = [[0]] * conns
    elif target.mode == "echo":
        if size < 1:
            raise PlanError("--size must be at least 1 byte")
        # distinct messages, so bytes echoed out of order or from another connection are caught
        units = [(_pattern(size, k) * per, per) for k in range(4)]
        sequences = [[(i + k) % 4 for k in range(4)] for i in range(conns)]
    else:
        args = command.split()
        if not args:
            raise PlanError("--command is empty")
        cmd = f"*{len(args)}\r\n".encode() + b"".join(
            f"${len(a.encode())}\r\n".encode() + a.encode() + b"\r\n" for a in args
        )
        units = [(cmd * per, per)]
        sequences = [[0]] * conns
    return Plan(
        target=target,
        conns=conns,
        threads=threads,
        duration=duration,
        units=units,
        sequences=sequences,
        depth=pipeline,
        keepalive=keepalive,
        head_only=head_only,
        rate=rate,
        timeout=timeout,
        warmup=warmup,
        ring=dict(ring or {}),
        insecure=insecure,
        cafile=cafile,
        ws=ws,
    )


def ws_deflate(message: bytes) -> bytes:
    """One permessage-deflate payload with no context (RFC 7692 7.2.1): the
    sync-flushed raw deflate stream without its final 00 00 ff ff."""
    z = zlib.compressobj(wbits=-15)
    out = z.compress(message) + z.flush(zlib.Z_SYNC_FLUSH)
    return out[:-4] if out.endswith(b"\x00\x00\xff\xff") else out


def _ws_units(
    target: Target, headers: list[tuple[str, str]], size: int, text: bool, deflate: bool
) -> tuple[list[tuple[bytes, int]], dict[str, Any]]:
    """Four distinct messages (so an echo out of order or from another
    connection is caught), their compressed payloads when deflating, and
    the upgrade request. One key per run: the server checks only its form,
    and the accept value it implies is then one string for the C driver."""
    messages = [_text_pattern(size, k) if text else _pattern(size, k) for k in range(4)]
    key = base64.b64encode(os.urandom(16)).decode()
    accept = base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest()).decode()
    names = {n.lower() for n, _ in headers}
    hdrs = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", key),
        ("Sec-WebSocket-Version", "13"),
    ]
    if deflate and "sec-websocket-extensions" not in names:
        hdrs.append(("Sec-WebSocket-Extensions", WS_DEFLATE_OFFER))
    request = http_request("GET", target.path, target.host_header, [*hdrs, *headers])
    sends = [(ws_deflate(m) if deflate else m, 1) for m in messages]
    units = [*sends, *((m, 1) for m in messages)] if deflate else sends
    units.append((request, 1))
    ws = {"text": text, "deflate": deflate, "accept": accept, "hs_unit": len(units) - 1, "expect": 4 if deflate else 0}
    return units, ws


def _text_pattern(size: int, k: int) -> bytes:
    """ASCII, so every cut of it is valid UTF-8 for a text frame."""
    base = bytes(0x21 + (i * 7 + k * 31) % 94 for i in range(256))
    return (base * (size // 256 + 1))[:size]


def _pattern(size: int, k: int) -> bytes:
    base = bytes((i * 7 + k * 31 + 1) & 0xFF for i in range(256))
    return (base * (size // 256 + 1))[:size]


def _scenario_units(
    path: str, target: Target, conns: int, keepalive: bool, per: int
) -> tuple[list[tuple[bytes, int]], list[list[int]], bool]:
    fn = _load_scenario(path)
    takes_conn = len(inspect.signature(fn).parameters) >= 1
    index: dict[bytes, int] = {}
    units: list[tuple[bytes, int]] = []
    sequences = []
    heads = set()
    for i in range(conns):
        where = f"scenario {path!r}, connection {i}"
        try:
            gen = fn(i) if takes_conn else fn()
            reqs = []
            for item in gen:
                req, head = _scenario_request(item, target, keepalive, where)
                reqs.append(req)
                heads.add(head)
                if len(reqs) == SCENARIO_LIMIT:
                    break
        except PlanError:
            raise
        except Exception as exc:
            raise PlanError(f"{where}: {type(exc).__name__}: {exc}") from exc
        if not reqs:
            raise PlanError(f"{where}: yielded no request")
        # pipelining sends `per` consecutive requests of the cycle as one unit
        cycle = len(reqs) * per // math.gcd(len(reqs), per)
        if cycle > 4 * SCENARIO_LIMIT:
            raise PlanError(f"{where}: {len(reqs)} requests with --pipeline {per} make a cycle too long to stage")
        seq = []
        for k in range(0, cycle, per):
            group = b"".join(reqs[(k + j) % len(reqs)] for j in range(per))
            if group not in index:
                index[group] = len(units)
                units.append((group, per))
            seq.append(index[group])
        sequences.append(seq)
    if len(heads) > 1:
        raise PlanError(f"scenario {path!r} mixes HEAD with other methods: responses to HEAD have no body to frame")
    return units, sequences, heads == {True}
