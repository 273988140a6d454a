"""A raw HTTP/1.1 test client: sends exact bytes (whole, or one byte per
send), parses responses with httptools, and reports whether the server
closed the connection afterwards.

Whether the connection is closed is found out, not waited for: after the
expected responses, the client sends a probe (a request line the server's
parser refuses, so no handler runs and nothing is counted) and reads. A
connection the server keeps answers the probe (400); one it ends shows EOF
or a reset. Either comes at once from a correct server, so a busy machine
delays the answer but cannot change it; `timeout` only bounds a hang."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field

import httptools


@dataclass
class Resp:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    raw_head: list[tuple[bytes, bytes]] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


class _Collector:
    def __init__(self) -> None:
        self.done: list[Resp] = []
        self.cur = Resp()
        self.parser: httptools.HttpResponseParser | None = None

    def on_header(self, name: bytes, value: bytes) -> None:
        self.cur.raw_head.append((name, value))
        k = name.decode("latin-1").lower()
        self.cur.headers[k] = (self.cur.headers[k] + ", " if k in self.cur.headers else "") + value.decode("latin-1")

    def on_headers_complete(self) -> None:
        assert self.parser is not None
        self.cur.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.cur.body += body

    def on_message_complete(self) -> None:
        self.done.append(self.cur)
        self.cur = Resp()


@dataclass
class Result:
    responses: list[Resp]
    closed: bool
    raw: bytes


PROBE = b"PROBE\x00\r\n\r\n"  # refused by the parser: 400 from a connection still open


def exchange(
    port: int,
    data: bytes,
    *,
    responses: int = 1,
    bytewise: bool = False,
    head_for: set[int] | None = None,
    timeout: float = 10.0,
    pause: float = 0.0,
) -> Result:
    """Send `data`, read `responses` responses (HEAD responses have no body:
    list their indexes in head_for), then probe whether the server still
    reads the connection (see the module's docstring)."""
    col = _Collector()
    col.parser = httptools.HttpResponseParser(col)
    head_for = head_for or set()
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    raw = bytearray()
    closed = False
    sender = None
    send_failed: list[BaseException] = []
    try:
        if bytewise:
            try:
                for i in range(len(data)):
                    s.send(data[i : i + 1])
                    if pause:
                        time.sleep(pause)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server may answer and close before all was sent
        else:
            # sent beside the reads: a server that stops reading a client that
            # does not read its responses (as ours does) would otherwise
            # deadlock with a sendall() of more than the socket buffers hold
            sender = threading.Thread(target=_send_all, args=(s, data, send_failed), daemon=True)
            sender.start()
        deadline = time.monotonic() + timeout
        while len(col.done) < responses and time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                closed = True
                try:
                    col.parser.feed_data(b"")  # a close-delimited body ends here
                except httptools.HttpParserError:
                    pass
                if col.cur.status and len(col.done) < responses:
                    col.done.append(col.cur)
                break
            raw += chunk
            _feed(col, chunk, head_for)
        if sender is not None:
            sender.join(max(0.0, deadline - time.monotonic()))
            if sender.is_alive() or send_failed:
                raise AssertionError(f"the server stopped reading before all the requests were sent {send_failed}")
        if not closed:
            closed = _probe_closed(s, raw, time.monotonic() + timeout)
    finally:
        s.close()
    return Result(col.done, closed, bytes(raw))


def _send_all(s: socket.socket, data: bytes, failed: list[BaseException]) -> None:
    try:
        s.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server may answer and close before all was sent
    except OSError as exc:  # a timeout: reported by exchange() in the test's thread
        failed.append(exc)


def _probe_closed(s: socket.socket, raw: bytearray, deadline: float) -> bool:
    """True if the server ended the connection: EOF or a reset, where an
    open connection answers the probe. Bytes of another response that come
    before the probe's answer are kept in `raw` (a test then sees them)."""
    try:
        s.sendall(PROBE)
    except (BrokenPipeError, ConnectionResetError):
        return True
    got = bytearray()
    while time.monotonic() < deadline:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            return True
        if not chunk:
            raw += got
            return True
        got += chunk
        at = got.find(b"HTTP/1.1 400 ")
        if at >= 0:
            raw += got[:at]  # anything before the probe's answer was the server's own
            return False
    raise AssertionError(f"the server neither answered the probe nor closed in time: {bytes(got)!r}")


def _feed(col: _Collector, data: bytes, head_for: set[int]) -> None:
    """Feed response bytes; a HEAD response (its index in head_for) ends at its blank line."""
    if len(col.done) in head_for:
        end = data.find(b"\r\n\r\n")
        assert end >= 0, "tests send HEAD responses whole"
        p = httptools.HttpResponseParser(col)
        col.parser = p
        p.feed_data(data[: end + 4])
        if col.cur.status:
            col.done.append(col.cur)
            col.cur = Resp()
        col.parser = httptools.HttpResponseParser(col)
        data = data[end + 4 :]
        if not data:
            return
    assert col.parser is not None
    col.parser.feed_data(data)


def talk(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """`data` on a connection of its own: the raw bytes of its one response,
    after which the server must have ended the connection (send
    `Connection: close`, or a request it refuses)."""
    result = exchange(port, data, timeout=timeout)
    assert result.closed, f"the server kept the connection open after {result.raw!r}"
    return result.raw
