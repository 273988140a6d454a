"""A raw-frame WebSocket client for the conformance and bad-input tests.

Written by hand on purpose: every client library refuses to send what these
tests must send (unmasked frames, reserved bits and opcodes, a 2^63 length,
a close code no endpoint may send, half a header), and reads the server's
answer through its own rules. This one masks frames itself, can send any
bytes, and hands back the server's frames exactly as they came."""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import struct
import time
import zlib
from dataclasses import dataclass

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def mask(data: bytes, key: bytes) -> bytes:
    """XOR with the 4-byte key, through one big integer (fast enough for tens of MiB)."""
    n = len(data)
    if not n:
        return b""
    keys = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(keys, "little")).to_bytes(n, "little")


def frame(
    opcode: int,
    payload: bytes = b"",
    fin: bool = True,
    rsv: int = 0,
    masked: bool = True,
    length: int | None = None,
    key: bytes | None = None,
) -> bytes:
    """One client frame. `rsv`: the three RSV bits as a number (4 = RSV1);
    `length`: the length field to write whatever the payload is."""
    n = len(payload) if length is None else length
    head = bytearray([(0x80 if fin else 0) | (rsv & 7) << 4 | opcode & 0xF])
    m = 0x80 if masked else 0
    if n < 126:
        head.append(m | n)
    elif n < 1 << 16:
        head += bytes([m | 126]) + struct.pack("!H", n)
    else:
        head += bytes([m | 127]) + struct.pack("!Q", n)
    if not masked:
        return bytes(head) + payload
    key = os.urandom(4) if key is None else key
    return bytes(head) + key + mask(payload, key)


def close_payload(code: int | None, reason: bytes = b"") -> bytes:
    return b"" if code is None else struct.pack("!H", code) + reason


@dataclass
class Frame:
    fin: bool
    rsv: int
    opcode: int
    payload: bytes
    masked: bool

    @property
    def code(self) -> int | None:
        """A close frame's status code (None: empty payload)."""
        assert self.opcode == CLOSE
        return struct.unpack("!H", self.payload[:2])[0] if len(self.payload) >= 2 else None

    @property
    def reason(self) -> bytes:
        return self.payload[2:]


class Closed(Exception):
    """The server closed (or reset) the TCP connection."""


class RawWS:
    """One connection: the handshake on connect, then frames both ways."""

    def __init__(
        self,
        port: int,
        path: str = "/ws",
        extensions: str | None = None,
        headers: list[tuple[str, str]] = (),  # type: ignore[assignment]
        timeout: float = 30.0,
        nodelay: bool = False,
        handshake: bool = True,
    ) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        if nodelay:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.status = 0
        self.headers: dict[str, str] = {}
        self.key = base64.b64encode(os.urandom(16)).decode()
        self.request = (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {self.key}\r\nSec-WebSocket-Version: 13\r\n"
            + (f"Sec-WebSocket-Extensions: {extensions}\r\n" if extensions is not None else "")
            + "".join(f"{k}: {v}\r\n" for k, v in headers)
            + "\r\n"
        ).encode()
        self.inflater: zlib._Decompress | None = None
        self.deflater: zlib._Compress | None = None
        if handshake:
            try:
                self.sock.sendall(self.request)
                self.read_response()
            except BaseException:
                self.sock.close()
                raise

    # -- the handshake -----------------------------------------------------------------------

    def read_response(self) -> None:
        while b"\r\n\r\n" not in self.buf:
            self._more()
        head, _, rest = bytes(self.buf).partition(b"\r\n\r\n")
        self.buf = bytearray(rest)
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        for line in lines[1:]:
            k, _, v = line.partition(":")
            k = k.strip().lower()
            self.headers[k] = f"{self.headers[k]}, {v.strip()}" if k in self.headers else v.strip()
        if self.status == 101:
            want = base64.b64encode(hashlib.sha1(self.key.encode() + GUID).digest()).decode()
            assert self.headers.get("sec-websocket-accept") == want, self.headers

    @property
    def extension(self) -> str | None:
        return self.headers.get("sec-websocket-extensions")

    def deflate_params(self) -> dict[str, str | None]:
        """The agreed permessage-deflate's parameters ({} when not agreed)."""
        ext = self.extension
        if not ext:
            return {}
        name, *params = [p.strip() for p in ext.split(";")]
        assert name == "permessage-deflate", ext
        out: dict[str, str | None] = {}
        for p in params:
            k, eq, v = p.partition("=")
            out[k.strip()] = v.strip().strip('"') if eq else None
        return out

    # -- bytes ---------------------------------------------------------------------------------

    def _more(self) -> None:
        try:
            chunk = self.sock.recv(1 << 20)
        except ConnectionResetError:
            raise Closed("reset") from None
        if not chunk:
            raise Closed("eof")
        self.buf += chunk

    def _take(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._more()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_read(self, data: bytes, timeout: float = 10.0) -> None:
        """Send `data` and wait until the server has taken it off its socket
        (its receive queue is empty in /proc/net/tcp): the next send arrives
        in a read of its own, so a split the test makes is a split the
        server's parser sees, not one the kernel coalesced."""
        self.sock.sendall(data)
        server_port, client_port = self.sock.getpeername()[1], self.sock.getsockname()[1]
        local, remote = f"0100007F:{server_port:04X}", f"0100007F:{client_port:04X}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with open("/proc/net/tcp") as f:
                for line in f:
                    cols = line.split()
                    if cols[1] == local and cols[2] == remote:
                        if int(cols[4].split(":")[1], 16) == 0:
                            return
                        break
                else:
                    return  # no such socket (the server closed it): nothing left to read
            time.sleep(0.001)
        raise AssertionError(f"the server did not read {len(data)} bytes within {timeout} s")

    def send_frame(self, opcode: int, payload: bytes = b"", **kw: object) -> None:
        self.sock.sendall(frame(opcode, payload, **kw))  # type: ignore[arg-type]

    def recv_frame(self) -> Frame:
        b0, b1 = self._take(2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", self._take(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", self._take(8))[0]
        key = self._take(4) if b1 & 0x80 else None
        payload = self._take(n)
        if key:
            payload = mask(payload, key)
        return Frame(bool(b0 & 0x80), (b0 >> 4) & 7, b0 & 0xF, payload, key is not None)

    # -- messages ------------------------------------------------------------------------------

    def enable_deflate(self, client_wbits: int = 15, server_wbits: int = 15) -> None:
        """Compress what is sent and inflate what arrives (the agreed parameters in the callers' hands)."""
        self.deflater = zlib.compressobj(6, zlib.DEFLATED, -client_wbits)
        self.inflater = zlib.decompressobj(-server_wbits)
        self._client_wbits, self._server_wbits = client_wbits, server_wbits

    def compress(self, data: bytes, takeover: bool = True) -> bytes:
        if not takeover or self.deflater is None:
            self.deflater = zlib.compressobj(6, zlib.DEFLATED, -getattr(self, "_client_wbits", 15))
        out = self.deflater.compress(data) + self.deflater.flush(zlib.Z_SYNC_FLUSH)
        assert out.endswith(b"\x00\x00\xff\xff")
        return out[:-4]

    def send_message(self, data: str | bytes, compress: bool = False, takeover: bool = True, frag: int = 0) -> None:
        """A whole message; `frag`: split into fragments of that many bytes."""
        opcode = TEXT if isinstance(data, str) else BINARY
        raw = data.encode() if isinstance(data, str) else data
        if compress:
            raw = self.compress(raw, takeover)
        if not frag or len(raw) <= frag:
            self.send_frame(opcode, raw, rsv=4 if compress else 0)
            return
        parts = [raw[i : i + frag] for i in range(0, len(raw), frag)]
        out = bytearray()
        for i, p in enumerate(parts):
            out += frame(opcode if i == 0 else CONT, p, fin=i == len(parts) - 1, rsv=4 if compress and i == 0 else 0)
        self.sock.sendall(out)

    def recv_message(self, takeover: bool = True) -> tuple[int, bytes, list[Frame]]:
        """The next data message, reassembled and inflated: (opcode, payload,
        the control frames that came before or between its frames). The
        server's frames must be unmasked and well formed."""
        controls: list[Frame] = []
        opcode, parts, compressed = None, [], False
        while True:
            f = self.recv_frame()
            assert not f.masked, "a server frame was masked"
            if f.opcode >= 8:
                assert f.fin and len(f.payload) <= 125, f
                controls.append(f)
                if f.opcode == CLOSE:
                    return CLOSE, f.payload, controls
                continue
            if opcode is None:
                assert f.opcode in (TEXT, BINARY), f"a message began with opcode {f.opcode}"
                opcode, compressed = f.opcode, bool(f.rsv & 4)
                assert f.rsv & 3 == 0 and (not compressed or self.inflater is not None), f
            else:
                assert f.opcode == CONT and f.rsv == 0, f
            parts.append(f.payload)
            if f.fin:
                break
        data = b"".join(parts)
        if compressed:
            assert self.inflater is not None
            if not takeover:
                self.inflater = zlib.decompressobj(-self._server_wbits)
            data = self.inflater.decompress(data + b"\x00\x00\xff\xff")
        if opcode == TEXT:
            data.decode()  # a server's text is valid UTF-8
        return opcode, data, controls

    def expect_close(self, *codes: int | None) -> Frame:
        """Read until the server's close frame (echoes and pongs before it
        are skipped); assert its code is one of `codes`, then that the
        server ends the TCP connection. The close frame."""
        while True:
            try:
                f = self.recv_frame()
            except Closed as exc:
                raise AssertionError(f"the connection ended ({exc}) without a close frame; wanted {codes}") from None
            if f.opcode == CLOSE:
                break
        assert f.code in codes, f"close code {f.code} (reason {f.reason!r}), wanted one of {codes}"
        if len(f.payload) > 2:
            f.reason.decode()  # a close reason is UTF-8
        try:  # the client's half of the closing handshake, for a server that waits for it
            self.send_frame(CLOSE, f.payload[:2])
        except OSError:
            pass
        self.expect_eof()
        return f

    def expect_eof(self) -> None:
        """The server closes the TCP connection (anything it still sends is dropped)."""
        try:
            while True:
                self.buf.clear()
                self._more()
        except Closed:
            return
        except TimeoutError:
            raise AssertionError("the server did not close the connection") from None

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawWS:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
