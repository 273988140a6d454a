"""Floors under any Python HTTP server on UringEventLoop, for
bench/http_bench.py. None of them is a server: they answer what wrk sends
and nothing else.

- `raw` (`floor` in the benchmark): answers each received segment with a
  fixed hello-world response, without parsing: what the loop and the kernel
  cost.
- `parse` (`floor-parse`): the least a Python handler API can cost on top:
  each request head recognised by the same C call uringserve.http uses, one
  request object, one handler call, a Date header, one write. No limits,
  pipelining order, timers or keep-alive rules.
- `asgi` (`floor-asgi`): the same with the ASGI contract's own costs: the
  scope dict, a Task per request (started eagerly), `send` as a plain
  function, the demo's ASGI app.

The distance from `parse` to uringserve (and from `asgi` to uringserve-asgi)
is what connection rules and checks cost; the floors themselves are what a
design that keeps a Python call per request cannot go below.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import uringserve  # noqa: E402
from uringserve.http import framing  # noqa: E402
from uringserve.http.parser import _HEAD_LEN, _TARGET_SHIFT, HeaderBlock, _scan  # noqa: E402

RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: floor\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: 14\r\n\r\nHello, world!\n"
)
HEAD = b"HTTP/1.1 200 OK\r\nServer: floor\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 14\r\n"
_DATE = framing.DATE


class Floor(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.write = transport.write  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.write(RESPONSE)


class Req:
    __slots__ = ("target", "headers")

    def __init__(self, target: bytes, headers: bytes) -> None:
        self.target = target
        self.headers = headers


def handler(req: Req) -> bytes:
    return b"Hello, world!\n" if req.target == b"/" else b"?\n"


class _ScanFloor(Floor):
    """Request heads as uringserve.http's recogniser finds them; each one
    to answer(target, header block)."""

    def data_received(self, data: bytes) -> None:
        n, pos = len(data), 0
        while pos < n:
            r = _scan(data, pos, n, 8192, 8192, 100)
            if r <= 0:
                return
            end = pos + (r & _HEAD_LEN)
            te = pos + 4 + ((r >> _TARGET_SHIFT) & 0xFFFF)
            self.answer(data[pos + 4 : te], data[te + 11 : end - 2])
            pos = end

    def answer(self, target: bytes, headers: bytes) -> None:
        raise NotImplementedError


class ParseFloor(_ScanFloor):
    def answer(self, target: bytes, headers: bytes) -> None:
        body = handler(Req(target, HeaderBlock(headers)))
        if time.time() >= _DATE[0]:
            framing.refresh_date()
        self.write(b"".join((HEAD, _DATE[1], b"\r\n", body)))


_ASGI = {"version": "3.0", "spec_version": "2.4"}


class _Send:
    __slots__ = ("write", "done", "status", "block")

    def __init__(self, write: Any, done: asyncio.Future) -> None:
        self.write = write
        self.done = done

    def send(self, m: dict) -> asyncio.Future:
        if m["type"] == "http.response.start":
            self.status = m["status"]
            self.block = framing.encode_headers(m.get("headers", ()))
        else:
            if time.time() >= _DATE[0]:
                framing.refresh_date()
            self.write(b"".join((framing.status_line(self.status), self.block, _DATE[1], b"\r\n", m.get("body", b""))))
        return self.done


async def _receive() -> dict:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _run(app: Any, scope: dict, send: Any) -> None:
    try:
        await app(scope, _receive, send)
    except Exception:  # noqa: BLE001  a floor, not a server: nothing to answer with
        pass


class ASGIFloor(_ScanFloor):
    app: Any = None  # the demo's ASGI app, set by main()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.loop = asyncio.get_running_loop()
        self.done = self.loop.create_future()
        self.done.set_result(None)

    def answer(self, target: bytes, headers: bytes) -> None:
        scope = {
            "type": "http",
            "asgi": _ASGI,
            "http_version": "1.1",
            "server": None,
            "client": None,
            "scheme": "http",
            "method": "GET",
            "root_path": "",
            "path": target.decode("latin-1"),
            "raw_path": target,
            "query_string": b"",
            "headers": HeaderBlock(headers).pairs(),
            "state": {},
            "extensions": {},
        }
        self.loop.create_eager_task(_run(self.app, scope, _Send(self.write, self.done).send))


async def main(port: int, kind: str) -> None:
    protocol = {"raw": Floor, "parse": ParseFloor, "asgi": ASGIFloor}[kind]
    if kind == "asgi":
        from apps.http import asgi_app

        ASGIFloor.app = staticmethod(asgi_app)
    server = await asyncio.get_running_loop().create_server(protocol, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--kind", choices=("raw", "parse", "asgi"), default="raw")
    a = p.parse_args()
    uringserve.run(main(a.port, a.kind))
