"""TLS in the core (tls.c, transport_tls.py): mutated records fed to an
established server session on UringEventLoop. run.py runs it on the whole
native core built with ASan and UBSan (native_build.build_core): the ring,
the handshake and us_tls_recv/us_tls_send over the provided buffers.

Each input: a client (its own ssl.SSLObject over a plain socket, in a
thread) completes the handshake, then sends application-data records of a
known plaintext with the input's damage: bytes flipped, a record cut, the
input itself appended as records, or a reset mid-way. Invariants: the
server's protocol sees a prefix of the plaintext, in order, then
connection_lost exactly once; nothing reaches the loop's exception handler;
once the connection ends the ring's counters are back (no SSL object, slot,
buffer or arena chunk left)."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import struct
import sys
import tempfile
import threading
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from tests.fuzz.common import Carver, fuzz  # noqa: E402

if os.environ.get("URINGSERVE_FUZZ_ASAN_CORE"):  # run.py: the core (ring, tls.c) built with ASan and UBSan
    from tests.fuzz import native_build

    native_build.load_core()

PLAIN = bytes(range(251)) * 40  # a byte's value tells its offset (mod 251)
STATE: dict[str, Any] = {}
ERRORS: list[dict] = []


def instrument() -> None:
    import uringserve.tls  # noqa: F401
    import uringserve.transport_tls  # noqa: F401


class Server(asyncio.Protocol):
    def __init__(self) -> None:
        self.got = bytearray()
        self.events: list[str] = []
        STATE["last"] = self

    def connection_made(self, transport: Any) -> None:
        self.events.append("made")

    def data_received(self, data: bytes) -> None:
        assert self.events[-1] != "lost", "data after connection_lost"
        self.got += data

    def connection_lost(self, exc: BaseException | None) -> None:
        assert "lost" not in self.events, "connection_lost twice"
        self.events.append("lost")


def _setup() -> None:
    if STATE:
        return
    import trustme

    import uringserve
    from uringserve.tls import CoreTLS

    ca = trustme.CA()
    folder = tempfile.mkdtemp(prefix="fuzz-tls-")
    pem = os.path.join(folder, "server.pem")
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(pem)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    if os.environ.get("URINGSERVE_FUZZ_ASAN_CORE"):  # the sanitized core is the one serving
        from uringserve import _native

        assert _native.lib is sys.modules["_core_asan"].lib
        print(f"tls_records: the native core under ASan: {sys.modules['_core_asan'].__file__}", file=sys.stderr)
    loop = uringserve.new_event_loop()
    loop.set_exception_handler(lambda _l, ctx: ERRORS.append(ctx))
    server = loop.run_until_complete(loop.create_server(Server, "127.0.0.1", 0, ssl=CoreTLS(pem)))
    STATE.update(loop=loop, server=server, port=server.sockets[0].getsockname()[1], client=client)


def _client(c: Carver, out: dict) -> None:
    sock = socket.create_connection(("127.0.0.1", STATE["port"]), timeout=10)
    inc, wbio = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = STATE["client"].wrap_bio(inc, wbio, server_hostname="127.0.0.1")
    try:
        while True:
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                if wbio.pending:
                    sock.sendall(wbio.read())
                data = sock.recv(65536)
                if not data:
                    return
                inc.write(data)
        if wbio.pending:
            sock.sendall(wbio.read())
        obj.write(PLAIN[: 64 + c.byte() * 8])
        records = bytearray(wbio.read())
        mode = c.byte() % 4
        if mode == 0:  # bytes flipped where the input says
            while c.left >= 2 and records:
                records[int.from_bytes(c.take(2), "big") % len(records)] ^= c.byte() or 1
        elif mode == 1:  # a record cut
            del records[int.from_bytes(c.take(2), "big") % (len(records) + 1) :]
        elif mode == 2:  # the input as more records after the good ones
            records += c.rest()
        if mode == 3:  # a reset part-way
            sock.sendall(records[: len(records) // 2])
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        else:
            for piece in c.pieces(bytes(records), scale=8):
                sock.sendall(piece)
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(65536):  # the server's alert or close_notify, then its close
                pass
        out["sent"] = True
    except OSError:
        pass  # the server closed first (an alert for a bad record): the invariants below still hold
    finally:
        sock.close()


def one_input(data: bytes) -> None:
    _setup()
    loop: asyncio.AbstractEventLoop = STATE["loop"]
    STATE.pop("last", None)
    out: dict = {}
    t = threading.Thread(target=_client, args=(Carver(data), out))
    t.start()

    async def ended() -> None:
        while t.is_alive() or ("last" in STATE and "lost" not in STATE["last"].events):
            await asyncio.sleep(0.001)
        stats = loop.ring_stats()  # type: ignore[attr-defined]
        while stats["tls_live"] or stats["slots_used"] or stats["arena_in_use"]:
            await asyncio.sleep(0.001)
            stats = loop.ring_stats()  # type: ignore[attr-defined]

    loop.run_until_complete(asyncio.wait_for(ended(), 20))
    t.join()
    server = STATE.get("last")
    if server is not None:
        assert server.events[-1] == "lost", server.events
        assert PLAIN.startswith(bytes(server.got)), "plaintext not a prefix of what was sent"
    assert not ERRORS, ERRORS


def main() -> None:
    fuzz(one_input, instrument)


if __name__ == "__main__":
    main()
