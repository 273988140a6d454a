"""The HTTP request path: random, mutated and split requests fed to
HTTPProtocol on a fake transport, with a native (sync and async) or ASGI
app. Invariants: no exception escapes the protocol and none reaches the
loop's exception handler; nothing hangs (every handler finishes within a
bounded number of loop turns); what was written parses as a sequence of
well-formed HTTP/1.1 responses; after the client's EOF the connection is
closed; after connection_lost no task is left."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from tests.fuzz.common import Carver, fuzz  # noqa: E402

httptools: Any = None
http: Any = None
protocol_mod: Any = None
LOOP: asyncio.AbstractEventLoop | None = None
RUNNERS: list[Any] = []
CONFIGS: list[Any] = []


class Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()
        self.closed = False
        self.reading = True
        self.eof = False
        self.held: list[bytes] = []
        self.unread = 0
        self.write_paused = False
        self.eof_held = False
        self.protocol: Any = None

    def write(self, data: Any) -> None:
        assert not self.eof, "written after write_eof()"
        if self.closed:
            return
        self.out += data
        # a client that reads slowly: past the high-water mark the protocol is paused
        self.unread += len(data)
        if self.unread > 2048 and not self.write_paused and self.protocol is not None:
            self.write_paused = True
            self.protocol.pause_writing()

    def client_reads(self, n: int) -> None:
        self.unread -= min(n, self.unread)
        if self.write_paused and self.unread <= 512 and not self.closed:
            self.write_paused = False
            self.protocol.resume_writing()

    def writelines(self, list_of_data: Any) -> None:
        for d in list_of_data:
            self.write(d)

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    # as a real transport: nothing is delivered while reading is paused; what
    # arrives meanwhile (and the EOF) is held and delivered on resume
    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        if not self.reading:
            self.reading = True
            asyncio.get_running_loop().call_soon(self.flush)

    def arrive(self, data: bytes) -> None:
        self.held.append(data)
        self.flush()

    def arrive_eof(self) -> None:
        self.eof_held = True
        self.flush()

    def flush(self) -> None:
        while self.reading and self.held and not self.closed:
            self.protocol.data_received(self.held.pop(0))
        if self.reading and not self.held and self.eof_held and not self.closed:
            self.eof_held = False
            if not self.protocol.eof_received():
                self.close()  # asyncio's contract: a falsy eof_received() closes the transport

    def is_reading(self) -> bool:
        return self.reading

    def get_write_buffer_size(self) -> int:
        return self.unread

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8000)}.get(name, default)


def instrument() -> None:
    global httptools, http, protocol_mod
    import httptools as _httptools

    import uringserve.http as _http
    import uringserve.http.asgi  # noqa: F401
    import uringserve.http.native  # noqa: F401
    import uringserve.http.parser  # noqa: F401
    import uringserve.http.protocol  # noqa: F401

    httptools, http, protocol_mod = _httptools, _http, uringserve.http.protocol


def _setup() -> None:
    global LOOP
    if LOOP is not None:
        return
    if http is None:
        instrument()
    from uringserve.http.asgi import asgi_runner
    from uringserve.http.native import native_runner

    def hello(req: Any) -> Any:
        if req.raw_path == b"/echo":
            return http.Response(req.content)
        if req.raw_path == b"/404":
            return http.Response(b"no\n", status=404)
        return http.Response(b"hello\n")

    async def slow(req: Any) -> Any:
        await asyncio.sleep(0)
        return http.Response(req.content + b"!")

    async def asgi(scope: dict, receive: Any, send: Any) -> None:
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-n", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body[:10], "more_body": True})
        await send({"type": "http.response.body", "body": body[10:]})

    RUNNERS.extend([native_runner(hello), native_runner(slow), asgi_runner(asgi, {}, None)])
    CONFIGS.extend(
        [
            http.HTTPConfig(),
            http.HTTPConfig(max_header_bytes=200, max_headers=4, max_target_bytes=16, max_body_bytes=64),
            http.HTTPConfig(max_pipelined=2, keepalive_requests=2, body_buffer_bytes=16),
        ]
    )
    LOOP = asyncio.new_event_loop()
    LOOP.set_exception_handler(_loop_error)


def _loop_error(loop: Any, ctx: dict) -> None:
    raise AssertionError(f"the loop's exception handler was called: {ctx.get('message')}: {ctx.get('exception')!r}")


STATUS_LINE = re.compile(rb"HTTP/1\.1 [1-5][0-9][0-9] [\x20-\x7e]*")
FIELD = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+: ?[\x20-\x7e\t]*")


def request_methods(payload: bytes) -> list[bytes | None]:
    """The methods of the requests llhttp reads from `payload`, in order, as
    far as their targets began (a refusal after that knows its method)."""
    methods: list[bytes | None] = []

    class Sink:
        def on_message_begin(self) -> None:
            methods.append(None)

        def on_url(self, url: bytes) -> None:
            if methods[-1] is None:
                methods[-1] = parser.get_method()

    parser = httptools.HttpRequestParser(Sink())
    try:
        parser.feed_data(payload)
    except (httptools.HttpParserError, httptools.HttpParserUpgrade):
        pass
    return methods


def check_responses(out: bytes, methods: list[bytes | None], closed: bool) -> int:
    """Count the well-formed responses in `out` (interim 1xx not counted);
    raise on anything else. A response to HEAD, 204 or 304 has no body."""
    pos, n = 0, 0
    while pos < len(out):
        end = out.find(b"\r\n\r\n", pos)
        assert end >= 0, f"a response head never ended: {out[pos : pos + 200]!r}"
        status_line, *fields = out[pos:end].split(b"\r\n")
        assert STATUS_LINE.fullmatch(status_line), f"bad status line {status_line!r}"
        headers = {}
        for f in fields:
            assert FIELD.fullmatch(f), f"bad header line {f!r}"
            name, _, value = f.partition(b":")
            assert name.lower() not in headers or name.lower() == b"set-cookie", f"{name!r} twice"
            headers[name.lower()] = value.strip()
        status = int(status_line[9:12])
        pos = end + 4
        if status < 200:
            continue
        head_request = n < len(methods) and methods[n] == b"HEAD"
        n += 1
        if head_request or status in (204, 304):
            continue
        if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            assert b"content-length" not in headers, "both Content-Length and chunked"
            while True:
                eol = out.find(b"\r\n", pos)
                assert eol >= 0, "a chunk size line never ended"
                size = int(out[pos:eol], 16)
                pos = eol + 2 + size
                assert out[pos : pos + 2] == b"\r\n", "a chunk not followed by CRLF"
                pos += 2
                if size == 0:
                    break
        elif b"content-length" in headers:
            length = int(headers[b"content-length"])
            if pos == len(out) and closed and status >= 400:
                # the last answer, a refusal, with no body: a refused HEAD. Whether
                # llhttp had read the method when it refused depends on how the
                # bytes were split, so either form is right here
                break
            assert len(out) - pos >= length, f"body shorter than its Content-Length {length}"
            pos += length
        else:
            assert closed, "a body without length on a connection left open"
            pos = len(out)
    return n


async def _turns(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def one_input(data: bytes) -> None:
    _setup()
    assert LOOP is not None
    c = Carver(data)
    runner = RUNNERS[c.byte() % len(RUNNERS)]
    config = CONFIGS[c.byte() % len(CONFIGS)]
    flags = c.byte()
    eof, big, slow_reader = flags & 1, flags & 2, flags & 4
    payload = c.rest()
    proto = protocol_mod.HTTPProtocol(runner, config)
    t = Transport()

    async def drive() -> None:
        proto.connection_made(t)
        t.protocol = proto
        # reads of up to 64 bytes, or of up to 4 KiB (many requests in one read)
        scale = 64 if big else 1
        for piece in Carver(payload[:1]).pieces(payload, scale) if payload else []:
            if t.closed:
                break
            t.arrive(piece)
            await _turns(3)
            t.client_reads(c.byte() * 64 if slow_reader else 1 << 30)
        if eof and not t.closed:
            t.arrive_eof()
        # bounded: every queued request is answered within a few turns each
        for _ in range(200 + 20 * payload.count(b"HTTP/")):
            if (not proto._queue and not t.held and not t.eof_held) or t.closed or t.eof:
                break
            t.client_reads(1 << 30)  # the client reads everything now
            await asyncio.sleep(0)
        if eof:
            assert not (t.held or t.eof_held) or t.closed or t.eof, f"reading stayed paused, {len(t.held)} reads held"
        # once the client has sent everything (EOF), nothing may wait; after a
        # response that ends the connection the rest is never answered (RFC 9112 9.6)
        if eof:
            assert not proto._queue or t.closed or t.eof, f"requests never answered: {proto._queue}"
        await _turns(3)

    LOOP.run_until_complete(drive())
    if eof:
        assert t.closed, "the client sent EOF and the server kept the connection open"
    # what was written is a sequence of well-formed responses
    check_responses(bytes(t.out), request_methods(payload), t.closed or t.eof)  # FIN ends a body too
    proto.connection_lost(None)
    LOOP.run_until_complete(_turns(5))
    left = [task for task in asyncio.all_tasks(LOOP) if not task.done()]
    assert not left, f"tasks left after connection_lost: {left}"


def main() -> None:
    fuzz(one_input, instrument)


if __name__ == "__main__":
    main()
